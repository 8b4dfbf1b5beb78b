"""Turn benchmarks/results/ into report/REPORT.md, report/RUNS.md and the figures.

Contract:
    generate(results_path, out_dir, provenance) -> Path of the REPORT.md written (RUNS.md,
                                            every run's table, and the PNGs beside it)
    provenance(results_path) -> Provenance    which commit and file the report comes from
    build_context(results, figures, provenance, cluster, calibration, chaos)
                                          -> {placeholder: text}
    runs_page(results, cluster, provenance, chaos) -> str   RUNS.md
    render(template, context) -> str      `{{name}}` replaced; an unknown name raises KeyError
    answer(first) -> str                  the first screen's prose, from its figures
    code_lines(path) -> int               lines of code without docstrings, comments, blanks
    report_words(text) -> int             the report's length: `wc -w` without HTML comments

The prose lives in report/template.md; every measured number in it is a placeholder filled from
the results here, so the report cannot disagree with the data it shows, and the few sentences
whose words depend on the numbers (which is larger, whether anything was lost) are written here
from them. A headline figure is the median of the repeats of its run that the harness did not
limit, with the range beside it; a run the harness may have limited is marked harness-bound
wherever it appears. A CPU figure measured over fewer than MIN_TICKS clock ticks is shown to
two significant digits only. The calibration comes from `make calibrate`'s file beside the
results (benchmarks.calibrate), the cluster's from `make bench-cluster`'s, section 7's (resume
under chaos) from `make bench-chaos`'s, section 8's (attacks) from `make bench-attacks`'s.
Tables of every run, load, case or scenario go to RUNS.md; the report sums each up in a
sentence or a small table of medians with their ranges (MAX_WORDS is its length).
"""

from __future__ import annotations

import ast
import io
import math
import re
import statistics
import tokenize
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import overload
from benchmarks.harness import (
    GROUPS,
    LINK_MATRIX,
    REPEATED,
    config_runs,
    git_output,
    load_results,
    read_results,
)
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
    evaluate_overload,
    evaluate_packets,
    repeats,
    sweep_knees,
)
from common.protocol.recovery import MAX_ACK_DELAY
from common.protocol.reliable import INITIAL_RTO
from report.plots import make_plots
from tcp.server import DEFAULT_COALESCE_MS

TEMPLATE = Path(__file__).resolve().parent / "template.md"
CLUSTER_FILE = "cluster.json"
"""`make bench-cluster`'s results, kept beside the suite's."""
CALIBRATION_FILE = "calibration.json"
"""`make calibrate`'s results, kept beside the suite's."""
CHAOS_FILE = "chaos.json"
"""`make bench-chaos`'s results, kept beside the suite's."""
ATTACKS_FILE = "attacks.json"
"""`make bench-attacks`'s results, kept beside the suite's."""
RESUME_P99_TARGET_MS = 1000.0
"""Resumed within 1 s of the cut or of the server being back, p99, backoff included."""
NA = "n/a"
BOUND_MARK = "†"
"""Marks a figure from harness-bound runs, so that a number in a sentence stays readable."""
MIN_TICKS = 100
"""Clock ticks (10 ms each) below which a CPU figure has fewer than about three digits."""
MAX_WORDS = 2500
"""The report's length limit, counted as `wc -w` counts, without HTML comments. Every run's
figures go to RUNS.md; the report keeps their medians and ranges."""
_UDP = (
    "udp/server.py",
    "udp/inbox.py",
    "udp/registry.py",
    "udp/session.py",
    "common/protocol/envelope.py",
)
_PACKETS = tuple(
    f"common/protocol/{name}.py"
    for name in ("packets", "packetlink", "rangeset", "recovery", "congestion", "reliable")
)
CODE_FILES = {
    "tcp": ("tcp/server.py", "tcp/connection.py", "tcp/writer.py"),
    "udp-raw": _UDP,
    "udp-reliable": (*_UDP, "common/protocol/reliable.py"),
    "udp-raw-packets": (*_UDP, *_PACKETS),
    "udp-reliable-packets": (*_UDP, *_PACKETS),
}
"""What each configuration's row counts: its own transport code (the UDP server holds both
modes and both protocols; packet sessions use the 1.0 receiver's buffer); the room, the
server core (``common/server``) and the codec, which all share, are in none. Files missing
from the tree are left out."""
LOC_COUNTER = "`report.generate.code_lines` (tokens; no docstrings, comments or blanks)"
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z0-9_]+)\s*\}\}")
_COMMENT = re.compile(r"<!--.*?-->", re.S)


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
    """What `make report` writes: REPORT.md, RUNS.md and the figures beside them."""
    return path in ("report/REPORT.md", "report/RUNS.md") or (
        path.startswith("report/") and path.endswith(".png")
    )


def render(template: str, context: dict[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: context[m.group(1)], template)


def report_words(text: str) -> int:
    """Words as `wc -w` counts them (tables and code included), HTML comments left out."""
    return len(_COMMENT.sub("", text).split())


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


def _us(value: float) -> str:
    return num(value, 2)


def coarse(value: float, significant: int = 2) -> str:
    """`significant` digits (two by default: a figure from few clock ticks has no more)."""
    if not math.isfinite(value):
        return NA
    if value == 0:
        return "0"
    digits = max(0, significant - 1 - math.floor(math.log10(abs(value))))
    return f"{value:,.{digits}f}"


def _counted(runs: Sequence[LoadResult]) -> tuple[list[LoadResult], bool]:
    """The runs a figure is taken from, and whether they are harness-bound ones (fewer than
    two thirds of the runs were free of the harness)."""
    counted = [r for r in runs if not r.harness_bound]
    bound = len(counted) < math.ceil(2 * len(runs) / 3) or not counted
    return (list(runs) if bound else counted), bound


def spread(runs: Sequence[LoadResult], attr: str, fmt: Callable[[float], str]) -> str:
    """The median over the runs the harness did not limit, with its range: `17.8 [17.3-18.9]`;
    marked harness-bound when fewer than two thirds of the runs count."""
    if not runs:
        return NA
    use, bound = _counted(runs)
    values = [getattr(r, attr) for r in use]
    text = fmt(statistics.median(values))
    low, high = fmt(min(values)), fmt(max(values))
    if len(values) > 1 and low != high:
        text += f" [{low}-{high}]"
    return text + (BOUND_MARK if bound else "")


def few_ticks(runs: Sequence[LoadResult]) -> bool:
    """Whether any run's CPU was measured over fewer than MIN_TICKS clock ticks."""
    return any(0 <= r.server_cpu_ticks < MIN_TICKS for r in runs)


def cpu(runs: Sequence[LoadResult]) -> str:
    """Server CPU per delivery to three significant digits, two when measured over few ticks,
    and `-` when over none (a window too light for the clock to see)."""
    if runs and all(r.server_cpu_ticks == 0 for r in runs):
        return "-"
    significant = 2 if few_ticks(runs) else 3
    return spread(runs, "server_cpu_us_per_delivery", lambda v: coarse(v, significant))


def median_of(runs: Sequence[LoadResult], attr: str | Callable[[LoadResult], float]) -> float:
    """The median of a field (or of a function of each run) over the runs that count."""
    if not runs:
        return math.nan
    use, _ = _counted(runs)
    value = attr if callable(attr) else (lambda r: float(getattr(r, attr)))
    return float(statistics.median(value(r) for r in use))


def code_lines(path: Path) -> int:
    """Lines holding code: not blank, not only a comment, not part of a docstring."""
    source = path.read_text(encoding="utf-8")
    docstrings: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            assert isinstance(body, list)
            first = body[0] if body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                docstrings.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
    skip.add(tokenize.ENDMARKER)
    lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in skip:
            lines.update(range(token.start[0], token.end[0] + 1))
    return len(lines - docstrings)


def _code(transport: str) -> int:
    files = [REPO_ROOT / f for f in CODE_FILES[transport]]
    return sum(code_lines(f) for f in files if f.exists())


def _run_table(runs: Sequence[tuple[str, LoadResult]]) -> str:
    headers = [
        "run", "deliv/s offered", "deliv/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "lost %",
        "server µs/deliv", "CPU ticks", "server CPU %", "retransmitted (server / clients / TCP)",
        "harness CPU %", "lag p99 ms",
    ]  # fmt: skip
    rows = []
    for name, r in runs:
        retx = " / ".join(
            "-" if v < 0 else str(v)
            for v in (r.server_retransmitted, r.retransmitted, r.tcp_retransmitted)
        )
        rows.append(
            [
                name + (" **harness-bound**" if r.harness_bound else ""),
                num(r.offered_deliveries_per_s),
                num(r.deliveries_per_s),
                ms(r.p50_ms),
                ms(r.p99_ms),
                ms(_p999(r)),
                ms(r.max_ms),
                num(r.loss_pct, 2),
                cpu([r]),
                str(r.server_cpu_ticks) if r.server_cpu_ticks >= 0 else "-",
                num(r.server_cpu_pct),
                retx,
                num(r.harness_cpu_pct),
                ms(r.send_lag_p99_ms),
            ]
        )
    return table(rows, headers, markdown=True)


def _p999(result: LoadResult) -> float:
    return result.percentiles_ms[-1] if result.percentiles_ms else math.nan


_VERDICT = {
    "met": "**met**",
    "missed": "**missed**",
    "unstable": "**unstable**",
    "harness-bound": "harness-bound",
    "not measured": "not measured",
}


def _targets_table(targets: Sequence[Target], measured: bool = False, runs: bool = True) -> str:
    """Each target's verdict and, with `runs`, how many of its runs counted; with `measured`
    also its figures, median [range]."""
    rows = [
        [
            t.key,
            _VERDICT[t.verdict],
            t.goal,
            *([describe(t) or NA] if measured else []),
            *([f"{sum(held is not None for held in t.held)} of {len(t.samples)}"] if runs else []),
        ]
        for t in targets
    ]
    headers = ["target", "verdict", "goal", *(["measured"] if measured else []),
               *(["runs"] if runs else [])]  # fmt: skip
    return table(rows, headers, markdown=True)


def _overload_targets(results: dict[str, Any]) -> str:
    """Section 5's overload cases: each target, its verdict and its medians [ranges]. No
    overload run is harness-bound (the load is the server's own clients), so each counts."""
    targets = [t for t in evaluate_overload(results) if t.samples]
    if not targets:
        return "_Not measured._"
    counts = sorted({len(t.samples) for t in targets})
    many = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return (
        "Many closes (a newcomer's `welcome` meanwhile) and clients that never read, median "
        f"[range] of {many} runs a case:\n\n" + _targets_table(targets, measured=True, runs=False)
    )


def _target_notes(targets: Sequence[Target]) -> str:
    """One short note per target that was not plainly met: its repeats, as they were."""
    notes = [
        f"- `{t.key}` ({t.verdict}): {describe_repeats(t)}."
        for t in targets
        if t.verdict != MET and t.samples
    ]
    return "\n".join(notes)


def _provenance_text(meta: dict[str, Any], origin: Provenance) -> str:
    commit = (meta.get("git_commit") or "unknown")[:10]
    text = (
        f"Generated from `{origin.results_path}`"
        + (f" (committed in {origin.results_commit})" if origin.results_commit else "")
        + f" at commit {origin.head or 'unknown'}; measured at commit {commit}"
        + f" on {meta['date'][:10]} by `{_suite_command(meta)}` in {num(meta['elapsed_s'])} s "
        + f"on {meta['machine']['cores']} shared cores of {meta['machine']['cpu']}, "
        + f"{meta['implementation']} {meta['python']} (load average "
        + f"{meta['load_average_before'][0]:.2f}, then {meta['load_average_after'][0]:.2f})"
    )
    if meta.get("git_dirty"):
        text += " **with uncommitted changes**"
    if not origin.clean:
        text += (
            ". **Draft: the working tree had uncommitted changes when this report was made, "
            "so it cannot be reproduced from the repository as it stands**"
        )
    return text + "."


def _suite_command(meta: dict[str, Any]) -> str:
    return "make bench-full" if meta["suite"] == "full" else "make bench"


# ---- the first screen ----------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One transport on one link, from the repeated runs of the `lossy` group."""

    label: str
    transport: str
    config: str
    loss: int
    runs: Sequence[LoadResult]

    def median(self, attr: str) -> float:
        return median_of(self.runs, attr)

    @property
    def bound(self) -> bool:
        return _counted(self.runs)[1]

    def shown(self, attr: str, fmt: Callable[[float], str] = ms) -> str:
        """The median as a sentence shows it: marked harness-bound where the table marks it."""
        return fmt(self.median(attr)) + (BOUND_MARK if self.bound else "")


FIRST_LOSSES = (0, 5)


def _link_runs(results: dict[str, Any], config: str, loss: int) -> list[LoadResult]:
    return [
        r
        for key, _, r in config_runs(results, "lossy")
        if key == config and r.link == f"netns {loss}% loss"
    ]


def _first_rows(results: dict[str, Any]) -> list[Row]:
    """TCP, raw UDP and reliable UDP, clean and at 5 % loss; UDP with packet sessions where
    the results have them (protocol 1.2), else 1.0."""
    rows = []
    names = (("tcp", "TCP"), ("udp-raw", "raw UDP"), ("udp-reliable", "reliable UDP"))
    for transport, label in names:
        config = transport
        if transport != "tcp" and _link_runs(results, f"{transport}-packets", 0):
            config = f"{transport}-packets"
            label += " (packets)"
        elif transport != "tcp":
            label += " (1.0)"
        for loss in FIRST_LOSSES:
            rows.append(Row(label, transport, config, loss, _link_runs(results, config, loss)))
    return rows


def _first_table(rows: Sequence[Row]) -> str:
    cells = [
        [
            row.label,
            "clean" if row.loss == 0 else f"{row.loss} % loss",
            spread(row.runs, "p50_ms", ms),
            spread(row.runs, "p99_ms", ms),
            spread(row.runs, "loss_pct", lambda v: num(v, 2)),
            cpu(row.runs),
            f"{_code(row.config):,}",
        ]
        for row in rows
    ]
    headers = ["", "link", "p50 ms", "p99 ms", "lost %", "server µs/delivery", "lines of code"]
    return table(cells, headers, markdown=True)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}×" if b > 0 and math.isfinite(a / b) else NA


def answer(rows: Sequence[Row]) -> str:
    """The first screen's prose: every comparison in it is decided by the figures."""
    by = {(r.transport, r.loss): r for r in rows}
    if any(not r.runs for r in rows):
        return "_The link matrix was not measured in this results file: run `make bench`._"
    tcp0, tcp5 = by["tcp", 0], by["tcp", 5]
    raw0, raw5 = by["udp-raw", 0], by["udp-raw", 5]
    rel0, rel5 = by["udp-reliable", 0], by["udp-reliable", 5]
    tcp_code, rel_code = _code("tcp"), _code(rel0.config)
    lost = [r for r in (tcp0, tcp5, rel0, rel5) if r.median("loss_pct") > 0]
    kept = (
        "TCP and reliable UDP lost nothing on either link."
        if not lost
        else "Yet some deliveries were lost: "
        + ", ".join(
            f"{r.label} on the {'clean' if r.loss == 0 else f'{r.loss} %'} link" for r in lost
        )
        + "."
    )
    tail = rel5.median("p99_ms") - tcp5.median("p99_ms")
    tail_words = "shorter than TCP's" if tail < 0 else "no shorter than TCP's"
    fast = raw0.median("p50_ms") < tcp0.median("p50_ms")
    cost = rel0.median("server_cpu_us_per_delivery") / tcp0.median("server_cpu_us_per_delivery")
    costs = _ratio(cost, 1.0) + (BOUND_MARK if rel0.bound or tcp0.bound else "")
    text = (
        "**Why TCP 100 %, UDP 80 %.** "
        f"Raw UDP is what UDP gives alone: at {raw5.loss} % loss each way it lost "
        f"{raw5.shown('loss_pct', lambda v: num(v, 1))} % of deliveries, against the "
        f"{100 * (1 - (1 - raw5.loss / 100) ** 2):.2f} % that two crossings of such a link "
        f"drop. A chat that loses messages is not correct, so UDP must rebuild in "
        f"our code what TCP's kernel gives every program: order, retransmission, sessions. "
        f"{kept} Repair is paid in the tail: at 5 % loss TCP's p99 was "
        f"{tcp5.shown('p99_ms')} ms (its retransmission timeout is at least 200 ms) and "
        f"reliable UDP's {rel5.shown('p99_ms')} ms ("
        + (
            f"it probes after about the round trip plus {MAX_ACK_DELAY * 1000:g} ms"
            if "packets" in rel5.label
            else f"its own timer starts at {INITIAL_RTO * 1000:g} ms"
        )
        + ").\n\n"
        f"**Where the rebuilt transport wins.** At 5 % loss its p99 was {tail_words}. "
        + (
            f"On a clean link raw UDP's p50 ({raw0.shown('p50_ms')} ms) beat TCP's "
            f"({tcp0.shown('p50_ms')} ms), whose writer rests between sends to gather "
            f"messages. "
            if fast
            else f"On a clean link TCP's p50 ({tcp0.shown('p50_ms')} ms) was no worse "
            f"than raw UDP's ({raw0.shown('p50_ms')} ms). "
        )
        + (
            ""
            if cost >= 1
            else f"On a clean link reliable UDP cost the server {costs} TCP's CPU per delivery. "
        )
        + "\n\n**What it still cannot give.** Reliable UDP "
        + (
            f"cost the server {costs} TCP's CPU per delivery on a clean link and "
            if cost >= 1
            else ""
        )
        + f"takes {_ratio(rel_code, tcp_code)} TCP's lines of code, every line ours to test. "
        "TCP's repair runs in the kernel for any program; ours runs on one Python "
        + (
            "interpreter, and its congestion control is ours to get right. "
            if "packets" in rel0.label
            else "interpreter, and backs off from no congestion but its own timeouts. "
        )
        + "So the assignment "
        "weighs them as it does: over TCP the work goes into the chat; over UDP most of it goes "
        "into rebuilding what TCP already is."
    )
    return text.replace(" \n\n", "\n\n")


# ---- the rest of the report --------------------------------------------------------------


def _link_table(results: dict[str, Any]) -> str:
    """One row per configuration, one column per loss: p50 / p99 / p99.9 and lost %, medians of
    the repeats."""
    runs = config_runs(results, "lossy")
    if not runs:
        return "_Not measured in this results file._"
    losses = _losses(runs)
    order = [c.key for c in LINK_MATRIX]
    configs = sorted(
        dict.fromkeys(key for key, _, _ in runs),
        key=lambda k: order.index(k) if k in order else len(order),
    )
    rows = []
    for config in configs:
        row = [config]
        for loss in losses:
            point = _link_runs(results, config, loss)
            if not point:
                row.append("-")
                continue
            row.append(
                f"{ms(median_of(point, 'p50_ms'))} / {ms(median_of(point, 'p99_ms'))} / "
                f"{ms(median_of(point, _p999))}, "
                f"{num(median_of(point, 'loss_pct'), 1)} %"
                + (BOUND_MARK if _counted(point)[1] else "")
            )
        rows.append(row)
    return table(rows, ["", *(f"{loss} % loss" for loss in losses)], markdown=True)


def _link_lost(results: dict[str, Any]) -> str:
    """Which configurations that should lose nothing lost deliveries over the lossy link."""
    runs = config_runs(results, "lossy")
    if not runs:
        return ""
    repairing = [k for k in dict.fromkeys(k for k, _, _ in runs) if not k.startswith("udp-raw")]
    losing = [
        k
        for k in repairing
        if any(median_of(_link_runs(results, k, loss), "loss_pct") > 0 for loss in _losses(runs))
    ]
    if not losing:
        return (
            "Raw UDP loses what either crossing of the link drops, about 1 − (1 − p)² of "
            "deliveries; every other configuration lost nothing at any loss."
        )
    return (
        "Raw UDP loses what either crossing of the link drops, about 1 − (1 − p)²; of the "
        "others, " + ", ".join(losing) + " lost deliveries too (RUNS.md has each run)."
    )


def _losses(runs: Sequence[tuple[str, int, LoadResult]]) -> list[int]:
    return sorted({int(r.link.split()[1].rstrip("%")) for _, _, r in runs})


def _ablation_rows(results: dict[str, Any]) -> list[tuple[str, list[LoadResult]]]:
    return [
        ("TCP 200 × 5, default rest", _tcp5(results)),
        ("TCP 200 × 5, no rest (`--coalesce-ms 0`)", _nocoal(results)),
        ("assignment's server 200 × 5, Nagle on", _base5(results)),
        (
            "assignment's server 200 × 5, TCP_NODELAY",
            repeats(results, "targets", "assignment", "nodelay", clients=200, rate=5),
        ),
        (
            "UDP raw 100 × 10, 1.0 (no packing)",
            repeats(results, "targets", "udp-raw", clients=100, rate=10),
        ),
        (
            "UDP raw 100 × 10, packets",
            repeats(results, "targets", "udp-raw-packets", clients=100, rate=10),
        ),
    ]


def _ablation_table(results: dict[str, Any]) -> str:
    rows = [
        [name, spread(runs, "p50_ms", ms), spread(runs, "p99_ms", ms), cpu(runs),
         spread(runs, "loss_pct", lambda v: num(v, 2))]
        for name, runs in _ablation_rows(results)
        if runs
    ]  # fmt: skip
    headers = ["run", "p50 ms", "p99 ms", "server µs/delivery", "lost %"]
    return table(rows, headers, markdown=True) if rows else "_Not measured._"


def times(runs: Sequence[LoadResult], than: Sequence[LoadResult], attr: str) -> str:
    """How many times `than`'s median the runs' median is (`1.5×`), marked harness-bound when
    either side is."""
    if not runs or not than:
        return NA
    bound = _counted(runs)[1] or _counted(than)[1]
    return _ratio(median_of(runs, attr), median_of(than, attr)) + (BOUND_MARK if bound else "")


def _tcp5(results: dict[str, Any]) -> list[LoadResult]:
    return repeats(results, "targets", "tcp", clients=200, rate=5, coalesce_ms=DEFAULT)


def _nocoal(results: dict[str, Any]) -> list[LoadResult]:
    return repeats(results, "targets", "tcp", clients=200, rate=5, coalesce_ms=0.0)


def _base5(results: dict[str, Any]) -> list[LoadResult]:
    return repeats(results, "targets", "assignment", clients=200, rate=5)


def _saturation_loads(results: dict[str, Any]) -> list[list[LoadResult]]:
    """The saturation group's runs, one list a load (its repeats), lightest load first."""
    runs: dict[float, list[LoadResult]] = {}
    for _, r in load_results(results, "saturation"):
        runs.setdefault(r.rate, []).append(r)
    return [same for _, same in sorted(runs.items())]


def _load(runs: Sequence[LoadResult]) -> str:
    return f"{runs[0].clients} × {runs[0].rate:g}"


def _saturation_table(results: dict[str, Any]) -> str:
    """RUNS.md: TCP at 200 clients from well under to twice past what it keeps up with: what
    was offered, what arrived, how late, who was dropped, and how much memory the server took."""
    rows = [
        [_load(same), num(same[0].offered_deliveries_per_s),
         spread(same, "deliveries_per_s", num), spread(same, "p50_ms", ms),
         spread(same, "p99_ms", ms), spread(same, "lost", num),
         spread(same, "too_slow_seen", num), spread(same, "server_peak_rss_mb", num)]
        for same in _saturation_loads(results)
    ]  # fmt: skip
    headers = ["load", "offered /s", "delivered /s", "p50 ms", "p99 ms", "lost",
               "dropped", "peak MB"]  # fmt: skip
    return table(rows, headers, markdown=True) if rows else "_Not measured._"


def saturation_summary(results: dict[str, Any]) -> str:
    """Section 5's one sentence on the saturation runs: the loads, the most delivered, p99 at
    the lightest and the heaviest load (medians [ranges]), and what any run lost or dropped."""
    loads = _saturation_loads(results)
    if not loads:
        return "_Not measured._"
    first, last = loads[0], loads[-1]
    best = max(loads, key=lambda same: median_of(same, "deliveries_per_s"))
    every = [r for same in loads for r in same]
    lost, dropped = max(r.lost for r in every), max(r.too_slow_seen for r in every)
    harm = (
        "no run lost or dropped anything"
        if lost == 0 and dropped == 0
        else f"a run lost up to {num(lost)} deliveries and dropped up to {num(dropped)} clients"
    )
    low, high = (num(f(r.server_peak_rss_mb for r in every)) for f in (min, max))
    return (
        f"From {_load(first)} to {_load(last)} ({num(first[0].offered_deliveries_per_s)} to "
        f"{num(last[0].offered_deliveries_per_s)} deliveries/s offered) it delivered at most "
        f"{spread(best, 'deliveries_per_s', num)} a second, at {_load(best)}; p99 grew from "
        f"{spread(first, 'p99_ms', ms)} to {spread(last, 'p99_ms', ms)} ms; {harm}, and the "
        f"server's memory peaked at {low if low == high else f'{low}-{high}'} MB."
    )


_OVERLOAD_CASES = {
    "closing": "{} close at once",
    "non-readers": "{} never read, 10 talk",
    "history": "{} never read, ask `history` 50 times",
}


def _overload_table(results: dict[str, Any]) -> str:
    """RUNS.md: the overload group (benchmarks.overload), one row a case, each figure the
    median of its repeats (each repeat follows it): how long many closes take, and how a
    newcomer fares meanwhile; what readers see beside thousands that never read, or that ask
    for history and never read it; and the server's memory before, at the peak and after."""
    cases: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for e in results.get("overload", []):
        cases.setdefault((e["case"], e["clients"]), []).append(e)

    def mid(runs: list[dict[str, Any]], key: str) -> float | None:
        known = [r[key] for r in runs if r[key] is not None]
        return statistics.median(known) if known else None

    rows = []
    for (case, clients), runs in cases.items():
        closing = case == "closing"
        rows.append([
            _OVERLOAD_CASES.get(case, f"{case}, {{}} clients").format(num(clients))
            + f" ({len(runs)} runs)",
            num(mid(runs, "seconds"), 2) if closing else "-",
            ms(mid(runs, "welcome_ms")) if closing else "-",
            "-" if closing else num(mid(runs, "dropped")),
            "-" if closing else ms(mid(runs, "p99_ms")),
            num(mid(runs, "rss_start_mb")), num(mid(runs, "rss_peak_mb")),
            num(mid(runs, "rss_end_mb")),
        ])  # fmt: skip
    headers = ["case", "closed s", "welcome ms", "dropped", "p99 ms", "MB before", "MB peak",
               "MB after"]  # fmt: skip
    return table(rows, headers, markdown=True) if rows else "_Not measured._"


def _headline_list(results: dict[str, Any], rows: Sequence[Row]) -> str:
    """How many runs each headline figure is the median of: the usual count once, every
    figure whose count differs (a failed run, or runs the harness limited) by name, and the
    harness-bound ones (each marked † where it is shown) by the rule they follow."""
    figures = [(f"{row.label}, {'clean' if row.loss == 0 else f'{row.loss} %'}", row.runs)
               for row in rows if row.runs]  # fmt: skip
    figures += [(name, runs) for name, runs in _ablation_rows(results) if runs]
    if not figures:
        return NA
    made = max(len(runs) for _, runs in figures)
    fewer = [f"{name} {len(_counted(runs)[0])}" for name, runs in figures
             if not _counted(runs)[1] and len(_counted(runs)[0]) != made]  # fmt: skip
    bound = any(_counted(runs)[1] for _, runs in figures)
    return (
        f"The first table and section 3's: each figure over {made} runs"
        + (", except (runs counted) " + "; ".join(fewer) if fewer else "")
        + ("; one marked † (harness-bound), over every run made" if bound else "")
        + ". The targets: the *runs* column above; the report's section 5 counts every run."
    )


def _calibration_text(calibration: dict[str, Any] | None) -> str:
    if calibration is None:
        return "It was not calibrated against the example here: run `make calibrate`."
    gaps = {g["figure"]: g for g in calibration["gaps"]}
    parts = [
        f"{label} {num(gaps[key]['ours'], digits)}{unit} against "
        f"{num(gaps[key]['seed'], digits)}{unit} ({gaps[key]['gap']:+.0%}, "
        f"±{gaps[key]['tolerance']:.0%} allowed)"
        for key, label, digits, unit in (
            ("cpu_us", "CPU per delivery at 200 × 5", 2, " µs"),
            ("p99_ms", "p99", 1, " ms"),
            ("peak", "deliveries/s at 200 × 50", 0, ""),
        )
        if key in gaps
    ]
    verdict = "**passed**" if calibration["verdict"] == "pass" else "**failed**"
    return (
        f"`make calibrate` ran it and the example in the same rounds "
        f"({calibration['rounds']}, {calibration['date'][:10]}) and {verdict}; medians, ours "
        "against the example's: " + "; ".join(parts) + "."
    )


def _retx(runs: Sequence[LoadResult], attr: str) -> str:
    values = [getattr(r, attr) for r in runs if getattr(r, attr) >= 0]
    return num(statistics.median(values)) if values else NA


def build_context(
    results: dict[str, Any],
    figures: dict[str, Path],
    origin: Provenance,
    cluster: dict[str, Any] | None = None,
    calibration: dict[str, Any] | None = None,
    chaos: dict[str, Any] | None = None,
    attacks: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Every placeholder of the template."""
    meta = results["meta"]
    rows = _first_rows(results)
    first_runs = [r for row in rows for r in row.runs]
    every_run = [r for _, r in load_results(results)]
    floor = meta.get("floor")
    tcp5, nocoal = _tcp5(results), _nocoal(results)
    nodelay = repeats(results, "targets", "assignment", "nodelay", clients=200, rate=5)
    targets = evaluate(results)
    knees = sweep_knees(results)
    clients = sorted({r.clients for _, _, r in config_runs(results, "lossy")})
    counts = sorted({len(row.runs) for row in rows if row.runs})
    notes = "".join(
        f"\n> The run `{f['name']}` ({f['group']}) failed and is missing: {f['error']}\n"
        for f in results.get("failed", [])
    ) + "".join(
        f"\n> Not measured (`{s['group']}`): {s['reason']}.\n" for s in results.get("skipped", [])
    )
    ctx = {
        "provenance": _provenance_text(meta, origin),
        "notes": notes,
        "link_clients": str(clients[0]) if clients else NA,
        "first_table": _first_table(rows),
        "answer": answer(rows),
        "first_repeats": (
            "-".join(str(c) for c in counts) + (" run" if counts == [1] else " runs")
            if counts
            else NA
        ),
        "cpu_note": (
            f"CPU figures measured over fewer than {MIN_TICKS} clock ticks of 10 ms (RUNS.md "
            "gives each run's) are shown to two digits."
            if few_ticks(first_runs)
            else f"Every CPU figure was measured over at least {MIN_TICKS} clock ticks."
        ),
        "loc_counter": LOC_COUNTER,
        "coalesce_default": f"{DEFAULT_COALESCE_MS:g}",
        "rto_ms": f"{INITIAL_RTO * 1000:g}",
        "max_ack_delay_ms": f"{MAX_ACK_DELAY * 1000:g}",
        "link_table": _link_table(results),
        "link_lost": _link_lost(results),
        "rel5_server_retx": _retx(_link_runs(results, "udp-reliable", 5), "server_retransmitted"),
        "relp5_server_retx": _retx(
            _link_runs(results, "udp-reliable-packets", 5), "server_retransmitted"
        ),
        "tcp5_kernel_retx": _retx(_link_runs(results, "tcp", 5), "tcp_retransmitted"),
        "ablation_repeats": str(max((len(r) for _, r in _ablation_rows(results)), default=0)),
        "ablation_table": _ablation_table(results),
        "floor_tcp_us": num(floor["tcp_send_us"], 1) if floor else NA,
        "tcp5_frames": (
            num(floor["tcp_send_us"] / median_of(tcp5, "server_cpu_us_per_delivery"), 1)
            if floor and tcp5
            else NA
        ),
        "nocoal_cpu": times(nocoal, tcp5, "server_cpu_us_per_delivery"),
        "nocoal_p50": times(nocoal, tcp5, "p50_ms"),
        "nodelay_cpu": times(nodelay, _base5(results), "server_cpu_us_per_delivery"),
        "nodelay_p50": times(nodelay, _base5(results), "p50_ms"),
        "calibration": _calibration_text(calibration),
        "targets_table": _targets_table(targets),
        "keep_up_pct": f"{KEEP_UP * 100:g}",
        "keep_up_p99": f"{KEEP_UP_P99_MS:g}",
        "harness_cpu_limit": f"{HARNESS_CPU_LIMIT_PCT:g}",
        "harness_lag_limit": f"{HARNESS_LAG_LIMIT_MS:g}",
        "bound_runs": f"{sum(r.harness_bound for r in every_run)} of the {len(every_run)} runs",
        "saturation_summary": saturation_summary(results),
        "overload_targets": _overload_targets(results),
        "cluster_text": (
            render(CLUSTER_TEXT, cluster_context(cluster))
            if cluster is not None
            else "_Not measured: run `make bench-cluster`._"
        ),
        "chaos_text": (
            render(CHAOS_TEXT, chaos_context(chaos))
            if chaos is not None
            else "_Not measured: run `make bench-chaos`._"
        ),
        "attacks_text": (
            render(ATTACKS_TEXT, attacks_context(attacks))
            if attacks is not None
            else "_Not measured: run `make bench-attacks`._"
        ),
    }
    for key, protocol in (("tcp", "tcp"), ("base", "assignment")):
        k = knees.get(protocol)
        ctx[f"{key}_knee"] = (
            f"{k.knee_rate:g} msg/s per client ({num(k.knee_offered)} deliveries/s)"
            if k and k.knee_rate is not None
            else "none"
            if k
            else NA
        )
    for key in ("link", "loss", "percentiles", "knee", "latency"):
        ctx[f"fig_{key}"] = (
            f"![{key}]({figures[key].name})" if key in figures else "_No data for this figure._"
        )
    return ctx


def runs_page(
    results: dict[str, Any],
    cluster: dict[str, Any] | None,
    origin: Provenance,
    chaos: dict[str, Any] | None = None,
    attacks: dict[str, Any] | None = None,
) -> str:
    """RUNS.md: every run of every group, as measured; each saturation load and overload case
    over its repeats; the capacity, overload, cluster and chaos runs."""
    parts = [
        "# Every run\n",
        "<!-- Generated by `make report` with REPORT.md: edit report/generate.py. -->\n",
        _provenance_text(results["meta"], origin),
        "Latencies in ms; *retransmitted* is what the UDP server said it sent again, what the "
        "clients sent again, and the TCP segments the namespace's kernel sent again (`-`: not "
        "counted for that run); *CPU ticks* is how many 10 ms clock ticks the server's CPU "
        "figure rests on. *deliv/s* counts every delivery that arrived in the measured window, "
        "the warm-up's late ones included, so a server catching up can show more than was "
        "offered; *lost %* is the share of the window's own deliveries that never arrived.",
    ]
    targets = [*evaluate(results), *evaluate_overload(results)]
    packets = evaluate_packets(results)
    parts.append(f"## Targets\n\n{_targets_table(targets, measured=True)}")
    if any(t.samples for t in packets):
        parts.append(
            f"## Targets of UDP packet sessions\n\n{_targets_table(packets, measured=True)}"
        )
    parts.append(
        "## How many runs each headline figure is\n\n"
        + _headline_list(results, _first_rows(results))
    )
    notes = _target_notes([*targets, *packets])
    if notes:
        parts.append(f"## Targets not plainly met, run by run\n\n{notes}")
    for group in GROUPS:
        runs = load_results(results, group)
        if runs:
            again = " (each round of the repeats in turn)" if group in REPEATED else ""
            parts.append(f"## {group}{again}\n\n{_run_table(runs)}")
    if _saturation_loads(results):
        parts.append(
            "## saturation, each load over its repeats (median [range])\n\n"
            + _saturation_table(results)
        )
    for entry in results.get("capacity", []):
        parts.append(
            f"## capacity\n\n{num(entry['online'])} of {num(entry['clients'])} idle TCP clients "
            f"online, {num(entry['bytes_per_client'] / 1024, 1)} KiB of server memory each, "
            f"joined in {num(entry['connect_seconds'], 1)} s."
        )
    if results.get("overload"):
        parts.append(
            "## overload, each case over its repeats (median)\n\n" + _overload_table(results)
        )
    for entry in results.get("overload", []):
        parts.append(f"## overload: {entry['name']}\n\n{overload.summary(entry)}.")
    if cluster is not None:
        ctx = cluster_context(cluster)
        parts.append(
            "## cluster (`make bench-cluster`)\n\n"
            + "\n\n".join(
                ctx[k]
                for k in (
                    "table_cluster_saturation", "table_cluster_latency", "table_cluster_stream",
                )
            )
        )  # fmt: skip
    if chaos is not None:
        parts.append(
            _measured_section("resume under chaos", "bench-chaos", chaos["meta"])
            + "Resume p50 and p99 in ms; *missed, told*: missed after a `resumed: false`.\n\n"
            + chaos_context(chaos)["chaos_table"]
        )
    if attacks is not None:
        parts.append(
            _measured_section("attacks", "bench-attacks", attacks["meta"])
            + "The probes' round trips in ms; the server's memory in MB.\n\n"
            + attacks_context(attacks)["attacks_table"]
        )
    return "\n\n".join(parts) + "\n"


def _measured_section(title: str, target: str, meta: dict[str, Any]) -> str:
    """A RUNS.md heading naming the make target, the date and the commit its file came from."""
    commit = (meta.get("git_commit") or "unknown")[:10]
    return f"## {title} (`make {target}`, {meta['date']}, commit {commit})\n\n"


CLUSTER_TEXT = """With `--redis`, servers share one room through one Redis stream
(`make bench-cluster`, {{cluster_date}}, commit {{cluster_commit}}; all on {{cluster_cores}}
cores, so two servers cannot gain here). Most deliveries/s past saturation:
{{cluster_one_peak}} for one server alone, {{cluster_redis_peak}} on Redis,
{{cluster_two_peak}} for two servers on Redis; p99 at {{cluster_room}} × 5:
{{cluster_one_p99}}, {{cluster_redis_p99}} and {{cluster_two_p99}} ms. One Redis core appends
about {{stream_ceiling}} events/s, {{stream_room_deliveries}} deliveries/s at {{cluster_room}}
members: {{cluster_ceiling}}. At {{cluster_target}} a TCP server on Redis slows its talkers
while Redis is behind, as while its writer is, and refuses nothing. {{cluster_target_text}}
Tables in RUNS.md."""
"""Section 6, from `benchmarks.cluster`'s file."""


def cluster_context(cluster: dict[str, Any]) -> dict[str, str]:
    """Section 6's figures from `benchmarks.cluster`'s file: each set-up's most deliveries/s
    past saturation and p99 at the latency load, and what one stream carries at most."""
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
        "cluster_ceiling": (
            "each server's fan-out, not the stream, is the ceiling"
            if stream["ceiling_events_per_s"] * room > peak.get("one server", 0.0)
            else "the stream is the ceiling before the servers' fan-out"
        ),
        **_cluster_target(cluster.get("target", [])),
        "table_cluster_saturation": _cluster_table(cluster["saturation"], _SATURATION_COLUMNS),
        "table_cluster_latency": _cluster_table(latency, _LATENCY_COLUMNS),
        "table_cluster_stream": _cluster_table(cluster["stream"], _STREAM_COLUMNS),
    }


def _cluster_target(target: Sequence[dict[str, Any]]) -> dict[str, str]:
    """The Redis target's load, and what a server on Redis did there against one alone: median
    [range] of the runs."""
    runs = {run["setup"]: run for run in target}
    redis, alone = runs.get("one server + Redis"), runs.get("one server")
    if redis is None or alone is None:
        return {"cluster_target": "the target load", "cluster_target_text": "Not measured."}

    def spread(run: dict[str, Any], key: str, fmt: Callable[[float], str]) -> str:
        low, high = run["range"].get(key, [run[key], run[key]])
        shown = fmt(run[key])
        return shown if fmt(low) == fmt(high) else f"{shown} [{fmt(low)}–{fmt(high)}]"

    def bound(run: dict[str, Any]) -> str:
        return f" {BOUND_MARK}" if run["harness_bound"] else ""

    return {
        "cluster_target": f"{redis['clients']} × {redis['rate']:g}",
        "cluster_target_text": (
            f"Median [range] of {len(redis['runs'])}: {spread(redis, 'delivered_pct', num)} % "
            f"delivered, {spread(redis, 'refused_pct', num)} % refused, p99 "
            f"{spread(redis, 'p99_ms', ms)} ms{bound(redis)}; alone, p99 "
            f"{spread(alone, 'p99_ms', ms)} ms{bound(alone)}."
        ),
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


CHAOS_TEXT = """`make bench-chaos` ({{chaos_date}}, commit {{chaos_commit}}): {{chaos_clients}}
users at {{chaos_rate}} msg/s for {{chaos_duration}} s a scenario, a cut every
{{chaos_cut}} s (UDP: from a new port), a SIGKILL every {{chaos_kill}} s. Resume: from the cut
or the server back to `history_end`. {{chaos_summary}} {{chaos_reading}} Each scenario:
RUNS.md."""
"""Section 7, from `benchmarks.chaos`'s file; its table, a row a scenario, is in RUNS.md."""

_SETUPS = {"single": "one server", "redis": "two on Redis"}
_FAULTS = (
    ("missed_without_notice", "missed without a notice"),
    ("received_twice", "received twice"),
    ("out_of_order", "out of order"),
)
"""The chaos counts whose target is none."""


def chaos_context(chaos: dict[str, Any]) -> dict[str, str]:
    """Section 7's figures from `benchmarks.chaos`'s file: a row a scenario, and its reading."""
    meta, scenarios = chaos["meta"], chaos["scenarios"]
    rows = [
        [
            f"{s['transport'].upper()}, {_SETUPS.get(s['setup'], s['setup'])}",
            num(s["cuts"]), num(s["kills"]), num(s["resumes"]),
            num(s["missed_without_notice"]), num(s["missed_with_notice"]),
            num(s["received_twice"]), num(s["out_of_order"]),
            ms(s["resume_p50_ms"]), ms(s["resume_p99_ms"]),
        ]
        for s in scenarios
    ]  # fmt: skip
    headers = [
        "scenario", "cuts", "kills", "resumes", "missed silently", "missed, told", "twice",
        "out of order", "p50 ms", "p99 ms",
    ]  # fmt: skip
    return {
        "chaos_date": meta["date"],
        "chaos_commit": (meta.get("git_commit") or "unknown")[:10],
        "chaos_duration": f"{meta['duration']:g}",
        "chaos_clients": str(meta["clients"]),
        "chaos_rate": f"{meta['rate']:g}",
        "chaos_cut": f"{meta['cut_every']:g}",
        "chaos_kill": f"{meta['kill_every']:g}",
        "chaos_table": table(rows, headers, markdown=True),
        "chaos_summary": chaos_summary(scenarios),
        "chaos_reading": chaos_reading(scenarios),
    }


def chaos_summary(scenarios: Sequence[dict[str, Any]]) -> str:
    """Section 7's one sentence over every scenario: the faults made, the resumes, and how
    long a resume took, from the quickest scenario's to the slowest's (p50 and p99)."""
    if not scenarios:
        return "No scenario was run."

    def span(key: str) -> str:
        values = sorted(s[key] for s in scenarios)
        low, high = ms(values[0]), ms(values[-1])
        return low if low == high else f"{low} to {high}"

    transports = " and ".join(dict.fromkeys(s["transport"].upper() for s in scenarios))
    setups = ", ".join(dict.fromkeys(_SETUPS.get(s["setup"], s["setup"]) for s in scenarios))
    total = {k: num(sum(s[k] for s in scenarios)) for k in ("cuts", "kills", "resumes")}
    return (
        f"Over {len(scenarios)} scenarios ({transports}; {setups}): {total['cuts']} cuts, "
        f"{total['kills']} kills, {total['resumes']} resumes; the scenarios' resume p50 "
        f"{span('resume_p50_ms')} ms, p99 {span('resume_p99_ms')} ms."
    )


def chaos_reading(scenarios: Sequence[dict[str, Any]]) -> str:
    """What the chaos figures say against the targets: 0 missed without a notice, 0 twice,
    0 out of order, and resumed within 1 s at p99; the scenarios that fall short, named."""

    def name(s: dict[str, Any]) -> str:
        return f"{s['transport'].upper()} {_SETUPS.get(s['setup'], s['setup'])}"

    wrong = [
        f"{name(s)} ({', '.join(f'{num(s[k])} {label}' for k, label in _FAULTS if s[k])})"
        for s in scenarios
        if any(s[k] for k, _ in _FAULTS)
    ]
    slow = [
        f"{name(s)} ({ms(s['resume_p99_ms'])} ms)"
        for s in scenarios
        if not s["resume_p99_ms"] < RESUME_P99_TARGET_MS
    ]
    notices = sum(s["missed_with_notice"] for s in scenarios)
    parts = [
        "Nothing was missed without a notice, received twice or out of order."
        if not wrong
        else f"Against a target of none: {'; '.join(wrong)}.",
        f"Resumed within {RESUME_P99_TARGET_MS / 1000:g} s at p99 in every scenario."
        if not slow
        else f"Resume p99 over {RESUME_P99_TARGET_MS / 1000:g} s: {', '.join(slow)}.",
        f"The {num(notices)} missed with a notice followed a `resumed: false` (beyond the "
        "history kept, or a killed server's last batch)."
        if notices
        else "No resume was answered `resumed: false`.",
    ]
    return " ".join(parts)


ATTACKS_TEXT = """`make bench-attacks` ({{attacks_date}}, commit {{attacks_commit}}): each
attack once found, again, while {{attacks_probes}} users chat; held: none dropped, p99 under
100 ms, memory back within 50 MB. {{attacks_summary}} Cases: RUNS.md."""
"""Section 8, from `benchmarks.attacks`' file."""


def _attack_figure(case: dict[str, Any]) -> str:
    """What one case did, in a few words."""
    f, name = case["figures"], case["case"]
    if name == "lockout":
        return f"{f['welcomed']} of {f['newcomers']} newcomers welcomed"
    if name == "flooder":
        return f"dropped after {num(f['dropped_after_s'], 2)} s, {f['log_lines']} log lines"
    if name == "held-frames":
        grew = (case["rss_peak_mb"] or 0.0) - (case["rss_start_mb"] or 0.0)
        return f"{f['sessions']} sessions holding frames, peak +{num(grew)} MB"
    if name == "kill-history":
        return (
            f"{len(f['kills'])} kills at {num(f['rate_median'])} msg/s, at most "
            f"{num(f['lost_ms_max'])} ms of history lost"
        )
    if name == "soak":
        wrong = sum(f[k] for k in ("missed", "received_twice", "out_of_order"))
        return f"{num(f['deliveries'])} deliveries checked, {wrong} wrong"
    return ""


def _held(case: dict[str, Any]) -> str:
    """ "yes", or the targets a case missed."""
    missed = [target for target, met in case["checks"].items() if not met]
    return "NO: " + ", ".join(missed) if missed else "yes"


def attacks_context(attacks: dict[str, Any]) -> dict[str, str]:
    """Section 8's figures from `benchmarks.attacks`' file: a row a case, and a summary."""
    meta, cases = attacks["meta"], attacks["cases"]
    headers = ["case", "held", "what it did", "p50", "p99", "dropped", "memory"]
    rows = [
        [
            c["case"],
            _held(c),
            _attack_figure(c),
            ms(c["probe_p50_ms"]),
            ms(c["probe_p99_ms"]),
            "-" if c["probes_dropped"] is None else str(c["probes_dropped"]),
            "-" if c["rss_start_mb"] is None
            else f"{num(c['rss_start_mb'])} → {num(c['rss_peak_mb'])} → {num(c['rss_end_mb'])}",
        ]
        for c in cases
    ]  # fmt: skip
    missed = [f"{c['case']} ({_held(c)[4:]})" for c in cases if not c["passed"]]
    summary = (
        f"All {len(cases)} held."
        if not missed
        else f"{len(cases) - len(missed)} of {len(cases)} held; not: " + "; ".join(missed) + "."
    )
    return {
        "attacks_date": meta["date"],
        "attacks_commit": (meta.get("git_commit") or "unknown")[:10],
        "attacks_probes": str(meta.get("probes", "a few")),
        "attacks_summary": summary,
        "attacks_table": table(rows, headers, markdown=True),
    }


def _read_optional(path: Path) -> dict[str, Any] | None:
    return read_results(path) if path.exists() else None


def generate(results_path: Path, out_dir: Path, origin: Provenance | None = None) -> Path:
    """The report, RUNS.md and the figures from a results file and, beside it, the cluster's
    and the calibration's files (the report says how to make those that are missing)."""
    results = read_results(results_path)
    cluster = _read_optional(results_path.parent / CLUSTER_FILE)
    calibration = _read_optional(results_path.parent / CALIBRATION_FILE)
    chaos = _read_optional(results_path.parent / CHAOS_FILE)
    attacks = _read_optional(results_path.parent / ATTACKS_FILE)
    origin = origin or provenance(results_path)
    figures = make_plots(results, out_dir)
    context = build_context(results, figures, origin, cluster, calibration, chaos, attacks)
    text = render(TEMPLATE.read_text(encoding="utf-8"), context)
    report = out_dir / "REPORT.md"
    report.write_text(text, encoding="utf-8")
    (out_dir / "RUNS.md").write_text(
        runs_page(results, cluster, origin, chaos, attacks), encoding="utf-8"
    )
    return report
