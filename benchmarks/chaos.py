"""Resume under chaos: connections cut and servers killed while a room chats (protocol v1.2).

    python -m benchmarks.chaos [--duration 300] [--quick] [--transport tcp|udp] [--setup ...]
                               [--json PATH]                               (`make bench-chaos`)

Each scenario (a transport, TCP or UDP, and a set-up) runs ``--clients`` users (50) chatting at
``--rate`` messages per second each (2) for ``--duration`` seconds, while:

* every ``CUT_EVERY`` seconds (2) one connected user's connection is cut without a word: its
  socket is closed under it, so the server sees the connection end with no ``bye`` (for UDP the
  user comes back from a new socket, so a new port, as after a NAT rebinding);
* every ``KILL_EVERY`` seconds (30) a server is killed with SIGKILL and started again on the
  same port: set-up ``single``, one server on a ``--history-file`` (which keeps the room's ids
  and epoch across the restart); set-up ``redis``, two servers sharing a room through a real
  ``redis-server``, their users split between them, and the first one killed (its users move
  to the other, or wait for it, as ``--server`` given twice makes the terminal client do).

The users are this module's own load clients (``LoadClient``, one thread each): the transports
of the terminal clients (``tcp.client``, ``udp.client`` reliable, in packets) driven by the same
sans-IO ``Retry`` (backoff 0.5 s to 10 s with full jitter, servers in turn) and ``Tracker``
(session, epoch, last id; a resume's answer held until ``history_end``) as the terminal client,
with its settings: a UDP user notices a killed server at once from the "port unreachable" its
host answers, so no shorter silence timeout is needed (a short one, on a busy machine, only
makes resumes that nothing called for).
Every message's text names its sender and its number, ``<sender>:<k>``.

What is counted, over all users (``analyse``, pure, after the run):

* messages missed without a notice: a message that someone received (so the room took it) and
  this user did not, with no ``resumed: false`` between the ones around the gap;
* messages missed with a notice (the gap was announced; allowed by the protocol);
* received twice, and out of order (a sender's messages in another order than it sent them);
* the time from a cut to resumed (``history_end`` of the resume), or from the server being back
  when the user was waiting for it, p50 and p99: backoff included.

The machine's cores are shared by the servers, Redis and the load: the times say what they
manage together. ``--quick`` is a few seconds of everything at a smaller scale, for tests.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tabulate import tabulate

from benchmarks.harness import machine_meta
from benchmarks.servers import ServerProcess, free_port, python_server, start_redis, wait_until
from common.cli.serverargs import raise_open_file_limit
from common.protocol.codec import Bye, Error, Hello, Msg, Say, Welcome
from common.terminal.console import ChatError, Transport, split_address
from common.terminal.render import Line
from common.terminal.resume import MAYBE_MISSING, Retry, Step, Tracker
from tcp.client import TcpTransport
from udp.client import UdpTransport

CLIENTS = 50
RATE = 2.0
CUT_EVERY = 2.0
KILL_EVERY = 30.0
DURATION = 300.0
QUICK = {"clients": 10, "duration": 6.0, "cut_every": 0.5, "kill_every": 3.0}
SETTLE_S = 60.0
"""Longest wait at the end for every user to be back and caught up with the room: longer than a
UDP user's silence timeout (15 s) and the resume after it, so that a user still coming back
when the chat stops is not counted as having missed what it was about to get."""
QUIET_S = 1.0
TRANSPORTS = ("tcp", "udp")
SETUPS = ("single", "redis")

Key = tuple[int, int]
"""A message: its sender's index and its number."""
Event = Key | None
"""What a user saw, in order: a message, or None for a ``resumed: false`` notice."""


@dataclass(frozen=True)
class Resumed:
    """One comeback of one user: when it noticed the loss, when it was back, and how."""

    lost_at: float
    back_at: float
    resumed: bool


class LoadClient:
    """One resume-capable user, in a thread of its own (``chaos-c<index>``).

    It joins, chats through ``say`` (called from the benchmark's chatter thread) and, when its
    connection breaks (``cut`` from the chaos thread, a server killed), comes back as the
    terminal client does. Locking rule: ``_lock`` guards ``_transport`` (None while away) and is
    never held for I/O; ``log`` and ``resumes`` are written by the client's thread only and read
    once it has stopped.
    """

    def __init__(
        self,
        index: int,
        servers: Sequence[str],
        connect: Callable[[str], Transport],
        rng: random.Random,
    ) -> None:
        self.index = index
        self.name = f"c{index}"
        self.connect = connect
        self.retry = Retry(servers, rng.random, time.monotonic)
        self.tracker = Tracker()
        self.log: list[Event] = []
        self.resumes: list[Resumed] = []
        self.refusals = 0
        self._lost_at: float | None = None
        self._lock = threading.Lock()
        self._transport: Transport | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"chaos-{self.name}", daemon=True)

    @property
    def connected(self) -> bool:
        with self._lock:
            return self._transport is not None

    def start(self) -> None:
        self._thread.start()

    def say(self, k: int) -> None:
        """Send message number ``k`` if connected; one that cannot go is simply not sent."""
        with self._lock:
            transport = self._transport
        if transport is not None:
            with contextlib.suppress(OSError):
                transport.send(Say(text=f"{self.index}:{k}"))

    def cut(self) -> bool:
        """Close the connection under the client, without a word; False if it was away."""
        with self._lock:
            transport = self._transport
        if transport is None:
            return False
        transport.close()
        return True

    def stop(self) -> None:
        """Leave with ``bye`` (the server then frees the name at once) and end the thread."""
        self._stop.set()
        with self._lock:
            transport, self._transport = self._transport, None
        if transport is not None:
            with contextlib.suppress(OSError):
                transport.send(Bye())
            transport.close()
        self._thread.join(SETTLE_S)

    def _run(self) -> None:
        first = True
        delay = 0.0
        while not self._stop.wait(delay):
            transport = self._join(first)
            if transport is None:
                delay = self.retry.failed()
                continue
            first = False
            self.retry.back()
            with self._lock:
                self._transport = transport
            while (message := transport.receive()) is not None:
                if not isinstance(message, Line):
                    self._take(self.tracker.on_message(message))
            with self._lock:
                self._transport = None
            transport.close()
            self._lost_at = time.monotonic()
            delay = self.retry.lost()

    def _join(self, first: bool) -> Transport | None:
        """One try at the next server: hello (with the place kept), welcome, the resume's answer."""
        asked = None if first else self.tracker.place.resume()
        try:
            transport = self.connect(self.retry.server)
        except ChatError:
            return None
        try:
            transport.send(Hello(name=self.name, resumable=True, resume=asked))
            welcome = self._welcome(transport)
            if welcome is None:
                transport.close()
                return None
            if first:
                self.tracker.joined(welcome)
            else:
                self._take(self.tracker.rejoined(welcome, asked))
            while self.tracker.answering:
                message = transport.receive()
                if message is None:
                    transport.close()
                    return None
                if not isinstance(message, Line):
                    self._take(self.tracker.on_message(message))
        except OSError:
            transport.close()
            return None
        return transport

    def _welcome(self, transport: Transport) -> Welcome | None:
        while (message := transport.receive()) is not None:
            if isinstance(message, Welcome):
                return message
            if isinstance(message, Error):
                self.refusals += 1
                return None
        return None

    def _take(self, step: Step) -> None:
        """Log what a step shows: messages by sender and number, and the resume's outcome."""
        for shown in step.show:
            if isinstance(shown, Msg) and not shown.history:
                sender, _, k = shown.text.partition(":")
                self.log.append((int(sender), int(k)))
            elif isinstance(shown, Line) and shown.text.startswith("back;"):
                resumed = shown.text != MAYBE_MISSING
                if not resumed:
                    self.log.append(None)
                if self._lost_at is not None:
                    self.resumes.append(Resumed(self._lost_at, time.monotonic(), resumed))
        # The step's history request (after a refused resume) is not sent: those messages
        # are earlier ones, which the counts leave out anyway.


# --------------------------------------------------------------------------
# The counts, from the users' logs alone.


@dataclass(frozen=True)
class Counts:
    messages: int
    deliveries: int
    missed_without_notice: int
    missed_with_notice: int
    received_twice: int
    out_of_order: int


def analyse(logs: Sequence[Sequence[Event]]) -> Counts:
    """Count what each user missed, saw twice or saw out of order.

    The messages the room took are those that anyone received (a ``say`` that went into a
    dead connection never reached the room, and nobody can miss it); every user joined before
    the chat began, so each of them is due to every user. A miss is announced when a
    ``resumed: false`` notice came between the arrivals of the sender's messages around it
    (the one before it and the one after it, or the end of the run). Out of order: a message
    that arrived after a later one of the same sender.
    """
    numbers: dict[int, set[int]] = {}
    for log in logs:
        for event in log:
            if event is not None:
                numbers.setdefault(event[0], set()).add(event[1])
    silent = announced = twice = disorder = deliveries = 0
    for log in logs:
        arrival: dict[Key, int] = {}
        notices: list[int] = []
        latest: dict[int, int] = {}
        for position, event in enumerate(log):
            if event is None:
                notices.append(position)
                continue
            deliveries += 1
            if event in arrival:
                twice += 1
                continue
            arrival[event] = position
            sender, k = event
            if k < latest.get(sender, 0):
                disorder += 1
            latest[sender] = max(k, latest.get(sender, 0))
        for sender, ks in numbers.items():
            got = sorted(k for k in ks if (sender, k) in arrival)
            for k in ks.difference(got):
                i = bisect_left(got, k)
                lo = arrival[(sender, got[i - 1])] if i > 0 else -1
                hi = arrival[(sender, got[i])] if i < len(got) else len(log)
                if bisect_left(notices, max(lo, hi)) > bisect_right(notices, min(lo, hi)):
                    announced += 1
                else:
                    silent += 1
    return Counts(
        messages=sum(len(ks) for ks in numbers.values()),
        deliveries=deliveries,
        missed_without_notice=silent,
        missed_with_notice=announced,
        received_twice=twice,
        out_of_order=disorder,
    )


def resume_times(resumes: Sequence[Resumed], backs: Sequence[float]) -> list[float]:
    """Seconds from a loss, or from the server being back if that came later, to resumed."""
    times = []
    for r in resumes:
        came_back = [b for b in backs if b <= r.back_at]
        times.append(r.back_at - max([r.lost_at, *came_back]))
    return sorted(times)


def percentile(ordered: Sequence[float], fraction: float) -> float:
    if not ordered:
        return math.nan
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


# --------------------------------------------------------------------------
# One scenario: servers, users, chatter, chaos.


@dataclass
class Settings:
    clients: int = CLIENTS
    rate: float = RATE
    duration: float = DURATION
    cut_every: float = CUT_EVERY
    kill_every: float = KILL_EVERY
    seed: int = 1


@dataclass(frozen=True)
class Result:
    transport: str
    setup: str
    clients: int
    rate: float
    duration_s: float
    cuts: int
    kills: int
    resumes: int
    resumes_refused: int
    messages: int
    deliveries: int
    missed_without_notice: int
    missed_with_notice: int
    received_twice: int
    out_of_order: int
    resume_p50_ms: float
    resume_p99_ms: float
    resume_max_ms: float
    refused_hellos: int
    notes: list[str] = field(default_factory=list)


class Room:
    """The scenario's servers (and Redis), each on a fixed port so it can start there again."""

    def __init__(self, transport: str, setup: str, workdir: Path) -> None:
        self.module = f"{transport}.server"
        self.redis: ServerProcess | None = None
        extra: list[str] = ["--history-file", str(workdir / "history.jsonl")]
        count = 1
        if setup == "redis":
            binary = shutil.which("redis-server")
            if binary is None:
                raise SystemExit(
                    "benchmarks.chaos needs redis-server: apt-get install redis-server"
                )
            port = free_port()
            self.redis = start_redis(binary, port)
            extra, count = ["--redis", f"redis://127.0.0.1:{port}/0"], 2
        self.ports = [free_port() for _ in range(count)]
        self.extra = extra
        self.servers = [self._start(port) for port in self.ports]

    def _start(self, port: int) -> ServerProcess:
        argv = python_server(self.module, "--rate-limit", "0", "--quiet", *self.extra, port=port)
        server = ServerProcess(argv)
        try:
            server.wait_ready()
        except RuntimeError:
            server.stop(signal.SIGKILL)
            raise
        return server

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.ports]

    def kill_and_restart(self) -> float:
        """SIGKILL the first server, start it again on its port; when it is back."""
        self.servers[0].stop(signal.SIGKILL)
        self.servers[0] = self._start(self.ports[0])
        return time.monotonic()

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        if self.redis is not None:
            self.redis.stop()


def connector(transport: str) -> Callable[[str], Transport]:
    if transport == "tcp":
        return TcpTransport.connect

    def connect_udp(server: str) -> Transport:
        host, port = split_address(server)
        return UdpTransport.connect(host, port, reliable=True, packets=True)

    return connect_udp


def run_scenario(transport: str, setup: str, settings: Settings) -> Result:
    rng = random.Random(settings.seed)
    with tempfile.TemporaryDirectory(prefix="chaos-") as workdir:
        room = Room(transport, setup, Path(workdir))
        try:
            return chaos(transport, setup, settings, room, rng)
        finally:
            room.stop()


def chaos(transport: str, setup: str, settings: Settings, room: Room, rng: random.Random) -> Result:
    addresses = room.addresses
    clients = [
        LoadClient(
            i,
            addresses[i % len(addresses) :] + addresses[: i % len(addresses)],
            connector(transport),
            random.Random(rng.random()),
        )
        for i in range(settings.clients)
    ]
    for client in clients:
        client.start()
    wait_until(lambda: all(c.connected for c in clients), SETTLE_S)
    stop_chat = threading.Event()
    chatter = threading.Thread(
        target=chat, args=(clients, settings.rate, stop_chat), name="chaos-chatter", daemon=True
    )
    chatter.start()
    cuts, kills, backs = 0, 0, []
    notes: list[str] = []
    start = time.monotonic()
    end = start + settings.duration
    next_cut, next_kill = start + settings.cut_every, start + settings.kill_every
    while (now := time.monotonic()) < end:
        time.sleep(max(0.0, min(next_cut, next_kill, end) - now))
        now = time.monotonic()
        if now >= next_kill and now < end:
            kills += 1
            try:
                backs.append(room.kill_and_restart())
                next_kill += settings.kill_every
            except RuntimeError as exc:  # the server would not start again: say so, go on
                notes.append(f"a killed server did not start again, no more kills: {exc}")
                next_kill = math.inf
        if now >= next_cut and now < end:
            connected = [c for c in clients if c.connected]
            if connected and rng.choice(connected).cut():
                cuts += 1
            next_cut += settings.cut_every
    stop_chat.set()
    chatter.join()
    if not wait_caught_up(clients):
        notes.append(f"not every user was back and caught up within {SETTLE_S:g} s of the end")
    for client in clients:
        client.stop()
    counts = analyse([c.log for c in clients])
    resumes = [r for c in clients for r in c.resumes]
    times = resume_times(resumes, backs)
    return Result(
        transport=transport,
        setup=setup,
        clients=settings.clients,
        rate=settings.rate,
        duration_s=settings.duration,
        cuts=cuts,
        kills=kills,
        resumes=len(resumes),
        resumes_refused=sum(not r.resumed for r in resumes),
        **asdict(counts),
        resume_p50_ms=percentile(times, 0.50) * 1000,
        resume_p99_ms=percentile(times, 0.99) * 1000,
        resume_max_ms=(times[-1] if times else math.nan) * 1000,
        refused_hellos=sum(c.refusals for c in clients),
        notes=notes,
    )


def chat(clients: Sequence[LoadClient], rate: float, stop: threading.Event) -> None:
    """Each user in turn says its next message: ``rate`` per user per second, evenly spread."""
    period = 1.0 / (rate * len(clients))
    numbers = [0] * len(clients)
    due = time.monotonic()
    turn = 0
    while not stop.wait(max(0.0, due - time.monotonic())):
        numbers[turn] += 1
        clients[turn].say(numbers[turn])
        turn = (turn + 1) % len(clients)
        due = max(due + period, time.monotonic() - 1.0)  # behind by more than 1 s: no burst


def caught_up(logs: Sequence[Sequence[Event]]) -> bool:
    """Whether every user has each sender's last message that anyone has, or was told after
    that sender's last message it got that some may be missing (pure).

    Once the chat has stopped, a user that lacks one without a notice since is still on its
    way back or catching up: what it lacks is not missed yet.
    """
    last: dict[int, int] = {}
    for log in logs:
        for event in log:
            if event is not None and event[1] > last.get(event[0], 0):
                last[event[0]] = event[1]
    for log in logs:
        notice = -1
        latest: dict[int, tuple[int, int]] = {}  # sender: (its newest number here, where)
        for position, event in enumerate(log):
            if event is None:
                notice = position
            elif event[1] >= latest.get(event[0], (0, -1))[0]:
                latest[event[0]] = (event[1], position)
        for sender, k in last.items():
            have, where = latest.get(sender, (0, -1))
            if have < k and notice < where:
                return False
    return True


def wait_caught_up(clients: Sequence[LoadClient]) -> bool:
    """Until every user is back and caught up, and nothing more arrived for ``QUIET_S`` (the
    last messages in flight are in); False if that did not come within ``SETTLE_S``."""
    deadline = time.monotonic() + SETTLE_S
    seen = -1
    while time.monotonic() < deadline:
        total = sum(len(c.log) for c in clients)
        settled = total == seen and all(c.connected for c in clients)
        if settled and caught_up([c.log for c in clients]):
            return True
        seen = total
        time.sleep(QUIET_S)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.chaos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=float, help=f"seconds per scenario ({DURATION:g})")
    parser.add_argument("--quick", action="store_true", help="a few seconds, 10 users, more chaos")
    parser.add_argument("--clients", type=int, help=f"users per scenario ({CLIENTS})")
    parser.add_argument("--transport", choices=TRANSPORTS, action="append", help="(default: both)")
    parser.add_argument("--setup", choices=SETUPS, action="append", help="(default: both)")
    parser.add_argument("--seed", type=int, default=1, help="for the cuts and the jitter")
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    args = parser.parse_args(argv)
    raise_open_file_limit()
    settings = Settings(seed=args.seed)
    if args.quick:
        settings = Settings(seed=args.seed, **QUICK)  # type: ignore[arg-type]
    if args.duration is not None:
        settings.duration = args.duration
    if args.clients is not None:
        settings.clients = args.clients
    results = [
        run_scenario(transport, setup, settings)
        for transport in args.transport or TRANSPORTS
        for setup in args.setup or SETUPS
    ]
    rows = [{k: v for k, v in asdict(r).items() if k != "notes"} for r in results]
    print(tabulate(rows, headers="keys", floatfmt=",.0f"))
    for r in results:
        for note in r.notes:
            print(f"{r.transport} {r.setup}: {note}")
    if args.json:
        meta = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **asdict(settings),
            **machine_meta(),
        }
        Path(args.json).write_text(
            json.dumps({"meta": meta, "scenarios": [asdict(r) for r in results]}, indent=2),
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
