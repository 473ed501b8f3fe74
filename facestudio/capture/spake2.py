"""SPAKE2 exactly as RFC 9382 specifies it, ciphersuite SPAKE2-P256-SHA256-HKDF-HMAC.

Why this PAKE: it is a published standard over NIST P-256 with fixed constants M and N and
published test vectors (RFC 9382 Appendix B, checked in tests/test_spake2.py), so an iOS app can
implement it from the RFC and docs/protocol.md alone and prove it matches. Point arithmetic comes
from pycryptodome (constant-time C); hashing, HKDF and HMAC from hashlib/cryptography.

What the RFC leaves to the application - how a password becomes ``w``, the identities and the
associated data - is decided in :mod:`facestudio.capture.pairing`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from Crypto.PublicKey import ECC
from Crypto.PublicKey.ECC import EccPoint
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551   # n of P-256
FIELD_PRIME = 2 ** 256 - 2 ** 224 + 2 ** 192 + 2 ** 96 - 1
ELEMENT_BYTES = 65          # SEC1 uncompressed point: 04 | x | y
SCALAR_BYTES = 32
CONFIRM_BYTES = 32          # HMAC-SHA256 tag

# RFC 9382 section 6, P-256 (compressed SEC1 encodings).
M_COMPRESSED = bytes.fromhex("02886e2f97ace46e55ba9dd7242579f2993b64e16ef3dcab95afd497333d8fa12f")
N_COMPRESSED = bytes.fromhex("03d8bbd6c639c62937b04d997f38c3770719c629d7014d49a24b4f98baa1292b49")

_G = ECC.construct(curve="P-256", d=1).pointQ     # 1 * G: the generator
_M = ECC.import_key(M_COMPRESSED, curve_name="P-256").pointQ
_N = ECC.import_key(N_COMPRESSED, curve_name="P-256").pointQ


class InvalidElement(ValueError):
    """The peer's message is not a valid P-256 point, or makes the shared point the identity."""


def encode_point(point: EccPoint) -> bytes:
    return b"\x04" + int(point.x).to_bytes(32, "big") + int(point.y).to_bytes(32, "big")


def decode_point(data: bytes) -> EccPoint:
    """An uncompressed SEC1 point, checked to lie on the curve (P-256's cofactor is 1, so that
    is group membership). The identity has no SEC1 encoding; pycryptodome would read (0, 0) as
    it, so that is refused explicitly, as are coordinates that are not reduced mod p."""
    if len(data) != ELEMENT_BYTES or data[0] != 4:
        raise InvalidElement(f"expected a {ELEMENT_BYTES}-byte uncompressed P-256 point (04 | x | y)")
    x, y = int.from_bytes(data[1:33], "big"), int.from_bytes(data[33:], "big")
    if x >= FIELD_PRIME or y >= FIELD_PRIME:
        raise InvalidElement("the element's coordinates are not below the field prime")
    try:
        point = EccPoint(x, y, "P-256")
    except ValueError:
        raise InvalidElement("the element is not a point on P-256") from None
    if point.is_point_at_infinity():
        raise InvalidElement("the element is the identity")
    return point


def _len8(data: bytes) -> bytes:
    """RFC 9382's transcript framing: 8-byte little-endian length, then the bytes."""
    return len(data).to_bytes(8, "little") + data


@dataclass(frozen=True)
class Spake2Result:
    """Everything RFC 9382 derives after both shares are known (section 3.3 and 4)."""

    transcript: bytes        # TT
    shared_point: bytes      # K, encoded
    ke: bytes                # the shared secret (16 bytes)
    ka: bytes
    kc_a: bytes
    kc_b: bytes
    confirm_a: bytes         # MAC(KcA, TT): what A sends
    confirm_b: bytes         # MAC(KcB, TT): what B sends


class Spake2:
    """One side of SPAKE2: role "A" (sends pA = x*G + w*M) or "B" (pB = y*G + w*N)."""

    def __init__(self, role: str, w: int, identity_a: bytes, identity_b: bytes, scalar: int | None = None):
        if role not in ("A", "B"):
            raise ValueError(f"role must be 'A' or 'B', not {role!r}")
        self.role, self.identity_a, self.identity_b = role, identity_a, identity_b
        self._w = w % ORDER
        # x (or y) uniform in [1, n-1]; a fixed scalar only for published test vectors.
        self._scalar = scalar if scalar is not None else 1 + secrets.randbelow(ORDER - 1)
        mine, theirs = (_M, _N) if role == "A" else (_N, _M)
        self._their_blind = theirs
        self.message = encode_point(_G * self._scalar + mine * self._w)

    def finish(self, peer_message: bytes, aad: bytes = b"") -> Spake2Result:
        """K = scalar * (peer - w * their constant), then TT, Ke | Ka, KcA | KcB and both MACs."""
        peer = decode_point(peer_message)
        k_point = (peer + (-(self._their_blind * self._w))) * self._scalar
        if k_point.is_point_at_infinity():
            raise InvalidElement("the shared point K is the identity")
        k = encode_point(k_point)
        p_a, p_b = (self.message, peer_message) if self.role == "A" else (peer_message, self.message)
        tt = b"".join(_len8(part) for part in (self.identity_a, self.identity_b, p_a, p_b, k,
                                               self._w.to_bytes(SCALAR_BYTES, "big")))
        digest = hashlib.sha256(tt).digest()
        ke, ka = digest[:16], digest[16:]
        kc = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                  info=b"ConfirmationKeys" + aad).derive(ka)
        kc_a, kc_b = kc[:16], kc[16:]
        return Spake2Result(tt, k, ke, ka, kc_a, kc_b, hmac.new(kc_a, tt, hashlib.sha256).digest(),
                            hmac.new(kc_b, tt, hashlib.sha256).digest())
