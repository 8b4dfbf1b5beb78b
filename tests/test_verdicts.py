"""The harness-bound rule and the verdict rule, on made-up samples (no sockets, no timing)."""

from __future__ import annotations

import math
from collections.abc import Mapping

from benchmarks.measure import HARNESS_CPU_LIMIT_PCT, HARNESS_LAG_LIMIT_MS, is_harness_bound
from benchmarks.targets import BOUND, MET, MISSED, NOT_MEASURED, UNSTABLE, Sample, judge


def below_ten(values: Mapping[str, float]) -> bool:
    return values["p99_ms"] < 10


def samples(*p99s: float, bound: tuple[int, ...] = ()) -> list[Sample]:
    return [Sample({"p99_ms": p}, i in bound) for i, p in enumerate(p99s)]


def test_a_busy_or_late_harness_makes_a_run_harness_bound() -> None:
    assert not is_harness_bound(HARNESS_CPU_LIMIT_PCT, HARNESS_LAG_LIMIT_MS)
    assert is_harness_bound(HARNESS_CPU_LIMIT_PCT + 1, 0.1)
    assert is_harness_bound(10.0, HARNESS_LAG_LIMIT_MS + 0.01)
    assert not is_harness_bound(10.0, math.nan)


def test_met_needs_the_median_and_every_counted_repeat() -> None:
    assert judge(samples(1, 2, 3), below_ten) == (MET, {"p99_ms": 2})
    assert judge(samples(20, 30, 40), below_ten)[0] == MISSED


def test_repeats_that_disagree_are_unstable() -> None:
    assert judge(samples(1, 2, 30), below_ten)[0] == UNSTABLE
    assert judge(samples(1, 20, 30), below_ten)[0] == UNSTABLE


def test_harness_bound_repeats_are_not_counted() -> None:
    # The one failing repeat was harness-bound: two of three count, and both hold.
    assert judge(samples(1, 2, 30, bound=(2,)), below_ten) == (MET, {"p99_ms": 1.5})
    # Two of three harness-bound: too few server results to judge.
    assert judge(samples(1, 20, 30, bound=(1, 2)), below_ten)[0] == BOUND


def test_nothing_measured_is_said_so() -> None:
    assert judge([], below_ten) == (NOT_MEASURED, {})
