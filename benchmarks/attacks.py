"""The attacks the servers were once open to, run again against them as processes, and a soak.

    python -m benchmarks.attacks [--quick] [--json PATH] [case ...]      (`make bench-attacks`)

Each attack was found once, fixed, and has a functional test; this measures the fixed server
under it. While an attack runs, ``PROBES`` well-behaved clients (``Probe``) chat and ping from
127.0.0.1; every attacker binds to 127.0.0.2 (all of 127/8 is loopback), so that a limit per
address tells them apart. Per case: the probes' round trips p50/p99 and whether any was dropped
(and their p99 in the ``IDLE_S`` before the attack: the machine's own noise), and the server's
memory at the start, at its peak, and once the attack is over. The verdict
(``judge``) holds each case to: no probe dropped, probes' p99 within ``PROBE_P99_MS``, memory
back within ``BACK_MB`` of the start, and the case's own target below. Figures in parentheses
are what the server did before the fix.

* ``lockout``: one address opens ``LOCKOUT_RATE`` connections a second and never says hello,
  for ``LOCKOUT_S`` seconds; meanwhile a newcomer from another address joins every second.
  Every newcomer must be welcomed (0 of 50 in 25 s: the 256 strangers allowed in all were the
  attacker's); ``--max-waiting-per-address`` is the limit that keeps its share to itself.
* ``flooder``: a TCP client that never says hello and never reads sends junk lines as fast as
  it can. It must be dropped within ``FLOOD_DROP_S`` seconds and cause at most
  ``FLOOD_LOG_LINES`` lines of the server's log (never dropped in 8 s, probes 2.9-3.4 s late,
  +80-90 MB, 53.5 MB of log for 26 MB received).
* ``held-frames``: ``HELD_SESSIONS`` reliable UDP 1.0 sessions each send seq 2..64 of 8 KB
  frames without seq 1, so the server must hold them until the gap is filled, and keep the
  session alive with pings. The server's peak may grow by ``HELD_PEAK_MB`` at most
  (500 sessions added 255 MB); ``--max-held-bytes`` bounds it. The sessions join first, and
  only then are the probes and the memory measured: 500 reliable 1.0 users joining at once
  cost the others seconds of delay, whatever they do next, which is not this attack.
* ``kill-history``: a TCP server with ``--history-file`` under ``KILL_RATE`` messages a second
  asked (it takes fewer: its one core is the limit; the figures say how many, and the cores the
  server and the talker used) is killed with SIGKILL, ``KILLS`` times, and started again on
  the same file. The messages the talker saw broadcast but the restarted server's history
  lacks, in ms of traffic, must be at most one ``HISTORY_BATCH_MS`` batch, as the README
  promises (107-222 ms were lost).
* ``soak``: ``SOAK_CLIENTS`` users of ``benchmarks.chaos`` (its ``LoadClient``, no cuts, no
  kills) chat on one TCP server for ``SOAK_S`` seconds while, every ``CHURN_EVERY`` seconds, one
  leaves with ``bye`` and a new one joins. Every delivery is checked against the room's one
  order of ids (``check``): nothing missing between a user's welcome and its last message,
  nothing twice, nothing out of order (3,899,541 deliveries checked in 10 min, nothing wrong).
  That is its whole target: its probes share a process with its users, so their latency is
  shown, not judged.

``--quick`` runs every case for a few seconds at a smaller scale, for the tests; the verdicts
then hold the same targets. The machine's cores are shared by the server, the attackers and the
probes: latencies say what they manage together.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import json
import multiprocessing
import random
import re
import selectors
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.capacity import current_rss_bytes
from benchmarks.chaos import Counts, LoadClient, chat
from benchmarks.harness import machine_meta
from benchmarks.overload import MB, mb, percentile
from benchmarks.procstat import cpu_seconds, peak_rss_bytes
from benchmarks.servers import ServerProcess, free_port, python_server, wait_until
from common.cli.serverargs import raise_open_file_limit
from common.protocol.codec import Bye, Hello, Joined, Left, Msg, Ping, Pong, Say, Welcome
from common.terminal.console import ChatError, Transport
from common.terminal.resume import Step
from tcp.client import TcpTransport
from udp.client import UdpTransport

CASES = ("lockout", "flooder", "held-frames", "kill-history", "soak")
PROBES = 3
PROBE_EVERY = 0.1
"""Seconds between a probe's frames: a ping and a message in turn, well within the rate limit."""
PROBE_P99_MS = 100.0
IDLE_S = 2.0
"""Seconds the probes measure before the attack: their p99 then is the machine's own noise."""
BACK_MB = 50.0
ATTACKER = "127.0.0.2"
SETTLE_S = 30.0
"""Longest wait for the server's memory to come back, or for the last deliveries."""

LOCKOUT_RATE = 30.0
"""Strangers a second: past the 256 places in all within one ``--hello-timeout`` (10 s)."""
LOCKOUT_S = 20.0
FLOOD_DROP_S = 3.0
FLOOD_LOG_LINES = 10
FLOOD_GIVE_UP_S = 10.0
FLOOD_CHUNK = b'{"type":"junk","x":"' + b"j" * 100 + b'"}\n'
HELD_SESSIONS = 500
HELD_TEXT = 8000
"""A held frame's text: the frame just under the codec's 8 KiB, which the server holds as it is."""
HELD_SEQS = range(2, 65)
HELD_HOLD_S = 12.0
HELD_PEAK_MB = 100.0
HELD_PING_EVERY = 2.0
HELD_RATE = 25 * (1 << 20)
"""Bytes a second the held frames go out at, all sessions together (200 Mbit/s, past the 32 MB
the server holds in all within 2 s): sent at the speed of loopback, and again for ever, they
were a flood of 0.7-1.3 GB, another attack."""
KIND = re.compile(rb'"type":\s*"(\w+)"')
SEQ = re.compile(rb'"seq":\s*(\d+)')
HELD_SENDS = 3
"""Times a held frame is sent at most while not acked: a session the server ended (``too_slow``)
acks nothing more, and sending its frames for ever would be another attack, a flood."""
KILL_RATE = 40_000.0
KILL_TALK_S = 5.0
KILLS = 3
HISTORY_BATCH_MS = 100.0
SOAK_CLIENTS = 100
SOAK_RATE = 1.0
SOAK_S = 600.0
CHURN_EVERY = 1.0


@dataclass(frozen=True)
class Scale:
    """How big and how long each case is."""

    lockout_s: float = LOCKOUT_S
    waiting_per_address: int = 64  # the server's default --max-waiting-per-address
    held_sessions: int = HELD_SESSIONS
    held_hold_s: float = HELD_HOLD_S
    session_timeout: float = 15.0
    kill_talk_s: float = KILL_TALK_S
    kills: int = KILLS
    soak_clients: int = SOAK_CLIENTS
    soak_s: float = SOAK_S
    churn_every: float = CHURN_EVERY


QUICK = Scale(
    lockout_s=3.0,
    waiting_per_address=8,  # so that a few seconds reach it
    held_sessions=30,
    held_hold_s=2.0,
    session_timeout=2.0,
    kill_talk_s=1.5,
    kills=1,
    soak_clients=10,
    soak_s=4.0,
    churn_every=0.5,
)


@dataclass
class Result:
    """One case: the probes, the server's memory (MB; None where it does not apply), the
    case's own figures, and the verdict on each target."""

    case: str
    seconds: float
    probes_dropped: int | None = None
    probe_samples: int = 0
    probe_p50_ms: float | None = None
    probe_p99_ms: float | None = None
    probe_idle_p99_ms: float | None = None  # before the attack
    rss_start_mb: float | None = None
    rss_peak_mb: float | None = None
    rss_end_mb: float | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(self.checks.values())


# --------------------------------------------------------------------------
# The verdict (pure).


def judge(result: Result) -> dict[str, bool]:
    """Each target the case is held to, and whether it was met."""
    checks: dict[str, bool] = {}
    if result.probes_dropped is not None:
        checks["no probe dropped"] = result.probes_dropped == 0
        p99 = result.probe_p99_ms
        if result.case != "soak":  # its probes share a process with its 100 users: shown only
            checks[f"probes' p99 <= {PROBE_P99_MS:g} ms"] = p99 is not None and p99 <= PROBE_P99_MS
    if result.rss_start_mb is not None and result.rss_end_mb is not None:
        checks[f"memory back within {BACK_MB:g} MB"] = (
            result.rss_end_mb - result.rss_start_mb <= BACK_MB
        )
    f = result.figures
    if result.case == "lockout":
        checks["every newcomer welcomed"] = f["welcomed"] == f["newcomers"] > 0
    elif result.case == "flooder":
        dropped = f["dropped_after_s"]
        checks[f"dropped within {FLOOD_DROP_S:g} s"] = dropped is not None and (
            dropped <= FLOOD_DROP_S
        )
        checks[f"<= {FLOOD_LOG_LINES} log lines"] = f["log_lines"] <= FLOOD_LOG_LINES
    elif result.case == "held-frames":
        assert result.rss_peak_mb is not None and result.rss_start_mb is not None
        grew = result.rss_peak_mb - result.rss_start_mb
        checks[f"peak within {HELD_PEAK_MB:g} MB of the start"] = grew <= HELD_PEAK_MB
    elif result.case == "kill-history":
        lost = f["lost_ms_max"]
        checks[f"<= {HISTORY_BATCH_MS:g} ms lost per kill"] = lost is not None and (
            lost <= HISTORY_BATCH_MS
        )
    elif result.case == "soak":
        checks["every delivery right"] = (
            f["deliveries"] > 0
            and f["caught_up"]
            and not any(f[k] for k in ("missed", "received_twice", "out_of_order"))
        )
    return checks


# --------------------------------------------------------------------------
# The well-behaved clients and the server's memory.


class Probe:
    """A well-behaved user on its own threads: every ``PROBE_EVERY`` seconds a ``ping`` or (if
    ``chat``) a message, alternately; the round trips to its ``pong`` and to its own message
    coming back. ``dropped``: its connection ended before ``stop``."""

    def __init__(self, transport: Transport, name: str, chat: bool = True) -> None:
        self.transport = transport
        self.name = name
        self.chat = chat
        self.welcomed = threading.Event()
        self.dropped = False
        self.rtts_ms: list[float] = []
        self.idle_ms: list[float] = []  # the round trips before the attack
        self.left: list[str] = []  # the reason of every ``left`` it was told of
        self.joined = 0  # the ``joined`` it was told of
        self._pings: collections.deque[float] = collections.deque()
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, name=f"probe-{name}", daemon=True)
        self._writer = threading.Thread(target=self._write, name=f"probe-{name}-w", daemon=True)
        self._reader.start()
        transport.send(Hello(name=name))

    def start(self) -> None:
        """Begin measuring, once welcomed (the join itself is not a round trip)."""
        self._writer.start()

    def _read(self) -> None:
        while (message := self.transport.receive()) is not None:
            now = time.monotonic()
            if isinstance(message, Welcome):
                self.welcomed.set()
            elif isinstance(message, Pong) and self._pings:
                self.rtts_ms.append((now - self._pings.popleft()) * 1000)
            elif isinstance(message, Left):
                self.left.append(message.reason)
            elif isinstance(message, Joined):
                self.joined += 1
            elif isinstance(message, Msg) and message.sender == self.name:
                sent = float(message.text.split()[1])
                self.rtts_ms.append((now - sent) * 1000)
        self.dropped = not self._stop.is_set()

    def _write(self) -> None:
        turn = 0
        while not self._stop.wait(PROBE_EVERY):
            turn += 1
            with contextlib.suppress(OSError):
                if self.chat and turn % 2:
                    self.transport.send(Say(text=f"p {time.monotonic()!r}"))
                else:
                    self._pings.append(time.monotonic())
                    self.transport.send(Ping())

    def stop(self) -> None:
        self._stop.set()
        self._writer.join()
        time.sleep(0.2)  # the last answers arrive
        with contextlib.suppress(OSError):
            self.transport.send(Bye())
        self.transport.close()
        self._reader.join(5.0)


@contextlib.contextmanager
def probes(connect: Callable[[], Transport], chat: bool = True) -> Iterator[list[Probe]]:
    """``PROBES`` probes joined and measuring, their first ``IDLE_S`` seconds apart (before the
    attack); stopped at the end."""
    group = [Probe(connect(), f"probe{n}", chat) for n in range(PROBES)]
    try:
        for probe in group:
            if not probe.welcomed.wait(SETTLE_S):
                raise RuntimeError(f"{probe.name} was not welcomed")
            probe.start()
        time.sleep(IDLE_S)
        for probe in group:
            probe.idle_ms, probe.rtts_ms = probe.rtts_ms, []
        yield group
    finally:
        for probe in group:
            probe.stop()


def probe_figures(result: Result, group: Sequence[Probe]) -> None:
    samples = [ms for probe in group for ms in probe.rtts_ms]
    result.probes_dropped = sum(probe.dropped for probe in group)
    result.probe_samples = len(samples)
    result.probe_p50_ms = round(statistics.median(samples), 2) if samples else None
    result.probe_p99_ms = percentile(samples, 0.99)
    result.probe_idle_p99_ms = percentile([ms for probe in group for ms in probe.idle_ms], 0.99)


def memory_back(result: Result, pid: int, start: int) -> None:
    """The peak so far, then the memory once back within ``BACK_MB`` of ``start`` (or after
    ``SETTLE_S``, whatever it is then)."""
    result.rss_start_mb = mb(start)
    result.rss_peak_mb = mb(peak_rss_bytes(pid))
    wait_until(lambda: current_rss_bytes(pid) - start <= BACK_MB * MB, SETTLE_S, 0.2)
    result.rss_end_mb = mb(current_rss_bytes(pid))


@contextlib.contextmanager
def server(module: str, *args: str, port: int = 0) -> Iterator[ServerProcess]:
    process = ServerProcess(python_server(module, *args, port=port))
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop(signal.SIGKILL if process.proc.poll() is None and port else signal.SIGTERM)


def tcp_connect(process: ServerProcess) -> Callable[[], Transport]:
    return lambda: TcpTransport.connect(f"{process.host}:{process.port}")


def attacker_socket(kind: int = socket.SOCK_STREAM) -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    sock.bind((ATTACKER, 0))
    return sock


# --------------------------------------------------------------------------
# lockout


def lockout(scale: Scale) -> Result:
    """Strangers from one address, ``LOCKOUT_RATE`` a second; newcomers from another."""
    result = Result("lockout", scale.lockout_s)
    cap = ("--max-waiting-per-address", str(scale.waiting_per_address))
    with server("tcp.server", *cap) as process, probes(tcp_connect(process)) as group:
        start = current_rss_bytes(process.pid)
        strangers: list[socket.socket] = []
        delays: list[float] = []
        newcomers = 0
        begun = time.monotonic()
        next_newcomer = begun
        while (now := time.monotonic()) < begun + scale.lockout_s:
            sock = attacker_socket()
            with contextlib.suppress(OSError):
                sock.connect(process.address)
            strangers.append(sock)
            if now >= next_newcomer:
                newcomers += 1
                if (delay := newcomer(process, f"new{newcomers}")) is not None:
                    delays.append(delay)
                next_newcomer += 1.0
            time.sleep(max(0.0, begun + len(strangers) / LOCKOUT_RATE - time.monotonic()))
        refused = sum(map(refused_full, strangers))
        for sock in strangers:
            sock.close()
        probe_figures(result, group)
        memory_back(result, process.pid, start)
    result.figures = {
        "strangers": len(strangers),
        "strangers_refused": refused,  # server_full: the address had its share waiting
        "newcomers": newcomers,
        "welcomed": len(delays),
        "welcome_p99_ms": percentile(delays, 0.99),
    }
    return result


def refused_full(sock: socket.socket) -> bool:
    """Whether the server told this stranger ``server_full`` (what it sent waits unread)."""
    sock.setblocking(False)
    try:
        return b"server_full" in sock.recv(65536)
    except OSError:
        return False


def newcomer(process: ServerProcess, name: str) -> float | None:
    """A newcomer's ms from hello to welcome; None if none came in 5 s."""
    try:
        transport = TcpTransport.connect(f"{process.host}:{process.port}")
    except ChatError:
        return None
    said = time.monotonic()
    transport.send(Hello(name=name))
    answer: list[float] = []

    def read() -> None:
        while (message := transport.receive()) is not None:
            if isinstance(message, Welcome):
                answer.append((time.monotonic() - said) * 1000)
                return

    reader = threading.Thread(target=read, name=f"newcomer-{name}", daemon=True)
    reader.start()
    reader.join(5.0)
    with contextlib.suppress(OSError):
        transport.send(Bye())
    transport.close()
    return round(answer[0], 2) if answer else None


# --------------------------------------------------------------------------
# flooder


def flooder(scale: Scale) -> Result:
    """Junk lines without hello, never read: how soon it is dropped, and what it costs."""
    del scale  # the flood stops itself: when the server drops it
    result = Result("flooder", 0.0)
    with server("tcp.server") as process, probes(tcp_connect(process)) as group:
        start = current_rss_bytes(process.pid)
        sock = attacker_socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(process.address)
        port = sock.getsockname()[1]
        chunk = FLOOD_CHUNK * 512
        sent = 0
        dropped: float | None = None
        sock.settimeout(0.5)
        begun = time.monotonic()
        while time.monotonic() - begun < FLOOD_GIVE_UP_S:
            try:
                sent += sock.send(chunk)
            except TimeoutError:
                continue
            except OSError:
                dropped = time.monotonic() - begun
                break
        result.seconds = round(time.monotonic() - begun, 3)
        sock.close()
        time.sleep(1.0)  # the probes go on a moment after it
        probe_figures(result, group)
        memory_back(result, process.pid, start)
        mine = [line for line in process.lines if re.search(rf":{port}\b", line)]
    result.figures = {
        "dropped_after_s": None if dropped is None else round(dropped, 3),
        "sent_mb": mb(sent),
        "log_lines": len(mine),
        "log_bytes": sum(len(line) + 1 for line in mine),
    }
    return result


# --------------------------------------------------------------------------
# held-frames


class Holders:
    """``count`` reliable UDP 1.0 sessions from ``ATTACKER``, in one thread: each joins, acks
    what the server sends and pings every ``HELD_PING_EVERY`` seconds; from ``hold`` on, each
    sends seq 2..64 of ``HELD_TEXT``-byte texts without seq 1, at ``HELD_RATE`` in all, and
    again those not acked once all went out (a datagram the server's socket had no room for;
    ``HELD_SENDS`` times at most), until ``stop``; then falls silent."""

    def __init__(self, address: tuple[str, int], count: int) -> None:
        self.address = address
        self.selector = selectors.DefaultSelector()
        self.tokens: dict[socket.socket, str] = {}
        self.socks = [attacker_socket(socket.SOCK_DGRAM) for _ in range(count)]
        self.unacked = {sock: set(HELD_SEQS) for sock in self.socks}
        self.sends = dict.fromkeys(self.socks, 0)
        for sock in self.socks:
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ)
        self.sent_bytes = 0
        self._stop = threading.Event()
        self._holding = threading.Event()
        self._queue: collections.deque[tuple[socket.socket, dict[str, Any]]] = collections.deque()
        self._thread = threading.Thread(target=self._run, name="held-frames", daemon=True)
        self._thread.start()

    @property
    def joined(self) -> int:
        return len(self.tokens)

    def _send(self, sock: socket.socket, frame: dict[str, Any]) -> None:
        data = json.dumps(frame).encode()
        with contextlib.suppress(OSError):
            self.sent_bytes += sock.sendto(data, self.address)

    def hold(self) -> None:
        """Begin sending frames ahead of the gap, at once."""
        self._holding.set()

    def _run(self) -> None:
        next_round = paced = time.monotonic()
        holding = False
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_round or holding != self._holding.is_set():
                holding = self._holding.is_set()
                self._round()
                next_round = now + HELD_PING_EVERY
            while self._queue and paced <= now:
                sock, frame = self._queue.popleft()
                self._send(sock, frame)
                paced = max(paced, now - 0.1) + (HELD_TEXT + 100) / HELD_RATE
            for key, _ in self.selector.select(0.005):
                self._read(key.fileobj)  # type: ignore[arg-type]
        self.selector.close()
        for sock in self.socks:
            sock.close()

    def _round(self) -> None:
        """A hello from those still unwelcomed, a ping from the others, and their held frames
        queued again once the last ones went out."""
        again = self._holding.is_set() and not self._queue
        for n, sock in enumerate(self.socks):
            token = self.tokens.get(sock)
            if token is None:
                self._send(sock, {"type": "hello", "name": f"held{n}", "reliable": True})
            else:
                self._send(sock, {"type": "ping", "session": token})
                if again:
                    self._hold(sock, token)

    def _read(self, sock: socket.socket) -> None:
        """Ack what the server sends, read with a pattern, not parsed: the joins alone are
        hundreds of thousands of frames, each to be acked within the server's 200 ms."""
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            kind, seq = KIND.search(data), SEQ.search(data)
            if kind is None or seq is None:
                continue
            if kind[1] == b"ack":
                self.unacked[sock].discard(int(seq[1]))
                continue
            token = self.tokens.get(sock)
            if token is None and kind[1] == b"welcome":
                token = self.tokens[sock] = json.loads(data)["session"]
            if token is not None:
                ack = b'{"type":"ack","seq":%s,"session":"%s"}' % (seq[1], token.encode())
                with contextlib.suppress(OSError):
                    self.sent_bytes += sock.sendto(ack, self.address)

    def _hold(self, sock: socket.socket, token: str) -> None:
        """The frames ahead of the gap that the server has not acked yet (held ones are)."""
        self.sends[sock] += 1
        if self.sends[sock] > HELD_SENDS:
            return
        for seq in sorted(self.unacked[sock]):
            text = f"{seq} " + "h" * HELD_TEXT
            self._queue.append((sock, {"type": "say", "text": text, "seq": seq, "session": token}))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(SETTLE_S)


def hold_frames(
    address: tuple[str, int],
    count: int,
    joined: Any,  # a shared int: how many have joined
    hold: Any,  # an Event: begin holding
    stop: Any,  # an Event: fall silent
    counts: Any,  # a Queue: the bytes sent and the frames acked, at the end
) -> None:
    """The ``Holders``, in a process of their own: in the probes' process, their work would
    take the probes' share of the interpreter lock, and the probes would be late for it."""
    holders = Holders(address, count)
    while not stop.wait(0.1):
        joined.value = holders.joined
        if hold.is_set():
            holders.hold()
    holders.stop()
    acked = sum(len(HELD_SEQS) - len(u) for u in holders.unacked.values())
    counts.put((holders.sent_bytes, acked))


def held_frames(scale: Scale) -> Result:
    """Reliable sessions holding frames ahead of a gap: the server's memory, the probes."""
    result = Result("held-frames", 0.0)
    timeout = f"{scale.session_timeout:g}"
    with server("udp.server", "--quiet", "--session-timeout", timeout) as process:

        def connect() -> Transport:
            return UdpTransport.connect(process.host, process.port, reliable=True, packets=True)

        with probes(connect) as group:
            spawn = multiprocessing.get_context("spawn")
            joined = spawn.Value("i", 0)
            hold, stop, counts = spawn.Event(), spawn.Event(), spawn.Queue()
            child = spawn.Process(
                target=hold_frames,
                args=(process.address, scale.held_sessions, joined, hold, stop, counts),
                name="held-frames",
            )
            child.start()

            def told() -> bool:
                """Every join told to every probe: the joins are over."""
                return all(p.joined >= scale.held_sessions for p in group)

            joins = time.monotonic()
            wait_until(told, 4 * SETTLE_S, 0.1)
            joins = time.monotonic() - joins
            time.sleep(HELD_PING_EVERY)  # the joins' last frames acked
            for probe in group:
                probe.rtts_ms.clear()  # what the joins cost is another matter
            start = current_rss_bytes(process.pid)
            begun, cpu = time.monotonic(), cpu_seconds(process.pid)
            hold.set()
            time.sleep(scale.held_hold_s)
            busy = (cpu_seconds(process.pid) - cpu) / (time.monotonic() - begun)
            stop.set()
            sent, acked = counts.get(timeout=SETTLE_S)
            child.join(SETTLE_S)
            result.seconds = round(time.monotonic() - begun, 1)
            rss_holding = mb(current_rss_bytes(process.pid))
            probe_figures(result, group)
            wait_until(lambda: len(group[0].left) >= joined.value, scale.session_timeout + SETTLE_S)
            memory_back(result, process.pid, start)
            ended = collections.Counter(group[0].left)
    result.figures = {
        "sessions": scale.held_sessions,
        "joined": joined.value,
        "joins_s": round(joins, 1),  # until the last join was told to everyone
        "sent_mb": mb(sent),
        "acked_frames": acked,
        "rss_holding_mb": rss_holding,
        "server_cores": round(busy, 2),  # while they held
        "ended": dict(ended),  # how the server ended them: too_slow (holding most), timeout
    }
    return result


# --------------------------------------------------------------------------
# kill-history


class Talker:
    """One TCP user saying ``k<n>`` for n = 1, 2, ... at ``KILL_RATE`` a second, in batches,
    and reading its room's broadcast back: ``seen``, the last n it got, and when."""

    BATCH = 200

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address)
        self.sock.sendall(b'{"type":"hello","name":"talker"}\n')
        self.next = 1
        self.seen: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, name="talker-r", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        tail = b""
        with contextlib.suppress(OSError):
            while data := self.sock.recv(1 << 20):
                whole, _, tail = (tail + data).rpartition(b"\n")
                numbers = re.findall(rb'"text":"k(\d+)"', whole)
                if numbers:
                    self.seen.append((time.monotonic(), int(numbers[-1])))

    def talk(self, seconds: float) -> None:
        """Say at ``KILL_RATE`` for ``seconds`` (slower if the server pushes back)."""
        begun = time.monotonic()
        sent = 0
        with contextlib.suppress(OSError):
            while time.monotonic() < begun + seconds:
                lines = b"".join(
                    b'{"type":"say","text":"k%d"}\n' % n
                    for n in range(self.next, self.next + self.BATCH)
                )
                self.sock.sendall(lines)
                self.next += self.BATCH
                sent += self.BATCH
                time.sleep(max(0.0, begun + sent / KILL_RATE - time.monotonic()))

    def rate(self, window: float = 1.0) -> float:
        """Messages a second it saw come back over the last ``window`` seconds."""
        end, last = self.seen[-1]
        earlier = [n for t, n in self.seen if t <= end - window]
        return (last - earlier[-1]) / window if earlier else last / window

    def close(self) -> None:
        self.sock.close()
        self._reader.join(5.0)


def kill_history(scale: Scale) -> Result:
    """A server on a history file killed under load: what its history lacks after a restart."""
    result = Result("kill-history", 0.0)
    losses: list[dict[str, float]] = []  # per kill: the rate, the loss, the cores each side used
    port = free_port()
    begun = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="attacks-") as workdir:
        argv = ("--history-file", str(Path(workdir) / "history"), "--rate-limit", "0", "--quiet")
        for _ in range(scale.kills):
            with server("tcp.server", *argv, port=port) as process:
                talker = Talker(process.address)
                cpu = time.process_time(), cpu_seconds(process.pid)
                talker.talk(scale.kill_talk_s)
                harness = (time.process_time() - cpu[0]) / scale.kill_talk_s
                busy = (cpu_seconds(process.pid) - cpu[1]) / scale.kill_talk_s
                process.stop(signal.SIGKILL)
                talker.close()
            with server("tcp.server", *argv, port=port) as process:
                kept = history_last(process.address)
            last = talker.seen[-1][1] if talker.seen else 0
            rate = talker.rate() if talker.seen else 0.0
            lost = max(0, last - kept)
            losses.append(
                {
                    "rate": round(rate),
                    "lost": lost,
                    "lost_ms": round(lost / rate * 1000, 1),
                    "server_cores": round(busy, 2),
                    "harness_cores": round(harness, 2),
                }
            )
    result.seconds = round(time.monotonic() - begun, 1)
    result.figures = {
        "kills": losses,
        "rate_median": statistics.median(k["rate"] for k in losses),
        "lost_ms_max": max(k["lost_ms"] for k in losses),
        "lost_ms_median": statistics.median(k["lost_ms"] for k in losses),
    }
    return result


def history_last(address: tuple[str, int]) -> int:
    """The n of the newest ``k<n>`` in the server's history (0 when it has none)."""
    with socket.create_connection(address, timeout=SETTLE_S) as sock:
        sock.sendall(b'{"type":"hello","name":"reader"}\n{"type":"history","limit":1}\n')
        newest = 0
        for line in sock.makefile("rb"):
            frame = json.loads(line)
            if frame["type"] == "msg" and frame.get("history"):
                newest = int(frame["text"][1:])
            elif frame["type"] == "history_end":
                return newest
    return newest


# --------------------------------------------------------------------------
# soak


class SoakClient(LoadClient):
    """A chaos ``LoadClient`` that keeps, instead of senders and numbers, the room's ids: the
    ``last`` of its welcome and the id of every live message."""

    def __init__(self, index: int, servers: Sequence[str]) -> None:
        super().__init__(index, servers, TcpTransport.connect, random.Random(index))
        self.after: int | None = None
        self.ids: list[int] = []

    def _welcome(self, transport: Transport) -> Welcome | None:
        welcome = super()._welcome(transport)
        if welcome is not None and self.after is None:
            self.after = int(welcome.last or 0)
        return welcome

    def _take(self, step: Step) -> None:
        for shown in step.show:
            if isinstance(shown, Msg) and not shown.history:
                self.ids.append(int(shown.id))


def check(sessions: Sequence[tuple[int, Sequence[int]]]) -> Counts:
    """Every user's live messages against the room's one order (pure).

    A session is its welcome's ``last`` and the ids of the messages it got, in order. The
    room's messages are those anyone got; each one after a user's ``last`` and up to the last
    one it got is due to it (a user that left with ``bye`` may miss what was said as it left;
    one still there at the end has caught up with the room, which the run waits for). Ids only
    grow: one that does not is out of order, one seen before is twice.
    """
    room = sorted({i for _, ids in sessions for i in ids})
    missed = twice = disorder = deliveries = 0
    for after, ids in sessions:
        deliveries += len(ids)
        got: set[int] = set()
        newest = after
        for i in ids:
            if i in got:
                twice += 1
            elif i < newest:
                disorder += 1
            got.add(i)
            newest = max(newest, i)
        due = [i for i in room if after < i <= newest]
        missed += sum(i not in got for i in due)
    return Counts(len(room), deliveries, missed, 0, twice, disorder)


def soak(scale: Scale) -> Result:
    """Users chat, leave and join on one TCP server; every delivery checked."""
    result = Result("soak", scale.soak_s)
    with server("tcp.server", "--rate-limit", "0", "--quiet") as process:
        address = [f"{process.host}:{process.port}"]
        clients = [SoakClient(i, address) for i in range(scale.soak_clients)]
        for client in clients:
            client.start()
        wait_until(lambda: all(c.connected for c in clients), SETTLE_S)
        with probes(tcp_connect(process), chat=False) as group:
            start = current_rss_bytes(process.pid)
            seats = list(clients)
            stop_chat = threading.Event()
            chatter = threading.Thread(
                target=chat, args=(seats, SOAK_RATE, stop_chat), name="soak-chatter", daemon=True
            )
            chatter.start()
            end = time.monotonic() + scale.soak_s
            while time.monotonic() < end:
                time.sleep(scale.churn_every)
                churn(seats, clients, address)
            stop_chat.set()
            chatter.join()
            caught_up = wait_until(lambda: settled(seats), SETTLE_S, 1.0)
            probe_figures(result, group)
        for client in seats:
            client.stop()
        memory_back(result, process.pid, start)
    counts = check([(c.after or 0, c.ids) for c in clients])
    result.figures = {
        "users": len(clients),
        "left_and_joined": len(clients) - scale.soak_clients,
        "caught_up": caught_up,
        "messages": counts.messages,
        "deliveries": counts.deliveries,
        "missed": counts.missed_without_notice,
        "received_twice": counts.received_twice,
        "out_of_order": counts.out_of_order,
    }
    return result


def churn(seats: list[SoakClient], clients: list[SoakClient], address: list[str]) -> None:
    """Someone leaves with ``bye``; a new user sits in their seat once welcomed."""
    seat = random.randrange(len(seats))
    seats[seat].stop()
    joiner = SoakClient(len(clients), address)
    clients.append(joiner)
    joiner.start()
    wait_until(lambda: joiner.connected, SETTLE_S)
    seats[seat] = joiner


def settled(seats: Sequence[SoakClient]) -> bool:
    """Whether everyone still there has the room's newest message, or came after it."""
    newest = max((c.ids[-1] for c in seats if c.ids), default=0)
    return all((c.ids[-1] if c.ids else c.after or 0) >= newest for c in seats)


# --------------------------------------------------------------------------


RUNS: dict[str, Callable[[Scale], Result]] = {
    "lockout": lockout,
    "flooder": flooder,
    "held-frames": held_frames,
    "kill-history": kill_history,
    "soak": soak,
}


def run(case: str, scale: Scale) -> Result:
    result = RUNS[case](scale)
    result.checks = judge(result)
    return result


def report(result: Result) -> str:
    """The case's figures and its verdict, a few lines."""
    memory = (
        ""
        if result.rss_start_mb is None
        else f"memory {result.rss_start_mb:.0f} MB -> peak {result.rss_peak_mb:.0f} -> "
        f"{result.rss_end_mb:.0f} after; "
    )
    probed = (
        ""
        if result.probes_dropped is None
        else f"probes: {result.probes_dropped} dropped, p50 {result.probe_p50_ms} ms, "
        f"p99 {result.probe_p99_ms} ms ({result.probe_samples} samples; "
        f"p99 {result.probe_idle_p99_ms} ms before the attack); "
    )
    verdict = "PASS" if result.passed else "FAIL"
    failed = [name for name, ok in result.checks.items() if not ok]
    lines = [
        f"{result.case}: {verdict}{' (' + ', '.join(failed) + ')' if failed else ''}",
        f"  {probed}{memory}{result.seconds:g} s",
        f"  {json.dumps(result.figures)}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.attacks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("case", nargs="*", help=f"of {', '.join(CASES)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="a few seconds each, smaller")
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    args = parser.parse_args(argv)
    if unknown := set(args.case) - set(CASES):
        parser.error(f"no case {', '.join(sorted(unknown))}; the cases: {', '.join(CASES)}")
    raise_open_file_limit()
    scale = QUICK if args.quick else Scale()
    results = []
    for case in args.case or CASES:
        results.append(run(case, scale))
        print(report(results[-1]), flush=True)
    if args.json:
        meta = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "quick": args.quick,
            "probes": PROBES,
            **asdict(scale),
            **machine_meta(),
        }
        cases = [{**asdict(r), "passed": r.passed} for r in results]
        Path(args.json).write_text(
            json.dumps({"meta": meta, "cases": cases}, indent=2), encoding="utf-8"
        )
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
