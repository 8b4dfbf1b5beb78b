"""The UDP server as a real process, driven by raw datagrams on loopback."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import WAIT, ServerProcess
from udp.sockets import enlarge_buffers

Start = Callable[..., ServerProcess]
QUIET = 0.3
"""How long a peer listens to be sure nothing more comes (a negative check)."""


class UdpPeer:
    """A bare UDP chat peer: adds ``session`` and ``seq`` to what it sends, reads frames."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        enlarge_buffers(self.sock)
        self.sock.bind(("127.0.0.1", 0))
        self.token: str | None = None
        self.seq = 0
        self.received: list[dict[str, Any]] = []

    @property
    def address(self) -> tuple[str, int]:
        addr: tuple[str, int] = self.sock.getsockname()
        return addr

    def send_raw(self, data: bytes) -> None:
        self.sock.sendto(data, self.server)

    def send(self, frame: dict[str, Any], *, envelope: bool = True) -> int:
        """Send ``frame`` with this peer's token and next seq; return the seq used."""
        if envelope:
            self.seq += 1
            frame = {**frame, "session": self.token, "seq": self.seq}
        self.send_raw(json.dumps(frame, ensure_ascii=False).encode())
        return self.seq

    def datagram(self, timeout: float = WAIT) -> bytes | None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            return self.sock.recv(65536)
        except TimeoutError:
            return None

    def recv(self, timeout: float = WAIT) -> dict[str, Any]:
        data = self.datagram(timeout)
        if data is None:
            raise AssertionError("no datagram arrived in time")
        frame: dict[str, Any] = json.loads(data)
        self.received.append(frame)
        return frame

    def expect(self, kind: str, timeout: float = WAIT, **fields: Any) -> dict[str, Any]:
        """Read until a frame of ``kind`` with ``fields`` arrives, skipping others."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.recv(deadline - time.monotonic())
            if frame["type"] == kind and all(frame.get(k) == v for k, v in fields.items()):
                return frame

    def silence(self, timeout: float = QUIET) -> list[bytes]:
        """Every datagram that arrives within ``timeout``."""
        got: list[bytes] = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            data = self.datagram(left)
            if data is not None:
                got.append(data)
        return got

    def hello(self, name: str, **extra: Any) -> dict[str, Any]:
        self.send({"type": "hello", "name": name, **extra}, envelope=False)
        welcome = self.expect("welcome")
        self.token = welcome["session"]
        return welcome

    def ack(self, seq: int) -> None:
        self.send_raw(json.dumps({"type": "ack", "seq": seq, "session": self.token}).encode())

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def peers() -> Iterator[Callable[[ServerProcess], UdpPeer]]:
    opened: list[UdpPeer] = []

    def open_peer(server: ServerProcess) -> UdpPeer:
        peer = UdpPeer(server.address)
        opened.append(peer)
        return peer

    yield open_peer
    for peer in opened:
        peer.close()


Peers = Callable[[ServerProcess], UdpPeer]


@pytest.fixture
def server(start_server: Start) -> ServerProcess:
    return start_server("udp.server", "--rate-limit", "0", "-v")


def stop_and_log(server: ServerProcess) -> str:
    assert server.stop() == 0
    server.wait_for_log("stopped")
    assert "Traceback" not in server.log
    return server.log


# ---- the chat ---------------------------------------------------------------


def test_chat_with_session_tokens_and_seqs(server: ServerProcess, peers: Peers) -> None:
    alice, bob = peers(server), peers(server)
    welcome = alice.hello("Алиса")
    assert welcome["users"] == ["Алиса"] and welcome["count"] == 1 and welcome["seq"] == 1
    assert re.fullmatch(r"[0-9a-f]{32,}", welcome["session"])
    bob.hello("bob")
    assert alice.expect("joined")["name"] == "bob"
    assert bob.token != alice.token

    alice.send({"type": "say", "text": "привет"})
    for peer in (alice, bob):
        msg = peer.expect("msg")
        assert (msg["from"], msg["text"]) == ("Алиса", "привет")
    alice.send({"type": "dm", "to": "BOB", "text": "psst"})
    for peer in (alice, bob):
        assert peer.expect("dm")["to"] == "bob"
    bob.send({"type": "who"})
    users = bob.expect("users")
    assert (users["names"], users["count"]) == (["bob", "Алиса"], 2)
    bob.send({"type": "nick", "name": "robert"})
    assert alice.expect("renamed")["new"] == "robert"
    alice.send({"type": "ping"})
    alice.expect("pong")
    bob.send({"type": "bye"})
    left = alice.expect("left")
    assert (left["name"], left["reason"]) == ("robert", "quit")

    for peer in (alice, bob):
        seqs = [frame["seq"] for frame in peer.received]
        assert seqs == list(range(1, len(seqs) + 1)), "every datagram carries the next seq"
    assert "robert left (quit); from client: 3 received, 0 lost" in stop_and_log(server)


def test_repeated_hello_gets_the_same_welcome(server: ServerProcess, peers: Peers) -> None:
    alice = peers(server)
    alice.send({"type": "hello", "name": "alice"}, envelope=False)
    first = alice.datagram()
    alice.send({"type": "hello", "name": "ALICE"}, envelope=False)
    assert alice.datagram() == first
    alice.send({"type": "hello", "name": "carol"}, envelope=False)
    assert alice.expect("error")["code"] == "already_registered"


def test_refused_hello_may_be_retried(server: ServerProcess, peers: Peers) -> None:
    peers(server).hello("alice")
    bob = peers(server)
    bob.send({"type": "hello", "name": "Alice"}, envelope=False)
    assert bob.expect("error")["code"] == "name_taken"
    bob.send({"type": "hello", "name": "no spaces"}, envelope=False)
    assert bob.expect("error")["code"] == "name_invalid"
    assert bob.hello("bob")["count"] == 2


# ---- tokens -----------------------------------------------------------------


def test_frames_without_the_right_token_are_dropped(server: ServerProcess, peers: Peers) -> None:
    alice, bob, mallory = peers(server), peers(server), peers(server)
    alice.hello("alice")
    bob.hello("bob")
    alice.expect("joined")

    bob.send({"type": "say", "text": "no token"}, envelope=False)
    bob.send_raw(json.dumps({"type": "say", "text": "wrong", "session": "0" * 32}).encode())
    bob.send_raw(json.dumps({"type": "say", "text": "forged", "session": alice.token}).encode())
    mallory.send_raw(json.dumps({"type": "say", "text": "stolen", "session": alice.token}).encode())
    mallory.send_raw(json.dumps({"type": "say", "text": "nobody"}).encode())
    for peer in (alice, bob, mallory):
        assert peer.silence() == [], "a frame without its own token was acted on"

    bob.send({"type": "say", "text": "mine"})
    assert alice.expect("msg")["text"] == "mine"
    log = stop_and_log(server)
    assert re.search(r"dropped: foreign_token 2, no_token 1, stranger 1, wrong_token 1", log)


def test_seqs_from_the_client_are_counted(server: ServerProcess, peers: Peers) -> None:
    alice, bob = peers(server), peers(server)
    alice.hello("alice")
    bob.hello("bob")
    for seq in (1, 2, 4, 4, 3, 7):
        frame = {"type": "say", "text": f"seq {seq}", "session": alice.token, "seq": seq}
        alice.send_raw(json.dumps(frame).encode())
    texts = [bob.expect("msg")["text"] for _ in range(5)]
    assert texts == ["seq 1", "seq 2", "seq 4", "seq 3", "seq 7"], "a repeat is not acted on"
    alice.send({"type": "bye"}, envelope=False)
    log = stop_and_log(server)
    assert "from client: 5 received, 2 lost, 1 repeated, 1 reordered" in log


# ---- keepalive --------------------------------------------------------------


def test_silent_session_times_out(start_server: Start, peers: Peers) -> None:
    server = start_server("udp.server", "--session-timeout", "0.4", "-v")
    alice, bob = peers(server), peers(server)
    alice.hello("alice")
    bob.hello("bob")
    deadline = time.monotonic() + WAIT
    left: dict[str, Any] | None = None
    while left is None and time.monotonic() < deadline:
        alice.send({"type": "ping"})
        for frame in (alice.recv(), *map(json.loads, alice.silence(0.1))):
            if frame["type"] == "left":
                left = frame
    assert left is not None and (left["name"], left["reason"]) == ("bob", "timeout")
    bob.send({"type": "say", "text": "still here?"})
    assert bob.silence() == [], "a timed-out session is unknown: no answer"
    assert "bob left (timeout)" in stop_and_log(server)


def test_refused_address_is_forgotten_after_the_hello_timeout(
    start_server: Start, peers: Peers
) -> None:
    server = start_server(
        "udp.server", "--hello-timeout", "0.3", "--rate-limit", "1", "--burst", "1"
    )
    peers(server).hello("alice")
    bob = peers(server)
    hello = {"type": "hello", "name": "alice"}
    bob.send(hello, envelope=False)
    assert bob.expect("error")["code"] == "name_taken"
    refused = time.monotonic()
    bob.send(hello, envelope=False)
    assert bob.silence(0.1) == [], "past its rate limit a refused address gets no answer"
    while not bob.silence(0.05):
        assert time.monotonic() - refused < 0.9, "still remembered after the hello timeout"
        bob.send(hello, envelope=False)
    assert time.monotonic() - refused > 0.3


# ---- hostile and broken datagrams -------------------------------------------


def test_oversize_and_garbage(server: ServerProcess, peers: Peers) -> None:
    alice, stranger = peers(server), peers(server)
    alice.hello("alice")
    alice.send({"type": "say", "text": "x" * 2000, "pad": "y" * 7000})
    assert alice.expect("error")["code"] == "too_large"
    for garbage in (b"\xff\xfe", b"not json", b"[1, 2]", b"{}", b'{"type": 5}'):
        alice.send_raw(garbage)
        assert alice.expect("error")["code"] == "bad_frame"
    alice.send({"type": "dance"})
    assert alice.expect("error")["code"] == "unknown_type"
    alice.send({"type": "say", "text": "bell \x07"})
    assert alice.expect("error")["code"] == "text_invalid"

    for garbage in (b"x" * 9000, b"\xff", b"{}", b'{"type":"dance"}', b'{"type":"say"}'):
        stranger.send_raw(garbage)
    assert stranger.silence() == []
    alice.send({"type": "say", "text": "still serving"})
    assert alice.expect("msg")["text"] == "still serving"


def test_flood_is_rate_limited_and_others_are_served(start_server: Start, peers: Peers) -> None:
    server = start_server("udp.server", "--rate-limit", "5", "--burst", "5")
    alice, bob = peers(server), peers(server)
    alice.hello("alice")
    bob.hello("bob")
    for _ in range(200):
        alice.send({"type": "ping"})
        alice.send_raw(b"garbage")
    codes = [json.loads(d).get("code") for d in alice.silence()]
    assert codes.count("rate_limited") >= 190, "past the limit, frames with the token are refused"
    assert 1 <= codes.count("bad_frame") <= 10, "garbage gets a few answers, not one each"
    bob.send({"type": "say", "text": "hello?"})
    assert bob.expect("msg")["text"] == "hello?"


def test_server_full(start_server: Start, peers: Peers) -> None:
    server = start_server("udp.server", "--max-users", "1")
    peers(server).hello("alice")
    bob = peers(server)
    bob.send({"type": "hello", "name": "bob"}, envelope=False)
    assert bob.expect("error")["code"] == "server_full"


# ---- amplification ----------------------------------------------------------


def test_no_amplification_to_an_address_without_a_session(
    server: ServerProcess, peers: Peers
) -> None:
    crowd = [peers(server) for _ in range(40)]
    for i, peer in enumerate(crowd):
        peer.hello(f"a_rather_long_name_{i:04d}")
    hello = json.dumps({"type": "hello", "name": "x"}).encode()
    budget = max(3 * len(hello), 256)

    small = peers(server)
    small.send_raw(hello)
    welcome = small.datagram()
    assert welcome is not None and len(welcome) <= budget
    frame = json.loads(welcome)
    assert frame["count"] == 41 and 0 < len(frame["users"]) < 41

    padded = peers(server)
    padded.send({"type": "hello", "name": "y", "pad": " " * 1000}, envelope=False)
    assert len(padded.expect("welcome")["users"]) == 42

    taken = peers(server)
    taken.send_raw(hello)
    error = taken.datagram()
    assert error is not None and len(error) <= budget
    assert json.loads(error)["code"] == "name_taken"

    for data in (b'{"type":"who"}', b'{"type":"ping"}', b"?" * 100):
        taken.send_raw(data)
    assert taken.silence() == []


# ---- reliable mode ----------------------------------------------------------


def test_reliable_session_acks_and_delivers_in_order_once(
    server: ServerProcess, peers: Peers
) -> None:
    alice, bob = peers(server), peers(server)
    welcome = alice.hello("alice", reliable=True)
    alice.ack(welcome["seq"])
    bob.hello("bob")

    def say(seq: int, text: str) -> None:
        alice.send_raw(
            json.dumps({"type": "say", "text": text, "seq": seq, "session": alice.token}).encode()
        )

    say(2, "second")
    assert alice.expect("ack") == {"type": "ack", "seq": 2}
    say(1, "first")
    say(1, "first")
    say(3, "third")
    texts = [bob.expect("msg")["text"] for _ in range(3)]
    assert texts == ["first", "second", "third"]
    assert [f["text"] for f in map(json.loads, bob.silence()) if f["type"] == "msg"] == []


def test_reliable_frames_are_retransmitted_until_acked(server: ServerProcess, peers: Peers) -> None:
    alice = peers(server)
    welcome = alice.hello("alice", reliable=True)
    alice.ack(welcome["seq"])
    alice.send_raw(json.dumps({"type": "ping", "seq": 1, "session": alice.token}).encode())
    assert alice.expect("ack") == {"type": "ack", "seq": 1}
    first = alice.expect("pong")
    again = alice.expect("pong", timeout=1.0)
    assert again["seq"] == first["seq"] == 2
    alice.ack(2)
    assert alice.silence(0.7) == []


# ---- shutdown ---------------------------------------------------------------


def test_shutdown_says_bye_to_every_session(server: ServerProcess, peers: Peers) -> None:
    raw, reliable = peers(server), peers(server)
    raw.hello("raw")
    welcome = reliable.hello("careful", reliable=True)
    reliable.ack(welcome["seq"])
    raw.expect("joined")
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert raw.expect("bye")["reason"] == "shutdown"
    bye = reliable.expect("bye")
    reliable.ack(bye["seq"])
    assert server.proc.wait(WAIT) == 0
    assert time.monotonic() - started < 2.0
    assert "Traceback" not in server.log


def test_shutdown_is_prompt_under_a_flood(server: ServerProcess, peers: Peers) -> None:
    flooder = peers(server)
    flooder.hello("flooder")
    stop = threading.Event()

    def flood() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                flooder.send_raw(b"not json")

    thread = threading.Thread(target=flood, name="test-flood")
    thread.start()
    try:
        flooder.expect("error")
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(WAIT) == 0
        assert time.monotonic() - started < 2.0
    finally:
        stop.set()
        thread.join()
