"""Calibration: is the assignment's server (the baseline) as fast as the assignment's own example?

Contract:
    python -m benchmarks.calibrate [--seed PATH] [--rounds 3] [--duration 4] [--out FILE]
    (`make calibrate`) -> prints each run, the comparison and PASS or FAIL; writes FILE
    (benchmarks/results/calibration.json). Exit status 0 on pass, 1 on fail; when the example
    is not there, says so and exits 0 without writing anything.
    compare(seed_runs, ours_runs, tolerance=TOLERANCE) -> Calibration   the pure verdict

Every comparison in the report against "the assignment's server" stands on
`benchmarks/assignment_server.py` being the example's design and not a slower cousin of it.
This checks it: the example (`../shared/seed/server.py` beside the repository, run as given
with its port as its one argument; it is reference material and is never copied here) and
`benchmarks.assignment_server` are driven by the same harness in raw text mode, in the same
rounds (each round runs both, the example first), at least MIN_ROUNDS rounds:

- 200 clients x 5 msg/s: server CPU per delivery and p99;
- 200 clients x 50 msg/s, past both servers' saturation: the most deliveries/s (peak).

The verdict compares the medians over the rounds: each figure of the baseline must be within
TOLERANCE of the example's (a relative gap, |ours / example - 1|). CPU per delivery and the
peak are steady from run to run; p99 at 200 x 5 is a tail on a shared machine and gets a
wider band. A figure the harness may have limited (harness-bound) is still compared, and said.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import RESULTS_DIR, machine_meta
from benchmarks.measure import LoadResult, LoadSpec, run_clients
from benchmarks.servers import REPO_ROOT, ServerProcess, free_port, server_command

SEED_SERVER = REPO_ROOT.parent / "shared" / "seed" / "server.py"
"""The assignment's example server, where the course's material sits beside the repository."""
OUT_FILE = RESULTS_DIR / "calibration.json"
MIN_ROUNDS = 3
CLIENTS = 200
LIGHT_RATE = 5.0
PEAK_RATE = 50.0
TOLERANCE = {"cpu_us": 0.15, "p99_ms": 0.5, "peak": 0.2}
"""The largest relative gap allowed between the baseline's median and the example's."""
_LABELS = {
    "cpu_us": "CPU per delivery at 200 x 5, µs",
    "p99_ms": "p99 at 200 x 5, ms",
    "peak": "peak deliveries/s at 200 x 50",
}
_READY_TIMEOUT_S = 10.0
SEED_READY = re.compile(r"\.\.\.$")
"""The example's line once it listens ends in "..." ("server started...", in Russian); after
it, one line a connection."""


@dataclass(frozen=True)
class Figures:
    """One round's figures of one server."""

    cpu_us: float
    p99_ms: float
    peak: float
    harness_bound: bool = False


@dataclass(frozen=True)
class Gap:
    """One figure: both medians, the relative gap, the tolerance, whether it holds."""

    figure: str
    seed: float
    ours: float
    gap: float
    tolerance: float
    holds: bool


@dataclass(frozen=True)
class Calibration:
    rounds: int
    gaps: Sequence[Gap]

    @property
    def passed(self) -> bool:
        return self.rounds >= MIN_ROUNDS and all(g.holds for g in self.gaps)


def compare(
    seed_runs: Sequence[Figures],
    ours_runs: Sequence[Figures],
    tolerance: Mapping[str, float] = TOLERANCE,
) -> Calibration:
    """The verdict on the medians of each server's rounds; fewer than MIN_ROUNDS rounds of
    either fails, whatever the figures."""
    gaps = []
    for figure, allowed in tolerance.items():
        seed = statistics.median(getattr(f, figure) for f in seed_runs) if seed_runs else 0.0
        ours = statistics.median(getattr(f, figure) for f in ours_runs) if ours_runs else 0.0
        gap = ours / seed - 1 if seed > 0 else float("inf")
        gaps.append(Gap(figure, seed, ours, gap, allowed, abs(gap) <= allowed))
    return Calibration(min(len(seed_runs), len(ours_runs)), gaps)


def format_calibration(result: Calibration) -> str:
    lines = [
        f"{_LABELS[g.figure]:<38} example {g.seed:>12,.2f}  ours {g.ours:>12,.2f}  "
        f"gap {g.gap:+6.1%} (within ±{g.tolerance:.0%}: {'yes' if g.holds else 'NO'})"
        for g in result.gaps
    ]
    if result.rounds < MIN_ROUNDS:
        lines.append(f"only {result.rounds} round(s): at least {MIN_ROUNDS} are needed")
    lines.append("PASS" if result.passed else "FAIL")
    return "\n".join(lines)


def _spec(rate: float, duration: float) -> LoadSpec:
    return LoadSpec(
        server="assignment",
        clients=CLIENTS,
        rate=rate,
        duration=duration,
        warmup=0.5,
        drain=2.0 if rate == LIGHT_RATE else 0.5,
    )


def _one(which: str, seed: Path, spec: LoadSpec) -> LoadResult:
    """One run against the example (`seed`) or the baseline (`ours`). The example runs as
    given, `python -u server.py PORT`, and has no handler for SIGTERM, which ends it."""
    port = free_port()
    example = [sys.executable, "-u", str(seed), str(port)]
    server = ServerProcess(example if which == "seed" else server_command("assignment"))
    try:
        if which == "seed":
            server.wait_for_log(SEED_READY, _READY_TIMEOUT_S)
            address = ("127.0.0.1", port)
        else:
            address = server.wait_ready()
        return run_clients(spec, address, server.pid)
    finally:
        server.stop()


def _round(seed: Path, duration: float) -> dict[str, tuple[LoadResult, LoadResult]]:
    """One round: each server at the light load, then each past saturation."""
    light, peak = _spec(LIGHT_RATE, duration), _spec(PEAK_RATE, duration * 0.75)
    runs = {
        which: (_one(which, seed, light), _one(which, seed, peak)) for which in ("seed", "ours")
    }
    return runs


def figures(light: LoadResult, peak: LoadResult) -> Figures:
    return Figures(
        cpu_us=light.server_cpu_us_per_delivery,
        p99_ms=light.p99_ms,
        peak=peak.deliveries_per_s,
        harness_bound=light.harness_bound or peak.harness_bound,
    )


def _record(
    result: Calibration,
    rounds: Sequence[dict[str, tuple[LoadResult, LoadResult]]],
    seed: Path,
    duration: float,
) -> dict[str, Any]:
    return {
        "what": (
            f"benchmarks/assignment_server.py against the assignment's example ({seed.name}, "
            f"run as given), same harness, same rounds: {CLIENTS} clients x {LIGHT_RATE:g} "
            f"msg/s for {duration:g} s and x {PEAK_RATE:g} msg/s for {duration * 0.75:g} s"
        ),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **machine_meta(),
        "rounds": result.rounds,
        "tolerance": dict(TOLERANCE),
        "verdict": "pass" if result.passed else "fail",
        "gaps": [asdict(g) for g in result.gaps],
        "runs": {which: [asdict(figures(*r[which])) for r in rounds] for which in ("seed", "ours")},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.calibrate", description=__doc__)
    parser.add_argument("--seed", type=Path, default=SEED_SERVER, help="the example server.py")
    parser.add_argument("--rounds", type=int, default=MIN_ROUNDS)
    parser.add_argument("--duration", type=float, default=4.0, help="measured s at 200 x 5")
    parser.add_argument("--out", type=Path, default=OUT_FILE)
    args = parser.parse_args(argv)
    if not args.seed.is_file():
        print(f"calibration skipped: the example server is not at {args.seed} (--seed PATH)")
        return 0
    rounds = []
    for number in range(1, args.rounds + 1):
        runs = _round(args.seed, args.duration)
        rounds.append(runs)
        for which, label in (("seed", "example"), ("ours", "baseline")):
            f = figures(*runs[which])
            print(
                f"round {number} {label:>8}: {f.cpu_us:.2f} µs/delivery, p99 {f.p99_ms:.1f} ms, "
                f"peak {f.peak:,.0f}/s" + (" (harness-bound)" if f.harness_bound else "")
            )
    result = compare([figures(*r["seed"]) for r in rounds], [figures(*r["ours"]) for r in rounds])
    print(format_calibration(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = _record(result, rounds, args.seed, args.duration)
    args.out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
