"""The desktop side of the capture protocol: connect, pair, stream, measure.

:class:`DeviceClient` runs one reader thread per device. Frames go to subscribers:
a live preview (:class:`LatestFrame`, keeps only the newest, may skip) and recorders
(:class:`FrameQueue`, bounded, *never* drops: when it is full the reader waits, TCP pushes
back, and the device skips frames at the source, which the stats report). Everything the
reader learns (frames, errors, the end of the stream) is plain data, safe to hand to a GUI.
"""

from __future__ import annotations

import collections
import hmac
import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facestudio import __version__
from facestudio.capture.channel import Channel, PeerClosed, RecordTimeout
from facestudio.capture.clock import ClockOffset
from facestudio.capture.frame import Frame
from facestudio.capture.pairing import PAIRING_METHOD, Pairing, PairingError, PairingLocked
from facestudio.capture.protocol import (SUPPORTED_VERSIONS, Message, MsgType, ProtocolError,
                                         error_message, message_to_frame, message_to_truth)
from facestudio.capture.spake2 import InvalidElement

log = logging.getLogger(__name__)
PING_INTERVAL_S = 2.0


class DeviceError(Exception):
    """The device refused, failed or vanished; the message says which, for the user."""


@dataclass
class LinkStats:
    """Live numbers about one stream (all plain data)."""

    frames: int = 0
    device_skipped: int = 0
    preview_skipped: int = 0
    bytes: int = 0
    fps: float = 0.0
    bandwidth_mbps: float = 0.0
    clock_offset_s: float | None = None      # device clock - desktop clock; None before the first PONG
    _arrivals: collections.deque = field(default_factory=lambda: collections.deque(maxlen=120), repr=False)
    _latencies: collections.deque = field(default_factory=lambda: collections.deque(maxlen=600), repr=False)

    def as_dict(self) -> dict[str, float | None]:
        """Counters plus latency percentiles over the last 600 frames that have a latency
        (None before any: a frame has one once the device clock's offset is known)."""
        out: dict[str, float | None] = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        lat = np.asarray(self._latencies) * 1000
        p50, p95 = (round(float(x), 3) for x in np.percentile(lat, [50, 95])) if lat.size else (None, None)
        out.update(latency_p50_ms=p50, latency_p95_ms=p95)
        return out


class FrameQueue:
    """A bounded queue for a recorder: ``put`` blocks when full, so no frame is ever dropped."""

    def __init__(self, maxsize: int = 240):
        self._q: queue.Queue = queue.Queue(maxsize)

    def put(self, frame: Frame | None) -> None:
        self._q.put(frame)

    def get(self, timeout: float | None = None) -> Frame | None:
        """The next frame; None marks the end of the stream. Raises queue.Empty on timeout."""
        return self._q.get(timeout=timeout)

    def qsize(self) -> int:
        return self._q.qsize()


class LatestFrame:
    """A one-slot mailbox for previews: a newer frame replaces an unread one (counted as skipped)."""

    def __init__(self) -> None:
        self._frame: Frame | None = None
        self._lock = threading.Lock()
        self.skipped = 0

    def put(self, frame: Frame | None) -> None:
        if frame is None:
            return
        with self._lock:
            if self._frame is not None:
                self.skipped += 1
            self._frame = frame

    def take(self) -> Frame | None:
        with self._lock:
            frame, self._frame = self._frame, None
            return frame


class DeviceClient:
    """A paired, encrypted connection to one capture device."""

    def __init__(self, host: str, port: int, pin: str | None, *, timeout: float = 10.0,
                 insecure: bool = False):
        self.host, self.port, self.pin = host, port, pin
        self.timeout = timeout
        self.insecure = insecure
        self.device: dict[str, Any] = {}
        self.settings: dict[str, Any] = {}
        self.truth: dict[str, Any] | None = None
        self.stats = LinkStats()
        self.error: str | None = None
        self.stopped_report: dict[str, Any] | None = None
        self._ch: Channel | None = None
        self._reader: threading.Thread | None = None
        self._pinger: threading.Thread | None = None
        self._sinks: list[FrameQueue | LatestFrame] = []
        self._sinks_lock = threading.Lock()
        self._closed = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        self._control: queue.Queue[Message | None] = queue.Queue()
        self._last_index = -1
        self.clock = ClockOffset()

    # ------------------------------------------------------------------ set-up
    def connect(self) -> dict[str, Any]:
        """Open TCP, negotiate the version and pair. Returns the device's description."""
        pairing = Pairing(self.pin, "client") if self.pin is not None else None   # checks the PIN first
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as exc:
            raise DeviceError(f"cannot reach device at {self.host}:{self.port}: {exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._ch = ch = Channel(sock, self.timeout)
        try:
            hello = ch.send(Message(MsgType.HELLO, {"versions": list(SUPPORTED_VERSIONS),
                                                    "client": f"FaceStudio {__version__}",
                                                    **({"insecure": True} if self.insecure else {})}))
            reply = self._expect(MsgType.HELLO_REPLY)
            version = reply.header.get("version")
            if type(version) is not int or version not in SUPPORTED_VERSIONS:
                raise ProtocolError(f"HELLO_REPLY: version {version!r} was not offered")
            self.device = reply.header.get("device") if isinstance(reply.header.get("device"), dict) else {}
            method = reply.header.get("pairing")
            if method == "none":
                if not self.insecure:
                    raise ProtocolError("the device offered an unencrypted link (only benchmarks ask for one)")
                ch.allow_large_plain_records()
                self._start_session_threads()
                return self.device
            if method != PAIRING_METHOD:
                raise ProtocolError(f"HELLO_REPLY: pairing {method!r}, expected {PAIRING_METHOD!r}")
            if pairing is None:
                raise DeviceError("this device needs the 6-digit PIN it shows on screen")
            ch.send(Message(MsgType.PAIR, {}, [pairing.message]))
            pair = self._expect(MsgType.PAIR)
            if len(pair.blobs) != 1:
                raise ProtocolError("PAIR must carry one blob")
            try:
                keys = pairing.finish(pair.blobs[0], hello, reply.raw)
            except InvalidElement as exc:
                raise ProtocolError(f"PAIR from the device: {exc}") from None
            ch.send(Message(MsgType.CONFIRM, {}, [keys.client_confirm]))
            confirm = self._expect(MsgType.CONFIRM)
            if len(confirm.blobs) != 1 or not hmac.compare_digest(confirm.blobs[0], keys.device_confirm):
                ch.send_last(error_message("protocol", "key confirmation failed"))
                raise PairingError("the device failed key confirmation (not the device you paired with?)")
            ch.enable_encryption(send_key=keys.client_to_device, recv_key=keys.device_to_client)
            self._start_session_threads()
        except ProtocolError as exc:
            ch.send_last(error_message("protocol", str(exc)))
            ch.close()
            raise DeviceError(f"handshake with {self.host}:{self.port} failed: {exc}") from None
        except RecordTimeout as exc:
            ch.send_last(error_message("timeout", f"no answer from the device in time: {exc}"))
            ch.close()
            raise DeviceError(f"handshake with {self.host}:{self.port} failed: {exc}") from None
        except (PeerClosed, OSError) as exc:
            ch.close()
            raise DeviceError(f"handshake with {self.host}:{self.port} failed: {exc}") from None
        except (PairingError, DeviceError):
            ch.close()
            raise
        return self.device

    def _expect(self, mtype: MsgType) -> Message:
        """The next handshake message, which must be ``mtype``; an ERROR becomes the user's message."""
        assert self._ch is not None
        msg = self._ch.recv()
        if msg.type is MsgType.ERROR:
            code, text = msg.header.get("code"), str(msg.header.get("message", ""))[:300]
            if code == "wrong_pin":
                raise PairingError("wrong PIN: check the 6 digits shown on the device")
            if code == "rate_limited":
                wait = msg.header.get("retry_after")
                raise PairingLocked(f"the device is refusing PINs for now: {text}",
                                    float(wait) if isinstance(wait, (int, float)) else 0.0)
            if code == "version":
                raise DeviceError(f"the device does not speak capture protocol {SUPPORTED_VERSIONS[-1]} "
                                  f"(update the device app or FaceStudio): {text}")
            raise DeviceError(f"device error ({code}): {text}")
        if msg.type is not mtype:
            raise ProtocolError(f"expected {mtype.name}, got {msg.type.name}")
        return msg

    def subscribe(self, sink: FrameQueue | LatestFrame) -> FrameQueue | LatestFrame:
        with self._sinks_lock:
            self._sinks.append(sink)
        return sink

    def unsubscribe(self, sink: FrameQueue | LatestFrame) -> None:
        with self._sinks_lock:
            if sink in self._sinks:
                self._sinks.remove(sink)

    def start(self, fps: float = 30, color_width: int = 640, color_height: int = 480,
              depth_every: int = 1, ground_truth: bool = True) -> dict[str, Any]:
        """Ask the device to stream; returns the settings it actually uses. Can follow a stop()."""
        if self._ch is None or self._closed.is_set():
            raise DeviceError(self.error or "not connected")
        if self.streaming:
            raise DeviceError("already streaming")
        self._drain_control()
        self._last_index = -1
        try:
            self._ch.send(Message(MsgType.START, {"fps": fps, "color_width": color_width,
                                                  "color_height": color_height, "depth_every": depth_every,
                                                  "ground_truth": ground_truth}))
        except OSError:
            pass        # the device hung up (after ERROR busy, say): the reader knows why, see below
        self.settings = self._await_control(MsgType.STARTED).header
        return self.settings

    def _await_control(self, mtype: MsgType) -> Message:
        """The reader thread hands STARTED/STOPPED/ERROR replies over through the control mailbox;
        a connection that ended meanwhile is reported with the reader's reason, without waiting."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                msg = self._control.get(timeout=0.05)
                break
            except queue.Empty:
                if self._closed.is_set():
                    raise DeviceError(self.error or "device closed the connection") from None
                if time.monotonic() > deadline:
                    raise DeviceError(f"device did not answer with {mtype.name} within {self.timeout:g} s") from None
        if msg is None or msg.type is MsgType.ERROR:
            raise DeviceError(self.error or "device closed the connection")
        if msg.type is not mtype:
            raise DeviceError(f"device answered {msg.type.name} instead of {mtype.name}")
        return msg

    def _drain_control(self) -> None:
        while True:
            try:
                self._control.get_nowait()
            except queue.Empty:
                return

    # ------------------------------------------------------------------ session
    def _start_session_threads(self) -> None:
        """After pairing: the first PING (sent here, so it precedes any START on the wire and the
        clock offset is known before frames flow), one reader for everything the device sends and
        one pinger (keepalive and clock, every 2 s)."""
        assert self._ch is not None
        self._send_ping(self._ch)
        self._reader = threading.Thread(target=self._read_loop, daemon=True, name=f"recv-{self.port}")
        self._pinger = threading.Thread(target=self._ping_loop, daemon=True, name=f"ping-{self.port}")
        self._reader.start()
        self._pinger.start()

    def _read_loop(self) -> None:
        assert self._ch is not None
        ch = self._ch
        try:
            while not self._closed.is_set():
                msg = ch.recv()
                if msg.type is MsgType.FRAME:
                    if self._stopped.is_set():
                        raise ProtocolError("FRAME while not streaming")
                    self._on_frame(message_to_frame(msg), ch.bytes_received)
                elif msg.type is MsgType.TRUTH:
                    self.truth = message_to_truth(msg)
                elif msg.type is MsgType.PONG:
                    self._on_pong(msg.header)
                elif msg.type is MsgType.PING:
                    ch.send(Message(MsgType.PONG, {"t": msg.header.get("t"), "t_reply": time.monotonic()}))
                elif msg.type is MsgType.STARTED:
                    self._stopped.clear()
                    self._control.put(msg)
                elif msg.type is MsgType.STOPPED:
                    self.stopped_report = msg.header
                    self._stopped.set()
                    self._end_sinks()
                    self._control.put(msg)
                elif msg.type is MsgType.BYE:
                    self.error = f"device closed the stream: {msg.header.get('reason', 'no reason given')}"
                    break
                elif msg.type is MsgType.ERROR:
                    self.error = f"device error ({msg.header.get('code')}): {msg.header.get('message')}"
                    break
                else:
                    raise ProtocolError(f"unexpected {msg.type.name} from the device")
        except ProtocolError as exc:
            self.error = f"protocol violation by the device, connection closed: {exc}"
            ch.send_last(error_message("protocol", str(exc)))
        except RecordTimeout as exc:
            self.error = f"device stopped responding ({exc})"
            ch.send_last(error_message("timeout", f"nothing from the device in time: {exc}"))
        except (PeerClosed, OSError) as exc:
            if not self._closed.is_set():
                self.error = f"device disconnected: {exc}"
        finally:
            if self.error:
                log.warning("%s:%s: %s", self.host, self.port, self.error)
            self._closed.set()
            self._stopped.set()
            self._control.put(None)
            self._end_sinks()

    def _end_sinks(self) -> None:
        """Tell every subscriber the stream ended (None), so recorders finish their take."""
        with self._sinks_lock:
            sinks = list(self._sinks)
        for sink in sinks:
            sink.put(None)

    def _on_frame(self, frame: Frame, total_bytes: int) -> None:
        if frame.index <= self._last_index:
            raise ProtocolError(f"frame index {frame.index} after {self._last_index} (out of order)")
        now, frame.received = time.monotonic(), time.time()
        captured = self.clock.to_desktop(frame.timestamp)
        frame.latency_s = None if captured is None else now - captured
        s = self.stats
        if self._last_index >= 0:
            s.device_skipped += frame.index - self._last_index - 1
        self._last_index = frame.index
        s.frames += 1
        s.bytes = total_bytes
        s._arrivals.append((now, total_bytes))
        if frame.latency_s is not None:
            s._latencies.append(frame.latency_s)
        if len(s._arrivals) >= 2:
            (t0, b0), (t1, b1) = s._arrivals[0], s._arrivals[-1]
            if t1 > t0:
                s.fps = (len(s._arrivals) - 1) / (t1 - t0)
                s.bandwidth_mbps = (b1 - b0) * 8 / (t1 - t0) / 1e6
        with self._sinks_lock:
            sinks = list(self._sinks)
        for sink in sinks:
            sink.put(frame)
            if isinstance(sink, LatestFrame):
                s.preview_skipped = sink.skipped

    def _on_pong(self, h: dict[str, Any]) -> None:
        """One clock sample: our PING's ``t`` (desktop monotonic clock) and the device's ``t_reply``."""
        t0, t_dev, t1 = h.get("t"), h.get("t_reply"), time.monotonic()
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (t0, t_dev)):
            self.clock.add(float(t0), float(t_dev), t1)
            self.stats.clock_offset_s = self.clock.offset

    @staticmethod
    def _send_ping(ch: Channel) -> None:
        ch.send(Message(MsgType.PING, {"t": time.monotonic()}))

    def _ping_loop(self) -> None:
        ch = self._ch
        while ch is not None and not self._closed.wait(PING_INTERVAL_S):
            try:
                self._send_ping(ch)
            except OSError:
                return

    # ------------------------------------------------------------------ ending
    @property
    def streaming(self) -> bool:
        return not self._closed.is_set() and not self._stopped.is_set()

    def stop(self) -> dict[str, Any] | None:
        """Ask the device to stop; returns its report (frames sent, skipped) or None if it vanished."""
        if self._ch is None or self._closed.is_set() or self._stopped.is_set():
            return self.stopped_report
        self._drain_control()
        try:
            self._ch.send(Message(MsgType.STOP))
            self._await_control(MsgType.STOPPED)
        except (OSError, DeviceError):
            return None
        return self.stopped_report

    def close(self) -> None:
        """Say goodbye and close; idempotent, joins the threads."""
        if self._ch is None:
            return
        if not self._closed.is_set():
            self._closed.set()
            self._ch.send_last(Message(MsgType.BYE, {"reason": "desktop closed the connection"}))
        self._ch.close()
        for t in (self._reader, self._pinger):
            if t is not None and t is not threading.current_thread():
                t.join(timeout=5)
        self._ch = None

    def __enter__(self) -> "DeviceClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
