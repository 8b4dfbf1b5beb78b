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
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import REPEATED, load_results, read_results
from benchmarks.measure import HARNESS_CPU_LIMIT_PCT, HARNESS_LAG_LIMIT_MS, LoadResult
from benchmarks.servers import REPO_ROOT
from benchmarks.tables import table
from benchmarks.targets import (
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

TEMPLATE = Path(__file__).resolve().parent / "template.md"
CALIBRATION = REPO_ROOT / "benchmarks" / "calibration.json"
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


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


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
        for line in _git("status", "--porcelain", "--untracked-files=no").splitlines()
    ]
    changes = [p for p in paths if not _generated(p)]
    return Provenance(
        results_path=shown,
        results_commit=_git("log", "-1", "--format=%h", "--", shown),
        head=_git("rev-parse", "--short", "HEAD"),
        clean=not changes and bool(_git("rev-parse", "HEAD")),
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
    rows = [[t.key, t.goal, _VERDICT[t.verdict], describe(t) or NA] for t in targets]
    return table(rows, ["target", "goal", "verdict", "median [range]"], markdown=True)


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
    results: dict[str, Any], figures: dict[str, Path], origin: Provenance
) -> dict[str, str]:
    meta = results["meta"]
    targets = evaluate(results)
    by_key = {t.key: t for t in targets}
    ctx: dict[str, str] = {
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
        "targets_table": _targets_table(targets),
        "target_notes": _target_notes(targets),
        "targets_summary": ", ".join(f"{t.key} {t.verdict}" for t in targets),
        **_calibration(),
    }
    every_run = [r for _, r in load_results(results)]
    ctx["bound_runs"] = (
        f"{sum(r.harness_bound for r in every_run)} of the {len(every_run)} load runs"
    )
    repeat_counts = {run.get("repeat", 1) for run in results["runs"] if run["group"] in REPEATED}
    ctx["repeats"] = str(max(repeat_counts, default=1))

    tcp5 = repeats(results, "targets", "tcp", clients=200, rate=5)
    base5 = repeats(results, "targets", "assignment", clients=200, rate=5)
    raw10 = repeats(results, "targets", "udp-raw", clients=100, rate=10)
    rel5 = repeats(results, "targets", "udp-reliable", link="netns 5% loss")
    tcp_peak = repeats(results, "peak", "tcp")
    base_peak = repeats(results, "peak", "assignment")
    for key, runs in (
        ("tcp5", tcp5), ("base5", base5), ("raw10", raw10), ("rel5", rel5),
        ("tcppeak", tcp_peak), ("basepeak", base_peak),
    ):  # fmt: skip
        ctx[f"{key}_p50"] = spread(runs, "p50_ms", ms)
        ctx[f"{key}_p99"] = spread(runs, "p99_ms", ms)
        ctx[f"{key}_us"] = spread(runs, "server_cpu_us_per_delivery", lambda v: num(v, 2))
        ctx[f"{key}_loss"] = spread(runs, "loss_pct", lambda v: num(v, 2))
        ctx[f"{key}_deliv"] = spread(runs, "deliveries_per_s", num)
        ctx[f"{key}_harness_us"] = spread(runs, "harness_cpu_us_per_delivery", lambda v: num(v, 2))
        ctx[f"{key}_harness_cpu"] = spread(runs, "harness_cpu_pct", num)
        ctx[f"{key}_lag"] = spread(runs, "send_lag_p99_ms", ms)
    ctx["tcppeak_offered"] = num(tcp_peak[0].offered_deliveries_per_s) if tcp_peak else NA
    sat = by_key["tcp-200x50"]
    ctx["peak_ratio"] = f"{sat.medians['ratio']:.2f}" if "ratio" in sat.medians else NA

    light = _common_load(results)
    ctx["pct_load"] = f"{light} clients × 5 msg/s" if light else NA
    for key, protocol in (
        ("tcp", "tcp"), ("base", "assignment"), ("raw", "udp-raw"), ("rel", "udp-reliable"),
    ):  # fmt: skip
        runs = (
            _at(results, protocol, clients=light, rate=5, link="loopback", nagle=False)
            if light
            else []
        )
        ctx[f"light_{key}_us"] = spread(runs, "server_cpu_us_per_delivery", lambda v: num(v, 2))
        ctx[f"light_{key}_p99"] = spread(runs, "p99_ms", ms)
        ctx[f"light_{key}_p50"] = spread(runs, "p50_ms", ms)
    lossless = repeats(results, "lossy", "udp-reliable", link="netns 0% loss")
    ctx["rel0_p99"] = spread(lossless, "p99_ms", ms)
    raw5 = repeats(results, "lossy", "udp-raw", link="netns 5% loss")
    ctx["raw5_loss"] = spread(raw5, "loss_pct", lambda v: num(v, 2))

    tcp_code = code_lines(REPO_ROOT / "tcp" / "server.py")
    reliable_code = code_lines(REPO_ROOT / "common" / "protocol" / "reliable.py")
    udp_code = code_lines(REPO_ROOT / "udp" / "server.py") + code_lines(
        REPO_ROOT / "udp" / "session.py"
    )
    ctx["tcp_lines"] = str(tcp_code)
    ctx["reliable_lines"] = str(reliable_code)
    ctx["udp_lines"] = str(udp_code)
    ctx["udp_code_ratio"] = f"{(reliable_code + udp_code) / tcp_code:.1f}"

    knees = sweep_knees(results)
    for key, protocol in (("tcp", "tcp"), ("base", "assignment")):
        k = knees.get(protocol)
        ctx[f"{key}_knee"] = (
            f"{k.knee_rate:g} msg/s per client ({num(k.knee_offered)} deliveries/s)"
            if k and k.knee_rate is not None
            else "none"
            if k
            else NA
        )

    slow = {name: r for name, r in load_results(results, "slow-reader")}
    with_slow, without = slow.get("tcp + 1 slow reader"), slow.get("tcp, no slow reader")
    base_slow = slow.get("assignment + 1 slow reader")
    ctx["slow_tcp_dropped"] = (
        NA if with_slow is None else "was dropped" if with_slow.slow_dropped else "was not dropped"
    )
    ctx["slow_tcp_p99"] = ms(with_slow.p99_ms) if with_slow else NA
    ctx["slow_none_p99"] = ms(without.p99_ms) if without else NA
    ctx["slow_base_loss"] = num(base_slow.loss_pct, 1) if base_slow else NA
    ctx["slow_base_unsent"] = num(base_slow.unsent) if base_slow else NA
    nagle = {(r.clients, r.nagle): r for _, r in load_results(results, "nagle")}
    sizes = sorted({c for c, _ in nagle})
    on = nagle.get((sizes[0], True)) if sizes else None
    off = nagle.get((sizes[0], False)) if sizes else None
    ctx["nagle_clients"] = str(sizes[0]) if sizes else NA
    ctx["nagle_on_p99"] = ms(on.p99_ms) if on else NA
    ctx["nagle_off_p99"] = ms(off.p99_ms) if off else NA

    capacity = results.get("capacity", [])
    cap = capacity[0] if capacity else None
    ctx["cap_clients"] = num(cap["clients"]) if cap else NA
    ctx["cap_online"] = num(cap["online"]) if cap else NA
    ctx["cap_kib"] = num(cap["bytes_per_client"] / 1024, 1) if cap else NA
    ctx["cap_connect"] = num(cap["connect_seconds"], 1) if cap else NA

    ctx["table_targets_runs"] = _group_table(results, "targets")
    ctx["table_peak"] = _group_table(results, "peak")
    ctx["table_clients"] = _group_table(results, "clients")
    ctx["table_rate"] = _group_table(results, "rate")
    ctx["table_lossy"] = _group_table(results, "lossy", ("retx",))
    ctx["table_slow"] = _group_table(results, "slow-reader", ("slow",))
    ctx["table_nagle"] = _group_table(results, "nagle")
    ctx["table_threads"] = _group_table(results, "threads")
    ctx["notes"] = "".join(
        f"\n> The run `{f['name']}` ({f['group']}) failed and is missing: {f['error']}\n"
        for f in results.get("failed", [])
    ) + "".join(
        f"\n> The `{s['group']}` runs were skipped on the machine that made this file: "
        f"{s['reason']}.\n"
        for s in results.get("skipped", [])
    )
    for key in ("percentiles", "latency", "throughput", "loss"):
        path = figures.get(key)
        ctx[f"fig_{key}"] = f"![{key}]({path.name})" if path else "_No data for this figure._"
    return ctx


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
    results = read_results(results_path)
    light = _common_load(results)
    figures = make_plots(results, out_dir, light)
    context = build_context(results, figures, origin or provenance(results_path))
    text = render(TEMPLATE.read_text(encoding="utf-8"), context)
    report = out_dir / "REPORT.md"
    report.write_text(text, encoding="utf-8")
    return report
