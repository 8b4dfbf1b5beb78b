"""The TCP server as a real process, driven over real sockets on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pexpect
import pytest

from common.protocol.limits import Limits
from common.server.core import BUSY, MAX_WAITING
from common.server.core import DEFAULT_MAX_WAITING_PER_ADDRESS as PER_ADDRESS
from tcp.server import ChatServer
from tests.conftest import WAIT, JsonClient, ServerProcess, wait_until

Connect = Callable[..., JsonClient]
Start = Callable[..., ServerProcess]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


# ---- the chat ---------------------------------------------------------------


def test_welcome_msg_dm_who_nick_ping_bye(tcp_server: ServerProcess, connect: Connect) -> None:
    alice = connect(tcp_server.address)
    alice.send({"type": "hello", "name": "Алиса"})
    welcome = alice.recv()
    assert welcome["type"] == "welcome"
    assert (welcome["name"], welcome["users"], welcome["count"]) == ("Алиса", ["Алиса"], 1)
    assert len(welcome["session"]) == 32 and welcome["epoch"] and welcome["last"] is None
    bob = connect(tcp_server.address, "bob")
    assert alice.expect("joined")["name"] == "bob"

    alice.send({"type": "say", "text": "привет"})
    for client in (alice, bob):
        msg = client.expect("msg")
        assert (msg["from"], msg["text"]) == ("Алиса", "привет")
        assert abs(msg["ts"] - time.time() * 1000) < 60_000

    alice.send({"type": "dm", "to": "BOB", "text": "psst"})
    for client in (alice, bob):
        dm = client.expect("dm")
        assert (dm["from"], dm["to"], dm["text"]) == ("Алиса", "bob", "psst")

    bob.send({"type": "who"})
    assert bob.expect("users") == {"type": "users", "names": ["bob", "Алиса"], "count": 2}
    bob.send({"type": "ping"})
    assert bob.expect("pong") == {"type": "pong"}

    bob.send({"type": "nick", "name": "Bobby"})
    for client in (alice, bob):
        assert client.expect("renamed")["new"] == "Bobby"

    bob.send({"type": "bye"})
    assert bob.closed()
    left = alice.expect("left")
    assert (left["name"], left["reason"]) == ("Bobby", "quit")


def test_every_error_code_that_keeps_the_session(start_server: Start, connect: Connect) -> None:
    server = start_server("tcp.server", "--rate-limit", "0")
    c = connect(server.address)
    c.send({"type": "who"})
    assert c.expect("error")["code"] == "not_registered"
    c.send({"type": "hello", "name": "bad name"})
    assert c.expect("error")["code"] == "name_invalid"
    connect(server.address, "taken")
    c.send({"type": "hello", "name": "TAKEN"})
    assert c.expect("error")["code"] == "name_taken"
    c.send({"type": "hello", "name": "carol"})
    c.expect("welcome")
    cases: list[tuple[bytes, str]] = [
        (b"not json\n", "bad_frame"),
        (b'{"type":"say","text":"\xff\xfe"}\n', "bad_frame"),
        (b'{"type":"teleport"}\n', "unknown_type"),
        (b'{"type":"hello","name":"carol2"}\n', "already_registered"),
        (b'{"type":"say","text":"\\u001b[2J"}\n', "text_invalid"),
        (b'{"type":"say","text":""}\n', "text_invalid"),
        (b'{"type":"dm","to":"nobody","text":"hi"}\n', "no_such_user"),
        (b'{"type":"nick","name":"taken"}\n', "name_taken"),
    ]
    for data, code in cases:
        c.send_raw(data)
        error = c.expect("error")
        assert error["code"] == code, data
        assert error["text"]
    c.send({"type": "say", "text": "still here"})
    assert c.expect("msg")["text"] == "still here"


def test_rate_limit_refuses_past_the_burst_and_goes_on(
    start_server: Start, connect: Connect
) -> None:
    server = start_server("tcp.server", "--rate-limit", "5", "--burst", "3")
    c = connect(server.address, "speedy")
    c.send_raw(b'{"type":"ping"}\n' * 4)
    kinds = [c.recv() for _ in range(4)]
    assert [k["type"] for k in kinds] == ["pong", "pong", "error", "error"]
    assert {k["code"] for k in kinds[2:]} == {"rate_limited"}
    time.sleep(0.25)
    c.send({"type": "ping"})
    assert c.recv()["type"] == "pong"


def test_too_large_gets_an_error_then_the_connection_closes(
    tcp_server: ServerProcess, connect: Connect
) -> None:
    c = connect(tcp_server.address, "big")
    other = connect(tcp_server.address, "other")
    c.send_raw(b'{"type":"say","text":"' + b"x" * 9000 + b'"}\n')
    assert c.expect("error")["code"] == "too_large"
    assert c.closed()
    assert other.expect("left", name="big")["reason"] == "disconnected"


def read_to_the_end(sock: socket.socket) -> bytes:
    """All the server sends until it closes; ConnectionResetError if it resets instead."""
    sock.settimeout(WAIT)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_text_line_too_long_is_told_why_then_the_connection_closes_cleanly(
    tcp_server: ServerProcess, connect: Connect
) -> None:
    """Half a megabyte pasted into nc: the user reads why, then the server closes (a FIN, not
    a reset that could destroy the reason before it is read)."""
    other = connect(tcp_server.address, "other")
    with socket.create_connection(tcp_server.address, timeout=WAIT) as nc:
        nc.sendall(b"paster\n")
        assert other.expect("joined")["name"] == "paster"
        nc.sendall(b"x" * 500_000 + b"\n")
        said = read_to_the_end(nc).decode()
    assert said.endswith(
        "! a line is at most 8192 bytes\n* so the server closes this connection\n"
    ), said
    assert other.expect("left", name="paster")["reason"] == "disconnected"


def test_server_full_refuses_and_closes(start_server: Start, connect: Connect) -> None:
    server = start_server("tcp.server", "--max-users", "2")
    connect(server.address, "one")
    connect(server.address, "two")
    third = connect(server.address)
    third.send({"type": "hello", "name": "three"})
    assert third.expect("error")["code"] == "server_full"
    assert third.closed()


def test_hello_timeout_drops_a_silent_connection(start_server: Start, connect: Connect) -> None:
    server = start_server("tcp.server", "--hello-timeout", "0.3")
    silent = connect(server.address)
    assert silent.closed(timeout=WAIT)
    server.wait_for_log("no hello in time")
    late = connect(server.address)
    late.send_raw(b'{"type":"hel')
    assert late.closed(timeout=WAIT)


def test_the_hello_deadline_holds_whatever_arrives(start_server: Start, connect: Connect) -> None:
    """Blank lines, an unfinished line or refused frames every 5 ms buy no time at all."""
    server = start_server("tcp.server", "--hello-timeout", "0.5")
    drips = [b"\n", b"{", b'{"type":"ping"}\n']
    clients = [connect(server.address) for _ in drips]
    stop = threading.Event()

    def drip() -> None:
        with contextlib.suppress(OSError):
            while not stop.wait(0.005):
                for client, data in zip(clients, drips, strict=True):
                    client.send_raw(data)

    dripper = threading.Thread(target=drip)
    dripper.start()
    started = time.monotonic()
    try:
        for client in clients:
            assert client.closed(timeout=4 * 0.5)
        assert time.monotonic() - started < 0.5 + 0.3
    finally:
        stop.set()
        dripper.join()


def test_connections_that_never_say_hello_leave_the_users_places_free(
    start_server: Start, connect: Connect
) -> None:
    """With 10 places, 1 user and 74 connections dripping bytes, a newcomer still joins."""
    server = start_server("tcp.server", "--max-users", "10", "--hello-timeout", "1")
    connect(server.address, "one")
    drippers = [connect(server.address, source=f"127.0.0.{1 + n % 2}") for n in range(74)]
    stop = threading.Event()

    def drip() -> None:
        with contextlib.suppress(OSError):
            while not stop.wait(0.05):
                for client in drippers:
                    client.send_raw(b"\n")

    dripper = threading.Thread(target=drip)
    dripper.start()
    try:
        newcomer = connect(server.address, "newcomer")
        newcomer.send({"type": "who"})
        assert newcomer.expect("users")["names"] == ["newcomer", "one"]
        for client in drippers:
            assert client.closed(timeout=2.0)
    finally:
        stop.set()
        dripper.join()


def test_past_the_bound_on_connections_yet_to_say_hello_a_new_one_is_refused(
    start_server: Start, connect: Connect
) -> None:
    server = start_server("tcp.server")
    user = connect(server.address, "user")
    baseline = server.threads()
    addresses = [f"127.0.0.{n}" for n in range(1, 1 + MAX_WAITING // PER_ADDRESS)]
    waiting = [connect(server.address, source=a) for a in addresses for _ in range(PER_ADDRESS)]
    refused = connect(server.address, source="127.0.0.200")
    assert refused.recv() == {
        "type": "error",
        "code": "server_full",
        "text": "the server is busy, try again later",
    }
    assert refused.closed()
    user.send({"type": "say", "text": "still here"})
    assert user.expect("msg")["text"] == "still here"
    for client in waiting:
        client.close()
    assert wait_until(lambda: server.threads() == baseline)
    connect(server.address, "later")


def test_one_address_holds_a_bounded_share_of_the_connections_yet_to_say_hello(
    start_server: Start, connect: Connect
) -> None:
    """A client opening connections in a loop fills its own share, never the newcomers' places;
    registered users from that address do not count, so a class behind one NAT all joins."""
    server = start_server("tcp.server", "--hello-timeout", "30")
    users = [connect(server.address, f"user{n}") for n in range(PER_ADDRESS + 10)]
    hogs = [connect(server.address) for _ in range(PER_ADDRESS)]
    refused = connect(server.address)
    assert refused.recv() == {
        "type": "error",
        "code": "server_full",
        "text": "too many connections from your address have yet to say hello",
    }
    assert refused.closed()
    newcomer = connect(server.address, "newcomer", source="127.0.0.2")
    newcomer.send({"type": "who"})
    assert len(newcomer.expect("users")["names"]) == PER_ADDRESS + 11
    hogs.pop().close()

    def one_more_joins() -> bool:
        try:
            return connect(server.address, "late").name == "late"
        except (EOFError, OSError):
            return False

    assert wait_until(one_more_joins)
    users[0].send({"type": "say", "text": "still here"})
    assert users[0].expect("msg")["text"] == "still here"


def test_a_hello_past_the_budget_of_joins_is_refused_as_busy_and_closed(
    connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a UDP hello past it is dropped (``Admission.may_join``; a TCP join costs one send).
    The server runs in this process, its budget spent by hand."""
    server = ChatServer(Limits(), port=0)
    serving = threading.Thread(target=server.serve_forever)
    serving.start()
    try:
        first = connect(server.address, "first")
        monkeypatch.setattr(server.admission, "may_join", lambda now, sends: False)
        late = connect(server.address)
        late.send({"type": "hello", "name": "late"})
        assert late.recv() == {"type": "error", "code": "server_full", "text": BUSY}
        assert late.closed()
        first.send({"type": "who"})
        assert first.expect("users")["names"] == ["first"]
        assert wait_until(lambda: len(server.connections()) == 1)
        monkeypatch.undo()
        connect(server.address, "later")
        assert first.expect("joined")["name"] == "later"
    finally:
        server.stop()
        serving.join(WAIT)


def test_blank_lines_count_against_the_rate_limit_and_draw_no_answer(
    start_server: Start, connect: Connect
) -> None:
    server = start_server("tcp.server", "--rate-limit", "0.1", "--burst", "3")
    c = connect(server.address, "blank")
    c.send_raw(b"\n\r\n  \n")
    c.send({"type": "ping"})
    assert c.recv() == {
        "type": "error",
        "code": "rate_limited",
        "text": "slow down: too many frames",
    }


# ---- ordering and slow readers ---------------------------------------------


def test_total_order_with_a_dozen_concurrent_senders(
    tcp_server: ServerProcess, connect: Connect
) -> None:
    senders = [connect(tcp_server.address, f"s{i}") for i in range(12)]
    watchers = [connect(tcp_server.address, f"w{i}") for i in range(3)]
    per_sender = 40
    start = threading.Barrier(len(senders))

    def talk(client: JsonClient) -> None:
        start.wait()
        for n in range(per_sender):
            client.send({"type": "say", "text": f"{client.name}:{n}"})

    threads = [threading.Thread(target=talk, args=(s,)) for s in senders]
    for thread in threads:
        thread.start()
    total = len(senders) * per_sender
    seen: list[list[str]] = []
    for client in senders + watchers:
        texts = [client.expect("msg")["text"] for _ in range(total)]
        seen.append(texts)
    for thread in threads:
        thread.join()
    assert all(texts == seen[0] for texts in seen)
    assert len(set(seen[0])) == total
    for sender in senders:
        mine = [t for t in seen[0] if t.startswith(f"{sender.name}:")]
        assert mine == [f"{sender.name}:{n}" for n in range(per_sender)]


def test_a_client_that_never_reads_is_dropped_and_stalls_nobody(
    start_server: Start, connect: Connect
) -> None:
    server = start_server("tcp.server", "--rate-limit", "0", "--max-outbox", "200000")
    sleeper = socket.socket()
    sleeper.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sleeper.connect(server.address)
    sleeper.sendall(b'{"type":"hello","name":"sleeper"}\n')
    talker = connect(server.address, "talker")
    text = "x" * 1990
    sent = 0
    left = None
    while left is None and sent < 5000:
        for _ in range(25):
            talker.send({"type": "say", "text": f"{sent} {text}"})
            sent += 1
        while left is None:
            frame = talker.recv()
            if frame["type"] == "left":
                left = frame
            elif frame["type"] == "msg" and frame["text"].startswith(f"{sent - 1} "):
                break
    assert left is not None, "the reader that never reads was never dropped"
    assert (left["name"], left["reason"]) == ("sleeper", "too_slow")
    server.wait_for_log("sleeper left \\(too_slow\\)")
    talker.send({"type": "say", "text": "after"})
    assert talker.expect("msg", text="after")["from"] == "talker"
    sleeper.close()


def test_a_client_behind_by_more_than_half_its_outbox_but_less_than_all_is_kept(
    start_server: Start, connect: Connect
) -> None:
    """--max-outbox is the limit, not some fraction of it: a reader about 13 MB behind out of
    16 MB (the kernel's buffers hold a MB or two of it) catches up with everything."""
    outbox = 16 << 20
    server = start_server("tcp.server", "--rate-limit", "0", "--max-outbox", str(outbox))
    talker = connect(server.address, "talker")
    lagger = JsonClient(server.address, rcvbuf=4096)
    lagger.send({"type": "hello", "name": "lagger"})
    assert talker.expect("joined")["name"] == "lagger"
    text = "字" * 1990  # 5,970 bytes
    count = outbox * 85 // 100 // len(text.encode())
    for n in range(count):
        talker.send({"type": "say", "text": f"{n} {text}"})
    assert talker.expect("msg", text=f"{count - 1} {text}")
    talker.send({"type": "ping"})  # a writer's pass or two after the last message
    talker.expect("pong")
    texts: list[str] = []
    while len(texts) < count:
        frame = lagger.recv()
        assert frame["type"] != "left", frame
        if frame["type"] == "msg":
            texts.append(frame["text"])
    assert texts == [f"{n} {text}" for n in range(count)]
    assert "too_slow" not in server.log
    lagger.close()


def test_a_client_dropped_as_too_slow_acts_no_more_with_lines_in_hand(
    start_server: Start, connect: Connect
) -> None:
    """It talks and renames faster than it reads: once it has left, nothing it sent counts.

    Its reader still has hundreds of lines in hand when the writer drops it,
    a ``nick`` among them; then another client takes the name it freed.
    """
    server = start_server("tcp.server", "--rate-limit", "0")
    watcher = connect(server.address, "watcher")
    baseline = server.threads()
    ghost = socket.socket()
    ghost.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ghost.settimeout(WAIT)
    ghost.connect(server.address)
    ghost.sendall(b'{"type":"hello","name":"ghost"}\n')
    big = b'{"type":"say","text":"' + b"B" * 1990 + b'"}\n'
    names = (b"Ghost", b"ghost")
    stop = threading.Event()

    def talk() -> None:
        n = 0
        with contextlib.suppress(OSError):
            while not stop.is_set():
                lines = [big]
                for i in range(n, n + 20):
                    lines.append(b'{"type":"say","text":"%d"}\n' % i)
                    if i % 1000 == 500:
                        lines.append(b'{"type":"nick","name":"%s"}\n' % names[i // 1000 % 2])
                n += 20
                ghost.sendall(b"".join(lines))

    talker = threading.Thread(target=talk)
    talker.start()
    try:
        left = watcher.expect("left", timeout=2 * WAIT)
        assert (left["name"].lower(), left["reason"]) == ("ghost", "too_slow")
        assert wait_until(lambda: server.threads() == baseline)
    finally:
        stop.set()
        talker.join()
        ghost.close()
    heir = connect(server.address, "ghost")
    heir.send({"type": "say", "text": "the real ghost"})
    after: list[dict[str, object]] = []
    while not after or after[-1] != {"type": "msg", "from": "ghost", "text": "the real ghost"}:
        frame = watcher.recv()
        frame.pop("ts", None)
        frame.pop("id", None)
        after.append(frame)
    assert after == [
        {"type": "joined", "name": "ghost"},
        {"type": "msg", "from": "ghost", "text": "the real ghost"},
    ]
    assert "Traceback" not in server.log


# ---- hostile and broken clients --------------------------------------------


def flood_until_dropped(sock: socket.socket, frame: bytes, within: float) -> float | None:
    """Send ``frame`` over and over, never reading; seconds until the server ended the
    connection, or None if it still takes frames after ``within``."""
    chunk = frame * (65536 // len(frame))
    sock.settimeout(0.2)
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < within:
        try:
            sock.send(chunk)
        except TimeoutError:
            continue
        except OSError:
            return elapsed
    return None


@pytest.mark.parametrize("registered", [False, True])
def test_a_flooder_that_never_reads_is_dropped_in_a_few_log_lines(
    start_server: Start, connect: Connect, registered: bool
) -> None:
    """Frames the flood sends are all refused (before hello: say hello first; after it, the
    rate limit). Unregistered, it is dropped at once (within 3 s on any machine); registered,
    once its unread answers pass --max-outbox (seconds: the kernel's buffers take megabytes
    first). The others chat on, and the log says so in a few lines, not one a frame.
    """
    server = start_server("tcp.server")
    watcher = connect(server.address, "watcher")
    flooder = socket.socket()
    flooder.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    flooder.connect(server.address)
    label = f"127.0.0.1:{flooder.getsockname()[1]}"
    if registered:
        flooder.sendall(b'{"type":"hello","name":"flooder"}\n')
        assert watcher.expect("joined")["name"] == "flooder"
    within = 4 * WAIT if registered else 3.0
    try:
        took = flood_until_dropped(flooder, b'{"type":"say","text":"x"}\n', within=within)
    finally:
        flooder.close()
    assert took is not None, f"the flooder was still connected after {within} s"
    server.wait_for_log(f"{label}.* frames refused in all")
    watcher.send({"type": "say", "text": "still here"})
    assert watcher.expect("msg", text="still here")
    assert len([line for line in server.log.splitlines() if label in line]) <= 4, server.log


def test_garbage_vanishing_and_reset_clients_never_hurt_the_others(
    tcp_server: ServerProcess, connect: Connect
) -> None:
    watcher = connect(tcp_server.address, "watcher")
    rng = random.Random(7)
    for _ in range(20):
        junk = connect(tcp_server.address)
        junk.send_raw(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000))))
        junk.close()
    half = connect(tcp_server.address, "half")
    half.send_raw(b'{"type":"say","te')
    reset = connect(tcp_server.address, "reset")
    reset.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    reset.close()
    half.close()
    gone = {watcher.expect("left")["name"] for _ in range(2)}
    assert gone == {"half", "reset"}
    watcher.send({"type": "say", "text": "all fine"})
    assert watcher.expect("msg")["text"] == "all fine"
    assert tcp_server.proc.poll() is None


def test_an_idle_server_with_hostile_leftovers_does_not_spin(
    tcp_server: ServerProcess, connect: Connect
) -> None:
    half = connect(tcp_server.address, "half")
    half.send_raw(b'{"type":"say","te')
    connect(tcp_server.address).send_raw(b"\xff\xfe\x00")
    connect(tcp_server.address, "idle")
    before = cpu_seconds(tcp_server.proc.pid)
    time.sleep(0.5)
    assert cpu_seconds(tcp_server.proc.pid) - before < 0.1


def test_no_thread_is_left_after_clients_leave(tcp_server: ServerProcess, connect: Connect) -> None:
    baseline = tcp_server.threads()
    clients = [connect(tcp_server.address, f"t{i}") for i in range(20)]
    assert tcp_server.threads() >= baseline + 20
    for i, client in enumerate(clients):
        if i % 2:
            client.send({"type": "bye"})
        else:
            client.close()
    assert wait_until(lambda: tcp_server.threads() == baseline), tcp_server.threads()


def test_500_clients_register_and_one_broadcast_reaches_them_all(
    tcp_server: ServerProcess,
) -> None:
    socks = []
    for i in range(500):
        sock = socket.create_connection(tcp_server.address, timeout=WAIT)
        sock.sendall(b'{"type":"hello","name":"c%d"}\n' % i)
        socks.append(sock)
    speaker = JsonClient(tcp_server.address, "speaker")
    speaker.send({"type": "who"})
    assert speaker.expect("users")["count"] == 501
    speaker.send({"type": "say", "text": "to all 500"})
    marker = b'"text":"to all 500"'
    for sock in socks:
        data = b""
        while marker not in data:
            chunk = sock.recv(1 << 20)
            assert chunk, "connection closed before the broadcast arrived"
            data = data[-64:] + chunk
        sock.close()
    speaker.close()


# ---- text mode -----------------------------------------------------------------


def test_text_sessions_and_json_sessions_share_one_room(
    tcp_server: ServerProcess, connect: Connect
) -> None:
    alice = connect(tcp_server.address, "alice")
    nc = socket.create_connection(tcp_server.address, timeout=WAIT)
    lines = nc.makefile("rb")
    nc.sendall(b"bob\n")
    assert b"welcome, bob" in lines.readline()
    assert b"/help" in lines.readline()
    assert lines.readline() == b"* live chat follows\n"
    assert alice.expect("joined")["name"] == "bob"
    nc.sendall("hello from nc ☺\n".encode())
    assert alice.expect("msg") | {"ts": 0, "id": ""} == {
        "type": "msg", "from": "bob", "text": "hello from nc ☺", "ts": 0, "id": ""
    }  # fmt: skip
    assert lines.readline().decode().endswith("<bob (you)> hello from nc ☺\n")
    alice.send({"type": "say", "text": "hi bob"})
    assert lines.readline().decode().endswith("<alice> hi bob\n")
    nc.sendall(b"/msg alice secret\n/who\n/nope\n\xff\n")
    assert alice.expect("dm")["text"] == "secret"
    assert b"[dm to alice] secret" in lines.readline()
    assert b"online (2): alice, bob" in lines.readline()
    assert lines.readline().startswith(b"! unknown command /nope")
    assert lines.readline().startswith(b"! that line is not UTF-8")
    nc.sendall(b"/nick robert\n")
    assert alice.expect("renamed")["new"] == "robert"
    assert lines.readline().endswith(b"* you are now robert\n")
    nc.sendall(b"/help\n")
    assert lines.readline() == b"commands:\n"
    while not lines.readline().startswith(b"anything else is a message"):
        pass
    nc.sendall("выход\n".encode())
    assert alice.expect("left") | {"ts": 0, "id": ""} == {
        "type": "left", "name": "robert", "reason": "quit", "ts": 0, "id": ""
    }  # fmt: skip
    assert lines.readline() == b"* bye\n"
    assert lines.readline() == b""  # and the server closed the connection
    nc.close()


def test_text_mode_shows_the_last_ten_messages_then_says_live_chat_follows(
    tcp_server: ServerProcess, connect: Connect
) -> None:
    alice = connect(tcp_server.address, "alice")
    for i in range(12):
        alice.send({"type": "say", "text": f"m{i}"})
    alice.expect("msg", text="m11")
    nc = socket.create_connection(tcp_server.address, timeout=WAIT)
    lines = nc.makefile("rb")
    nc.sendall(b"bob\n")
    assert b"welcome, bob" in lines.readline()
    assert b"/help" in lines.readline()
    earlier = [lines.readline().decode() for _ in range(10)]
    assert [line.split("earlier <alice> ")[1] for line in earlier] == [
        f"m{i}\n" for i in range(2, 12)
    ]
    assert lines.readline() == b"* 10 earlier messages above\n"
    assert lines.readline() == b"* live chat follows\n"
    nc.sendall(b"/history 2\n")
    assert lines.readline().decode().endswith("earlier <alice> m10\n")
    assert lines.readline().decode().endswith("earlier <alice> m11\n")
    assert lines.readline() == b"* 2 earlier messages above\n"
    nc.close()


SEED_CLIENT = Path("/work/shared/seed/client.py")
"""The assignment's own example client, run from where it is: the client every student has."""
TO_THE_TEST_SERVER = """
import os, socket
_connect = socket.socket.connect
def connect(self, address):
    if address == ("localhost", 8080):
        address = ("127.0.0.1", int(os.environ["CHAT_TEST_PORT"]))
    return _connect(self, address)
socket.socket.connect = connect
"""
"""A sitecustomize for that client: its address, localhost:8080, is fixed in its code; this
sends that one address to the test's server (on a free port) and changes nothing else."""


def test_the_assignment_s_own_client_chats_through_the_server(
    tcp_server: ServerProcess, connect: Connect, tmp_path: Path
) -> None:
    """It sends its user's name and each message with no line end, one send each: a text
    session takes what ends in silence as a whole line."""
    if not SEED_CLIENT.exists():
        pytest.skip(f"{SEED_CLIENT} is not on this machine")
    (tmp_path / "sitecustomize.py").write_text(TO_THE_TEST_SERVER)
    bob = connect(tcp_server.address, "bob")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "CHAT_TEST_PORT": str(tcp_server.port)}
    child = pexpect.spawn(
        sys.executable, [str(SEED_CLIENT)], env=env, encoding="utf-8", timeout=WAIT
    )
    try:
        child.expect("Введите ваше имя: ")
        child.sendline("alice")
        child.expect("welcome, alice")
        assert bob.expect("joined")["name"] == "alice"
        child.sendline("hello from the assignment's client")
        said = bob.expect("msg")
        assert (said["from"], said["text"]) == ("alice", "hello from the assignment's client")
        bob.send({"type": "say", "text": "hi alice"})
        child.expect("<bob> hi alice")
    finally:
        child.close(force=True)  # its "выход" leaves its receiving thread waiting for the server
    assert bob.expect("left")["name"] == "alice"


def test_text_mode_history_with_nothing_before_says_so(tcp_server: ServerProcess) -> None:
    with socket.create_connection(tcp_server.address, timeout=WAIT) as nc:
        lines = nc.makefile("rb")
        nc.sendall(b"first\n")
        assert b"welcome, first" in lines.readline()
        assert b"/help" in lines.readline()
        assert lines.readline() == b"* live chat follows\n"
        nc.sendall(b"/history\n")
        assert lines.readline() == b"* nothing was said before you joined\n"


def test_text_mode_quit_says_bye_then_ends_the_connection_both_ways(
    tcp_server: ServerProcess,
) -> None:
    """nc ends only when its connection is over both ways (a hang-up), not on the server's
    end of the stream alone: it goes on reading the keyboard. The bye is read first."""
    with socket.create_connection(tcp_server.address, timeout=WAIT) as nc:
        nc.sendall(b"leaver\n")
        nc.sendall(b"/quit\n")
        poller = select.poll()
        poller.register(nc, select.POLLIN)
        said = b""
        while not said.endswith(b"* bye\n"):
            assert poller.poll(WAIT * 1000), said
            chunk = nc.recv(65536)
            assert chunk, said
            said += chunk
        deadline = time.monotonic() + WAIT
        while not any(events & select.POLLHUP for _, events in poller.poll(100)):
            assert time.monotonic() < deadline, "the connection was never hung up"
    assert tcp_server.wait_for_log("leaver left \\(quit\\)")


def test_a_clean_bye_is_in_the_log(tcp_server: ServerProcess, connect: Connect) -> None:
    connect(tcp_server.address, "polite").send({"type": "bye"})
    tcp_server.wait_for_log("polite left \\(quit\\)")


def test_text_mode_asks_again_for_a_taken_name(tcp_server: ServerProcess, connect: Connect) -> None:
    connect(tcp_server.address, "alice")
    nc = socket.create_connection(tcp_server.address, timeout=WAIT)
    lines = nc.makefile("rb")
    nc.sendall(b"ALICE\n")
    assert lines.readline().startswith(b"! the name alice is taken")
    nc.sendall(b"alice2\n")
    assert b"welcome, alice2" in lines.readline()
    nc.close()


# ---- shutdown and restart ---------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signals_say_bye_to_everyone_and_exit_cleanly(
    start_server: Start, connect: Connect, sig: int
) -> None:
    server = start_server("tcp.server")
    clients = [connect(server.address, f"u{i}") for i in range(5)]
    unregistered = connect(server.address)
    nc = socket.create_connection(server.address, timeout=WAIT)
    nc.sendall(b"textuser\n")
    nc.makefile("rb").readline()
    started = time.monotonic()
    server.proc.send_signal(sig)
    for client in [*clients, unregistered]:
        assert client.expect("bye") == {"type": "bye", "reason": "shutdown"}
        assert client.closed()
    assert b"shutting down" in nc.makefile("rb").read()
    assert server.proc.wait(timeout=WAIT) == 0
    assert time.monotonic() - started < 2.0
    server.wait_for_log("stopped")


def test_a_client_that_ignores_bye_cannot_hold_up_the_shutdown(start_server: Start) -> None:
    server = start_server("tcp.server")
    stubborn = socket.create_connection(server.address)
    stubborn.sendall(b'{"type":"hello","name":"stubborn"}\n')
    server.wait_for_log("stubborn joined")
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=WAIT) == 0
    assert time.monotonic() - started < 2.0
    stubborn.close()


def test_restart_on_the_same_port_right_away(start_server: Start, connect: Connect) -> None:
    first = start_server("tcp.server")
    client = connect(first.address, "x")
    client.send({"type": "say", "text": "hi"})
    client.expect("msg")
    assert first.stop() == 0
    client.close()
    second = start_server("tcp.server", "--port", str(first.port))
    assert second.port == first.port


def test_help_lists_every_limit_flag() -> None:
    out = subprocess.run(
        ["python3", "-m", "tcp.server", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    ).stdout
    for flag in (
        "--host", "--port", "--hello-timeout", "--rate-limit", "--burst",
        "--max-users", "--max-outbox", "--nagle", "--quiet", "--verbose", "--history",
        "--coalesce-ms", "--max-waiting-per-address", "--max-refused-before-hello",
    ):  # fmt: skip
        assert flag in out


def test_keepalive_is_on_for_every_connection_idle_60_s_then_3_probes_10_s_apart() -> None:
    """Read back from the server's own socket: the values are what frees a vanished peer's name."""
    server = ChatServer(Limits(), port=0)
    serving = threading.Thread(target=server.serve_forever)
    serving.start()
    try:
        with socket.create_connection(server.address, timeout=WAIT):
            assert wait_until(lambda: len(server.connections()) == 1)
            [conn] = server.connections()
            assert conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert [
                conn.sock.getsockopt(socket.IPPROTO_TCP, option)
                for option in (socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT)
            ] == [60, 10, 3]
    finally:
        server.stop()
        serving.join(WAIT)


def test_json_frames_are_compact_utf8_lines(tcp_server: ServerProcess) -> None:
    sock = socket.create_connection(tcp_server.address, timeout=WAIT)
    sock.sendall('{"type":"hello","name":"Zoë"}\r\n'.encode())
    line = sock.makefile("rb").readline()
    assert line.startswith('{"type":"welcome","name":"Zoë","users":["Zoë"],"count":1,'.encode())
    assert line.endswith(b"}\n") and b" " not in line
    assert json.loads(line)["name"] == "Zoë"
    sock.close()


@pytest.mark.parametrize("module", ["tcp.server", "udp.server"])
def test_a_port_in_use_is_one_clear_line_and_exit_code_1(module: str) -> None:
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        port = tcp.getsockname()[1]
        udp.bind(("127.0.0.1", port))
        result = subprocess.run(
            [sys.executable, "-m", module, "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=WAIT,
            cwd=Path(__file__).resolve().parent.parent,
        )
    assert result.returncode == 1
    assert result.stderr.startswith(f"cannot listen on 127.0.0.1:{port}: Address already in use")
    assert "Traceback" not in result.stderr
