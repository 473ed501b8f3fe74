"""`facestudio eval autodecoder` and `facestudio bench train`: the numbers BENCHMARKS.md records.

The evaluation builds synthetic segments from the virtual device's ground truth in a temporary
folder (fusion is not involved, so it measures the autodecoder alone), trains the chosen preset
for a wall-clock budget and reports held-out PSNR and mesh distance to the exact face.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from facestudio.cli.console import end_progress, show_progress


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from facestudio.cli.groups import group
    from facestudio.cli.main import add_json_flag

    q = group(sub, common, "eval").add_parser(
        "autodecoder", parents=[common], help="train on synthetic faces, report held-out PSNR and mesh error")
    q.add_argument("--segments", type=int, default=8, help="synthetic segments (>= 8; default 8)")
    q.add_argument("--minutes", type=float, default=15.0, help="training wall-clock budget (default 15)")
    q.add_argument("--config", default="tiny", help="preset or TOML file (default tiny)")
    q.add_argument("--geometry", choices=["density", "sdf"],
                   help="override the config's model.geometry (compare the paper's density grid with a distance grid)")
    q.add_argument("--face-model", metavar="PATH",
                   help="ICT face model .npz (default: LIBRARY/facemodels/ict_facekit.npz, else the procedural head)")
    q.add_argument("--threshold", type=float, default=0.5, help="marching-cubes occupancy level (default 0.5)")
    q.add_argument("--keep", type=Path, metavar="DIR", help="keep segments and run here instead of a temp dir")
    q.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    add_json_flag(q)
    q.set_defaults(func=run_eval_autodecoder)

    q = group(sub, common, "eval").add_parser(
        "frame", parents=[common], help="which frame a deformation field is read in: each representation's own "
                                        "ceiling and its transfer to another ICT identity")
    q.add_argument("--identities", type=int, default=3, help="ICT identities, each paired with the next (default 3)")
    q.add_argument("--face-model", metavar="PATH", help="ICT face model .npz (default: LIBRARY/facemodels/ict_facekit.npz)")
    add_json_flag(q)
    q.set_defaults(func=run_eval_frame)

    q = group(sub, common, "bench").add_parser(
        "train", parents=[common], help="autodecoder training speed (steps/s, rays/s) for the tiny and paper presets")
    q.add_argument("--steps", type=int, default=10, help="timed tiny steps (default 10; paper runs 2)")
    q.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    add_json_flag(q)
    q.set_defaults(func=run_bench_train)


def default_face_model(library: str | None) -> str | None:
    from facestudio.paths import library_root

    path = library_root(library) / "facemodels" / "ict_facekit.npz"
    return str(path) if path.exists() else None


def run_eval_frame(args: argparse.Namespace) -> dict[str, Any]:
    from facestudio.models.evaluate_frame import evaluate_frames

    face_model = args.face_model or default_face_model(args.library)
    if face_model is None or not Path(face_model).is_file():
        raise ValueError("eval frame needs the ICT face model (--face-model PATH, or `facestudio facemodel import-ict`)")
    if args.identities < 2:
        raise ValueError("--identities must be >= 2")
    return evaluate_frames(face_model, args.identities)


def run_eval_autodecoder(args: argparse.Namespace) -> dict[str, Any]:
    from facestudio.models.config import load_config
    from facestudio.models.evaluate import evaluate_run
    from facestudio.models.synthetic_segments import make_synthetic_segments
    from facestudio.models.train_autodecoder import load_trained, train_autodecoder

    if args.segments < 8:
        raise ValueError("--segments must be >= 8 (the evaluation protocol)")
    if args.minutes <= 0:
        raise ValueError("--minutes must be > 0")
    face_model = args.face_model or default_face_model(args.library)
    if face_model is not None and not Path(face_model).is_file():
        raise ValueError(f"--face-model {face_model} does not exist")
    config = load_config(args.config)
    if args.geometry is not None:
        config.model.geometry = args.geometry
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="fs-eval-") as tmp:
        root = args.keep or Path(tmp)
        t0 = time.monotonic()
        made = make_synthetic_segments(root / "train", args.segments, face_model, root / "heldout")
        data_s = time.monotonic() - t0
        stop = threading.Event()
        timer = threading.Timer(args.minutes * 60, stop.set)
        timer.start()

        deadline = time.monotonic() + args.minutes * 60

        def progress(p: dict[str, Any]) -> None:
            if not args.json:   # the budget is time, not steps: show the time left
                left = max(0, int(deadline - time.monotonic()))
                show_progress(f"step {p['step']}  loss {p['loss']:.4f}  {p['steps_per_s']:.2f} steps/s  "
                              f"{left // 60}:{left % 60:02d} left")

        try:
            summary = train_autodecoder([m.train for m in made], root / "run", config, args.device,
                                        10 ** 9, progress_cb=progress, stop_event=stop)
        finally:
            timer.cancel()
        end_progress()
        trained = load_trained(root / "run")
        result = evaluate_run(trained, root / "heldout", args.threshold)
    return {"face_model": "ict" if face_model else "procedural", "preset": config.preset,
            "geometry": config.model.geometry, "segments": args.segments, "minutes": args.minutes, "threads": summary["threads"],
            "steps": summary["step"], "train_seconds": summary["seconds"], "data_seconds": round(data_s, 1),
            "threshold": args.threshold,
            # Other processes on the machine slow training down; the load shows how much.
            "load_average_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
            **result["mean"], "per_segment": result["segments"],
            "goal": {"psnr_db": 26.0, "mesh_distance_mm": 2.0}}


def run_bench_train(args: argparse.Namespace) -> dict[str, Any]:
    from facestudio.models.config import paper, tiny
    from facestudio.models.train_autodecoder import resolve_device, set_threads

    device = resolve_device(args.device)
    threads = set_threads(0)
    results = {"device": str(device), "threads": threads, "cpu_count": os.cpu_count()}
    results["tiny"] = bench_preset(tiny(), device, args.steps, None)
    # The paper's batch (8 objects x 4 views of 128^2 x 128 samples) needs a large GPU; on a CPU
    # one object and one view show the per-step cost without exhausting memory.
    small = device.type == "cpu"
    results["paper"] = bench_preset(paper(), device, 2, (1, 1) if small else None)
    return results


def bench_preset(config: Any, device: Any, steps: int, batch: tuple[int, int] | None) -> dict[str, Any]:
    """Time ``steps`` optimizer steps (after one warm-up) on random targets of the preset's sizes."""
    import torch

    from facestudio.models.autodecoder import Autodecoder
    from facestudio.models.losses import AutodecoderLoss
    from facestudio.models.render import Box
    from facestudio.models.train_autodecoder import ObjectViews, training_step

    if batch is not None:
        config.train.objects_per_batch, config.train.views_per_object = batch
    b, v, size = config.train.objects_per_batch, config.train.views_per_object, config.render.image_size
    gen = torch.Generator().manual_seed(0)
    K = torch.tensor([[size * 1.6, 0, (size - 1) / 2], [0, size * 1.6, (size - 1) / 2], [0, 0, 1]])
    pose = torch.eye(4)
    pose[:3, 3] = torch.tensor([0.0, 0.01, 0.49])
    objects = [ObjectViews(f"bench{i}", torch.rand(v, size, size, 3, generator=gen),
                           torch.rand(v, size, size, generator=gen) > 0.5,
                           torch.full((v, size, size), 0.46), K.expand(v, 3, 3), pose.expand(v, 4, 4),
                           Box((0.0, 0.01, 0.03), 0.26)) for i in range(b)]
    model = Autodecoder(config.model, b).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=config.train.lr, betas=tuple(config.train.betas))
    loss_fn = AutodecoderLoss(config.loss, config.model.geometry).to(device)
    idx = torch.arange(b).numpy()
    views = [torch.arange(v).numpy()] * b
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        loss, _ = training_step(model, loss_fn, objects, idx, views, config, device, model.geometry)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - t0) / steps
    rays = b * v * size * size
    out = {"objects_per_batch": b, "views_per_object": v, "image_size": size,
           "samples_per_ray": config.render.samples_per_ray, "grid": config.model.output_resolution,
           "parameters": sum(p.numel() for p in model.parameters()), "timed_steps": steps,
           "seconds_per_step": round(dt, 4), "steps_per_s": round(1 / dt, 3), "rays_per_s": round(rays / dt, 1)}
    if device.type == "cuda":
        out["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
    else:
        out["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)
    return out
