"""`python -m report [--results PATH] [--out DIR]`: regenerate REPORT.md and its figures.

Reads benchmarks/results/latest.json (written by `make bench`) and writes report/REPORT.md and
the PNG figures beside it; see report.generate.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.harness import RESULTS_DIR
from report.generate import generate

REPORT_DIR = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m report", description="Write report/REPORT.md from benchmark results."
    )
    parser.add_argument("--results", type=Path, default=RESULTS_DIR / "latest.json")
    parser.add_argument("--out", type=Path, default=REPORT_DIR, help="where REPORT.md goes")
    args = parser.parse_args(argv)
    if not args.results.exists():
        print(f"{args.results} does not exist: run `make bench` first", file=sys.stderr)
        return 1
    report = generate(args.results, args.out)
    print(f"wrote {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
