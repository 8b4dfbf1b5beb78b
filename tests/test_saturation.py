"""The saturation sweep and its target, on made-up results (no sockets, no timing)."""

from __future__ import annotations

import dataclasses
from typing import Any

from benchmarks.harness import build_suite
from benchmarks.measure import result_to_dict
from benchmarks.targets import MET, MISSED, Target, evaluate
from tests.test_report import fake


def test_the_sweep_goes_to_twice_what_the_server_keeps_up_with_and_repeats_the_top() -> None:
    runs = [(s.name, s.repeat) for s in build_suite("bench") if s.group == "saturation"]
    assert sorted({name for name, _ in runs}) == [
        "tcp 200x100", "tcp 200x25", "tcp 200x5", "tcp 200x50",
    ]  # fmt: skip
    assert sum(name == "tcp 200x100" for name, _ in runs) == 3
    assert sum(name == "tcp 200x5" for name, _ in runs) == 1


def saturation(**at_2x: Any) -> Target:
    """The tcp-saturation verdict when every 200 x 100 run has ``at_2x``'s values."""
    runs = []
    for scenario in build_suite("bench"):
        if scenario.group != "saturation" or scenario.spec is None:
            continue
        result = fake(scenario.spec)
        if scenario.spec.rate == 100:
            result = dataclasses.replace(result, **at_2x)
        runs.append(
            {"group": scenario.group, "name": scenario.name, "repeat": scenario.repeat,
             "spec": dataclasses.asdict(scenario.spec), "result": result_to_dict(result)}
        )  # fmt: skip
    return next(t for t in evaluate({"runs": runs}) if t.key == "tcp-saturation")


def test_slowed_talkers_are_no_loss_and_half_the_offered_load_is_no_collapse() -> None:
    target = saturation(deliveries_per_s=2.0e6, sent_msgs_per_s=10_000.0, unsent=20_000)
    assert target.verdict == MET
    assert target.medians["at_2x"] == 1.0


def test_a_collapse_past_the_knee_misses() -> None:
    assert saturation(deliveries_per_s=0.3e6).verdict == MISSED


def test_a_reader_dropped_or_memory_past_the_bound_fails_the_run() -> None:
    assert saturation(too_slow_seen=115).verdict == MISSED
    assert saturation(server_peak_rss_mb=820.0).verdict == MISSED
    assert saturation(lost=10).verdict == MISSED
    assert saturation().verdict == MET
