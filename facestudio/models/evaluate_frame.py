"""`facestudio eval frame`: which frame a deformation field should be read in, measured.

For pairs of ICT identities (the exact meshes as scans, so only the representation is measured),
every expression's rig motion is fitted as a 32^3 field of person A - read at the vertices (head
frame) or at their template coordinates (template frame, with the jaw-open template or a
neutral one) - and applied to A itself (the representation's own ceiling) and to person B (what
a field learned from other people can at best give a new person). Error: mean vertex distance to
the rig's motion on the face region.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from facestudio.capture.virtual.source import SyntheticFaceSource
from facestudio.dataset.segment import HEAD_BOX_CENTER, HEAD_BOX_SIZE
from facestudio.models.render import Box

TEMPLATES = {"jaw_open": None, "neutral": {}}     # None: template_frame.TEMPLATE_EXPRESSION


def evaluate_frames(face_model: str, identities: int = 3, resolution: int = 32) -> dict[str, Any]:
    from facestudio.faces.fit import fit_ict, transfer
    from facestudio.faces.ict import IctFaceModel
    from facestudio.models.deformation import deform, fit_field, vertex_normals
    from facestudio.models.template_frame import frame_of

    model = IctFaceModel.load(face_model)
    box = Box(HEAD_BOX_CENTER, HEAD_BOX_SIZE)
    people = []
    for seed in range(identities):
        truth = SyntheticFaceSource.create(face_model, seed=seed).truth()
        scan = truth["segments"][0]["vertices"]
        fit = fit_ict(model, scan, vertex_normals(scan, truth["triangles"]))
        people.append({"scan": scan, "fit": fit, "mask": np.asarray(truth["face_vertex_mask"], bool),
                       "frames": {name: frame_of(fit, scan, expr) for name, expr in TEMPLATES.items()},
                       "segments": truth["segments"]})
    rows = []
    for a, pa in enumerate(people):
        pb = people[(a + 1) % len(people)]
        for seg in pa["segments"][1:]:
            w = seg["blendshapes"]
            motion_a = transfer(pa["fit"], pa["scan"], w) - pa["scan"]
            motion_b = transfer(pb["fit"], pb["scan"], w) - pb["scan"]
            row: dict[str, Any] = {"label": seg["label"],
                                   "motion_mm": float(np.linalg.norm(motion_a, axis=1)[pa["mask"]].mean() * 1000)}

            def error(field: Any, person: dict[str, Any], motion: np.ndarray, frame: Any = None) -> float:
                moved = deform(person["scan"], field, box, frame)
                return float(np.linalg.norm(moved - person["scan"] - motion, axis=1)[person["mask"]].mean() * 1000)

            head = fit_field(pa["scan"], motion_a, box, resolution)
            row["head_own_mm"], row["head_other_mm"] = error(head, pa, motion_a), error(head, pb, motion_b)
            for name in TEMPLATES:
                fa, fb = pa["frames"][name], pb["frames"][name]
                field = fit_field(fa.coords, motion_a @ fa.rotation, box, resolution)
                row[f"template_{name}_own_mm"] = error(field, pa, motion_a, fa)
                row[f"template_{name}_other_mm"] = error(field, pb, motion_b, fb)
            rows.append(row)
    keys = [k for k in rows[0] if k.endswith("_mm")]
    labels = sorted({r["label"] for r in rows})
    per_label = {lab: {k: round(float(np.mean([r[k] for r in rows if r["label"] == lab])), 3) for k in keys}
                 for lab in labels}
    return {"identities": identities, "resolution": resolution, "pairs": len(rows),
            "mean": {k: round(float(np.mean([r[k] for r in rows])), 3) for k in keys}, "per_expression": per_label}
