"""The synthetic expression-transfer protocol (issue 14) and its baselines, all in one run.

Data: synthetic ICT identities rendered from the virtual device's exact geometry
(:mod:`facestudio.models.synthetic_segments`), each segment with its TSDF-fused scan. Training
identities contribute every expression except one held-out (identity, expression) pair each;
held-out identities contribute only their neutral segment. Every method moves the person's
*fused neutral scan* (what the Library shows) and is scored against the exact mesh:

- ours: the diffusion model's field for (person, expression) (:meth:`Generator.field`), read in
  the model's frame (the template frame of the person's fitted face model, for the presets),
  applied as the app does (:func:`~facestudio.models.mouth_interior.avatar`: with the mouth
  interior behind the lips and the lip seam an opened jaw tears removed);
- (a) the scan unchanged;
- (b) the training sample nearest in blendshape space, its registered motion as a head-frame
  field carried over;
- (c) a conventional 3DMM: the ICT identity and pose fitted to the scan, its expression
  blendshapes carried to the scan (:mod:`facestudio.faces.fit`) - close to an oracle on ICT faces,
  which *are* that model;
- (d) a linear per-blendshape field model, least squares on the training identities' registered
  head-frame fields (one field per ARKit weight, ridge-regularised);
- and, for a template-frame model, ``linear_template``: (d) fitted to the model's own decoded
  fields in its frame - not a baseline of the issue, but what tells the diffusion model's share
  from the frame's.

Expression error (mm): from each true-neutral face vertex a ray along its normal measures how far
the surface moved between the person's scan and the method's result (signed), against the true
motion; mean |difference|. A ray counts where it measures the face: it reaches its own vertex
first on the true neutral (not one in a fold or socket), meets the true expression within
RAY_START_M, and meets the person's scan within SCAN_NEAR_M of the true neutral (the scan covers
that skin). A method whose result the ray misses, or that errs by more than ERROR_CAP_M there,
counts ERROR_CAP_M: two fused scans never cover the same skin, and without the cap a few rays
through holes (errors of centimetres at 2% of the rays) outweighed the rest of the face - the
fused expression scan itself scored worse than the unchanged neutral. Surface distance (mm):
symmetric face-region distance to the exact expression mesh. Open-mouth depth error (mm, only
pairs whose true expression shows the inside of the mouth): along frontal rays that meet the
true mesh first on its mouth interior, the mean |depth difference| of the method's first
surface (capped like the expression error) - a scan moved alone shows a lip-coloured sheet
there, centimetres in front of the teeth and tongue.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open3d as o3d
import torch

from facestudio.capture.virtual.source import SyntheticFaceSource
from facestudio.generation.generate import Generator, Mesh
from facestudio.models.deformation import FIELD_UNIT_M, deform, displacements, fit_field, vertex_normals
from facestudio.models.deformation_targets import load_scan, neutral_segments, run_frame, target_path, uses_template_frame
from facestudio.models.evaluate import mesh_distance_mm
from facestudio.models.mouth_interior import avatar
from facestudio.models.synthetic_segments import load_truth, write_synthetic_segment
from facestudio.models.train_autodecoder import TrainedAutodecoder

RAY_START_M = 0.03          # rays start this far outside the true neutral surface
OWN_VERTEX_M = 5e-4         # a ray whose first true-neutral hit is farther from its vertex is hidden
SCAN_NEAR_M = 0.003         # the person's scan must meet the ray this close to the true neutral
ERROR_CAP_M = 0.010         # a ray's error counts at most this much (and this much where it misses)
MOUTH_PIXEL_M = 5e-4        # the open-mouth depth error's frontal ray spacing
MOUTH_MIN_RAYS = 500        # an open mouth: its inside seen over >= 125 mm^2 (closed ones: < 200 rays)
HELDOUT_SEED = 500          # held-out identities use seeds 500, 501, ... (training: 0, 1, ...)
METHODS = ("ours", "neutral", "nearest_transfer", "ict_fit", "linear", "linear_template")


@dataclass
class Pair:
    group: str                      # "train_identity" or "heldout_identity"
    person: str                     # subject name (training) or neutral segment folder (held out)
    label: str
    blendshapes: np.ndarray         # (52,)
    truth_neutral: np.ndarray       # (V, 3) exact vertices
    truth_expression: np.ndarray
    triangles: np.ndarray
    face_mask: np.ndarray


def make_protocol_data(root: Path, train_identities: int, heldout_identities: int, face_model: str | None,
                       views: int = 24, image_size: int = 64, seed: int = 0) -> tuple[list[Path], list[Pair]]:
    """Training segments and the held-out pairs (their truths kept in memory). ``seed`` picks the
    people: protocol seed s uses identities 1000 s + 0, 1, ... (training) and 1000 s + 500, ...
    (held out), so every seed of the whole protocol meets other faces."""
    train: list[Path] = []
    pairs: list[Pair] = []
    seeds = [(1000 * seed + s, "train_identity") for s in range(train_identities)]
    seeds += [(1000 * seed + HELDOUT_SEED + j, "heldout_identity") for j in range(heldout_identities)]
    for identity, group in seeds:
        source = SyntheticFaceSource.create(face_model, seed=identity)
        truth = source.truth()
        segs = truth["segments"]
        held = [1 + identity % (len(segs) - 1)] if group == "train_identity" else list(range(1, len(segs)))
        folder = root / ("train" if group == "train_identity" else "new")
        neutral_path = None
        for k in range(len(segs)):
            if k in held:
                continue
            made = write_synthetic_segment(source, k, folder, None, views, 0, image_size).train
            train += [made] if group == "train_identity" else []
            neutral_path = made if k == 0 else neutral_path
        person = f"synth{identity:03d}" if group == "train_identity" else str(neutral_path)
        for k in held:
            pairs.append(Pair(group, person, segs[k]["label"], np.asarray(segs[k]["blendshapes"], np.float32),
                              segs[0]["vertices"], segs[k]["vertices"], truth["triangles"],
                              np.asarray(truth["face_vertex_mask"], bool)))
    return train, pairs


def _scene(vertices: np.ndarray, triangles: np.ndarray) -> o3d.t.geometry.RaycastingScene:
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(vertices.astype(np.float32)), o3d.core.Tensor(triangles.astype(np.uint32)))
    return scene


def normal_rays(pair: Pair) -> np.ndarray:
    """(F, 6) rays from outside the true neutral face region inward along its vertex normals,
    only those that reach their own vertex before any other surface."""
    n = vertex_normals(pair.truth_neutral, pair.triangles)[pair.face_mask]
    p = pair.truth_neutral[pair.face_mask]
    rays = np.concatenate([p + RAY_START_M * n, -n], axis=1).astype(np.float32)
    first = np.abs(moved(rays, pair.truth_neutral, pair.triangles))
    return rays[first <= OWN_VERTEX_M]


def moved(rays: np.ndarray, vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Signed outward position (m) of a surface along each ray relative to the true neutral (nan = miss)."""
    t = _scene(vertices, triangles).cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
    return np.where(np.isfinite(t), RAY_START_M - t, np.nan)


def mouth_rays(pair: Pair) -> np.ndarray:
    """(P, 6) frontal rays (toward -z, a MOUTH_PIXEL_M grid) that meet the true expression first
    on its mouth interior (socket, gums and tongue, teeth): where an open mouth shows its inside.
    Empty for a closed mouth."""
    from facestudio.faces.ict import ICT_REGIONS
    from facestudio.models.mouth_interior import MOUTH_REGIONS

    inside = np.zeros(len(pair.truth_expression), bool)
    for region in MOUTH_REGIONS:
        inside[slice(*ICT_REGIONS[region])] = True
    lo, hi = pair.truth_expression[inside].min(axis=0), pair.truth_expression[inside].max(axis=0)
    xs, ys = (np.arange(lo[k], hi[k], MOUTH_PIXEL_M) for k in (0, 1))
    x, y = np.meshgrid(xs, ys)
    rays = np.zeros((x.size, 6), np.float32)
    rays[:, 0], rays[:, 1], rays[:, 2], rays[:, 5] = x.ravel(), y.ravel(), hi[2] + RAY_START_M, -1.0
    hit = _scene(pair.truth_expression, pair.triangles).cast_rays(o3d.core.Tensor(rays))["primitive_ids"].numpy()
    seen = hit != o3d.t.geometry.RaycastingScene.INVALID_ID
    seen[seen] = inside[pair.triangles[hit[seen]]].all(axis=1)
    return rays[seen]


def depth_error_mm(rays: np.ndarray, truth: Mesh | tuple[np.ndarray, np.ndarray], mesh: Mesh) -> float:
    """Mean |depth difference| (mm) along ``rays`` between two meshes; a miss or an error beyond
    ERROR_CAP_M counts ERROR_CAP_M."""
    depth = [_scene(m[0], m[1]).cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy() for m in (truth, mesh)]
    return float(np.minimum(np.nan_to_num(np.abs(depth[1] - depth[0]), nan=ERROR_CAP_M, posinf=ERROR_CAP_M),
                            ERROR_CAP_M).mean() * 1000)


def score_meshes(pair: Pair, scan: Mesh, results: dict[str, Mesh]) -> dict[str, Any]:
    """Expression error and surface distance of each method's result (all moves of ``scan``), and
    where the true expression shows the inside of its mouth, the open-mouth depth error."""
    rays = normal_rays(pair)
    mouth = mouth_rays(pair)
    true_move = moved(rays, pair.truth_expression, pair.triangles)
    reference = moved(rays, scan[0], scan[1])
    valid = (np.abs(true_move) <= RAY_START_M) & (np.abs(reference) <= SCAN_NEAR_M)   # nan compares False
    truth = {"vertices": pair.truth_expression, "triangles": pair.triangles, "face_vertex_mask": pair.face_mask}
    row: dict[str, Any] = {"rays_valid": int(valid.sum()),
                           "true_motion_mm": float(np.abs(true_move[valid]).mean() * 1000)}
    for name, mesh in results.items():
        error = np.abs(moved(rays, mesh[0], mesh[1]) - reference - true_move)[valid]
        error = np.minimum(np.nan_to_num(error, nan=ERROR_CAP_M), ERROR_CAP_M)
        row[f"{name}_expression_mm"] = float(error.mean() * 1000)
        row[f"{name}_surface_mm"] = mesh_distance_mm(mesh[0], mesh[1], truth)["mesh_distance_mm"]
        if len(mouth) >= MOUTH_MIN_RAYS:
            row[f"{name}_mouth_mm"] = depth_error_mm(mouth, (pair.truth_expression, pair.triangles), mesh)
    return row


class Baselines:
    """(b), (c) and (d) for one deformation model, and its own frame's linear model.

    (b) and (d) work in the head frame, as a method without a face model must: from each training
    segment's *registered* target (what stage 1 was given, so the autodecoder's decoding loss does
    not handicap them), as the head-frame field that moves its subject's scan the same way. With a
    template-frame model, ``linear_template`` is (d) fitted on the model's own decoded fields in
    that frame: what the diffusion model adds beyond a linear map from the weights."""

    def __init__(self, gen: Generator, face_model: str | None, ridge: float = 1e-2) -> None:
        from facestudio.dataset.segment import Segment

        self.gen = gen
        ad = gen.autodecoder
        segments = [Segment(p) for p in ad.segment_paths]
        neutral = neutral_segments(segments)
        self.changes = torch.stack([self._head_frame_change(k, neutral[k], segments) for k in range(len(segments))])
        blendshapes = gen.data.blendshapes
        self.linear = _ridge(blendshapes, self.changes, ridge)
        self.linear_template = None
        if uses_template_frame(ad.config.registration):
            decoded = torch.stack([gen.decode_field(z) for z in gen.data.latents])
            self.linear_template = _ridge(blendshapes, decoded - decoded[neutral], ridge)
        self.model = None
        if face_model is not None:
            from facestudio.faces.ict import IctFaceModel

            self.model = IctFaceModel.load(face_model)
        self._fits: dict[str, Any] = {}

    def _head_frame_change(self, k: int, neutral: int, segments: list[Any]) -> torch.Tensor:
        from safetensors.torch import load_file

        ad = self.gen.autodecoder
        field = load_file(str(target_path(ad.run_dir, k)))["field"] * FIELD_UNIT_M
        frame = run_frame(ad.run_dir, ad.config.registration, neutral)
        if frame is None or k == neutral:
            return field if k != neutral else torch.zeros_like(field)
        scan = load_scan(segments[neutral].path)[0]
        motion = displacements(field, torch.from_numpy(scan), self.gen.box, frame).numpy()
        return fit_field(scan, motion, self.gen.box, field.shape[-1])

    def nearest(self, blendshapes: np.ndarray) -> tuple[int, torch.Tensor]:
        data = self.gen.data
        i = int(torch.cdist(torch.from_numpy(blendshapes)[None], data.blendshapes)[0].argmin())
        return i, self.changes[i]

    def linear_field(self, blendshapes: np.ndarray, template: bool = False) -> torch.Tensor:
        basis = self.linear_template if template else self.linear
        return torch.einsum("k,kcdhw->cdhw", torch.from_numpy(blendshapes).float(), basis)

    def ict_fit(self, person: str, scan: Mesh, blendshapes: np.ndarray) -> np.ndarray | None:
        from facestudio.faces.fit import fit_ict, transfer

        if self.model is None:
            return None
        if person not in self._fits:
            self._fits[person] = fit_ict(self.model, scan[0], vertex_normals(scan[0], scan[1]))
        return transfer(self._fits[person], scan[0], blendshapes)


def _ridge(blendshapes: torch.Tensor, fields: torch.Tensor, ridge: float) -> torch.Tensor:
    """(52, 3, R, R, R): one field per ARKit weight, ridge least squares (the prompts move several
    weights together, so the unregularised system is singular)."""
    b, flat = blendshapes.double(), fields.reshape(len(fields), -1).double()
    solved = torch.linalg.solve(b.T @ b + ridge * torch.eye(b.shape[1], dtype=b.dtype), b.T @ flat)
    return solved.float().reshape(b.shape[1], *fields.shape[1:])


def score_pair(gen: Generator, baselines: Baselines, pair: Pair, seed: int = 0) -> dict[str, Any]:
    """Every method's expression error and surface distance for one held-out pair."""
    identity = gen.person_identity(pair.person)
    scan = gen.person_scan(pair.person)
    nearest, change = baselines.nearest(pair.blendshapes)
    frame = gen.person_frame(pair.person)
    moved_by = lambda field, f=None: (deform(scan[0], field, gen.box, f), scan[1], scan[2])  # noqa: E731
    results = {"ours": avatar(scan, gen.field(identity, pair.blendshapes, seed), gen.box, frame), "neutral": scan,
               "nearest_transfer": moved_by(change), "linear": moved_by(baselines.linear_field(pair.blendshapes))}
    if baselines.linear_template is not None:
        results["linear_template"] = moved_by(baselines.linear_field(pair.blendshapes, template=True), frame)
    fitted = baselines.ict_fit(pair.person, scan, pair.blendshapes)
    if fitted is not None:
        results["ict_fit"] = (fitted, scan[1], scan[2])
    row: dict[str, Any] = {"group": pair.group, "person": Path(pair.person).parent.parent.name
                           if pair.group == "heldout_identity" else pair.person, "label": pair.label,
                           "nearest_training_sample": gen.data.names[nearest]}
    return {**row, **score_meshes(pair, scan, results)}


@torch.no_grad()
def stage1_reconstruction(trained: TrainedAutodecoder, registered: bool = False) -> dict[str, Any]:
    """The autodecoder's own expression error on the expressions it was trained on: each training
    identity's decoded fields (or, ``registered``, the registered target fields it learned)
    applied to its scan and scored like a generated pair. A generator can hardly beat the decoder
    reproducing the very segments it was fitted to."""
    from facestudio.dataset.segment import Segment
    from facestudio.models.render import Box
    from safetensors.torch import load_file

    segments = [Segment(p) for p in trained.segment_paths]
    neutral = neutral_segments(segments)
    box = Box(tuple(segments[0].info.box_center), segments[0].info.box_size)
    model = trained.model
    rows = []
    for k, seg in enumerate(segments):
        truth, neutral_truth = load_truth(seg.path), load_truth(segments[neutral[k]].path)
        if neutral[k] == k or truth is None or neutral_truth is None:
            continue
        if registered:
            field = load_file(str(target_path(trained.run_dir, k)))["field"] * FIELD_UNIT_M
        else:
            decoded = model(torch.tensor([k, neutral[k]])) * FIELD_UNIT_M
            field = decoded[0] - decoded[1]
        scan = load_scan(segments[neutral[k]].path)
        pair = Pair("train_identity", seg.info.subject, seg.info.label, np.asarray(seg.info.blendshapes, np.float32),
                    neutral_truth["vertices"], truth["vertices"], truth["triangles"],
                    neutral_truth["face_vertex_mask"].astype(bool))
        frame = run_frame(trained.run_dir, trained.config.registration, neutral[k])
        rows.append(score_meshes(pair, scan, {"autodecoder": avatar(scan, field, box, frame), "neutral": scan}))
    mean = {k: round(float(np.mean([r[k] for r in rows if k in r])), 3)
            for k in dict.fromkeys(k for r in rows for k in r if k.endswith("_mm"))}
    return {"segments": len(rows), **mean}


def interval(values: list[float] | np.ndarray, samples: int = 2000, seed: int = 0) -> list[float]:
    """95% bootstrap interval of the mean."""
    v = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(samples, len(v)))].mean(axis=1)
    return [round(float(np.quantile(means, 0.025)), 3), round(float(np.quantile(means, 0.975)), 3)]


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per group and overall: each method's mean with a 95% bootstrap interval over pairs, and the
    paired difference ours - method with its interval; the goal checks of issue 14."""
    out: dict[str, Any] = {"failed_pairs": sum("error" in r for r in rows)}
    for group in ("train_identity", "heldout_identity", "all"):
        sel = [r for r in rows if (group == "all" or r["group"] == group) and "error" not in r]
        if not sel:
            continue
        summary: dict[str, Any] = {"pairs": len(sel)}
        for key in dict.fromkeys(k for r in sel for k in r if k.endswith("_mm")):
            values = [r[key] for r in sel if key in r]          # open-mouth errors: open mouths only
            summary[key] = {"mean": round(float(np.mean(values)), 3), "ci95": interval(values)}
            if len(values) < len(sel):
                summary[key]["pairs"] = len(values)
        for method in METHODS[1:]:
            for measure, suffix in (("expression", ""), ("mouth", "_mouth")):
                key = f"{method}_{measure}_mm"
                diff = [r[f"ours_{measure}_mm"] - r[key] for r in sel if key in r and f"ours_{measure}_mm" in r]
                if diff:
                    summary[f"ours_minus_{method}{suffix}_mm"] = {"mean": round(float(np.mean(diff)), 3),
                                                                 "ci95": interval(diff)}
        summary["goals"] = goals(summary)
        out[group] = summary
    return out


def goals(summary: dict[str, Any]) -> dict[str, bool]:
    """Issue 14's goals on one summary: >= 50% below (a), below (b) and (d) with intervals that
    do not overlap, surface distance <= 1 mm."""
    ours = summary["ours_expression_mm"]
    below = lambda m: ours["ci95"][1] < summary[f"{m}_expression_mm"]["ci95"][0]  # noqa: E731
    # The paired test as well: the interval of ours - method (the same pairs, or the same seeds)
    # lies below zero. Separate intervals of two means overlap long after their difference is sure.
    paired = lambda m: summary[f"ours_minus_{m}_mm"]["ci95"][1] < 0  # noqa: E731
    return {"50pct_below_neutral": ours["mean"] <= 0.5 * summary["neutral_expression_mm"]["mean"],
            "below_nearest_transfer": below("nearest_transfer"), "below_linear": below("linear"),
            "below_nearest_transfer_paired": paired("nearest_transfer"), "below_linear_paired": paired("linear"),
            "surface_at_most_1mm": summary["ours_surface_mm"]["mean"] <= 1.0}


def across_seeds(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Each method's mean over the seeds of the whole protocol (all pairs of a seed), and each
    paired difference ours - method, with a 95% Student-t interval of that mean over the seeds
    (none for one seed), and the goals on those intervals."""
    from scipy.stats import t as student_t

    out: dict[str, Any] = {}
    for group in ("heldout_identity", "all"):
        sel = [s[group] for s in summaries if group in s]
        if not sel:
            continue
        summary: dict[str, Any] = {"seeds": len(sel)}
        for key in [k for k in sel[0] if k.endswith("_mm") and all(k in s for s in sel)]:
            means = np.array([s[key]["mean"] for s in sel])
            half = float(student_t.ppf(0.975, len(means) - 1) * means.std(ddof=1) / np.sqrt(len(means))) \
                if len(means) > 1 else float("nan")
            summary[key] = {"mean": round(float(means.mean()), 3), "per_seed": [round(float(m), 3) for m in means],
                            "ci95": [round(float(means.mean()) - half, 3), round(float(means.mean()) + half, 3)]
                            if len(means) > 1 else None}
        if len(sel) > 1:
            summary["goals"] = goals(summary)
        out[group] = summary
    return out
