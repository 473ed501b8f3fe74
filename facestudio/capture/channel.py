"""Records on a TCP stream, plain during the handshake and AEAD-encrypted after pairing.

A record is ``u32 length (big-endian) | payload``. After pairing the payload is
ChaCha20-Poly1305 ciphertext + tag under a per-direction key; the nonce is the record's
sequence number (4 zero bytes + u64 big-endian), never sent. A replayed, reordered, dropped
or altered record therefore fails authentication and closes the connection.

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
    def send(self, msg: Message) -> None:
        payload = encode_message(msg)
        with self._send_lock:
            if self._send_aead is not None:
                payload = self._send_aead.encrypt(_nonce(self._send_seq), payload, None)
                self._send_seq += 1
            if len(payload) > MAX_RECORD_BYTES:
                raise ValueError(f"record of {len(payload)} bytes exceeds {MAX_RECORD_BYTES}")
            self.sock.sendall(_LEN.pack(len(payload)) + payload)
            self.bytes_sent += len(payload) + _LEN.size

    # ------------------------------------------------------------------ receiving
    def recv(self, timeout: float | None = None) -> Message:
        """The next message. ``timeout`` bounds the wait for its first byte (default: record_timeout)."""
        first_wait = self.record_timeout if timeout is None else timeout
        head = self._read_exact(_LEN.size, first_wait, waiting_for_start=True)
        (length,) = _LEN.unpack(head)
        if length > self.max_record:
            raise ProtocolError(f"declared record length {length} exceeds the limit {self.max_record}")
        payload = self._read_exact(length, self.record_timeout)
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
                raise RecordTimeout("no data within %.1f s" % deadline_s if got == 0 and waiting_for_start
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


def _nonce(seq: int) -> bytes:
    return b"\x00\x00\x00\x00" + seq.to_bytes(8, "big")
