"""The benchmark harness: `python -m benchmarks [--full] [--only GROUP,...] [--threads N]
[--generator auto|c|python]`.

Runs the suite of benchmarks.harness (`make bench`: the quick one, under twelve minutes on two
cores; `make bench-full`: the long one), prints a table per group and the targets, and writes
latest.json and latest.csv to --out (benchmarks/results by default), which `make report` turns
into report/REPORT.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from benchmarks.harness import (
    GROUPS,
    RESULTS_DIR,
    Reporter,
    Scenario,
    build_suite,
    format_tables,
    run_suite,
    write_results,
)
from benchmarks.measure import DEFAULT_THREADS, GENERATORS
from benchmarks.targets import evaluate, evaluate_overload, evaluate_packets, format_targets


def _groups(text: str) -> list[str]:
    chosen = [g.strip() for g in text.split(",") if g.strip()]
    unknown = sorted(set(chosen) - set(GROUPS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown group(s) {unknown}; known: {', '.join(GROUPS)}")
    return chosen


def _with_generator(scenario: Scenario, generator: str) -> Scenario:
    """The scenario driven by `generator` where it can be (c: where the C generator runs)."""
    spec = scenario.spec
    if spec is None or scenario.group == "threads" or (generator == "c" and not spec.c_supported):
        return scenario
    return dataclasses.replace(scenario, spec=dataclasses.replace(spec, generator=generator))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Load the TCP and UDP chat servers (and the assignment's server) with clients "
        "speaking the real protocol; measure latency, loss, throughput and cost.",
    )
    parser.add_argument(
        "--full", action="store_true", help="the long suite (longer runs, more points)"
    )
    parser.add_argument(
        "--only", type=_groups, metavar="GROUP,...", help=f"run only these: {', '.join(GROUPS)}"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        metavar="N",
        help="worker threads driving the clients, each with its own group of clients and its "
        f"own epoll loop (default: {DEFAULT_THREADS}; as many as clients = a thread per client)",
    )
    parser.add_argument(
        "--generator",
        choices=GENERATORS,
        default="auto",
        help="the load generator: c (benchmarks/cgen) where a run allows it, python, or auto "
        "(default: c where it can and a C compiler is there); the threads group is always python",
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS_DIR, help="where latest.json and latest.csv go"
    )
    parser.add_argument(
        "--list", action="store_true", help="list the scenarios of the suite and exit"
    )
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be 1 or more")
    suite = "full" if args.full else "bench"
    scenarios = build_suite(suite, args.threads)
    scenarios = [_with_generator(s, args.generator) for s in scenarios]
    if args.only:
        scenarios = [s for s in scenarios if s.group in args.only]
    if args.list:
        for scenario in scenarios:
            print(f"{scenario.group:>12}  {scenario.name}")
        return 0
    results = run_suite(scenarios, suite, Reporter(), args.threads)
    json_path, csv_path = write_results(results, args.out)
    print(format_tables(results))
    print("\n== targets\n" + format_targets([*evaluate(results), *evaluate_overload(results)]))
    print("\n== targets of UDP packet sessions\n" + format_targets(evaluate_packets(results)))
    print(f"\nwrote {json_path} and {csv_path} in {results['meta']['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
