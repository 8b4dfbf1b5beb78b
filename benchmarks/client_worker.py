"""The client side of one load run, as a process of its own.

Contract:
    python -m benchmarks.client_worker --spec JSON --target HOST:PORT --server-pid PID

Runs `benchmarks.measure.run_clients` against a server that is already running (its pid is read
through /proc for CPU and memory) and prints the LoadResult as one JSON object on stdout. It
exists so that the clients can run inside a network namespace next to the server
(`LossyNamespace.run`), where the harness's own process cannot go. Progress goes to stderr as
lines starting with `progress: `, which the harness passes on to its own progress line.
"""

from __future__ import annotations

import argparse
import json
import sys

from benchmarks.measure import PROGRESS_PREFIX, LoadSpec, result_to_dict, run_clients


def _progress(text: str) -> None:
    print(PROGRESS_PREFIX + text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.client_worker", description=__doc__)
    parser.add_argument("--spec", required=True, help="a LoadSpec as a JSON object")
    parser.add_argument("--target", required=True, metavar="HOST:PORT")
    parser.add_argument("--server-pid", type=int, required=True)
    args = parser.parse_args(argv)
    spec = LoadSpec(**json.loads(args.spec))
    host, _, port = args.target.rpartition(":")
    result = run_clients(spec, (host, int(port)), args.server_pid, _progress)
    print(json.dumps(result_to_dict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
