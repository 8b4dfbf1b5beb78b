"""The targets the benchmarks are held to, judged from a results dict (benchmarks.harness).

Contract:
    knee(runs) -> Knee                  for one server's rate sweep
    matching(runs, protocol, **fields) -> [LoadResult]   the runs with those values
    median_run(runs) -> LoadResult      the run with the median p99 (the upper one of two)
    udp_raw_runs(runs) -> [LoadResult]  the repeats the udp-raw target is judged on
    evaluate(results) -> [Target]       every target, met, missed or not measured

A run keeps up when it delivers at least KEEP_UP of what was offered with p99 below
KEEP_UP_P99_MS: a server that falls behind builds a queue, and the queue shows in both. The knee
of a sweep is the highest offered load that kept up; its saturation throughput is the most
deliveries per second any run of the sweep reached.

The targets:
- tcp-200x5: TCP at 200 clients x 5 msg/s: p99 < 2 ms, nothing lost or left unsent, and server
  CPU per delivery below the naive server's at the same load.
- tcp-saturation: TCP's saturation throughput at least 1.5x the naive server's.
- udp-raw-100x10: UDP raw on loopback at 100 clients x 10 msg/s: loss < 0.1 %, p99 < 5 ms,
  judged on the run with the median p99 of its repeats (all of them are shown).
- udp-reliable-5pct: UDP reliable over a link losing 5 % each way: nothing lost, p99 within
  RTO_BUDGET retransmission timeouts of 200 ms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.measure import LoadResult, result_from_dict

KEEP_UP = 0.95
KEEP_UP_P99_MS = 100.0
TCP_P99_MS = 2.0
SATURATION_RATIO = 1.5
UDP_RAW_LOSS_PCT = 0.1
UDP_RAW_P99_MS = 5.0
RTO_MS = 200.0
RTO_BUDGET = 3


@dataclass(frozen=True)
class Knee:
    """Where one server stops keeping up, over a sweep of offered loads."""

    protocol: str
    knee_rate: float | None
    knee_offered: float | None
    saturation_deliveries_per_s: float
    saturation_rate: float


@dataclass(frozen=True)
class Target:
    key: str
    goal: str
    met: bool | None
    measured: str


def keeps_up(result: LoadResult) -> bool:
    return (
        result.deliveries_per_s >= KEEP_UP * result.offered_deliveries_per_s
        and result.p99_ms < KEEP_UP_P99_MS
        and result.lost == 0
    )


def knee(runs: Sequence[LoadResult]) -> Knee:
    """The knee of one server's sweep; runs are sorted by offered load here."""
    ordered = sorted(runs, key=lambda r: r.offered_deliveries_per_s)
    best = max(ordered, key=lambda r: r.deliveries_per_s)
    kept = [r for r in ordered if keeps_up(r)]
    last = kept[-1] if kept else None
    return Knee(
        protocol=ordered[0].protocol,
        knee_rate=last.rate if last else None,
        knee_offered=last.offered_deliveries_per_s if last else None,
        saturation_deliveries_per_s=best.deliveries_per_s,
        saturation_rate=best.rate,
    )


def _runs(results: dict[str, Any], group: str) -> list[LoadResult]:
    return [result_from_dict(run["result"]) for run in results["runs"] if run["group"] == group]


def matching(runs: Sequence[LoadResult], protocol: str, **fields: Any) -> list[LoadResult]:
    """The runs of `protocol` whose other fields have the given values, in suite order."""
    return [
        run
        for run in runs
        if run.protocol == protocol and all(getattr(run, k) == v for k, v in fields.items())
    ]


def _find(runs: Sequence[LoadResult], protocol: str, **fields: Any) -> LoadResult | None:
    found = matching(runs, protocol, **fields)
    return found[0] if found else None


def sweep_knees(results: dict[str, Any]) -> dict[str, Knee]:
    """The knee of each server in the rate sweep."""
    runs = _runs(results, "rate")
    return {
        protocol: knee([r for r in runs if r.protocol == protocol])
        for protocol in sorted({r.protocol for r in runs})
    }


def _tcp_200x5(results: dict[str, Any]) -> Target:
    goal = f"p99 < {TCP_P99_MS:g} ms, no loss, server CPU per delivery below the naive server's"
    runs = _runs(results, "clients")
    tcp, naive = _find(runs, "tcp", clients=200, rate=5), _find(runs, "naive", clients=200, rate=5)
    if tcp is None or naive is None:
        return Target("tcp-200x5", goal, None, "not measured")
    met = (
        tcp.p99_ms < TCP_P99_MS
        and tcp.lost == 0
        and tcp.unsent == 0
        and tcp.server_cpu_us_per_delivery < naive.server_cpu_us_per_delivery
    )
    measured = (
        f"p99 {tcp.p99_ms:.2f} ms, {tcp.lost} lost, {tcp.unsent} unsent, "
        f"{tcp.server_cpu_us_per_delivery:.2f} µs/delivery (naive: "
        f"{naive.server_cpu_us_per_delivery:.2f})"
    )
    return Target("tcp-200x5", goal, met, measured)


def _saturation(results: dict[str, Any]) -> Target:
    goal = f"TCP saturation throughput >= {SATURATION_RATIO:g}x the naive server's"
    knees = sweep_knees(results)
    if "tcp" not in knees or "naive" not in knees:
        return Target("tcp-saturation", goal, None, "not measured")
    tcp, naive = knees["tcp"], knees["naive"]
    ratio = tcp.saturation_deliveries_per_s / naive.saturation_deliveries_per_s
    measured = (
        f"{tcp.saturation_deliveries_per_s:,.0f} against {naive.saturation_deliveries_per_s:,.0f}"
        f" deliveries/s ({ratio:.2f}x)"
    )
    return Target("tcp-saturation", goal, ratio >= SATURATION_RATIO, measured)


def _by_p99(run: LoadResult) -> float:
    return math.inf if math.isnan(run.p99_ms) else run.p99_ms


def median_run(runs: Sequence[LoadResult]) -> LoadResult:
    """The run with the median p99; of an even number, the worse of the middle two."""
    return sorted(runs, key=_by_p99)[len(runs) // 2]


def udp_raw_runs(target_runs: Sequence[LoadResult]) -> list[LoadResult]:
    """The repeats of UDP raw at 100 x 10 among the runs of the `udp-target` group."""
    return matching(target_runs, "udp-raw", clients=100, rate=10)


def _udp_raw(results: dict[str, Any]) -> Target:
    goal = f"loss < {UDP_RAW_LOSS_PCT:g} %, p99 < {UDP_RAW_P99_MS:g} ms"
    runs = udp_raw_runs(_runs(results, "udp-target"))
    if not runs:
        return Target("udp-raw-100x10", goal, None, "not measured")
    run = median_run(runs)
    met = run.loss_pct < UDP_RAW_LOSS_PCT and run.p99_ms < UDP_RAW_P99_MS
    measured = f"loss {run.loss_pct:.3f} %, p99 {run.p99_ms:.2f} ms"
    if len(runs) > 1:
        p99s = ", ".join(f"{r.p99_ms:.2f}" for r in sorted(runs, key=_by_p99))
        measured += f" (the median of {len(runs)} runs, whose p99s were {p99s} ms)"
    return Target("udp-raw-100x10", goal, met, measured)


def _udp_reliable(results: dict[str, Any]) -> Target:
    budget = RTO_BUDGET * RTO_MS
    goal = f"no loss, p99 <= {RTO_BUDGET} RTOs ({budget:g} ms)"
    run = _find(_runs(results, "lossy"), "udp-reliable", link="netns 5% loss")
    if run is None:
        return Target("udp-reliable-5pct", goal, None, "not measured")
    met = run.lost == 0 and math.isfinite(run.p99_ms) and run.p99_ms <= budget
    measured = f"{run.lost} lost, {run.duplicates} duplicates, p99 {run.p99_ms:.1f} ms"
    return Target("udp-reliable-5pct", goal, met, measured)


def evaluate(results: dict[str, Any]) -> list[Target]:
    return [_tcp_200x5(results), _saturation(results), _udp_raw(results), _udp_reliable(results)]


def format_targets(targets: Sequence[Target]) -> str:
    verdict = {True: "met", False: "MISSED", None: "not measured"}
    return "\n".join(f"{verdict[t.met]:>12}  {t.key}: {t.goal}; {t.measured}" for t in targets)
