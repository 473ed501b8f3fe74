"""The device side of the capture protocol: what an iPad app (or the virtual device) runs.

:class:`DeviceServer` listens on TCP, pairs with a desktop by PIN, then streams frames from
a :class:`FrameSource` at the requested rate. One desktop streams at a time; others are
told the device is busy. A frame that cannot be sent in time is skipped at the source
(its index is never sent), exactly as ARKit drops frames, so the desktop can report it.
Every refusal is one ERROR, the last message on the connection (docs/protocol.md section 3.2).
"""

from __future__ import annotations

import hmac
import logging
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Protocol

from facestudio import __version__
from facestudio.capture.channel import Channel, PeerClosed, RecordTimeout
from facestudio.capture.frame import Frame
from facestudio.capture.pairing import PAIRING_METHOD, Pairing, PairingLocked, PinGuard
from facestudio.capture.protocol import (MAX_FPS, MAX_IMAGE_SIDE, SUPPORTED_VERSIONS, Message, MsgType,
                                         ProtocolError, error_message, frame_to_message, truth_to_message)
from facestudio.capture.spake2 import InvalidElement

log = logging.getLogger(__name__)
IDLE_TIMEOUT_S = 15.0       # a paired desktop that sends nothing (not even PING) for this long is dropped
HANDSHAKE_TIMEOUT_S = 30.0  # from accepting the connection to sending our CONFIRM


class Refusal(Exception):
    """End the connection with one ERROR ``code`` (docs/protocol.md 3.2), then close."""

    def __init__(self, code: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.code, self.retry_after = code, retry_after

    def to_message(self) -> Message:
        return error_message(self.code, str(self), self.retry_after)


class PeerError(Exception):
    """The desktop sent ERROR: close without answering."""


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    model: str = "FaceStudio Virtual Device"
    sensor: str = "truedepth"
    device_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "model": self.model, "sensor": self.sensor, "id": self.device_id,
                "app": f"facestudio {__version__}"}


@dataclass(frozen=True)
class StreamSettings:
    fps: float
    color_width: int
    color_height: int
    depth_every: int = 1            # depth on every n-th frame (ARKit delivers depth at a lower rate)
    ground_truth: bool = False

    @classmethod
    def from_header(cls, h: dict[str, Any]) -> "StreamSettings":
        def num(key: str, default: float, lo: float, hi: float) -> float:
            v = h.get(key, default)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise ProtocolError(f"START: {key} must be a number in [{lo}, {hi}]")
            return v
        return cls(fps=float(num("fps", 30, 1, MAX_FPS)),
                   color_width=int(num("color_width", 640, 16, MAX_IMAGE_SIDE)),
                   color_height=int(num("color_height", 480, 16, MAX_IMAGE_SIDE)),
                   depth_every=int(num("depth_every", 1, 1, 60)),
                   ground_truth=bool(h.get("ground_truth", False)))


class FrameSource(Protocol):
    """What a device streams. The virtual device renders a synthetic face; a test may replay."""

    def configure(self, settings: StreamSettings) -> dict[str, Any]:
        """Prepare for streaming; returns the settings actually used (sent in STARTED)."""

    def frame(self, index: int, t: float, with_depth: bool) -> Frame:
        """Capture frame ``index`` at stream time ``t`` seconds."""

    def truth(self) -> dict[str, Any] | None:
        """Exact ground truth (virtual devices) or None."""


class DeviceServer:
    """Serve the capture protocol on ``host:port`` (port 0 picks a free one).

    ``clock`` stamps FRAME timestamps and PONG replies (one clock for both, any epoch: a real
    device uses ARKit's uptime clock). Timeouts are parameters so tests can shorten them.
    """

    def __init__(self, source: FrameSource, info: DeviceInfo, pin: str | None = None,
                 host: str = "127.0.0.1", port: int = 0, record_timeout: float = 10.0,
                 allow_insecure: bool = False, clock: Callable[[], float] = time.monotonic,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT_S, idle_timeout: float = IDLE_TIMEOUT_S):
        self.source = source
        self.info = info
        self.guard = PinGuard(pin)
        self.record_timeout = record_timeout
        self.allow_insecure = allow_insecure
        self.clock = clock
        self.handshake_timeout, self.idle_timeout = handshake_timeout, idle_timeout
        self._listener = socket.create_server((host, port), reuse_port=False)
        self._listener.settimeout(0.2)
        self.host, self.port = self._listener.getsockname()[:2]
        self._stop = threading.Event()
        self._busy = threading.Lock()
        self._connections: set[Channel] = set()
        self._conn_lock = threading.Lock()
        self._accept_thread = threading.Thread(target=self._accept_loop, name=f"device-{self.port}",
                                               daemon=True)
        self.frames_sent = 0

    @property
    def pin(self) -> str:
        return self.guard.pin

    def start(self) -> "DeviceServer":
        self._accept_thread.start()
        return self

    def stop(self) -> None:
        """Close the listener and every connection (abruptly: used for shutdown and 'device vanished')."""
        self._stop.set()
        self._listener.close()
        with self._conn_lock:
            for ch in list(self._connections):
                ch.close()
        if self._accept_thread.is_alive() and threading.current_thread() is not self._accept_thread:
            self._accept_thread.join(timeout=5)

    def __enter__(self) -> "DeviceServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ connections
    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, addr = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(sock, addr), daemon=True,
                             name=f"device-conn-{addr[1]}").start()

    def _serve(self, sock: socket.socket, addr: tuple) -> None:
        ch = Channel(sock, self.record_timeout)
        with self._conn_lock:
            self._connections.add(ch)
        try:
            try:
                self._handshake(ch, time.monotonic() + self.handshake_timeout)
            except RecordTimeout as exc:
                raise Refusal("timeout", f"pairing did not complete in time ({exc}); the limits are "
                                         f"{self.record_timeout:g} s per message and "
                                         f"{self.handshake_timeout:g} s in all") from None
            if not self._busy.acquire(blocking=False):
                raise Refusal("busy", f"{self.info.name} is in use by another desktop")
            try:
                self._session(ch)
            finally:
                self._busy.release()
        except Refusal as exc:
            log.warning("refusing %s: %s (%s)", addr[0], exc.code, exc)
            ch.send_last(exc.to_message())
        except ProtocolError as exc:
            log.warning("closing connection from %s: %s", addr[0], exc)
            ch.send_last(error_message("protocol", str(exc)))
        except RecordTimeout as exc:
            log.info("desktop %s went silent: %s", addr[0], exc)
            ch.send_last(error_message("timeout", f"nothing from the desktop in time: {exc}"))
        except (PeerError, PeerClosed, OSError) as exc:
            log.info("connection from %s ended: %s", addr[0], exc)
        finally:
            with self._conn_lock:
                self._connections.discard(ch)
            ch.close()

    @staticmethod
    def _expect(ch: Channel, mtype: MsgType, deadline: float) -> Message:
        msg = ch.recv(deadline=deadline)
        if msg.type is MsgType.ERROR:
            raise PeerError(f"desktop sent ERROR {msg.header.get('code')}: {msg.header.get('message')}")
        if msg.type is not mtype:
            raise ProtocolError(f"expected {mtype.name}, got {msg.type.name}")
        return msg

    def _handshake(self, ch: Channel, deadline: float) -> None:
        hello = self._expect(ch, MsgType.HELLO, deadline)
        versions = hello.header.get("versions")
        if not isinstance(versions, list):
            raise ProtocolError("HELLO: 'versions' must be a list of integers")
        common = [v for v in SUPPORTED_VERSIONS if any(type(x) is int and x == v for x in versions)]
        if not common:
            raise Refusal("version", f"this device speaks capture protocol {list(SUPPORTED_VERSIONS)}, "
                                     f"the desktop offered {versions!r}: update the older of the two")
        insecure = hello.header.get("insecure") is True and self.allow_insecure
        reply = Message(MsgType.HELLO_REPLY, {"version": max(common), "device": self.info.to_dict(),
                                              "pairing": "none" if insecure else PAIRING_METHOD})
        reply_bytes = ch.send(reply)
        if insecure:
            ch.allow_large_plain_records()
            return
        pair = self._expect(ch, MsgType.PAIR, deadline)
        if len(pair.blobs) != 1:
            raise ProtocolError(f"PAIR must carry exactly one blob, not {len(pair.blobs)}")
        try:
            self.guard.begin()
        except PairingLocked as exc:
            raise Refusal("rate_limited", str(exc), retry_after=exc.retry_after) from None
        paired: bool | None = None       # None: the desktop left before guessing
        try:
            pairing = Pairing(self.guard.pin, "device")
            try:
                keys = pairing.finish(pair.blobs[0], hello.raw, reply_bytes)
            except InvalidElement as exc:
                paired = False           # counts as a guess: K = identity means one was right
                raise ProtocolError(f"PAIR: {exc}") from None
            ch.send(Message(MsgType.PAIR, {}, [pairing.message]))
            confirm = self._expect(ch, MsgType.CONFIRM, deadline)
            paired = len(confirm.blobs) == 1 and hmac.compare_digest(confirm.blobs[0], keys.client_confirm)
        finally:
            lock = self.guard.end(paired)
        if not paired:
            raise Refusal("wrong_pin", "wrong PIN", retry_after=lock)
        ch.send(Message(MsgType.CONFIRM, {}, [keys.device_confirm]))
        ch.enable_encryption(send_key=keys.device_to_client, recv_key=keys.client_to_device)

    def _session(self, ch: Channel) -> None:
        streamer: _Streamer | None = None
        try:
            while not self._stop.is_set():
                msg = ch.recv(timeout=self.idle_timeout)
                if msg.type is MsgType.START:
                    if streamer is not None:
                        raise ProtocolError("START while already streaming")
                    settings = StreamSettings.from_header(msg.header)
                    used = self.source.configure(settings)
                    settings = replace(settings, fps=float(used.get("fps", settings.fps)))
                    ch.send(Message(MsgType.STARTED, used))
                    truth = self.source.truth() if settings.ground_truth else None
                    if truth is not None:
                        ch.send(truth_to_message(truth))
                    streamer = _Streamer(self, ch, settings)
                    streamer.start()
                elif msg.type is MsgType.STOP:
                    if streamer is None:
                        raise ProtocolError("STOP while not streaming")
                    streamer.stop()
                    ch.send(Message(MsgType.STOPPED, {"frames_sent": streamer.sent,
                                                      "skipped": streamer.skipped}))
                    streamer = None
                elif msg.type is MsgType.PING:
                    t = msg.header.get("t")
                    if isinstance(t, bool) or not isinstance(t, (int, float)):
                        raise ProtocolError("PING: 't' must be a number")
                    ch.send(Message(MsgType.PONG, {"t": t, "t_reply": self.clock()}))
                elif msg.type is MsgType.PONG:
                    pass
                elif msg.type is MsgType.BYE:
                    return
                elif msg.type is MsgType.ERROR:
                    raise PeerError(f"desktop sent ERROR {msg.header.get('code')}: {msg.header.get('message')}")
                else:
                    raise ProtocolError(f"unexpected {msg.type.name} from the desktop")
        finally:
            if streamer is not None:
                streamer.stop()


class _Streamer(threading.Thread):
    """Sends frames at the requested rate; frames it cannot send in time are skipped."""

    def __init__(self, server: DeviceServer, ch: Channel, settings: StreamSettings):
        super().__init__(daemon=True, name=f"stream-{server.port}")
        self.server, self.ch, self.settings = server, ch, settings
        self._stop_evt = threading.Event()
        self.sent = 0
        self.skipped = 0

    def stop(self) -> None:
        self._stop_evt.set()
        if self is not threading.current_thread():
            self.join(timeout=5)

    def run(self) -> None:
        period = 1.0 / self.settings.fps
        start = time.monotonic()
        index = 0
        try:
            while not self._stop_evt.is_set():
                due = start + index * period
                now = time.monotonic()
                if now < due:
                    self._stop_evt.wait(due - now)
                    continue
                late = int((now - due) / period)
                if late:                         # behind by whole frames: skip them, like ARKit
                    self.skipped += late
                    index += late
                captured = self.server.clock()
                frame = self.server.source.frame(index, index * period,
                                                 with_depth=index % self.settings.depth_every == 0)
                frame.timestamp = captured
                self.ch.send(frame_to_message(frame))
                self.sent += 1
                self.server.frames_sent += 1
                index += 1
        except OSError as exc:
            log.info("stream ended: %s", exc)
