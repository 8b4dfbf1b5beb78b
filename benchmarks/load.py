"""Open-loop load test of one chat server, from the command line: the project's TCP server,
the assignment's, or the UDP server (raw or reliable, packet sessions or 1.0).

Contract:
    python -m benchmarks.load [--server tcp|assignment|udp] [--clients N] [--rate R]
                              [--duration 10] [--warmup 1] [--drain S] [--threads N]
                              [--generator auto|c|python] [--netns-loss PCT] [--json]
        tcp.server:              [--nagle] [--coalesce-ms MS]
        the assignment's server: [--nodelay]
        udp.server:              [--reliable] [--no-packets] [--relay-loss FRACTION]
    python -m benchmarks.udp_load ...   the same with --server udp
    run_tcp_load(server, clients=..., rate=..., duration=..., ...) -> LoadResult
    format_results([LoadResult, ...]) -> str  (a table, one row per run)

A front for one run of `benchmarks.measure`, which holds the method (open loop from the
scheduled time, one clock, what each number means); `python -m benchmarks` runs the suite.
What is not given is the server's own default (`DEFAULTS`): 200 clients x 5 msg/s and 5 s of
drain on TCP, 100 x 10 and 3 s on UDP. The server runs as its own process (`--port 0
--rate-limit 0`). `--netns-loss` runs the server and the clients in a namespace whose link
drops that percentage of TCP segments and UDP datagrams each way (netsim.lossy; needs root and
nftables); for UDP, `--relay-loss` instead puts a `netsim.faults.FaultyRelay` between every
client and the server that drops that fraction of the datagrams in each direction. The UDP
clients ask for packet sessions (protocol v1.2) unless `--no-packets` keeps them on 1.0 (one
frame per datagram, one ack per frame). `--json` prints the LoadResult as one JSON object
(`sent`, `expected`, `lost`, `duplicates`, `reorders`, `retransmitted`, `server_clean_exit`,
...). The exit status is 1 when the server did not stop cleanly.
"""

from __future__ import annotations

import argparse
import json
import sys

from benchmarks.measure import (
    DEFAULT_THREADS,
    LoadResult,
    LoadSpec,
    add_generator_argument,
    format_results,
    result_to_dict,
    run_load,
)

__all__ = ["LoadResult", "format_results", "main", "run_tcp_load"]

DEFAULTS = {"tcp": (200, 5.0, 5.0), "assignment": (200, 5.0, 5.0), "udp": (100, 10.0, 3.0)}
"""Per server, what a run is when not told otherwise: (clients, msg/s each, drain seconds)."""


def run_tcp_load(
    server: str = "tcp",
    *,
    clients: int = 200,
    rate: float = 5.0,
    duration: float = 10.0,
    warmup: float = 1.0,
    drain: float = 5.0,
    nagle: bool = False,
    coalesce_ms: float | None = None,
    threads: int = DEFAULT_THREADS,
    nodelay: bool = False,
    netns_loss: int | None = None,
    generator: str = "auto",
) -> LoadResult:
    """Start `server` ("tcp" or "assignment"), run the load against it, stop it, return the
    numbers."""
    if server not in ("tcp", "assignment"):
        raise ValueError("server must be tcp or assignment")
    spec = LoadSpec(
        server=server,
        clients=clients,
        rate=rate,
        duration=duration,
        warmup=warmup,
        drain=drain,
        nagle=nagle,
        coalesce_ms=coalesce_ms,
        threads=threads,
        nodelay=nodelay,
        netns_loss=netns_loss,
        generator=generator,
    )
    return run_load(spec)


def parse(argv: list[str] | None, prog: str) -> tuple[LoadSpec, bool]:
    """The run the command line asks for, and whether to print it as JSON; a usage error for
    the flags of another server."""
    parser = argparse.ArgumentParser(prog=prog, description="Open-loop load of a chat server.")
    parser.add_argument("--server", choices=sorted(DEFAULTS), default="tcp")
    parser.add_argument("--clients", type=int, help="default: 200 on TCP, 100 on UDP")
    parser.add_argument(
        "--rate", type=float, help="messages per second per client (default: 5 on TCP, 10 on UDP)"
    )
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument(
        "--drain", type=float, help="seconds to wait for late ones (default: 5 on TCP, 3 on UDP)"
    )
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="worker threads")
    add_generator_argument(parser)
    parser.add_argument(
        "--netns-loss", type=int, metavar="PCT",
        help="run in a network namespace that drops PCT %% of the packets each way",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    tcp = parser.add_argument_group("TCP")
    tcp.add_argument(
        "--nagle", action="store_true",
        help="tcp.server only: leave Nagle on (the assignment's server does unless --nodelay)",
    )  # fmt: skip
    tcp.add_argument(
        "--coalesce-ms", type=float, metavar="MS",
        help="tcp.server only: the writer's rest between passes (default: the server's)",
    )  # fmt: skip
    tcp.add_argument(
        "--nodelay", action="store_true",
        help="the assignment's server only: TCP_NODELAY on its connections (Nagle off)",
    )  # fmt: skip
    udp = parser.add_argument_group("UDP")
    udp.add_argument("--reliable", action="store_true", help="reliable sessions")
    udp.add_argument(
        "--no-packets", dest="packets", action="store_false",
        help="protocol 1.0 sessions: one frame per datagram (default: packet sessions, v1.2)",
    )  # fmt: skip
    udp.add_argument(
        "--relay-loss", type=float, default=0.0, metavar="FRACTION",
        help="drop this fraction of datagrams each way in a FaultyRelay (e.g. 0.05)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    udp_only = args.reliable or not args.packets or args.relay_loss
    if args.server != "udp" and udp_only:
        parser.error("--reliable, --no-packets and --relay-loss are the UDP server's")
    if args.server != "tcp" and (args.nagle or args.coalesce_ms is not None):
        parser.error("--nagle and --coalesce-ms are tcp.server's")
    if args.nodelay and args.server != "assignment":
        parser.error("--nodelay is the assignment's server's (tcp.server leaves Nagle off)")
    if args.generator == "c" and args.reliable and not args.packets:
        parser.error("the C generator drives UDP packet sessions and raw 1.0, not reliable 1.0")
    clients, rate, drain = DEFAULTS[args.server]
    return LoadSpec(
        server=args.server,
        reliable=args.reliable,
        packets=args.packets and args.server == "udp",
        clients=clients if args.clients is None else args.clients,
        rate=rate if args.rate is None else args.rate,
        duration=args.duration,
        warmup=args.warmup,
        drain=drain if args.drain is None else args.drain,
        threads=args.threads,
        nagle=args.nagle,
        coalesce_ms=args.coalesce_ms,
        nodelay=args.nodelay,
        netns_loss=args.netns_loss,
        relay_loss=args.relay_loss,
        generator=args.generator,
    ), args.json


def main(argv: list[str] | None = None, prog: str = "python -m benchmarks.load") -> int:
    spec, as_json = parse(argv, prog)
    result = run_load(spec)
    if as_json:
        print(json.dumps(result_to_dict(result)))
    else:
        print(format_results([result]))
        if result.unexpected:
            print(f"warning: {result.unexpected} deliveries carried markers never sent")
    return 0 if result.server_clean_exit else 1


if __name__ == "__main__":
    sys.exit(main())
