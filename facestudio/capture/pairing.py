"""PIN pairing (capture protocol v2): RFC 9382 SPAKE2 on P-256, bound to the version negotiation.

The device shows a 6-digit PIN; the desktop user types it. SPAKE2 (:mod:`.spake2`) turns the PIN
into a strong shared key, so a passive listener learns neither the PIN nor the key, and an active
attacker gets exactly one guess per attempt. This module fixes what RFC 9382 leaves to the
application (docs/protocol.md section 4 is normative): the PIN-to-``w`` mapping, the identities,
the associated data (a hash of the exact HELLO and HELLO_REPLY bytes, so a man in the middle who
altered the version negotiation fails key confirmation) and the session keys. The device
rate-limits wrong guesses (:class:`PinGuard`).
"""

from __future__ import annotations

import hashlib
import math
import secrets
import threading
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from facestudio.capture.spake2 import ORDER, Spake2

ID_CLIENT = b"facestudio-desktop"     # SPAKE2 identity A (uses M)
ID_DEVICE = b"facestudio-device"      # SPAKE2 identity B (uses N)
PIN_DIGITS = 6
PAIRING_METHOD = "spake2-p256-pin6"


class PairingError(Exception):
    """Pairing failed: wrong PIN, rate limited, or the peer broke the exchange."""


class PairingLocked(PairingError):
    """The device refuses pairing attempts for ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


def new_pin() -> str:
    return f"{secrets.randbelow(10 ** PIN_DIGITS):0{PIN_DIGITS}d}"


def check_pin(pin: str) -> str:
    pin = pin.strip()
    if len(pin) != PIN_DIGITS or not pin.isdigit() or not pin.isascii():
        raise PairingError(f"a PIN is {PIN_DIGITS} digits, got {pin!r}")
    return pin


def _hkdf(ikm: bytes, salt: bytes | None, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def pin_to_w(pin: str) -> int:
    """w = HKDF-SHA256(salt = none, IKM = the 6 ASCII digits, info "facestudio v2 w", 40 bytes) mod n.

    40 bytes = 320 bits, so reducing mod the 256-bit order leaves a bias below 2^-64 (RFC 9382
    section 3.2). No memory-hard function: w is never stored, and SPAKE2 already stops offline
    guessing from the wire; the PIN is online-guessable only, which :class:`PinGuard` limits.
    """
    okm = _hkdf(check_pin(pin).encode("ascii"), None, b"facestudio v2 w", 40)
    return int.from_bytes(okm, "big") % ORDER


def hello_hash(hello: bytes, hello_reply: bytes) -> bytes:
    """SHA-256(u32 len | HELLO | u32 len | HELLO_REPLY), over the exact message bytes on the wire."""
    h = hashlib.sha256()
    for part in (hello, hello_reply):
        h.update(len(part).to_bytes(4, "big") + part)
    return h.digest()


@dataclass(frozen=True)
class SessionKeys:
    client_to_device: bytes
    device_to_client: bytes
    client_confirm: bytes        # cA: the desktop's CONFIRM blob
    device_confirm: bytes        # cB: the device's CONFIRM blob


class Pairing:
    """One side's exchange: its PAIR blob now, the session keys once the peer's blob arrived.

    ``role`` is "client" (the desktop, SPAKE2 side A) or "device" (side B). ``scalar`` fixes the
    random x or y, for published test vectors only.
    """

    def __init__(self, pin: str, role: str, scalar: int | None = None):
        if role not in ("client", "device"):
            raise ValueError(f"role must be 'client' or 'device', not {role!r}")
        self._spake = Spake2("A" if role == "client" else "B", pin_to_w(pin), ID_CLIENT, ID_DEVICE, scalar)
        self.message = self._spake.message

    def finish(self, peer_message: bytes, hello: bytes, hello_reply: bytes) -> SessionKeys:
        """Raises :class:`~facestudio.capture.spake2.InvalidElement` for a message that is no valid share."""
        aad = hello_hash(hello, hello_reply)
        result = self._spake.finish(peer_message, aad=aad)
        c2d, d2c = (_hkdf(result.ke, aad, b"facestudio v2 " + label, 32) for label in (b"c2d", b"d2c"))
        return SessionKeys(c2d, d2c, result.confirm_a, result.confirm_b)


def _round_up(seconds: float) -> float:
    return math.ceil(max(0.0, seconds) * 10) / 10


class PinGuard:
    """Device-side brute-force protection, shared by all connections (docs/protocol.md 4.5).

    One attempt at a time (:meth:`begin` ... :meth:`end`), so parallel connections cannot guess in
    parallel. Failures 1 and 2 cost nothing; failure f >= 3 locks pairing for min(300, 2^(f-2)) s
    (2, 4, 8 ...); a random PIN is replaced after every 10th consecutive failure, so guesses across
    lock-outs gain nothing; a success resets the count.
    """

    FREE_FAILURES = 2
    MAX_LOCK_S = 300.0
    ROTATE_AFTER = 10
    BUSY_RETRY_S = 1.0

    def __init__(self, pin: str | None = None, clock=time.monotonic):
        self._fixed = pin is not None
        self.pin = check_pin(pin) if pin is not None else new_pin()
        self.failures = 0
        self._locked_until = 0.0
        self._attempt = False
        self._clock = clock
        self._lock = threading.Lock()

    def retry_after(self) -> float:
        """Seconds until the next attempt is allowed (0 = now), rounded up to 0.1 s."""
        with self._lock:
            return _round_up(self._locked_until - self._clock())

    def begin(self) -> None:
        """Start an attempt (end it with :meth:`end`); raises PairingLocked when none is allowed now."""
        with self._lock:
            wait = self._locked_until - self._clock()
            if wait > 0:
                raise PairingLocked(f"too many wrong PINs; try again in {math.ceil(wait)} s", _round_up(wait))
            if self._attempt:
                raise PairingLocked("another desktop is pairing right now; try again in a moment",
                                    self.BUSY_RETRY_S)
            self._attempt = True

    def end(self, paired: bool | None) -> float:
        """End the attempt: True = paired, False = a failed guess, None = abandoned (no guess made).

        Returns the lock now in force, in seconds (what ERROR wrong_pin reports as retry_after).
        """
        with self._lock:
            self._attempt = False
            if paired:
                self.failures, self._locked_until = 0, 0.0
            elif paired is False:
                self.failures += 1
                if self.failures > self.FREE_FAILURES:
                    delay = min(self.MAX_LOCK_S, 2.0 ** (self.failures - self.FREE_FAILURES))
                    self._locked_until = self._clock() + delay
                if not self._fixed and self.failures % self.ROTATE_AFTER == 0:
                    self.pin = new_pin()
            return _round_up(self._locked_until - self._clock())
