"""Live Link Face (Epic Games' free iOS app) over UDP: ARKit face tracking to drive the sliders.

Packet layout (big-endian), as the app sends it to port 11111 by default:

    u8  version (6)
    i32 length + UTF-8 device id
    i32 length + UTF-8 subject name
    i32 frame number, f32 subframe, i32 fps numerator, i32 fps denominator
    u8  count (61)
    61 x f32: the 52 ARKit blendshapes in BLENDSHAPE_NAMES order, then HeadYaw, HeadPitch,
              HeadRoll, LeftEyeYaw, LeftEyePitch, LeftEyeRoll, RightEyeYaw, RightEyePitch,
              RightEyeRoll

While no face is tracked the app sends the same header and frame time and stops there (no
count, no curves): real captures hold such packets, and PyLiveLinkFace reads a packet that ends
after the frame time as "does not contain a face". They decode to a frame whose
``face_tracked`` is False, a state rather than an error. The head and eye angles are radians
(docs/formats.md, "Live Link Face", says why we believe so); nothing here converts them.

Malformed packets are counted and dropped (UDP from anyone on the LAN: never trusted).
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

from facestudio.faces.arkit import NUM_BLENDSHAPES

log = logging.getLogger(__name__)
DEFAULT_PORT = 11111
PACKET_VERSION = 6
CURVE_COUNT = 61
MAX_NAME_BYTES = 256
_I32 = struct.Struct(">i")
_TIMING = struct.Struct(">ifii")


class LiveLinkError(ValueError):
    """A datagram that is not a valid Live Link Face packet."""


@dataclass(frozen=True)
class LiveLinkFrame:
    """One packet. Without a tracked face there are no weights and no angles (both None)."""

    device_id: str
    subject: str
    frame: int
    fps: float
    blendshapes: np.ndarray | None   # (52,) float32 in [0, 1]
    head_ypr: np.ndarray | None      # (3,) yaw, pitch, roll in radians, as sent

    @property
    def face_tracked(self) -> bool:
        return self.blendshapes is not None


def encode_packet(blendshapes: np.ndarray | None, device_id: str = "facestudio",
                  subject: str = "face", frame: int = 0, fps: int = 60,
                  head_ypr: tuple[float, float, float] = (0, 0, 0)) -> bytes:
    """A packet exactly as Live Link Face sends it (tests and tools use this); ``blendshapes``
    None gives the short packet the app sends while it tracks no face."""
    dev, sub = device_id.encode(), subject.encode()
    header = b"".join([bytes([PACKET_VERSION]), _I32.pack(len(dev)), dev, _I32.pack(len(sub)),
                       sub, _TIMING.pack(frame, 0.0, fps, 1)])
    if blendshapes is None:
        return header
    curves = np.zeros(CURVE_COUNT, ">f4")
    curves[:NUM_BLENDSHAPES] = np.asarray(blendshapes, np.float32).reshape(NUM_BLENDSHAPES)
    curves[NUM_BLENDSHAPES:NUM_BLENDSHAPES + 3] = head_ypr
    return header + bytes([CURVE_COUNT]) + curves.tobytes()


def decode_packet(data: bytes) -> LiveLinkFrame:
    """Parse one datagram; LiveLinkError for anything malformed (lengths checked before use)."""
    view = memoryview(data)
    if len(view) < 1 or view[0] != PACKET_VERSION:
        raise LiveLinkError(f"not a Live Link Face v{PACKET_VERSION} packet")
    pos = 1
    names = []
    for what in ("device id", "subject name"):
        if pos + 4 > len(view):
            raise LiveLinkError(f"packet ends inside the {what} length")
        (n,) = _I32.unpack_from(view, pos)
        pos += 4
        if not 0 <= n <= MAX_NAME_BYTES or pos + n > len(view):
            raise LiveLinkError(f"{what} length {n} is out of bounds")
        names.append(bytes(view[pos:pos + n]).decode("utf-8", errors="replace"))
        pos += n
    if pos + _TIMING.size > len(view):
        raise LiveLinkError("packet ends inside the frame time")
    frame, _subframe, num, den = _TIMING.unpack_from(view, pos)
    fps = num / den if den > 0 else 0.0
    pos += _TIMING.size
    if pos == len(view):  # what the app sends while it tracks no face
        return LiveLinkFrame(names[0], names[1], frame, fps, None, None)
    count = view[pos]
    pos += 1
    if count < NUM_BLENDSHAPES or pos + 4 * count != len(view):
        raise LiveLinkError(f"{count} curves do not match the {len(view) - pos} bytes left")
    curves = np.frombuffer(view[pos:], ">f4").astype(np.float32)
    if not np.all(np.isfinite(curves)):
        raise LiveLinkError("non-finite curve values")
    head = curves[NUM_BLENDSHAPES:NUM_BLENDSHAPES + 3]
    return LiveLinkFrame(names[0], names[1], frame, fps,
                         np.clip(curves[:NUM_BLENDSHAPES], 0.0, 1.0),
                         np.pad(head, (0, 3 - len(head))))


class LiveLinkReceiver:
    """Listen for Live Link Face packets on UDP; ``on_frame`` runs on the receiver's thread.

    The GUI hands frames to its own thread through a signal; only the newest frame matters
    for sliders, so the callback should just store it. Counters: ``received`` valid packets,
    of which ``no_face`` carried no face (they reach ``on_frame`` too, so the user sees the
    state), and ``rejected`` malformed datagrams.
    """

    def __init__(self, on_frame: Callable[[LiveLinkFrame], None], host: str = "0.0.0.0",
                 port: int = DEFAULT_PORT):
        self._on_frame = on_frame
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((host, port))
        self._sock.settimeout(0.2)
        self.host, self.port = self._sock.getsockname()[:2]
        self.received = 0
        self.no_face = 0
        self.rejected = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"livelink-{self.port}")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, _ = self._sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                break
            try:
                frame = decode_packet(data)
            except LiveLinkError as exc:
                self.rejected += 1
                log.debug("Live Link packet dropped: %s", exc)
                continue
            self.received += 1
            self.no_face += not frame.face_tracked
            self._on_frame(frame)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()

    def __enter__(self) -> "LiveLinkReceiver":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
