"""Pairing rules of docs/protocol.md section 4 that need no network: keys, lock-out, clock offset."""

from __future__ import annotations

import contextlib

import pytest

from facestudio.capture.clock import ClockOffset
from facestudio.capture.pairing import Pairing, PairingError, PairingLocked, PinGuard, pin_to_w

HELLO, REPLY = b"\x01\x00\x00\x00\x02{}", b"\x02\x00\x00\x00\x02{}"


def _pair(pin_desktop: str, pin_device: str, reply: bytes = REPLY):
    desktop, device = Pairing(pin_desktop, "client"), Pairing(pin_device, "device")
    return desktop.finish(device.message, HELLO, REPLY), device.finish(desktop.message, HELLO, reply)


def test_the_same_pin_gives_both_sides_the_same_keys():
    a, b = _pair("123456", "123456")
    assert a == b and len(a.client_to_device) == len(a.device_to_client) == 32
    assert a.client_to_device != a.device_to_client
    assert len(a.client_confirm) == len(a.device_confirm) == 32


def test_a_wrong_pin_or_an_altered_hello_fails_key_confirmation():
    a, b = _pair("123456", "654321")
    assert a.client_confirm != b.client_confirm and a.client_to_device != b.client_to_device
    a, b = _pair("123456", "123456", reply=b"\x02\x00\x00\x00\x03{ }")   # one space more
    assert a.client_confirm != b.client_confirm


def test_fresh_randoms_every_attempt():
    assert Pairing("123456", "client").message != Pairing("123456", "client").message


@pytest.mark.parametrize("pin", ["12345", "1234567", "12a456", "１２３４５６", ""])
def test_a_pin_is_six_ascii_digits(pin):
    with pytest.raises(PairingError, match="6 digits"):
        pin_to_w(pin)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _fail(guard: PinGuard) -> float:
    guard.begin()
    return guard.end(False)


def test_lock_out_starts_with_the_third_failure_and_doubles_up_to_300_s():
    clock = FakeClock()
    guard = PinGuard("123456", clock=clock)
    locks = []
    for _ in range(12):
        locks.append(_fail(guard))
        with pytest.raises(PairingLocked) if locks[-1] else contextlib.nullcontext():
            guard.begin()
            guard.end(None)
        clock.now += 1000
    assert locks == [0, 0, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]


def test_a_locked_attempt_says_how_long_and_a_success_resets_the_count():
    clock = FakeClock()
    guard = PinGuard("123456", clock=clock)
    for _ in range(3):
        _fail(guard)
    clock.now += 0.55
    with pytest.raises(PairingLocked, match="try again") as locked:
        guard.begin()
    assert locked.value.retry_after == 1.5           # 1.45 s left, rounded up to 0.1 s
    clock.now += 1.45
    guard.begin()
    assert guard.end(True) == 0 and guard.failures == 0
    assert _fail(guard) == 0                          # free again after a success


def test_one_attempt_at_a_time_and_an_abandoned_attempt_is_no_failure():
    guard = PinGuard("123456", clock=FakeClock())
    guard.begin()
    with pytest.raises(PairingLocked, match="another desktop") as busy:
        guard.begin()
    assert busy.value.retry_after == PinGuard.BUSY_RETRY_S
    assert guard.end(None) == 0 and guard.failures == 0
    guard.begin()                                      # free again


def test_a_random_pin_is_replaced_after_every_tenth_failure_a_chosen_one_is_kept(monkeypatch):
    from facestudio.capture import pairing

    draws = iter(["111111", "222222", "333333"])
    monkeypatch.setattr(pairing, "new_pin", lambda: next(draws))
    clock = FakeClock()
    random_pin, chosen = PinGuard(clock=clock), PinGuard("123456", clock=clock)
    shown = []
    for _ in range(20):
        shown.append(random_pin.pin)
        _fail(random_pin)
        _fail(chosen)
        clock.now += 1000
    assert shown == ["111111"] * 10 + ["222222"] * 10 and random_pin.pin == "333333"
    assert chosen.pin == "123456"


def test_clock_offset_uses_the_fastest_recent_round_trip():
    clock = ClockOffset(window=3)
    assert clock.offset is None and clock.to_desktop(5.0) is None
    clock.add(10.0, 1010.4, 10.2)       # rtt 0.2: offset 1000.3
    clock.add(12.0, 1012.05, 12.1)      # rtt 0.1: offset 1000.0
    clock.add(14.0, 1014.5, 14.4)       # rtt 0.4
    assert clock.offset == pytest.approx(1000.0) and clock.round_trip == pytest.approx(0.1)
    assert clock.to_desktop(1020.0) == pytest.approx(20.0)
    clock.add(16.0, 1, 15.0)            # negative round trip: ignored
    clock.add(18.0, 1, 40.0)            # 22 s round trip: ignored
    assert clock.offset == pytest.approx(1000.0)
    for t in (20.0, 22.0, 24.0):        # the fast sample leaves the window
        clock.add(t, 1000.0 + t + 0.5 + 0.15, t + 0.3)
    assert clock.offset == pytest.approx(1000.5)
