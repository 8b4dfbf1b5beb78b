"""One measured load run against one chat server: the method behind every benchmark number.

Contract:
    run_load(LoadSpec(server="tcp", clients=200, rate=5, ...), progress=None) -> LoadResult
    run_clients(spec, address, server_pid, progress=None) -> LoadResult   (the client side only)
    run_c_clients(spec, address, pids) -> (LoadResult, raw counts)   the same by the C generator,
                                        CPU over several processes (a server and its Redis)
    result_to_dict(result) / result_from_dict(mapping)   JSON-safe (inf and nan become None)
    format_results(results, labels=None) -> str          a table, one row per run

`run_load` starts the server as its own process (`benchmarks.servers`), drives it with
`spec.clients` clients speaking the real protocol (`benchmarks.clients`), grouped into
`spec.threads` worker threads, and stops it. With `netns_loss` set, the server and the client side
both run inside a `netsim.lossy.LossyNamespace` whose loopback drops that percentage of UDP
datagrams and TCP segments (any server: TCP meets the same link as UDP): the client side is then
the subprocess `python -m benchmarks.client_worker`, which prints its LoadResult as JSON. With
`relay_loss` the UDP clients talk through an in-process `netsim.faults.FaultyRelay` instead.

`spec.generator` says who plays the clients: the Python ones above, or the load generator in C
(`benchmarks/cgen/loadgen.c`, one process, one thread), which follows the method below step for
step at a fraction of the CPU and prints its raw counts, turned here into the same LoadResult;
"auto" (the default) takes C wherever it runs (the TCP servers without slow readers, UDP raw
and packet sessions: reliable 1.0 sessions stay with the Python clients) and a C compiler is
there. The result names the generator; "the harness" below is whichever ran
(its own CPU, its send lags). Over a namespace the C generator runs inside it directly.

Method, chosen so the numbers cannot flatter the server:
- Open loop. Client i sends its k-th `say` at t0 + (k*N + i) * period / N (period = 1/rate), so
  the phases are spread evenly. Latency is measured from the scheduled time, never from the
  actual send, so a stall shows up in the latencies instead of quietly lowering the offered
  load (coordinated omission). One clock: time.monotonic_ns() of the client-side process.
- Statistics cover the measured window [t0 + warmup, t0 + warmup + duration): its messages for
  latency and loss, and every delivery arriving during it for throughput and server CPU per
  delivery (the work done in the window over the deliveries made in it). Deliveries of the
  warmup's messages that arrive in the window count, so a server catching up on a backlog
  shows more deliveries/s than the window offered; the share of the window's own messages
  delivered is `received / expected`, which never passes 100 %. After the window the harness
  waits up to `drain` seconds for the deliveries still owed (raw UDP stops early after half a
  second with nothing new), then says `bye`, closes, and stops the server with SIGTERM. What
  arrives after the drain counts as lost.
- `expected` = messages of the window sent x recipients (every client gets every message, its
  own included, except from the assignment's server, which does not echo); `lost` = expected -
  received by the end of the drain; `unsent` = messages of the window still queued in the
  harness at the end (a server that stopped reading);
  `duplicates` = a marker seen twice by one client; `reorders` = a marker older than one already
  seen from the same sender; `unexpected` = a marker never sent. Latency percentiles are over
  the deliveries that arrived (nearest rank); the missing ones are in `lost`.
- Server CPU is the server process's user + system time over the window (/proc), per delivery
  received in it; `server_cpu_ticks` says over how many clock ticks (10 ms each) it was
  measured, so that a figure from a few ticks is not shown with more digits than it has. Its
  peak memory is VmHWM after the run. `server_retransmitted` is what the server itself says
  it retransmitted (the UDP server's session summaries; -1 where a server does not say);
  over a namespace, `tcp_retransmitted` is the kernel's count of TCP segments sent again in
  it (RetransSegs, both ends; -1 elsewhere). The harness reports its own CPU
  (100 % = one core, and per delivery) and how late its sends left against the schedule
  (`send_lag`); a run past HARNESS_CPU_LIMIT_PCT or HARNESS_LAG_LIMIT_MS is `harness_bound`.
- Latency percentiles: p50, p95, p99 and max, and PERCENTILES for the percentile plot.
- `connect_s` is the time until every client had its `welcome` (TCP clients join one after the
  other, UDP clients all at once).
- Slow readers (`slow_readers`, TCP) join after the others, with a 4 KiB receive buffer, and
  never read or send; they count in no statistic. `slow_dropped` says how many the server had
  disconnected by the end. `too_slow_seen` counts the clients (TCP or UDP) that were told some
  session left `too_slow`, `too_slow_after_s` when the first was told, in seconds from t0.
  `pad` lengthens every text by that many characters, so that a slow reader's buffers fill
  sooner.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks import cgen, procstat
from benchmarks.clients import (
    Client,
    Plan,
    TcpClient,
    UdpClient,
    Worker,
    connect_raw_text,
    connect_tcp,
    join_udp,
    markers,
    tcp_slow_reader,
    was_dropped,
)
from benchmarks.servers import REPO_ROOT, ServerProcess, server_command
from benchmarks.tables import table
from common.cli.serverargs import raise_open_file_limit
from netsim.faults import FaultyRelay
from netsim.lossy import LossyNamespace

DEFAULT_THREADS = 1
"""Worker threads when not told. Each thread more is one more contender for the one interpreter
lock, so the harness's sends leave later and its arrivals are stamped later: in the suite's
`threads` group more threads never measured clearly better than one, two measured worse, and
hundreds make the GIL the bottleneck."""

Progress = Callable[[str], None]

PROGRESS_PREFIX = "progress: "
"""How the client worker marks its progress lines on stderr."""

_LEAD_NS = 300_000_000
_POLL_S = 0.01
_QUIET_NS = 500_000_000
_STOP_TIMEOUT_S = 5.0
_SLOW_RCVBUF = 4096
_WORKER_MARGIN_S = 60.0

HARNESS_CPU_LIMIT_PCT = 85.0
HARNESS_LAG_LIMIT_MS = 1.0
"""A run is harness-bound when the harness used more than HARNESS_CPU_LIMIT_PCT of a core or
its sends left more than HARNESS_LAG_LIMIT_MS late at p99: then the clients, not the server,
may have set the pace, and the run says nothing about the server."""

PERCENTILES = (50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9)
"""The latency percentiles every run keeps, for the percentile plot."""

GENERATORS = ("auto", "c", "python")
"""The load generators a LoadSpec may ask for; "auto" is C where it can, else Python."""


@dataclass(frozen=True)
class LoadSpec:
    """What to run: which server, how many clients, how fast, over which link."""

    server: str = "tcp"
    reliable: bool = False
    packets: bool = False  # UDP: packet sessions (v1.2) rather than 1.0 datagrams
    clients: int = 10
    rate: float = 5.0
    duration: float = 5.0
    warmup: float = 1.0
    drain: float = 5.0
    threads: int = DEFAULT_THREADS
    nagle: bool = False
    slow_readers: int = 0
    max_outbox: int | None = None
    coalesce_ms: float | None = None  # TCP: the writer's rest between passes; None: the default
    nodelay: bool = False  # the assignment's server with TCP_NODELAY (it leaves Nagle on)
    pad: int = 0
    netns_loss: int | None = None
    relay_loss: float = 0.0
    seed: int = 1
    generator: str = "auto"  # the clients: "c" (benchmarks.cgen), "python", or "auto" (see below)

    @property
    def protocol(self) -> str:
        """tcp, assignment, udp-raw, udp-reliable (1.0), udp-raw-packets, udp-reliable-packets."""
        if self.server != "udp":
            return self.server
        return ("udp-reliable" if self.reliable else "udp-raw") + (
            "-packets" if self.packets else ""
        )

    @property
    def echoes(self) -> bool:
        """Whether a sender receives its own message: the assignment's server does not echo."""
        return self.server != "assignment"

    @property
    def link(self) -> str:
        if self.netns_loss is not None:
            return f"netns {self.netns_loss}% loss"
        if self.relay_loss:
            return f"relay {self.relay_loss:.0%} loss"
        return "loopback"

    def validate(self) -> None:
        if self.server not in ("tcp", "assignment", "udp"):
            raise ValueError("server must be tcp, assignment or udp")
        period_ns = round(1e9 / self.rate) if self.rate > 0 else 0
        if self.clients < 1 or period_ns < self.clients:
            raise ValueError("need clients >= 1 and 0 < rate <= 1e9 / clients")
        if self.duration <= 0 or self.warmup < 0 or self.drain < 0 or self.threads < 1:
            raise ValueError("need duration > 0, warmup >= 0, drain >= 0, threads >= 1")
        if (self.reliable or self.packets) and self.server != "udp":
            raise ValueError("reliable mode and packets are UDP's")
        if self.slow_readers and self.server == "udp":
            raise ValueError("slow readers are a TCP matter")
        if self.relay_loss and self.server != "udp":
            raise ValueError("the relay is UDP's; a namespace (netns_loss) carries TCP too")
        if self.nodelay and self.server != "assignment":
            raise ValueError("nodelay is the assignment's server's option (tcp.server: nagle)")
        if self.generator not in GENERATORS:
            raise ValueError(f"generator must be one of {', '.join(GENERATORS)}")
        if self.generator == "c" and not self.c_supported:
            raise ValueError(
                "the C generator drives TCP without slow readers, and UDP but reliable 1.0"
            )

    @property
    def c_supported(self) -> bool:
        """Whether the C generator can drive this run: the TCP servers without slow readers,
        and the UDP server's sessions but reliable 1.0 ones (those stay in Python)."""
        if self.server == "udp":
            return self.packets or not self.reliable
        return not self.slow_readers

    def chosen_generator(self) -> str:
        """The generator that runs: "auto" is C where supported and a compiler is there."""
        if self.generator == "auto":
            return "c" if self.c_supported and cgen.available() else "python"
        return self.generator


@dataclass(frozen=True)
class LoadResult:
    """What one run measured; rates are per second of the measured window."""

    protocol: str
    link: str
    clients: int
    threads: int
    rate: float
    duration: float
    nagle: bool
    coalesce_ms: float  # nan: the server's default
    slow_readers: int
    connect_s: float
    offered_msgs_per_s: float
    sent_msgs_per_s: float
    offered_deliveries_per_s: float
    deliveries_per_s: float
    sent: int
    expected: int
    received: int
    lost: int
    loss_pct: float
    unsent: int
    duplicates: int
    reorders: int
    unexpected: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    percentiles_ms: list[float]
    send_lag_p50_ms: float
    send_lag_p99_ms: float
    retransmitted: int
    send_errors: int
    slow_dropped: int
    too_slow_seen: int
    too_slow_after_s: float
    server_cpu_pct: float
    server_cpu_us_per_delivery: float
    server_peak_rss_mb: float
    server_threads: int
    harness_cpu_pct: float
    harness_cpu_us_per_delivery: float
    server_clean_exit: bool | None
    server_cpu_ticks: int = -1
    server_retransmitted: int = -1
    tcp_retransmitted: int = -1
    acks_per_packet: float = math.nan
    """UDP packet sessions: the clients' acks per packet received from the server."""
    generator: str = "python"
    """Which load generator drove the clients: "python" (benchmarks.clients) or "c"."""

    @property
    def server(self) -> str:
        """The server process that ran: tcp, assignment or udp."""
        return self.protocol.split("-")[0]

    @property
    def harness_bound(self) -> bool:
        """True when the harness may have been the limit (see HARNESS_CPU_LIMIT_PCT)."""
        return is_harness_bound(self.harness_cpu_pct, self.send_lag_p99_ms)


def is_harness_bound(harness_cpu_pct: float, send_lag_p99_ms: float) -> bool:
    """The harness-bound rule; a lag that could not be measured (nothing sent) does not count."""
    return harness_cpu_pct > HARNESS_CPU_LIMIT_PCT or send_lag_p99_ms > HARNESS_LAG_LIMIT_MS


def add_generator_argument(parser: argparse.ArgumentParser) -> None:
    """--generator: which load generator drives the clients."""
    parser.add_argument(
        "--generator",
        choices=GENERATORS,
        default="auto",
        help="the clients: c (benchmarks/cgen: TCP, the assignment's server, UDP but "
        "reliable 1.0), "
        "python, or auto: c where it can and a C compiler is there, else python (default)",
    )


def result_to_dict(result: LoadResult) -> dict[str, Any]:
    """The fields as JSON-safe values: inf and nan become None."""
    return {
        key: None if isinstance(value, float) and not math.isfinite(value) else value
        for key, value in asdict(result).items()
    }


def result_from_dict(data: Mapping[str, Any]) -> LoadResult:
    """The inverse of result_to_dict (None in a float field reads as nan); unknown keys ignored,
    missing ones with a default take it."""
    values: dict[str, Any] = {}
    for spec_field in dataclasses.fields(LoadResult):
        if spec_field.name not in data and spec_field.default is not dataclasses.MISSING:
            continue
        value = data.get(spec_field.name)
        if value is None and spec_field.type == "float":
            value = math.nan
        if value is None and spec_field.name == "percentiles_ms":
            value = []
        values[spec_field.name] = value
    return LoadResult(**values)


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def _sleep_until(deadline_ns: int) -> None:
    delay_ns = deadline_ns - time.monotonic_ns()
    if delay_ns > 0:
        time.sleep(delay_ns / 1e9)


def _percentile_ms(sorted_ns: Sequence[int], fraction: float) -> float:
    """Nearest-rank percentile; nan when there is nothing to rank."""
    if not sorted_ns:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_ns)))
    return sorted_ns[rank - 1] / 1e6


def _groups(clients: Sequence[Client], threads: int) -> list[list[Client]]:
    """Contiguous groups of nearly equal size, one per worker thread."""
    count = min(threads, len(clients))
    bounds = [len(clients) * w // count for w in range(count + 1)]
    return [list(clients[bounds[w] : bounds[w + 1]]) for w in range(count)]


def _watch_window(
    clients: Sequence[Client], plan: Plan, progress: Progress | None, workers: Sequence[Worker]
) -> None:
    """Sleep through the measured window, reporting deliveries per second once a second."""
    if progress is None:
        _sleep_until(plan.end_ns)
        return
    total_s = (plan.end_ns - plan.start_ns) / 1e9
    last_count = sum(c.received for c in clients)
    last_ns = time.monotonic_ns()
    while last_ns < plan.end_ns and not any(w.error for w in workers):
        _sleep_until(min(plan.end_ns, last_ns + 1_000_000_000))
        now = time.monotonic_ns()
        count = sum(c.received for c in clients)
        rate = (count - last_count) / max((now - last_ns) / 1e9, 1e-9)
        progress(f"{(now - plan.start_ns) / 1e9:4.1f}/{total_s:g} s, {rate:,.0f} deliveries/s")
        last_count, last_ns = count, now


def _drain(
    clients: Sequence[Client],
    workers: Sequence[Worker],
    deadline_ns: int,
    quiet_ends: bool,
    recipients: int,
) -> None:
    """Wait until every message is scheduled, every queue written and every sent message
    reached every client, or until the deadline; with quiet_ends, also once nothing new has
    come for half a second (what raw UDP lost never comes)."""
    for worker in workers:
        worker.scheduled.wait(max(0.0, (deadline_ns - time.monotonic_ns()) / 1e9))
    last_count, last_change = -1, time.monotonic_ns()
    while (now := time.monotonic_ns()) < deadline_ns:
        owed = sum(len(c.sent) for c in clients) * recipients
        count = sum(c.received for c in clients)
        if count >= owed and not any(c.blocked for c in clients):
            return
        if count != last_count:
            last_count, last_change = count, now
        elif quiet_ends and now - last_change >= _QUIET_NS:
            return
        time.sleep(_POLL_S)


@dataclass(frozen=True)
class _Usage:
    """Resources used during the measured window, and the server's peaks after it; what
    arrives after `drained_ns` (e.g. once reading a slow reader frees a stuck server) is late
    beyond the drain and counts as lost."""

    drained_ns: int
    connect_s: float
    wall_s: float
    server_cpu_s: float
    harness_cpu_s: float
    server_peak_rss: int
    server_threads: int
    slow_dropped: int


def _connect(
    spec: LoadSpec, address: tuple[str, int]
) -> tuple[list[TcpClient] | list[UdpClient], float]:
    started = time.monotonic()
    clients: list[TcpClient] | list[UdpClient]
    if spec.server == "udp":
        clients = join_udp(0, spec.clients, address, spec.reliable, spec.packets)
    elif spec.server == "assignment":
        clients = connect_raw_text(spec.clients, address, spec.pad)
    else:
        tcp_clients: list[TcpClient] = []
        try:
            for index in range(spec.clients):
                tcp_clients.append(connect_tcp(index, address, spec.pad))
        except BaseException:
            for client in tcp_clients:
                client.close()
            raise
        clients = tcp_clients
    return clients, time.monotonic() - started


def run_clients(
    spec: LoadSpec,
    address: tuple[str, int],
    server_pid: int,
    progress: Progress | None = None,
) -> LoadResult:
    """Connect the clients to a running server, run the schedule, and measure."""
    spec.validate()
    if spec.chosen_generator() == "c":
        return _run_c(spec, address, server_pid, progress, subprocess.Popen)
    raise_open_file_limit()
    if progress:
        progress("connecting")
    clients, connect_s = _connect(spec, address)
    slow: list[socket.socket] = []
    stop = threading.Event()
    workers: list[Worker] = []
    try:
        for offset in range(spec.slow_readers):
            slow.append(tcp_slow_reader(spec.clients + offset, address, _SLOW_RCVBUF))
        plan = _plan(spec)
        workers = [
            Worker(group, plan, stop, f"load-{w}")
            for w, group in enumerate(_groups(clients, spec.threads))
        ]
        for worker in workers:
            worker.start()
        _sleep_until(plan.start_ns)
        server_cpu_start = procstat.cpu_seconds(server_pid)
        harness_cpu_start = _own_cpu_seconds()
        wall_start = time.monotonic()
        _watch_window(clients, plan, progress, workers)
        _sleep_until(plan.end_ns)
        server_cpu_s = procstat.cpu_seconds(server_pid) - server_cpu_start
        harness_cpu_s = _own_cpu_seconds() - harness_cpu_start
        wall_s = time.monotonic() - wall_start
        if progress:
            progress("draining")
        quiet_ends = spec.server == "udp" and not spec.reliable
        _drain(
            clients, workers, plan.end_ns + round(spec.drain * 1e9), quiet_ends, _recipients(spec)
        )
        usage = _Usage(
            drained_ns=time.monotonic_ns(),
            connect_s=connect_s,
            wall_s=wall_s,
            server_cpu_s=server_cpu_s,
            harness_cpu_s=harness_cpu_s,
            server_peak_rss=procstat.peak_rss_bytes(server_pid),
            server_threads=procstat.thread_count(server_pid),
            slow_dropped=sum(1 for sock in slow if was_dropped(sock)),
        )
    finally:
        stop.set()
        for worker in workers:
            worker.join(_STOP_TIMEOUT_S)
        for client in clients:
            client.close()
        for sock in slow:
            sock.close()
    for worker in workers:
        if worker.error is not None:
            raise RuntimeError(f"a load worker failed: {worker.error!r}") from worker.error
    lags = array("q", (lag for worker in workers for lag in worker.lags))
    return _summarise(spec, plan, clients, lags, usage)


def _plan(spec: LoadSpec) -> Plan:
    """The open-loop schedule of a run that starts a moment from now."""
    t0 = time.monotonic_ns() + _LEAD_NS
    start_ns = t0 + round(spec.warmup * 1e9)
    end_ns = start_ns + round(spec.duration * 1e9)
    return Plan(spec.clients, round(1e9 / spec.rate), t0, start_ns, end_ns)


def _recipients(spec: LoadSpec) -> int:
    """How many clients receive each message."""
    return spec.clients if spec.echoes else spec.clients - 1


@dataclass
class _Tally:
    """What the arrivals held: latencies of measured messages, and what was wrong with them."""

    latencies: array[int]
    in_window: int = 0
    duplicates: int = 0
    reorders: int = 0
    unexpected: int = 0


def _tally(
    plan: Plan,
    clients: Sequence[TcpClient] | Sequence[UdpClient],
    owner: dict[int, int],
    drained_ns: int,
) -> _Tally:
    """Read every client's arrivals for markers, after the run: nothing of this is timed."""
    tally = _Tally(array("q"))
    for client in clients:
        seen: set[int] = set()
        newest = [-1] * len(clients)
        for now, data in zip(client.chunk_times, client.chunks, strict=True):
            if now > drained_ns:
                break
            batch = markers(data)
            if plan.measured(now):
                tally.in_window += len(batch)
            for sched in batch:
                sender = owner.get(sched)
                if sender is None:
                    tally.unexpected += 1
                elif sched in seen:
                    tally.duplicates += 1
                else:
                    seen.add(sched)
                    if sched < newest[sender]:
                        tally.reorders += 1
                    else:
                        newest[sender] = sched
                    if plan.measured(sched):
                        tally.latencies.append(now - sched)
    return tally


def _summarise(
    spec: LoadSpec,
    plan: Plan,
    clients: Sequence[TcpClient] | Sequence[UdpClient],
    lags: array[int],
    usage: _Usage,
) -> LoadResult:
    n = len(clients)
    duration = (plan.end_ns - plan.start_ns) / 1e9
    owner = {sched: client.index for client in clients for sched in client.sent}
    sent = sum(1 for sched in owner if plan.measured(sched))
    tally = _tally(plan, clients, owner, usage.drained_ns)
    latencies, deliveries_in_window = tally.latencies, tally.in_window
    duplicates, reorders, unexpected = tally.duplicates, tally.reorders, tally.unexpected
    ordered = sorted(latencies)
    ordered_lags = sorted(lags)
    expected = sent * _recipients(spec)
    udp = [c for c in clients if isinstance(c, UdpClient)]
    too_slow = [t for t in (c.too_slow_ns() for c in clients) if t]
    return LoadResult(
        protocol=spec.protocol,
        link=spec.link,
        clients=n,
        threads=min(spec.threads, n),
        rate=spec.rate,
        duration=duration,
        nagle=spec.nagle,
        coalesce_ms=math.nan if spec.coalesce_ms is None else spec.coalesce_ms,
        slow_readers=spec.slow_readers,
        connect_s=usage.connect_s,
        offered_msgs_per_s=plan.offered() / duration,
        sent_msgs_per_s=sent / duration,
        offered_deliveries_per_s=plan.offered() * _recipients(spec) / duration,
        deliveries_per_s=deliveries_in_window / usage.wall_s,
        sent=sent,
        expected=expected,
        received=len(ordered),
        lost=expected - len(ordered),
        loss_pct=100 * (expected - len(ordered)) / expected if expected else math.nan,
        unsent=plan.offered() - sent,
        duplicates=duplicates,
        reorders=reorders,
        unexpected=unexpected,
        p50_ms=_percentile_ms(ordered, 0.50),
        p95_ms=_percentile_ms(ordered, 0.95),
        p99_ms=_percentile_ms(ordered, 0.99),
        max_ms=_percentile_ms(ordered, 1.0),
        percentiles_ms=[_percentile_ms(ordered, p / 100) for p in PERCENTILES] if ordered else [],
        send_lag_p50_ms=_percentile_ms(ordered_lags, 0.50),
        send_lag_p99_ms=_percentile_ms(ordered_lags, 0.99),
        retransmitted=sum(c.retransmitted for c in udp),
        send_errors=sum(c.send_errors for c in udp),
        slow_dropped=usage.slow_dropped,
        too_slow_seen=len(too_slow),
        too_slow_after_s=(min(too_slow) - plan.t0_ns) / 1e9 if too_slow else math.nan,
        server_cpu_pct=100 * usage.server_cpu_s / usage.wall_s,
        server_cpu_us_per_delivery=(
            1e6 * usage.server_cpu_s / deliveries_in_window if deliveries_in_window else math.nan
        ),
        server_peak_rss_mb=usage.server_peak_rss / 2**20,
        server_threads=usage.server_threads,
        harness_cpu_pct=100 * usage.harness_cpu_s / usage.wall_s,
        harness_cpu_us_per_delivery=(
            1e6 * usage.harness_cpu_s / deliveries_in_window if deliveries_in_window else math.nan
        ),
        server_clean_exit=None,
        server_cpu_ticks=round(usage.server_cpu_s * procstat.CLOCK_TICKS_PER_S),
        acks_per_packet=_acks_per_packet(udp),
    )


_C_MODES = {"tcp": "json", "assignment": "raw", "udp": "udp"}
"""What the C generator speaks to each server (UDP packet sessions: see _c_mode)."""

_C_FRACTIONS = (0.5, 0.95, 0.99, 1.0, *(p / 100 for p in PERCENTILES))
"""The nearest ranks the C generator is asked for: p50, p95, p99, max, then PERCENTILES."""


def run_c_clients(
    spec: LoadSpec, address: tuple[str, int], pids: Sequence[int]
) -> tuple[LoadResult, Mapping[str, Any]]:
    """`run_clients` by the C generator, the chat's CPU counted over every process of `pids`
    (a server and its Redis); also the generator's raw counts (``refused``: messages the
    server refused)."""
    raw = _c_raw(spec, address, pids[0], None, subprocess.Popen, pids[1:])
    return _c_result(spec, raw), raw


def _run_c(
    spec: LoadSpec,
    address: tuple[str, int],
    server_pid: int,
    progress: Progress | None,
    launch: Callable[..., subprocess.Popen[str]],
) -> LoadResult:
    """The client side by the C generator (benchmarks/cgen), the same method as run_clients:
    `launch` starts it (here, or inside a namespace), it prints its raw counts as JSON."""
    return _c_result(spec, _c_raw(spec, address, server_pid, progress, launch))


def _c_mode(spec: LoadSpec) -> str:
    if spec.packets:
        return "reliable-packets" if spec.reliable else "packets"
    return _C_MODES[spec.server]


def _c_raw(
    spec: LoadSpec,
    address: tuple[str, int],
    server_pid: int,
    progress: Progress | None,
    launch: Callable[..., subprocess.Popen[str]],
    also_pids: Sequence[int] = (),
) -> Mapping[str, Any]:
    """Run the C generator; its raw counts."""
    command = [
        str(cgen.binary()),
        "--mode", _c_mode(spec),
        "--host", address[0],
        "--port", str(address[1]),
        "--clients", str(spec.clients),
        "--period-ns", str(round(1e9 / spec.rate)),
        "--warmup-ns", str(round(spec.warmup * 1e9)),
        "--duration-ns", str(round(spec.duration * 1e9)),
        "--drain-ns", str(round(spec.drain * 1e9)),
        "--lead-ns", str(_LEAD_NS),
        "--pad", str(spec.pad),
        "--server-pid", str(server_pid),
        "--fractions", ",".join(repr(f) for f in _C_FRACTIONS),
        *(arg for pid in also_pids for arg in ("--also-pid", str(pid))),
    ]  # fmt: skip
    process = launch(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    messages: list[str] = []
    relay = threading.Thread(target=_relay_stderr, args=(process, progress, messages), daemon=True)
    relay.start()
    assert process.stdout is not None
    try:
        out = process.stdout.read()
        process.wait(spec.warmup + spec.duration + spec.drain + _WORKER_MARGIN_S)
    finally:
        if process.poll() is None:  # interrupted, or past every deadline it keeps
            process.kill()
            process.wait()
    relay.join(_STOP_TIMEOUT_S)
    if process.returncode != 0:
        tail = "\n".join(messages[-20:])
        raise RuntimeError(f"the C load generator failed ({process.returncode}):\n{tail}")
    raw: Mapping[str, Any] = json.loads(out)
    return raw


def _c_result(spec: LoadSpec, raw: Mapping[str, Any]) -> LoadResult:
    """The C generator's raw counts as a LoadResult, each field as _summarise computes it."""
    duration = round(spec.duration * 1e9) / 1e9
    wall_s = raw["wall_s"]
    in_window, sent, received, offered = (
        raw["in_window"], raw["sent"], raw["received"], raw["offered"]
    )  # fmt: skip
    expected = sent * _recipients(spec)
    latency = [ns / 1e6 for ns in raw["latency_ns"]] or [math.nan] * len(_C_FRACTIONS)
    lag = [ns / 1e6 for ns in raw["lag_ns"]] or [math.nan, math.nan]
    ticks = raw["server_cpu_ticks"]
    server_cpu_s = ticks / raw["clock_ticks_per_s"]
    harness_cpu_s = raw["harness_cpu_s"]
    return LoadResult(
        protocol=spec.protocol,
        link=spec.link,
        clients=spec.clients,
        threads=1,
        rate=spec.rate,
        duration=duration,
        nagle=spec.nagle,
        coalesce_ms=math.nan if spec.coalesce_ms is None else spec.coalesce_ms,
        slow_readers=spec.slow_readers,
        connect_s=raw["connect_s"],
        offered_msgs_per_s=offered / duration,
        sent_msgs_per_s=sent / duration,
        offered_deliveries_per_s=offered * _recipients(spec) / duration,
        deliveries_per_s=in_window / wall_s,
        sent=sent,
        expected=expected,
        received=received,
        lost=expected - received,
        loss_pct=100 * (expected - received) / expected if expected else math.nan,
        unsent=offered - sent,
        duplicates=raw["duplicates"],
        reorders=raw["reorders"],
        unexpected=raw["unexpected"],
        p50_ms=latency[0],
        p95_ms=latency[1],
        p99_ms=latency[2],
        max_ms=latency[3],
        percentiles_ms=latency[4:] if received else [],
        send_lag_p50_ms=lag[0],
        send_lag_p99_ms=lag[1],
        retransmitted=raw["retransmitted"],
        send_errors=raw["send_errors"],
        slow_dropped=0,
        too_slow_seen=raw["too_slow_seen"],
        too_slow_after_s=raw["too_slow_after_ns"] / 1e9 if raw["too_slow_seen"] else math.nan,
        server_cpu_pct=100 * server_cpu_s / wall_s,
        server_cpu_us_per_delivery=1e6 * server_cpu_s / in_window if in_window else math.nan,
        server_peak_rss_mb=raw["server_peak_rss_kb"] / 1024,
        server_threads=raw["server_threads"],
        harness_cpu_pct=100 * harness_cpu_s / wall_s,
        harness_cpu_us_per_delivery=1e6 * harness_cpu_s / in_window if in_window else math.nan,
        server_clean_exit=None,
        server_cpu_ticks=ticks,
        acks_per_packet=(
            raw["acks_sent"] / raw["packets_received"]
            if spec.packets and raw["packets_received"]
            else math.nan
        ),
        generator="c",
    )


def _acks_per_packet(clients: Sequence[UdpClient]) -> float:
    acks = [client.acks for client in clients]
    received = sum(packets for _, packets in acks)
    return sum(sent for sent, _ in acks) / received if received else math.nan


def _relay_stderr(
    worker: subprocess.Popen[str], progress: Progress | None, messages: list[str]
) -> None:
    """Pass the worker's progress lines on; keep the rest for an error message."""
    assert worker.stderr is not None
    for line in worker.stderr:
        text = line.rstrip("\n")
        if text.startswith(PROGRESS_PREFIX):
            if progress:
                progress(text[len(PROGRESS_PREFIX) :])
        else:
            messages.append(text)


def _run_in_namespace(spec: LoadSpec, progress: Progress | None) -> LoadResult:
    """Server and client side both inside a fresh lossy namespace."""
    assert spec.netns_loss is not None
    with LossyNamespace(spec.netns_loss) as namespace:
        server = ServerProcess(_server_argv(spec), launch=namespace.run)
        try:
            address = server.wait_ready()
            if spec.chosen_generator() == "c":
                result = _run_c(spec, address, server.pid, progress, namespace.run)
            else:
                result = _run_worker(spec, address, server.pid, progress, namespace)
            retransmitted_segments = namespace.tcp_retransmitted()
        finally:
            clean = _stop(server)
    return dataclasses.replace(
        result,
        server_clean_exit=clean,
        server_retransmitted=server.retransmitted,
        tcp_retransmitted=retransmitted_segments,
    )


def _run_worker(
    spec: LoadSpec,
    address: tuple[str, int],
    server_pid: int,
    progress: Progress | None,
    namespace: LossyNamespace,
) -> LoadResult:
    """The Python clients as the client worker process inside the namespace."""
    command = [
        sys.executable, "-m", "benchmarks.client_worker",
        "--spec", json.dumps(asdict(dataclasses.replace(spec, generator="python"))),
        "--target", f"{address[0]}:{address[1]}",
        "--server-pid", str(server_pid),
    ]  # fmt: skip
    worker = namespace.run(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    messages: list[str] = []
    relay = threading.Thread(target=_relay_stderr, args=(worker, progress, messages), daemon=True)
    relay.start()
    assert worker.stdout is not None
    out = worker.stdout.read()
    worker.wait(spec.warmup + spec.duration + spec.drain + _WORKER_MARGIN_S)
    relay.join(_STOP_TIMEOUT_S)
    if worker.returncode != 0:
        tail = "\n".join(messages[-20:])
        raise RuntimeError(f"the client worker failed ({worker.returncode}):\n{tail}")
    return result_from_dict(json.loads(out))


def _server_argv(spec: LoadSpec) -> list[str]:
    return server_command(
        spec.server,
        nagle=spec.nagle,
        max_outbox=spec.max_outbox,
        coalesce_ms=spec.coalesce_ms,
        nodelay=spec.nodelay,
    )


def run_load(spec: LoadSpec, progress: Progress | None = None) -> LoadResult:
    """Start the server, run the load against it, stop it, return the numbers."""
    spec.validate()
    if spec.netns_loss is not None:
        return _run_in_namespace(spec, progress)
    server = ServerProcess(_server_argv(spec))
    relay: FaultyRelay | None = None
    try:
        address = server.wait_ready()
        if spec.relay_loss:
            relay = FaultyRelay(address, drop=spec.relay_loss, seed=spec.seed)
            relay.start()
            address = relay.address
        result = run_clients(spec, address, server.pid, progress)
    finally:
        if relay is not None:
            relay.close()
        clean = _stop(server)
    return dataclasses.replace(
        result, server_clean_exit=clean, server_retransmitted=server.retransmitted
    )


def _stop(server: ServerProcess) -> bool:
    """Stop the server; whether it stopped cleanly. One that did not may have failed during
    the run: its last lines say why."""
    server.stop()
    if not server.clean_exit:
        print(
            f"\nwarning: the server (pid {server.pid}) did not stop cleanly; its last lines:\n"
            + server.tail(),
            file=sys.stderr,
        )
    return server.clean_exit


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def label_of(result: LoadResult) -> str:
    """The server as a table names it: its protocol and the flags that differ from default."""
    label = result.protocol + (" +nagle" if result.nagle else "")
    if math.isfinite(result.coalesce_ms):
        label += f" coalesce {result.coalesce_ms:g} ms"
    return label


def format_results(results: Sequence[LoadResult], labels: Sequence[str] | None = None) -> str:
    """A table with one row per run; latencies in ms, `-` where nothing arrived."""
    headers = [
        "protocol", "link", "clients", "thr", "rate", "offered deliv/s", "deliv/s", "p50 ms",
        "p95 ms", "p99 ms", "max ms", "lost", "loss %", "dup", "reord", "unsent", "retx",
        "srv µs/deliv", "srv CPU%", "srv MB", "gen", "harness CPU%", "harness µs/deliv",
        "lag p99 ms", "connect s", "harness-bound",
    ]  # fmt: skip
    rows = [
        [
            label_of(r),
            r.link,
            r.clients + r.slow_readers,
            r.threads,
            f"{r.rate:g}",
            f"{r.offered_deliveries_per_s:,.0f}",
            f"{r.deliveries_per_s:,.0f}",
            _ms(r.p50_ms),
            _ms(r.p95_ms),
            _ms(r.p99_ms),
            _ms(r.max_ms),
            r.lost,
            f"{r.loss_pct:.2f}",
            r.duplicates,
            r.reorders,
            r.unsent,
            r.retransmitted,
            f"{r.server_cpu_us_per_delivery:.2f}",
            f"{r.server_cpu_pct:.0f}",
            f"{r.server_peak_rss_mb:.1f}",
            r.generator,
            f"{r.harness_cpu_pct:.0f}",
            f"{r.harness_cpu_us_per_delivery:.2f}",
            _ms(r.send_lag_p99_ms),
            f"{r.connect_s:.2f}",
            "HARNESS-BOUND" if r.harness_bound else "",
        ]
        for r in results
    ]
    if labels is not None:
        headers.insert(0, "scenario")
        for row, label in zip(rows, labels, strict=True):
            row.insert(0, label)
    return table(rows, headers)
