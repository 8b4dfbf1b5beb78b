"""The report's figures, drawn from a results dict with matplotlib's Agg canvas (no display).

Contract: make_plots(results, out_dir) -> {figure key: path of the PNG written}. A figure whose
runs are missing from the results is not drawn and has no key. Every series is one
configuration (benchmarks.harness.config_runs: never two mixed in one line); a point is the
median of its repeats with an error bar from the lowest to the highest repeat; a point from
harness-bound runs only is drawn hollow: shown, but not a server result. Zeros are drawn where
an axis is linear; a log axis leaves out what it cannot draw and says so. Legends sit outside
the axes, clear of the data. Figures:

- link: p50, p99 and p99.9 against the link's loss (0, 1, 5, 10 % each way), one panel each,
  log latency axis, every configuration of the link matrix, same clients and load.
- loss: deliveries lost against the link's loss, linear axes, every configuration.
- percentiles: latency at each percentile from p50 to p99.9 (the x axis is 1 / (1 - p) on a
  log scale), every configuration on the clean namespace link, from all its repeats.
- knee: p99 against the offered load, TCP and the assignment's server at 200 clients (rate
  swept, then past saturation): where a server stops keeping up, its p99 leaves the floor.
- latency: p99 and p50 against clients at 5 msg/s, every server on loopback.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from benchmarks.harness import config_runs
from benchmarks.measure import PERCENTILES, LoadResult

STYLE: dict[str, dict[str, Any]] = {
    "tcp": {"color": "tab:blue", "marker": "o", "label": "TCP"},
    "assignment": {"color": "tab:gray", "marker": "D", "label": "the assignment's server"},
    "udp-raw": {"color": "tab:orange", "marker": "s", "label": "UDP raw (1.0)"},
    "udp-raw-packets": {"color": "tab:red", "marker": "v", "label": "UDP raw (packets)"},
    "udp-reliable": {"color": "tab:green", "marker": "^", "label": "UDP reliable (1.0)"},
    "udp-reliable-packets": {
        "color": "tab:purple",
        "marker": "P",
        "label": "UDP reliable (packets)",
    },
}
_DPI = 110
_BOUND_NOTE = "hollow: harness-bound"
Series = dict[str, list[tuple[int, LoadResult]]]


def _style(config: str) -> dict[str, Any]:
    return STYLE.get(config, {"color": "black", "marker": "x", "label": config})


def _save(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=_DPI, bbox_inches="tight")
    return path


def _series(runs: Sequence[tuple[str, int, LoadResult]], keep: Sequence[str] = ()) -> Series:
    """Runs by configuration, in the matrix's order (then any other); `keep` limits them."""
    out: Series = {}
    for config, repeat, run in runs:
        if not keep or config in keep:
            out.setdefault(config, []).append((repeat, run))
    order = list(STYLE)
    return dict(sorted(out.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99))


def _points(
    runs: Sequence[tuple[int, LoadResult]], x: Callable[[LoadResult], float]
) -> list[list[LoadResult]]:
    """The runs of one series grouped by their x, in order of x."""
    by_x: dict[float, list[LoadResult]] = {}
    for _, run in runs:
        by_x.setdefault(x(run), []).append(run)
    return [by_x[k] for k in sorted(by_x)]


def _finite(values: Sequence[float], log: bool) -> list[float]:
    return [v for v in values if math.isfinite(v) and (v > 0 or not log)]


def _draw(
    axes: Any,
    points: Sequence[Sequence[LoadResult]],
    x: Callable[[LoadResult], float],
    y: Callable[[LoadResult], float],
    style: dict[str, Any],
    log: bool,
    **line: Any,
) -> int:
    """Median and range of each point; returns how many points a log axis could not draw."""
    xs, mids, lows, highs, hollow = [], [], [], [], []
    left_out = 0
    for group in points:
        counted, bound = _counted(group)
        values = _finite([y(r) for r in counted], log)
        if not values:
            left_out += 1
            continue
        mid = statistics.median(values)
        xs.append(x(group[0]))
        mids.append(mid)
        lows.append(mid - min(values))
        highs.append(max(values) - mid)
        hollow.append(bound)
    if not xs:
        return left_out
    axes.errorbar(
        xs, mids, yerr=[lows, highs], color=style["color"], marker=style["marker"],
        label=style["label"], capsize=3, **line,
    )  # fmt: skip
    marked = [(a, b) for a, b, h in zip(xs, mids, hollow, strict=True) if h]
    if marked:
        axes.plot(
            [a for a, _ in marked], [b for _, b in marked], linestyle="none",
            marker=style["marker"], color=style["color"], markerfacecolor="white", zorder=3,
        )  # fmt: skip
    return left_out


def _counted(runs: Sequence[LoadResult]) -> tuple[list[LoadResult], bool]:
    """The runs a point is drawn from, and whether it is harness-bound: the report's rule
    (fewer than two thirds of the runs free of the harness)."""
    free = [r for r in runs if not r.harness_bound]
    bound = not free or len(free) < math.ceil(2 * len(runs) / 3)
    return (list(runs) if bound else free), bound


def _legend(axes: Any, note: str = _BOUND_NOTE) -> None:
    axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), title=note, title_fontsize="small")


def _link_loss(result: LoadResult) -> float:
    """The loss percent of a `netns N% loss` link."""
    return float(result.link.split()[1].rstrip("%"))


_LINK_PANELS = (("p50", 0), ("p99", PERCENTILES.index(99.0)), ("p99.9", PERCENTILES.index(99.9)))


def _percentile(index: int) -> Callable[[LoadResult], float]:
    return lambda r: r.percentiles_ms[index] if r.percentiles_ms else math.nan


def _link(series: Series, clients: int, path: Path) -> Path:
    figure = Figure(figsize=(12, 4.2))
    panels = figure.subplots(1, 3, sharey=True)
    for axes, (name, index) in zip(panels, _LINK_PANELS, strict=True):
        for config, runs in series.items():
            _draw(axes, _points(runs, _link_loss), _link_loss, _percentile(index),
                  _style(config), log=True)  # fmt: skip
        axes.set_yscale("log")
        axes.set_xticks([0, 1, 5, 10])
        axes.set_xlabel("link loss each way, %")
        axes.set_title(name)
        axes.grid(True, which="both", alpha=0.3)
    panels[0].set_ylabel("latency, ms (log)")
    figure.suptitle(f"Latency over the same lossy link, {clients} clients × 5 msg/s each")
    _legend(panels[-1])
    return _save(figure, path)


def _loss(series: Series, clients: int, path: Path) -> Path:
    figure = Figure(figsize=(8, 4.2))
    axes = figure.subplots()
    for config, runs in series.items():
        _draw(axes, _points(runs, _link_loss), _link_loss, lambda r: r.loss_pct,
              _style(config), log=False)  # fmt: skip
    links = sorted({_link_loss(r) for runs in series.values() for _, r in runs})
    axes.plot(
        links,
        [100 * (1 - (1 - p / 100) ** 2) for p in links],
        linestyle="--",
        color="black",
        alpha=0.5,
        label="1 - (1 - p)², two crossings",
    )
    axes.set_xticks([0, 1, 5, 10])
    axes.set_ylim(bottom=-0.5)
    axes.set_xlabel("link loss each way, %")
    axes.set_ylabel("deliveries lost, %")
    axes.set_title(f"Loss over the same lossy link, {clients} clients × 5 msg/s each")
    axes.grid(True, alpha=0.3)
    _legend(axes)
    return _save(figure, path)


def _percentiles(series: Series, clients: int, path: Path) -> Path:
    figure = Figure(figsize=(9, 4.5))
    axes = figure.subplots()
    x = [1 / (1 - p / 100) for p in PERCENTILES]
    for config, runs in series.items():
        repeats = [r for _, r in runs if r.percentiles_ms]
        if not repeats:
            continue
        counted, _ = _counted(repeats)
        mids, lows, highs = [], [], []
        for i in range(len(PERCENTILES)):
            values = _finite([r.percentiles_ms[i] for r in counted], log=True)
            mid = statistics.median(values) if values else math.nan
            mids.append(mid)
            lows.append(mid - min(values) if values else 0.0)
            highs.append(max(values) - mid if values else 0.0)
        style = _style(config)
        axes.errorbar(
            x, mids, yerr=[lows, highs], color=style["color"], marker=style["marker"],
            capsize=3, label=f"{style['label']} ({len(counted)} runs)",
        )  # fmt: skip
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xticks(x, [f"{p:g}%" for p in PERCENTILES])
    axes.tick_params(axis="x", which="minor", bottom=False, labelbottom=False)
    axes.set_xlabel("percentile")
    axes.set_ylabel("latency, ms (log)")
    axes.set_title(f"Latency by percentile, clean namespace link, {clients} clients × 5 msg/s")
    axes.grid(True, which="both", alpha=0.3)
    _legend(axes, "median of the runs, bar: their range")
    return _save(figure, path)


def _knee(series: Series, path: Path) -> Path:
    figure = Figure(figsize=(8, 4.2))
    axes = figure.subplots()
    offered: Callable[[LoadResult], float] = lambda r: r.offered_deliveries_per_s  # noqa: E731
    for config, runs in series.items():
        _draw(axes, _points(runs, lambda r: r.rate), offered, lambda r: r.p99_ms,
              _style(config), log=True)  # fmt: skip
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("offered deliveries/s (200 clients, rate swept)")
    axes.set_ylabel("p99 latency, ms (log)")
    axes.set_title("Where each server stops keeping up: p99 against offered load")
    axes.grid(True, which="both", alpha=0.3)
    _legend(axes)
    return _save(figure, path)


def _latency(series: Series, path: Path) -> Path:
    figure = Figure(figsize=(8, 4.2))
    axes = figure.subplots()
    clients: Callable[[LoadResult], float] = lambda r: r.clients  # noqa: E731
    for config, runs in series.items():
        points = _points(runs, clients)
        style = _style(config)
        _draw(axes, points, clients, lambda r: r.p99_ms, style, log=True)
        _draw(axes, points, clients, lambda r: r.p50_ms, {**style, "label": None}, log=True,
              linestyle=":", alpha=0.6)  # fmt: skip
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("clients (each sending 5 msg/s)")
    axes.set_ylabel("latency, ms (solid p99, dotted p50)")
    axes.set_title("Latency against the number of clients, loopback")
    axes.grid(True, which="both", alpha=0.3)
    _legend(axes)
    return _save(figure, path)


def _clean(results: dict[str, Any]) -> list[tuple[str, int, LoadResult]]:
    return [run for run in config_runs(results, "lossy") if _link_loss(run[2]) == 0]


def make_plots(results: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    link = _series(config_runs(results, "lossy"))
    if link:
        clients = next(iter(link.values()))[0][1].clients
        written["link"] = _link(link, clients, out_dir / "latency_vs_link_loss.png")
        written["loss"] = _loss(link, clients, out_dir / "loss_vs_link_loss.png")
        clean = _series(_clean(results))
        if clean:
            written["percentiles"] = _percentiles(clean, clients, out_dir / "percentiles.png")
    sweep = _series(
        [run for group in ("rate", "peak") for run in config_runs(results, group)],
        keep=("tcp", "assignment"),
    )
    if sweep:
        written["knee"] = _knee(sweep, out_dir / "p99_vs_offered.png")
    at_five = [
        run
        for run in config_runs(results, "targets")
        if run[2].rate == 5 and run[0] in ("tcp", "assignment")
    ]
    by_clients = _series(config_runs(results, "clients") + at_five)
    if by_clients:
        written["latency"] = _latency(by_clients, out_dir / "latency_vs_clients.png")
    return written
