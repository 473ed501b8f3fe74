"""PIN pairing with SPAKE2 and the session keys derived from it.

The device shows a 6-digit PIN; the desktop user types it. SPAKE2 (a password-
authenticated key exchange) turns the PIN into a strong shared key, so a passive listener
learns neither the PIN nor the key, and an active attacker gets exactly one guess per
connection. Both sides then prove they hold the same key (HMAC key confirmation, client
first) before any frame flows; the device rate-limits wrong guesses (:class:`PinGuard`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from spake2 import SPAKE2_A, SPAKE2_B

ID_CLIENT = b"facestudio-desktop"
ID_DEVICE = b"facestudio-device"
PIN_DIGITS = 6


class PairingError(Exception):
    """Pairing failed: wrong PIN, rate limited, or the peer broke the exchange."""


def new_pin() -> str:
    return f"{secrets.randbelow(10 ** PIN_DIGITS):0{PIN_DIGITS}d}"


def check_pin(pin: str) -> str:
    pin = pin.strip()
    if len(pin) != PIN_DIGITS or not pin.isdigit():
        raise PairingError(f"a PIN is {PIN_DIGITS} digits, got {pin!r}")
    return pin


@dataclass(frozen=True)
class SessionKeys:
    client_to_device: bytes
    device_to_client: bytes
    client_confirm: bytes
    device_confirm: bytes


def spake2_start(pin: str, role: str) -> tuple[object, bytes]:
    """Begin SPAKE2 as 'client' (A) or 'device' (B); returns the state and the message to send."""
    cls = SPAKE2_A if role == "client" else SPAKE2_B
    state = cls(check_pin(pin).encode(), idA=ID_CLIENT, idB=ID_DEVICE)
    return state, state.start()


def spake2_finish(state: object, peer_msg: bytes, transcript: bytes) -> SessionKeys:
    """Finish SPAKE2 and derive per-direction AEAD keys and confirmation MACs.

    ``transcript`` is the hash of everything exchanged so far (hellos and PAKE messages), so a
    man in the middle who altered the version negotiation is caught by key confirmation.
    """
    try:
        key = state.finish(peer_msg)  # type: ignore[attr-defined]
    except Exception as exc:  # spake2 raises several types on a malformed element
        raise PairingError(f"invalid pairing message from peer: {exc}") from None

    def derive(label: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=transcript,
                    info=b"facestudio v1 " + label).derive(key)

    c2d, d2c, ck, dk = (derive(x) for x in (b"c2d", b"d2c", b"confirm client", b"confirm device"))
    return SessionKeys(c2d, d2c, hmac.new(ck, transcript, hashlib.sha256).digest(),
                       hmac.new(dk, transcript, hashlib.sha256).digest())


def transcript_hash(*parts: bytes) -> bytes:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(4, "big") + part)
    return h.digest()


class PinGuard:
    """Device-side brute-force protection, shared by all connections.

    Three free attempts, then each further failure locks pairing for 2, 4, 8 ... (max 300) s;
    after ``rotate_after`` consecutive failures a random PIN is replaced by a new one (shown to
    the user), so guesses across lock-outs gain nothing.
    """

    def __init__(self, pin: str | None = None, free_attempts: int = 3, rotate_after: int = 10,
                 clock=time.monotonic):
        self._fixed = pin is not None
        self.pin = check_pin(pin) if pin is not None else new_pin()
        self.free_attempts = free_attempts
        self.rotate_after = rotate_after
        self.failures = 0
        self._locked_until = 0.0
        self._clock = clock
        self._lock = threading.Lock()

    def retry_after(self) -> float:
        """Seconds until the next attempt is allowed (0 = now)."""
        with self._lock:
            return max(0.0, self._locked_until - self._clock())

    def failed(self) -> None:
        with self._lock:
            self.failures += 1
            if self.failures >= self.free_attempts:
                delay = min(300.0, 2.0 ** (self.failures - self.free_attempts + 1))
                self._locked_until = self._clock() + delay
            if not self._fixed and self.failures % self.rotate_after == 0:
                self.pin = new_pin()

    def succeeded(self) -> None:
        with self._lock:
            self.failures = 0
            self._locked_until = 0.0
