"""Training on several processes (GPUs, nodes) under ``torchrun``: the one place that knows about it.

Without torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) - the desktop app, a plain CLI
run - no process group exists and every helper here returns its input unchanged or does
nothing, so a single-process run is bit-identical to one that never imported this module.

Under torchrun each process ("rank") trains with DistributedDataParallel on its shard of the
training objects. The config's batch size is the *global* batch: each rank draws an equal
share, losses are means over a rank's share, and DDP averages the rank gradients, so a step is
the step one process would take on the union of the rank batches - per-object embeddings
included: an embedding gets a gradient only on the rank that drew its object, and the average
scales it to exactly the single-process value. Rank 0 writes the run folder; checkpoints hold
only world-size-independent state (the unwrapped weights, rank 0's RNG), and the other ranks
derive their random streams from rank 0's (:func:`split_rng`), so a run resumes on any number
of processes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import distributed as dist
from torch import nn

log = logging.getLogger(__name__)


def launched() -> bool:
    """True when torchrun (or any launcher setting its variables) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """The rank that writes the run folder and reports progress (outside the process group, as
    when the CLI prints a finished run's summary: torchrun's RANK 0, or the only process)."""
    return rank() == 0 if active() else os.environ.get("RANK", "0") == "0"


def local_world_size() -> int:
    """Processes on this machine (they share its cores and GPUs)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if launched() else 1


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[torch.device]:
    """Join torchrun's process group for one training run; yields this rank's device.

    NCCL on CUDA (process i of a machine on its GPU i), gloo on CPU. Outside torchrun it yields
    ``device`` and does nothing. A group the caller set up already is used and left standing.
    """
    if not launched():
        yield device
        return
    if device.type == "mps":
        raise ValueError("multi-process training runs on CUDA or CPU, not MPS")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if active():
        yield device
        return
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            device_id=device if device.type == "cuda" else None)
    log.info("rank %d of %d on %s", rank(), world_size(), device)
    try:
        yield device
    finally:
        dist.destroy_process_group()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` under DistributedDataParallel when distributed (its forward then syncs gradients).

    Batch norm must see the global batch to match one process: on CUDA it becomes SyncBatchNorm
    (in place, so ``model`` keeps its parameters and state_dict keys); SyncBatchNorm does not
    run on CPU, where each rank normalises over its own share (the ``group`` norm is exact).
    """
    if not active():
        return model
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            log.warning("batch norm on CPU ranks uses per-rank statistics; model.norm = 'group' is exact")
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


# ---------------------------------------------------------------------- data

@dataclass
class Shard:
    """This rank's training items and how many of them it draws per step."""

    items: np.ndarray
    batch: int

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """``batch`` distinct items (global indices). In one process: ``rng.choice(count, batch)``."""
        return self.items[rng.choice(len(self.items), size=self.batch, replace=False)]


def shard(count: int, batch: int, key: str) -> Shard:
    """Deal ``count`` items round-robin over the ranks; each draws ``batch / world`` per step.

    ``batch`` (config ``key``) is the global batch, clipped to ``count`` as one process clips it,
    so a config means the same on any number of processes.
    """
    w = world_size()
    if count < w:
        raise ValueError(f"{count} training objects cannot be shared by {w} processes (need one each)")
    if batch % w:
        raise ValueError(f"{key} = {batch} must be a multiple of the {w} training processes")
    return Shard(np.arange(rank(), count, w), min(batch, count) // w)


# ---------------------------------------------------------------------- collectives

def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def barrier() -> None:
    if active():
        dist.barrier()


def from_main(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (e.g. a run folder named by rank 0's clock)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=_comm_device())
    return box[0]


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is on any: a stop request that reaches one process (Ctrl+C,
    SIGTERM from torchrun or SLURM) ends every rank after the same step, none left in a collective."""
    if not active():
        return flag
    t = torch.tensor([float(flag)], device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over the ranks: the global batch's loss terms, for the metrics log."""
    if not active():
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return dict(zip(values, (t / world_size()).tolist()))


def global_mean(values: torch.Tensor) -> torch.Tensor | None:
    """Mean of ``values`` (this rank's elements) over all ranks' elements; None if there are none.

    For a loss term averaged over a varying number of elements per rank (pixels with valid
    depth): DDP's plain average of rank gradients would weight each rank's mean equally, so
    the rank's sum is scaled by world / total instead, making that average the gradient of the
    global mean. In one process it is exactly ``values.mean()``.
    """
    if not active():
        return values.mean() if values.numel() else None
    total = torch.tensor([float(values.numel())], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(total)
    n = total.item()
    return values.sum() * (world_size() / n) if n else None


# ---------------------------------------------------------------------- randomness and precision

def split_rng(generator: np.random.Generator) -> None:
    """Give ranks > 0 random streams derived from rank 0's ``generator`` state and their rank.

    Rank 0 keeps its streams (the ones a checkpoint stores); rank r reseeds torch (CPU and CUDA),
    numpy's and python's global RNGs and ``generator`` from (rank 0's state, r). Called at the
    start, after a resume and after every checkpoint, so a resume on the same number of ranks
    continues bit-for-bit and one on another number still gets distinct, reproducible streams.
    """
    if not active():
        return
    state = from_main(generator.bit_generator.state)
    if is_main():
        return
    generator.bit_generator.state = state
    seq = np.random.SeedSequence([int(generator.integers(2 ** 63)), rank()])
    seeds = [int(s) for s in seq.generate_state(4, np.uint64)]
    generator.bit_generator.state = type(generator.bit_generator)(seeds[3]).state
    torch.manual_seed(seeds[0])
    np.random.seed(seeds[1] % 2 ** 32)
    random.seed(seeds[2])


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA GPUs that support it, else nothing (CPU trains in fp32).

    bf16 keeps fp32's exponent range, so no loss scaling is needed; autocast itself keeps
    reductions, norms, exp/log and softmax in fp32.
    """
    if precision(device) == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def precision(device: torch.device) -> str:
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
