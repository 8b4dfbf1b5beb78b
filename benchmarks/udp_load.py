"""Load generator for the UDP chat server: delivery loss and latency, raw or reliable.

Contract:
    python -m benchmarks.udp_load [--clients 100] [--rate 10] [--duration 10] [--warmup 1]
                                  [--drain 3] [--reliable] [--relay-loss FRACTION] [--json]
    run_udp_load(clients=..., rate=..., duration=..., reliable=..., relay_loss=...) -> UdpLoadResult

The server runs as its own process (``udp.server --port 0 --rate-limit 0 --quiet``). With
``--relay-loss`` every client talks to it through a ``udp.faults.FaultyRelay`` that drops that
fraction of the datagrams in each direction. For a real lossy link, run the whole command
inside a ``udp.lossy.LossyNamespace`` (``ip netns exec``): the server it starts is in there too.

Method (the same as ``benchmarks.load`` for TCP):
- Open loop: client i sends its k-th ``say`` at t0 + (k*N + i) * period / N, late or not, and
  latency counts from that scheduled time, so a stall cannot hide (coordinated omission).
- Each text is a marker ``b<client>:<k>:<scheduled ns>``; times are ``time.monotonic_ns()`` of
  this process. Latency and loss count every delivery the schedule asked for, the sender's own
  copy included, of the messages scheduled in the measured window [t0 + warmup, + duration).
- Raw clients are bare sockets driven by one ``epoll`` loop that also sends, so the harness
  spends no time on threads or JSON per delivery. Reliable clients are ``udp.client``'s own
  ``UdpTransport`` (acks, retransmission, in-order delivery), one receiver thread each.
- ``lost`` = deliveries expected minus those received; ``duplicates`` = a marker seen twice by
  one client; ``reorders`` = a marker older than one already seen from the same sender.
  Percentiles are over the deliveries that arrived: lost ones are counted in ``lost`` instead.
- After the window the harness waits up to ``drain`` seconds for deliveries still owed (less
  once all have come), then stops the server with SIGTERM and checks it exited cleanly;
  ``sessions_ended`` counts the reasons the server logged for ending sessions ("quit" for
  every client is the healthy result; "timeout" or "too_slow" mean it gave up on some).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tabulate import tabulate

from benchmarks import procstat
from common.codec import Bye, Hello, Msg, Say, Welcome
from udp.client import UdpTransport
from udp.faults import FaultyRelay
from udp.server import enlarge_buffers

_REPO_ROOT = Path(__file__).resolve().parent.parent
_READY_RE = re.compile(r"listening on (\S+):(\d+)")
_MARK_RE = re.compile(rb'"text":"(b\d+:\d+:\d+)"')
_LEFT_RE = re.compile(r" left \((\w+)\)")
_READY_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0
_LEAD_NS = 300_000_000
_HELLO_INTERVAL_S = 1.0
_HELLO_TRIES = 5
_RECV_BYTES = 65536
_POLL_MAX_S = 0.05
_BYE_WAIT_S = 3.0


@dataclass(frozen=True)
class UdpLoadResult:
    """What one run measured, over the messages scheduled in the measured window."""

    mode: str
    link: str
    clients: int
    rate: float
    duration: float
    sent: int
    expected: int
    received: int
    lost: int
    loss_pct: float
    duplicates: int
    reorders: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    retransmitted: int
    server_cpu_pct: float
    server_cpu_us_per_delivery: float
    harness_cpu_pct: float
    load_average: float
    sessions_ended: str
    server_clean_exit: bool


class _Server:
    """The server under test; a thread drains its stderr so it can never block on it."""

    def __init__(self) -> None:
        command = [sys.executable, "-m", "udp.server", "--port", "0", "--rate-limit", "0"]
        self.proc = subprocess.Popen(
            command, cwd=_REPO_ROOT, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.lines: deque[str] = deque(maxlen=50)
        self.endings: Counter[str] = Counter()
        self._address: tuple[str, int] | None = None
        self._settled = threading.Event()
        threading.Thread(target=self._read_stderr, name="server-stderr", daemon=True).start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())
            if ending := _LEFT_RE.search(line):
                self.endings[ending.group(1)] += 1
            match = _READY_RE.search(line)
            if match and self._address is None:
                self._address = (match.group(1), int(match.group(2)))
                self._settled.set()
        self._settled.set()

    def wait_ready(self) -> tuple[str, int]:
        self._settled.wait(_READY_TIMEOUT_S)
        if self._address is None:
            raise RuntimeError("the server did not start:\n" + "\n".join(self.lines))
        return self._address

    def stop(self) -> bool:
        """SIGTERM; True when it exited with 0 in time and logged no traceback."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return False
        return code == 0 and not any("Traceback" in line for line in self.lines)


@dataclass
class _Inbox:
    """What one client received: markers and their arrival times, parsed after the run."""

    marks: list[bytes] = field(default_factory=list)
    times: list[int] = field(default_factory=list)


class _Schedule:
    """The open-loop schedule: message j is client j % N's (j // N)-th, at t0 + j * period / N."""

    def __init__(self, clients: int, rate: float, warmup: float, duration: float) -> None:
        self.clients = clients
        self.step_ns = 1e9 / rate / clients
        self.count = math.ceil((warmup + duration) * rate) * clients
        self.warmup, self.duration = warmup, duration
        self.start()

    def start(self) -> None:
        """Put t0 a moment from now: called once every client has joined."""
        self.t0 = time.monotonic_ns() + _LEAD_NS
        begin = self.t0 + int(self.warmup * 1e9)
        self.window = (begin, begin + int(self.duration * 1e9))

    def at(self, j: int) -> int:
        return self.t0 + int(j * self.step_ns)

    def marker(self, j: int) -> bytes:
        return b"b%d:%d:%d" % (j % self.clients, j // self.clients, self.at(j))


def _drive_raw(target: tuple[str, int], schedule: _Schedule, drain: float) -> list[_Inbox]:
    """Bare sockets: join, then send on schedule and receive in one epoll loop."""
    n = schedule.clients
    socks = []
    for _ in range(n):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        enlarge_buffers(sock)
        sock.connect(target)
        sock.setblocking(False)
        socks.append(sock)
    try:
        tokens = _join_raw(socks)
        schedule.start()
        by_fd = {sock.fileno(): (sock, i) for i, sock in enumerate(socks)}
        inboxes = [_Inbox() for _ in range(n)]
        poller = select.epoll()
        for sock in socks:
            poller.register(sock, select.EPOLLIN)
        seqs = [1] * n
        frames = [b'{"type":"say","text":"%%s","session":"%s","seq":%%d}' % t for t in tokens]
        j, total, arrived = 0, schedule.count, 0
        drain_end = schedule.at(total) + int(drain * 1e9)
        while True:
            now = time.monotonic_ns()
            while j < total and schedule.at(j) <= now:
                i = j % n
                with contextlib.suppress(OSError):
                    socks[i].send(frames[i] % (schedule.marker(j), seqs[i]))
                seqs[i] += 1
                j += 1
            if j >= total and (now >= drain_end or arrived >= total * n):
                for i, sock in enumerate(socks):
                    with contextlib.suppress(OSError):
                        sock.send(b'{"type":"bye","session":"%s","seq":%d}' % (tokens[i], seqs[i]))
                return inboxes
            # epoll counts whole milliseconds, rounding up: round down and spin the rest.
            wait_ms = ((schedule.at(j) if j < total else drain_end) - now) // 1_000_000
            for fd, _ in poller.poll(min(max(wait_ms / 1000, 0.0), _POLL_MAX_S)):
                sock, i = by_fd[fd]
                inbox = inboxes[i]
                stamp = time.monotonic_ns()
                while True:
                    try:
                        data = sock.recv(_RECV_BYTES)
                    except (BlockingIOError, ConnectionRefusedError):
                        break
                    match = _MARK_RE.search(data)
                    if match:
                        inbox.marks.append(match.group(1))
                        inbox.times.append(stamp)
                        arrived += 1
    finally:
        for sock in socks:
            sock.close()


def _join_raw(socks: list[socket.socket]) -> list[bytes]:
    """Say hello from every socket, again each second for the unanswered, 5 tries at most."""
    tokens: list[bytes | None] = [None] * len(socks)
    for _ in range(_HELLO_TRIES):
        for i, sock in enumerate(socks):
            if tokens[i] is None:
                sock.send(b'{"type":"hello","name":"b%d"}' % i)
        deadline = time.monotonic() + _HELLO_INTERVAL_S
        while None in tokens and time.monotonic() < deadline:
            for i, sock in enumerate(socks):
                while tokens[i] is None:
                    try:
                        frame = json.loads(sock.recv(_RECV_BYTES))
                    except (BlockingIOError, ConnectionRefusedError):
                        break
                    if frame.get("type") == "welcome":
                        tokens[i] = frame["session"].encode()
            time.sleep(0.005)
        if None not in tokens:
            return [t for t in tokens if t is not None]
    raise RuntimeError(f"{tokens.count(None)} of {len(socks)} clients got no welcome")


def _drive_reliable(
    target: tuple[str, int], schedule: _Schedule, drain: float
) -> tuple[list[_Inbox], int]:
    """``UdpTransport`` clients; returns what they received and how often they retransmitted."""
    n = schedule.clients
    transports = [UdpTransport.connect(*target, reliable=True) for _ in range(n)]
    inboxes = [_Inbox() for _ in range(n)]
    welcomed = [threading.Event() for _ in range(n)]

    def receive(i: int) -> None:
        inbox = inboxes[i]
        while (message := transports[i].receive()) is not None:
            if isinstance(message, Msg) and message.text.startswith("b"):
                inbox.times.append(time.monotonic_ns())
                inbox.marks.append(message.text.encode())
            elif isinstance(message, Welcome):
                welcomed[i].set()

    threads = [
        threading.Thread(target=receive, args=(i,), name=f"load-receiver-{i}", daemon=True)
        for i in range(n)
    ]
    try:
        for i, transport in enumerate(transports):
            threads[i].start()
            transport.send(Hello(name=f"b{i}"))
        for event in welcomed:
            if not event.wait(_HELLO_TRIES * _HELLO_INTERVAL_S + 1):
                raise RuntimeError("a reliable client got no welcome")
        schedule.start()
        for j in range(schedule.count):
            delay = schedule.at(j) - time.monotonic_ns()
            if delay > 0:
                time.sleep(delay / 1e9)
            # A session the server ended refuses to send: its messages count as lost.
            with contextlib.suppress(ConnectionError):
                transports[j % n].send(Say(text=schedule.marker(j).decode()))
        deadline = time.monotonic() + drain
        expected = schedule.count * n
        while time.monotonic() < deadline and sum(len(b.marks) for b in inboxes) < expected:
            time.sleep(0.02)
        retransmitted = sum(t.stats().retransmitted for t in transports)
        for transport in transports:
            with contextlib.suppress(ConnectionError):
                transport.send(Bye())
        # A reliable bye ends the session once acked: give the last ones time to get through.
        bye_deadline = time.monotonic() + _BYE_WAIT_S
        for thread in threads:
            thread.join(max(0.0, bye_deadline - time.monotonic()))
        return inboxes, retransmitted
    finally:
        for transport in transports:
            transport.close()
        for thread in threads:
            thread.join(1.0)


def _analyse(schedule: _Schedule, inboxes: list[_Inbox]) -> tuple[int, int, int, int, list[float]]:
    """Sent, received, duplicates, reorders (window messages only) and latencies in ms."""
    start, end = schedule.window
    in_window = [j for j in range(schedule.count) if start <= schedule.at(j) < end]
    received = duplicates = reorders = 0
    latencies: list[float] = []
    for inbox in inboxes:
        seen: set[tuple[int, int]] = set()
        newest: dict[int, int] = {}
        for mark, stamp in zip(inbox.marks, inbox.times, strict=True):
            sender, k, sched = (int(part) for part in mark[1:].split(b":"))
            if not start <= sched < end:
                continue
            if (sender, k) in seen:
                duplicates += 1
                continue
            seen.add((sender, k))
            received += 1
            if k < newest.get(sender, -1):
                reorders += 1
            newest[sender] = max(k, newest.get(sender, -1))
            latencies.append((stamp - sched) / 1e6)
    return len(in_window), received, duplicates, reorders, latencies


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return math.inf
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_udp_load(
    *,
    clients: int,
    rate: float,
    duration: float,
    warmup: float = 1.0,
    drain: float = 3.0,
    reliable: bool = False,
    relay_loss: float = 0.0,
    seed: int = 1,
) -> UdpLoadResult:
    server = _Server()
    relay: FaultyRelay | None = None
    try:
        target = server.wait_ready()
        if relay_loss:
            relay = FaultyRelay(target, drop=relay_loss, seed=seed)
            relay.start()
            target = relay.address
        schedule = _Schedule(clients, rate, warmup, duration)
        cpu_server, cpu_self, wall = procstat.cpu_seconds(server.proc.pid), _cpu_self(), time.time()
        if reliable:
            inboxes, retransmitted = _drive_reliable(target, schedule, drain)
        else:
            inboxes, retransmitted = _drive_raw(target, schedule, drain), 0
        elapsed = time.time() - wall
        server_cpu_s = procstat.cpu_seconds(server.proc.pid) - cpu_server
        harness_cpu = (_cpu_self() - cpu_self) / elapsed
        load_average = os.getloadavg()[0]
    finally:
        if relay is not None:
            relay.close()
        clean = server.stop()
    sent, received, duplicates, reorders, latencies = _analyse(schedule, inboxes)
    deliveries = sum(len(inbox.marks) for inbox in inboxes)
    expected = sent * clients
    link = f"relay {relay_loss:.0%} loss" if relay_loss else "loopback"
    return UdpLoadResult(
        mode="reliable" if reliable else "raw",
        link=link,
        clients=clients,
        rate=rate,
        duration=duration,
        sent=sent,
        expected=expected,
        received=received,
        lost=expected - received,
        loss_pct=100 * (expected - received) / expected if expected else 0.0,
        duplicates=duplicates,
        reorders=reorders,
        p50_ms=_percentile(latencies, 0.50),
        p99_ms=_percentile(latencies, 0.99),
        max_ms=max(latencies, default=math.inf),
        retransmitted=retransmitted,
        server_cpu_pct=100 * server_cpu_s / elapsed,
        server_cpu_us_per_delivery=1e6 * server_cpu_s / max(1, deliveries),
        harness_cpu_pct=100 * harness_cpu,
        load_average=load_average,
        sessions_ended=", ".join(f"{n} {why}" for why, n in sorted(server.endings.items())),
        server_clean_exit=clean,
    )


def format_results(results: Sequence[UdpLoadResult]) -> str:
    columns: dict[str, Callable[[UdpLoadResult], object]] = {
        "mode": lambda r: r.mode,
        "link": lambda r: r.link,
        "clients": lambda r: r.clients,
        "msg/s each": lambda r: r.rate,
        "expected": lambda r: r.expected,
        "lost": lambda r: r.lost,
        "loss %": lambda r: f"{r.loss_pct:.2f}",
        "dup": lambda r: r.duplicates,
        "reord": lambda r: r.reorders,
        "p50 ms": lambda r: f"{r.p50_ms:.2f}",
        "p99 ms": lambda r: f"{r.p99_ms:.2f}",
        "max ms": lambda r: f"{r.max_ms:.1f}",
        "retx": lambda r: r.retransmitted,
        "server CPU %": lambda r: f"{r.server_cpu_pct:.0f}",
        "µs/delivery": lambda r: f"{r.server_cpu_us_per_delivery:.1f}",
        "harness CPU %": lambda r: f"{r.harness_cpu_pct:.0f}",
        "load avg": lambda r: f"{r.load_average:.1f}",
        "sessions ended": lambda r: r.sessions_ended,
    }
    rows = [[cell(r) for cell in columns.values()] for r in results]
    return tabulate(rows, headers=list(columns), tablefmt="github")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.udp_load",
        description="Loss and latency of the UDP chat under an open-loop load.",
    )
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rate", type=float, default=10.0, help="messages per second per client")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--drain", type=float, default=3.0, help="seconds to wait for stragglers")
    parser.add_argument("--reliable", action="store_true", help="reliable sessions")
    parser.add_argument(
        "--relay-loss", type=float, default=0.0, metavar="FRACTION",
        help="drop this fraction of datagrams each way in a FaultyRelay (e.g. 0.05)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    result = run_udp_load(
        clients=args.clients,
        rate=args.rate,
        duration=args.duration,
        warmup=args.warmup,
        drain=args.drain,
        reliable=args.reliable,
        relay_loss=args.relay_loss,
    )
    print(json.dumps(asdict(result)) if args.json else format_results([result]))
    return 0 if result.server_clean_exit else 1


if __name__ == "__main__":
    sys.exit(main())
