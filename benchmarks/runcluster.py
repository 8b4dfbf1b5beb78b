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
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from benchmarks.servers import stop_process
from common.cli.serverargs import DEFAULT_PORT

STOP_WAIT = 5.0


REDIS_READY = "Ready to accept connections"
IN_MEMORY = ("--save", "", "--appendonly", "no")


def free_port() -> int:
    """A port on loopback that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start(
    command: list[str], ready: str, *, show_log: bool = True, own_session: bool = False
) -> subprocess.Popen[str]:
    """Start ``command`` and wait for the line that says it is ready.

    The rest of its log goes on being read, so that it never waits on a full
    pipe: shown (``show_log``) or dropped. ``own_session``: out of the
    terminal's process group, so that Ctrl+C does not reach it. RuntimeError
    if it ends first.
    """
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=own_session,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if ready in line:
            read = echo if show_log else drain
            threading.Thread(target=read, args=(proc,), name=f"log-{proc.pid}", daemon=True).start()
            return proc
    raise RuntimeError(f"{' '.join(command)} did not start (exit code {proc.wait()})")


def start_redis(
    binary: str,
    port: int,
    *,
    host: str = "127.0.0.1",
    options: Sequence[str] = IN_MEMORY,
    show_log: bool = False,
) -> subprocess.Popen[str]:
    """A ``redis-server`` on ``host:port``, once it accepts connections, in a session of its
    own (no Ctrl+C reaches it); its data in memory unless ``options`` say otherwise."""
    command = [binary, "--bind", host, "--port", str(port), *options]
    return start(command, REDIS_READY, show_log=show_log, own_session=True)


def echo(proc: subprocess.Popen[str]) -> None:
    """Show the rest of a process's log: joins, leaves, Redis away and back."""
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line, end="", flush=True)


def drain(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    proc.stdout.read()


def run(procs: list[subprocess.Popen[str]], host: str, port: int, url: str) -> None:
    """Start the three servers, say how to join them, and wait for Ctrl+C or one to end."""
    for module, offset in (("tcp.server", 0), ("tcp.server", 1), ("udp.server", 2)):
        command = [sys.executable, "-m", module, "--host", host, "--port", str(port + offset)]
        procs.append(start([*command, "--redis", url], "listening on"))
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
        if any(proc.poll() is not None for proc in procs):
            print("a process of the cluster ended; stopping the others", file=sys.stderr)
            break


def stop_all(procs: list[subprocess.Popen[str]]) -> None:
    """Stop every process, the last started first."""
    for proc in reversed(procs):  # the servers first: they say left to Redis
        stop_process(proc, STOP_WAIT)


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
