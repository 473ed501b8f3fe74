"""SPAKE2 against RFC 9382 Appendix B (SPAKE2-P256-SHA256-HKDF-HMAC, A='server', B='client')."""

from __future__ import annotations

import pytest

from facestudio.capture.spake2 import InvalidElement, Spake2, decode_point, encode_point

# RFC 9382, Appendix B, first vector set. Every value below also follows from w, x and y by
# the RFC's formulas (pA = x*G + w*M, ...), so a mistyped constant cannot pass.
RFC = {k: bytes.fromhex(v) for k, v in {
    "w": "2ee57912099d31560b3a44b1184b9b4866e904c49d12ac5042c97dca461b1a5f",
    "x": "43dd0fd7215bdcb482879fca3220c6a968e66d70b1356cac18bb26c84a78d729",
    "pA": "04a56fa807caaa53a4d28dbb9853b9815c61a411118a6fe516a8798434751470f9010153ac33d0d5f2047ffdb1a3e42c9b4e6be662766e1eeb4116988ede5f912c",
    "y": "dcb60106f276b02606d8ef0a328c02e4b629f84f89786af5befb0bc75b6e66be",
    "pB": "0406557e482bd03097ad0cbaa5df82115460d951e3451962f1eaf4367a420676d09857ccbc522686c83d1852abfa8ed6e4a1155cf8f1543ceca528afb591a1e0b7",
    "K": "0412af7e89717850671913e6b469ace67bd90a4df8ce45c2af19010175e37eed69f75897996d539356e2fa6a406d528501f907e04d97515fbe83db277b715d3325",
    "Ke": "0e0672dc86f8e45565d338b0540abe69",
    "Ka": "15bdf72e2b35b5c9e5663168e960a91b",
    "KcA": "00c12546835755c86d8c0db7851ae86f",
    "KcB": "a9fa3406c3b781b93d804485430ca27a",
    "cA": "58ad4aa88e0b60d5061eb6b5dd93e80d9c4f00d127c65b3b35b1b5281fee38f0",
    "cB": "d3e2e547f1ae04f2dbdbf0fc4b79f8ecff2dff314b5d32fe9fcef2fb26dc459b",
}.items()}


def _len8(b: bytes) -> bytes:
    return len(b).to_bytes(8, "little") + b


def _sides() -> tuple[Spake2, Spake2]:
    w = int.from_bytes(RFC["w"], "big")
    a = Spake2("A", w, b"server", b"client", scalar=int.from_bytes(RFC["x"], "big"))
    b = Spake2("B", w, b"server", b"client", scalar=int.from_bytes(RFC["y"], "big"))
    return a, b


def test_rfc_9382_vectors_both_sides():
    a, b = _sides()
    assert a.message == RFC["pA"] and b.message == RFC["pB"]
    ra, rb = a.finish(b.message), b.finish(a.message)
    assert ra == rb
    assert ra.shared_point == RFC["K"]
    assert ra.transcript == b"".join(_len8(p) for p in (b"server", b"client", RFC["pA"], RFC["pB"],
                                                        RFC["K"], RFC["w"]))
    assert (ra.ke, ra.ka, ra.kc_a, ra.kc_b) == (RFC["Ke"], RFC["Ka"], RFC["KcA"], RFC["KcB"])
    assert (ra.confirm_a, ra.confirm_b) == (RFC["cA"], RFC["cB"])


def test_associated_data_changes_only_the_confirmation_keys():
    a, b = _sides()
    ra, rb = a.finish(b.message, aad=b"hello hash"), b.finish(a.message, aad=b"hello hash")
    assert ra == rb and ra.ke == RFC["Ke"] and ra.kc_a != RFC["KcA"] and ra.confirm_b != RFC["cB"]


def test_a_different_password_gives_different_keys():
    a, b = _sides()
    other = Spake2("B", int.from_bytes(RFC["w"], "big") + 1, b"server", b"client",
                   scalar=int.from_bytes(RFC["y"], "big"))
    assert a.finish(other.message).ke != other.finish(a.message).ke


@pytest.mark.parametrize("bad, text", [
    (b"", "65-byte"),
    (RFC["pA"][:33], "65-byte"),
    (b"\x02" + RFC["pA"][1:], "uncompressed"),
    (RFC["pA"][:-1] + bytes([RFC["pA"][-1] ^ 1]), "not a point"),
    (b"\x04" + b"\xff" * 64, "below the field prime"),
    (b"\x04" + bytes(64), "identity"),                 # pycryptodome's encoding of the identity
    (b"\x04" + (2 ** 256 - 2 ** 224 + 2 ** 192 + 2 ** 96 - 1).to_bytes(32, "big") + bytes(32), "below the field"),
])
def test_invalid_elements_are_refused(bad, text):
    a, _ = _sides()
    with pytest.raises(InvalidElement, match=text):
        a.finish(bad)


def test_a_share_equal_to_w_times_the_constant_is_refused():
    # pB = w*N makes K the identity for A: RFC 9382 requires aborting.
    a, _ = _sides()
    w = int.from_bytes(RFC["w"], "big")
    blind = Spake2("B", w, b"", b"", scalar=1)          # 1*G + w*N
    minus_g = decode_point(Spake2("A", 0, b"", b"", scalar=1).message)   # 1*G
    w_n = decode_point(blind.message) + (-minus_g)
    with pytest.raises(InvalidElement, match="identity"):
        a.finish(encode_point(w_n))
