"""LossyNamespace: a real loopback that drops UDP, measured from inside the namespace."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from netsim.lossy import LAN_MTU, LossyNamespace, lossy_link_unavailable

TIMEOUT = 5.0
DATAGRAMS = 1000

ECHO_ONCE = """
import socket
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 0))
sock.settimeout(5)
print(sock.getsockname()[1], flush=True)
data, source = sock.recvfrom(64)
sock.sendto(data, source)
"""

ASK_ONCE = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(float(sys.argv[2]))
sock.sendto(b"ping", ("127.0.0.1", int(sys.argv[1])))
print(sock.recv(64).decode(), flush=True)
"""

COUNT_UNTIL_END = """
import socket
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
sock.bind(("127.0.0.1", 0))
sock.settimeout(5)
print(sock.getsockname()[1], flush=True)
numbers = set()
while (data := sock.recv(64)) != b"end":
    numbers.add(int(data))
print(len(numbers), flush=True)
"""

SEND_THEN_END = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
target = ("127.0.0.1", int(sys.argv[1]))
for number in range(int(sys.argv[2])):
    sock.sendto(b"%d" % number, target)
print("sent", flush=True)
sys.stdin.readline()
sock.sendto(b"end", target)
"""

TCP_BULK = """
import socket, threading
listener = socket.create_server(("127.0.0.1", 0))
got = []
def serve():
    conn, _ = listener.accept()
    conn.settimeout(30)
    total = 0
    while data := conn.recv(1 << 16):
        total += len(data)
    got.append(total)
reader = threading.Thread(target=serve)
reader.start()
sock = socket.create_connection(listener.getsockname(), timeout=30)
sock.sendall(b"x" * int(__import__("sys").argv[1]))
sock.close()
reader.join(30)
print(got[0], flush=True)
"""

UDP_RECEIVE_ERRORS = """
for line in open("/proc/net/snmp"):
    if line.startswith("Udp: ") and not line[5].isalpha():
        print(line.split()[5])
"""


@pytest.fixture(autouse=True)
def lossy_link_needed() -> None:
    reason = lossy_link_unavailable()
    if reason is not None:
        pytest.skip(reason)


def python(namespace: LossyNamespace, code: str, *args: str) -> subprocess.Popen[str]:
    return namespace.run(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def first_line(process: subprocess.Popen[str]) -> str:
    """Reads the line a helper prints once it is ready; a dead helper fails the test."""
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    assert line, f"helper exited early with {process.wait(TIMEOUT)}"
    return line


def finish(process: subprocess.Popen[str], stdin: str = "") -> str:
    out, _ = process.communicate(stdin, timeout=TIMEOUT)
    assert process.returncode == 0
    return out.strip()


def namespace_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def test_round_trip_without_loss() -> None:
    with LossyNamespace(0) as namespace:
        server = python(namespace, ECHO_ONCE)
        port = first_line(server)
        client = python(namespace, ASK_ONCE, port, str(TIMEOUT))
        assert finish(client) == "ping"
        finish(server)
        assert namespace.counters().dropped == 0
    assert not namespace_exists(namespace.name)


def test_thirty_percent_loss_is_observed_by_the_receiver() -> None:
    with LossyNamespace(30) as namespace:
        receiver = python(namespace, COUNT_UNTIL_END)
        port = first_line(receiver)
        sender = python(namespace, SEND_THEN_END, port, str(DATAGRAMS))
        assert first_line(sender) == "sent"
        namespace.set_loss(0)
        finish(sender, "\n")
        received = int(finish(receiver))
        counters = namespace.counters()
        errors = finish(python(namespace, UDP_RECEIVE_ERRORS))

    lost = DATAGRAMS - received
    spread = 5 * math.sqrt(DATAGRAMS * 0.3 * 0.7)
    assert abs(lost - DATAGRAMS * 0.3) <= spread, f"lost {lost} of {DATAGRAMS}"
    assert errors == "0", "the receiver's socket buffer overflowed"
    assert counters.dropped == lost
    assert counters.udp_packets == DATAGRAMS + 1
    assert not namespace_exists(namespace.name)


def test_tcp_segments_are_lost_too_and_each_is_a_lan_s_size() -> None:
    size = 300_000
    with LossyNamespace(10) as namespace:
        transfer = namespace.run(
            [sys.executable, "-c", TCP_BULK, str(size)], stdout=subprocess.PIPE, text=True
        )
        out, _ = transfer.communicate(timeout=60)
        counters = namespace.counters()
    assert out.strip() == str(size), "TCP did not repair the link's losses"
    # Every segment is at most one LAN frame, so the data alone takes this many segments.
    assert counters.tcp_segments >= size // LAN_MTU
    assert counters.dropped > 0 and counters.udp_packets == 0


def test_set_loss_to_everything_drops_everything() -> None:
    with LossyNamespace(0) as namespace:
        namespace.set_loss(100)
        server = python(namespace, ECHO_ONCE)
        port = first_line(server)
        client = python(namespace, ASK_ONCE, port, "0.3")
        assert client.wait(TIMEOUT) != 0, "a datagram crossed a link that drops all"
        assert namespace.counters().dropped == 1


def test_namespace_and_its_processes_go_away_when_the_body_raises() -> None:
    namespace = LossyNamespace(10)
    with pytest.raises(RuntimeError, match="body failed"), namespace:
        sleeper = namespace.run([sys.executable, "-c", "import signal; signal.pause()"])
        raise RuntimeError("body failed")
    assert sleeper.poll() is not None
    assert not namespace_exists(namespace.name)


def test_rejects_a_loss_outside_0_to_100() -> None:
    with pytest.raises(ValueError):
        LossyNamespace(101)
