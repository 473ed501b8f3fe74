"""docs/protocol-vectors.json: every byte of one pairing and the first encrypted records.

The randoms (x, y) are fixed and the HELLO and HELLO_REPLY are written with spaces, as another
implementation might send them, so the vectors show that the transcript hashes the bytes as
sent. Regenerate with ``python -m facestudio.capture.vectors > docs/protocol-vectors.json``; the
reference implementation must reproduce the file (tests/test_vectors.py), and the independent
implementation written from docs/protocol.md derives it too (tests/test_interop.py).
"""

from __future__ import annotations

import base64
import json
import sys
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from facestudio.capture.channel import seal
from facestudio.capture.frame import EncodedDepth, Frame, Intrinsics
from facestudio.capture.pairing import ID_CLIENT, ID_DEVICE, PIN_DIGITS, Pairing, hello_hash, pin_to_w
from facestudio.capture.protocol import Message, MsgType, encode_message, frame_to_message, pack_message
from facestudio.capture.spake2 import Spake2

PIN = "246810"
X = 0x5B2C3E8F1A7D4C6B9E0F1D2C3B4A59687766554433221100FFEEDDCCBBAA9988
Y = 0x1F2E3D4C5B6A79880706050403020100A1B2C3D4E5F60718293A4B5C6D7E8F90
HELLO_HEADER = b'{"versions": [2], "client": "Example Desktop 1.0"}'
HELLO_REPLY_HEADER = (b'{"version": 2, "pairing": "spake2-p256-pin6", "device": {"name": "Lab iPad", '
                      b'"model": "iPad Pro 11 (M4)", "sensor": "truedepth", "id": "a1b2c3", "app": "Example 1.0"}}')
# An 8x8 baseline JPEG (OpenCV, quality 50, optimised Huffman tables), fixed so the vectors
# never depend on a JPEG library's version.
JPEG = base64.b64decode(
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDABALDA4MChAODQ4SERATGCgaGBYWGDEjJR0oOjM9PDkzODdASFxOQERXRTc4"
    "UG1RV19iZ2hnPk1xeXBkeFxlZ2P/2wBDARESEhgVGC8aGi9jQjhCY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2Nj"
    "Y2NjY2NjY2NjY2NjY2NjY2NjY2P/wAARCAAIAAgDASIAAhEBAxEB/8QAFQABAQAAAAAAAAAAAAAAAAAAAAX/xAAbEAEA"
    "AAcAAAAAAAAAAAAAAAAAFCQxUWSBkf/EABUBAQEAAAAAAAAAAAAAAAAAAAUG/8QAGxEAAQQDAAAAAAAAAAAAAAAAAQAD"
    "ESESYbH/2gAMAwEAAhEDEQA/AI8rA5G78oAOAVW23hNkyZvg0v/Z")


def vector_frame() -> Frame:
    """Frame 0 of the vectors: 8x8 color and raw float16 depth (0.4 m, one hole), a pose, blendshapes."""
    intr = Intrinsics(7.5, 7.5, 3.5, 3.5, 8, 8)
    depth = np.full((8, 8), 0.4, np.float32)
    depth[0, 0] = 0.0
    blendshapes = np.zeros(52, np.float32)
    blendshapes[0], blendshapes[17] = 0.5, 0.25          # eyeBlinkLeft, jawOpen
    pose = np.eye(4)
    pose[2, 3] = -0.4
    return Frame(index=0, timestamp=1834.0521, color_jpeg=JPEG, color_intrinsics=intr,
                 depth=EncodedDepth.encode(depth, "float16", "raw"), depth_intrinsics=intr,
                 head_pose=pose, blendshapes=blendshapes)


def _record(direction: str, message: bytes, key: bytes | None = None, counter: int | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"direction": direction}
    if counter is not None:
        entry["counter"] = counter
    entry["header"] = message[5:5 + int.from_bytes(message[1:5], "big")].decode()   # readable copy
    entry["message"] = message.hex()
    entry["record"] = seal(message, ChaCha20Poly1305(key) if key else None, counter or 0).hex()
    return entry


def generate() -> dict[str, Any]:
    hello = pack_message(MsgType.HELLO, HELLO_HEADER)
    reply = pack_message(MsgType.HELLO_REPLY, HELLO_REPLY_HEADER)
    desktop, device = Pairing(PIN, "client", scalar=X), Pairing(PIN, "device", scalar=Y)
    keys = desktop.finish(device.message, hello, reply)
    if keys != device.finish(desktop.message, hello, reply):
        raise AssertionError("the two sides derived different keys")
    aad = hello_hash(hello, reply)
    w = pin_to_w(PIN)
    spake = Spake2("A", w, ID_CLIENT, ID_DEVICE, scalar=X).finish(device.message, aad=aad)
    c2d, d2c = "desktop -> device", "device -> desktop"
    ping = encode_message(Message(MsgType.PING, {"t": 12.5}))
    pong = encode_message(Message(MsgType.PONG, {"t": 12.5, "t_reply": 1834.0}))
    frame = encode_message(frame_to_message(vector_frame()))
    return {
        "about": "FaceStudio capture protocol v2 test vectors (docs/protocol.md). Byte strings are hex; "
                 "'message' is a record's payload before encryption, 'record' the bytes on the wire.",
        "pin": PIN, "pin_digits": PIN_DIGITS,
        "identity_a": ID_CLIENT.decode(), "identity_b": ID_DEVICE.decode(),
        "w": w.to_bytes(32, "big").hex(), "x": X.to_bytes(32, "big").hex(), "y": Y.to_bytes(32, "big").hex(),
        "handshake": [
            {"name": "HELLO", **_record(c2d, hello)},
            {"name": "HELLO_REPLY", **_record(d2c, reply)},
            {"name": "PAIR", **_record(c2d, encode_message(Message(MsgType.PAIR, {}, [desktop.message])))},
            {"name": "PAIR", **_record(d2c, encode_message(Message(MsgType.PAIR, {}, [device.message])))},
            {"name": "CONFIRM", **_record(c2d, encode_message(Message(MsgType.CONFIRM, {}, [keys.client_confirm])))},
            {"name": "CONFIRM", **_record(d2c, encode_message(Message(MsgType.CONFIRM, {}, [keys.device_confirm])))},
        ],
        "hello_hash": aad.hex(),
        "pA": desktop.message.hex(), "pB": device.message.hex(), "K": spake.shared_point.hex(),
        "TT": spake.transcript.hex(), "Ke": spake.ke.hex(), "Ka": spake.ka.hex(),
        "KcA": spake.kc_a.hex(), "KcB": spake.kc_b.hex(), "cA": spake.confirm_a.hex(), "cB": spake.confirm_b.hex(),
        "key_c2d": keys.client_to_device.hex(), "key_d2c": keys.device_to_client.hex(),
        "encrypted": [
            {"name": "PING", **_record(c2d, ping, keys.client_to_device, 0)},
            {"name": "PONG", **_record(d2c, pong, keys.device_to_client, 0)},
            {"name": "FRAME", **_record(d2c, frame, keys.device_to_client, 1)},
        ],
    }


def main() -> None:
    json.dump(generate(), sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
