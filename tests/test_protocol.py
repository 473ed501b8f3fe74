"""The message layer: round trips, and every malformation rejected with ProtocolError."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from facestudio.capture.protocol import (MAX_HEADER_BYTES, Message, MsgType, ProtocolError,
                                         decode_message, encode_message, frame_to_message,
                                         message_to_frame, message_to_truth, truth_to_message)
from framegen import make_frame


def test_frame_round_trip_preserves_every_field():
    frame = make_frame(7)
    frame.face_mesh = np.random.default_rng(0).random((1220, 3)).astype(np.float32)
    frame.ground_truth = {"label": "smile", "segment": 1}
    back = message_to_frame(decode_message(encode_message(frame_to_message(frame))))
    assert back.index == 7 and back.color_jpeg == frame.color_jpeg
    assert back.color_intrinsics == frame.color_intrinsics == back.depth_intrinsics
    np.testing.assert_array_equal(back.depth_m(), frame.depth_m())
    np.testing.assert_allclose(back.head_pose, frame.head_pose)
    np.testing.assert_allclose(back.blendshapes, frame.blendshapes, atol=1e-6)
    np.testing.assert_array_equal(back.face_mesh, frame.face_mesh)
    assert back.ground_truth == {"label": "smile", "segment": 1}


def test_depth_float16_is_lossless_at_selfie_range():
    frame = make_frame(3)
    depth = frame.depth_m()
    assert depth.dtype == np.float32 and 0.35 < float(np.median(depth)) < 0.45
    # float16 spacing at 0.4 m is 0.24 mm: far below the sensor's ~1 mm noise.
    assert np.max(np.abs(np.spacing(np.float16(0.45)).astype(np.float32))) < 3e-4


def test_truth_round_trip():
    rng = np.random.default_rng(1)
    truth = {"source": "ict", "seed": 4, "identity_weights": [0.5, -1.0],
             "triangles": rng.integers(0, 100, (50, 3)).astype(np.int32),
             "face_vertex_mask": rng.random(100) > 0.5,
             "segments": [{"label": lab, "start": i, "end": i + 1.0,
                           "blendshapes": rng.random(52).astype(np.float32),
                           "vertices": rng.random((100, 3)).astype(np.float32)}
                          for i, lab in enumerate(["neutral", "smile", "jaw open"])]}
    back = message_to_truth(decode_message(encode_message(truth_to_message(truth))))
    assert [s["label"] for s in back["segments"]] == ["neutral", "smile", "jaw open"]
    np.testing.assert_array_equal(back["triangles"], truth["triangles"])
    np.testing.assert_array_equal(back["face_vertex_mask"], truth["face_vertex_mask"])
    for a, b in zip(back["segments"], truth["segments"]):
        np.testing.assert_array_equal(a["vertices"], b["vertices"])


def _frame_msg(**changes):
    msg = frame_to_message(make_frame(1))
    msg.header.update(changes)
    return msg


@pytest.mark.parametrize("changes, text", [
    ({"index": -1}, "negative index"),
    ({"index": "3"}, "index"),
    ({"timestamp": None}, "timestamp"),
    ({"color": {"codec": "png", "blob": 0}}, "JPEG"),
    ({"blendshapes": [0.1] * 51}, "52"),
    ({"head_pose": [0.0] * 16}, "0 0 0 1"),
    ({"head_pose": [float("nan")] * 16}, "finite"),
    ({"face_mesh": {"vertices": 10 ** 9, "blob": 0}}, "face_mesh"),
])
def test_invalid_frame_fields_are_rejected(changes, text):
    msg = _frame_msg(**changes)
    with pytest.raises(ProtocolError, match=text):
        message_to_frame(msg)


def test_depth_size_mismatch_is_rejected():
    msg = _frame_msg()
    msg.header["depth"]["intrinsics"]["width"] = 5000
    with pytest.raises(ProtocolError, match="outside"):
        message_to_frame(msg)


def test_structural_malformations():
    with pytest.raises(ProtocolError, match="shorter"):
        decode_message(b"\x14\x00")
    with pytest.raises(ProtocolError, match="unknown message type"):
        decode_message(struct.pack(">BI", 99, 2) + b"{}")
    with pytest.raises(ProtocolError, match="out of bounds"):
        decode_message(struct.pack(">BI", 20, MAX_HEADER_BYTES + 1) + b"{}")
    with pytest.raises(ProtocolError, match="JSON"):
        decode_message(struct.pack(">BI", 20, 3) + b"{x}")
    with pytest.raises(ProtocolError, match="do not fill"):
        decode_message(struct.pack(">BI", 20, 14) + b'{"blobs":[10]}' + b"123")
    with pytest.raises(ProtocolError, match="blobs"):
        decode_message(struct.pack(">BI", 20, 14) + b'{"blobs":[-1]}')


def test_any_json_spelling_is_read_and_blobs_may_be_omitted():
    spaced = b'{ "t" : 12.5 ,\n "extra": {"ignored": [1, 2]} }'
    msg = decode_message(struct.pack(">BI", 14, len(spaced)) + spaced)
    assert (msg.type, msg.header["t"], msg.blobs) == (MsgType.PING, 12.5, [])
    assert msg.raw == struct.pack(">BI", 14, len(spaced)) + spaced     # kept for transcripts
    head = b'{"blobs": [], "t": 1}'
    assert decode_message(struct.pack(">BI", 14, len(head)) + head).blobs == []
    assert b"blobs" not in encode_message(Message(MsgType.STOP))


@pytest.mark.parametrize("header, text", [
    (b'{"t": 1, "t": 2}', "duplicate key"),
    (b'{"t": NaN}', "NaN is not JSON"),
    (b'{"t": Infinity}', "Infinity is not JSON"),
    (b'{"blobs": [1.0]}', "blobs"),
    (b'{"blobs": null}', "blobs"),
])
def test_headers_outside_the_json_rules_are_rejected(header, text):
    with pytest.raises(ProtocolError, match=text):
        decode_message(struct.pack(">BI", 14, len(header)) + header + b"x")


def test_messages_of_every_type_round_trip():
    for mtype in MsgType:
        msg = Message(mtype, {"k": 1}, [b"abc", b""])
        back = decode_message(encode_message(msg))
        assert (back.type, back.header, back.blobs) == (mtype, {"k": 1}, [b"abc", b""])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_fuzz_decode_never_crashes(data):
    try:
        msg = decode_message(data)
    except ProtocolError:
        return
    for convert in (message_to_frame, message_to_truth):
        try:
            convert(msg)
        except ProtocolError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["index", "timestamp", "color", "depth", "head_pose",
                                        "blendshapes", "face_mesh", "ground_truth"]),
                       st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
                                    max_leaves=12)))
def test_fuzz_frame_headers_never_crash(fields):
    msg = _frame_msg(**fields)
    try:
        message_to_frame(msg)
    except ProtocolError:
        pass
