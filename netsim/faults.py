"""An in-process UDP relay that loses, repeats and reorders datagrams on purpose.

Loopback delivers every datagram once and in order, so the UDP chat's loss
handling would never be exercised by tests on 127.0.0.1 alone. Clients send to
``FaultyRelay.address`` instead of the server; the relay forwards to ``target``.

Contract:

- For every client address the relay keeps its own upstream socket to
  ``target``, so the server sees one distinct source address per client (UDP
  sessions are keyed by source address) and each reply goes back to the client
  it belongs to. At most ``max_clients`` mappings are kept; the least recently
  active one is forgotten first (its next datagram gets a new upstream socket).
- Faults apply in both directions, independently, from one ``random.Random``
  per direction seeded from ``seed``; three draws per datagram, so the same
  seed and the same traffic give the same faults. A datagram is dropped with
  probability ``drop``; a kept one is sent twice with probability
  ``duplicate`` and held back with probability ``reorder``. A held datagram
  goes out right after the next datagram of the same client and direction, or
  after ``max_hold`` seconds if none comes, so reordering alone loses nothing.
  One datagram per client and direction is held at a time.
- ``stats()`` gives per-direction counters: received, passed (not dropped),
  dropped, duplicated, reordered (held back). A send the kernel refuses, for
  example to a server that is gone, counts as passed and is lost like on a
  real network.
- One named thread, started by ``start()`` (or ``with``), serves all sockets
  with ``select.poll`` and checks its stop flag at least every 20 ms;
  ``close()`` stops and joins it and closes every socket.
"""

from __future__ import annotations

import math
import random
import select
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

Address = tuple[str, int]

_MAX_DATAGRAM = 65535
_POLL_SECONDS = 0.02


@dataclass(frozen=True)
class LinkStats:
    """Counters of one direction; ``passed`` counts datagrams, not copies sent."""

    received: int = 0
    passed: int = 0
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0


@dataclass(frozen=True)
class RelayStats:
    to_server: LinkStats
    to_client: LinkStats


@dataclass(frozen=True)
class _Faults:
    drop: float
    duplicate: float
    reorder: float
    max_hold: float


@dataclass
class _Held:
    copies: list[bytes]
    deadline: float


class _Direction:
    """The fault decisions and counters of one direction; only the relay thread calls forward."""

    def __init__(
        self,
        name: str,
        send: Callable[[Address, bytes], None],
        seed: int,
        faults: _Faults,
    ) -> None:
        self._send = send
        self._rng = random.Random(f"{seed}:{name}")
        self._faults = faults
        self._held: dict[Address, _Held] = {}
        self._lock = threading.Lock()
        self._stats = LinkStats()

    def forward(self, client: Address, data: bytes, now: float) -> None:
        drop_roll, duplicate_roll, reorder_roll = (self._rng.random() for _ in range(3))
        dropped = drop_roll < self._faults.drop
        duplicated = not dropped and duplicate_roll < self._faults.duplicate
        held = not dropped and reorder_roll < self._faults.reorder and client not in self._held
        self._count(dropped, duplicated, held)
        if dropped:
            return
        copies = [data, data] if duplicated else [data]
        if held:
            self._held[client] = _Held(copies, now + self._faults.max_hold)
            return
        for copy in copies:
            self._send(client, copy)
        self.release(client)

    def release(self, client: Address) -> None:
        held = self._held.pop(client, None)
        if held is not None:
            for copy in held.copies:
                self._send(client, copy)

    def forget(self, client: Address) -> None:
        self._held.pop(client, None)

    def release_expired(self, now: float) -> None:
        for client in [c for c, held in self._held.items() if held.deadline <= now]:
            self.release(client)

    def next_deadline(self) -> float | None:
        return min((held.deadline for held in self._held.values()), default=None)

    def stats(self) -> LinkStats:
        with self._lock:
            return self._stats

    def _count(self, dropped: bool, duplicated: bool, held: bool) -> None:
        with self._lock:
            old = self._stats
            self._stats = LinkStats(
                received=old.received + 1,
                passed=old.passed + (not dropped),
                dropped=old.dropped + dropped,
                duplicated=old.duplicated + duplicated,
                reordered=old.reordered + held,
            )


@dataclass
class _Client:
    address: Address
    upstream: socket.socket


def _check_probability(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, got {value}")
    return value


class FaultyRelay:
    """Relays UDP between clients and ``target`` through a deliberately bad network."""

    def __init__(
        self,
        target: Address,
        *,
        drop: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        seed: int = 0,
        max_hold: float = 0.2,
        max_clients: int = 4096,
    ) -> None:
        if max_clients < 1:
            raise ValueError("max_clients must be at least 1")
        if max_hold < 0:
            raise ValueError("max_hold must not be negative")
        faults = _Faults(
            drop=_check_probability("drop", drop),
            duplicate=_check_probability("duplicate", duplicate),
            reorder=_check_probability("reorder", reorder),
            max_hold=max_hold,
        )
        self.target = target
        self._max_clients = max_clients
        self._to_server = _Direction("to_server", self._send_to_server, seed, faults)
        self._to_client = _Direction("to_client", self._send_to_client, seed, faults)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.address: Address = self._listener.getsockname()
        self._clients: OrderedDict[Address, _Client] = OrderedDict()
        self._by_fd: dict[int, _Client] = {}
        self._poller = select.poll()
        self._poller.register(self._listener, select.POLLIN)
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, name=f"faulty-relay-{self.address[1]}", daemon=True
        )
        self._closed = False

    def __enter__(self) -> FaultyRelay:
        if not self._thread.is_alive():
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def thread_name(self) -> str:
        return self._thread.name

    def start(self) -> None:
        if self._closed:
            raise RuntimeError("the relay is closed")
        self._thread.start()

    def close(self) -> None:
        """Stops and joins the thread before closing the sockets it uses."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()
        for client in self._clients.values():
            client.upstream.close()
        self._clients.clear()
        self._by_fd.clear()
        self._listener.close()

    def stats(self) -> RelayStats:
        return RelayStats(to_server=self._to_server.stats(), to_client=self._to_client.stats())

    def client_count(self) -> int:
        return len(self._clients)

    def _serve(self) -> None:
        listener_fd = self._listener.fileno()
        while not self._stopping.is_set():
            for fd, _events in self._poller.poll(self._poll_timeout_ms()):
                if fd == listener_fd:
                    self._from_client()
                elif fd in self._by_fd:
                    self._from_server(self._by_fd[fd])
            now = time.monotonic()
            self._to_server.release_expired(now)
            self._to_client.release_expired(now)

    def _poll_timeout_ms(self) -> int:
        """Wakes up for the stop flag, or earlier when a held datagram is due."""
        timeout = _POLL_SECONDS
        for deadline in (self._to_server.next_deadline(), self._to_client.next_deadline()):
            if deadline is not None:
                timeout = min(timeout, max(0.0, deadline - time.monotonic()))
        return math.ceil(timeout * 1000)

    def _from_client(self) -> None:
        try:
            data, address = self._listener.recvfrom(_MAX_DATAGRAM)
        except OSError:
            return
        client = self._client_for(address)
        if client is not None:
            self._to_server.forward(client.address, data, time.monotonic())

    def _from_server(self, client: _Client) -> None:
        try:
            data = client.upstream.recv(_MAX_DATAGRAM)
        except OSError:
            return
        self._clients.move_to_end(client.address)
        self._to_client.forward(client.address, data, time.monotonic())

    def _client_for(self, address: Address) -> _Client | None:
        client = self._clients.get(address)
        if client is not None:
            self._clients.move_to_end(address)
            return client
        if len(self._clients) >= self._max_clients:
            self._forget(next(iter(self._clients.values())))
        upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            upstream.connect(self.target)
        except OSError:
            upstream.close()
            return None
        upstream.setblocking(False)
        client = _Client(address, upstream)
        self._clients[address] = client
        self._by_fd[upstream.fileno()] = client
        self._poller.register(upstream, select.POLLIN)
        return client

    def _forget(self, client: _Client) -> None:
        self._poller.unregister(client.upstream)
        del self._by_fd[client.upstream.fileno()]
        del self._clients[client.address]
        self._to_server.forget(client.address)
        self._to_client.forget(client.address)
        client.upstream.close()

    def _send_to_server(self, client: Address, data: bytes) -> None:
        mapping = self._clients.get(client)
        if mapping is None:
            return
        try:
            mapping.upstream.send(data)
        except OSError:
            return

    def _send_to_client(self, client: Address, data: bytes) -> None:
        try:
            self._listener.sendto(data, client)
        except OSError:
            return
