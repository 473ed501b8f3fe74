"""The mouth a fused scan cannot see: the face model's teeth, gums, tongue and mouth socket,
fitted to the person and moved by the same deformation field as the scan (issue 14).

A TrueDepth take of a neutral face fuses the lips as one closed surface: there is nothing
behind them. Moving that scan alone, an opened jaw stretches the triangles that join the lips
into a lip-coloured sheet across the mouth. So a person's canonical neutral is their fused scan
*plus* an interior from the face model already fitted to the scan (the template frame's fit):
the fitted identity's mouth-socket, gums/tongue and teeth meshes, in the scan's frame, coloured
with the virtual device's interior palette (:mod:`facestudio.faces.coloring`). Their template
coordinates are exact (they are ICT vertices), so stage 1 learns their motion with the skin's
(:mod:`facestudio.models.deformation_targets` adds the rig's motion of the interior to every
target, at INTERIOR_WEIGHT) and G2 decodes it from the same latent.

An avatar (:func:`avatar`) is then the moved scan with the triangles that the expression tore
open removed (those stretched far beyond their neutral size: the lip seam of an open mouth) and
the moved interior appended after the scan's vertices - the first N vertices are still the
scan's, in order, and the neutral expression removes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MOUTH_REGIONS = ("mouth_socket", "gums_tongue", "teeth")
#: The interior's weight in stage 1's targets and loss, against 1 for the scan: at full weight the
#: field's fit to the skin lost 0.02 mm (0.091 -> 0.114 mm on a jawOpen, 32^3, one ICT person), at
#: 0.1 it loses 0.005 mm and the teeth still follow the jaw to 1.5 mm of 12 mm - millimetres no
#: one sees inside a mouth, where the skin's tenths of a millimetre are the expression.
INTERIOR_WEIGHT = 0.1
TORN_RATIO = 3.0        # a scan triangle whose longest edge grew by more than this factor ...
TORN_MIN_M = 0.002      # ... and by more than this much is torn open by the expression,
TORN_EDGE_RATIO = 1.5   # and so is a neighbour that grew by this factor (else the cut is jagged)


@dataclass
class MouthInterior:
    vertices: np.ndarray    # (K, 3) float32 m, scan frame: the fitted identity's neutral interior
    coords: np.ndarray      # (K, 3) float32 m: the same vertices on the template
    triangles: np.ndarray   # (T, 3) int32 into ``vertices``
    colors: np.ndarray      # (K, 3) uint8


def fitted_interior(fit, template: np.ndarray) -> MouthInterior:
    """The interior of a fitted face model (an :class:`facestudio.faces.fit.IctFit`);
    ``template``: the template's vertices (V, 3) m, the same topology."""
    from facestudio.faces.arkit import NUM_BLENDSHAPES
    from facestudio.faces.coloring import GUMS, MOUTH_INTERIOR, TEETH

    model = fit.model
    keep = np.flatnonzero(model.region_mask(*MOUTH_REGIONS))
    index = np.full(model.num_vertices, -1, np.int64)
    index[keep] = np.arange(len(keep))
    colors = np.zeros((model.num_vertices, 3), np.float32)
    for region, color in zip(MOUTH_REGIONS, (MOUTH_INTERIOR, GUMS, TEETH)):
        colors[model.region_mask(region)] = color
    neutral = fit.vertices(np.zeros(NUM_BLENDSHAPES, np.float32))
    return MouthInterior(neutral[keep].astype(np.float32), template[keep].astype(np.float32),
                         index[model.triangles_in(*MOUTH_REGIONS)].astype(np.int32),
                         np.round(colors[keep] * 255).astype(np.uint8))


def torn(neutral: np.ndarray, moved: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(M,) bool: triangles whose longest edge grew by more than TORN_RATIO and TORN_MIN_M -
    skin does not stretch threefold, a fused lip seam pulled open does - and their neighbours
    that grew by TORN_EDGE_RATIO (hysteresis: the half-stretched rim left by the cut otherwise
    shows as spikes)."""
    def longest(v: np.ndarray) -> np.ndarray:
        t = v[triangles]
        return np.linalg.norm(t - np.roll(t, 1, axis=1), axis=2).max(axis=1)

    before, after = longest(neutral), longest(moved)
    growth = after - before
    seed = (after > TORN_RATIO * before) & (growth > TORN_MIN_M)
    rim = np.zeros(len(neutral), bool)
    rim[triangles[seed].ravel()] = True
    return seed | (rim[triangles].any(axis=1) & (after > TORN_EDGE_RATIO * before) & (growth > TORN_MIN_M / 2))


def interior_displacements(field: torch.Tensor, interior: MouthInterior, box, rotation: np.ndarray) -> np.ndarray:
    """(K, 3) m scan-frame motion of the interior under a template-frame field (3, R, R, R) m."""
    from facestudio.models.deformation import sample_field

    with torch.no_grad():
        local = sample_field(field.float().cpu(), torch.from_numpy(interior.coords), box)
        return (local @ torch.from_numpy(np.asarray(rotation, np.float32)).T).numpy()


def avatar(scan: tuple[np.ndarray, np.ndarray, np.ndarray], field: torch.Tensor, box, frame=None
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertices, triangles, colors) of a person's scan (vertices, triangles, colors) moved by a
    field (3, R, R, R) m: with a template ``frame`` that carries an interior, the torn scan
    triangles dropped and the moved interior appended; otherwise the moved scan alone."""
    from facestudio.models.deformation import deform

    vertices, triangles, colors = scan
    moved = deform(vertices, field, box, frame)
    interior = getattr(frame, "interior", None)
    if interior is None:
        return moved, triangles, colors
    inner = interior.vertices + interior_displacements(field, interior, box, frame.rotation)
    kept = triangles[~torn(vertices, moved, triangles)]
    return (np.concatenate([moved, inner]).astype(np.float32),
            np.concatenate([kept, interior.triangles + len(vertices)]).astype(np.int32),
            np.concatenate([colors, interior.colors]))
