"""The saturation sweeps (TCP, reliable UDP packet sessions) and their targets, on made-up
results (no sockets, no timing)."""

from __future__ import annotations

import dataclasses
from typing import Any

from benchmarks.harness import build_suite
from benchmarks.measure import result_to_dict
from benchmarks.targets import BOUND, MET, MISSED, Target, evaluate, evaluate_packets
from tests.test_report import fake


def test_the_sweep_goes_to_twice_what_the_server_keeps_up_with_and_repeats_the_top() -> None:
    runs = [(s.name, s.repeat) for s in build_suite("bench") if s.group == "saturation"]
    assert sorted({name for name, _ in runs}) == [
        "tcp 200x100", "tcp 200x25", "tcp 200x5", "tcp 200x50",
    ]  # fmt: skip
    assert sum(name == "tcp 200x100" for name, _ in runs) == 3
    assert sum(name == "tcp 200x5" for name, _ in runs) == 1


def test_reliable_packets_are_swept_to_twice_what_they_keep_up_with_and_repeat_the_top() -> None:
    runs = [(s.name, s.repeat) for s in build_suite("bench") if s.group == "packet-saturation"]
    names = ["udp-reliable-packets 100x10", "udp-reliable-packets 100x2.5",
             "udp-reliable-packets 100x5"]  # fmt: skip
    assert sorted({name for name, _ in runs}) == names
    assert sum(name == "udp-reliable-packets 100x10" for name, _ in runs) == 3
    assert sum(name == "udp-reliable-packets 100x5" for name, _ in runs) == 3
    assert sum(name == "udp-reliable-packets 100x2.5" for name, _ in runs) == 1
    # The rate sweep is the TCP servers' alone now.
    rate = {s.spec.protocol for s in build_suite("bench") if s.group == "rate" and s.spec}
    assert rate == {"tcp", "assignment"}


def _results(group: str, top: float, **at_2x: Any) -> dict[str, Any]:
    """Made-up results of a saturation group, every run at its ``top`` rate with ``at_2x``."""
    runs = []
    for scenario in build_suite("bench"):
        if scenario.group != group or scenario.spec is None:
            continue
        result = fake(scenario.spec)
        if scenario.spec.rate == top:
            result = dataclasses.replace(result, **at_2x)
        runs.append(
            {"group": scenario.group, "name": scenario.name, "repeat": scenario.repeat,
             "spec": dataclasses.asdict(scenario.spec), "result": result_to_dict(result)}
        )  # fmt: skip
    return {"runs": runs}


def saturation(**at_2x: Any) -> Target:
    """The tcp-saturation verdict when every 200 x 100 run has ``at_2x``'s values."""
    results = _results("saturation", 100, **at_2x)
    return next(t for t in evaluate(results) if t.key == "tcp-saturation")


def packet_saturation(**at_2x: Any) -> Target:
    """The udp-packets-saturation verdict when every 100 x 10 run has ``at_2x``'s values."""
    results = _results("packet-saturation", 10, **at_2x)
    return next(t for t in evaluate_packets(results) if t.key == "udp-packets-saturation")


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


def test_reliable_packets_past_saturation_keep_most_of_their_best_or_miss() -> None:
    """At 2x, 80 % of the best deliveries/s at 1x (100 x 5 delivers 50,000/s in the fakes)."""
    kept = packet_saturation(deliveries_per_s=42_500.0, p99_ms=900.0)
    assert kept.verdict == MET
    assert kept.medians["peak"] == 50_000.0 and kept.medians["at_2x"] == 0.85
    assert kept.medians["p99_ms"] == 900.0
    assert packet_saturation(deliveries_per_s=25_000.0).verdict == MISSED


def test_reliable_packets_past_saturation_driven_by_a_busy_harness_are_no_verdict() -> None:
    assert packet_saturation(harness_cpu_pct=95.0).verdict == BOUND
    assert packet_saturation(send_lag_p99_ms=3.0).verdict == BOUND
