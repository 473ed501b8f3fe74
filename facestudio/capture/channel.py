"""Records on a TCP stream, plain during the handshake and AEAD-encrypted after pairing.

A record is ``u32 length (big-endian) | payload``. After pairing the payload is
ChaCha20-Poly1305 ciphertext + tag under a per-direction key; the nonce is the record's
sequence number in that direction (4 zero bytes + u64 big-endian, from 0), never sent. A
replayed, reordered, dropped or altered record therefore fails authentication and closes the
connection.

Reads are bounded twice: the declared length is checked against the limit before a buffer
is allocated, and the whole record must arrive before a deadline (no slow-loris trickle
can hold a connection open forever).
"""

from __future__ import annotations

import socket
import struct
import threading
import time

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from facestudio.capture.protocol import (MAX_HANDSHAKE_RECORD_BYTES, MAX_RECORD_BYTES, Message,
                                         ProtocolError, decode_message, encode_message)

_LEN = struct.Struct(">I")
TAG_BYTES = 16


class PeerClosed(ConnectionError):
    """The peer closed the connection (cleanly or not) between or inside records."""


class RecordTimeout(TimeoutError):
    """Nothing (or only part of a record) arrived within the allowed time."""


class Channel:
    """Message I/O over one connected socket; thread-safe for one reader plus many writers."""

    def __init__(self, sock: socket.socket, record_timeout: float = 10.0):
        self.sock = sock
        self.record_timeout = record_timeout
        self.max_record = MAX_HANDSHAKE_RECORD_BYTES
        self._send_lock = threading.Lock()
        self._send_aead: ChaCha20Poly1305 | None = None
        self._recv_aead: ChaCha20Poly1305 | None = None
        self._send_seq = 0
        self._recv_seq = 0
        self._ended = False
        self.bytes_sent = 0
        self.bytes_received = 0

    @property
    def encrypted(self) -> bool:
        return self._send_aead is not None

    def enable_encryption(self, send_key: bytes, recv_key: bytes) -> None:
        """Switch to AEAD records (and to the full record size limit) from the next record on."""
        self._send_aead, self._recv_aead = ChaCha20Poly1305(send_key), ChaCha20Poly1305(recv_key)
        self.max_record = MAX_RECORD_BYTES

    def allow_large_plain_records(self) -> None:
        """Benchmarks only: measure the link without encryption."""
        self.max_record = MAX_RECORD_BYTES

    # ------------------------------------------------------------------ sending
    def send(self, msg: Message) -> bytes:
        """Send one message; returns its bytes as encoded (before encryption), for transcripts."""
        with self._send_lock:
            if self._ended:
                raise PeerClosed("this side already ended the connection")
            return self._send_locked(msg)

    def _send_locked(self, msg: Message) -> bytes:
        message = encode_message(msg)
        record = seal(message, self._send_aead, self._send_seq)
        if self._send_aead is not None:
            self._send_seq += 1
        self.sock.sendall(record)
        self.bytes_sent += len(record)
        return message

    def send_last(self, msg: Message) -> None:
        """Send ``msg`` (an ERROR or BYE) as the last message: later sends fail. Best effort, since
        the connection may already be gone; a thread still streaming stops at its next send."""
        with self._send_lock:
            if self._ended:
                return
            try:
                self._send_locked(msg)
            except OSError:
                pass
            self._ended = True

    # ------------------------------------------------------------------ receiving
    def recv(self, timeout: float | None = None, deadline: float | None = None) -> Message:
        """The next message. ``timeout`` bounds the wait for its first byte (default: record_timeout);
        ``deadline`` (time.monotonic()) is a hard end for the whole record, e.g. the handshake's."""
        first_wait = self.record_timeout if timeout is None else timeout
        if deadline is not None:
            first_wait = min(first_wait, deadline - time.monotonic())
        head = self._read_exact(_LEN.size, first_wait, waiting_for_start=True)
        (length,) = _LEN.unpack(head)
        if length > self.max_record:
            raise ProtocolError(f"declared record length {length} exceeds the limit {self.max_record}")
        rest = self.record_timeout if deadline is None else min(self.record_timeout, deadline - time.monotonic())
        payload = self._read_exact(length, rest)
        self.bytes_received += length + _LEN.size
        if self._recv_aead is not None:
            if length < TAG_BYTES:
                raise ProtocolError("encrypted record shorter than its tag")
            try:
                payload = self._recv_aead.decrypt(_nonce(self._recv_seq), payload, None)
            except InvalidTag:
                raise ProtocolError("record failed authentication (tampered, replayed or "
                                    "out of order)") from None
            self._recv_seq += 1
        return decode_message(payload)

    def _read_exact(self, n: int, deadline_s: float, waiting_for_start: bool = False) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        deadline = time.monotonic() + deadline_s
        while got < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RecordTimeout("no data within %.1f s" % max(deadline_s, 0.0) if got == 0 and waiting_for_start
                                    else f"record incomplete after {deadline_s:.1f} s ({got}/{n} bytes)")
            self.sock.settimeout(remaining)
            try:
                k = self.sock.recv_into(view[got:], n - got)
            except socket.timeout:
                continue
            except OSError as exc:
                raise PeerClosed(f"connection lost: {exc}") from None
            if k == 0:
                raise PeerClosed("peer closed the connection" if got == 0 and waiting_for_start
                                 else f"peer closed the connection inside a record ({got}/{n} bytes)")
            got += k
        return bytes(buf)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def seal(message: bytes, aead: ChaCha20Poly1305 | None = None, counter: int = 0) -> bytes:
    """One record: u32 length | payload, the payload encrypted with nonce(counter) when ``aead``."""
    payload = message if aead is None else aead.encrypt(_nonce(counter), message, None)
    if len(payload) > MAX_RECORD_BYTES:
        raise ValueError(f"record of {len(payload)} bytes exceeds {MAX_RECORD_BYTES}")
    return _LEN.pack(len(payload)) + payload


def _nonce(seq: int) -> bytes:
    return b"\x00\x00\x00\x00" + seq.to_bytes(8, "big")
