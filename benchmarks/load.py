"""Open-loop load test of one TCP chat server (or the assignment's), from the command line.

Contract:
    python -m benchmarks.load --server {tcp,assignment} --clients 200 --rate 5 --duration 10
                              [--warmup 1] [--drain 5] [--nagle] [--coalesce-ms MS] [--threads N]
                              [--nodelay] [--netns-loss PCT]
                              [--generator auto|c|python]
    run_tcp_load(server, clients=..., rate=..., duration=..., ...) -> LoadResult
    format_results([LoadResult, ...]) -> str  (a table, one row per run)

A front for one run of `benchmarks.measure`, which holds the method (open loop from the
scheduled time, one clock, what each number means); `python -m benchmarks` runs the suite.
`--netns-loss` runs the server and the clients in a namespace whose link drops that percentage
of TCP segments each way (netsim.lossy; needs root and nftables).
"""

from __future__ import annotations

import argparse

from benchmarks.measure import (
    DEFAULT_THREADS,
    LoadResult,
    LoadSpec,
    add_load_arguments,
    format_results,
    run_load,
)

__all__ = ["LoadResult", "format_results", "main", "run_tcp_load"]


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.load", description="Open-loop load test of a TCP chat server."
    )
    parser.add_argument("--server", choices=["assignment", "tcp"], default="tcp")
    add_load_arguments(parser, clients=200, rate=5.0, drain=5.0)
    parser.add_argument(
        "--nagle",
        action="store_true",
        help="tcp.server only: leave Nagle on (the assignment's server does unless --nodelay)",
    )
    parser.add_argument(
        "--coalesce-ms",
        type=float,
        metavar="MS",
        help="tcp.server only: the writer's rest between passes (default: the server's)",
    )
    parser.add_argument(
        "--nodelay",
        action="store_true",
        help="the assignment's server only: TCP_NODELAY on its connections (Nagle off)",
    )
    parser.add_argument(
        "--netns-loss",
        type=int,
        metavar="PCT",
        help="run in a network namespace that drops PCT %% of TCP segments each way",
    )
    args = parser.parse_args(argv)
    if args.nodelay and args.server != "assignment":
        parser.error("--nodelay is the assignment's server's (tcp.server leaves Nagle off)")
    result = run_tcp_load(
        args.server,
        clients=args.clients,
        rate=args.rate,
        duration=args.duration,
        warmup=args.warmup,
        drain=args.drain,
        nagle=args.nagle,
        coalesce_ms=args.coalesce_ms,
        threads=args.threads,
        nodelay=args.nodelay,
        netns_loss=args.netns_loss,
        generator=args.generator,
    )
    print(format_results([result]))
    if result.unexpected:
        print(f"warning: {result.unexpected} deliveries carried markers never sent")


if __name__ == "__main__":
    main()
