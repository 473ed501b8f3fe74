"""The capture link end to end on loopback: pairing, encryption, streaming, hostile peers.

Every test is bounded in time (socket timeouts of a few seconds) and binds only to 127.0.0.1.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import numpy as np
import pytest

from facestudio.capture.channel import Channel
from facestudio.capture.device import DeviceInfo, DeviceServer
from facestudio.capture.pairing import PairingError
from facestudio.capture.protocol import PROTOCOL_VERSION, Message, MsgType, encode_message, frame_to_message
from facestudio.capture.receiver import DeviceClient, DeviceError, FrameQueue
from facestudio.capture.virtual_device import ReplayFrameSource, VirtualDevice
from framegen import make_frame

pytestmark = pytest.mark.network
PIN = "123456"


def _collect(client: DeviceClient, n: int, timeout: float = 10.0) -> list:
    q = client.subscribe(FrameQueue())
    client.start(fps=60)
    frames, deadline = [], time.monotonic() + timeout
    while len(frames) < n and time.monotonic() < deadline:
        f = q.get(timeout=timeout)
        if f is None:
            break
        frames.append(f)
    return frames


def test_right_pin_streams_exactly_what_the_device_sent(replay_device):
    with DeviceClient(*replay_device.address, PIN) as client:
        info = client.connect()
        assert info["name"] == "Virtual iPad"
        frames = _collect(client, 25)
        report = client.stop()
    assert len(frames) == 25
    assert [f.index for f in frames] == list(range(frames[0].index, frames[0].index + 25))
    for f in frames:
        sent = make_frame(f.index % 20)
        assert f.color_jpeg == sent.color_jpeg
        np.testing.assert_array_equal(f.depth_m(), sent.depth_m())
        np.testing.assert_allclose(f.head_pose, sent.head_pose)
        np.testing.assert_allclose(f.blendshapes, sent.blendshapes, atol=1e-6)
    assert report is not None and report["frames_sent"] >= 25


def test_wrong_pin_is_refused_and_repeated_guesses_are_rate_limited(replay_device):
    for _ in range(3):
        with pytest.raises(PairingError, match="wrong PIN"):
            DeviceClient(*replay_device.address, "000000").connect()
    # The third failure locks pairing for 2 s: even the right PIN is refused meanwhile.
    with pytest.raises(PairingError, match="refusing PINs"):
        DeviceClient(*replay_device.address, PIN).connect()
    time.sleep(2.2)
    with DeviceClient(*replay_device.address, PIN) as client:
        assert client.connect()["name"] == "Virtual iPad"


def test_malformed_pin_is_a_clear_error(replay_device):
    with pytest.raises(PairingError, match="6 digits"):
        DeviceClient(*replay_device.address, "12ab").connect()


def test_second_desktop_is_told_the_device_is_busy(replay_device):
    with DeviceClient(*replay_device.address, PIN) as first:
        first.connect()
        with DeviceClient(*replay_device.address, PIN) as second:
            second.connect()
            with pytest.raises(DeviceError, match="busy"):
                second.start()


# ------------------------------------------------------------------ a recording man in the middle

class Proxy:
    """Forward loopback TCP, recording (and optionally altering) what the device sends."""

    def __init__(self, target: tuple[str, int], alter=None):
        self.target, self.alter = target, alter
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.to_client = bytearray()
        self.to_device = bytearray()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        client, _ = self.listener.accept()
        upstream = socket.create_connection(self.target)
        threading.Thread(target=self._pump, args=(client, upstream, self.to_device, None), daemon=True).start()
        self._pump(upstream, client, self.to_client, self.alter)

    @staticmethod
    def _pump(src, dst, log, alter) -> None:
        try:
            while data := src.recv(65536):
                log.extend(data)
                dst.sendall(alter(log, data) if alter else data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def test_passive_listener_learns_neither_pin_nor_frames(replay_device):
    proxy = Proxy(replay_device.address)
    with DeviceClient("127.0.0.1", proxy.port, PIN) as client:
        client.connect()
        frames = _collect(client, 10)
    wire = bytes(proxy.to_client + proxy.to_device)
    assert len(frames) == 10 and len(proxy.to_client) > 10 * 1000
    assert PIN.encode() not in wire
    for f in frames:
        assert f.color_jpeg[100:164] not in wire   # any 64 bytes of image data would show
        assert f.depth.data[100:164] not in wire


def _record_boundaries(stream: bytes) -> list[int]:
    """Offsets where records start in a captured byte stream."""
    offsets, pos = [], 0
    while pos + 4 <= len(stream):
        offsets.append(pos)
        pos += 4 + struct.unpack(">I", stream[pos:pos + 4])[0]
    return offsets


@pytest.mark.parametrize("attack", ["tamper", "replay"])
def test_tampered_or_replayed_records_close_the_connection(replay_device, attack):
    state = {"done": False}

    def alter(log: bytearray, data: bytes) -> bytes:
        # After the handshake and ~8 frames, flip a byte or re-send the previous record.
        if state["done"] or len(log) < 50_000:
            return data
        state["done"] = True
        if attack == "tamper":
            return data[:-1] + bytes([data[-1] ^ 0x55])
        starts = _record_boundaries(bytes(log))
        last = bytes(log[starts[-2]:starts[-1]]) if len(starts) > 1 else b""
        return data + last

    proxy = Proxy(replay_device.address, alter)
    with DeviceClient("127.0.0.1", proxy.port, PIN, timeout=3) as client:
        client.connect()
        q = client.subscribe(FrameQueue())
        client.start(fps=60)
        deadline = time.monotonic() + 10
        while q.get(timeout=10) is not None and time.monotonic() < deadline:
            pass
        assert client.error is not None
        assert "authentication" in client.error or "stopped responding" in client.error


# ------------------------------------------------------------------ rogue devices

class RogueDevice:
    """A 'device' that pairs for real (optionally) and then follows ``script(channel)``."""

    def __init__(self, script, pair: bool = True):
        self.server = DeviceServer(ReplayFrameSource([make_frame(0)]), DeviceInfo("Rogue"), pin=PIN)
        self.script, self.pair = script, pair
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def address(self):
        return self.server.host, self.server.port

    def _run(self) -> None:
        self.server._listener.settimeout(10)
        sock, _ = self.server._listener.accept()
        ch = Channel(sock, record_timeout=10)
        try:
            if self.pair:
                self.server._handshake(ch, time.monotonic() + 10)
                start = ch.recv()
                while start.type is MsgType.PING:       # the desktop's first PING comes right after pairing
                    start = ch.recv()
                assert start.type is MsgType.START
                ch.send(Message(MsgType.STARTED, {"fps": 30}))
            self.script(ch)
        except OSError:
            pass
        finally:
            time.sleep(0.2)
            ch.close()
            self.server._listener.close()


def _stream_error(script, timeout: float = 3.0) -> str:
    rogue = RogueDevice(script)
    client = DeviceClient(*rogue.address, PIN, timeout=timeout)
    client.connect()
    q = client.subscribe(FrameQueue())
    client.start()
    t0 = time.monotonic()
    while q.get(timeout=timeout + 5) is not None:
        pass
    assert time.monotonic() - t0 < timeout + 3, "the desktop must give up within a bounded time"
    client.close()
    assert client.error
    return client.error


def test_rogue_device_huge_declared_length():
    error = _stream_error(lambda ch: ch.sock.sendall(struct.pack(">I", 0xFFFFFFF0) + b"x" * 100))
    assert "exceeds the limit" in error


def test_rogue_device_garbage_record():
    error = _stream_error(lambda ch: ch.sock.sendall(struct.pack(">I", 40) + bytes(range(40))))
    assert "authentication" in error


def test_rogue_device_invalid_frame_content_gets_one_error_saying_why():
    answers = []

    def script(ch):
        msg = frame_to_message(make_frame(1))
        msg.header["blendshapes"] = [0.5] * 3
        ch.send(msg)
        while True:                           # PINGs, then the desktop's last word, then EOF
            try:
                answers.append(ch.recv(timeout=5))
            except ConnectionError:
                return
    assert "52" in _stream_error(script)
    time.sleep(0.3)
    errors = [m for m in answers if m.type is MsgType.ERROR]
    assert len(errors) == 1 and errors[0].header["code"] == "protocol" and "52" in errors[0].header["message"]
    assert answers[-1] is errors[0]           # nothing after the ERROR


def test_no_latency_figure_before_the_device_clock_offset_is_known():
    def script(ch):                            # never answers the desktop's PINGs
        for i in range(5):
            ch.send(frame_to_message(make_frame(i)))
        time.sleep(0.5)
        ch.send(Message(MsgType.BYE, {"reason": "done"}))

    rogue = RogueDevice(script)
    with DeviceClient(*rogue.address, PIN, timeout=3) as client:
        client.connect()
        q = client.subscribe(FrameQueue())
        client.start()
        frames = [q.get(timeout=5) for _ in range(5)]
        stats = client.stats.as_dict()
    assert [f.index for f in frames] == list(range(5))
    assert all(f.latency_s is None and f.received is not None for f in frames)
    assert stats["clock_offset_s"] is None and stats["latency_p50_ms"] is None and stats["frames"] == 5


def test_latency_is_right_for_a_device_clock_of_any_epoch():
    source = ReplayFrameSource([make_frame(i) for i in range(20)])
    offset = 1.0e9                             # device clock = monotonic + 31 years
    server = DeviceServer(source, DeviceInfo("Far clock"), pin=PIN, clock=lambda: time.monotonic() + offset)
    with server, DeviceClient(server.host, server.port, PIN) as client:
        client.connect()
        frames = _collect(client, 30)
        stats = client.stats.as_dict()
    assert len(frames) == 30 and all(f.latency_s is not None for f in frames)
    assert stats["clock_offset_s"] == pytest.approx(offset, abs=0.05)
    # Loopback: the true latency is ~0; the NTP-style offset is off by up to half a round trip
    # either way (milliseconds on a loaded machine), so the figure may be slightly negative.
    assert abs(stats["latency_p50_ms"]) < 50


def test_a_recorded_take_stores_when_each_frame_was_received(replay_device, tmp_path):
    from facestudio.capture.recorder import RecordRequest, record_take
    from facestudio.capture.take import TakeReader

    before = time.time()
    with DeviceClient(*replay_device.address, PIN) as client:
        client.connect()
        result = record_take(client, tmp_path / "take", RecordRequest("alice", "t1", frames=20), fps=60)
    after = time.time()
    reader = TakeReader(tmp_path / "take")
    received = [reader.metadata(i)["received"] for i in range(len(reader))]
    assert result["status"] == "complete" and len(received) == 20
    assert all(before <= r <= after for r in received) and received == sorted(received)


def test_rogue_device_out_of_order_frames():
    def script(ch):
        ch.send(frame_to_message(make_frame(5)))
        ch.send(frame_to_message(make_frame(4)))
    assert "out of order" in _stream_error(script)


def test_rogue_device_truncated_record_then_hang_up():
    def script(ch):
        ch.send(frame_to_message(make_frame(1)))
        ch.sock.sendall(struct.pack(">I", 5000) + b"partial")
    assert "inside a record" in _stream_error(script)


def test_rogue_device_slow_loris_is_cut_off():
    def script(ch):
        ch.sock.sendall(struct.pack(">I", 2000))
        for _ in range(40):
            ch.sock.sendall(b"z")
            time.sleep(0.25)
    assert "record incomplete" in _stream_error(script, timeout=2.0)


def test_rogue_device_that_never_answers_the_handshake():
    rogue = RogueDevice(lambda ch: time.sleep(3), pair=False)
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match="handshake"):
        DeviceClient(*rogue.address, PIN, timeout=1.0).connect()
    assert time.monotonic() - t0 < 3


def test_a_version_1_device_is_refused_with_a_clear_message():
    def version_1_device(listener):
        sock, _ = listener.accept()
        ch = Channel(sock)
        ch.recv()
        ch.send_last(Message(MsgType.ERROR, {"code": "version", "message": "device speaks protocol [1]"}))
        ch.close()

    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5)
        threading.Thread(target=version_1_device, args=(listener,), daemon=True).start()
        with pytest.raises(DeviceError, match="does not speak capture protocol 2.*update"):
            DeviceClient("127.0.0.1", listener.getsockname()[1], PIN, timeout=3).connect()


def test_rogue_device_garbage_handshake():
    rogue = RogueDevice(lambda ch: ch.sock.sendall(b"HTTP/1.1 200 OK\r\n\r\n" * 4), pair=False)
    with pytest.raises(DeviceError, match="handshake"):
        DeviceClient(*rogue.address, PIN, timeout=2.0).connect()


# ------------------------------------------------------------------ rogue desktops and vanishing devices

def test_device_survives_rogue_desktops_and_keeps_serving(replay_device):
    host, port = replay_device.address
    for payload in (b"\x00" * 3, struct.pack(">I", 10 ** 9), struct.pack(">I", 9) + b"not json!",
                    struct.pack(">I", 50) + encode_message(Message(MsgType.START))[:50]):
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(payload)
            s.settimeout(2)
            try:
                s.recv(100)
            except (socket.timeout, OSError):
                pass
    with DeviceClient(host, port, PIN) as client:
        client.connect()
        assert len(_collect(client, 5)) == 5


def test_device_vanishing_mid_take_ends_the_take_cleanly(tmp_path):
    from facestudio.capture.recorder import RecordRequest, record_take
    from facestudio.capture.take import TakeReader

    device = VirtualDevice(ReplayFrameSource([make_frame(i) for i in range(20)]), pin=PIN, advertise=False)
    client = DeviceClient(*device.address, PIN, timeout=3)
    client.connect()
    killer = threading.Timer(1.0, device.close)
    killer.start()
    result = record_take(client, tmp_path / "take", RecordRequest("alice", "t1", frames=10_000), fps=30)
    client.close()
    assert result["status"] == "incomplete"
    assert "disconnected" in result["message"] or "stopped responding" in result["message"]
    reader = TakeReader(tmp_path / "take")
    assert not reader.complete and len(reader) == result["frames"] >= 15
    assert reader.frame(len(reader) - 1).color_jpeg.startswith(b"\xff\xd8")


def test_discovery_finds_an_advertised_device_on_loopback():
    from facestudio.capture.discovery import discover

    source = ReplayFrameSource([make_frame(0)])
    with VirtualDevice(source, name="Lab iPad", pin=PIN, interfaces=["127.0.0.1"]) as device:
        found = discover(timeout=8, interfaces=["127.0.0.1"], expect=1)
    assert any(d.name == "Lab iPad" and d.port == device.address[1] and d.host == "127.0.0.1"
               and d.protocol == PROTOCOL_VERSION for d in found), found
