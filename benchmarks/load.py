"""Open-loop load generator for the TCP chat servers.

Contract:
    python -m benchmarks.load --server {tcp,naive} --clients 200 --rate 5 --duration 10
                              [--warmup 1] [--drain 5] [--nagle]
    run_tcp_load(server, clients=..., rate=..., duration=..., ...) -> LoadResult
    format_results([LoadResult, ...]) -> str  (a table, one row per run)

The server runs as its own process (`sys.executable -m tcp.server` or
`benchmarks.naive_server`, on 127.0.0.1 with `--port 0`; tcp.server also gets `--rate-limit 0
--quiet`, and `--nagle` when asked). N clients connect one after another, each with its own
socket, `hello` under a unique name and a wait for `welcome`.

Method, chosen so the numbers cannot flatter the server:
- Open loop. Client i sends its k-th `say` at t0 + (k*N + i) * period / N (period = 1/rate), so
  the phases are spread evenly. Latency is measured from the scheduled time, never from the
  actual send, so a stall shows up in the latencies instead of quietly lowering the offered
  load (coordinated omission). Sends never block: what a client's socket does not take waits
  in that client's own queue, so one stalled connection delays nobody else's schedule. A message
  the server has still not taken off its socket when the drain ends counts as `unsent`.
- Each text is a marker `b<client>:<k>:<scheduled ns>`. All times are time.monotonic_ns() of this
  one process. One thread walks the merged schedule of all clients and one thread reads all
  sockets through epoll, in chunks of up to 1 MiB, with one clock reading per chunk and one
  regular expression that pulls the scheduled times out: no JSON and no Python loop per
  delivery while the load runs. Latency (receive time - scheduled time) and the checks are
  computed after the run, per recipient, the sender's own copy included. (A thread per client
  was tried first: in CPython, hundreds of threads handing the GIL to each other cost more CPU
  than the server under test, and the harness became the bottleneck.)
- Statistics cover the measured window [t0 + warmup, t0 + warmup + duration): its messages for
  latency and loss, and deliveries arriving during it for throughput and server CPU per
  delivery. After the window the harness waits up to `drain` seconds for the deliveries still
  owed, then sends `bye`, closes, and stops the server with SIGTERM.
- `lost` = deliveries expected (window messages sent x N) minus those received by the end of
  the drain; `duplicates` = a marker seen twice by one client; `reorders` = a marker older than
  one already seen from the same sender; `unexpected` = a marker that was never sent. Latency
  percentiles are taken over every delivery the schedule asked for, and one that never came
  (lost or unsent) counts as infinitely late, so a percentile reads `inf` rather than hiding it.
- The harness reports its own CPU use (100 % = one core) and how late its sends left against
  the schedule (`lag`), so a reader can tell whether the harness, not the server, was the limit.
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
from array import array
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tabulate import tabulate

from benchmarks import procstat

SERVER_MODULES = {"tcp": "tcp.server", "naive": "benchmarks.naive_server"}

_REPO_ROOT = Path(__file__).resolve().parent.parent
_READY_RE = re.compile(r"listening on (\S+):(\d+)")
_SCHED_RE = re.compile(rb"b\d+:\d+:(\d+)")
_RECV_BYTES = 1 << 20
_MAX_FRAME_BYTES = 8192
_READY_TIMEOUT_S = 10.0
_CONNECT_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0
_LEAD_NS = 200_000_000
_POLL_S = 0.01
_BYE = b'{"type":"bye"}\n'


@dataclass(frozen=True)
class LoadResult:
    """What one run measured; rates are per second of the measured window."""

    server: str
    nagle: bool
    clients: int
    rate: float
    duration: float
    connect_s: float
    offered_msgs_per_s: float
    sent_msgs_per_s: float
    deliveries_per_s: float
    expected: int
    received: int
    lost: int
    unsent: int
    duplicates: int
    reorders: int
    unexpected: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    send_lag_p50_ms: float
    send_lag_p99_ms: float
    server_cpu_pct: float
    server_cpu_us_per_delivery: float
    server_peak_rss_mb: float
    server_threads: int
    harness_cpu_pct: float


class _ServerProcess:
    """The server under test; a thread drains its stderr so it can never block on it."""

    def __init__(self, kind: str, nagle: bool) -> None:
        command = [sys.executable, "-m", SERVER_MODULES[kind], "--host", "127.0.0.1", "--port", "0"]
        if kind == "tcp":
            command += ["--rate-limit", "0", "--quiet"]
            if nagle:
                command.append("--nagle")
        self.proc = subprocess.Popen(
            command,
            cwd=_REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # Its own session is its own scheduling group (Linux autogroup), so CPU is shared
            # between server and harness as wholes: otherwise a server with hundreds of runnable
            # threads starves the harness's few and the harness's timing suffers.
            start_new_session=True,
        )
        self._address: tuple[str, int] | None = None
        self._settled = threading.Event()
        self._stderr_tail: deque[str] = deque(maxlen=20)
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self._stderr_tail.append(line)
            match = _READY_RE.search(line)
            if match and self._address is None:
                self._address = (match.group(1), int(match.group(2)))
                self._settled.set()
        self._settled.set()

    def wait_ready(self) -> tuple[str, int]:
        """The address from the ready line; raises if the server dies or stays silent."""
        self._settled.wait(_READY_TIMEOUT_S)
        if self._address is None:
            tail = "\n".join(self._stderr_tail)
            raise RuntimeError(f"server did not report its address; stderr:\n{tail}")
        return self._address

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class _Client:
    """One connection: its outgoing queue, what was sent, and the chunks it received."""

    def __init__(self, index: int, sock: socket.socket, pending: bytes) -> None:
        self.index = index
        self.sock = sock
        self.sent: list[int] = []
        # Per chunk: its receive time, and its scheduled times as space-separated decimals
        # (parsed only after the run; converting them on the spot tripled the per-chunk cost).
        self.chunk_times: list[int] = []
        self.chunk_scheds: list[bytes] = []
        self.received = 0
        self._broken = False
        self.pending = pending
        self._outbox = bytearray()
        self._queued: deque[tuple[int, int]] = deque()
        self._queued_bytes = 0
        self._written_bytes = 0

    @property
    def blocked(self) -> bool:
        return bool(self._outbox) and not self._broken

    def send_say(self, sched: int, k: int) -> None:
        """Send at once if the socket takes it; otherwise queue behind what is waiting."""
        frame = b'{"type":"say","text":"b%d:%d:%d"}\n' % (self.index, k, sched)
        self._queued_bytes += len(frame)
        self._queued.append((sched, self._queued_bytes))
        self._outbox += frame
        if len(self._outbox) == len(frame):
            self.flush()

    def flush(self) -> None:
        """Write what the socket takes; a message counts as sent once its last byte is taken."""
        if self._broken:
            return
        try:
            written = self.sock.send(self._outbox)
        except BlockingIOError:
            return
        except OSError:
            self._broken = True
            return
        del self._outbox[:written]
        self._written_bytes += written
        while self._queued and self._queued[0][1] <= self._written_bytes:
            self.sent.append(self._queued.popleft()[0])

    def take_chunk(self, now: int, buffer: bytearray, end: int) -> None:
        """Keep the scheduled times of the whole lines in buffer[:end], which holds this
        client's unfinished line from before followed by the bytes just read."""
        cut = buffer.rfind(b"\n", 0, end) + 1
        self.pending = bytes(buffer[cut:end])
        found = _SCHED_RE.findall(buffer, 0, cut)
        if found:
            self.chunk_times.append(now)
            self.chunk_scheds.append(b" ".join(found))
            self.received += len(found)

    def close(self) -> None:
        """Say `bye` unless a frame is half written, then shut the connection down."""
        if not self._outbox:
            with contextlib.suppress(OSError):
                self.sock.send(_BYE)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def _connect(index: int, address: tuple[str, int]) -> _Client:
    sock = socket.create_connection(address, timeout=_CONNECT_TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(b'{"type":"hello","name":"c%d"}\n' % index)
    buffer = b""
    while b"\n" not in buffer:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"client {index}: server closed before welcome")
        buffer += data
    line, _, rest = buffer.partition(b"\n")
    if json.loads(line).get("type") != "welcome":
        raise RuntimeError(f"client {index}: expected welcome, got {line!r}")
    sock.setblocking(False)
    return _Client(index, sock, rest)


@dataclass(frozen=True)
class _Plan:
    """The schedule: slot s belongs to client s % clients and is due at t0 + s * period // clients.

    Slots are therefore in time order, and their due times are unique as long as
    period_ns >= clients, so a scheduled time alone identifies a message.
    """

    clients: int
    period_ns: int
    t0_ns: int
    start_ns: int
    end_ns: int

    def due(self, slot: int) -> int:
        return self.t0_ns + slot * self.period_ns // self.clients

    def measured(self, t_ns: int) -> bool:
        return self.start_ns <= t_ns < self.end_ns

    def offered(self) -> int:
        """Messages due inside the measured window."""
        return self._slots_before(self.end_ns) - self._slots_before(self.start_ns)

    def _slots_before(self, t_ns: int) -> int:
        # due(s) < t  <=>  s * period < (t - t0) * clients, so count with a ceiling division.
        return -(-(t_ns - self.t0_ns) * self.clients // self.period_ns)


def _run_loop(
    clients: Sequence[_Client],
    plan: _Plan,
    lags: array[int],
    scheduled: threading.Event,
    stop: threading.Event,
) -> None:
    """The harness's one busy thread: sends on schedule, flushes queues, reads every socket.

    One thread on purpose: in CPython a second busy thread waits for the GIL after each system
    call (up to the 5 ms switch interval), which capped a separate sending thread at a few
    hundred sends per second while the receiving thread was busy. The wait is a select() on
    the epoll descriptor because select() sleeps to the microsecond, epoll.poll() only to the
    millisecond. The lag of each measured send behind its schedule goes to `lags`;
    `scheduled` is set once every message has been handed to its client. Each
    client's unfinished last line is copied to the front of the shared buffer before its next
    read, so the regular expression only ever sees whole lines.
    """
    poller = select.epoll()
    by_fd = {client.sock.fileno(): client for client in clients}
    for fd in by_fd:
        poller.register(fd, select.EPOLLIN)
    buffer = bytearray(_RECV_BYTES + _MAX_FRAME_BYTES)
    view = memoryview(buffer)
    clock = time.monotonic_ns
    slot = 0
    sched = plan.due(slot)
    try:
        while by_fd and not stop.is_set():
            now = clock()
            while sched < plan.end_ns and sched <= now:
                client = clients[slot % plan.clients]
                was_blocked = client.blocked
                client.send_say(sched, slot // plan.clients)
                if sched >= plan.start_ns:
                    lags.append(clock() - sched)
                if client.blocked and not was_blocked:
                    poller.modify(client.sock.fileno(), select.EPOLLIN | select.EPOLLOUT)
                slot += 1
                sched = plan.due(slot)
                if sched >= plan.end_ns:
                    scheduled.set()
            wait_s = (sched - clock()) / 1e9 if sched < plan.end_ns else _POLL_S
            ready, _, _ = select.select([poller], [], [], min(max(wait_s, 0.0), _POLL_S))
            if not ready:
                continue
            for fd, events in poller.poll(0):
                client = by_fd[fd]
                if events & select.EPOLLOUT:
                    client.flush()
                    if not client.blocked:
                        poller.modify(fd, select.EPOLLIN)
                if not events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                    continue
                kept = len(client.pending)
                view[:kept] = client.pending
                try:
                    size = client.sock.recv_into(view[kept : kept + _RECV_BYTES])
                except BlockingIOError:
                    continue
                except OSError:
                    size = 0
                if size:
                    client.take_chunk(clock(), buffer, kept + size)
                else:
                    poller.unregister(fd)
                    del by_fd[fd]
    finally:
        view.release()
        poller.close()


def _raise_open_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        # An unlimited hard limit cannot always be taken literally; then keep the soft one.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def _sleep_until(deadline_ns: int) -> None:
    delay_ns = deadline_ns - time.monotonic_ns()
    if delay_ns > 0:
        time.sleep(delay_ns / 1e9)


def _drain(clients: Sequence[_Client], scheduled: threading.Event, deadline_ns: int) -> None:
    """Wait until every message is scheduled, every queue written and every sent message
    reached every client, or until the deadline."""
    scheduled.wait(max(0.0, (deadline_ns - time.monotonic_ns()) / 1e9))
    while time.monotonic_ns() < deadline_ns:
        owed = sum(len(client.sent) for client in clients) * len(clients)
        if not any(client.blocked for client in clients) and (
            sum(client.received for client in clients) >= owed
        ):
            return
        time.sleep(_POLL_S)


def _percentile_ms(sorted_ns: Sequence[int], total: int, fraction: float) -> float:
    """Nearest-rank percentile over `total` deliveries, the missing ones counted as infinite."""
    if total == 0:
        return math.nan
    rank = max(1, math.ceil(fraction * total))
    return sorted_ns[rank - 1] / 1e6 if rank <= len(sorted_ns) else math.inf


@dataclass(frozen=True)
class _Usage:
    """Resources used during the measured window, and the server's peaks after it."""

    connect_s: float
    wall_s: float
    server_cpu_s: float
    harness_cpu_s: float
    server_peak_rss: int
    server_threads: int


def _summarise(
    server: str,
    nagle: bool,
    rate: float,
    plan: _Plan,
    clients: Sequence[_Client],
    lags: array[int],
    usage: _Usage,
) -> LoadResult:
    n = len(clients)
    duration = (plan.end_ns - plan.start_ns) / 1e9
    owner = {sched: client.index for client in clients for sched in client.sent}
    sent = sum(1 for sched in owner if plan.measured(sched))
    latencies: array[int] = array("q")
    duplicates = reorders = unexpected = deliveries_in_window = 0
    for client in clients:
        seen: set[int] = set()
        newest = [-1] * n
        for now, joined in zip(client.chunk_times, client.chunk_scheds, strict=True):
            batch = joined.split()
            if plan.measured(now):
                deliveries_in_window += len(batch)
            for sched in map(int, batch):
                sender = owner.get(sched)
                if sender is None:
                    unexpected += 1
                elif sched in seen:
                    duplicates += 1
                else:
                    seen.add(sched)
                    if sched < newest[sender]:
                        reorders += 1
                    else:
                        newest[sender] = sched
                    if plan.measured(sched):
                        latencies.append(now - sched)
    ordered = sorted(latencies)
    asked = plan.offered() * n
    ordered_lags = sorted(lags)
    return LoadResult(
        server=server,
        nagle=nagle,
        clients=n,
        rate=rate,
        duration=duration,
        connect_s=usage.connect_s,
        offered_msgs_per_s=plan.offered() / duration,
        sent_msgs_per_s=sent / duration,
        deliveries_per_s=deliveries_in_window / usage.wall_s,
        expected=sent * n,
        received=len(ordered),
        lost=sent * n - len(ordered),
        unsent=plan.offered() - sent,
        duplicates=duplicates,
        reorders=reorders,
        unexpected=unexpected,
        p50_ms=_percentile_ms(ordered, asked, 0.50),
        p95_ms=_percentile_ms(ordered, asked, 0.95),
        p99_ms=_percentile_ms(ordered, asked, 0.99),
        max_ms=_percentile_ms(ordered, asked, 1.0),
        send_lag_p50_ms=_percentile_ms(ordered_lags, len(ordered_lags), 0.50),
        send_lag_p99_ms=_percentile_ms(ordered_lags, len(ordered_lags), 0.99),
        server_cpu_pct=100 * usage.server_cpu_s / usage.wall_s,
        server_cpu_us_per_delivery=(
            1e6 * usage.server_cpu_s / deliveries_in_window if deliveries_in_window else math.nan
        ),
        server_peak_rss_mb=usage.server_peak_rss / 2**20,
        server_threads=usage.server_threads,
        harness_cpu_pct=100 * usage.harness_cpu_s / usage.wall_s,
    )


def run_tcp_load(
    server: str = "tcp",
    *,
    clients: int = 200,
    rate: float = 5.0,
    duration: float = 10.0,
    warmup: float = 1.0,
    drain: float = 5.0,
    nagle: bool = False,
) -> LoadResult:
    """Start `server` ("tcp" or "naive"), run the load against it, stop it, return the numbers."""
    if server not in SERVER_MODULES:
        raise ValueError(f"server must be one of {sorted(SERVER_MODULES)}")
    period_ns = round(1e9 / rate) if rate > 0 else 0
    if clients < 1 or duration <= 0 or warmup < 0 or drain < 0 or period_ns < clients:
        raise ValueError("need clients >= 1, 0 < rate <= 1e9/clients, duration > 0, warmup >= 0")
    _raise_open_file_limit()
    process = _ServerProcess(server, nagle)
    connected: list[_Client] = []
    scheduled = threading.Event()
    stop = threading.Event()
    loop: threading.Thread | None = None
    lags: array[int] = array("q")
    try:
        address = process.wait_ready()
        connect_start = time.monotonic()
        for index in range(clients):
            connected.append(_connect(index, address))
        connect_s = time.monotonic() - connect_start

        t0 = time.monotonic_ns() + _LEAD_NS
        start_ns = t0 + round(warmup * 1e9)
        plan = _Plan(clients, period_ns, t0, start_ns, start_ns + round(duration * 1e9))
        loop = threading.Thread(
            target=_run_loop, args=(connected, plan, lags, scheduled, stop), daemon=True
        )
        loop.start()

        _sleep_until(plan.start_ns)
        server_cpu_start = procstat.cpu_seconds(process.proc.pid)
        harness_cpu_start = _own_cpu_seconds()
        wall_start = time.monotonic()
        _sleep_until(plan.end_ns)
        server_cpu_s = procstat.cpu_seconds(process.proc.pid) - server_cpu_start
        harness_cpu_s = _own_cpu_seconds() - harness_cpu_start
        wall_s = time.monotonic() - wall_start
        _drain(connected, scheduled, plan.end_ns + round(drain * 1e9))
        usage = _Usage(
            connect_s=connect_s,
            wall_s=wall_s,
            server_cpu_s=server_cpu_s,
            harness_cpu_s=harness_cpu_s,
            server_peak_rss=procstat.peak_rss_bytes(process.proc.pid),
            server_threads=procstat.thread_count(process.proc.pid),
        )
    finally:
        stop.set()
        if loop is not None:
            loop.join(_STOP_TIMEOUT_S)
        for client in connected:
            client.close()
        process.stop()
    return _summarise(server, nagle, rate, plan, connected, lags, usage)


def format_results(results: Sequence[LoadResult]) -> str:
    """A table with one row per run; latencies in ms, `inf` where deliveries never came."""
    headers = [
        "server", "clients", "rate", "offered/s", "deliv/s", "p50 ms", "p95 ms", "p99 ms",
        "max ms", "lag p99 ms", "lost", "unsent", "dup", "reord", "srv CPU%", "srv µs/deliv",
        "srv RSS MB", "srv thr", "harness CPU%", "connect s",
    ]  # fmt: skip
    rows = [
        [
            r.server + (" +nagle" if r.nagle and r.server == "tcp" else ""),
            r.clients,
            f"{r.rate:g}",
            f"{r.offered_msgs_per_s:.0f}",
            f"{r.deliveries_per_s:.0f}",
            f"{r.p50_ms:.2f}",
            f"{r.p95_ms:.2f}",
            f"{r.p99_ms:.2f}",
            f"{r.max_ms:.2f}",
            f"{r.send_lag_p99_ms:.2f}",
            r.lost,
            r.unsent,
            r.duplicates,
            r.reorders,
            f"{r.server_cpu_pct:.0f}",
            f"{r.server_cpu_us_per_delivery:.2f}",
            f"{r.server_peak_rss_mb:.1f}",
            r.server_threads,
            f"{r.harness_cpu_pct:.0f}",
            f"{r.connect_s:.2f}",
        ]
        for r in results
    ]
    return tabulate(rows, headers=headers, disable_numparse=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Open-loop load test of a TCP chat server.")
    parser.add_argument("--server", choices=sorted(SERVER_MODULES), default="tcp")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rate", type=float, default=5.0, help="messages per second per client")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds excluded from stats")
    parser.add_argument("--drain", type=float, default=5.0, help="seconds to wait for late ones")
    parser.add_argument(
        "--nagle", action="store_true", help="tcp.server only: leave Nagle on (naive always is)"
    )
    args = parser.parse_args(argv)
    result = run_tcp_load(
        args.server,
        clients=args.clients,
        rate=args.rate,
        duration=args.duration,
        warmup=args.warmup,
        drain=args.drain,
        nagle=args.nagle,
    )
    print(format_results([result]))
    if result.unexpected:
        print(f"warning: {result.unexpected} deliveries carried markers never sent")


if __name__ == "__main__":
    main()
