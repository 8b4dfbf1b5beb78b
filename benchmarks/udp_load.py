"""Load test of the UDP chat server, raw or reliable, from the command line.

Contract:
    python -m benchmarks.udp_load [--clients 100] [--rate 10] [--duration 10] [--warmup 1]
                                  [--drain 3] [--reliable] [--no-packets]
                                  [--relay-loss FRACTION] [--threads N] [--json]
                                  [--generator auto|c|python]  (c: raw only)
    run_udp_load(clients=..., rate=..., duration=..., reliable=..., packets=...,
                 relay_loss=...) -> LoadResult

A front for one run of `benchmarks.measure`, which holds the method (open loop from the
scheduled time, one clock, what each number means). The server runs as its own process
(`udp.server --port 0 --rate-limit 0 --quiet`). With `--relay-loss` every client talks to it
through a `netsim.faults.FaultyRelay` that drops that fraction of the datagrams in each direction.
For a real lossy link, run the whole command inside a `netsim.lossy.LossyNamespace`
(`ip netns exec`): the server it starts is in there too. `--json` prints the LoadResult as one
JSON object (`sent`, `expected`, `lost`, `duplicates`, `reorders`, `retransmitted`,
`server_clean_exit`, ...). The exit status is 1 when the server did not stop cleanly.
The clients ask for packet sessions (protocol v1.2) unless `--no-packets` keeps them on 1.0
(one frame per datagram, one ack per frame); `run_udp_load` takes `packets` the same way.
"""

from __future__ import annotations

import argparse
import json
import sys

from benchmarks.measure import (
    DEFAULT_THREADS,
    LoadResult,
    LoadSpec,
    add_load_arguments,
    format_results,
    result_to_dict,
    run_load,
)


def run_udp_load(
    *,
    clients: int,
    rate: float,
    duration: float,
    warmup: float = 1.0,
    drain: float = 3.0,
    reliable: bool = False,
    packets: bool = True,
    relay_loss: float = 0.0,
    seed: int = 1,
    threads: int = DEFAULT_THREADS,
    generator: str = "auto",
) -> LoadResult:
    """Start udp.server, run the load against it, stop it, return the numbers."""
    spec = LoadSpec(
        server="udp",
        reliable=reliable,
        packets=packets,
        clients=clients,
        rate=rate,
        duration=duration,
        warmup=warmup,
        drain=drain,
        relay_loss=relay_loss,
        seed=seed,
        threads=threads,
        generator=generator,
    )
    return run_load(spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.udp_load",
        description="Loss and latency of the UDP chat under an open-loop load.",
    )
    add_load_arguments(parser, clients=100, rate=10.0, drain=3.0)
    parser.add_argument("--reliable", action="store_true", help="reliable sessions")
    parser.add_argument(
        "--no-packets", dest="packets", action="store_false",
        help="protocol 1.0 sessions: one frame per datagram (default: packet sessions, v1.2)",
    )  # fmt: skip
    parser.add_argument(
        "--relay-loss", type=float, default=0.0, metavar="FRACTION",
        help="drop this fraction of datagrams each way in a FaultyRelay (e.g. 0.05)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.generator == "c" and args.reliable:
        parser.error("the C generator drives raw UDP only (1.0 and packets), not --reliable")
    result = run_udp_load(
        clients=args.clients,
        rate=args.rate,
        duration=args.duration,
        warmup=args.warmup,
        drain=args.drain,
        reliable=args.reliable,
        packets=args.packets,
        relay_loss=args.relay_loss,
        threads=args.threads,
        generator=args.generator,
    )
    print(json.dumps(result_to_dict(result)) if args.json else format_results([result]))
    return 0 if result.server_clean_exit else 1


if __name__ == "__main__":
    sys.exit(main())
