"""The token bucket, with time driven by hand."""

from __future__ import annotations

from common.room.ratelimit import TokenBucket


def test_a_burst_then_the_sustained_rate() -> None:
    bucket = TokenBucket(rate=20, burst=50, now=0.0)
    assert all(bucket.allow(0.0) for _ in range(50))
    assert not bucket.allow(0.0)
    assert bucket.allow(0.05)
    assert not bucket.allow(0.05)
    while bucket.allow(1.0):
        pass
    allowed = sum(bucket.allow(1.0 + (i + 1) / 1000) for i in range(1000))
    assert allowed == 20


def test_the_bucket_never_holds_more_than_the_burst() -> None:
    bucket = TokenBucket(rate=10, burst=3, now=0.0)
    assert [bucket.allow(1000.0) for _ in range(4)] == [True, True, True, False]


def test_rate_zero_turns_the_limit_off() -> None:
    bucket = TokenBucket(rate=0, burst=1, now=0.0)
    assert all(bucket.allow(0.0) for _ in range(10_000))


def test_a_clock_going_backwards_grants_nothing() -> None:
    bucket = TokenBucket(rate=10, burst=1, now=5.0)
    assert bucket.allow(5.0)
    assert not bucket.allow(4.0)


def test_a_costly_frame_takes_more_and_one_over_the_burst_a_full_bucket() -> None:
    bucket = TokenBucket(rate=100, burst=100, now=0.0)
    assert bucket.allow(0.0, cost=60)
    assert not bucket.allow(0.0, cost=60)
    assert bucket.allow(0.0, cost=40)
    assert not bucket.allow(0.5, cost=1000)
    assert bucket.allow(1.0, cost=1000)
    assert not bucket.allow(1.0)
