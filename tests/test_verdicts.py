"""The harness-bound rule and the verdict rule, on made-up samples (no sockets, no timing)."""

from __future__ import annotations

import math
from collections.abc import Mapping

from benchmarks.measure import HARNESS_CPU_LIMIT_PCT, HARNESS_LAG_LIMIT_MS, is_harness_bound
from benchmarks.targets import (
    BOUND,
    MET,
    MISSED,
    NOT_MEASURED,
    UNSTABLE,
    Sample,
    evaluate_overload,
    judge,
)


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


def overload_run(case: str, **figures: float | None) -> dict[str, object]:
    run: dict[str, object] = {
        "case": case, "seconds": 0.5, "welcome_ms": 50.0, "dropped": 0, "p99_ms": 20.0,
        "rss_start_mb": 100.0, "rss_peak_mb": 120.0, "rss_end_mb": 110.0,
    }  # fmt: skip
    return run | figures


def test_the_overload_cases_are_judged_on_their_own_figures() -> None:
    def verdicts(*runs: dict[str, object]) -> dict[str, str]:
        found = evaluate_overload({"runs": [], "overload": list(runs)})
        return {
            t.key: t.verdict
            for t in found
            if t.key.startswith(("tcp-closing", "tcp-non", "tcp-hist"))
        }

    fine = [overload_run(case) for case in ("closing", "non-readers", "history") for _ in range(3)]
    assert set(verdicts(*fine).values()) == {MET}
    # A newcomer kept waiting as the closes go on misses the closing target, and only it.
    slow = [overload_run("closing", welcome_ms=400.0) for _ in range(3)]
    assert verdicts(*slow)["tcp-closing"] == MISSED
    # Memory that stays up after the non-readers left; an observer that saw nothing at all.
    kept = [overload_run("non-readers", rss_end_mb=180.0) for _ in range(3)]
    assert verdicts(*kept)["tcp-non-readers"] == MISSED
    blind = [overload_run("history", p99_ms=None) for _ in range(3)]
    assert verdicts(*blind)["tcp-history-non-readers"] == MISSED
    assert verdicts()["tcp-closing"] == NOT_MEASURED
