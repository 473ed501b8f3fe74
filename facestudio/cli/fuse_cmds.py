"""Dataset commands: `fuse`, `eval fusion`, `eval confidence`, `bench fusion`, `export nerfstudio|mesh`."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

# Accuracy and speed goals of issue 3, reported next to the measurements.
TARGETS = {"surface_mean_mm": 1.0, "surface_p95_mm": 3.0, "registration_rotation_deg": 1.0,
           "registration_translation_mm": 2.0, "registration_surface_mean_mm": 1.5,
           "tsdf_fps_per_core": 100.0, "take_300_frames_s": 10.0}
_SHARED_ICT = Path(__file__).resolve().parents[3] / "shared" / "data" / "ict_facekit.npz"


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from facestudio.cli.groups import group
    from facestudio.cli.main import add_json_flag

    p = sub.add_parser("fuse", parents=[common], help="fuse takes into per-expression training segments",
                       description="Masks, head-pose canonicalisation, expression segments, TSDF meshes "
                                   "and training views; writes LIBRARY/datasets/SUBJECT/TAKE/segNN-LABEL/.")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("take", nargs="?", type=Path, help="take folder")
    which.add_argument("--subject", help="every take of this subject in the library")
    which.add_argument("--all", action="store_true", help="every take in the library")
    p.add_argument("--no-anchor-pose", action="store_true",
                   help="ignore ARKit face-anchor poses and estimate head poses by registration")
    p.add_argument("--no-confidence", action="store_true",
                   help="fuse imported depth of every confidence (default: drop depth below the "
                        "take's min_depth_confidence, as the source app's own tools do)")
    p.add_argument("--voxel-mm", type=float, default=2.0, help="TSDF voxel size in mm (default 2)")
    p.add_argument("--view-size", type=int, default=128, help="training view resolution (default 128)")
    add_json_flag(p)
    p.set_defaults(func=run_fuse)

    q = group(sub, common, "eval").add_parser(
        "fusion", parents=[common], help="fusion accuracy vs ground truth on synthetic takes")
    q.add_argument("--face-model", metavar="PATH", help="ICT face model .npz (default: ../shared/data "
                                                         "if present, else the procedural head)")
    q.add_argument("--frames", type=int, default=300, help="frames per synthetic take (default 300)")
    q.add_argument("--seed", type=int, default=3, help="identity/script seed (default 3)")
    add_json_flag(q)
    q.set_defaults(func=run_eval_fusion)

    q = group(sub, common, "eval").add_parser(
        "confidence", parents=[common],
        help="fusion accuracy with and without dropping low-confidence depth (LiDAR-like synthetic take)",
        description="Renders a synthetic take with LiDAR-like depth and ARKit confidence (flying pixels "
                    "at silhouettes and grazing surface marked low, oblique surface medium), fuses it "
                    "keeping all depth, levels >= 1 (Stray's rule) and level 2 (Record3D's), and scores "
                    "each against the exact meshes.")
    q.add_argument("--face-model", metavar="PATH", help="ICT face model .npz (default: ../shared/data "
                                                         "if present, else the procedural head)")
    q.add_argument("--frames", type=int, default=300, help="frames of the synthetic take (default 300)")
    q.add_argument("--seed", type=int, default=3, help="identity/script seed (default 3)")
    q.add_argument("--anchor-only", action="store_true",
                   help="skip the three fusions by registration (they take most of the time)")
    add_json_flag(q)
    q.set_defaults(func=run_eval_confidence)

    q = group(sub, common, "bench").add_parser(
        "fusion", parents=[common], help="TSDF integration frames/s per core and whole-take fusion time")
    q.add_argument("--frames", type=int, default=300, help="frames of the whole-take run (default 300)")
    q.add_argument("--registration", action="store_true", help="also time a fusion without anchor poses")
    add_json_flag(q)
    q.set_defaults(func=run_bench_fusion)

    export = group(sub, common, "export")
    q = export.add_parser("nerfstudio", parents=[common], help="a segment as nerfstudio transforms.json")
    q.add_argument("segment", help="segment folder or SUBJECT/TAKE/SEGMENT in the library")
    q.add_argument("out_dir", type=Path)
    add_json_flag(q)
    q.set_defaults(func=run_export_nerfstudio)
    q = export.add_parser("mesh", parents=[common], help="a segment's mesh as .ply/.obj/.stl/.glb: the fused one, "
                          "or with --model the one a trained autodecoder decodes")
    q.add_argument("segment", help="segment folder or SUBJECT/TAKE/SEGMENT in the library")
    q.add_argument("out", type=Path, help="output file; the suffix picks the format")
    q.add_argument("--model", metavar="RUN",
                   help="autodecoder run (folder or name): marching cubes on its decoded grid of the segment "
                        "(encoded first, decoder frozen, if the run never saw it)")
    q.add_argument("--threshold", type=float, default=0.5,
                   help="with --model: the surface's occupancy level in (0, 1) (default 0.5)")
    q.add_argument("--upsample", type=int, default=2,
                   help="with --model: trilinear upsampling of the grid before marching cubes (default 2)")
    add_json_flag(q)
    q.set_defaults(func=run_export_mesh)


def _library() -> Path:
    from facestudio.paths import library_root

    return library_root()


def _takes(args: argparse.Namespace) -> list[Path]:
    if args.take is not None:
        if not (args.take / "manifest.json").is_file():
            raise ValueError(f"{args.take} is not a take folder (no manifest.json)")
        return [args.take]
    from facestudio.paths import check_name

    root = _library() / "takes"
    base = root / check_name("subject", args.subject) if args.subject else root
    pattern = "*/manifest.json" if args.subject else "*/*/manifest.json"
    takes = sorted(m.parent for m in base.glob(pattern))
    if not takes:
        raise ValueError(f"no takes found under {base}")
    return takes


def run_fuse(args: argparse.Namespace) -> dict[str, Any]:
    from facestudio.dataset.fuse import FusionConfig
    from facestudio.dataset.segment import Segment
    from facestudio.library.operations import fuse_into_library

    if args.voxel_mm <= 0 or args.view_size < 16:
        raise ValueError("--voxel-mm must be > 0 and --view-size at least 16")
    config = FusionConfig(voxel_mm=args.voxel_mm, view_size=args.view_size,
                          use_anchor_pose=not args.no_anchor_pose,
                          use_confidence=not args.no_confidence)
    root = _library()
    results = []
    for take in _takes(args):
        t0 = time.perf_counter()
        paths = fuse_into_library(root, take, config)
        segments = [Segment(p) for p in paths]
        results.append({"take": str(take), "seconds": round(time.perf_counter() - t0, 2),
                        "segments": [{"path": str(s.path), "label": s.info.label, "views": len(s),
                                      "warnings": "; ".join(s.info.quality.get("warnings", []))}
                                     for s in segments]})
    return {"takes": results}


def _face_model(path: str | None) -> Path | None:
    if path:
        if not Path(path).is_file():
            raise ValueError(f"face model {path} does not exist")
        return Path(path)
    return _SHARED_ICT if _SHARED_ICT.is_file() else None


def run_eval_fusion(args: argparse.Namespace) -> dict[str, Any]:
    from facestudio.dataset.evaluate import evaluate_take, record_synthetic_take
    from facestudio.dataset.fuse import FusionConfig, fuse_take

    model = _face_model(args.face_model)
    with tempfile.TemporaryDirectory(prefix="facestudio-eval-") as tmp:
        take = record_synthetic_take(Path(tmp) / "takes" / "synthetic" / "eval", args.frames,
                                     face_model=model, seed=args.seed, take="eval")
        runs = {}
        for name, anchor in (("anchor", True), ("registration", False)):
            t0 = time.perf_counter()
            segs = fuse_take(take, Path(tmp) / f"datasets-{name}", FusionConfig(use_anchor_pose=anchor))
            seconds = time.perf_counter() - t0
            runs[name] = {"fuse_seconds": round(seconds, 2), **evaluate_take(take, segs)}
    a, r = runs["anchor"]["summary"], runs["registration"]
    obs, reg_obs = a["gt_to_fused_observed"], r["summary"]["gt_to_fused_observed"]
    pose = r["pose"]
    checks = {
        "anchor_observed_mean": obs["mean_mm"] <= TARGETS["surface_mean_mm"],
        "anchor_observed_p95": obs["p95_mm"] <= TARGETS["surface_p95_mm"],
        "anchor_whole_face_mean": a["gt_to_fused"]["mean_mm"] <= TARGETS["surface_mean_mm"],
        "anchor_whole_face_p95": a["gt_to_fused"]["p95_mm"] <= TARGETS["surface_p95_mm"],
        "registration_rotation": pose["rotation_mean_deg"] <= TARGETS["registration_rotation_deg"],
        "registration_translation": pose["translation_mean_mm"] <= TARGETS["registration_translation_mm"],
        "registration_observed_mean": reg_obs["mean_mm"] <= TARGETS["registration_surface_mean_mm"],
    }
    return {"face_model": "ict" if model else "procedural", "frames": args.frames, "seed": args.seed,
            "targets": TARGETS, "checks": checks, "runs": runs}


def run_eval_confidence(args: argparse.Namespace) -> dict[str, Any]:
    from facestudio.dataset.confidence_eval import evaluate_confidence

    if args.frames < 30:
        raise ValueError("--frames must be at least 30 (a segment needs steady frames)")
    model = _face_model(args.face_model)
    with tempfile.TemporaryDirectory(prefix="facestudio-eval-") as tmp:
        result = evaluate_confidence(tmp, args.frames, model, args.seed, registration=not args.anchor_only)
    return {"face_model": "ict" if model else "procedural", **result}


def run_bench_fusion(args: argparse.Namespace) -> dict[str, Any]:
    from facestudio.dataset.evaluate import record_synthetic_take
    from facestudio.dataset.fuse import FusionConfig, fuse_take

    model = _face_model(None)
    frames = _bench_frames(model)
    result: dict[str, Any] = {"face_model": "ict" if model else "procedural", "cpus": os.cpu_count(),
                              "targets": TARGETS, "tsdf": []}
    for voxel_mm in (1.5, 2.0):
        one = _integration_fps(frames, voxel_mm / 1000.0, cpus={min(os.sched_getaffinity(0))})
        every = _integration_fps(frames, voxel_mm / 1000.0, cpus=None)
        result["tsdf"].append({"voxel_mm": voxel_mm, "fps_one_core": round(one, 1),
                               "fps_all_cores": round(every, 1), "frames": len(frames)})
    with tempfile.TemporaryDirectory(prefix="facestudio-bench-") as tmp:
        take = record_synthetic_take(Path(tmp) / "takes" / "bench" / "take", args.frames, face_model=model)
        modes = [("anchor", True)] + ([("registration", False)] if args.registration else [])
        for name, anchor in modes:
            t0 = time.perf_counter()
            fuse_take(take, Path(tmp) / f"datasets-{name}", FusionConfig(use_anchor_pose=anchor))
            result[f"take_seconds_{name}"] = round(time.perf_counter() - t0, 2)
    result["take_frames"] = args.frames
    result["note"] = ("fps_one_core: whole process pinned to one CPU with sched_setaffinity (Open3D's "
                      "worker threads share it); includes block allocation and image upload; input is "
                      "head-masked 640x480 depth + color")
    return result


def _bench_frames(model: Path | None) -> list[tuple[Any, ...]]:
    """Masked depth, color, intrinsics, pose of 40 synthetic frames of one held expression."""
    import cv2
    import numpy as np

    from facestudio.capture.virtual_device import SyntheticFrameSource
    from facestudio.dataset.masks import head_mask

    source = SyntheticFrameSource(None if model is None else str(model), seed=0)
    out = []
    for i in range(40):
        f = source.frame(i, 0.7 + i / 30.0)
        depth, color = f.depth_m(), f.color()
        assert depth is not None and f.depth_intrinsics is not None and f.head_pose is not None
        _, measured = head_mask(depth, f.depth_intrinsics, f.head_pose, color)
        out.append((np.where(measured, depth, 0.0).astype(np.float32), cv2.cvtColor(color, cv2.COLOR_BGR2RGB),
                    f.depth_intrinsics, np.linalg.inv(f.head_pose)))
    return out


def _integration_fps(frames: list[tuple[Any, ...]], voxel_m: float, cpus: set[int] | None,
                     repeats: int = 5) -> float:
    from facestudio.dataset.tsdf import TsdfVolume

    saved = os.sched_getaffinity(0)
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    try:
        best = 0.0
        for _ in range(repeats):
            volume = TsdfVolume(voxel_m)
            t0 = time.perf_counter()
            for frame in frames:
                volume.integrate(*frame)
            best = max(best, len(frames) / (time.perf_counter() - t0))
        return best
    finally:
        os.sched_setaffinity(0, saved)


def _segment(arg: str) -> Path:
    path = Path(arg)
    if (path / "segment.json").is_file():
        return path
    in_library = _library() / "datasets" / arg
    if (in_library / "segment.json").is_file():
        return in_library
    raise ValueError(f"{arg} is not a fused segment (no segment.json there or under {in_library.parent})")


def run_export_nerfstudio(args: argparse.Namespace) -> dict[str, Any]:
    from facestudio.export.nerfstudio import export_nerfstudio

    return export_nerfstudio(_segment(args.segment), args.out_dir)


def run_export_mesh(args: argparse.Namespace) -> dict[str, Any]:
    from facestudio.export.mesh import export_segment_mesh, write_mesh_arrays

    if args.model is None:
        return export_segment_mesh(_segment(args.segment), args.out)
    from facestudio.models.mesh import extract_mesh
    from facestudio.paths import find_run

    if args.upsample < 1:
        raise ValueError("--upsample must be >= 1")
    run = find_run(args.model, "autodecoder", args.library)
    segment = args.segment if args.segment.isdigit() else _segment(args.segment)
    verts, tris, colors = extract_mesh(run, segment, args.threshold, args.upsample)
    written = write_mesh_arrays(verts, tris, colors, args.out)
    return {"segment": str(segment), "model": str(run), "out": str(written), "vertices": int(len(verts)),
            "triangles": int(len(tris)), "threshold": args.threshold}
