"""The built-in virtual TrueDepth device: a synthetic face served over the real protocol.

:class:`SyntheticFrameSource` turns :class:`~facestudio.capture.virtual.source.SyntheticFaceSource`
views into protocol frames (JPEG color, float16 zlib depth, ARKit pose and blendshapes,
exact ground truth). :class:`ReplayFrameSource` loops pre-encoded frames, so a benchmark
measures the link rather than the renderer. :func:`start_virtual_device` wires a source to a
:class:`DeviceServer` and (optionally) a zeroconf advertisement.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np

from facestudio.capture.device import DeviceInfo, DeviceServer, StreamSettings
from facestudio.capture.frame import EncodedDepth, Frame

log = logging.getLogger(__name__)


class SyntheticFrameSource:
    """Render, encode and describe synthetic frames (implements ``FrameSource``)."""

    def __init__(self, face_model_path: str | None = None, seed: int = 0, jpeg_quality: int = 90,
                 depth_dtype: str = "float16", max_fps: float = 60.0):
        from facestudio.capture.virtual.source import SyntheticFaceSource

        self.face_model_path, self.seed = face_model_path, seed
        self.jpeg_quality, self.depth_dtype, self.max_fps = jpeg_quality, depth_dtype, max_fps
        self._make = SyntheticFaceSource.create
        self._source = self._make(face_model_path, seed=seed)
        self._lock = threading.Lock()

    @property
    def duration(self) -> float:
        return self._source.duration

    def configure(self, settings: StreamSettings) -> dict[str, Any]:
        with self._lock:
            if (settings.color_width, settings.color_height) != (
                    self._source.view_at(0).intrinsics.width, self._source.view_at(0).intrinsics.height):
                self._source = self._make(self.face_model_path, seed=self.seed,
                                          width=settings.color_width, height=settings.color_height)
        return {"fps": min(settings.fps, self.max_fps), "color_width": settings.color_width,
                "color_height": settings.color_height, "depth_width": settings.color_width,
                "depth_height": settings.color_height, "depth_dtype": self.depth_dtype,
                "depth_every": settings.depth_every, "script_duration": self._source.duration,
                "ground_truth": settings.ground_truth}

    def frame(self, index: int, t: float, with_depth: bool = True) -> Frame:
        with self._lock:
            view = self._source.view_at(t)
        ok, jpeg = cv2.imencode(".jpg", view.color_bgr, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        t_loop = t % self._source.duration
        return Frame(
            index=index, timestamp=0.0, color_jpeg=jpeg.tobytes(), color_intrinsics=view.intrinsics,
            depth=EncodedDepth.encode(view.depth_m, self.depth_dtype) if with_depth else None,
            depth_intrinsics=view.intrinsics if with_depth else None,
            head_pose=view.head_pose, blendshapes=view.blendshapes,
            ground_truth={"exact": True, "label": view.label, "segment": view.segment,
                          "script_time": round(float(t_loop), 6)})

    def clean_depth(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Noise-free (depth, |cos(ray, normal)|) of the view at ``t``: for other sensor models."""
        with self._lock:
            return self._source.render_clean(t)

    def truth(self) -> dict[str, Any]:
        with self._lock:
            return self._source.truth()


@dataclass
class ReplayFrameSource:
    """Loop a fixed list of pre-encoded frames (benchmarks: no rendering cost at stream time)."""

    frames: list[Frame]
    max_fps: float = 120.0

    @classmethod
    def prerender(cls, source: SyntheticFrameSource, count: int, fps: float) -> "ReplayFrameSource":
        return cls([source.frame(i, i / fps) for i in range(count)], max_fps=fps)

    def configure(self, settings: StreamSettings) -> dict[str, Any]:
        intr = self.frames[0].color_intrinsics
        return {"fps": min(settings.fps, self.max_fps), "color_width": intr.width,
                "color_height": intr.height, "depth_every": settings.depth_every, "ground_truth": False}

    def frame(self, index: int, t: float, with_depth: bool = True) -> Frame:
        f = self.frames[index % len(self.frames)]
        if not with_depth:
            return replace(f, index=index, depth=None, depth_intrinsics=None)
        return replace(f, index=index)

    def truth(self) -> None:
        return None


class VirtualDevice:
    """A running virtual device: server + optional mDNS advertisement. Use as a context manager."""

    def __init__(self, source, name: str = "Virtual iPad", pin: str | None = None,
                 host: str = "127.0.0.1", port: int = 0, advertise: bool = True,
                 interfaces: list[str] | None = None, allow_insecure: bool = False):
        self.info = DeviceInfo(name=name)
        self.server = DeviceServer(source, self.info, pin=pin, host=host, port=port,
                                   allow_insecure=allow_insecure)
        self._advert = None
        if advertise:
            from facestudio.capture.discovery import Advertisement

            addresses = interfaces or ([host] if host not in ("0.0.0.0", "") else _lan_addresses())
            self._advert = Advertisement(self.info, self.server.port, addresses, interfaces)
        self.server.start()

    @property
    def pin(self) -> str:
        return self.server.pin

    @property
    def address(self) -> tuple[str, int]:
        return self.server.host, self.server.port

    def close(self) -> None:
        if self._advert is not None:
            self._advert.close()
            self._advert = None
        self.server.stop()

    def __enter__(self) -> "VirtualDevice":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _lan_addresses() -> list[str]:
    """IPv4 addresses of this machine's interfaces (what a device listening on 0.0.0.0 serves)."""
    import ifaddr

    found = [ip.ip for adapter in ifaddr.get_adapters() for ip in adapter.ips
             if isinstance(ip.ip, str) and not ip.ip.startswith("127.")]
    return found or ["127.0.0.1"]

