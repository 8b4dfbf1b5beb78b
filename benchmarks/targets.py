"""The targets the benchmarks are held to, judged from a results dict (benchmarks.harness).

Contract:
    knee(runs) -> Knee                  for one server's rate sweep
    matching(runs, protocol, **fields) -> [LoadResult]   the runs with those values
    repeats(results, group, protocol, variant="", **fields) -> [LoadResult]   one per repeat,
                                        in order (`variant`: the harness Config's, "" for none)
    judge(samples, holds) -> (verdict, medians)           the verdict rule, on its own
    evaluate(results) -> [Target]       every target: met, missed, unstable, harness-bound or
                                        not measured
    evaluate_packets(results) -> [Target]   the targets of UDP packet sessions (v1.2), apart
                                        until the report takes them in
    evaluate_overload(results) -> [Target]  the overload group's targets (RUNS.md; the report
                                        shows their medians in its saturation section)

A run keeps up when it delivers at least KEEP_UP of what was offered with p99 below
KEEP_UP_P99_MS: a server that falls behind builds a queue, and the queue shows in both. The knee
of a sweep is the highest offered load that kept up.

The targets, each judged on the repeated runs of the `targets`, `peak` and `lossy` groups:
- tcp-200x5: TCP at 200 clients x 5 msg/s, default flags: nothing lost or left unsent, server
  CPU per delivery below the assignment's server's and p99 below half of its p99, in the same
  round.
- tcp-200x50: TCP at 200 clients x 50 msg/s (2 M deliveries/s offered): at least 95 % of the
  window's deliveries made by the end of the drain (received / expected: deliveries/s would
  count the warmup's backlog too and can pass 100 %), nothing lost, no client dropped,
  p99 < 100 ms, and CPU per delivery at most 0.7x the assignment's server's in the same round.
- tcp-no-coalescing: TCP at 200 x 5 with `--coalesce-ms 0`: p99 < 5 ms.
- udp-raw-100x10: UDP raw on loopback at 100 clients x 10 msg/s: loss < 0.1 %, p99 < 5 ms.
- udp-reliable-5pct: UDP reliable (1.0) over a link losing 5 % each way (the `lossy` group's
  repeated runs): nothing lost, p99 within RTO_BUDGET retransmission timeouts of 200 ms.
- tcp-saturation: TCP at 200 x 50 and at twice that, 200 x 100 (the `saturation` group's
  rounds): in every run no reader dropped and nothing sent lost (the talkers may be slowed:
  what they could not send yet is not lost), server memory under SATURATION_RSS_MB, and at
  200 x 100 at least SATURATION_KEPT of the best deliveries/s at 200 x 50 (no collapse).

UDP packet sessions (protocol v1.2), against the runs above in the same rounds:
- udp-packets-lossy-N: reliable packet sessions over a link losing N % (1, 5, 10) each way (the
  `lossy` group's runs): nothing lost, and p99 at most LOSSY_TCP_SHARE of TCP's on the same link
  at the same load, in the same round (without such a TCP run nothing lost alone is judged,
  and the goal says so).
- udp-packets-reliable-cost: reliable packet sessions at 100 x 5: CPU per delivery at most
  RELIABLE_CPU_SHARE x raw packet sessions' at 100 x 5, and at most ACKS_PER_PACKET acks per
  packet received.
- udp-packets-raw-200x5: raw packet sessions at 200 x 5: CPU per delivery at most RAW_CPU_SHARE x
  TCP's at 200 x 5, p99 no higher than TCP's, nothing lost.
- udp-packets-reliable-NxR: reliable packet sessions on loopback at 100 x 5 and 200 x 5: at least
  CLEAN_DELIVERED of the offered deliveries, p99 < KEEP_UP_P99_MS.
- udp-packets-saturation (the `packet-saturation` group's rounds): reliable packet sessions at
  twice the load they keep up with (the sweep's two highest rates: the last is twice the one
  before) deliver at least SATURATION_SHARE of the best deliveries/s at that load (no
  collapse).

The overload group's cases (`benchmarks.overload`, each repeated; no load generator sets a
pace there, so no repeat is harness-bound):
- tcp-closing: 3,000 clients closing at once: every socket closed within CLOSE_S, a newcomer
  welcomed within WELCOME_MS meanwhile, memory back within MEMORY_BACK_MB of where it was
  before the closes.
- tcp-non-readers: 5,000 clients that never read plus 10 talkers: no talker or observer
  dropped, observers' p99 < KEEP_UP_P99_MS, memory back within MEMORY_BACK_MB of the start
  once the non-readers are gone.
- tcp-history-non-readers: 100 non-readers asking `history` 50 times each: server memory under
  SATURATION_RSS_MB, an observer's p99 < KEEP_UP_P99_MS.

The verdict rule (`judge`): a repeat whose run was harness-bound is not a server result and is
not counted. With fewer than two thirds of the repeats counted, the verdict is harness-bound.
Otherwise a target is met when it holds on the medians of the counted repeats and in every one
of them, missed when it fails on the medians and in every one, and unstable when the counted
repeats disagree: one run's luck must not decide a verdict.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.measure import LoadResult, result_from_dict

KEEP_UP = 0.95
KEEP_UP_P99_MS = 100.0
TCP_P99_SHARE = 0.5
PEAK_CPU_SHARE = 0.7
PEAK_P99_MS = 100.0
NO_COALESCING_P99_MS = 5.0
DEFAULT = math.nan
"""The value of `coalesce_ms` in a run that left the server's default."""
UDP_RAW_LOSS_PCT = 0.1
UDP_RAW_P99_MS = 5.0
RTO_MS = 200.0
RTO_BUDGET = 3
SATURATION_KEPT = 0.9
SATURATION_RSS_MB = 200.0
LOSSY_TCP_SHARE = 0.25
PACKET_LOSSES = (1, 5, 10)
RELIABLE_CPU_SHARE = 1.3
ACKS_PER_PACKET = 0.5
RAW_CPU_SHARE = 1.2
CLEAN_DELIVERED = 0.99
SATURATION_SHARE = 0.8
CLOSE_S = 1.0
WELCOME_MS = 100.0
MEMORY_BACK_MB = 50.0

MET, MISSED, UNSTABLE, BOUND, NOT_MEASURED = (
    "met", "missed", "unstable", "harness-bound", "not measured",
)  # fmt: skip

Values = Mapping[str, float]


@dataclass(frozen=True)
class Knee:
    """Where one server stops keeping up, over a sweep of offered loads."""

    protocol: str
    knee_rate: float | None
    knee_offered: float | None


@dataclass(frozen=True)
class Sample:
    """One repeat of a target: the values it is judged on, and whether the harness was the
    limit in any run it comes from."""

    values: Values
    harness_bound: bool


@dataclass(frozen=True)
class Target:
    """A target's verdict; `medians` and `ranges` are over the counted repeats, `samples` are
    all of them, in the order they ran."""

    key: str
    goal: str
    verdict: str
    medians: Values
    ranges: Mapping[str, tuple[float, float]]
    samples: Sequence[Sample]
    held: Sequence[bool | None]

    @property
    def met(self) -> bool:
        return self.verdict == MET


def keeps_up(result: LoadResult) -> bool:
    return (
        result.deliveries_per_s >= KEEP_UP * result.offered_deliveries_per_s
        and result.p99_ms < KEEP_UP_P99_MS
        and result.lost == 0
    )


def knee(runs: Sequence[LoadResult]) -> Knee:
    """The knee of one server's sweep; runs are sorted by offered load here."""
    ordered = sorted(runs, key=lambda r: r.offered_deliveries_per_s)
    kept = [r for r in ordered if keeps_up(r)]
    last = kept[-1] if kept else None
    return Knee(
        protocol=ordered[0].protocol,
        knee_rate=last.rate if last else None,
        knee_offered=last.offered_deliveries_per_s if last else None,
    )


def _runs(results: dict[str, Any], group: str, variant: str = "") -> list[tuple[int, LoadResult]]:
    return [
        (run.get("repeat", 1), result_from_dict(run["result"]))
        for run in results["runs"]
        if run["group"] == group and run.get("variant", "") == variant
    ]


def matching(runs: Sequence[LoadResult], protocol: str, **fields: Any) -> list[LoadResult]:
    """The runs of `protocol` whose other fields have the given values, in suite order
    (nan matches nan: `coalesce_ms=DEFAULT` is a run with the server's default)."""
    return [
        run
        for run in runs
        if run.protocol == protocol and all(_same(getattr(run, k), v) for k, v in fields.items())
    ]


def _same(value: Any, wanted: Any) -> bool:
    if isinstance(wanted, float) and math.isnan(wanted):
        return isinstance(value, float) and math.isnan(value)
    return bool(value == wanted)


def repeats(
    results: dict[str, Any], group: str, protocol: str, variant: str = "", **fields: Any
) -> list[LoadResult]:
    """The repeats of one scenario of a group, in the order they ran."""
    return list(numbered_repeats(results, group, protocol, variant, **fields).values())


def numbered_repeats(
    results: dict[str, Any], group: str, protocol: str, variant: str = "", **fields: Any
) -> dict[int, LoadResult]:
    """The repeats of one scenario of a group by their number (a failed one is missing)."""
    runs = sorted(_runs(results, group, variant), key=lambda pair: pair[0])
    return {n: r for n, r in runs if matching([r], protocol, **fields)}


def sweep_knees(results: dict[str, Any]) -> dict[str, Knee]:
    """The knee of each server in the rate sweep."""
    runs = [r for _, r in _runs(results, "rate")]
    return {
        protocol: knee([r for r in runs if r.protocol == protocol])
        for protocol in sorted({r.protocol for r in runs})
    }


def medians(samples: Sequence[Sample]) -> dict[str, float]:
    """Each value's median over the samples (nan where a sample has nan)."""
    keys = samples[0].values.keys() if samples else ()
    return {k: statistics.median(s.values[k] for s in samples) for k in keys}


def judge(
    samples: Sequence[Sample], holds: Callable[[Values], bool]
) -> tuple[str, dict[str, float]]:
    """The verdict rule of the module docstring; also the medians it was judged on."""
    if not samples:
        return NOT_MEASURED, {}
    counted = [s for s in samples if not s.harness_bound]
    if not counted or len(counted) < math.ceil(2 * len(samples) / 3):
        return BOUND, medians(samples)
    middle = medians(counted)
    each = [holds(s.values) for s in counted]
    if holds(middle) and all(each):
        return MET, middle
    if not holds(middle) and not any(each):
        return MISSED, middle
    return UNSTABLE, middle


def _target(
    key: str, goal: str, samples: Sequence[Sample], holds: Callable[[Values], bool]
) -> Target:
    verdict, middle = judge(samples, holds)
    counted = [s for s in samples if not s.harness_bound] or list(samples)
    ranges = {
        k: (min(s.values[k] for s in counted), max(s.values[k] for s in counted)) for k in middle
    }
    held = [None if s.harness_bound else holds(s.values) for s in samples]
    return Target(key, goal, verdict, middle, ranges, samples, held)


def _paired(
    ours: Mapping[int, LoadResult], theirs: Mapping[int, LoadResult], values: Callable[..., Values]
) -> list[Sample]:
    """One sample per round from the two servers' runs of that round; a round in which either
    run is missing (it failed) gives none."""
    return [
        Sample(values(ours[n], theirs[n]), ours[n].harness_bound or theirs[n].harness_bound)
        for n in sorted(ours.keys() & theirs.keys())
    ]


def _tcp_200x5(results: dict[str, Any]) -> Target:
    goal = "0 lost, µs/delivery < assignment's, p99 < half its p99"

    def values(tcp: LoadResult, base: LoadResult) -> Values:
        return {
            "p99_ms": tcp.p99_ms,
            "base_p99_ms": base.p99_ms,
            "lost": float(tcp.lost + tcp.unsent),
            "cpu_us": tcp.server_cpu_us_per_delivery,
            "base_cpu_us": base.server_cpu_us_per_delivery,
        }

    def holds(v: Values) -> bool:
        return (
            v["lost"] == 0
            and v["cpu_us"] < v["base_cpu_us"]
            and v["p99_ms"] < TCP_P99_SHARE * v["base_p99_ms"]
        )

    samples = _paired(
        numbered_repeats(results, "targets", "tcp", clients=200, rate=5, coalesce_ms=DEFAULT),
        numbered_repeats(results, "targets", "assignment", clients=200, rate=5),
        values,
    )
    return _target("tcp-200x5", goal, samples, holds)


def _tcp_200x50(results: dict[str, Any]) -> Target:
    goal = (
        f"{KEEP_UP:.0%} delivered, 0 lost/dropped, p99 < {PEAK_P99_MS:g} ms, "
        f"µs <= {PEAK_CPU_SHARE:g}x assignment's"
    )

    def values(tcp: LoadResult, base: LoadResult) -> Values:
        return {
            "delivered": tcp.received / tcp.expected if tcp.expected else math.nan,
            "lost": float(tcp.lost + tcp.unsent + tcp.too_slow_seen),
            "p99_ms": tcp.p99_ms,
            "cpu_us": tcp.server_cpu_us_per_delivery,
            "base_cpu_us": base.server_cpu_us_per_delivery,
            "tcp": tcp.deliveries_per_s,
            "base": base.deliveries_per_s,
            "ratio": tcp.deliveries_per_s / base.deliveries_per_s,
        }

    def holds(v: Values) -> bool:
        return (
            v["delivered"] >= KEEP_UP
            and v["lost"] == 0
            and v["p99_ms"] < PEAK_P99_MS
            and v["cpu_us"] <= PEAK_CPU_SHARE * v["base_cpu_us"]
        )

    samples = _paired(
        numbered_repeats(results, "peak", "tcp"),
        numbered_repeats(results, "peak", "assignment"),
        values,
    )
    return _target("tcp-200x50", goal, samples, holds)


def _tcp_no_coalescing(results: dict[str, Any]) -> Target:
    goal = f"p99 < {NO_COALESCING_P99_MS:g} ms with --coalesce-ms 0"
    samples = [
        Sample({"p99_ms": r.p99_ms}, r.harness_bound)
        for r in repeats(results, "targets", "tcp", clients=200, rate=5, coalesce_ms=0.0)
    ]
    return _target("tcp-no-coalescing", goal, samples, lambda v: v["p99_ms"] < NO_COALESCING_P99_MS)


def _udp_raw(results: dict[str, Any]) -> Target:
    goal = f"loss < {UDP_RAW_LOSS_PCT:g} %, p99 < {UDP_RAW_P99_MS:g} ms"
    samples = [
        Sample({"loss_pct": r.loss_pct, "p99_ms": r.p99_ms}, r.harness_bound)
        for r in repeats(results, "targets", "udp-raw", clients=100, rate=10)
    ]
    return _target(
        "udp-raw-100x10",
        goal,
        samples,
        lambda v: v["loss_pct"] < UDP_RAW_LOSS_PCT and v["p99_ms"] < UDP_RAW_P99_MS,
    )


def _udp_reliable(results: dict[str, Any]) -> Target:
    budget = RTO_BUDGET * RTO_MS
    goal = f"0 lost, p99 <= {RTO_BUDGET} retransmission timeouts ({budget:g} ms)"
    samples = [
        Sample({"lost": float(r.lost), "p99_ms": r.p99_ms}, r.harness_bound)
        for r in repeats(results, "lossy", "udp-reliable", link="netns 5% loss")
    ]
    return _target(
        "udp-reliable-5pct",
        goal,
        samples,
        lambda v: v["lost"] == 0 and math.isfinite(v["p99_ms"]) and v["p99_ms"] <= budget,
    )


def _packets_lossy(results: dict[str, Any], loss: int) -> Target:
    link = f"netns {loss}% loss"
    ours = numbered_repeats(results, "lossy", "udp-reliable-packets", link=link)
    tcp = numbered_repeats(results, "lossy", "tcp", link=link)
    key = f"udp-packets-lossy-{loss}"
    if not tcp:
        samples = [Sample({"lost": float(r.lost), "p99_ms": r.p99_ms}, r.harness_bound)
                   for r in ours.values()]  # fmt: skip
        goal = "0 lost (no TCP run on the same link to hold p99 against)"
        return _target(key, goal, samples, lambda v: v["lost"] == 0)

    def values(udp: LoadResult, base: LoadResult) -> Values:
        return {"lost": float(udp.lost), "p99_ms": udp.p99_ms, "base_p99_ms": base.p99_ms}

    def holds(v: Values) -> bool:
        return v["lost"] == 0 and v["p99_ms"] <= LOSSY_TCP_SHARE * v["base_p99_ms"]

    goal = f"0 lost, p99 <= {LOSSY_TCP_SHARE:g}x TCP's on the same link"
    return _target(key, goal, _paired(ours, tcp, values), holds)


def _packets_reliable_cost(results: dict[str, Any]) -> Target:
    goal = (
        f"µs/delivery <= {RELIABLE_CPU_SHARE:g}x raw packets', "
        f"<= {ACKS_PER_PACKET:g} acks per packet"
    )

    def values(reliable: LoadResult, raw: LoadResult) -> Values:
        return {
            "cpu_us": reliable.server_cpu_us_per_delivery,
            "base_cpu_us": raw.server_cpu_us_per_delivery,
            "acks": reliable.acks_per_packet,
        }

    def holds(v: Values) -> bool:
        return v["cpu_us"] <= RELIABLE_CPU_SHARE * v["base_cpu_us"] and v["acks"] <= ACKS_PER_PACKET

    samples = _paired(
        numbered_repeats(results, "targets", "udp-reliable-packets", clients=100, rate=5),
        numbered_repeats(results, "targets", "udp-raw-packets", clients=100, rate=5),
        values,
    )
    return _target("udp-packets-reliable-cost", goal, samples, holds)


def _packets_raw_200x5(results: dict[str, Any]) -> Target:
    goal = f"0 lost, µs/delivery <= {RAW_CPU_SHARE:g}x TCP's, p99 <= TCP's"

    def values(udp: LoadResult, tcp: LoadResult) -> Values:
        return {
            "lost": float(udp.lost),
            "cpu_us": udp.server_cpu_us_per_delivery,
            "base_cpu_us": tcp.server_cpu_us_per_delivery,
            "p99_ms": udp.p99_ms,
            "base_p99_ms": tcp.p99_ms,
        }

    def holds(v: Values) -> bool:
        return (
            v["lost"] == 0
            and v["cpu_us"] <= RAW_CPU_SHARE * v["base_cpu_us"]
            and v["p99_ms"] <= v["base_p99_ms"]
        )

    samples = _paired(
        numbered_repeats(results, "targets", "udp-raw-packets", clients=200, rate=5),
        numbered_repeats(results, "targets", "tcp", clients=200, rate=5, coalesce_ms=DEFAULT),
        values,
    )
    return _target("udp-packets-raw-200x5", goal, samples, holds)


def _packets_reliable_clean(results: dict[str, Any], clients: int) -> Target:
    goal = f">= {CLEAN_DELIVERED:.0%} delivered, p99 < {KEEP_UP_P99_MS:g} ms"
    samples = [
        Sample(
            {"delivered": r.received / r.expected if r.expected else 0.0, "p99_ms": r.p99_ms},
            r.harness_bound,
        )
        for r in repeats(
            results, "targets", "udp-reliable-packets", clients=clients, rate=5, link="loopback"
        )
    ]
    return _target(
        f"udp-packets-reliable-{clients}x5",
        goal,
        samples,
        lambda v: v["delivered"] >= CLEAN_DELIVERED and v["p99_ms"] < KEEP_UP_P99_MS,
    )


def _packets_saturation(results: dict[str, Any]) -> Target:
    goal = (
        f"at 2x the load it keeps up with >= {SATURATION_SHARE:.0%} of the best deliveries/s at 1x"
    )
    protocol = "udp-reliable-packets"
    rates = sorted({r.rate for _, r in _runs(results, "packet-saturation")})
    at = {
        rate: numbered_repeats(results, "packet-saturation", protocol, rate=rate)
        for rate in rates[-2:]
    }
    samples: list[Sample] = []
    if len(at) == 2:
        at_1x, at_2x = at.values()
        best = max(r.deliveries_per_s for r in at_1x.values())

        def values(one: LoadResult, two: LoadResult) -> Values:
            return {
                "peak": best,
                "past": two.deliveries_per_s,
                "at_2x": two.deliveries_per_s / best,
                "p99_ms": two.p99_ms,
            }

        samples = _paired(at_1x, at_2x, values)
    return _target(
        "udp-packets-saturation", goal, samples, lambda v: v["at_2x"] >= SATURATION_SHARE
    )


def _tcp_saturation(results: dict[str, Any]) -> Target:
    goal = (
        f"0 dropped, 0 lost, peak < {SATURATION_RSS_MB:g} MB, "
        f"at 2x >= {SATURATION_KEPT:.0%} of the best at 200 x 50"
    )
    at_1x = numbered_repeats(results, "saturation", "tcp", clients=200, rate=50)
    best = max((r.deliveries_per_s for r in at_1x.values()), default=math.nan)

    def values(one: LoadResult, two: LoadResult) -> Values:
        return {
            "dropped": float(one.too_slow_seen + two.too_slow_seen),
            "lost": float(one.lost + two.lost),
            "rss_mb": max(one.server_peak_rss_mb, two.server_peak_rss_mb),
            "at_2x": two.deliveries_per_s / best,
        }

    def holds(v: Values) -> bool:
        return (
            v["dropped"] == 0
            and v["lost"] == 0
            and v["rss_mb"] < SATURATION_RSS_MB
            and v["at_2x"] >= SATURATION_KEPT
        )

    at_2x = numbered_repeats(results, "saturation", "tcp", clients=200, rate=100)
    return _target("tcp-saturation", goal, _paired(at_1x, at_2x, values), holds)


def _overload_samples(results: dict[str, Any], case: str, keys: Sequence[str]) -> list[Sample]:
    """One sample per repeat of an overload case, with the figures (`keys`) its target reads;
    a latency nobody measured (no delivery) counts as infinite."""

    def figures(run: Mapping[str, Any]) -> dict[str, float]:
        every = {
            "seconds": run["seconds"],
            "welcome_ms": run["welcome_ms"],
            "dropped": run["dropped"],
            "p99_ms": run["p99_ms"],
            "rss_mb": run["rss_peak_mb"],
            "rss_back_mb": run["rss_end_mb"] - run["rss_start_mb"],
        }
        return {k: math.inf if every[k] is None else float(every[k]) for k in keys}

    runs = (run for run in results.get("overload", []) if run["case"] == case)
    return [Sample(figures(run), harness_bound=False) for run in runs]


def _tcp_closing(results: dict[str, Any]) -> Target:
    goal = (
        f"closed <= {CLOSE_S:g} s, newcomer welcomed <= {WELCOME_MS:g} ms, "
        f"memory back within {MEMORY_BACK_MB:g} MB"
    )
    return _target(
        "tcp-closing",
        goal,
        _overload_samples(results, "closing", ("seconds", "welcome_ms", "rss_back_mb")),
        lambda v: (
            v["seconds"] <= CLOSE_S
            and v["welcome_ms"] <= WELCOME_MS
            and v["rss_back_mb"] <= MEMORY_BACK_MB
        ),
    )


def _tcp_non_readers(results: dict[str, Any]) -> Target:
    goal = (
        f"0 dropped, observers' p99 < {KEEP_UP_P99_MS:g} ms, "
        f"memory back within {MEMORY_BACK_MB:g} MB"
    )
    return _target(
        "tcp-non-readers",
        goal,
        _overload_samples(results, "non-readers", ("dropped", "p99_ms", "rss_back_mb")),
        lambda v: (
            v["dropped"] == 0
            and v["p99_ms"] < KEEP_UP_P99_MS
            and v["rss_back_mb"] <= MEMORY_BACK_MB
        ),
    )


def _tcp_history_non_readers(results: dict[str, Any]) -> Target:
    goal = f"peak < {SATURATION_RSS_MB:g} MB, an observer's p99 < {KEEP_UP_P99_MS:g} ms"
    return _target(
        "tcp-history-non-readers",
        goal,
        _overload_samples(results, "history", ("rss_mb", "p99_ms")),
        lambda v: v["rss_mb"] < SATURATION_RSS_MB and v["p99_ms"] < KEEP_UP_P99_MS,
    )


def evaluate(results: dict[str, Any]) -> list[Target]:
    return [
        _tcp_200x5(results),
        _tcp_200x50(results),
        _tcp_no_coalescing(results),
        _udp_raw(results),
        _udp_reliable(results),
        _tcp_saturation(results),
    ]


def evaluate_overload(results: dict[str, Any]) -> list[Target]:
    return [_tcp_closing(results), _tcp_non_readers(results), _tcp_history_non_readers(results)]


def evaluate_packets(results: dict[str, Any]) -> list[Target]:
    return [
        *(_packets_lossy(results, loss) for loss in PACKET_LOSSES),
        _packets_reliable_cost(results),
        _packets_raw_200x5(results),
        _packets_reliable_clean(results, 100),
        _packets_reliable_clean(results, 200),
        _packets_saturation(results),
    ]


def _ms(value: float) -> str:
    """A latency with as many digits as make sense for its size."""
    if not math.isfinite(value):
        return str(value)
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def _mega(value: float) -> str:
    return f"{value / 1e6:.2f} M"


_SHOWN: dict[str, tuple[str, Callable[[float], str], str]] = {
    "dropped": ("dropped", "{:.0f}".format, ""),
    "seconds": ("closed in", "{:.2f}".format, " s"),
    "welcome_ms": ("welcome", _ms, " ms"),
    "rss_back_mb": ("memory back within", "{:.0f}".format, " MB"),
    "rss_mb": ("peak", "{:.0f}".format, " MB"),
    "at_2x": ("at 2x", "{:.0%}".format, ""),
    "p99_ms": ("p99", _ms, " ms"),
    "base_p99_ms": ("vs", _ms, " ms"),
    "delivered": ("delivered", "{:.1%}".format, ""),
    "lost": ("lost", "{:.0f}".format, ""),
    "loss_pct": ("loss", "{:.3f}".format, " %"),
    "cpu_us": ("", "{:.2f}".format, " µs"),
    "base_cpu_us": ("vs", "{:.2f}".format, " µs"),
    "tcp": ("TCP", _mega, "/s"),
    "base": ("vs", _mega, "/s"),
    "ratio": ("", "{:.2f}".format, "x"),
    "acks": ("acks/packet", "{:.2f}".format, ""),
    "peak": ("peak", _mega, "/s"),
    "past": ("past saturation", _mega, "/s"),
}


def _shown(key: str, value: float) -> str:
    label, fmt, unit = _SHOWN[key]
    return f"{label} {fmt(value)}{unit}".strip()


def describe(target: Target) -> str:
    """The medians, each with its range over the counted repeats: `p99 17.8 ms [17.3-18.9]`."""
    parts = []
    for key, value in target.medians.items():
        fmt = _SHOWN[key][1]
        low, high = target.ranges[key]
        span = "" if fmt(low) == fmt(high) else f" [{fmt(low)}-{fmt(high)}]"
        parts.append(_shown(key, value) + span)
    return ", ".join(parts)


def describe_repeats(target: Target) -> str:
    """Each repeat's values and whether it held: what an unstable verdict is printed with."""
    out = []
    for number, (sample, held) in enumerate(zip(target.samples, target.held, strict=True), 1):
        shown = ", ".join(_shown(k, v) for k, v in sample.values.items())
        state = "harness-bound" if held is None else "held" if held else "failed"
        out.append(f"run {number}: {shown} ({state})")
    return "; ".join(out)


def format_targets(targets: Sequence[Target]) -> str:
    lines = []
    for t in targets:
        measured = describe(t)
        lines.append(
            f"{t.verdict.upper():>14}  {t.key}: {t.goal}" + (f"; {measured}" if measured else "")
        )
        if t.verdict in (UNSTABLE, BOUND):
            lines.append(" " * 16 + describe_repeats(t))
    return "\n".join(lines)
