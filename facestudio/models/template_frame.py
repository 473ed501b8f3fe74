"""Where a person's deformation field is read: the face model's template frame (issue 14).

A field over the head box read at the scan's own vertices (the head frame) means something
different for every face: the same voxel is lip on one person and chin on the next, so stage 1
must store every person's version of an expression and stage 2 must learn to move each across
faces from a dozen people. With a face model fitted to the person's neutral scan (the ICT rig
of :mod:`facestudio.faces.fit`), every scan vertex gets a place on one shared template - its
closest point on the fitted neutral, carried by its barycentric coordinates onto the template,
plus its offset from that point in the model's axes - and the field is read there. A jawOpen
field is then one field for everybody (exactly so on ICT faces, whose expression shapes do not
depend on the identity), and a learned model spends its capacity on what differs.

The template is ICT's mean identity with the jaw open (:data:`TEMPLATE_EXPRESSION`): a grid
cannot give touching lips different motions, and with the jaw open the upper and lower lip of
the template lie centimetres apart, so the jaw's motion no longer smears across the mouth.
Likewise a closing eyelid slides a millimetre or two in front of its eyeball: with the
template's eyeballs pushed back (``registration.eyeballs_back_m``; 2 cm in the presets) the
lid's motion no longer smears onto the scan's visible eyeball, and a closed eye closes
(BENCHMARKS.md, "Closed eyelids").
Displacements are read in the model's axes and turned into the scan's by the fit's rotation.

The frame also carries the person's mouth interior (:mod:`facestudio.models.mouth_interior`):
the fitted model's teeth, gums and mouth socket, which a fused scan cannot see.

Stored with a deformation run for each training subject's neutral scan:

    RUN/fields/frames/NNNN.safetensors   coords (N, 3) float32 m, rotation (3, 3) float32,
                                         for the neutral segment NNNN's fused scan vertices;
                                         interior_vertices, interior_coords (K, 3) float32 m,
                                         interior_triangles (T, 3) int32, interior_colors
                                         (K, 3) uint8 (absent in runs before the interior)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from facestudio.faces.arkit import blendshape_vector
from facestudio.models.mouth_interior import MouthInterior, fitted_interior
from facestudio.storage import writing

TEMPLATE_EXPRESSION = {"jawOpen": 1.0}
EYEBALLS = ("eyeball_left", "eyeball_right")
INTERIOR_KEYS = ("vertices", "coords", "triangles", "colors")


@dataclass
class TemplateFrame:
    coords: np.ndarray      # (N, 3) float32 m: each scan vertex's place in the template frame
    rotation: np.ndarray    # (3, 3) float32: template (model) axes -> scan axes
    interior: MouthInterior | None = None   # the mouth behind the scan's closed lips


def template_vertices(model, expression: dict[str, float] | None = None, eyeballs_back_m: float = 0.0) -> np.ndarray:
    """(V, 3) m: the template every person's scan is carried onto (mean identity, jaw open,
    eyeballs ``eyeballs_back_m`` behind their place; the model looks along +z)."""
    weights = blendshape_vector(TEMPLATE_EXPRESSION if expression is None else expression)
    vertices = model.vertices_m(np.zeros(model.num_identities, np.float32), weights)
    vertices[model.region_mask(*EYEBALLS), 2] -= eyeballs_back_m
    return vertices


def frame_of(fit, scan_vertices: np.ndarray, expression: dict[str, float] | None = None,
             eyeballs_back_m: float = 0.0) -> TemplateFrame:
    """The template frame of a scan from the face model fitted to it (an :class:`IctFit`);
    ``expression``: the template's ARKit weights (default :data:`TEMPLATE_EXPRESSION`);
    ``eyeballs_back_m``: see :func:`template_vertices` (a run's registration.eyeballs_back_m)."""
    from facestudio.faces.fit import at, correspondence

    triangles, weights, closest = correspondence(fit, scan_vertices)
    offset = (scan_vertices - closest) @ fit.rotation          # scan axes -> model axes
    template = template_vertices(fit.model, expression, eyeballs_back_m)
    coords = at(template, triangles, weights) + offset
    return TemplateFrame(coords.astype(np.float32), np.asarray(fit.rotation, np.float32),
                         fitted_interior(fit, template))


def fit_frame(model, vertices: np.ndarray, triangles: np.ndarray, eyeballs_back_m: float = 0.0) -> TemplateFrame:
    """Fit the face model to a neutral scan and return the scan's template frame (~5 s)."""
    from facestudio.faces.fit import fit_ict
    from facestudio.models.deformation import vertex_normals

    return frame_of(fit_ict(model, vertices, vertex_normals(vertices, triangles)), vertices,
                    eyeballs_back_m=eyeballs_back_m)


def save_frame(path: Path, frame: TemplateFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")   # processes of one run may race
    arrays = {"coords": frame.coords, "rotation": frame.rotation}
    if frame.interior is not None:
        arrays.update({f"interior_{k}": getattr(frame.interior, k) for k in INTERIOR_KEYS})
    with writing(tmp):
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
    tmp.replace(path)


def load_frame(path: Path) -> TemplateFrame:
    data = load_file(str(path))
    interior = MouthInterior(*(data[f"interior_{k}"] for k in INTERIOR_KEYS)) if "interior_coords" in data else None
    return TemplateFrame(data["coords"], data["rotation"], interior)
