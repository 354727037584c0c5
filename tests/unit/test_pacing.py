"""The token-bucket pacer, driven by a fake clock (no sleeping)."""

from __future__ import annotations

import pytest

from tcpft.pacing import Pacer

MIB = 1024 * 1024


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_burst_passes_then_delay_is_proportional() -> None:
    clock = FakeClock()
    pacer = Pacer(1000, burst=500, clock=clock)
    assert pacer.delay(300) == 0.0
    assert pacer.delay(200) == 0.0  # the burst is used up exactly
    assert pacer.delay(100) == pytest.approx(0.1)
    assert pacer.delay(100) == pytest.approx(0.2)  # debt accumulates
    clock.advance(0.2)  # the caller slept as told
    assert pacer.delay(250) == pytest.approx(0.25)


def test_average_rate_is_kept() -> None:
    clock = FakeClock()
    rate = 10_000
    pacer = Pacer(rate, burst=1000, clock=clock)
    sent = 0
    for _ in range(200):
        wait = pacer.delay(700)
        assert wait >= 0
        clock.advance(wait)
        sent += 700
    elapsed = clock.now - 1000.0
    # Everything beyond the initial burst went at exactly `rate`.
    assert elapsed == pytest.approx((sent - 1000) / rate)


def test_delay_proportional_to_size_once_empty() -> None:
    clock = FakeClock()
    pacer = Pacer(2000, burst=1, clock=clock)
    pacer.delay(1)
    for n in (1, 10, 100, 1000):
        clock.advance(pacer.delay(0))  # pay off any debt
        assert pacer.delay(n) == pytest.approx(n / 2000)
        clock.advance(n / 2000)


def test_idle_time_refills_only_up_to_burst() -> None:
    clock = FakeClock()
    pacer = Pacer(1000, burst=500, clock=clock)
    assert pacer.delay(500) == 0.0
    clock.advance(3600)  # a long pause earns no more than one burst
    assert pacer.delay(500) == 0.0
    assert pacer.delay(1000) == pytest.approx(1.0)


def test_partial_refill() -> None:
    clock = FakeClock()
    pacer = Pacer(1000, burst=500, clock=clock)
    pacer.delay(500)
    clock.advance(0.1)  # 100 tokens back
    assert pacer.delay(100) == 0.0
    assert pacer.delay(50) == pytest.approx(0.05)


def test_request_larger_than_burst() -> None:
    clock = FakeClock()
    pacer = Pacer(1000, burst=500, clock=clock)
    assert pacer.delay(2500) == pytest.approx(2.0)


def test_default_burst() -> None:
    clock = FakeClock()
    assert Pacer(1000, clock=clock).burst == MIB  # at least 1 MiB
    assert Pacer(100 * MIB, clock=clock).burst == 25 * MIB  # a quarter second
    pacer = Pacer(1000, clock=clock)
    assert pacer.delay(MIB) == 0.0
    assert pacer.delay(1000) == pytest.approx(1.0)


@pytest.mark.parametrize("rate", [0, -1])
def test_rate_must_be_positive(rate: int) -> None:
    with pytest.raises(ValueError):
        Pacer(rate, clock=FakeClock())


@pytest.mark.parametrize(("rate", "piece"), [(1, 4096), (16 * 1024, 4096), (1024 * 1024, 262144)])
def test_piece_is_a_quarter_second_at_least_4_kib(rate: int, piece: int) -> None:
    assert Pacer(rate).piece == piece
