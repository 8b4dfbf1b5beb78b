"""Load clients that speak the real protocol, run in groups by worker threads.

Contract:
    Plan(clients, period_ns, t0_ns, start_ns, end_ns)   the open-loop schedule of all clients
    connect_tcp(index, address, pad=0) -> TcpClient      (blocking until `welcome`)
    connect_raw_text(count, address, pad=0) -> [TcpClient]  (the assignment's raw text lines)
    join_udp(first, count, address, reliable, packets=False) -> [UdpClient]
                                                        (hellos in parallel, resent each 1 s)
    Worker(clients, first_index, plan, stop).start()        one thread, one epoll, one schedule

Every client records what it sent (`sent`: scheduled times, in ns) and what it received
(`chunk_times`: arrival times, `chunks`: the whole lines that arrival completed, as bytes), and
nothing else: while the load runs a TCP arrival costs one `recv_into` a reused buffer, a search
for the last line end, a count of markers and one copy, however many frames it carries; no JSON,
no regular expression, no Python loop per delivery. Each message text is a marker
`#<client>:<round>:<scheduled ns>`; a scheduled time alone identifies a message (the plan keeps
them unique), so the analysis after the run (`markers`) needs only the numbers. All times are
time.monotonic_ns() of this process.

Raw text mode drives the assignment's server, which knows no frames: a client's first line is
its name, every later line a message, and what arrives is text in which the markers are found
wherever they are. That server does not echo a message to its sender.

Why groups: in CPython, hundreds of threads handing the GIL to each other cost more CPU than
the server under test, so a thread per client makes the harness the bottleneck. A worker owns a
contiguous group of clients, their slots of the schedule and one epoll; with as many workers as
clients it is the thread-per-client design, which the harness can run to show that cost.

A worker waits in select() on its epoll descriptor, because select() sleeps to the microsecond
and epoll.poll() only to the millisecond. Sends never block: TCP bytes the socket does not take
wait in that client's own queue (a message counts as sent once its last byte is taken), UDP
datagrams the kernel refuses are counted in `send_errors` and lost, as on a network.

UDP reliable clients keep the protocol's reliable mode with `common.protocol.reliable`: every
frame with a `seq` is acked (twice when it comes again, like `udp.client`) and handed on once and
in order, and each `say` is kept and retransmitted until acked; the worker checks the timers
every 10 ms.

UDP packet clients (`packets=True`, protocol v1.2) leave packing, acks, loss recovery and
congestion control to `common.protocol.packetlink`, as the terminal client and the server do;
a frame's `seq` is read off its end (`"seq":N}`, where the server puts it), not parsed, and only
the server's acks (one per two of this client's packets at most) go through the JSON parser.
Until a packet comes back, the first `ping` (which proves the client's address) is sent again
each second.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import select
import socket
import threading
import time
from array import array
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from common.protocol.packetlink import PacketLink
from common.protocol.packets import BadPacket, parse
from common.protocol.reliable import ReliableReceiver, ReliableSender
from udp.sockets import enlarge_buffers

MARK = b"#"
SCHED_RE = re.compile(rb"#\d+:\d+:(\d+)")
_JOINED_RE = re.compile(rb"c(\d+)\D")
_SEQ_RE = re.compile(rb'"seq":(\d+)\}')
_LINE_SEQ_RE = re.compile(rb'"seq":(\d+)\}$')
_ACK_PREFIX = b'{"type":"ack"'
_PING = b'{"type":"ping","seq":%d}'
_PROOF_INTERVAL_NS = 1_000_000_000
_SESSION_RE = re.compile(rb'"session":"([0-9a-f]+)"')
_RECV_BYTES = 1 << 20
_DATAGRAM_BYTES = 65536
_MAX_FRAME_BYTES = 8192
_CONNECT_TIMEOUT_S = 10.0
_IDLE_WAIT_S = 0.05
_TICK_NS = 10_000_000
_EVENTS_PER_PASS = 8
"""Reads between two looks at the schedule: a pass over every ready socket of a busy room
took milliseconds, and every send due meanwhile left that late. The epoll is level triggered
and hands out its ready sockets in turn, so the rest are read on the next passes."""
_HELLO_INTERVAL_S = 1.0
_HELLO_TRIES = 5
_SETTLE_S = 0.3
_TCP_BYE = b'{"type":"bye"}\n'
_JSON_SAY = b'{"type":"say","text":"#%d:%d:%d%s"}\n'
_RAW_SAY = b"#%d:%d:%d%s\n"


@dataclass(frozen=True)
class Plan:
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


class Client(Protocol):
    """What a worker needs of a client, whatever its transport."""

    index: int
    sock: socket.socket
    sent: list[int]
    chunk_times: list[int]
    chunks: list[bytes]
    received: int

    @property
    def blocked(self) -> bool: ...

    def send_say(self, sched: int, k: int) -> None: ...

    def flush(self) -> None: ...

    def on_readable(self, buffer: bytearray, view: memoryview) -> bool: ...

    def tick(self, now_ns: int) -> None: ...

    def close(self) -> None: ...


class _Recorder:
    """What one client sent and received; shared by both transports."""

    def __init__(self, index: int, sock: socket.socket) -> None:
        self.index = index
        self.sock = sock
        self.sent: list[int] = []
        # Per arrival: its time and its bytes, read for markers only after the run (finding
        # them on the spot cost more per delivery than everything else the harness does).
        self.chunk_times: list[int] = []
        self.chunks: list[bytes] = []
        # Markers seen so far, for the progress line and for knowing when the drain is done.
        self.received = 0

    def _record(self, now: int, data: bytes) -> None:
        if data:
            self.chunk_times.append(now)
            self.chunks.append(data)
            self.received += data.count(MARK)

    def too_slow_ns(self) -> int:
        """When a `left` with reason too_slow first arrived (someone was dropped), 0 if never."""
        arrivals = zip(self.chunk_times, self.chunks, strict=True)
        return next((t for t, data in arrivals if b'"too_slow"' in data), 0)


def markers(data: bytes) -> list[int]:
    """The scheduled times of the markers in one arrival."""
    return [int(sched) for sched in SCHED_RE.findall(data)]


class TcpClient(_Recorder):
    """One connection: its outgoing queue, what was sent, and the chunks it received."""

    def __init__(
        self, index: int, sock: socket.socket, pending: bytes, pad: int = 0, raw: bool = False
    ) -> None:
        super().__init__(index, sock)
        self._padding = b" " + b"x" * pad if pad else b""
        self._say = _RAW_SAY if raw else _JSON_SAY
        self._pending = pending
        self._broken = False
        self._outbox = bytearray()
        self._queued: deque[tuple[int, int]] = deque()
        self._queued_bytes = 0
        self._written_bytes = 0

    @property
    def blocked(self) -> bool:
        return bool(self._outbox) and not self._broken

    def send_say(self, sched: int, k: int) -> None:
        """Send at once if the socket takes it; otherwise queue behind what is waiting."""
        frame = self._say % (self.index, k, sched, self._padding)
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

    def on_readable(self, buffer: bytearray, view: memoryview) -> bool:
        """Read one chunk; the unfinished last line is copied to the front of the shared
        buffer first, so that only whole lines are kept and counted."""
        kept = len(self._pending)
        view[:kept] = self._pending
        try:
            size = self.sock.recv_into(view[kept : kept + _RECV_BYTES])
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not size:
            return False
        now = time.monotonic_ns()
        end = kept + size
        cut = buffer.rfind(b"\n", 0, end) + 1
        self._pending = bytes(buffer[cut:end])
        if cut:
            self._record(now, bytes(view[:cut]))
        return True

    def tick(self, now_ns: int) -> None:
        """TCP retransmits by itself."""

    def close(self) -> None:
        """Say `bye` unless a frame is half written, then shut the connection down."""
        if not self._outbox:
            with contextlib.suppress(OSError):
                self.sock.send(_TCP_BYE)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def connect_tcp(index: int, address: tuple[str, int], pad: int = 0) -> TcpClient:
    """Connect, say `hello` as c<index> and wait for `welcome`; then the socket is non-blocking.

    Each `say` text is the marker, then a space and `pad` x's when pad > 0.
    """
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
    return TcpClient(index, sock, rest, pad)


def connect_raw_text(count: int, address: tuple[str, int], pad: int = 0) -> list[TcpClient]:
    """Connect `count` raw text clients one after another, each giving its name `c<index>`.

    The server says nothing to the one who joins, only `<name> ...` to the others, so a client
    is known to be in the room once it has heard of someone's join or someone has heard of its
    own. Then every socket is non-blocking.
    """
    socks: list[socket.socket] = []
    try:
        for index in range(count):
            sock = socket.create_connection(address, timeout=_CONNECT_TIMEOUT_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(b"c%d\n" % index)
            socks.append(sock)
        _await_joins(socks)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    for sock in socks:
        sock.setblocking(False)
    return [TcpClient(index, sock, b"", pad, raw=True) for index, sock in enumerate(socks)]


def _await_joins(socks: Sequence[socket.socket]) -> None:
    """Read every socket until each client is known to be in the room (see connect_raw_text)."""
    if len(socks) < 2:
        return
    by_fd = {sock.fileno(): sock for sock in socks}
    index_of = {sock: index for index, sock in enumerate(socks)}
    tails = dict.fromkeys(socks, b"")
    known: set[int] = set()
    poller = select.poll()
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + _CONNECT_TIMEOUT_S
    while len(known) < len(socks):
        ready = poller.poll(max(0.0, deadline - time.monotonic()) * 1000)
        if not ready:
            raise TimeoutError(f"{len(socks) - len(known)} raw text clients never joined")
        for fd, _ in ready:
            sock = by_fd[fd]
            data = sock.recv(_RECV_BYTES)
            if not data:
                raise ConnectionError(f"the server closed client {index_of[sock]} as it joined")
            heard = tails[sock] + data
            names = {int(i) for i in _JOINED_RE.findall(heard)} - {index_of[sock]}
            if names:
                known |= names | {index_of[sock]}
            tails[sock] = heard[-16:]


def tcp_slow_reader(index: int, address: tuple[str, int], receive_buffer: int) -> socket.socket:
    """A client that joins and then never reads: a small receive buffer fills at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(_CONNECT_TIMEOUT_S)
    sock.connect(address)
    sock.sendall(b'{"type":"hello","name":"slow%d"}\n' % index)
    return sock


def was_dropped(sock: socket.socket) -> bool:
    """Read what waits for a slow reader: True if the stream ends (the server closed it)
    before nothing more came for a moment."""
    sock.settimeout(_SETTLE_S)
    try:
        while sock.recv(_RECV_BYTES):
            pass
    except TimeoutError:
        return False
    except OSError:
        return True
    return True


class UdpClient(_Recorder):
    """One UDP session: a connected socket, its token, and the reliable state in that mode.

    A packet session (``packets``) has a ``link`` from its welcome on; a 1.0 one has none.
    """

    def __init__(
        self, index: int, sock: socket.socket, reliable: bool, packets: bool = False
    ) -> None:
        super().__init__(index, sock)
        self.reliable = reliable
        self.packets = packets
        self.token: bytes | None = None
        self.send_errors = 0
        self.sender = ReliableSender() if reliable and not packets else None
        self.receiver = ReliableReceiver() if reliable and not packets else None
        self.link: PacketLink | None = None
        # When the link next has work (s; inf: only when something arrives or is queued),
        # so that a tick costs a comparison for a client with nothing due.
        self._link_due = math.inf
        self._next_proof_ns = 0
        self._next_seq = 1
        flag = b',"reliable":true' if reliable else b""
        flag += b',"packets":true' if packets else b""
        self._hello = b'{"type":"hello","name":"c%d"%s}' % (index, flag)

    @property
    def blocked(self) -> bool:
        return False

    @property
    def timed(self) -> bool:
        """Whether the worker must call `tick`: something here runs on timers."""
        return self.reliable or self.packets

    @property
    def acks(self) -> tuple[int, int]:
        """A packet session's acks sent, and the packets received that they answer."""
        if self.link is None:
            return 0, 0
        return self.link.acks_sent, self.link.packets_received

    @property
    def retransmitted(self) -> int:
        if self.link is not None:
            return self.link.retransmissions
        return self.sender.retransmissions if self.sender is not None else 0

    @property
    def failed(self) -> bool:
        """The server stopped acknowledging: a frame went unacked MAX_TRIES times (1.0), or
        six probe timeouts in a row (packets)."""
        if self.link is not None:
            return self.link.failed
        return self.sender is not None and self.sender.failed

    def hello(self) -> None:
        self._write(self._hello)

    def _write(self, data: bytes) -> None:
        try:
            self.sock.send(data)
        except OSError:
            self.send_errors += 1

    def _frame(self, body: bytes) -> bytes:
        """A client frame with this session's token and the next seq."""
        assert self.token is not None
        if self.sender is None:
            seq = self._next_seq
            self._next_seq += 1
        else:
            seq = self.sender.next_seq
        return b'%s,"session":"%s","seq":%d}' % (body, self.token, seq)

    def _submit(self, frame: bytes) -> None:
        if self.sender is None:
            self._write(frame)
            return
        self.sender.queue(self.sender.next_seq, frame)
        for due in self.sender.due(time.monotonic_ns() / 1e9):
            self._write(due)

    def send_say(self, sched: int, k: int) -> None:
        self.sent.append(sched)
        if self.link is not None:
            seq = self.link.next_seq
            self.link.queue(seq, b'{"type":"say","text":"#%d:%d:%d","seq":%d}' % (
                self.index, k, sched, seq
            ))  # fmt: skip
            self._write_link(time.monotonic_ns())
            return
        self._submit(self._frame(b'{"type":"say","text":"#%d:%d:%d"' % (self.index, k, sched)))

    def _write_link(self, now_ns: int) -> None:
        assert self.link is not None
        for datagram in self.link.datagrams(now_ns / 1e9):
            self._write(datagram)
        due = self.link.next_deadline()
        self._link_due = math.inf if due is None else due

    def flush(self) -> None:
        """Datagrams are written whole or not at all."""

    def on_readable(self, buffer: bytearray, view: memoryview) -> bool:
        """Take one datagram. Not a loop until the socket is empty: the epoll is level
        triggered, so it reports the socket again while more wait, and reading until
        `BlockingIOError` would cost an exception for every arrival at this load."""
        try:
            data = self.sock.recv(_DATAGRAM_BYTES)
        except (BlockingIOError, ConnectionRefusedError):
            # Refused: an ICMP error from an earlier send; the next datagram may be fine.
            return True
        except OSError:
            return False
        now = time.monotonic_ns()
        if self.link is not None:
            self._record(now, self._packet(data, now))
            return True
        if self.token is None:
            self._find_welcome([data])
            if self.token is not None and self.packets and b'"packets":true' in data:
                self._start_packets(data, now)
                self._record(now, data)
                return True
        if self.receiver is not None:
            data = b"\n".join(self._reliable([data], now / 1e9))
        self._record(now, data)
        return True

    def _start_packets(self, welcome: bytes, now_ns: int) -> None:
        """The welcome (seq 1) of a packet session: the link starts and a ping proves us."""
        assert self.token is not None
        self.link = PacketLink(reliable=self.reliable, session=self.token.decode("ascii"))
        if self.reliable:
            self.link.on_frame(1, welcome)
        self._prove(now_ns)

    def _prove(self, now_ns: int) -> None:
        assert self.link is not None
        self.link.queue(self.link.next_seq, _PING % self.link.next_seq)
        self._write_link(now_ns)
        self._next_proof_ns = now_ns + _PROOF_INTERVAL_NS

    def _packet(self, data: bytes, now_ns: int) -> bytes:
        """Take one packet; return its frames that are now delivered, in order, as lines."""
        link = self.link
        assert link is not None
        try:
            packet = parse(data)
        except BadPacket:
            return b""  # the welcome again
        now_s = now_ns / 1e9
        acks = [line for line in packet.frames if line.startswith(_ACK_PREFIX)]
        if not link.on_packet(packet.pn, len(acks) < len(packet.frames), now_s):
            return b""
        self._next_proof_ns = 0
        for line in acks:
            ack = json.loads(line)
            link.on_ack([(hi, lo) for hi, lo in ack["ranges"]], ack["delay"], now_s)
        lines = [line for line in packet.frames if not line.startswith(_ACK_PREFIX)]
        if link.reliable:
            deliverable: list[bytes] = []
            for line in lines:
                match = _LINE_SEQ_RE.search(line)
                if match is not None:
                    deliverable += link.on_frame(int(match.group(1)), line) or ()
            lines = deliverable
        self._write_link(now_ns)
        return b"\n".join(lines)

    def _find_welcome(self, datagrams: list[bytes]) -> None:
        for data in datagrams:
            if data.startswith(b'{"type":"welcome"'):
                match = _SESSION_RE.search(data)
                if match:
                    self.token = match.group(1)
                    return

    def _reliable(self, datagrams: list[bytes], now_s: float) -> list[bytes]:
        """Ack every frame with a seq, take acks, and return what is now deliverable in order."""
        assert self.sender is not None and self.receiver is not None
        deliverable: list[bytes] = []
        for data in datagrams:
            match = _SEQ_RE.search(data)
            if match is None or self.token is None:
                continue
            seq = int(match.group(1))
            if data.startswith(b'{"type":"ack"'):
                for due in self.sender.on_ack(seq, now_s):
                    self._write(due)
                continue
            acks = self.receiver.acks_for(seq)
            frames = self.receiver.on_frame(seq, data)
            if frames is None:
                continue
            ack = b'{"type":"ack","seq":%d,"session":"%s"}' % (seq, self.token)
            for _ in range(acks):
                self._write(ack)
            deliverable += frames
        return deliverable

    def tick(self, now_ns: int) -> None:
        """Retransmit what timed out; a packet session sends its acks and probes when due."""
        if self.link is not None:
            if self._next_proof_ns and now_ns >= self._next_proof_ns:
                self._prove(now_ns)
            elif now_ns / 1e9 >= self._link_due:
                self._write_link(now_ns)
            return
        if self.sender is not None and self.sender.pending:
            for due in self.sender.due(now_ns / 1e9):
                self._write(due)

    def close(self) -> None:
        """Say `bye` (not waiting for its ack), then close the socket."""
        if self.link is not None:
            self.link.queue(self.link.next_seq, b'{"type":"bye","seq":%d}' % self.link.next_seq)
            self._write_link(time.monotonic_ns())
        elif self.token is not None:
            self._submit(self._frame(b'{"type":"bye"'))
        self.sock.close()


def join_udp(
    first_index: int, count: int, address: tuple[str, int], reliable: bool, packets: bool = False
) -> list[UdpClient]:
    """Open `count` sessions at once: every hello goes out, then again each second to those
    still without a welcome, five times at most, as the protocol asks of a client."""
    clients: list[UdpClient] = []
    poller = select.epoll()
    try:
        for offset in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            enlarge_buffers(sock)
            sock.connect(address)
            sock.setblocking(False)
            clients.append(UdpClient(first_index + offset, sock, reliable, packets))
            poller.register(sock, select.EPOLLIN)
        by_fd = {client.sock.fileno(): client for client in clients}
        buffer = bytearray()
        view = memoryview(buffer)
        for _ in range(_HELLO_TRIES):
            waiting = [client for client in clients if client.token is None]
            if not waiting:
                return clients
            for client in waiting:
                client.hello()
            deadline = time.monotonic() + _HELLO_INTERVAL_S
            while any(c.token is None for c in waiting) and time.monotonic() < deadline:
                for fd, _ in poller.poll(max(0.0, deadline - time.monotonic())):
                    by_fd[fd].on_readable(buffer, view)
        missing = sum(1 for client in clients if client.token is None)
        if missing:
            raise RuntimeError(f"{missing} of {count} UDP clients got no welcome")
        return clients
    except BaseException:
        for client in clients:
            client.sock.close()
        raise
    finally:
        poller.close()


class Worker:
    """One thread driving a contiguous group of clients: their slots, their sockets, one epoll.

    `lags` gets how late each measured send left against its schedule, in ns.
    """

    def __init__(
        self, clients: Sequence[Client], plan: Plan, stop: threading.Event, name: str
    ) -> None:
        self.clients = list(clients)
        self.plan = plan
        self.lags: array[int] = array("q")
        self.scheduled = threading.Event()
        self.error: BaseException | None = None
        self._stop = stop
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as error:
            # The main thread raises it once the run is over.
            self.error = error
            self.scheduled.set()

    def _loop(self) -> None:
        plan, clients = self.plan, self.clients
        first, last = clients[0].index, clients[-1].index + 1
        poller = select.epoll()
        by_fd = {client.sock.fileno(): client for client in clients}
        for fd in by_fd:
            poller.register(fd, select.EPOLLIN)
        buffer = bytearray(_RECV_BYTES + _MAX_FRAME_BYTES)
        view = memoryview(buffer)
        clock = time.monotonic_ns
        timed = any(isinstance(c, UdpClient) and c.timed for c in clients)
        next_tick = clock() + _TICK_NS
        rounds, index = 0, first
        sched = plan.due(index)
        if sched >= plan.end_ns:
            self.scheduled.set()
        try:
            while by_fd and not self._stop.is_set():
                now = clock()
                while sched < plan.end_ns and sched <= now:
                    client = clients[index - first]
                    was_blocked = client.blocked
                    client.send_say(sched, rounds)
                    if sched >= plan.start_ns:
                        self.lags.append(clock() - sched)
                    if client.blocked and not was_blocked:
                        poller.modify(client.sock.fileno(), select.EPOLLIN | select.EPOLLOUT)
                    index += 1
                    if index == last:
                        index, rounds = first, rounds + 1
                    sched = plan.due(rounds * plan.clients + index)
                    if sched >= plan.end_ns:
                        self.scheduled.set()
                if timed and now >= next_tick:
                    for client in clients:
                        client.tick(now)
                    next_tick = now + _TICK_NS
                wake = min(sched, next_tick) if timed else sched
                if sched >= plan.end_ns and not timed:
                    wait_s = _IDLE_WAIT_S
                else:
                    wait_s = min(max((wake - clock()) / 1e9, 0.0), _IDLE_WAIT_S)
                ready, _, _ = select.select([poller], [], [], wait_s)
                if not ready:
                    continue
                for fd, events in poller.poll(0, _EVENTS_PER_PASS):
                    client = by_fd[fd]
                    if events & select.EPOLLOUT:
                        client.flush()
                        if not client.blocked:
                            poller.modify(fd, select.EPOLLIN)
                    if not events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                        continue
                    if not client.on_readable(buffer, view):
                        poller.unregister(fd)
                        del by_fd[fd]
        finally:
            view.release()
            poller.close()
