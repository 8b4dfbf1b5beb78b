"""The assignment's server and the harness's raw text mode, on real loopback sockets."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from benchmarks.clients import TcpClient, connect_raw_text, markers
from benchmarks.servers import ServerProcess, server_command

WAIT_S = 5.0


@pytest.fixture(params=[False, True], ids=["nagle", "nodelay"])
def address(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    """The server as the assignment has it (Nagle on), and with the ablation's --nodelay."""
    command = server_command("assignment", nodelay=request.param)
    assert ("--nodelay" in command) == request.param
    server = ServerProcess(command)
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def _read_until(client: TcpClient, wanted: int) -> bytes:
    """Read the client's socket (blocking, bounded) until `wanted` markers have come."""
    client.sock.setblocking(True)
    client.sock.settimeout(WAIT_S)
    data = b""
    while data.count(b"#") < wanted:
        chunk = client.sock.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    return data


def test_raw_text_clients_join_and_hear_each_other_but_not_themselves(
    address: tuple[str, int],
) -> None:
    clients = connect_raw_text(3, address)
    try:
        clients[1].send_say(111, 0)
        clients[2].send_say(222, 0)
        for reader in (clients[1], clients[2]):
            reader.sock.setblocking(True)
        heard = _read_until(clients[0], 2)
        assert b"c1: #1:0:111\n" in heard and b"c2: #2:0:222\n" in heard
        assert sorted(markers(heard)) == [111, 222]
        assert markers(_read_until(clients[1], 1)) == [222]
        # Nothing of its own came back to client 2: the only marker it gets is client 1's.
        assert markers(_read_until(clients[2], 1)) == [111]
    finally:
        for client in clients:
            client.close()


def test_a_read_with_several_lines_is_sent_on_with_every_line_named(
    address: tuple[str, int],
) -> None:
    listener, speaker = connect_raw_text(2, address)
    try:
        speaker.sock.setblocking(True)
        speaker.sock.sendall(b"#1:0:5\n#1:1:6\n#1:2:")
        speaker.sock.sendall(b"7\n")
        heard = _read_until(listener, 3)
        assert heard.count(b"c1: #") == 3 and markers(heard) == [5, 6, 7]
    finally:
        listener.close()
        speaker.close()


def test_the_receive_path_keeps_whole_lines_only(address: tuple[str, int]) -> None:
    """A TcpClient stores what one read completed and carries a half line to the next read."""
    listener, speaker = connect_raw_text(2, address)
    buffer = bytearray(1 << 21)
    view = memoryview(buffer)
    try:
        speaker.sock.setblocking(True)
        speaker.sock.sendall(b"#1:0:42\n")
        listener.sock.settimeout(WAIT_S)
        while listener.received < 1:
            assert listener.on_readable(buffer, view)
        assert listener.received == 1
        assert all(chunk.endswith(b"\n") for chunk in listener.chunks)
        assert [m for chunk in listener.chunks for m in markers(chunk)] == [42]
    finally:
        view.release()
        listener.close()
        speaker.close()
