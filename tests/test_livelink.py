"""Live Link Face UDP packets: the documented layout, hostile datagrams, a live receiver."""

from __future__ import annotations

import socket
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
def test_receiver_on_loopback_counts_good_and_bad_datagrams():
    got = []
    with LiveLinkReceiver(got.append, host="127.0.0.1", port=0) as receiver:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for i in range(5):
                weights = np.full(52, i / 10, np.float32)
                tx.sendto(encode_packet(weights, frame=i), ("127.0.0.1", receiver.port))
            tx.sendto(b"garbage", ("127.0.0.1", receiver.port))
        deadline = time.monotonic() + 5
        while (receiver.received < 5 or receiver.rejected < 1) and time.monotonic() < deadline:
            time.sleep(0.02)
    assert [f.frame for f in got] == [0, 1, 2, 3, 4] and receiver.rejected == 1
    assert got[-1].blendshapes[0] == pytest.approx(0.4)
