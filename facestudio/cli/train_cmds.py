"""Stage-1 commands: `train autodecoder`, `encode`, `render`.

Runs live in LIBRARY/models/autodecoder/<timestamp>/ (see facestudio.models.runs); `--model`
accepts a run folder or a run name under that folder. Both train commands also run as
``torchrun --nproc_per_node N -m facestudio train ...`` (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from pathlib import Path
from typing import Any

from facestudio.cli.console import end_progress, show_progress
from facestudio.paths import find_run, runs_dir


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from facestudio.cli.groups import group
    from facestudio.cli.main import add_json_flag

    q = group(sub, common, "train").add_parser(
        "autodecoder", parents=[common], help="train the stage-1 autodecoder on fused segments",
        description="Learn one embedding per segment and a decoder to a voxel radiance field "
                    "(3DVADER stage 1). Ctrl+C stops cleanly after the current step; --resume continues.")
    q.add_argument("--config", default="tiny", help="preset (tiny, paper) or a TOML file (default tiny)")
    q.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    q.add_argument("--resume", metavar="RUN", help="continue a run (folder or name) from its latest checkpoint")
    q.add_argument("--max-steps", type=int, help="stop at this step (default: the config's train.max_steps)")
    q.add_argument("--segments", nargs="+", type=Path, metavar="DIR",
                   help="segment folders or folders holding segments (default: LIBRARY/datasets)")
    add_json_flag(q)
    q.set_defaults(func=run_train_autodecoder)

    q = sub.add_parser("encode", parents=[common], help="fit a latent for a segment the model never saw",
                       description="Optimise a new embedding with the decoder frozen; cached in the run.")
    q.add_argument("segment", type=Path, help="segment folder")
    q.add_argument("--model", required=True, help="autodecoder run (folder or name)")
    q.add_argument("--seconds", type=float, default=60.0, help="time budget (default 60)")
    q.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"])
    add_json_flag(q)
    q.set_defaults(func=run_encode)

    q = sub.add_parser("render", parents=[common], help="render views of a segment's decoded radiance field")
    q.add_argument("segment", help="segment folder, or an object index of the run")
    q.add_argument("out_dir", type=Path, help="folder for the PNG images")
    q.add_argument("--model", required=True, help="autodecoder run (folder or name)")
    q.add_argument("--views", type=int, default=8, help="number of views on a yaw arc (default 8)")
    q.add_argument("--size", type=int, default=256, help="image size in pixels (default 256)")
    q.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"])
    add_json_flag(q)
    q.set_defaults(func=run_render)


def gather_segments(dirs: list[Path] | None, library: str | None) -> list[Path]:
    from facestudio.dataset.segment import find_segments
    from facestudio.paths import library_root

    roots = dirs or [library_root(library) / "datasets"]
    found: list[Path] = []
    for root in roots:
        if not root.exists():
            raise ValueError(f"{root} does not exist")
        found += find_segments(root)
    if not found:
        raise ValueError(f"no fused segments under {', '.join(map(str, roots))} (run `facestudio fuse` first)")
    return found


def run_train_autodecoder(args: argparse.Namespace) -> dict[str, Any] | None:
    from facestudio.models.config import load_config, with_face_model
    from facestudio.paths import face_model_for, library_root
    from facestudio.models.runs import format_progress
    from facestudio.models.train_autodecoder import train_autodecoder

    if args.resume:
        run_dir, config, segments = find_run(args.resume, "autodecoder", args.library), None, None
        if args.segments:
            raise ValueError("--resume continues on the run's own segments; drop --segments")
    else:
        config = with_face_model(load_config(args.config), face_model_for(library_root(args.library), None))
        segments = gather_segments(args.segments, args.library)
        run_dir = runs_dir(args.library, "autodecoder") / time.strftime("%Y%m%d-%H%M%S")   # torchrun: rank 0's is used

    def progress(p: dict[str, Any]) -> None:
        if not args.json:
            show_progress(format_progress(p))

    summary = train_autodecoder(segments, run_dir, config, args.device, args.max_steps, bool(args.resume),
                                progress, stop_on_signals())
    return training_result(summary, args.json)


def stop_on_signals() -> threading.Event:
    """An event Ctrl+C sets, so training stops after the current step with a checkpoint.

    Under torchrun SIGTERM sets it too: the launcher passes Ctrl+C on to its processes as SIGTERM
    (and kills them 30 s later), and SLURM sends SIGTERM at a job's time limit.
    """
    from facestudio.models import distributed

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM) if distributed.launched() else (signal.SIGINT,):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def training_result(summary: dict[str, Any], json_output: bool) -> dict[str, Any] | None:
    """What a train command reports: the summary from rank 0 alone under torchrun, where every
    process finishes the same run (None prints nothing)."""
    from facestudio.models import distributed

    if not distributed.is_main():
        return None
    end_progress()
    return summary


def run_encode(args: argparse.Namespace) -> dict[str, Any]:
    from facestudio.models.encode import encode_segment
    from facestudio.models.train_autodecoder import load_trained, resolve_device, set_threads

    trained = load_trained(find_run(args.model, "autodecoder", args.library), str(resolve_device(args.device)))
    if trained.config.model.output == "deformation":
        raise ValueError("a deformation autodecoder needs no encoding: a new person is their fused neutral scan, "
                         "which `generate --person SEGMENT` uses directly")
    set_threads(trained.config.train.num_threads)
    return encode_segment(trained, args.segment, seconds=args.seconds)


def run_render(args: argparse.Namespace) -> dict[str, Any]:
    from facestudio.models.train_autodecoder import load_trained, resolve_device, set_threads

    if args.views < 1 or not 16 <= args.size <= 2048:
        raise ValueError("--views must be >= 1 and --size in [16, 2048]")
    trained = load_trained(find_run(args.model, "autodecoder", args.library), str(resolve_device(args.device)))
    set_threads(trained.config.train.num_threads)
    files = render_orbit(trained, args.segment, args.out_dir, args.views, args.size)
    return {"out_dir": str(args.out_dir), "images": [str(f) for f in files]}


def render_orbit(trained: Any, segment: str, out_dir: Path, views: int, size: int) -> list[Path]:
    """PNG renders of a segment's decoded field on the capture yaw arc (midpoint samples)."""
    import cv2
    import numpy as np
    import torch

    from facestudio.models.encode import grid_for_segment
    from facestudio.models.render import orbit_cameras
    from facestudio.models.train_autodecoder import render_views

    cfg = trained.config
    deformation = cfg.model.output == "deformation"
    if deformation:   # the scan with the decoded expression, ray cast (there is no radiance grid)
        from facestudio.models.deformation_targets import decoded_scan
        from facestudio.models.mesh import raycast_image, training_index
        from facestudio.models.train_autodecoder import segment_box
        from facestudio.dataset.segment import Segment

        index = training_index(trained, segment)
        mesh, box = decoded_scan(trained, index), segment_box(Segment(trained.segment_paths[index]))
    else:
        grid, box = grid_for_segment(trained, segment)
    K, poses = orbit_cameras(box, views, size)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    with torch.no_grad():
        for i in range(views):
            if deformation:
                rgb = raycast_image(*mesh, K[i], poses[i], size, cfg.render.background)
            else:
                out = render_views(grid[None], K[None, i:i + 1], poses[None, i:i + 1], size, box,
                                   cfg.render.samples_per_ray, False, cfg.render.background, trained.model.geometry)
                rgb = (out["rgb"][0].clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
            path = out_dir / f"view_{i:03d}.png"
            if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
                raise OSError(f"could not write {path}")
            files.append(path)
    return files
