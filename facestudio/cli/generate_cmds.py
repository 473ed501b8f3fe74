"""Stage-2 commands: `train diffusion`, `generate`, `synth`, `eval expression`, `bench generate`.

Diffusion runs live in LIBRARY/models/diffusion/<timestamp>/ beside the autodecoder runs;
`--model` / `--autodecoder` accept a run folder or a run name (default: the newest run).
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from facestudio.cli.console import end_progress, show_progress
from facestudio.paths import find_run, runs_dir

DEVICES = ["auto", "cpu", "cuda", "mps"]


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from facestudio.cli.groups import group
    from facestudio.cli.main import add_json_flag

    q = group(sub, common, "train").add_parser(
        "diffusion", parents=[common], help="train the stage-2 expression/identity-conditioned diffusion model",
        description="EDM training of a 3D U-Net on an autodecoder run's normalised latents, conditioned on "
                    "blendshapes and the subject's neutral latent. Ctrl+C stops cleanly; --resume continues.")
    q.add_argument("--config", default="tiny", help="preset (tiny, paper) or a TOML file (default tiny)")
    q.add_argument("--autodecoder", metavar="RUN", help="autodecoder run (default: the newest)")
    q.add_argument("--resume", metavar="RUN", help="continue a diffusion run from its latest checkpoint")
    q.add_argument("--init-from", metavar="RUN", help="start from another diffusion run's weights (fine-tuning)")
    q.add_argument("--max-steps", type=int, help="stop at this step (default: the config's train.max_steps)")
    q.add_argument("--device", default="auto", choices=DEVICES)
    add_json_flag(q)
    q.set_defaults(func=run_train_diffusion)

    q = sub.add_parser("generate", parents=[common], help="generate a person with an expression as a mesh",
                       description="Sample the diffusion model for a person (subject, training segment or an "
                                   "unseen neutral segment) and ARKit blendshape weights; write a colored mesh.")
    q.add_argument("--person", required=True, help="subject name, training segment, or neutral segment folder")
    q.add_argument("--expr", default="", help="blendshape weights, e.g. jawOpen=0.8,mouthSmileLeft=0.5")
    q.add_argument("--preset", help="expression preset from resources/presets/expressions (--expr overrides)")
    q.add_argument("--seed", type=int, default=0, help="initial-noise seed (default 0)")
    q.add_argument("--steps", type=int, help="Heun steps (default: the run's final steps)")
    q.add_argument("--guidance", type=float, help="classifier-free guidance weight (default: the run's)")
    q.add_argument("--preview", action="store_true", help="preview quality (few steps, coarse mesh)")
    q.add_argument("--model", metavar="RUN", help="diffusion run (default: the newest)")
    q.add_argument("--out", type=Path, required=True, help="mesh file (.ply, .obj, .stl, .glb)")
    q.add_argument("--device", default="cpu", choices=DEVICES)
    add_json_flag(q)
    q.set_defaults(func=run_generate)

    q = sub.add_parser("synth", parents=[common], help="build a synthetic library through the virtual device",
                       description="Record virtual-device takes (one identity each) and fuse them into the "
                                   "library: pretraining data for labs with few subjects.")
    q.add_argument("--identities", type=int, required=True, help="synthetic people")
    q.add_argument("--expressions", type=int, required=True, help="held expressions per take (neutral first)")
    q.add_argument("--frames", type=int, help="frames per take (default: enough for --expressions)")
    q.add_argument("--seed", type=int, default=0, help="first identity seed (default 0)")
    q.add_argument("--face-model", metavar="PATH", help="ICT face model .npz (default: the library's, else procedural)")
    add_json_flag(q)
    q.set_defaults(func=run_synth)

    q = group(sub, common, "eval").add_parser(
        "expression", parents=[common], help="expression transfer on synthetic people vs four baselines",
        description="Trains both stages (tiny) on synthetic ICT identities, generates held-out (identity, "
                    "expression) pairs by moving each person's fused neutral scan, and scores them and the "
                    "baselines (scan unchanged, nearest sample transferred, ICT fit, linear per-blendshape "
                    "fields) against the exact meshes, with 95% intervals over pairs and over seeds.")
    q.add_argument("--minutes", type=float, default=20.0,
                   help="training budget per seed: 70%% for the autodecoder, 30%% for the diffusion model "
                        "(default 20; data and registration come on top)")
    q.add_argument("--config", default="tiny",
                   help="stage 1: a deformation preset or TOML file, e.g. a run's config.toml edited to try a "
                        "variant (default tiny; stage 2 is always tiny)")
    q.add_argument("--seeds", type=int, default=3, help="whole-protocol repeats, each with other people (default 3)")
    q.add_argument("--train-identities", type=int, default=16, help="identities with all expressions (default 16)")
    q.add_argument("--heldout-identities", type=int, default=4, help="identities seen only neutral (default 4)")
    q.add_argument("--face-model", metavar="PATH",
                   help="ICT face model .npz (default: LIBRARY/facemodels/ict_facekit.npz, else procedural)")
    q.add_argument("--keep", type=Path, metavar="DIR", help="keep data and runs here instead of a temp dir")
    q.add_argument("--device", default="auto", choices=DEVICES)
    add_json_flag(q)
    q.set_defaults(func=run_eval_expression)

    q = group(sub, common, "bench").add_parser(
        "generate", parents=[common], help="latency (person, expression) -> mesh arrays, preview and final")
    q.add_argument("--model", metavar="RUN", help="diffusion run (default: the newest)")
    q.add_argument("--repeats", type=int, default=5, help="timed generations per quality (default 5)")
    q.add_argument("--device", default="cpu", choices=DEVICES)
    add_json_flag(q)
    q.set_defaults(func=run_bench_generate)


def run_train_diffusion(args: argparse.Namespace) -> dict[str, Any] | None:
    from facestudio.cli.train_cmds import stop_on_signals, training_result
    from facestudio.models.diffusion_config import load_diffusion_config
    from facestudio.models.runs import format_progress
    from facestudio.models.train_diffusion import train_diffusion

    init = find_run(args.init_from, "diffusion", args.library) if args.init_from else None
    if args.resume:
        run_dir, config = find_run(args.resume, "diffusion", args.library), None
        autodecoder = find_run(args.autodecoder, "autodecoder", args.library) if args.autodecoder else None
        if init is not None:
            raise ValueError("--resume continues a run's own weights; drop --init-from")
    else:
        config = load_diffusion_config(args.config)
        autodecoder = find_run(args.autodecoder, "autodecoder", args.library)
        run_dir = runs_dir(args.library, "diffusion") / time.strftime("%Y%m%d-%H%M%S")

    def progress(p: dict[str, Any]) -> None:
        if not args.json:
            show_progress(format_progress(p))

    summary = train_diffusion(autodecoder, run_dir, config, args.device, args.max_steps, bool(args.resume), init,
                              progress, stop_on_signals())
    return training_result(summary, args.json)


def run_generate(args: argparse.Namespace) -> dict[str, Any]:
    from facestudio.export.mesh import write_mesh_arrays
    from facestudio.generation.generate import Generator
    from facestudio.generation.presets import expression_vector
    from facestudio.models.train_autodecoder import resolve_device, set_threads

    weights = expression_vector(args.expr, args.preset)   # bad names fail before any model loads
    if args.steps is not None and args.steps < 1:
        raise ValueError("--steps must be >= 1")
    gen = Generator(find_run(args.model, "diffusion", args.library), str(resolve_device(args.device)))
    threads = set_threads(gen.config.train.num_threads)
    t0 = time.perf_counter()
    verts, tris, colors = gen.generate(args.person, weights, args.seed, args.steps, args.guidance,
                                       "preview" if args.preview else "final")
    seconds = time.perf_counter() - t0
    path = write_mesh_arrays(verts, tris, colors, args.out)
    return {"out": str(path), "model": str(gen.run_dir), "person": args.person, "seed": args.seed,
            "expression": {k: float(v) for k, v in zip(_names(), weights) if v > 0},
            "vertices": int(len(verts)), "triangles": int(len(tris)), "seconds": round(seconds, 3),
            "threads": threads}


def _names() -> tuple[str, ...]:
    from facestudio.faces.arkit import BLENDSHAPE_NAMES

    return BLENDSHAPE_NAMES


def run_synth(args: argparse.Namespace) -> dict[str, Any]:
    from facestudio.generation.synth import build_synthetic_library
    from facestudio.paths import face_model_for, library_root

    root = library_root(args.library)
    face_model = face_model_for(root, args.face_model)
    if face_model is not None and not Path(face_model).is_file():
        raise ValueError(f"--face-model {face_model} does not exist")

    def progress(p: dict[str, Any]) -> None:
        if not args.json:
            show_progress(f"identity {p['identity']}/{p['identities']}  {p['segments']} segments  "
                          f"{p['elapsed_s']:.0f} s")

    result = build_synthetic_library(root, args.identities, args.expressions, face_model, args.frames, args.seed,
                                     progress)
    end_progress()
    return result


def run_eval_expression(args: argparse.Namespace) -> dict[str, Any]:
    from facestudio.cli.model_eval_cmds import default_face_model
    from facestudio.generation.evaluate import across_seeds
    from facestudio.models.config import load_config

    if args.minutes <= 0 or args.train_identities < 2 or args.heldout_identities < 1 or args.seeds < 1:
        raise ValueError("--minutes must be > 0, --train-identities >= 2, --heldout-identities >= 1, --seeds >= 1")
    face_model = args.face_model or default_face_model(args.library)
    if face_model is None or not Path(face_model).is_file():
        raise ValueError("eval expression needs the ICT face model (--face-model PATH, or `facestudio facemodel "
                         "import-ict`): its faces are the ground truth and its fit is baseline (c)")
    config = load_config(args.config)
    if config.model.output != "deformation":
        raise ValueError(f"--config {args.config}: eval expression moves each person's scan, so stage 1 must decode "
                         "deformation fields (model.output = \"deformation\")")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="fs-eval-expr-") as tmp:
        root = args.keep or Path(tmp)
        runs = [_protocol_seed(root / f"seed{seed}", seed, face_model, copy.deepcopy(config), args)
                for seed in range(args.seeds)]
    return {"face_model": "ict", "config": str(args.config), "preset": config.preset,
            "field_decoder": config.model.field_decoder, "train_identities": args.train_identities,
            "heldout_identities": args.heldout_identities, "minutes_per_seed": args.minutes, "seeds": args.seeds,
            "load_average_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
            "across_seeds": across_seeds([r["summary"] for r in runs]), "runs": runs}


#: Stage 1's share of eval expression's budget: its decoding bounds every generated expression
#: and is still improving when the budget ends (BENCHMARKS.md, "Stage 1 in the template frame":
#: 0.343 mm at 631 steps, 0.276 mm at 1,500, ~0.20 mm at ~9,500), while training stage 2 longer
#: has not been seen to help (BENCHMARKS.md, "Generation": doubling its steps, +0.14 to -0.05 mm).
STAGE1_SHARE = 0.7


def _protocol_seed(root: Path, seed: int, face_model: str, config: Any, args: argparse.Namespace) -> dict[str, Any]:
    """One whole protocol: people of this seed, both stages trained (stage 1 with ``config``, given
    this seed and the face model), every pair scored."""
    from facestudio.generation.evaluate import Baselines, make_protocol_data, score_pair, stage1_reconstruction, summarise
    from facestudio.generation.generate import Generator
    from facestudio.models.diffusion_config import tiny as diffusion_tiny
    from facestudio.models.train_autodecoder import load_trained, train_autodecoder
    from facestudio.models.train_diffusion import train_diffusion

    t0 = time.monotonic()
    train, pairs = make_protocol_data(root, args.train_identities, args.heldout_identities, face_model, seed=seed)
    data_s = time.monotonic() - t0
    config.train.seed = config.registration.seed = seed
    config.registration.face_model = face_model
    t0 = time.monotonic()
    # Registration of every training segment comes first and is not part of the training budget.
    train_autodecoder(train, root / "autodecoder", config, args.device, 0)
    registration_s = time.monotonic() - t0
    ad = _timed(lambda stop: train_autodecoder(None, root / "autodecoder", None, args.device, 10 ** 9, resume=True,
                                               stop_event=stop), args.minutes * 60 * STAGE1_SHARE, args.json)
    trained = load_trained(root / "autodecoder")
    ceilings = {"registered": stage1_reconstruction(trained, registered=True), "decoded": stage1_reconstruction(trained)}
    dconfig = diffusion_tiny()
    dconfig.train.seed = seed
    diff = _timed(lambda stop: train_diffusion(root / "autodecoder", root / "diffusion", dconfig, args.device, 10 ** 9,
                                               stop_event=stop), args.minutes * 60 * (1 - STAGE1_SHARE), args.json)
    gen = Generator(root / "diffusion", "cpu")
    baselines = Baselines(gen, face_model)
    t1 = time.monotonic()
    rows = [score_pair(gen, baselines, p, seed) for p in pairs]
    return {"seed": seed, "training_segments": len(train), "pairs": len(pairs), "data_seconds": round(data_s, 1),
            "registration_seconds": round(registration_s, 1), "autodecoder_steps": ad["step"],
            "diffusion_steps": diff["step"], "threads": ad["threads"], "eval_seconds": round(time.monotonic() - t1, 1),
            "sampling_steps": gen.config.sampling.final_steps, "stage1_ceiling": ceilings, "summary": summarise(rows),
            "per_pair": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]}


def _timed(train: Any, seconds: float, quiet: bool) -> dict[str, Any]:
    """Run ``train(stop_event)`` for a wall-clock budget (a timer sets the stop event)."""
    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set)
    timer.start()
    try:
        summary = train(stop)
    finally:
        timer.cancel()
    if not quiet:
        loss = "" if summary["loss"] is None else f", loss {summary['loss']:.4f}"
        print(f"{Path(summary['run']).name}: {summary['step']} steps{loss}", file=sys.stderr)
    return summary


def _time_new_person(gen: Any, neutral: Path) -> dict[str, Any]:
    """Seconds from a fused neutral scan the model never saw to its first final mesh: a copy of a
    training neutral's scan and metadata in a fresh folder, so nothing about it is stored yet
    (scan -> face model fit and template frame -> identity volume -> first mesh, which samples
    the neutral expression too)."""
    from facestudio.dataset.segment import MESH_FILE, SEGMENT_FILE
    from facestudio.faces.arkit import blendshape_vector

    with tempfile.TemporaryDirectory(prefix="fs-new-person-") as tmp:
        person = Path(tmp) / neutral.name
        person.mkdir()
        for name in (SEGMENT_FILE, MESH_FILE):
            shutil.copy2(neutral / name, person / name)
        t0 = time.perf_counter()
        v, _, _ = gen.generate(str(person), blendshape_vector({"jawOpen": 0.5}), seed=0, quality="final")
        seconds = time.perf_counter() - t0
        scan = len(gen.person_scan(str(person))[0])
    return {"seconds": round(seconds, 3), "scan_vertices": scan, "interior_vertices": len(v) - scan, "goal_s": 60.0,
            "meets_goal": seconds <= 60.0}


def run_bench_generate(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from facestudio.faces.arkit import blendshape_vector
    from facestudio.generation.generate import Generator
    from facestudio.models.train_autodecoder import resolve_device, set_threads

    if args.repeats < 1:
        raise ValueError("--repeats must be >= 1")
    device = resolve_device(args.device)
    gen = Generator(find_run(args.model, "diffusion", args.library), str(device))
    threads = set_threads(gen.config.train.num_threads)
    result: dict[str, Any] = {"model": str(gen.run_dir), "preset": gen.config.preset, "device": str(device),
                              "torch_threads": torch.get_num_threads(), "threads_set": threads,
                              "cpu_count": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2),
                              "guidance": gen.config.sampling.guidance}
    person: str = gen.data.subjects[0]
    if gen.deformation:
        result["new_person"] = _time_new_person(gen, Path(gen.autodecoder.segment_paths[gen.data.identity_index[0]]))
    gen.person_identity(person)      # a person is prepared once, before the sliders move
    goals = {"preview": 0.3, "final": 2.0}
    times: dict[str, list[float]] = {"preview": [], "final": []}
    verts: dict[str, int] = {}
    # Qualities alternate, so a burst of load from other processes hits both alike; the first
    # round warms up allocators and kernels and also samples the person's neutral expression
    # (Generator.latent caches it), so it is reported apart ("first_call_s"), not counted.
    for i in range(args.repeats + 1):
        weights = blendshape_vector({"jawOpen": 0.1 * (i % 8), "mouthSmileLeft": 0.5})
        for quality in times:
            t0 = time.perf_counter()
            v, _, _ = gen.generate(person, weights, seed=0, quality=quality)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[quality].append(time.perf_counter() - t0)
            verts[quality] = len(v)
    for quality, ts in times.items():
        q, median = gen.quality[quality], statistics.median(ts[1:])
        result[quality] = {"steps": q.steps, "network_calls": 2 * q.steps - 1, "mesh_upsample": q.mesh_upsample,
                           "median_s": round(median, 4), "min_s": round(min(ts[1:]), 4),
                           "max_s": round(max(ts[1:]), 4), "first_call_s": round(ts[0], 4),
                           "vertices": verts[quality], "goal_s": goals[quality],
                           "meets_goal": median <= goals[quality]}
    return result
