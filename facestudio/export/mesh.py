"""Write a colored triangle mesh as PLY, OBJ, STL or glTF-binary.

Open3D writes PLY, OBJ (vertex colors as the common ``v x y z r g b`` extension) and STL
(geometry only: the format has no colors). Its GLB writer in 0.20 emits an index accessor
that points past the vertex buffer, so .glb goes through trimesh, whose glTF export is
widely used and stores vertex colors as COLOR_0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open3d as o3d

FORMATS = (".ply", ".obj", ".stl", ".glb")


def write_mesh(mesh: o3d.geometry.TriangleMesh, path: str | Path) -> Path:
    """Write ``mesh`` to ``path``; the suffix picks the format. Raises ValueError/OSError."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"unsupported mesh format {path.suffix!r}: use one of {', '.join(FORMATS)}")
    if len(mesh.triangles) == 0:
        raise ValueError("the mesh is empty: nothing to export")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".glb":
        _write_glb(mesh, path)
        return path
    mesh = o3d.geometry.TriangleMesh(mesh)
    mesh.compute_vertex_normals()           # STL needs facet normals; the others store vertex normals
    if suffix != ".stl":
        mesh.triangle_normals = o3d.utility.Vector3dVector()
    # Open3D prints warnings on stdout, which would corrupt `--json` output.
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        ok = o3d.io.write_triangle_mesh(str(path), mesh, write_ascii=False, write_vertex_colors=True,
                                        write_triangle_uvs=False)
    if not ok:
        raise OSError(f"could not write {path}")
    return path


def write_mesh_arrays(vertices: np.ndarray, triangles: np.ndarray, colors: np.ndarray | None,
                      path: str | Path) -> Path:
    """:func:`write_mesh` for the arrays a decoder gives: vertices (N, 3) metres, triangles
    (M, 3), colors (N, 3) uint8 or None."""
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(np.asarray(vertices, dtype=np.float64)),
                                     o3d.utility.Vector3iVector(np.asarray(triangles, dtype=np.int32)))
    if colors is not None:
        mesh.vertex_colors = o3d.utility.Vector3dVector(np.asarray(colors, dtype=np.float64) / 255.0)
    return write_mesh(mesh, path)


def _write_glb(mesh: o3d.geometry.TriangleMesh, path: Path) -> None:
    try:
        import trimesh
    except ImportError as exc:
        raise OSError("writing .glb needs the 'trimesh' package (pip install trimesh)") from exc
    colors = None
    if mesh.has_vertex_colors():
        colors = np.clip(np.round(np.asarray(mesh.vertex_colors) * 255), 0, 255).astype(np.uint8)
    tm = trimesh.Trimesh(np.asarray(mesh.vertices), np.asarray(mesh.triangles), vertex_colors=colors,
                         process=False)
    path.write_bytes(tm.export(file_type="glb"))


def export_segment_mesh(segment_path: str | Path, out: str | Path) -> dict[str, object]:
    """Write a fused segment's mesh to ``out`` (`facestudio export mesh` and the Library panel)."""
    from facestudio.dataset.segment import Segment

    segment = Segment(Path(segment_path))
    mesh = o3d.io.read_triangle_mesh(str(segment.mesh_path))
    written = write_mesh(mesh, out)
    return {"segment": segment.name, "out": str(written), "vertices": len(mesh.vertices),
            "triangles": len(mesh.triangles)}
