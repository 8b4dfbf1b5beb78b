"""The TCP server under overload that is not load: many closes, many non-readers, history.

Three cases, each against a fresh ``tcp.server`` process (``benchmarks.capacity``'s), each
read from outside: the server's descriptors and memory from /proc, latency by clients that
read.

* ``closing``: ``clients`` connections join, then all close at once. How long from the last
  close until the server has closed their sockets (its open descriptors back to where they
  were, watched on a thread of its own), how long a newcomer that says hello then waits for
  its ``welcome``, and the server's memory just before the closes, at its peak and once it is
  over.
* ``non-readers``: ``clients`` connections join and never read; ``TALKERS`` talkers say
  ``TALK_RATE`` messages a second each for ``seconds``; two observers read everything. Who of
  the talkers and observers was dropped (none should be), the observers' p50/p99 from a
  message's send to its arrival, and the server's memory at the start, at its peak and once
  the non-readers are gone.
* ``history``: ``clients`` connections that never read ask ``history`` ``HISTORY_ASKS`` times
  each, in a room holding 100 messages of about 1 KB; an observer pings meanwhile. The
  server's peak memory and the observer's p50/p99 round trip.

    python -m benchmarks.overload closing --clients 3000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.capacity import current_rss_bytes, start_server, stop_server, wait_online
from benchmarks.procstat import peak_rss_bytes
from benchmarks.servers import wait_until

CASES = ("closing", "non-readers", "history")
TALKERS = 10
TALK_RATE = 10.0
TALK_SECONDS = 5.0
HISTORY_ASKS = 50
HISTORY_FILL = 100
SETTLE_TIMEOUT = 60.0
"""Seconds a case waits at most for the server to be back where it started."""
SMALL_RCVBUF = 4096
"""A non-reader's receive buffer: small, so that what it does not read piles up at once."""
MB = 1 << 20


@dataclass(frozen=True)
class OverloadResult:
    """One case's figures (None: what a case does not measure)."""

    case: str
    clients: int
    seconds: float  # closing: from the last close until the server closed every socket;
    # else the run's length
    welcome_ms: float | None  # closing: a newcomer's hello to its welcome, meanwhile
    dropped: int  # talkers and observers dropped (non-readers, history)
    p50_ms: float | None
    p99_ms: float | None
    rss_start_mb: float  # closing: before the closes; else before the clients came
    rss_peak_mb: float
    rss_end_mb: float  # once they are gone (closing, non-readers) or at the end (history)


def percentile(samples: Sequence[float], share: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 2)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def mb(size: int) -> float:
    return round(size / MB, 1)


class Reader:
    """A client that says hello and reads every frame on its own thread."""

    def __init__(self, address: tuple[str, int], name: str) -> None:
        self.name = name
        self.sock = socket.create_connection(address, timeout=SETTLE_TIMEOUT)
        self.sock.sendall(json.dumps({"type": "hello", "name": name}).encode() + b"\n")
        self.lines = self.sock.makefile("rb")
        self.welcomed = threading.Event()
        self.latencies: list[float] = []
        self.left: list[tuple[str, str]] = []
        self.pongs: list[float] = []
        self._thread = threading.Thread(target=self._run, name=f"reader-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            for line in self.lines:
                frame = json.loads(line)
                kind = frame.get("type")
                if kind == "welcome":
                    self.welcomed.set()
                elif kind == "msg" and frame["text"].startswith("t "):
                    sent = int(frame["text"].split()[1])
                    self.latencies.append((time.monotonic_ns() - sent) / 1e6)
                elif kind == "pong":
                    self.pongs.append(time.monotonic())
                elif kind == "left":
                    self.left.append((frame["name"], frame["reason"]))

    def send(self, frame: dict[str, object]) -> None:
        self.sock.sendall(json.dumps(frame).encode() + b"\n")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def connect_silent(address: tuple[str, int], name: str, then: bytes = b"") -> socket.socket:
    """A client that says hello (and ``then``) and never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_RCVBUF)
    sock.connect(address)
    sock.sendall(b'{"type":"hello","name":"%s"}\n' % name.encode() + then)
    return sock


@contextlib.contextmanager
def server(clients: int) -> Iterator[tuple[int, tuple[str, int]]]:
    proc, address = start_server("--max-users", str(clients + 100), "--rate-limit", "0")
    try:
        yield proc.pid, address
    finally:
        stop_server(proc)


def wait_for(
    check: Callable[[], bool], timeout: float = SETTLE_TIMEOUT, step: float = 0.005
) -> bool:
    """``wait_until`` with the overload cases' patience and a finer step."""
    return wait_until(check, timeout, step)


class Stopwatch:
    """When ``check`` first held, as its own thread saw it: a figure that does not wait for
    whatever the caller waits for meanwhile (the newcomer's welcome, in ``closing``)."""

    def __init__(self, check: Callable[[], bool]) -> None:
        self._check = check
        self._at = time.monotonic() + SETTLE_TIMEOUT
        self._thread = threading.Thread(target=self._watch, name="stopwatch", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        if wait_for(self._check, step=0.01):
            self._at = time.monotonic()

    def seconds(self, since: float) -> float:
        """Seconds from ``since`` until ``check`` held (once it did, or time ran out)."""
        self._thread.join(SETTLE_TIMEOUT)
        return self._at - since


def closing(clients: int) -> OverloadResult:
    """``clients`` close at once: sockets closed, a newcomer's welcome, memory."""
    with server(clients) as (pid, address):
        watcher = Reader(address, "watcher")
        watcher.welcomed.wait(SETTLE_TIMEOUT)
        start_fds = open_fds(pid)
        socks = [connect_silent(address, f"c{n}") for n in range(clients)]
        wait_online(address, clients + 1)
        rss_start = current_rss_bytes(pid)
        for sock in socks:
            sock.close()
        started = time.monotonic()
        closed = Stopwatch(lambda: open_fds(pid) <= start_fds + 2)  # + the newcomer, wait_online
        newcomer = Reader(address, "newcomer")
        newcomer.welcomed.wait(SETTLE_TIMEOUT)
        welcome = time.monotonic() - started
        seconds = closed.seconds(started)
        wait_for(lambda: len(watcher.left) >= clients + 1, step=0.05)
        rss_end = current_rss_bytes(pid)
        result = OverloadResult(
            "closing", clients, round(seconds, 3), round(welcome * 1000, 1), 0, None, None,
            mb(rss_start), mb(max(peak_rss_bytes(pid), rss_start, rss_end)), mb(rss_end),
        )  # fmt: skip
        watcher.close()
        newcomer.close()
        return result


def non_readers(clients: int, seconds: float) -> OverloadResult:
    """``clients`` never read while ``TALKERS`` talk: observers' latency, drops, memory."""
    with server(clients) as (pid, address):
        observers = [Reader(address, f"observer{n}") for n in range(2)]
        talkers = [Reader(address, f"talker{n}") for n in range(TALKERS)]
        for reader in observers + talkers:
            reader.welcomed.wait(SETTLE_TIMEOUT)
        start_fds, rss_start = open_fds(pid), current_rss_bytes(pid)
        socks = [connect_silent(address, f"nr{n}") for n in range(clients)]
        wait_online(address, clients + len(observers) + len(talkers))
        for reader in observers:
            reader.latencies.clear()
        stop = time.monotonic() + seconds
        period = 1 / TALK_RATE
        tick = time.monotonic()
        while tick < stop:
            for talker in talkers:
                talker.send({"type": "say", "text": f"t {time.monotonic_ns()}"})
            tick += period
            time.sleep(max(0.0, tick - time.monotonic()))
        wait_for(lambda: all(len(r.latencies) >= len(talkers) for r in observers), 5.0)
        time.sleep(1.0)  # the last messages arrive
        samples = [ms for reader in observers for ms in reader.latencies]
        ours = {r.name for r in observers + talkers}
        dropped = {name for r in observers for name, _ in r.left if name in ours}
        for sock in socks:
            sock.close()
        wait_for(lambda: open_fds(pid) <= start_fds + 2)
        wait_for(lambda: len(observers[0].left) >= clients, step=0.05)
        time.sleep(1.0)  # the writer's last pass over them
        result = OverloadResult(
            "non-readers", clients, seconds, None, len(dropped),
            round(statistics.median(samples), 2) if samples else None,
            percentile(samples, 0.99), mb(rss_start), mb(peak_rss_bytes(pid)),
            mb(current_rss_bytes(pid)),
        )  # fmt: skip
        for reader in observers + talkers:
            reader.close()
        return result


def history(clients: int) -> OverloadResult:
    """``clients`` that never read ask ``history`` over and over: memory and others' p99."""
    with server(clients) as (pid, address):
        filler = Reader(address, "filler")
        observer = Reader(address, "observer")
        filler.welcomed.wait(SETTLE_TIMEOUT)
        observer.welcomed.wait(SETTLE_TIMEOUT)
        for n in range(HISTORY_FILL):
            filler.send({"type": "say", "text": f"{n} {'h' * 1000}"})
        time.sleep(1.0)
        rss_start = current_rss_bytes(pid)
        asks = b'{"type":"history","limit":100}\n' * HISTORY_ASKS
        socks: list[socket.socket] = []
        rtts: list[float] = []
        started = time.monotonic()
        for n in range(clients):
            socks.append(connect_silent(address, f"h{n}", asks))
            if n % 10 == 0:
                rtts.append(ping(observer))
        for _ in range(50):
            rtts.append(ping(observer))
        seconds = time.monotonic() - started
        rss_end = current_rss_bytes(pid)
        dropped = len([name for name, _ in observer.left if name in ("filler", "observer")])
        result = OverloadResult(
            "history", clients, round(seconds, 2), None, dropped,
            round(statistics.median(rtts), 2), percentile(rtts, 0.99),
            mb(rss_start), mb(peak_rss_bytes(pid)), mb(rss_end),
        )  # fmt: skip
        for sock in socks:
            sock.close()
        filler.close()
        observer.close()
        return result


def ping(reader: Reader) -> float:
    """One ``ping``'s round trip in ms (``SETTLE_TIMEOUT`` if it never came back)."""
    before = len(reader.pongs)
    sent = time.monotonic()
    reader.send({"type": "ping"})
    if not wait_for(lambda: len(reader.pongs) > before, step=0.0005):
        return SETTLE_TIMEOUT * 1000
    time.sleep(0.02)
    return (reader.pongs[before] - sent) * 1000


def summary(fields: dict[str, Any]) -> str:
    """One line of an OverloadResult's fields (as stored in the results), as the case reads."""
    memory = (
        f"server memory {fields['rss_start_mb']:.0f} MB at the start, "
        f"{fields['rss_peak_mb']:.0f} at the peak, {fields['rss_end_mb']:.0f} at the end"
    )
    if fields["case"] == "closing":
        return (
            f"{fields['clients']} closed in {fields['seconds']:.2f} s, a newcomer welcomed in "
            f"{fields['welcome_ms']:.0f} ms; {memory}"
        )
    return (
        f"{fields['dropped']} of the readers dropped, their p50 {fields['p50_ms']} ms, "
        f"p99 {fields['p99_ms']} ms; {memory}"
    )


def measure(case: str, clients: int, seconds: float = TALK_SECONDS) -> OverloadResult:
    """Run one case; the open-file limit is raised for the thousands of sockets it opens."""
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if 2 * clients + 64 > hard:
        raise RuntimeError(f"{clients} clients need more than the {hard} open files allowed")
    if case == "closing":
        return closing(clients)
    if case == "non-readers":
        return non_readers(clients, seconds)
    if case == "history":
        return history(clients)
    raise ValueError(f"case must be one of {CASES}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overload", description=__doc__)
    parser.add_argument("case", choices=CASES)
    parser.add_argument("--clients", type=int, default=3000)
    parser.add_argument(
        "--seconds", type=float, default=TALK_SECONDS, help="non-readers: talk this long"
    )
    args = parser.parse_args(argv)
    result = measure(args.case, args.clients, args.seconds)
    for key, value in asdict(result).items():
        print(f"{key:>14}: {value}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
