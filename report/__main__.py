"""`python -m report [--results PATH] [--out DIR] [--strict]`: regenerate the report.

Reads benchmarks/results/latest.json (written by `make bench`), and beside it calibration.json
(`make calibrate`) and cluster.json (`make bench-cluster`) when they are there, and writes
report/REPORT.md, report/RUNS.md (every run) and the PNG figures beside them; see
report.generate. A report made while the working tree has
uncommitted changes (the results file included) says so at its top, since it cannot be
reproduced from the repository; `--strict` refuses to write one. A report over
report.generate.MAX_WORDS is written, with a warning.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.harness import RESULTS_DIR
from report.generate import MAX_WORDS, generate, provenance, report_words

REPORT_DIR = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m report", description="Write report/REPORT.md from benchmark results."
    )
    parser.add_argument("--results", type=Path, default=RESULTS_DIR / "latest.json")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPORT_DIR,
        metavar="DIR",
        help="the folder REPORT.md and its figures go in (default: report/)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="refuse to write a report from uncommitted files"
    )
    args = parser.parse_args(argv)
    if args.out.is_file() or args.out.suffix.lower() == ".md":
        print(
            f"--out takes a folder (REPORT.md and its figures go in it), not a file: {args.out}",
            file=sys.stderr,
        )
        return 2
    if not args.results.exists():
        print(f"{args.results} does not exist: run `make bench` first", file=sys.stderr)
        return 1
    origin = provenance(args.results)
    if not origin.clean:
        if args.strict:
            print("uncommitted changes: commit the results first", file=sys.stderr)
            return 1
        print("warning: uncommitted changes; the report is marked as a draft", file=sys.stderr)
    report = generate(args.results, args.out, origin)
    print(f"wrote {report}")
    words = report_words(report.read_text(encoding="utf-8"))
    if words > MAX_WORDS:
        print(f"warning: the report has {words} words, over its {MAX_WORDS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
