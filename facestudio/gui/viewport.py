"""The shared 3D viewport: one pyvistaqt QtInteractor that every panel draws into.

pyvista/VTK take seconds to import, so the interactor is created after the window is shown
(:meth:`Viewport.create_plotter`). It runs with ``auto_update=False``: panels change data in
place and call :meth:`render` themselves, always on the GUI thread. :meth:`close` must run
from the window's closeEvent, or VTK crashes at interpreter exit.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

BACKGROUND = "#15181d"
VIEW_ANGLE_DEG = 30.0


class Viewport(QWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("viewport")
        self.plotter = None
        self._cloud = None
        self._camera_set = False
        self.title = QLabel("3D viewport")
        self.title.setObjectName("viewportTitle")
        reset = QPushButton("Reset view")
        reset.setToolTip("Look at the data from the device's point of view again")
        reset.clicked.connect(self.reset_view)
        header = QHBoxLayout()
        header.addWidget(self.title, 1)
        header.addWidget(reset)
        self._placeholder = QLabel("Loading 3D viewport…")
        self._placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self._placeholder.setObjectName("hint")
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._layout.addLayout(header)
        self._layout.addWidget(self._placeholder, 1)

    def create_plotter(self) -> None:
        """Import pyvista and put the interactor in place of the placeholder (GUI thread)."""
        if self.plotter is not None:
            return
        from pyvistaqt import QtInteractor

        self.plotter = QtInteractor(self, auto_update=False)
        self.plotter.set_background(BACKGROUND)
        self.plotter.add_axes(color="#c8ccd4")
        self._layout.replaceWidget(self._placeholder, self.plotter.interactor)
        self._placeholder.deleteLater()
        self.plotter.render()

    def show_cloud(self, points: np.ndarray, colors: np.ndarray | None, title: str) -> None:
        """Replace the live point cloud's data in place (the actor and its mapper stay)."""
        if self.plotter is None or len(points) == 0:
            return
        import pyvista as pv

        cloud = pv.PolyData(points)
        if colors is not None:
            cloud.point_data["rgb"] = colors
        if self._cloud is None:
            self._cloud = cloud
            # Unlit: the colours are the camera's, already shaded by the real light.
            self.plotter.add_mesh(cloud, scalars="rgb" if colors is not None else None,
                                  rgb=colors is not None, point_size=4, lighting=False,
                                  name="live-cloud", reset_camera=False)
        else:
            self._cloud.copy_from(cloud, deep=False)
        if not self._camera_set:
            self.reset_view()
        self.title.setText(title)
        self.plotter.render()

    def clear_cloud(self, title: str = "3D viewport") -> None:
        if self.plotter is not None and self._cloud is not None:
            self.plotter.remove_actor("live-cloud")
            self.plotter.render()
        self._cloud = None
        self._camera_set = False
        self.title.setText(title)

    def cloud_points(self) -> int:
        return 0 if self._cloud is None else int(self._cloud.n_points)

    def reset_view(self) -> None:
        """Look at the cloud from near the device, turned 30 degrees so its depth shows; y up."""
        if self.plotter is None:
            return
        if self._cloud is not None and self._cloud.n_points:
            center = np.asarray(self._cloud.center)
            a = np.radians(VIEW_ANGLE_DEG)
            to_device = -center                    # the device sits at the origin
            turned = np.array([to_device[0] * np.cos(a) + to_device[2] * np.sin(a), to_device[1],
                               -to_device[0] * np.sin(a) + to_device[2] * np.cos(a)])
            self.plotter.camera_position = [tuple(center + turned), tuple(center), (0.0, 1.0, 0.0)]
            self.plotter.reset_camera()
            self._camera_set = True
        self.plotter.render()

    def render(self) -> None:
        if self.plotter is not None:
            self.plotter.render()

    def close_plotter(self) -> None:
        if self.plotter is not None:
            self.plotter.close()
            self.plotter = None
