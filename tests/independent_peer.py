"""A second implementation of capture protocol v2, both roles, written from docs/protocol.md alone.

It imports nothing from facestudio (tests/test_interop.py checks), and differs from the
reference wherever the spec allows: its own P-256 arithmetic (affine, pure Python), SPAKE2 and
HKDF written out from RFC 9382 and RFC 5869, JSON with spaces and sorted keys, "blobs" always
written (also when empty), optional fields omitted rather than null, and a device clock that is
monotonic with a large offset. Only the AEAD, hashes and HMAC come from libraries
(`cryptography`, `hashlib`, `hmac`), as an iOS app would take them from CryptoKit.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
import socket
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field

import cv2
import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

# ----------------------------------------------------------------------------- P-256 (SEC 2)

FIELD = 2 ** 256 - 2 ** 224 + 2 ** 192 + 2 ** 96 - 1
CURVE_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
GENERATOR = (0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
             0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5)


def _on_curve(x: int, y: int) -> bool:
    return (y * y - (x * x * x - 3 * x + CURVE_B)) % FIELD == 0


def point_add(p, q):
    """Affine addition; points are (x, y) tuples, None is the point at infinity."""
    if p is None:
        return q
    if q is None:
        return p
    (x1, y1), (x2, y2) = p, q
    if x1 == x2:
        if (y1 + y2) % FIELD == 0:
            return None
        slope = (3 * x1 * x1 - 3) * pow(2 * y1, -1, FIELD) % FIELD
    else:
        slope = (y2 - y1) * pow(x2 - x1, -1, FIELD) % FIELD
    x3 = (slope * slope - x1 - x2) % FIELD
    return x3, (slope * (x1 - x3) - y1) % FIELD


def point_mul(k: int, p):
    result, addend = None, p
    while k:
        if k & 1:
            result = point_add(result, addend)
        addend = point_add(addend, addend)
        k >>= 1
    return result


def point_neg(p):
    return None if p is None else (p[0], (-p[1]) % FIELD)


def sec1_uncompressed(p) -> bytes:
    return b"\x04" + p[0].to_bytes(32, "big") + p[1].to_bytes(32, "big")


def sec1_parse(data: bytes):
    """Compressed (33 bytes, the spec's M and N) or uncompressed (65 bytes, the shares)."""
    if len(data) == 33 and data[0] in (2, 3):
        x = int.from_bytes(data[1:], "big")
        y = pow((x ** 3 - 3 * x + CURVE_B) % FIELD, (FIELD + 1) // 4, FIELD)   # FIELD = 3 mod 4
        if y % 2 != data[0] % 2:
            y = FIELD - y
    elif len(data) == 65 and data[0] == 4:
        x, y = int.from_bytes(data[1:33], "big"), int.from_bytes(data[33:], "big")
    else:
        raise ValueError("not a SEC1 point encoding")
    if x >= FIELD or y >= FIELD or not _on_curve(x, y):
        raise ValueError("point not on P-256")
    return x, y


SPAKE_M = sec1_parse(bytes.fromhex("02886e2f97ace46e55ba9dd7242579f2993b64e16ef3dcab95afd497333d8fa12f"))
SPAKE_N = sec1_parse(bytes.fromhex("03d8bbd6c639c62937b04d997f38c3770719c629d7014d49a24b4f98baa1292b49"))
IDENTITY_A, IDENTITY_B = b"facestudio-desktop", b"facestudio-device"

# ----------------------------------------------------------------------------- HKDF, SPAKE2


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 extract-then-expand; an empty salt means 32 zero bytes."""
    prk = hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out, counter = out + block, counter + 1
    return out[:length]


def pin_w(pin: str) -> int:
    return int.from_bytes(hkdf_sha256(pin.encode("ascii"), b"", b"facestudio v2 w", 40), "big") % ORDER


def spake_share(side: str, w: int, scalar: int) -> bytes:
    blind = SPAKE_M if side == "A" else SPAKE_N
    return sec1_uncompressed(point_add(point_mul(scalar, GENERATOR), point_mul(w, blind)))


def _le8(b: bytes) -> bytes:
    return struct.pack("<Q", len(b)) + b


def spake_keys(side: str, w: int, scalar: int, mine: bytes, theirs: bytes, aad: bytes) -> dict[str, bytes]:
    """K, TT and RFC 9382's key schedule. Raises ValueError for an invalid share or K = identity."""
    peer = sec1_parse(theirs)
    if len(theirs) != 65:
        raise ValueError("shares are uncompressed points")
    unblind = SPAKE_N if side == "A" else SPAKE_M
    k = point_mul(scalar, point_add(peer, point_neg(point_mul(w, unblind))))
    if k is None:
        raise ValueError("K is the identity")
    p_a, p_b = (mine, theirs) if side == "A" else (theirs, mine)
    tt = b"".join(map(_le8, [IDENTITY_A, IDENTITY_B, p_a, p_b, sec1_uncompressed(k), w.to_bytes(32, "big")]))
    digest = hashlib.sha256(tt).digest()
    kc = hkdf_sha256(digest[16:], b"", b"ConfirmationKeys" + aad, 32)
    return {"K": sec1_uncompressed(k), "TT": tt, "Ke": digest[:16], "Ka": digest[16:], "KcA": kc[:16],
            "KcB": kc[16:], "cA": hmac.new(kc[:16], tt, hashlib.sha256).digest(),
            "cB": hmac.new(kc[16:], tt, hashlib.sha256).digest()}


def tenths_up(seconds: float) -> float:
    return math.ceil(max(seconds, 0.0) * 10) / 10


def hello_digest(hello: bytes, reply: bytes) -> bytes:
    return hashlib.sha256(struct.pack(">I", len(hello)) + hello + struct.pack(">I", len(reply)) + reply).digest()


def traffic_keys(ke: bytes, h: bytes) -> tuple[bytes, bytes]:
    """(desktop -> device, device -> desktop)."""
    return hkdf_sha256(ke, h, b"facestudio v2 c2d", 32), hkdf_sha256(ke, h, b"facestudio v2 d2c", 32)


# ----------------------------------------------------------------------------- messages, records

HELLO, HELLO_REPLY, PAIR, CONFIRM, ERROR = 1, 2, 3, 4, 5
START, STARTED, STOP, STOPPED, PING, PONG, FRAME, TRUTH, BYE = 10, 11, 12, 13, 14, 15, 20, 21, 22


def build(mtype: int, header: dict, blobs: list[bytes] | tuple = ()) -> bytes:
    head = json.dumps({**header, "blobs": [len(b) for b in blobs]}, sort_keys=True,
                      separators=(", ", ": ")).encode()
    return bytes([mtype]) + struct.pack(">I", len(head)) + head + b"".join(blobs)


@dataclass
class Msg:
    type: int
    header: dict
    blobs: list[bytes]
    raw: bytes


def parse(raw: bytes) -> Msg:
    (head_len,) = struct.unpack(">I", raw[1:5])
    header = json.loads(raw[5:5 + head_len])
    sizes, pos, blobs = header.get("blobs", []), 5 + head_len, []
    for n in sizes:
        blobs.append(raw[pos:pos + n])
        pos += n
    if pos != len(raw):
        raise ValueError("blob sizes do not fill the message")
    return Msg(raw[0], header, blobs, raw)


class Closed(Exception):
    """The peer closed the TCP connection."""


class Refused(Exception):
    """The peer sent ERROR."""

    def __init__(self, header: dict):
        super().__init__(f"{header.get('code')}: {header.get('message')}")
        self.code, self.retry_after = header.get("code"), header.get("retry_after")


class Link:
    """Records over one socket; plain until :meth:`encrypt`, then ChaCha20-Poly1305 with counters."""

    def __init__(self, sock: socket.socket, timeout: float = 10.0):
        self.sock, self.timeout = sock, timeout
        self.tx: ChaCha20Poly1305 | None = None
        self.rx: ChaCha20Poly1305 | None = None
        self.tx_n = self.rx_n = 0
        self.lock = threading.Lock()

    def encrypt(self, tx_key: bytes, rx_key: bytes) -> None:
        self.tx, self.rx = ChaCha20Poly1305(tx_key), ChaCha20Poly1305(rx_key)

    @staticmethod
    def nonce(n: int) -> bytes:
        return b"\0\0\0\0" + struct.pack(">Q", n)

    def send(self, mtype: int, header: dict, blobs: list[bytes] | tuple = ()) -> bytes:
        message = build(mtype, header, blobs)
        with self.lock:
            payload = message
            if self.tx is not None:
                payload = self.tx.encrypt(self.nonce(self.tx_n), message, None)
                self.tx_n += 1
            self.sock.sendall(struct.pack(">I", len(payload)) + payload)
        return message

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise Closed("connection closed")
            data += chunk
        return data

    def recv(self, timeout: float | None = None) -> Msg:
        self.sock.settimeout(timeout or self.timeout)
        (length,) = struct.unpack(">I", self._read(4))
        if length > (4096 if self.rx is None else 32 * 1024 * 1024):
            raise ValueError(f"record of {length} bytes is over the limit")
        payload = self._read(length)
        if self.rx is not None:
            try:
                payload = self.rx.decrypt(self.nonce(self.rx_n), payload, None)
            except InvalidTag:
                raise ValueError("record failed authentication") from None
            self.rx_n += 1
        msg = parse(payload)
        if msg.type == ERROR:
            raise Refused(msg.header)
        return msg

    def error(self, code: str, text: str, retry_after: float | None = None) -> None:
        """ERROR is the last message: send it and close."""
        header = {"code": code, "message": text}
        if retry_after is not None:
            header["retry_after"] = retry_after
        try:
            self.send(ERROR, header)
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


# ----------------------------------------------------------------------------- desktop role

class IndependentDesktop:
    """Connect, pair, stream; estimates the device clock as section 5.2 describes."""

    def __init__(self, host: str, port: int, pin: str, timeout: float = 10.0):
        self.host, self.port, self.pin, self.timeout = host, port, pin, timeout
        self.link: Link | None = None
        self.device: dict = {}
        self.samples: list[tuple[float, float]] = []       # (rtt, offset)
        self.last_ping = 0.0

    def pair(self) -> dict:
        self.link = link = Link(socket.create_connection((self.host, self.port), timeout=self.timeout), self.timeout)
        hello = link.send(HELLO, {"versions": [2]})                         # "client" omitted
        reply = link.recv()
        assert reply.type == HELLO_REPLY and reply.header["version"] == 2
        assert reply.header["pairing"] == "spake2-p256-pin6"
        self.device = reply.header["device"]
        w, x = pin_w(self.pin), 1 + secrets.randbelow(ORDER - 1)
        share = spake_share("A", w, x)
        link.send(PAIR, {}, [share])
        theirs = link.recv()
        assert theirs.type == PAIR and len(theirs.blobs) == 1
        h = hello_digest(hello, reply.raw)
        keys = spake_keys("A", w, x, share, theirs.blobs[0], h)
        link.send(CONFIRM, {}, [keys["cA"]])
        confirm = link.recv()
        if confirm.type != CONFIRM or not hmac.compare_digest(confirm.blobs[0], keys["cB"]):
            link.error("protocol", "key confirmation failed")
            raise AssertionError("the device failed key confirmation")
        c2d, d2c = traffic_keys(keys["Ke"], h)
        link.encrypt(c2d, d2c)
        self.ping()
        return self.device

    def ping(self) -> None:
        self.last_ping = time.monotonic()
        assert self.link is not None
        self.link.send(PING, {"t": self.last_ping})

    @property
    def offset(self) -> float | None:
        recent = self.samples[-8:]
        return min(recent)[1] if recent else None

    def next_message(self) -> tuple[Msg, float]:
        """The next message other than PING/PONG (those are handled), and when it arrived."""
        assert self.link is not None
        while True:
            if time.monotonic() - self.last_ping >= 2.0:
                self.ping()
            msg = self.link.recv()
            arrived = time.monotonic()
            if msg.type == PONG:
                rtt = arrived - msg.header["t"]
                if 0 <= rtt <= 10:
                    self.samples.append((rtt, msg.header["t_reply"] - (msg.header["t"] + arrived) / 2))
            elif msg.type == PING:
                self.link.send(PONG, {"t_reply": time.monotonic(), "t": msg.header["t"]})
            else:
                return msg, arrived

    def start(self, **settings) -> dict:
        assert self.link is not None
        self.link.send(START, settings)
        msg, _ = self.next_message()
        assert msg.type == STARTED, msg.type
        return msg.header

    def frames(self, count: int) -> list[dict]:
        """``count`` frames as dicts: the header, blobs, arrival (monotonic and wall) and latency."""
        out = []
        while len(out) < count:
            msg, arrived = self.next_message()
            if msg.type == TRUTH:
                continue
            assert msg.type == FRAME, msg.type
            offset = self.offset
            out.append({"header": msg.header, "blobs": msg.blobs, "wall": time.time(),
                        "latency": None if offset is None else arrived - (msg.header["timestamp"] - offset)})
        return out

    def stop(self) -> dict:
        assert self.link is not None
        self.link.send(STOP, {})
        while True:
            msg, _ = self.next_message()
            if msg.type == STOPPED:
                return msg.header
            assert msg.type == FRAME

    def close(self) -> None:
        if self.link is not None:
            try:
                self.link.send(BYE, {"reason": "test over"})
            except OSError:
                pass
            self.link.close()


# ----------------------------------------------------------------------------- device role

@dataclass
class SentFrame:
    jpeg: bytes
    depth: np.ndarray | None
    captured_wall: float          # the truth: when the frame was (claimed to be) captured


@dataclass
class IndependentDevice:
    """A device on 127.0.0.1 that streams synthetic 64x48 frames, with its own rate limiting."""

    pin: str
    clock_offset: float = 7.5e5            # device clock = monotonic + this: any epoch is allowed
    pipeline_delay: float = 0.030          # frames are stamped this long before they are sent
    sent: dict[int, SentFrame] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.failures, self.locked_until, self.attempt = 0, 0.0, False
        self.guard = threading.Lock()
        self.links: list[Link] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def clock(self) -> float:
        return time.monotonic() + self.clock_offset

    def __enter__(self) -> "IndependentDevice":
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        self.listener.close()
        for link in self.links:           # their threads end at once instead of at a timeout
            link.close()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                sock, _ = self.listener.accept()
            except socket.timeout:
                continue
            self.links.append(Link(sock))
            threading.Thread(target=self._connection, args=(self.links[-1],), daemon=True).start()

    def _connection(self, link: Link) -> None:
        try:
            if self._pair(link):
                self._session(link)
        except (Closed, Refused, OSError):
            link.close()
        except Exception as exc:        # a malformed message: whatever broke, it is the peer's fault
            link.error("protocol", f"{type(exc).__name__}: {exc}")

    def _pair(self, link: Link) -> bool:
        hello = link.recv()
        if 2 not in hello.header.get("versions", []):
            link.error("version", "this device speaks version 2 only")
            return False
        reply = link.send(HELLO_REPLY, {"pairing": "spake2-p256-pin6", "version": 2, "device": {
            "app": "independent 1", "id": "0f0f0f", "model": "Test Rig", "name": "Independent", "sensor": "truedepth"}})
        pair = link.recv()
        if pair.type != PAIR or len(pair.blobs) != 1:
            raise ValueError("expected PAIR with one blob")
        with self.guard:
            wait = self.locked_until - time.monotonic()
            busy = self.attempt
            if wait <= 0 and not busy:
                self.attempt = True
        if wait > 0 or busy:
            link.error("rate_limited", "locked" if wait > 0 else "another attempt is running",
                       tenths_up(wait) if wait > 0 else 1)
            return False
        guessed = None
        try:
            w, y = pin_w(self.pin), 1 + secrets.randbelow(ORDER - 1)
            share = spake_share("B", w, y)
            h = hello_digest(hello.raw, reply)
            try:
                keys = spake_keys("B", w, y, share, pair.blobs[0], h)
            except ValueError:
                guessed = False
                raise
            link.send(PAIR, {}, [share])
            confirm = link.recv()
            guessed = confirm.type == CONFIRM and len(confirm.blobs) == 1 and \
                hmac.compare_digest(confirm.blobs[0], keys["cA"])
        finally:
            with self.guard:
                self.attempt = False
                if guessed:
                    self.failures, self.locked_until = 0, 0.0
                elif guessed is False:
                    self.failures += 1
                    if self.failures >= 3:
                        self.locked_until = time.monotonic() + min(300.0, 2.0 ** (self.failures - 2))
                lock = max(0.0, self.locked_until - time.monotonic())
        if not guessed:
            link.error("wrong_pin", "wrong PIN", tenths_up(lock))
            return False
        link.send(CONFIRM, {}, [keys["cB"]])
        c2d, d2c = traffic_keys(keys["Ke"], h)
        link.encrypt(d2c, c2d)
        return True

    def _session(self, link: Link) -> None:
        streaming: threading.Event | None = None
        streamer: threading.Thread | None = None
        counts = {"sent": 0, "skipped": 0}
        while True:
            msg = link.recv(timeout=15)
            if msg.type == PING:
                link.send(PONG, {"t": msg.header["t"], "t_reply": self.clock()})
            elif msg.type == START:
                fps = min(float(msg.header.get("fps", 30)), 60.0)
                every = int(msg.header.get("depth_every", 1))
                link.send(STARTED, {"fps": fps, "color_width": 64, "color_height": 48, "depth_every": every})
                streaming = threading.Event()
                streamer = threading.Thread(target=self._stream, args=(link, fps, every, streaming, counts),
                                            daemon=True)
                streamer.start()
            elif msg.type == STOP and streaming is not None and streamer is not None:
                streaming.set()
                streamer.join(timeout=5)
                link.send(STOPPED, {"frames_sent": counts["sent"], "skipped": counts["skipped"]})
                streaming = streamer = None
            elif msg.type == BYE:
                if streaming is not None:
                    streaming.set()
                link.close()
                return
            elif msg.type != PONG:
                raise ValueError(f"unexpected message type {msg.type}")

    def _stream(self, link: Link, fps: float, every: int, done: threading.Event, counts: dict) -> None:
        t0, index = time.monotonic(), 0
        while not done.is_set():
            due = t0 + index / fps
            if time.monotonic() < due:
                done.wait(due - time.monotonic())
                continue
            late = int((time.monotonic() - due) * fps)
            counts["skipped"] += late
            index += late
            try:
                link.send(FRAME, *self._frame(index, with_depth=index % every == 0))
            except OSError:
                return
            counts["sent"] += 1
            index += 1

    def _frame(self, index: int, with_depth: bool) -> tuple[dict, list[bytes]]:
        img = np.zeros((48, 64, 3), np.uint8)
        img[:, :, 1] = (index * 7) % 256
        img[10:30, 20:40] = (200, 100, 50)
        jpeg = cv2.imencode(".jpg", img)[1].tobytes()
        intrinsics = {"cx": 31.5, "cy": 23.5, "fx": 60.0, "fy": 60.0, "height": 48, "width": 64}
        header = {"timestamp": self.clock() - self.pipeline_delay, "index": index,
                  "color": {"blob": 0, "codec": "jpeg", "intrinsics": intrinsics},
                  "head_pose": [1, 0, 0, 0.01, 0, 1, 0, -0.02, 0, 0, 1, -0.4, 0, 0, 0, 1],
                  "blendshapes": [round((i * 0.019 + index * 0.001) % 1, 4) for i in range(52)]}
        blobs, depth = [jpeg], None
        if with_depth:
            depth = np.full((48, 64), 0.4 + index * 1e-3, np.float16)
            blobs.append(zlib.compress(depth.astype("<f2").tobytes()))
            header["depth"] = {"blob": 1, "codec": "zlib", "dtype": "float16", "intrinsics": intrinsics}
        self.sent[index] = SentFrame(jpeg, depth, time.time() - self.pipeline_delay)
        return header, blobs
