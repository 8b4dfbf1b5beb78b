"""The report's figures, drawn from a results dict with matplotlib's Agg canvas (no display).

Contract: make_plots(results, out_dir) -> {figure key: path of the PNG written}. A figure whose
runs are missing from the results (a group skipped or left out with --only) is not drawn and
has no key. Figures:

- latency: p50 and p99 latency against clients, TCP vs UDP raw vs UDP reliable (and the naive
  baseline), 5 msg/s per client.
- loss: deliveries lost against the link's loss, UDP raw and reliable, with the loss a raw
  delivery should see (it crosses the link twice); and reliable mode's latency over that link.
- throughput: deliveries per second against the offered load, TCP vs naive, with each knee.
- cpu: server CPU per delivery against clients, per server.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from benchmarks.harness import load_results
from benchmarks.measure import LoadResult
from benchmarks.targets import sweep_knees

STYLE: dict[str, dict[str, Any]] = {
    "tcp": {"color": "tab:blue", "marker": "o", "label": "TCP"},
    "naive": {"color": "tab:gray", "marker": "x", "label": "naive thread-per-client"},
    "udp-raw": {"color": "tab:orange", "marker": "s", "label": "UDP raw"},
    "udp-reliable": {"color": "tab:green", "marker": "^", "label": "UDP reliable"},
}
_DPI = 110


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


def _finite(values: Sequence[float]) -> list[float]:
    """Values for a log axis: what cannot be drawn on one (inf, 0 or less) becomes a gap."""
    return [v if math.isfinite(v) and v > 0 else math.nan for v in values]


def _p99_and_p50(
    axes: Any, x: Sequence[float], group: Sequence[LoadResult], style: dict[str, Any]
) -> None:
    """A protocol's p99 as a solid line and its p50 dotted, against ``x``."""
    axes.plot(x, _finite([r.p99_ms for r in group]), linestyle="-", **style)
    axes.plot(
        x,
        _finite([r.p50_ms for r in group]),
        linestyle=":",
        color=style["color"],
        marker=style["marker"],
        alpha=0.6,
    )


def _latency(runs: Sequence[LoadResult], path: Path) -> Path:
    figure = Figure(figsize=(8, 4.5))
    axes = figure.subplots()
    for protocol, group in _by_protocol(runs).items():
        group.sort(key=lambda r: r.clients)
        style = STYLE[protocol]
        _p99_and_p50(axes, [r.clients for r in group], group, style)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("clients (each sending 5 msg/s)")
    axes.set_ylabel("latency, ms (solid p99, dotted p50)")
    axes.set_title("Latency from the scheduled send to each delivery")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    return _save(figure, path)


def _loss(runs: Sequence[LoadResult], path: Path) -> Path:
    figure = Figure(figsize=(10, 4.5))
    left, right = figure.subplots(1, 2)
    grouped = _by_protocol(runs)
    for protocol, group in grouped.items():
        group.sort(key=lambda r: _link_loss(r))
        style = STYLE[protocol]
        left.plot([_link_loss(r) for r in group], [r.loss_pct for r in group], **style)
    links = sorted({_link_loss(r) for r in runs})
    left.plot(
        links,
        [100 * (1 - (1 - p / 100) ** 2) for p in links],
        linestyle="--",
        color="black",
        alpha=0.5,
        label="1 - (1 - p)², two crossings",
    )
    left.set_xlabel("link loss each way, %")
    left.set_ylabel("deliveries lost, %")
    left.set_title("Loss over a lossy link")
    left.grid(True, alpha=0.3)
    left.legend()
    for group in grouped.get("udp-reliable", []), grouped.get("udp-raw", []):
        if not group:
            continue
        style = STYLE[group[0].protocol]
        _p99_and_p50(right, [_link_loss(r) for r in group], group, style)
    right.set_yscale("log")
    right.set_xlabel("link loss each way, %")
    right.set_ylabel("latency, ms (solid p99, dotted p50)")
    right.set_title("Latency of what arrived")
    right.grid(True, which="both", alpha=0.3)
    right.legend()
    return _save(figure, path)


def _link_loss(result: LoadResult) -> float:
    """The loss percent of a `netns N% loss` link."""
    return float(result.link.split()[1].rstrip("%"))


def _throughput(results: dict[str, Any], runs: Sequence[LoadResult], path: Path) -> Path:
    figure = Figure(figsize=(8, 4.5))
    axes = figure.subplots()
    knees = sweep_knees(results)
    top = max(r.offered_deliveries_per_s for r in runs)
    axes.plot([0, top], [0, top], linestyle="--", color="black", alpha=0.4, label="all delivered")
    for protocol, group in _by_protocol(runs).items():
        group.sort(key=lambda r: r.offered_deliveries_per_s)
        axes.plot(
            [r.offered_deliveries_per_s for r in group],
            [r.deliveries_per_s for r in group],
            **STYLE[protocol],
        )
        knee = knees[protocol]
        if knee.knee_offered is not None:
            kept = next(r for r in group if r.rate == knee.knee_rate)
            axes.annotate(
                f"knee: {knee.knee_rate:g} msg/s",
                (kept.offered_deliveries_per_s, kept.deliveries_per_s),
                textcoords="offset points",
                xytext=(10, -15),
                color=STYLE[protocol]["color"],
            )
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("offered deliveries/s (200 clients, rate swept)")
    axes.set_ylabel("deliveries/s received")
    axes.set_title("Throughput against offered load")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    return _save(figure, path)


def _cpu(runs: Sequence[LoadResult], path: Path) -> Path:
    figure = Figure(figsize=(8, 4.5))
    axes = figure.subplots()
    for protocol, group in _by_protocol(runs).items():
        group.sort(key=lambda r: r.clients)
        axes.plot(
            [r.clients for r in group],
            _finite([r.server_cpu_us_per_delivery for r in group]),
            **STYLE[protocol],
        )
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("clients (each sending 5 msg/s)")
    axes.set_ylabel("server CPU per delivery, µs")
    axes.set_title("What one delivery costs the server")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    return _save(figure, path)


def make_plots(results: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    clients = [r for _, r in load_results(results, "clients")]
    lossy = [r for _, r in load_results(results, "lossy")]
    sweep = [r for _, r in load_results(results, "rate")]
    if clients:
        written["latency"] = _latency(clients, out_dir / "latency_vs_clients.png")
        written["cpu"] = _cpu(clients, out_dir / "cpu_per_delivery.png")
    if lossy:
        written["loss"] = _loss(lossy, out_dir / "loss_vs_link_loss.png")
    if sweep:
        written["throughput"] = _throughput(results, sweep, out_dir / "throughput_vs_offered.png")
    return written
