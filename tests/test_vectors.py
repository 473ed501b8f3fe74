"""docs/protocol-vectors.json is what the reference implementation does, byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from facestudio.capture.protocol import MsgType, decode_message, message_to_frame
from facestudio.capture.vectors import generate, vector_frame

VECTORS = Path(__file__).resolve().parents[1] / "docs" / "protocol-vectors.json"


def test_the_reference_implementation_reproduces_every_byte_of_the_vectors():
    assert json.loads(VECTORS.read_text(encoding="utf-8")) == generate(), \
        "docs/protocol-vectors.json is stale: run `python -m facestudio.capture.vectors > docs/protocol-vectors.json`"


def test_the_vectors_frame_decrypts_and_decodes_to_the_frame_it_was_made_from():
    vectors = json.loads(VECTORS.read_text(encoding="utf-8"))
    entry = next(e for e in vectors["encrypted"] if e["name"] == "FRAME")
    record = bytes.fromhex(entry["record"])
    assert int.from_bytes(record[:4], "big") == len(record) - 4
    nonce = bytes(4) + entry["counter"].to_bytes(8, "big")
    message = ChaCha20Poly1305(bytes.fromhex(vectors["key_d2c"])).decrypt(nonce, record[4:], None)
    assert message.hex() == entry["message"]
    msg = decode_message(message)
    assert msg.type is MsgType.FRAME
    got, sent = message_to_frame(msg), vector_frame()
    assert (got.index, got.timestamp, got.color_jpeg) == (sent.index, sent.timestamp, sent.color_jpeg)
    np.testing.assert_array_equal(got.depth_m(), sent.depth_m())
    np.testing.assert_array_equal(got.head_pose, sent.head_pose)
    np.testing.assert_array_equal(got.blendshapes, sent.blendshapes)
    assert got.color().shape == (8, 8, 3)


def test_the_vectors_hello_is_not_in_the_reference_encoders_spelling():
    # The point of the vectors: the transcript covers these bytes, spaces and all.
    hello = bytes.fromhex(json.loads(VECTORS.read_text(encoding="utf-8"))["handshake"][0]["message"])
    assert b'"versions": [2]' in hello and b'"blobs"' not in hello
