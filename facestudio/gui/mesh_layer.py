"""A colored mesh a panel shows in the shared 3D viewport while that panel is on screen.

The viewport is shared: the Capture panel may still be streaming a live point cloud (in
the camera frame) when the user looks at a fused segment (in the canonical head frame).
While a layer is shown it hides the viewport's other actors and remembers the camera; on
:meth:`MeshLayer.hide` it puts both back, so each panel finds the viewport as it left it.

GUI thread only (VTK).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facestudio.gui.viewport import Viewport

#: The canonical head frame looks toward +Z with +Y up: view it from the front, turned this
#: much to the face's left and a little from above, so its relief shows.
VIEW_YAW_DEG, VIEW_PITCH_DEG = 25.0, 10.0


def read_mesh(path: Path):
    """A fused segment's PLY as pyvista PolyData (vertex colors in the ``RGB`` array)."""
    import pyvista as pv

    mesh = pv.read(str(path))
    if mesh.n_points == 0:
        raise ValueError(f"{path} holds an empty mesh")
    return mesh


class MeshLayer:
    def __init__(self, viewport: Viewport, name: str):
        self.viewport = viewport
        self.name = name
        self._mesh = None
        self._hidden: list = []            # other actors hidden while this layer shows
        self._saved_camera = None
        self._saved_title = ""

    def points(self) -> int:
        return 0 if self._mesh is None else int(self._mesh.n_points)

    def show(self, mesh, title: str) -> bool:
        """Show ``mesh`` (replacing this layer's previous one; the camera stays where it is).

        False when there is no viewport yet (it is created after the window appears).
        """
        plotter = self.viewport.plotter
        if plotter is None:
            return False
        first = self._mesh is None
        if first:
            self._saved_camera = plotter.camera_position
            self._saved_title = self.viewport.title.text()
            self._hidden = [a for n, a in plotter.actors.items()
                            if n != self.name and a.GetVisibility()]
            for actor in self._hidden:
                actor.SetVisibility(False)
        colors = "RGB" if "RGB" in mesh.point_data else None
        plotter.add_mesh(mesh, scalars=colors, rgb=colors is not None, name=self.name,
                         color=None if colors else "#c8ccd4", smooth_shading=True,
                         ambient=0.35, diffuse=0.65, specular=0.05, reset_camera=False)
        self._mesh = mesh
        if first:
            self.front_view()
        self.viewport.title.setText(title)
        plotter.render()
        return True

    def front_view(self) -> None:
        """Look at the face from the front, a little turned and from above; y up."""
        plotter = self.viewport.plotter
        if plotter is None or self._mesh is None:
            return
        center = np.asarray(self._mesh.center)
        yaw, pitch = np.radians(VIEW_YAW_DEG), np.radians(VIEW_PITCH_DEG)
        direction = np.array([np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)])
        plotter.camera_position = [tuple(center + direction), tuple(center), (0.0, 1.0, 0.0)]
        plotter.reset_camera()
        plotter.render()

    def hide(self) -> None:
        """Remove the mesh; give the viewport's other actors, camera and title back."""
        plotter = self.viewport.plotter
        if self._mesh is None:
            return
        self._mesh = None
        if plotter is None:           # the window is closing: nothing to give back
            return
        plotter.remove_actor(self.name, render=False)
        for actor in self._hidden:
            actor.SetVisibility(True)
        self._hidden = []
        if self._saved_camera is not None:
            plotter.camera_position = self._saved_camera
        self.viewport.title.setText(self._saved_title)
        plotter.render()
