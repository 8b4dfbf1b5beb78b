"""Turn benchmarks/results/latest.json into report/REPORT.md and its figures.

Contract:
    generate(results_path, out_dir, provenance) -> Path of the REPORT.md written
    provenance(results_path) -> Provenance    which commit and file the report comes from
    build_context(results, figures, provenance) -> {placeholder: text}
    render(template, context) -> str      `{{name}}` replaced; an unknown name raises KeyError

The prose lives in report/template.md; every measured number in it is a placeholder filled from
the results file here, so the report cannot disagree with the data it shows. Each fact is
filled in one place of the template; other sections point to it. A headline figure is the
median of the repeats of its run with the range beside it; a run the harness may have limited
is marked harness-bound wherever it appears. The calibration of the assignment's server
against the assignment's own example is a by-hand measurement (the example is not part of the
project), so it comes from benchmarks/calibration.json.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import REPEATED, git_output, load_results, read_results
from benchmarks.measure import HARNESS_CPU_LIMIT_PCT, HARNESS_LAG_LIMIT_MS, LoadResult
from benchmarks.servers import REPO_ROOT
from benchmarks.tables import table
from benchmarks.targets import (
    DEFAULT,
    KEEP_UP,
    KEEP_UP_P99_MS,
    MET,
    Target,
    describe,
    describe_repeats,
    evaluate,
    matching,
    repeats,
    sweep_knees,
)
from report.plots import make_plots
from tcp.server import DEFAULT_COALESCE_MS

TEMPLATE = Path(__file__).resolve().parent / "template.md"
CALIBRATION = REPO_ROOT / "benchmarks" / "calibration.json"
CLUSTER_FILE = "cluster.json"
"""`make bench-cluster`'s results, kept beside the suite's."""
NA = "n/a"
BOUND_MARK = "†"
"""Marks a figure from harness-bound runs, so that a number in a sentence stays readable."""
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z0-9_]+)\s*\}\}")


@dataclass(frozen=True)
class Provenance:
    """Where the report comes from: the results file, and whether it and the tree are
    committed (a report from uncommitted data cannot be reproduced from the repository)."""

    results_path: str
    results_commit: str
    head: str
    clean: bool


def provenance(results_path: Path) -> Provenance:
    """The commit that last changed the results file, HEAD, and whether anything but the
    report's own output is uncommitted."""
    try:
        shown = str(results_path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        shown = str(results_path)
    # Each line is two status letters, a space and the path (the first one's leading space is
    # stripped along with the output's).
    paths = [
        line[2:].strip()
        for line in git_output("status", "--porcelain", "--untracked-files=no").splitlines()
    ]
    changes = [p for p in paths if not _generated(p)]
    return Provenance(
        results_path=shown,
        results_commit=git_output("log", "-1", "--format=%h", "--", shown),
        head=git_output("rev-parse", "--short", "HEAD"),
        clean=not changes and bool(git_output("rev-parse", "HEAD")),
    )


def _generated(path: str) -> bool:
    """What `make report` writes: REPORT.md and the figures beside it."""
    return path == "report/REPORT.md" or (path.startswith("report/") and path.endswith(".png"))


def render(template: str, context: dict[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: context[m.group(1)], template)


def ms(value: float | None) -> str:
    """A latency in ms, with as many decimals as make sense for its size."""
    if value is None or math.isnan(value):
        return NA
    if math.isinf(value):
        return "∞"
    if value < 10:
        return f"{value:.2f}"
    if value < 100:
        return f"{value:.1f}"
    return f"{value:,.0f}"


def num(value: float | None, decimals: int = 0) -> str:
    if value is None or math.isnan(value):
        return NA
    return f"{value:,.{decimals}f}"


def spread(runs: Sequence[LoadResult], attr: str, fmt: Callable[[float], str]) -> str:
    """The median over the runs the harness did not limit, with its range: `17.8 [17.3-18.9]`;
    marked harness-bound when fewer than two thirds of the runs count."""
    if not runs:
        return NA
    counted = [r for r in runs if not r.harness_bound]
    bound = len(counted) < math.ceil(2 * len(runs) / 3) or not counted
    use = runs if bound else counted
    values = [getattr(r, attr) for r in use]
    text = fmt(statistics.median(values))
    low, high = fmt(min(values)), fmt(max(values))
    if len(values) > 1 and low != high:
        text += f" [{low}-{high}]"
    return text + (BOUND_MARK if bound else "")


def median_run(runs: Sequence[LoadResult]) -> LoadResult | None:
    """The run with the median p99 among those the harness did not limit (all if none)."""
    counted = [r for r in runs if not r.harness_bound] or list(runs)
    if not counted:
        return None
    ordered = sorted(counted, key=lambda r: math.inf if math.isnan(r.p99_ms) else r.p99_ms)
    return ordered[len(ordered) // 2]


def _run_table(runs: Sequence[tuple[str, LoadResult]], extra: Sequence[str] = ()) -> str:
    headers = [
        "run", "deliv/s offered", "deliv/s", "p50 ms", "p99 ms", "lost %", "server µs/deliv",
        "server CPU %", "harness CPU %", "lag p99 ms",
    ]  # fmt: skip
    if "retx" in extra:
        headers.append("retransmitted")
    if "slow" in extra:
        headers += ["slow reader dropped", "unsent"]
    rows = []
    for name, r in runs:
        row = [
            name + (" **harness-bound**" if r.harness_bound else ""),
            num(r.offered_deliveries_per_s),
            num(r.deliveries_per_s),
            ms(r.p50_ms),
            ms(r.p99_ms),
            num(r.loss_pct, 2),
            num(r.server_cpu_us_per_delivery, 2),
            num(r.server_cpu_pct),
            num(r.harness_cpu_pct),
            ms(r.send_lag_p99_ms),
        ]
        if "retx" in extra:
            row.append(str(r.retransmitted))
        if "slow" in extra:
            dropped = "yes" if r.slow_dropped else "no" if r.slow_readers else "-"
            row += [dropped, str(r.unsent)]
        rows.append(row)
    return table(rows, headers, markdown=True)


def _group_table(results: dict[str, Any], group: str, extra: Sequence[str] = ()) -> str:
    runs = load_results(results, group)
    return _run_table(runs, extra) if runs else "_Not measured in this results file._"


_VERDICT = {
    "met": "**met**",
    "missed": "**missed**",
    "unstable": "**unstable**",
    "harness-bound": "harness-bound",
    "not measured": "not measured",
}


def _targets_table(targets: Sequence[Target]) -> str:
    """Narrow enough for one screen: the measured values go in the notes under it."""
    rows = [[t.key, _VERDICT[t.verdict], t.goal] for t in targets]
    return table(rows, ["target", "verdict", "goal"], markdown=True)


def _target_notes(targets: Sequence[Target]) -> str:
    """One short note per target that was not plainly met: its repeats, as they were."""
    notes = [
        f"- `{t.key}` ({t.verdict}): {describe_repeats(t)}."
        for t in targets
        if t.verdict != MET and t.samples
    ]
    return "\n".join(notes)


def code_lines(path: Path) -> int:
    """Lines that are neither blank nor comments: what a reader must read."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return sum(1 for line in lines if line.strip() and not line.strip().startswith("#"))


def _calibration() -> dict[str, str]:
    """The by-hand calibration's figures, or n/a where the file is missing."""
    keys = ("date", "seed_us", "ours_us", "seed_peak", "ours_peak", "us_gap", "peak_gap", "runs")
    if not CALIBRATION.exists():
        return {f"cal_{k}": NA for k in keys}
    data = json.loads(CALIBRATION.read_text(encoding="utf-8"))
    seed, ours = data["example_server"], data["assignment_server"]
    return {
        "cal_date": data["date"],
        "cal_runs": str(data["repeats"]),
        "cal_seed_us": f"{seed['us_per_delivery_200x5']:.2f}",
        "cal_ours_us": f"{ours['us_per_delivery_200x5']:.2f}",
        "cal_seed_peak": f"{seed['peak_deliveries_per_s'] / 1e6:.2f} M",
        "cal_ours_peak": f"{ours['peak_deliveries_per_s'] / 1e6:.2f} M",
        "cal_us_gap": f"{ours['us_per_delivery_200x5'] / seed['us_per_delivery_200x5'] - 1:+.0%}",
        "cal_peak_gap": f"{ours['peak_deliveries_per_s'] / seed['peak_deliveries_per_s'] - 1:+.0%}",
    }


def _provenance_text(meta: dict[str, Any], origin: Provenance) -> str:
    commit = (meta.get("git_commit") or "unknown")[:10]
    text = (
        f"Generated from `{origin.results_path}`"
        + (f" (committed in {origin.results_commit})" if origin.results_commit else "")
        + f" at commit {origin.head or 'unknown'}; the results were measured at commit {commit}"
    )
    if meta.get("git_dirty"):
        text += " **with uncommitted changes**"
    if not origin.clean:
        text += (
            ". **Draft: the working tree had uncommitted changes when this report was made, "
            "so it cannot be reproduced from the repository as it stands**"
        )
    return text + "."


def _at(results: dict[str, Any], protocol: str, **fields: Any) -> list[LoadResult]:
    """Runs of a protocol at a load, from every group that has it."""
    return matching([r for _, r in load_results(results)], protocol, **fields)


def build_context(
    results: dict[str, Any],
    figures: dict[str, Path],
    origin: Provenance,
    cluster: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Every placeholder of the template, each filled by the part of the report it belongs to."""
    return {
        **_meta_context(results, origin),
        **_targets_context(results),
        **_headline_context(results),
        **_light_context(results),
        **_code_context(),
        **_knee_context(results),
        **_ablation_context(results),
        **_coalesce_context(results),
        **_capacity_context(results),
        **_tables_context(results),
        **_figures_context(figures),
        **cluster_context(cluster),
        **_calibration(),
    }


def _meta_context(results: dict[str, Any], origin: Provenance) -> dict[str, str]:
    """Where and how the results were measured, and what the run left out."""
    meta = results["meta"]
    every_run = [r for _, r in load_results(results)]
    repeat_counts = {run.get("repeat", 1) for run in results["runs"] if run["group"] in REPEATED}
    notes = "".join(
        f"\n> The run `{f['name']}` ({f['group']}) failed and is missing: {f['error']}\n"
        for f in results.get("failed", [])
    ) + "".join(
        f"\n> The `{s['group']}` runs were skipped on the machine that made this file: "
        f"{s['reason']}.\n"
        for s in results.get("skipped", [])
    )
    floor = meta.get("floor")
    return {
        "provenance": _provenance_text(meta, origin),
        "suite": meta["suite"],
        "suite_command": "make bench-full" if meta["suite"] == "full" else "make bench",
        "date": meta["date"],
        "python": f"{meta['implementation']} {meta['python']}",
        "cpu": meta["machine"]["cpu"],
        "cores": str(meta["machine"]["cores"]),
        "load_before": f"{meta['load_average_before'][0]:.2f}",
        "load_after": f"{meta['load_average_after'][0]:.2f}",
        "elapsed": num(meta["elapsed_s"]),
        "keep_up_pct": f"{KEEP_UP * 100:g}",
        "keep_up_p99": f"{KEEP_UP_P99_MS:g}",
        "harness_cpu_limit": f"{HARNESS_CPU_LIMIT_PCT:g}",
        "harness_lag_limit": f"{HARNESS_LAG_LIMIT_MS:g}",
        "bound_runs": f"{sum(r.harness_bound for r in every_run)} of the {len(every_run)} runs",
        "repeats": str(max(repeat_counts, default=1)),
        "notes": notes,
        "floor_tcp_us": num(floor["tcp_send_us"], 1) if floor else NA,
        "coalesce_default": f"{DEFAULT_COALESCE_MS:g}",
    }


def _targets_context(results: dict[str, Any]) -> dict[str, str]:
    """The targets table, each target's measured values for its note, and the unplain ones."""
    targets = evaluate(results)
    ctx = {
        "targets_table": _targets_table(targets),
        "target_notes": _target_notes(targets),
    }
    for t in targets:
        ctx["target_" + t.key.replace("-", "_")] = describe(t) or NA
    return ctx


def _headline_context(results: dict[str, Any]) -> dict[str, str]:
    """The repeated runs' medians and ranges, and what the floor says of TCP's sends."""
    tcp5 = repeats(results, "targets", "tcp", clients=200, rate=5, coalesce_ms=DEFAULT)
    tcp_peak = repeats(results, "peak", "tcp")
    ctx: dict[str, str] = {}
    for key, runs in (
        ("tcp5", tcp5),
        ("nocoal", repeats(results, "targets", "tcp", clients=200, rate=5, coalesce_ms=0.0)),
        ("base5", repeats(results, "targets", "assignment", clients=200, rate=5)),
        ("raw10", repeats(results, "targets", "udp-raw", clients=100, rate=10)),
        ("rel5", repeats(results, "targets", "udp-reliable", link="netns 5% loss")),
        ("tcppeak", tcp_peak),
        ("basepeak", repeats(results, "peak", "assignment")),
    ):
        ctx[f"{key}_p50"] = spread(runs, "p50_ms", ms)
        ctx[f"{key}_p99"] = spread(runs, "p99_ms", ms)
        ctx[f"{key}_us"] = spread(runs, "server_cpu_us_per_delivery", _us)
        ctx[f"{key}_loss"] = spread(runs, "loss_pct", _us)
        ctx[f"{key}_deliv"] = spread(runs, "deliveries_per_s", num)
        ctx[f"{key}_harness_us"] = spread(runs, "harness_cpu_us_per_delivery", _us)
        ctx[f"{key}_harness_cpu"] = spread(runs, "harness_cpu_pct", num)
        ctx[f"{key}_srv_cpu"] = spread(runs, "server_cpu_pct", num)
        ctx[f"{key}_lag"] = spread(runs, "send_lag_p99_ms", ms)
    ctx["tcppeak_offered"] = num(tcp_peak[0].offered_deliveries_per_s) if tcp_peak else NA
    floor = results["meta"].get("floor")
    ctx["tcp5_frames"] = (
        num(floor["tcp_send_us"] / statistics.median(_cpu_us(tcp5)), 1) if floor and tcp5 else NA
    )
    return ctx


def _us(value: float) -> str:
    return num(value, 2)


def _cpu_us(runs: Sequence[LoadResult]) -> list[float]:
    return [r.server_cpu_us_per_delivery for r in runs]


def _light_context(results: dict[str, Any]) -> dict[str, str]:
    """All four servers at the one load where all of them kept up: the percentile plot's."""
    light = _common_load(results)
    ctx = {"pct_load": f"{light} clients × 5 msg/s" if light else NA}
    for key, protocol in (
        ("tcp", "tcp"), ("base", "assignment"), ("raw", "udp-raw"), ("rel", "udp-reliable"),
    ):  # fmt: skip
        runs = (
            _at(results, protocol, clients=light, rate=5, link="loopback", nagle=False)
            if light
            else []
        )
        ctx[f"light_{key}_us"] = spread(runs, "server_cpu_us_per_delivery", _us)
        ctx[f"light_{key}_p99"] = spread(runs, "p99_ms", ms)
        ctx[f"light_{key}_p50"] = spread(runs, "p50_ms", ms)
    lossless = repeats(results, "lossy", "udp-reliable", link="netns 0% loss")
    ctx["rel0_p99"] = spread(lossless, "p99_ms", ms)
    raw5 = repeats(results, "lossy", "udp-raw", link="netns 5% loss")
    ctx["raw5_loss"] = spread(raw5, "loss_pct", _us)
    return ctx


def _code_context() -> dict[str, str]:
    """What UDP's reliability and sessions cost in code, against the whole TCP server."""
    tcp_code = code_lines(REPO_ROOT / "tcp" / "server.py")
    reliable_code = code_lines(REPO_ROOT / "common" / "protocol" / "reliable.py")
    udp_code = code_lines(REPO_ROOT / "udp" / "server.py") + code_lines(
        REPO_ROOT / "udp" / "session.py"
    )
    return {
        "tcp_lines": str(tcp_code),
        "reliable_lines": str(reliable_code),
        "udp_lines": str(udp_code),
        "udp_code_ratio": f"{(reliable_code + udp_code) / tcp_code:.1f}",
    }


def _knee_context(results: dict[str, Any]) -> dict[str, str]:
    knees = sweep_knees(results)
    ctx: dict[str, str] = {}
    for key, protocol in (("tcp", "tcp"), ("base", "assignment")):
        k = knees.get(protocol)
        ctx[f"{key}_knee"] = (
            f"{k.knee_rate:g} msg/s per client ({num(k.knee_offered)} deliveries/s)"
            if k and k.knee_rate is not None
            else "none"
            if k
            else NA
        )
    return ctx


def _ablation_context(results: dict[str, Any]) -> dict[str, str]:
    """The slow reader's and Nagle's ablations."""
    slow = {name: r for name, r in load_results(results, "slow-reader")}
    with_slow, without = slow.get("tcp + 1 slow reader"), slow.get("tcp, no slow reader")
    base_slow = slow.get("assignment + 1 slow reader")
    nagle = {(r.clients, r.nagle): r for _, r in load_results(results, "nagle")}
    sizes = sorted({c for c, _ in nagle})
    on = nagle.get((sizes[0], True)) if sizes else None
    off = nagle.get((sizes[0], False)) if sizes else None
    return {
        "slow_tcp_dropped": (
            NA
            if with_slow is None
            else "was dropped"
            if with_slow.slow_dropped
            else "was not dropped"
        ),
        "slow_tcp_p99": ms(with_slow.p99_ms) if with_slow else NA,
        "slow_none_p99": ms(without.p99_ms) if without else NA,
        "slow_base_loss": num(base_slow.loss_pct, 1) if base_slow else NA,
        "slow_base_unsent": num(base_slow.unsent) if base_slow else NA,
        "nagle_clients": str(sizes[0]) if sizes else NA,
        "nagle_on_p99": ms(on.p99_ms) if on else NA,
        "nagle_off_p99": ms(off.p99_ms) if off else NA,
    }


def _coalesce_context(results: dict[str, Any]) -> dict[str, str]:
    """The writer's rest against what it buys: every TCP run of the `coalesce` group, with the
    default's and no rest's runs of `targets` and `peak`, at each load, by rest."""
    runs = [
        r
        for group in ("coalesce", "targets", "peak")
        for _, r in load_results(results, group)
        if r.protocol == "tcp" and r.slow_readers == 0 and not r.nagle
    ]
    floor = results["meta"].get("floor")
    by_point: dict[tuple[int, float, float], list[LoadResult]] = {}
    for r in runs:
        rest = DEFAULT_COALESCE_MS if math.isnan(r.coalesce_ms) else r.coalesce_ms
        by_point.setdefault((r.clients, r.rate, rest), []).append(r)
    rows = [
        [
            f"{clients} × {rate:g}" + (" (default)" if rest == DEFAULT_COALESCE_MS else ""),
            f"{rest:g}",
            spread(point, "p50_ms", ms),
            spread(point, "p99_ms", ms),
            spread(point, "server_cpu_us_per_delivery", _us),
            num(floor["tcp_send_us"] / statistics.median(_cpu_us(point)), 1) if floor else NA,
            spread(point, "server_cpu_pct", num),
            spread(point, "send_lag_p99_ms", ms),
        ]
        for (clients, rate, rest), point in sorted(by_point.items())
    ]
    headers = [
        "load", "rest ms", "p50 ms", "p99 ms", "server µs/deliv", "frames/send ≥", "server CPU %",
        "harness lag p99 ms",
    ]  # fmt: skip
    return {
        "table_coalesce": (
            table(rows, headers, markdown=True)
            if load_results(results, "coalesce")
            else "_Not measured in this results file._"
        )
    }


def _capacity_context(results: dict[str, Any]) -> dict[str, str]:
    capacity = results.get("capacity", [])
    cap = capacity[0] if capacity else None
    return {
        "cap_clients": num(cap["clients"]) if cap else NA,
        "cap_online": num(cap["online"]) if cap else NA,
        "cap_kib": num(cap["bytes_per_client"] / 1024, 1) if cap else NA,
        "cap_connect": num(cap["connect_seconds"], 1) if cap else NA,
    }


def _tables_context(results: dict[str, Any]) -> dict[str, str]:
    return {
        "table_targets_runs": _group_table(results, "targets"),
        "table_peak": _group_table(results, "peak"),
        "table_clients": _group_table(results, "clients"),
        "table_rate": _group_table(results, "rate"),
        "table_lossy": _group_table(results, "lossy", ("retx",)),
        "table_slow": _group_table(results, "slow-reader", ("slow",)),
        "table_nagle": _group_table(results, "nagle"),
        "table_threads": _group_table(results, "threads"),
    }


def _figures_context(figures: dict[str, Path]) -> dict[str, str]:
    return {
        f"fig_{key}": f"![{key}]({figures[key].name})"
        if key in figures
        else "_No data for this figure._"
        for key in ("percentiles", "latency", "throughput", "loss")
    }


_CLUSTER_KEYS = (
    "cluster_date", "cluster_commit", "cluster_duration", "cluster_cores", "cluster_room",
    "cluster_one_peak", "cluster_redis_peak", "cluster_two_peak", "cluster_one_p99",
    "cluster_redis_p99", "cluster_two_p99", "stream_events", "stream_us", "stream_ceiling",
    "stream_room_deliveries",
)  # fmt: skip


def cluster_context(cluster: dict[str, Any] | None) -> dict[str, str]:
    """Section 5's figures from `benchmarks.cluster`'s file: each set-up's most deliveries/s
    past saturation and p99 at the latency load, and what one stream carries at most."""
    missing = "_Not measured: run `make bench-cluster`._"
    if cluster is None:
        tables = ("table_cluster_saturation", "table_cluster_latency", "table_cluster_stream")
        return {key: NA for key in _CLUSTER_KEYS} | {key: missing for key in tables}
    meta, latency = cluster["meta"], cluster["latency"]
    peak = {s: max(r["deliveries_per_s"] for r in cluster["saturation"] if r["setup"] == s)
            for s in {r["setup"] for r in cluster["saturation"]}}  # fmt: skip
    p99 = {r["setup"]: r["p99_ms"] for r in latency}
    stream = max(cluster["stream"], key=lambda r: r["events_per_s"])
    room = latency[0]["clients"] if latency else 0
    return {
        "cluster_date": meta["date"],
        "cluster_commit": (meta.get("git_commit") or "unknown")[:10],
        "cluster_duration": f"{meta['duration_s']:g}",
        "cluster_cores": str(meta["machine"]["cores"]),
        "cluster_room": str(room),
        "cluster_one_peak": num(peak.get("one server")),
        "cluster_redis_peak": num(peak.get("one server + Redis")),
        "cluster_two_peak": num(peak.get("two servers + Redis")),
        "cluster_one_p99": ms(p99.get("one server")),
        "cluster_redis_p99": ms(p99.get("one server + Redis")),
        "cluster_two_p99": ms(p99.get("two servers + Redis")),
        "stream_events": num(stream["events_per_s"]),
        "stream_us": num(stream["redis_cpu_us_per_event"], 1),
        "stream_ceiling": num(stream["ceiling_events_per_s"]),
        "stream_room_deliveries": num(stream["ceiling_events_per_s"] * room),
        "table_cluster_saturation": _cluster_table(cluster["saturation"], _SATURATION_COLUMNS),
        "table_cluster_latency": _cluster_table(latency, _LATENCY_COLUMNS),
        "table_cluster_stream": _cluster_table(cluster["stream"], _STREAM_COLUMNS),
    }


_CLUSTER_COLUMNS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "setup": ("set-up", str),
    "clients": ("clients", str),
    "rate": ("msg/s each", "{:g}".format),
    "offered_deliveries_per_s": ("deliv/s offered", num),
    "deliveries_per_s": ("deliv/s", num),
    "lost_pct": ("lost %", _us),
    "refused_pct": ("refused %", _us),
    "p50_ms": ("p50 ms", ms),
    "p99_ms": ("p99 ms", ms),
    "max_ms": ("max ms", ms),
    "chat_cpu_pct": ("chat CPU %", num),
    "cpu_us_per_delivery": ("chat µs/deliv", _us),
    "publishers": ("publishers", str),
    "events_per_s": ("events/s", num),
    "redis_cpu_pct": ("Redis CPU %", num),
    "redis_cpu_us_per_event": ("Redis µs/event", _us),
    "ceiling_events_per_s": ("one core's events/s", num),
}
"""How each column of the cluster file is headed and shown ("chat" is servers and Redis)."""


_SATURATION_COLUMNS = (
    "setup", "clients", "rate", "offered_deliveries_per_s", "deliveries_per_s", "lost_pct",
    "refused_pct", "p99_ms", "chat_cpu_pct", "cpu_us_per_delivery",
)  # fmt: skip
_LATENCY_COLUMNS = ("setup", "p50_ms", "p99_ms", "max_ms", "cpu_us_per_delivery")
_STREAM_COLUMNS = (
    "publishers", "events_per_s", "redis_cpu_pct", "redis_cpu_us_per_event",
    "ceiling_events_per_s",
)  # fmt: skip


def _cluster_table(runs: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    rows = [[_CLUSTER_COLUMNS[c][1](run[c]) for c in columns] for run in runs]
    return table(rows, [_CLUSTER_COLUMNS[c][0] for c in columns], markdown=True)


def _common_load(results: dict[str, Any]) -> int | None:
    """The largest client count of the `clients` group at which all four servers ran and
    delivered at least KEEP_UP of what was offered: the load the percentile plot compares."""
    runs = [r for _, r in load_results(results, "clients")]
    protocols = {r.protocol for r in runs}
    if len(protocols) < 4:
        return None
    counts = sorted({r.clients for r in runs})
    good = [
        n
        for n in counts
        if all(
            any(
                r.clients == n and r.deliveries_per_s >= KEEP_UP * r.offered_deliveries_per_s
                for r in runs
                if r.protocol == p
            )
            for p in protocols
        )
    ]
    return max(good) if good else counts[0]


def generate(results_path: Path, out_dir: Path, origin: Provenance | None = None) -> Path:
    """The report from a results file and, beside it, benchmarks.cluster's CLUSTER_FILE (section
    5 says it was not measured when that file is missing)."""
    results = read_results(results_path)
    cluster_path = results_path.parent / CLUSTER_FILE
    cluster = read_results(cluster_path) if cluster_path.exists() else None
    light = _common_load(results)
    figures = make_plots(results, out_dir, light)
    context = build_context(results, figures, origin or provenance(results_path), cluster)
    text = render(TEMPLATE.read_text(encoding="utf-8"), context)
    report = out_dir / "REPORT.md"
    report.write_text(text, encoding="utf-8")
    return report
