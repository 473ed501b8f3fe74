"""FaceStudio capture protocol v2: message layout, limits and frame (de)serialisation.

docs/protocol.md is the normative specification; this module is its reference
implementation. Everything that arrives from the network passes through
:func:`decode_message` and :func:`message_to_frame`, which check every length and field
*before* allocating or trusting it and raise :class:`ProtocolError` with a clear message.

Message layout (inside a record, after decryption once paired)::

    u8  type
    u32 header_length          (big-endian, <= MAX_HEADER_BYTES)
    header                     (UTF-8 JSON object; "blobs": [len, ...] lists the blob lengths,
                                absent = no blobs)
    blob 0, blob 1, ...        (raw bytes, lengths as listed, exactly filling the message)

A header is read as whatever valid JSON the peer wrote (any spacing or key order) and never
re-encoded: the pairing transcript hashes the exact bytes (:attr:`Message.raw`).
"""

from __future__ import annotations

import enum
import json
import math
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facestudio.capture.frame import DEPTH_CODECS, DEPTH_DTYPES, EncodedDepth, Frame, Intrinsics
from facestudio.faces.arkit import NUM_BLENDSHAPES

# v1 paired with python-spake2's own SPAKE2 variant and hashed re-encoded JSON: no other
# implementation could pair, so no desktop speaks it (docs/protocol.md section 10).
PROTOCOL_VERSION = 2
SUPPORTED_VERSIONS = (2,)
SERVICE_TYPE = "_facestudio._tcp.local."

# Hard limits, checked before any allocation.
MAX_RECORD_BYTES = 32 * 1024 * 1024        # one encrypted record (a frame with a 4K depth map fits)
MAX_HANDSHAKE_RECORD_BYTES = 4096           # records before pairing completes
MAX_HEADER_BYTES = 64 * 1024
MAX_BLOBS = 8
MAX_IMAGE_SIDE = 4096
MAX_FACE_MESH_VERTICES = 4096              # ARKit's face mesh has 1220
MAX_TRUTH_VERTICES = 200_000
MAX_TRUTH_TRIANGLES = 400_000
MAX_TRUTH_SEGMENTS = 64
MAX_FPS = 120

_HEAD = struct.Struct(">BI")


class ProtocolError(Exception):
    """The peer sent something that violates the protocol; the connection must be closed."""


class MsgType(enum.IntEnum):
    HELLO = 1            # client -> device (plain): {"versions": [2], "client": str}
    HELLO_REPLY = 2      # device -> client (plain): {"version": 2, "device": {...}, "pairing": str}
    PAIR = 3             # both (plain): blob 0 = SPAKE2 share (65-byte P-256 point)
    CONFIRM = 4          # both (plain): blob 0 = HMAC key confirmation (32 bytes)
    ERROR = 5            # both, plain or encrypted: {"code": str, "message": str, ...}; then close
    START = 10           # client -> device: {"fps", "color_width", "color_height", "depth_every", ...}
    STARTED = 11         # device -> client: the settings actually used
    STOP = 12            # client -> device
    STOPPED = 13         # device -> client: {"frames_sent": int, "skipped": int}
    PING = 14            # either: {"t": sender clock}
    PONG = 15            # answer: {"t": echoed, "t_reply": replier clock}
    FRAME = 20           # device -> client
    TRUTH = 21           # device -> client, virtual devices only: exact ground truth
    BYE = 22             # either: orderly close {"reason": str}


@dataclass
class Message:
    type: MsgType
    header: dict[str, Any] = field(default_factory=dict)
    blobs: list[bytes] = field(default_factory=list)
    raw: bytes = field(default=b"", repr=False, compare=False)   # the bytes it was decoded from


def error_message(code: str, message: str, retry_after: float | None = None) -> Message:
    """An ERROR (docs/protocol.md 3.2): always the last message its sender sends on a connection."""
    header: dict[str, Any] = {"code": code, "message": message[:1000]}
    if retry_after is not None:
        header["retry_after"] = retry_after
    return Message(MsgType.ERROR, header)


def pack_message(mtype: int, header_json: bytes, blobs: list[bytes] | tuple[bytes, ...] = ()) -> bytes:
    """type | header length | header | blobs, with ``header_json`` exactly as given."""
    if len(header_json) > MAX_HEADER_BYTES:
        raise ValueError(f"header of {len(header_json)} bytes exceeds {MAX_HEADER_BYTES}")
    return b"".join([_HEAD.pack(mtype, len(header_json)), header_json, *blobs])


def encode_message(msg: Message) -> bytes:
    """Compact JSON; "blobs" only when there are blobs."""
    header = dict(msg.header)
    if msg.blobs:
        header["blobs"] = [len(b) for b in msg.blobs]
    head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    return pack_message(int(msg.type), head, msg.blobs)


def decode_message(data: bytes | memoryview) -> Message:
    """Parse one message; every malformation raises ProtocolError."""
    view = memoryview(data)
    if len(view) < _HEAD.size:
        raise ProtocolError(f"message of {len(view)} bytes is shorter than its 5-byte head")
    type_code, head_len = _HEAD.unpack_from(view)
    try:
        mtype = MsgType(type_code)
    except ValueError:
        raise ProtocolError(f"unknown message type {type_code}") from None
    if head_len > MAX_HEADER_BYTES or _HEAD.size + head_len > len(view):
        raise ProtocolError(f"header length {head_len} is out of bounds for a {len(view)}-byte message")
    try:
        header = json.loads(bytes(view[_HEAD.size:_HEAD.size + head_len]).decode("utf-8"),
                            object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"{mtype.name} header is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"{mtype.name} header must be a JSON object")
    lengths = header.pop("blobs", [])
    if (not isinstance(lengths, list) or len(lengths) > MAX_BLOBS
            or not all(type(n) is int and n >= 0 for n in lengths)):
        raise ProtocolError(f"{mtype.name} header has an invalid 'blobs' list")
    pos = _HEAD.size + head_len
    if pos + sum(lengths) != len(view):
        raise ProtocolError(f"{mtype.name}: blob lengths {sum(lengths)} do not fill the "
                            f"{len(view) - pos} bytes after the header")
    blobs = []
    for n in lengths:
        blobs.append(bytes(view[pos:pos + n]))
        pos += n
    return Message(mtype, header, blobs, raw=data if isinstance(data, bytes) else bytes(view))


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """RFC 8259 leaves duplicate keys' meaning open: the protocol forbids them."""
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError(f"duplicate key in {[k for k, _ in pairs]}")
    return out


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


# ---------------------------------------------------------------------------------- fields

def _get(header: dict, key: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = header.get(key)
    if kind is float:
        kind = (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ProtocolError(f"{what}: field {key!r} is missing or not a {kind}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ProtocolError(f"{what}: field {key!r} is not finite")
    return value


def _floats(value: Any, count: int, what: str) -> np.ndarray:
    if not isinstance(value, list) or len(value) != count:
        raise ProtocolError(f"{what}: expected a list of {count} numbers")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ProtocolError(f"{what}: expected numbers") from None
    if arr.shape != (count,) or not np.all(np.isfinite(arr)):
        raise ProtocolError(f"{what}: expected {count} finite numbers")
    return arr


def _intrinsics(value: Any, what: str) -> Intrinsics:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what}: intrinsics must be an object")
    w = _get(value, "width", int, what)
    h = _get(value, "height", int, what)
    if not (0 < w <= MAX_IMAGE_SIDE and 0 < h <= MAX_IMAGE_SIDE):
        raise ProtocolError(f"{what}: image size {w}x{h} outside 1..{MAX_IMAGE_SIDE}")
    fx, fy, cx, cy = (float(_get(value, k, float, what)) for k in ("fx", "fy", "cx", "cy"))
    if fx <= 0 or fy <= 0:
        raise ProtocolError(f"{what}: focal lengths must be positive")
    return Intrinsics(fx, fy, cx, cy, w, h)


def _blob(blobs: list[bytes], index: Any, what: str) -> bytes:
    if type(index) is not int or not 0 <= index < len(blobs):
        raise ProtocolError(f"{what}: blob index {index!r} does not exist")
    return blobs[index]


# ---------------------------------------------------------------------------------- frames

def frame_to_message(frame: Frame) -> Message:
    blobs = [frame.color_jpeg]
    header: dict[str, Any] = {
        "index": frame.index,
        "timestamp": frame.timestamp,
        "color": {"codec": "jpeg", "blob": 0, "intrinsics": frame.color_intrinsics.to_dict()},
        "depth": None, "head_pose": None, "blendshapes": None, "face_mesh": None,
        "ground_truth": frame.ground_truth,
    }
    if frame.depth is not None:
        if frame.depth_intrinsics is None:
            raise ValueError("a frame with depth needs depth intrinsics")
        blobs.append(frame.depth.data)
        header["depth"] = {"codec": frame.depth.codec, "dtype": frame.depth.dtype,
                           "blob": len(blobs) - 1, "intrinsics": frame.depth_intrinsics.to_dict()}
    if frame.head_pose is not None:
        header["head_pose"] = [float(x) for x in np.asarray(frame.head_pose).reshape(16)]
    if frame.blendshapes is not None:
        header["blendshapes"] = [round(float(x), 6) for x in np.asarray(frame.blendshapes).reshape(-1)]
    if frame.face_mesh is not None:
        mesh = np.ascontiguousarray(frame.face_mesh, dtype="<f4").reshape(-1, 3)
        blobs.append(mesh.tobytes())
        header["face_mesh"] = {"vertices": int(mesh.shape[0]), "blob": len(blobs) - 1}
    return Message(MsgType.FRAME, header, blobs)


def message_to_frame(msg: Message) -> Frame:
    """Validate a FRAME message and build a Frame (depth stays encoded)."""
    h, what = msg.header, "FRAME"
    index = _get(h, "index", int, what)
    if index < 0:
        raise ProtocolError("FRAME: negative index")
    what = f"FRAME {index}"
    timestamp = float(_get(h, "timestamp", float, what))
    color = h.get("color")
    if not isinstance(color, dict) or color.get("codec") != "jpeg":
        raise ProtocolError(f"{what}: color must be a JPEG")
    color_jpeg = _blob(msg.blobs, color.get("blob"), what)
    if not color_jpeg.startswith(b"\xff\xd8"):
        raise ProtocolError(f"{what}: color blob is not a JPEG")
    frame = Frame(index=index, timestamp=timestamp, color_jpeg=color_jpeg,
                  color_intrinsics=_intrinsics(color.get("intrinsics"), what + " color"))
    depth = h.get("depth")
    if depth is not None:
        if not isinstance(depth, dict):
            raise ProtocolError(f"{what}: depth must be an object or null")
        intr = _intrinsics(depth.get("intrinsics"), what + " depth")
        codec, dtype = depth.get("codec"), depth.get("dtype")
        if codec not in DEPTH_CODECS or dtype not in DEPTH_DTYPES:
            raise ProtocolError(f"{what}: unsupported depth encoding {codec!r}/{dtype!r}")
        data = _blob(msg.blobs, depth.get("blob"), what)
        raw_size = intr.width * intr.height * np.dtype(DEPTH_DTYPES[dtype]).itemsize
        if codec == "raw" and len(data) != raw_size:
            raise ProtocolError(f"{what}: raw depth of {len(data)} bytes, expected {raw_size}")
        frame.depth = EncodedDepth(data, intr.width, intr.height, dtype, codec)
        frame.depth_intrinsics = intr
    if h.get("head_pose") is not None:
        pose = _floats(h["head_pose"], 16, what + " head_pose").reshape(4, 4)
        if not np.allclose(pose[3], [0, 0, 0, 1], atol=1e-4):
            raise ProtocolError(f"{what}: head_pose last row must be 0 0 0 1")
        frame.head_pose = pose
    if h.get("blendshapes") is not None:
        frame.blendshapes = _floats(h["blendshapes"], NUM_BLENDSHAPES, what + " blendshapes").astype(np.float32)
    mesh = h.get("face_mesh")
    if mesh is not None:
        if not isinstance(mesh, dict):
            raise ProtocolError(f"{what}: face_mesh must be an object or null")
        n = _get(mesh, "vertices", int, what + " face_mesh")
        data = _blob(msg.blobs, mesh.get("blob"), what)
        if not 0 < n <= MAX_FACE_MESH_VERTICES or len(data) != n * 12:
            raise ProtocolError(f"{what}: face_mesh of {n} vertices does not match {len(data)} bytes")
        vertices = np.frombuffer(data, dtype="<f4").reshape(n, 3).astype(np.float32)
        if not np.all(np.isfinite(vertices)):
            raise ProtocolError(f"{what}: face_mesh has non-finite vertices")
        frame.face_mesh = vertices
    truth = h.get("ground_truth")
    if truth is not None and not isinstance(truth, dict):
        raise ProtocolError(f"{what}: ground_truth must be an object or null")
    frame.ground_truth = truth
    return frame


# ---------------------------------------------------------------------------------- truth

def truth_to_message(truth: dict[str, Any]) -> Message:
    """Pack a virtual device's ground truth (see SyntheticFaceSource.truth) for the wire."""
    triangles = np.ascontiguousarray(truth["triangles"], dtype="<i4")
    mask = np.ascontiguousarray(truth["face_vertex_mask"], dtype=np.uint8)
    segments = truth["segments"]
    vertices = b"".join(np.ascontiguousarray(seg["vertices"], dtype="<f4").tobytes() for seg in segments)
    blobs = [zlib.compress(triangles.tobytes(), 1), zlib.compress(mask.tobytes(), 1),
             zlib.compress(vertices, 1)]
    meta = [{"label": seg["label"], "start": float(seg["start"]), "end": float(seg["end"]),
             "blendshapes": [float(x) for x in np.asarray(seg["blendshapes"]).reshape(-1)]}
            for seg in segments]
    header = {"source": truth["source"], "seed": int(truth["seed"]),
              "identity_weights": [float(x) for x in truth.get("identity_weights", [])],
              "vertex_count": int(mask.shape[0]), "triangle_count": int(triangles.shape[0]),
              "segments": meta}
    return Message(MsgType.TRUTH, header, blobs)


def _inflate(data: bytes, expected: int, what: str) -> bytes:
    try:
        raw = zlib.decompressobj().decompress(data, expected + 1)
    except zlib.error as exc:
        raise ProtocolError(f"TRUTH {what}: corrupt zlib data ({exc})") from None
    if len(raw) != expected:
        raise ProtocolError(f"TRUTH {what}: {len(raw)} bytes, expected {expected}")
    return raw


def message_to_truth(msg: Message) -> dict[str, Any]:
    h, what = msg.header, "TRUTH"
    nv = _get(h, "vertex_count", int, what)
    nt = _get(h, "triangle_count", int, what)
    segs = h.get("segments")
    if not (0 < nv <= MAX_TRUTH_VERTICES and 0 < nt <= MAX_TRUTH_TRIANGLES):
        raise ProtocolError(f"TRUTH: {nv} vertices / {nt} triangles out of bounds")
    if not isinstance(segs, list) or not 0 < len(segs) <= MAX_TRUTH_SEGMENTS:
        raise ProtocolError("TRUTH: segments must be a non-empty list")
    if nv * len(segs) > MAX_TRUTH_VERTICES * 16:
        raise ProtocolError(f"TRUTH: {len(segs)} segments of {nv} vertices is too much data")
    triangles = np.frombuffer(_inflate(_blob(msg.blobs, 0, what), nt * 12, "triangles"), "<i4")
    triangles = triangles.reshape(nt, 3).astype(np.int32)
    if triangles.min() < 0 or triangles.max() >= nv:
        raise ProtocolError("TRUTH: triangle indices out of range")
    mask = np.frombuffer(_inflate(_blob(msg.blobs, 1, what), nv, "mask"), np.uint8).astype(bool)
    packed = _inflate(_blob(msg.blobs, 2, what), nv * 12 * len(segs), "vertices")
    vert_blobs = [packed[i * nv * 12:(i + 1) * nv * 12] for i in range(len(segs))]
    segments = []
    for i, (seg, raw) in enumerate(zip(segs, vert_blobs)):
        if not isinstance(seg, dict) or not isinstance(seg.get("label"), str):
            raise ProtocolError(f"TRUTH: segment {i} is malformed")
        segments.append({
            "label": seg["label"],
            "start": float(_get(seg, "start", float, what)),
            "end": float(_get(seg, "end", float, what)),
            "blendshapes": _floats(seg.get("blendshapes"), NUM_BLENDSHAPES, what).astype(np.float32),
            "vertices": np.frombuffer(raw, "<f4").reshape(nv, 3).astype(np.float32),
        })
    weights = h.get("identity_weights", [])
    if not isinstance(weights, list) or len(weights) > 1024:
        raise ProtocolError("TRUTH: identity_weights must be a list of at most 1024 numbers")
    return {"source": str(h.get("source", "")), "seed": int(_get(h, "seed", int, what)),
            "identity_weights": _floats(weights, len(weights), what).tolist(),
            "triangles": triangles, "face_vertex_mask": mask, "segments": segments}
