"""The TCP server under overload: only a client that does not read is dropped.

The writer's own delay never counts against a reader: while the writer is
behind, the server stops reading from talkers (TCP's flow control slows
them), losing nothing. Answers to ``history`` are built as fast as their
connection takes them, and many clients closing at once cost what is really
left to do. The writer is paused by hand where a test needs it behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import tcp.memory
import tcp.writer
from common.protocol.limits import Limits
from tcp.connection import SNDBUF_BYTES, Connection
from tcp.server import BACKLOG_SHARE, ChatServer
from tests.conftest import WAIT, JsonClient, ServerProcess, wait_until

Start = Callable[..., ServerProcess]


class Gate:
    """Holds the writer at the start of its next pass while closed (it wraps ``pending``)."""

    def __init__(self, server: ChatServer, monkeypatch: pytest.MonkeyPatch) -> None:
        self.open = threading.Event()
        self.open.set()
        pending = server.room.pending

        def held() -> list[Connection]:
            self.open.wait()
            return pending()

        monkeypatch.setattr(server.room, "pending", held)


@contextlib.contextmanager
def serving(limits: Limits, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ChatServer, Gate]]:
    """A server in this process (its room and connections in reach), with the writer's gate."""
    server = ChatServer(limits, port=0)
    gate = Gate(server, monkeypatch)
    thread = threading.Thread(target=server.serve_forever, name="test-server")
    thread.start()
    try:
        yield server, gate
    finally:
        gate.open.set()
        server.stop()
        thread.join(3 * WAIT)


class Drain:
    """A client's frames read as they come, by a thread: it always keeps up."""

    def __init__(self, client: JsonClient) -> None:
        self.frames: list[dict[str, object]] = []
        self.ended = threading.Event()
        self._client = client
        self._thread = threading.Thread(target=self._run, name="drain", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with contextlib.suppress(OSError, EOFError, AssertionError):
            while True:
                self.frames.append(self._client.recv(timeout=6 * WAIT))
        self.ended.set()

    def texts(self, sender: str) -> list[object]:
        return [f["text"] for f in list(self.frames) if f["type"] == "msg" and f["from"] == sender]

    def left(self) -> list[object]:
        return [(f["name"], f["reason"]) for f in list(self.frames) if f["type"] == "left"]


def member(server: ChatServer, name: str) -> Connection:
    return next(c for c in server.connections() if c.name == name)


def test_a_reader_that_keeps_up_is_never_dropped_while_the_writer_is_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The writer stops while a talker sends over twice --max-outbox: the talker is held at
    the backlog's bound, then everything reaches the reader, in order."""
    limits = Limits(rate_limit=0, max_outbox=256_000)
    bound = limits.max_outbox // BACKLOG_SHARE
    with serving(limits, monkeypatch) as (server, gate):
        reader = JsonClient(server.address, "reader")
        talker = JsonClient(server.address, "talker")
        echoes = Drain(talker)
        count, pad = 600, "x" * 1000
        gate.open.clear()
        sent = threading.Event()

        def talk() -> None:
            lines = [{"type": "say", "text": f"{n} {pad}"} for n in range(count)]
            for frame in lines:
                talker.send(frame)
            sent.set()

        talking = threading.Thread(target=talk, name="talker")
        talking.start()
        try:
            # held: what the talker sent is in its socket, not in the server's memory
            assert wait_until(lambda: server.room.backlog() > bound)
            time.sleep(0.2)  # whatever the server could still read, it would have by now
            assert server.room.backlog() <= bound + 2 * len(pad)
        finally:
            gate.open.set()
        got: list[str] = []
        while len(got) < count:
            frame = reader.recv()
            assert frame["type"] != "left", frame
            if frame["type"] == "msg":
                got.append(frame["text"])
        assert [int(text.split()[0]) for text in got] == list(range(count))
        talking.join(WAIT)
        assert sent.is_set()
        assert wait_until(lambda: len(echoes.texts("talker")) == count)
        assert echoes.left() == []
        assert sorted(server.room.local_names()) == ["reader", "talker"]


def test_a_client_past_half_its_outbox_is_kept_and_holds_nobody_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client that does not read falls more than half --max-outbox behind (its socket full):
    it stays, and the talkers are not slowed for it (its backlog is its own)."""
    limits = Limits(rate_limit=0, max_outbox=200_000)
    with serving(limits, monkeypatch) as (server, _):
        sleeper = socket.socket()
        sleeper.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sleeper.connect(server.address)
        sleeper.sendall(b'{"type":"hello","name":"sleeper"}\n')
        talker = JsonClient(server.address, "talker")
        assert wait_until(lambda: "sleeper" in server.room.local_names())
        conn = member(server, "sleeper")

        def waiting() -> int:
            return server.room.lag(conn) + len(conn.unsent)

        n, pad = 0, "y" * 1990
        while waiting() < limits.max_outbox * 0.6:  # its kernel buffers fill first
            for _ in range(5):
                talker.send({"type": "say", "text": f"{n} {pad}"})
                n += 1
            talker.expect("msg", text=f"{n - 1} {pad}")
            assert n < 10_000, "the sleeper never fell behind"
        assert waiting() < limits.max_outbox
        assert server.room.backlog() < limits.max_outbox // BACKLOG_SHARE
        for _ in range(3):  # more passes of the writer: still there
            talker.send({"type": "ping"})
            talker.expect("pong")
        assert "sleeper" in server.room.local_names()
        sleeper.close()


def test_history_answers_are_built_as_fast_as_they_are_taken(start_server: Start) -> None:
    """Clients that never read ask for history 50 times each (about 5 MB of answers each, past
    --max-outbox: once their socket refuses bytes they are dropped as too slow): the server's
    memory barely moves (what their sockets do not take is not built), and everyone else is
    answered at once."""
    server = start_server("tcp.server", "--rate-limit", "0", "--history", "100")
    filler = JsonClient(server.address, "filler")
    for n in range(100):
        filler.send({"type": "say", "text": f"{n} {'h' * 1000}"})
    filler.expect("msg", text=f"99 {'h' * 1000}")
    observer = JsonClient(server.address, "observer")
    observer.send({"type": "ping"})
    observer.expect("pong")
    start = rss_kib(server.proc.pid)
    asks = b'{"type":"history","limit":100}\n' * 50
    readers = []
    for n in range(40):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(server.address)
        done = b'{"type":"say","text":"done %d"}\n' % n
        sock.sendall(b'{"type":"hello","name":"nr%d"}\n' % n + asks + done)
        readers.append(sock)
    try:
        finished: set[object] = set()
        while len(finished) < 40:  # every request was handled, or its client dropped
            frame = observer.recv(6 * WAIT)
            if frame["type"] == "msg" and str(frame["text"]).startswith("done "):
                finished.add(f"nr{str(frame['text']).split()[1]}")
            elif frame["type"] == "left":
                assert frame["reason"] == "too_slow", frame
                finished.add(frame["name"])
        for _ in range(3):  # and the writer went over everyone since
            observer.send({"type": "ping"})
            observer.expect("pong")
        peak = peak_rss_kib(server.proc.pid)
        assert peak - start < 50 * 1024, f"grew by {(peak - start) // 1024} MB"
        filler.send({"type": "say", "text": "still here"})
        observer.expect("msg", text="still here")
    finally:
        for sock in readers:
            sock.close()


def test_the_kernel_holds_little_for_a_client_that_does_not_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client that asks for some 2 MB of history and never reads: its socket refuses bytes
    once the connection's fixed send buffer is full (not after megabytes), and the rest waits
    in the server, counted towards its limit: under --max-outbox, it stays."""
    limits = Limits(rate_limit=0, max_outbox=8_000_000)
    with serving(limits, monkeypatch) as (server, _):
        talker = JsonClient(server.address, "talker")
        for n in range(100):
            talker.send({"type": "say", "text": f"{n} {'h' * 1000}"})
        talker.expect("msg", text=f"99 {'h' * 1000}")
        sleeper = socket.socket()
        sleeper.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sleeper.connect(server.address)
        asks = b'{"type":"history","limit":100}\n' * 20
        sleeper.sendall(b'{"type":"hello","name":"sleeper"}\n' + asks)
        assert wait_until(lambda: "sleeper" in server.room.local_names())
        conn = member(server, "sleeper")
        assert wait_until(lambda: len(conn.unsent) > 0)  # its socket refused bytes
        in_kernel = struct.unpack("i", fcntl.ioctl(conn.sock, termios.TIOCOUTQ, b"\0" * 4))[0]
        assert in_kernel <= 2 * SNDBUF_BYTES
        assert server.room.lag(conn) + len(conn.unsent) > 20 * 100_000 - 4 * SNDBUF_BYTES
        talker.send({"type": "ping"})
        talker.expect("pong")
        assert "sleeper" in server.room.local_names()
        sleeper.close()


def test_many_clients_closing_at_once_free_their_sockets_at_once(start_server: Start) -> None:
    """1,000 clients close together: the server closes their sockets within seconds, and a
    newcomer is welcomed meanwhile."""
    server = start_server("tcp.server", "--rate-limit", "0")
    watcher = JsonClient(server.address, "watcher")
    start_fds = open_fds(server.proc.pid)
    clients = []
    for n in range(1000):
        sock = socket.create_connection(server.address, timeout=WAIT)
        sock.sendall(b'{"type":"hello","name":"c%d"}\n' % n)
        clients.append(sock)
    for _ in range(1000):
        watcher.expect("joined", timeout=6 * WAIT)
    for sock in clients:
        sock.close()
    newcomer = JsonClient(server.address, "newcomer")
    newcomer.send({"type": "ping"})
    newcomer.expect("pong")
    assert wait_until(lambda: open_fds(server.proc.pid) <= start_fds + 1, 6 * WAIT)
    lefts = 0
    while lefts < 1000:
        frame = watcher.recv()
        lefts += frame["type"] == "left"
    watcher.send({"type": "who"})
    assert json.dumps(watcher.expect("users")["names"]) == json.dumps(["newcomer", "watcher"])


def test_a_reader_that_ended_waits_its_turn_to_leave_holding_nobody_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reader that ended waits for its turn to leave (``leaving``) without the room's lock:
    a newcomer is welcomed meanwhile, and the writer writes nothing more to the connection,
    whose peer is gone (it would be the others' ``left``, by thousands); then it leaves."""
    with serving(Limits(rate_limit=0), monkeypatch) as (server, _):
        watcher = JsonClient(server.address, "watcher")
        ended = JsonClient(server.address, "ended")
        conn = member(server, "ended")
        with server.leaving:
            ended.sock.shutdown(socket.SHUT_WR)  # its reader sees the end, then waits its turn
            assert wait_until(lambda: conn.gone)
            watcher.send({"type": "say", "text": "hi"})
            watcher.expect("msg", text="hi")  # the writer's pass over "hi" is done
            JsonClient(server.address, "newcomer")  # welcomed while the turn is held
            watcher.expect("joined", name="newcomer")
            assert "ended" in server.room.names()
            assert server.room.lag(conn) > 0  # "hi" was not written to it
        watcher.expect("left", name="ended", reason="disconnected")
        frames = []
        with contextlib.suppress(EOFError, ConnectionResetError):
            while True:
                frames.append(ended.recv())
        assert [frame for frame in frames if frame["type"] == "msg"] == []


def test_the_writer_gives_memory_back_once_many_closes_stopped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After ``GIVE_BACK_AFTER`` closes the writer calls ``malloc_trim`` once, when they have
    stopped, and not again while nothing closes."""
    trims: list[int] = []
    monkeypatch.setattr(tcp.memory, "trim", lambda: trims.append(0))
    monkeypatch.setattr(tcp.writer, "GIVE_BACK_AFTER", 10)
    with serving(Limits(rate_limit=0), monkeypatch) as (server, _):
        watcher = JsonClient(server.address, "watcher")
        clients = [JsonClient(server.address, f"c{n}") for n in range(12)]
        for _ in clients:
            watcher.expect("joined")
        assert trims == []
        for client in clients:
            client.close()
        assert wait_until(lambda: trims == [0])
        assert wait_until(lambda: len(server.connections()) == 1)
        for _ in range(3):
            watcher.send({"type": "ping"})
            watcher.expect("pong")
        time.sleep(2 * tcp.writer.GIVE_BACK_QUIET)  # it would have come by now: it does not
        assert trims == [0]


def test_clients_that_never_read_cost_little_and_give_it_back(start_server: Start) -> None:
    """1,000 clients join and never read while a talker talks: nobody who reads is dropped,
    each costs the server well under 38 KB while it is there (a reader waiting on a quiet
    socket holds a small buffer, not 64 KB), and once they are gone the server is back within
    27 MB of where it started."""
    server = start_server("tcp.server", "--rate-limit", "0")
    pid = server.proc.pid
    observer = JsonClient(server.address, "observer")
    talker = JsonClient(server.address, "talker")
    observer.send({"type": "ping"})
    observer.expect("pong")
    start, start_fds = rss_kib(pid), open_fds(pid)
    silent = []
    for n in range(1000):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(server.address)
        sock.sendall(b'{"type":"hello","name":"nr%d"}\n' % n)
        silent.append(sock)
    try:
        for _ in range(1000):
            observer.expect("joined", timeout=6 * WAIT)
        for n in range(20):
            talker.send({"type": "say", "text": f"{n} {'t' * 500}"})
            observer.expect("msg", text=f"{n} {'t' * 500}")
        while_there = peak_rss_kib(pid) - start
    finally:
        for sock in silent:
            sock.close()
    assert wait_until(lambda: open_fds(pid) <= start_fds, 6 * WAIT)
    lefts = 0
    while lefts < 1000:
        frame = observer.recv(6 * WAIT)
        lefts += frame["type"] == "left"
    observer.send({"type": "who"})
    assert observer.expect("users")["names"] == ["observer", "talker"]
    after = rss_kib(pid) - start
    assert while_there < 38 * 1024, f"{while_there // 1024} MB for 1,000 clients"
    assert after < 27 * 1024, f"{after // 1024} MB not given back"


def rss_kib(pid: int) -> int:
    return _status_kib(pid, "VmRSS")


def peak_rss_kib(pid: int) -> int:
    return _status_kib(pid, "VmHWM")


def _status_kib(pid: int, field: str) -> int:
    match = re.search(rf"{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    assert match is not None
    return int(match.group(1))


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))
