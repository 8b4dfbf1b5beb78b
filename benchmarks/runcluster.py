"""``make run-cluster``: a Redis and three servers sharing one room, on consecutive ports.

TCP on PORT and PORT+1, UDP on PORT+2, Redis on PORT+3 (its data in
memory only, its log not shown). It prints how to join each, then waits for
Ctrl+C and stops the servers (their users get ``bye``) before Redis. Redis
runs in a session of its own, so the terminal's Ctrl+C reaches the servers
and this process, never Redis: it would stop first, and every user would be
told the room cannot be reached just before the server's goodbye. Every
process it starts is its own child; the main thread owns them all.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import threading
from types import FrameType

from benchmarks.servers import ServerProcess, python_server, start_redis
from common.cli.serverargs import DEFAULT_PORT


def run(procs: list[ServerProcess], host: str, port: int, url: str) -> None:
    """Start the three servers, say how to join them, and wait for Ctrl+C or one to end.
    Each shows its log from the moment it listens (joins, leaves, Redis away and back); Ctrl+C
    reaches them as it reaches this process."""
    for module, offset in (("tcp.server", 0), ("tcp.server", 1), ("udp.server", 2)):
        command = python_server(module, "--redis", url, host=host, port=port + offset)
        procs.append(ServerProcess(command, own_session=False, echo=True))
        procs[-1].wait_ready()
    print(f"\nOne room on three servers, shared through Redis at {url}:")
    for offset in (0, 1):
        at = f"{host} {port + offset}"
        print(f"  TCP  {host}:{port + offset}   nc {at}  or  make chat-tcp PORT={port + offset}")
    print(f"  UDP  {host}:{port + 2}   make chat-udp PORT={port + 2}")
    print("Ctrl+C stops them all.\n", flush=True)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    while not stop.wait(1.0):
        if any(server.proc.poll() is not None for server in procs):
            print("a process of the cluster ended; stopping the others", file=sys.stderr)
            break


def stop_all(procs: list[ServerProcess]) -> None:
    """Stop every process, the last started first."""
    for server in reversed(procs):  # the servers first: they say left to Redis
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.runcluster", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="the first port")
    args = parser.parse_args(argv)
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        print("run-cluster needs redis-server: apt-get install redis-server", file=sys.stderr)
        return 1
    host, port = args.host, args.port
    url = f"redis://{host}:{port + 3}/0"
    try:
        procs = [start_redis(redis_server, port + 3, host=host)]
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        run(procs, host, port, url)
    except RuntimeError as exc:  # a server did not start
        print(exc, file=sys.stderr)
        return 1
    finally:
        stop_all(procs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
