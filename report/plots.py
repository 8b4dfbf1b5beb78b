"""The report's figures, drawn from a results dict with matplotlib's Agg canvas (no display).

Contract: make_plots(results, out_dir, common_clients) -> {figure key: path of the PNG written}.
A figure whose runs are missing from the results is not drawn and has no key. A point from a
harness-bound run is drawn hollow: it is shown, but it is not a server result. Figures:

- percentiles: latency at each percentile from p50 to p99.9, HdrHistogram style (the x axis is
  1 / (1 - p) on a log scale), of all four servers at one load (`common_clients` x 5 msg/s).
- latency: p50 and p99 against clients at 5 msg/s (the 200-client point is the median repeat).
- throughput: deliveries per second against the offered load, TCP and the assignment's server.
- loss: deliveries lost against the link's loss, UDP raw and reliable (reliable at 5 % is the
  median repeat of the target's runs).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from benchmarks.harness import load_results
from benchmarks.measure import PERCENTILES, LoadResult

STYLE: dict[str, dict[str, Any]] = {
    "tcp": {"color": "tab:blue", "marker": "o", "label": "TCP"},
    "assignment": {"color": "tab:gray", "marker": "D", "label": "the assignment's server"},
    "udp-raw": {"color": "tab:orange", "marker": "s", "label": "UDP raw"},
    "udp-reliable": {"color": "tab:green", "marker": "^", "label": "UDP reliable"},
    "udp-raw-packets": {"color": "tab:red", "marker": "v", "label": "UDP raw packets"},
    "udp-reliable-packets": {"color": "tab:purple", "marker": "P", "label": "UDP reliable packets"},
}
_DPI = 110
_BOUND_NOTE = "hollow marker: harness-bound run, not a server result"


def _save(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)
    figure.tight_layout()
    figure.savefig(path, dpi=_DPI)
    return path


def _by_protocol(runs: Sequence[LoadResult]) -> dict[str, list[LoadResult]]:
    grouped: dict[str, list[LoadResult]] = {}
    for run in runs:
        grouped.setdefault(run.protocol, []).append(run)
    return grouped


def _positive(value: float) -> float:
    """A value for a log axis: what cannot be drawn on one becomes a gap."""
    return value if math.isfinite(value) and value > 0 else math.nan


def _series(
    axes: Any, x: Sequence[float], y: Sequence[float], runs: Sequence[LoadResult], **style: Any
) -> None:
    """A line through the points; a point whose run was harness-bound is drawn hollow."""
    axes.plot(x, [_positive(v) for v in y], **style)
    bound = [(xi, yi) for xi, yi, run in zip(x, y, runs, strict=True) if run.harness_bound]
    if bound:
        axes.plot(
            [xi for xi, _ in bound],
            [_positive(yi) for _, yi in bound],
            marker=style["marker"],
            color=style["color"],
            markerfacecolor="white",
            linestyle="none",
        )


def _percentiles(runs: Sequence[LoadResult], clients: int, path: Path) -> Path:
    figure = Figure(figsize=(8, 4.5))
    axes = figure.subplots()
    x = [1 / (1 - p / 100) for p in PERCENTILES]
    for run in runs:
        if not run.percentiles_ms:
            continue
        style = STYLE[run.protocol]
        label = style["label"] + (" (harness-bound)" if run.harness_bound else "")
        _series(axes, x, run.percentiles_ms, [run] * len(x), **{**style, "label": label})
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xticks(x, [f"{p:g}%" for p in PERCENTILES])
    axes.tick_params(axis="x", which="minor", bottom=False, labelbottom=False)
    axes.set_xlabel("percentile")
    axes.set_ylabel("latency, ms")
    axes.set_title(f"Latency by percentile, {clients} clients × 5 msg/s each")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(title=_BOUND_NOTE, title_fontsize="small")
    return _save(figure, path)


def _median(runs: Sequence[LoadResult]) -> LoadResult:
    """The run with the median p99 of a point's repeats."""
    ordered = sorted(runs, key=lambda r: math.inf if math.isnan(r.p99_ms) else r.p99_ms)
    return ordered[len(ordered) // 2]


def _points(runs: Sequence[LoadResult], key: str) -> list[LoadResult]:
    """One run per value of `key`: the median repeat where a point was repeated."""
    by_value: dict[float, list[LoadResult]] = {}
    for run in runs:
        by_value.setdefault(getattr(run, key), []).append(run)
    return [_median(group) for _, group in sorted(by_value.items())]


def _latency(runs: Sequence[LoadResult], path: Path) -> Path:
    figure = Figure(figsize=(8, 4.5))
    axes = figure.subplots()
    for protocol, group in _by_protocol(runs).items():
        points = _points(group, "clients")
        x = [r.clients for r in points]
        style = STYLE[protocol]
        _series(axes, x, [r.p99_ms for r in points], points, **style)
        axes.plot(
            x, [_positive(r.p50_ms) for r in points], linestyle=":", color=style["color"], alpha=0.6
        )
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("clients (each sending 5 msg/s)")
    axes.set_ylabel("latency, ms (solid p99, dotted p50)")
    axes.set_title("Latency from the scheduled send to each delivery")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(title=_BOUND_NOTE, title_fontsize="small")
    return _save(figure, path)


def _throughput(runs: Sequence[LoadResult], path: Path) -> Path:
    figure = Figure(figsize=(8, 4.5))
    axes = figure.subplots()
    top = max(r.offered_deliveries_per_s for r in runs)
    axes.plot([0, top], [0, top], linestyle="--", color="black", alpha=0.4, label="all delivered")
    for protocol, group in _by_protocol(runs).items():
        points = _points(group, "offered_deliveries_per_s")
        _series(
            axes,
            [r.offered_deliveries_per_s for r in points],
            [
                statistics.median(r.deliveries_per_s for r in group if r.rate == p.rate)
                for p in points
            ],
            points,
            **STYLE[protocol],
        )
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("offered deliveries/s (200 clients, rate swept)")
    axes.set_ylabel("deliveries/s received (median of repeats)")
    axes.set_title("Throughput against offered load")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(title=_BOUND_NOTE, title_fontsize="small")
    return _save(figure, path)


def _link_loss(result: LoadResult) -> float:
    """The loss percent of a `netns N% loss` link."""
    return float(result.link.split()[1].rstrip("%"))


def _loss(runs: Sequence[LoadResult], path: Path) -> Path:
    figure = Figure(figsize=(8, 4.5))
    axes = figure.subplots()
    for protocol, group in _by_protocol(runs).items():
        points = _points(group, "link")
        points.sort(key=_link_loss)
        _series(
            axes, [_link_loss(r) for r in points], [r.loss_pct for r in points], points,
            **STYLE[protocol],
        )  # fmt: skip
    links = sorted({_link_loss(r) for r in runs})
    axes.plot(
        links,
        [100 * (1 - (1 - p / 100) ** 2) for p in links],
        linestyle="--",
        color="black",
        alpha=0.5,
        label="1 - (1 - p)², two crossings",
    )
    axes.set_xlabel("link loss each way, %")
    axes.set_ylabel("deliveries lost, %")
    axes.set_title("Loss over a lossy link, 20 clients × 5 msg/s")
    axes.grid(True, alpha=0.3)
    axes.legend()
    return _save(figure, path)


def make_plots(
    results: dict[str, Any], out_dir: Path, common_clients: int | None
) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    clients = [r for _, r in load_results(results, "clients")]
    at_five = [
        r for _, r in load_results(results, "targets") if r.rate == 5 and r.link == "loopback"
    ]
    sweep = [r for g in ("rate", "peak") for _, r in load_results(results, g)]
    lossy = [
        r for g in ("lossy", "targets") for _, r in load_results(results, g) if r.link != "loopback"
    ]
    if common_clients is not None:
        same = [r for r in clients if r.clients == common_clients]
        written["percentiles"] = _percentiles(same, common_clients, out_dir / "percentiles.png")
    if clients:
        written["latency"] = _latency(clients + at_five, out_dir / "latency_vs_clients.png")
    if sweep:
        written["throughput"] = _throughput(sweep, out_dir / "throughput_vs_offered.png")
    if lossy:
        written["loss"] = _loss(lossy, out_dir / "loss_vs_link_loss.png")
    return written
