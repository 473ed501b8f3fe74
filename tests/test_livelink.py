"""Live Link Face UDP packets: the documented layout, hostile datagrams, a live receiver."""

from __future__ import annotations

import socket
import struct
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from facestudio.capture.livelink import (LiveLinkError, LiveLinkReceiver, decode_packet,
                                         encode_packet)
from facestudio.faces.arkit import BLENDSHAPE_INDEX


def test_packet_layout_matches_the_documented_format():
    weights = np.zeros(52, np.float32)
    weights[BLENDSHAPE_INDEX["jawOpen"]] = 0.8
    packet = encode_packet(weights, device_id="iPhone", subject="Ana", frame=42, fps=60,
                           head_ypr=(0.1, -0.2, 0.05))
    # u8 version, i32+id, i32+subject, i32 frame, f32 subframe, i32 num, i32 den, u8 count, 61 f32
    assert len(packet) == 1 + 4 + 6 + 4 + 3 + 16 + 1 + 61 * 4 and packet[0] == 6
    frame = decode_packet(packet)
    assert (frame.device_id, frame.subject, frame.frame, frame.fps) == ("iPhone", "Ana", 42, 60.0)
    assert frame.blendshapes[BLENDSHAPE_INDEX["jawOpen"]] == pytest.approx(0.8)
    np.testing.assert_allclose(frame.head_ypr, [0.1, -0.2, 0.05], atol=1e-6)


def no_face_packet(device_id: bytes, subject: bytes, frame: int) -> bytes:
    """The short packet Live Link Face sends while it tracks no face, built by hand from the
    layout: version, device id, subject, frame time (frame, subframe, fps as num/den), nothing else."""
    return (b"\x06" + struct.pack(">i", len(device_id)) + device_id + struct.pack(">i", len(subject))
            + subject + struct.pack(">ifii", frame, 0.0, 60, 1))


def test_a_packet_that_ends_after_the_frame_time_means_no_face():
    packet = no_face_packet(b"iPhone", b"Ana", 77)
    assert packet == encode_packet(None, device_id="iPhone", subject="Ana", frame=77)
    frame = decode_packet(packet)
    assert not frame.face_tracked and frame.blendshapes is None and frame.head_ypr is None
    assert (frame.device_id, frame.subject, frame.frame, frame.fps) == ("iPhone", "Ana", 77, 60.0)
    assert decode_packet(encode_packet(np.zeros(52))).face_tracked
    with pytest.raises(LiveLinkError, match="inside the frame time"):
        decode_packet(packet[:-1])                 # cut inside the frame time: still malformed
    with pytest.raises(LiveLinkError, match="curves"):
        decode_packet(packet + b"\x00")            # a count of 0 curves is not a face either


def test_head_angles_are_passed_on_in_radians_unconverted():
    # A real capture's head pitch of 0.2-0.5 is a 11-29 degree nod; it must arrive as sent.
    frame = decode_packet(encode_packet(np.zeros(52), head_ypr=(-0.1, 0.35, 0.02)))
    np.testing.assert_allclose(frame.head_ypr, [-0.1, 0.35, 0.02], atol=1e-7)


@pytest.mark.parametrize("mutate, text", [
    (lambda p: b"\x05" + p[1:], "v6"),
    (lambda p: p[:8], "length"),
    (lambda p: p[:1] + b"\x7f\xff\xff\xff" + p[5:], "out of bounds"),
    (lambda p: p[:-3], "curves"),
])
def test_malformed_packets_are_rejected(mutate, text):
    with pytest.raises(LiveLinkError, match=text):
        decode_packet(mutate(encode_packet(np.zeros(52))))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_never_crashes(data):
    try:
        decode_packet(data)
    except LiveLinkError:
        pass


@pytest.mark.network
def test_receiver_on_loopback_counts_good_no_face_and_bad_datagrams():
    got = []
    with LiveLinkReceiver(got.append, host="127.0.0.1", port=0) as receiver:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for i in range(5):
                weights = np.full(52, i / 10, np.float32)
                tx.sendto(encode_packet(weights, frame=i), ("127.0.0.1", receiver.port))
            for i in range(5, 8):   # the face leaves the camera
                tx.sendto(no_face_packet(b"facestudio", b"face", i), ("127.0.0.1", receiver.port))
            tx.sendto(b"garbage", ("127.0.0.1", receiver.port))
            tx.sendto(encode_packet(np.zeros(52))[:-3], ("127.0.0.1", receiver.port))
        deadline = time.monotonic() + 5
        while (receiver.received < 8 or receiver.rejected < 2) and time.monotonic() < deadline:
            time.sleep(0.02)
    assert [f.frame for f in got] == list(range(8))
    assert (receiver.received, receiver.no_face, receiver.rejected) == (8, 3, 2)
    assert [f.face_tracked for f in got] == [True] * 5 + [False] * 3
    assert got[4].blendshapes[0] == pytest.approx(0.4)
