"""History (protocol v1.1) end to end: real servers, real sockets, concurrent senders."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from tests.conftest import JsonClient, ServerProcess
from tests.test_udp_server import Peers, UdpPeer, peers

Start = Callable[..., ServerProcess]
Connect = Callable[..., JsonClient]

__all__ = ["peers"]


def history(client: JsonClient, **request: Any) -> tuple[list[dict[str, Any]], int]:
    """Ask for history; the earlier ``msg`` frames and ``history_end``'s count (live skipped)."""
    client.send({"type": "history", **request})
    found = []
    while (frame := client.recv())["type"] != "history_end":
        if frame["type"] == "msg" and frame.get("history") is True:
            found.append(frame)
    return found, frame["count"]


def test_history_and_live_traffic_neither_overlap_nor_leave_a_gap(
    start_server: Start, connect: Connect
) -> None:
    """Senders keep talking while a newcomer joins: its history ends where its live chat starts.

    The senders never read, so the server lets them fall far behind rather than drop them,
    and it keeps every message, so that what came before the newcomer is still there.
    """
    tcp_server = start_server(
        "tcp.server", "--rate-limit", "0", "--max-outbox", str(64 << 20), "--history", "100000"
    )
    observer = connect(tcp_server.address, "observer")
    senders = [connect(tcp_server.address, f"s{n}") for n in range(6)]
    stop = threading.Event()
    counts = [0] * len(senders)

    def talk(n: int) -> None:
        while not stop.is_set() and counts[n] < 2000:
            senders[n].send({"type": "say", "text": f"{n}:{counts[n]}"})
            counts[n] += 1

    threads = [threading.Thread(target=talk, args=(n,)) for n in range(len(senders))]
    for thread in threads:
        thread.start()
    order: list[str] = []
    while "0:50" not in order:
        if (frame := observer.recv())["type"] == "msg":
            order.append(frame["text"])
    late = connect(tcp_server.address, "late")
    first_live = late.expect("msg")["text"]
    stop.set()
    for thread in threads:
        thread.join()
    earlier, count = history(late, limit=100)
    assert count == len(earlier) == 100
    assert all(set(m) == {"type", "from", "text", "ts", "history", "id"} for m in earlier)
    while len(order) < sum(counts):
        frame = observer.recv()
        if frame["type"] == "msg":
            order.append(frame["text"])
    start = order.index(first_live) - 100
    assert start >= 0
    assert [m["text"] for m in earlier] == order[start : start + 100]


def test_history_limits_and_errors(tcp_server: ServerProcess, connect: Connect) -> None:
    stranger = connect(tcp_server.address)
    stranger.send({"type": "history"})
    assert stranger.expect("error")["code"] == "not_registered"
    alice = connect(tcp_server.address, "alice")
    for i in range(30):
        alice.send({"type": "say", "text": f"m{i}"})
    alice.send({"type": "dm", "to": "alice", "text": "not kept"})
    alice.expect("dm")
    bob = connect(tcp_server.address, "bob")
    earlier, count = history(bob)
    assert count == 20 and [m["text"] for m in earlier] == [f"m{i}" for i in range(10, 30)]
    assert earlier[0]["from"] == "alice"
    for bad in (0, 101, "5", True, 2.5, None):
        bob.send({"type": "history", "limit": bad})
        assert bob.expect("error")["code"] == "bad_frame"
    earlier, count = history(bob, limit=1)
    assert count == 1 and earlier[0]["text"] == "m29"
    earlier, count = history(alice, limit=100)  # alice joined first: nothing before her
    assert (earlier, count) == ([], 0)


def test_history_off(start_server: Start, connect: Connect) -> None:
    server = start_server("tcp.server", "--history", "0")
    alice = connect(server.address, "alice")
    alice.send({"type": "say", "text": "gone"})
    alice.expect("msg")
    assert history(connect(server.address, "bob"), limit=5) == ([], 0)


def test_udp_history_needs_the_token_and_carries_seq(start_server: Start, peers: Peers) -> None:
    server = start_server("udp.server", "--rate-limit", "0")
    alice: UdpPeer = peers(server)
    alice.hello("alice")
    for i in range(3):
        alice.send({"type": "say", "text": f"m{i}"})
        alice.expect("msg", text=f"m{i}")
    bob: UdpPeer = peers(server)
    welcome = bob.hello("bob", reliable=True)
    bob.ack(welcome["seq"])
    bob.send({"type": "history", "limit": 2}, envelope=False)
    bob.send_raw(b'{"type":"history","session":"%s0"}' % bob.token.encode())  # type: ignore[union-attr]
    assert bob.silence() == []
    bob.send({"type": "history", "limit": 2})
    frames = [bob.expect("msg", history=True), bob.expect("msg", history=True)]
    end = bob.expect("history_end")
    assert [f["text"] for f in frames] == ["m1", "m2"] and end["count"] == 2
    seqs = [f["seq"] for f in [*frames, end]]
    assert seqs == list(range(seqs[0], seqs[0] + 3))
    for seq in seqs:
        bob.ack(seq)
