"""How many clients one TCP server holds, and what each one costs in memory.

Opens ``--clients`` connections to a fresh ``tcp.server`` process, registers
each with a ``hello``, checks with ``who`` that all are online, and reads
the server's resident memory and thread count before and after. The clients
do not read, so every ``joined`` frame the server fans out waits in kernel
buffers: what is measured is the server's own cost per connected user.

    python -m benchmarks.capacity --clients 5000
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass

from benchmarks.procstat import cpu_seconds, thread_count
from benchmarks.servers import ServerProcess, server_command

STOP_GRACE_S = 30.0
"""How long saying bye to thousands of clients may take before the server is killed."""


@dataclass(frozen=True)
class CapacityResult:
    clients: int
    online: int
    connect_seconds: float
    rss_before_bytes: int
    rss_after_bytes: int
    bytes_per_client: float
    threads_after: int
    server_cpu_seconds: float


def current_rss_bytes(pid: int) -> int:
    """Resident memory now (VmRSS), in bytes."""
    with open(f"/proc/{pid}/status", encoding="utf-8") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise KeyError("VmRSS")


def start_server(*args: str) -> tuple[ServerProcess, tuple[str, int]]:
    """A ``tcp.server`` process on a free port of 127.0.0.1 (quiet, rate limit off), with
    ``args``, and its address once it listens."""
    server = ServerProcess([*server_command("tcp"), *args], own_session=False)
    try:
        return server, server.wait_ready()
    except RuntimeError:
        server.stop(signal.SIGKILL)
        raise


def stop_server(server: ServerProcess) -> None:
    """SIGTERM, then SIGKILL if saying bye to thousands of clients takes too long."""
    server.stop(timeout=STOP_GRACE_S)


def wait_online(address: tuple[str, int], expected: int, timeout: float = 300) -> int:
    """Ask ``who`` until ``expected`` others are online (or time runs out); return the count."""
    deadline = time.monotonic() + timeout
    with socket.create_connection(address, timeout=timeout) as sock:
        lines = sock.makefile("rb")
        sock.sendall(b'{"type":"hello","name":"counter"}\n')
        while True:
            sock.sendall(b'{"type":"who"}\n')
            frame = json.loads(next(line for line in lines if b'"type":"users"' in line))
            online = int(frame["count"]) - 1
            if online >= expected or time.monotonic() > deadline:
                return online
            time.sleep(0.05)


def drain(socks: list[socket.socket]) -> None:
    """Read whatever waits for each client, so no outbox is counted as per-client memory."""
    for _ in range(3):
        for sock in socks:
            try:
                while sock.recv(1 << 20, socket.MSG_DONTWAIT):
                    pass
            except BlockingIOError:
                pass
        time.sleep(0.2)


def measure(clients: int) -> CapacityResult:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if clients + 64 > hard:
        raise RuntimeError(f"{clients} clients need more than the {hard} open files allowed")
    server, address = start_server("--max-users", str(clients + 10))
    socks: list[socket.socket] = []
    try:
        rss_before = current_rss_bytes(server.pid)
        cpu_before = cpu_seconds(server.pid)
        started = time.monotonic()
        for i in range(clients):
            sock = socket.create_connection(address)
            sock.sendall(b'{"type":"hello","name":"cap%d"}\n' % i)
            socks.append(sock)
        online = wait_online(address, clients)
        connect_seconds = time.monotonic() - started
        drain(socks)
        rss_after = current_rss_bytes(server.pid)
        return CapacityResult(
            clients=clients,
            online=online,
            connect_seconds=connect_seconds,
            rss_before_bytes=rss_before,
            rss_after_bytes=rss_after,
            bytes_per_client=(rss_after - rss_before) / clients,
            threads_after=thread_count(server.pid),
            server_cpu_seconds=cpu_seconds(server.pid) - cpu_before,
        )
    finally:
        for sock in socks:
            sock.close()
        stop_server(server)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.capacity", description=__doc__)
    parser.add_argument("--clients", type=int, default=5000, help="connections to open")
    args = parser.parse_args(argv)
    try:
        result = measure(args.clients)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    for key, value in asdict(result).items():
        print(f"{key:>20}: {value:,.1f}" if isinstance(value, float) else f"{key:>20}: {value:,}")
    return 0 if result.online == result.clients else 1


if __name__ == "__main__":
    sys.exit(main())
