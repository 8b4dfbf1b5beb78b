"""`python -m benchmarks.udp_load ...` is `python -m benchmarks.load --server udp ...`: the UDP
chat server, raw or reliable, under an open-loop load (every flag is `benchmarks.load`'s)."""

from __future__ import annotations

import sys

from benchmarks import load


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    return load.main(["--server", "udp", *given], prog="python -m benchmarks.udp_load")


if __name__ == "__main__":
    sys.exit(main())
