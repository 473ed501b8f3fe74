"""The face interface shared by every face source (ICT model, procedural head).

The synthetic renderer and the ground-truth scoring only need a bound identity's vertices
for given ARKit weights, its rendered triangles, colours and which vertices are the face.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class FaceSurface(Protocol):
    """A face with a bound identity, as the renderer and the ground truth need it.

    ``vertices`` returns all model vertices; ``triangles`` index the rendered surface only.
    """

    kind: str                    # "ict" | "procedural"
    identity_params: np.ndarray  # ICT identity weights, or the procedural shape parameters
    triangles: np.ndarray        # (F, 3) int32
    face_vertex_mask: np.ndarray  # (V,) bool, frontal face a TrueDepth camera sees
    vertex_colors: np.ndarray    # (V, 3) float32 RGB in [0, 1]

    def vertices(self, blendshapes: np.ndarray) -> np.ndarray:
        """(V, 3) float32 metres in the canonical head frame for 52 ARKit weights."""
        ...
