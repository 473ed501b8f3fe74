"""FaceStudio against tests/independent_peer.py, written from docs/protocol.md alone, both ways.

Everything runs on 127.0.0.1 with socket timeouts of a few seconds. The independent side spells
its JSON differently (spaces, sorted keys, "blobs" always, optional fields omitted) and its
device clock is monotonic with an offset of 750,000 s, FaceStudio's device clock one of 4.2e6 s.
"""

from __future__ import annotations

import ast
import json
import socket
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

import independent_peer as peer
from facestudio.capture.device import DeviceInfo, DeviceServer
from facestudio.capture.pairing import PairingError, PairingLocked
from facestudio.capture.receiver import DeviceClient, FrameQueue
from facestudio.capture.virtual_device import ReplayFrameSource
from framegen import make_frame

pytestmark = pytest.mark.network
PIN = "314159"
VECTORS = Path(__file__).resolve().parents[1] / "docs" / "protocol-vectors.json"
FACESTUDIO_CLOCK_OFFSET = 4.2e6
TOLERANCE_S = 0.050


def test_the_independent_implementation_shares_no_code_with_facestudio():
    tree = ast.parse(Path(peer.__file__).read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported and not any(m.split(".")[0] in ("facestudio", "framegen") for m in imported), imported


def test_the_independent_implementation_derives_every_byte_of_the_vectors():
    v = json.loads(VECTORS.read_text(encoding="utf-8"))
    raw = {(m["name"], m["direction"]): bytes.fromhex(m["message"]) for m in v["handshake"]}
    for m in v["handshake"] + v["encrypted"]:
        message, record = bytes.fromhex(m["message"]), bytes.fromhex(m["record"])
        assert record[:4] == len(record[4:]).to_bytes(4, "big")
        if "counter" not in m:
            assert record[4:] == message
    hello, reply = raw[("HELLO", "desktop -> device")], raw[("HELLO_REPLY", "device -> desktop")]
    h = peer.hello_digest(hello, reply)
    assert h.hex() == v["hello_hash"]
    w, x, y = (int(v[k], 16) for k in ("w", "x", "y"))
    assert peer.pin_w(v["pin"]) == w
    p_a, p_b = peer.spake_share("A", w, x), peer.spake_share("B", w, y)
    assert (p_a.hex(), p_b.hex()) == (v["pA"], v["pB"])
    assert peer.parse(raw[("PAIR", "desktop -> device")]).blobs == [p_a]
    assert peer.parse(raw[("PAIR", "device -> desktop")]).blobs == [p_b]
    keys = peer.spake_keys("A", w, x, p_a, p_b, h)
    assert keys == peer.spake_keys("B", w, y, p_b, p_a, h)
    for name in ("K", "TT", "Ke", "Ka", "KcA", "KcB", "cA", "cB"):
        assert keys[name].hex() == v[name], name
    assert peer.parse(raw[("CONFIRM", "desktop -> device")]).blobs == [keys["cA"]]
    assert peer.parse(raw[("CONFIRM", "device -> desktop")]).blobs == [keys["cB"]]
    c2d, d2c = peer.traffic_keys(keys["Ke"], h)
    assert (c2d.hex(), d2c.hex()) == (v["key_c2d"], v["key_d2c"])
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    for m in v["encrypted"]:
        key = c2d if m["direction"] == "desktop -> device" else d2c
        plain = ChaCha20Poly1305(key).decrypt(peer.Link.nonce(m["counter"]), bytes.fromhex(m["record"])[4:], None)
        assert plain.hex() == m["message"]
    frame = peer.parse(bytes.fromhex(v["encrypted"][2]["message"]))
    assert frame.type == peer.FRAME and frame.header["index"] == 0
    assert frame.blobs[frame.header["color"]["blob"]][:2] == b"\xff\xd8"
    depth = np.frombuffer(frame.blobs[frame.header["depth"]["blob"]], "<f2").reshape(8, 8)
    assert depth[0, 0] == 0 and abs(float(depth[4, 4]) - 0.4) < 1e-3


# ----------------------------------------------------------------------------- FaceStudio desktop

def test_facestudio_desktop_pairs_streams_and_measures_latency_from_the_independent_device():
    with peer.IndependentDevice(PIN) as device:
        with DeviceClient("127.0.0.1", device.port, PIN, timeout=5) as client:
            assert client.connect()["name"] == "Independent"
            q = client.subscribe(FrameQueue())
            assert client.start(fps=30, depth_every=2, ground_truth=False)["depth_every"] == 2
            frames = [q.get(timeout=10) for _ in range(60)]
            report = client.stop()
            stats = client.stats.as_dict()
    assert all(f is not None for f in frames)
    indices = [f.index for f in frames]
    assert indices == sorted(set(indices)) and report is not None and report["frames_sent"] >= 60
    for f in frames:
        sent = device.sent[f.index]
        assert f.color_jpeg == sent.jpeg
        if f.index % 2 == 0:
            np.testing.assert_array_equal(f.depth_m(), sent.depth.astype(np.float32))
        else:
            assert f.depth is None
        assert f.face_mesh is None and f.ground_truth is None          # omitted keys read as null
    # The device clock is 750,000 s ahead and each frame was stamped 30 ms before it was sent.
    assert stats["clock_offset_s"] == pytest.approx(device.clock_offset, abs=TOLERANCE_S)
    truth = np.array([f.received - device.sent[f.index].captured_wall for f in frames])
    latency = np.array([f.latency_s for f in frames], dtype=float)   # every frame has one
    assert np.all(np.abs(latency - truth) < TOLERANCE_S), np.max(np.abs(latency - truth))
    assert abs(stats["latency_p50_ms"] / 1000 - np.median(truth)) < TOLERANCE_S
    assert 0.025 < np.median(truth) < 0.5


def test_facestudio_desktop_wrong_pins_and_rate_limit_with_the_independent_device():
    with peer.IndependentDevice(PIN) as device:
        for _ in range(3):
            with pytest.raises(PairingError, match="wrong PIN"):
                DeviceClient("127.0.0.1", device.port, "271828", timeout=5).connect()
        with pytest.raises(PairingLocked, match="refusing PINs") as locked:
            DeviceClient("127.0.0.1", device.port, PIN, timeout=5).connect()
        assert 0 < locked.value.retry_after <= 2.0
        time.sleep(locked.value.retry_after + 0.1)
        with DeviceClient("127.0.0.1", device.port, PIN, timeout=5) as client:
            assert client.connect()["name"] == "Independent"


# ----------------------------------------------------------------------------- independent desktop

class StampedSource(ReplayFrameSource):
    """Replay frames, remembering when each was captured (the truth for latency)."""

    def __init__(self, frames):
        super().__init__(frames)
        self.captured: dict[int, float] = {}

    def frame(self, index, t, with_depth=True):
        self.captured[index] = time.time()
        return super().frame(index, t, with_depth)


def _facestudio_device(source=None, **kw) -> DeviceServer:
    source = source or ReplayFrameSource([make_frame(0)])
    return DeviceServer(source, DeviceInfo("FaceStudio device"), pin=PIN,
                        clock=lambda: time.monotonic() + FACESTUDIO_CLOCK_OFFSET, **kw)


def test_the_independent_desktop_pairs_streams_and_measures_latency_from_facestudio_device():
    source = StampedSource([make_frame(i) for i in range(20)])
    with _facestudio_device(source) as server:
        desktop = peer.IndependentDesktop("127.0.0.1", server.port, PIN, timeout=5)
        try:
            assert desktop.pair()["name"] == "FaceStudio device"
            started = desktop.start(fps=30, depth_every=3)        # sizes omitted: defaults
            frames = desktop.frames(60)
            stopped = desktop.stop()
        finally:
            desktop.close()
    assert started["fps"] == 30 and started["depth_every"] == 3
    indices = [f["header"]["index"] for f in frames]
    assert indices == sorted(set(indices)) and stopped["frames_sent"] >= 60
    for f in frames:
        h, sent = f["header"], make_frame(f["header"]["index"] % 20)
        assert f["blobs"][h["color"]["blob"]] == sent.color_jpeg
        if h["index"] % 3 == 0:
            raw = zlib.decompress(f["blobs"][h["depth"]["blob"]])
            np.testing.assert_array_equal(np.frombuffer(raw, "<f2").reshape(sent.depth_m().shape), sent.depth_m())
        else:
            assert h.get("depth") is None
    assert desktop.offset == pytest.approx(FACESTUDIO_CLOCK_OFFSET, abs=TOLERANCE_S)
    truth = np.array([f["wall"] - source.captured[f["header"]["index"]] for f in frames])
    latency = np.array([f["latency"] for f in frames], dtype=float)
    assert np.all(np.abs(latency - truth) < TOLERANCE_S), np.max(np.abs(latency - truth))


def test_facestudio_device_answers_each_wrong_pin_with_one_error_and_locks_from_the_third():
    with _facestudio_device() as server:
        waits = []
        for _ in range(3):
            desktop = peer.IndependentDesktop("127.0.0.1", server.port, "271828", timeout=5)
            with pytest.raises(peer.Refused) as refused:
                desktop.pair()
            assert refused.value.code == "wrong_pin"
            waits.append(refused.value.retry_after)
            with pytest.raises((peer.Closed, ConnectionError)):     # closed: no second ERROR
                desktop.link.recv(timeout=3)
        assert waits == [0.0, 0.0, 2.0]
        desktop = peer.IndependentDesktop("127.0.0.1", server.port, PIN, timeout=5)
        with pytest.raises(peer.Refused) as refused:
            desktop.pair()
        assert refused.value.code == "rate_limited" and 0 < refused.value.retry_after <= 2.0
        time.sleep(refused.value.retry_after + 0.1)
        desktop = peer.IndependentDesktop("127.0.0.1", server.port, PIN, timeout=5)
        try:
            assert desktop.pair()["name"] == "FaceStudio device"
        finally:
            desktop.close()


def test_facestudio_device_refuses_a_second_concurrent_pairing_attempt():
    with _facestudio_device() as server:
        first = peer.Link(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        first.send(peer.HELLO, {"versions": [2]})
        first.recv()
        first.send(peer.PAIR, {}, [peer.spake_share("A", peer.pin_w("000000"), 12345)])
        assert first.recv().type == peer.PAIR             # attempt running, CONFIRM not yet sent
        second = peer.IndependentDesktop("127.0.0.1", server.port, PIN, timeout=5)
        with pytest.raises(peer.Refused) as refused:
            second.pair()
        assert refused.value.code == "rate_limited" and refused.value.retry_after == 1.0
        first.close()                                      # abandoned: no guess, no lock
        time.sleep(0.2)
        desktop = peer.IndependentDesktop("127.0.0.1", server.port, PIN, timeout=5)
        try:
            assert desktop.pair()["name"] == "FaceStudio device"
        finally:
            desktop.close()


def test_facestudio_device_closes_a_client_that_never_pairs_with_error_timeout():
    with _facestudio_device(handshake_timeout=1.0) as server:
        link = peer.Link(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        link.send(peer.HELLO, {"versions": [2]})
        assert link.recv().type == peer.HELLO_REPLY
        t0 = time.monotonic()
        with pytest.raises(peer.Refused) as refused:
            link.recv(timeout=5)
        assert refused.value.code == "timeout" and time.monotonic() - t0 < 2.0
        with pytest.raises((peer.Closed, ConnectionError)):
            link.recv(timeout=3)


def test_facestudio_device_refuses_an_old_protocol_version_clearly():
    with _facestudio_device() as server:
        link = peer.Link(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        link.send(peer.HELLO, {"versions": [1]})
        with pytest.raises(peer.Refused) as refused:
            link.recv()
        assert refused.value.code == "version" and "[2]" in str(refused.value)
