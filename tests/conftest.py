"""Shared fixtures: servers as real processes, and a small JSON-lines client."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.servers import ServerProcess as ServerProcess  # servers run as in the benchmarks
from benchmarks.servers import free_port, python_server, start_redis
from benchmarks.servers import wait_until as wait_until  # the one bounded wait, for the tests

ROOT = Path(__file__).resolve().parent.parent
WAIT = 5.0


@pytest.fixture
def start_server() -> Iterator[Callable[..., ServerProcess]]:
    """Start servers (``start_server("tcp.server", "--burst", "5")``) on a free port of
    127.0.0.1, each once it listens; all stop at the end."""
    started: list[ServerProcess] = []

    def start(module: str, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
        server = ServerProcess(python_server(module, *args), env=env, own_session=False)
        started.append(server)
        server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop(signal.SIGKILL)


@pytest.fixture
def tcp_server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    """A TCP chat server with the rate limit off."""
    return start_server("tcp.server", "--rate-limit", "0")


class JsonClient:
    """A bare-bones JSON-lines client for tests: send dicts, read frames."""

    def __init__(
        self,
        address: tuple[str, int],
        name: str | None = None,
        *,
        source: str = "",
        rcvbuf: int = 0,
    ) -> None:
        """``source``: the address to connect from; ``rcvbuf``: a receive buffer this small,
        set before connecting (so the window it offers is small from the start)."""
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(WAIT)
        self.sock.bind((source, 0))
        self.sock.connect(address)
        self.buffer = b""
        self.name = name
        if name is not None:
            self.send({"type": "hello", "name": name})
            self.expect("welcome")

    def send(self, frame: dict[str, Any]) -> None:
        self.sock.sendall(json.dumps(frame, ensure_ascii=False).encode() + b"\n")

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, timeout: float = WAIT) -> dict[str, Any]:
        """The next frame; AssertionError when none comes in time or the stream ends."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no frame arrived in time")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise AssertionError("no frame arrived in time") from None
            if not chunk:
                raise EOFError("the server closed the connection")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        frame: dict[str, Any] = json.loads(line)
        return frame

    def expect(self, kind: str, timeout: float = WAIT, **fields: Any) -> dict[str, Any]:
        """Read frames until one of ``kind`` with ``fields`` arrives, skipping others."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.recv(max(0.0, deadline - time.monotonic()))
            if frame["type"] == kind and all(frame.get(k) == v for k, v in fields.items()):
                return frame

    def closed(self, timeout: float = WAIT) -> bool:
        """True once the server has closed this connection (frames before it are skipped)."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self.recv(max(0.0, deadline - time.monotonic()))
        except EOFError:
            return True
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def connect() -> Iterator[Callable[..., JsonClient]]:
    """Open JSON clients (``connect(server.address, "alice")``); all close at the end."""
    clients: list[JsonClient] = []

    def open_client(
        address: tuple[str, int], name: str | None = None, *, source: str = ""
    ) -> JsonClient:
        client = JsonClient(address, name, source=source)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        client.close()


class RedisServer:
    """A ``redis-server`` of the test's own; ``persist``: it saves its data on a clean stop."""

    def __init__(self, directory: Path, *, persist: bool = True) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (.ci/install-system-deps installs it)")
        self.binary = binary
        self.directory = directory
        self.save = "3600 1" if persist else ""
        self.port = free_port()
        self.server: ServerProcess | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def proc(self) -> subprocess.Popen[Any] | None:
        return None if self.server is None else self.server.proc

    def start(self) -> None:
        options = ("--dir", str(self.directory), "--save", self.save, "--appendonly", "no")
        self.server = start_redis(self.binary, self.port, options=options)

    def stop(self) -> None:
        """A clean stop: Redis saves its data and exits."""
        assert self.server is not None
        self.server.stop(timeout=WAIT)

    def kill(self) -> None:
        """SIGKILL, if it still runs: nothing is saved."""
        if self.server is not None:
            self.server.stop(signal.SIGKILL)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A ``redis-server`` of the test's own, on a free port, killed at the end."""
    server = RedisServer(tmp_path)
    yield server
    server.kill()
