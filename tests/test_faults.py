"""FaultyRelay: fault rates, determinism, per-client upstream sockets, clean shutdown."""

from __future__ import annotations

import math
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from netsim.faults import Address, FaultyRelay, LinkStats, RelayStats

COUNT = 2000
WINDOW = 32
DEADLINE = 10.0


class EchoServer:
    """Sends every datagram back to its source and remembers the sources it saw."""

    def __init__(self) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.settimeout(0.02)
        self.address: Address = self.socket.getsockname()
        self.sources: list[Address] = []
        self.echoed = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-echo-server")
        self._thread.start()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                data, source = self.socket.recvfrom(65535)
            except TimeoutError:
                continue
            self.sources.append(source)
            self.socket.sendto(data, source)
            self.echoed += 1

    def close(self) -> None:
        self._stopping.set()
        self._thread.join()
        self.socket.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@dataclass
class Run:
    stats: RelayStats
    received: list[int]


def pump(client: socket.socket, into: list[int]) -> None:
    """Waits briefly for echoes, then reads every echo that is queued."""
    select.select([client], [], [], 0.005)
    while True:
        try:
            into.append(int(client.recv(64)))
        except BlockingIOError:
            return


def exchange(
    echo: EchoServer,
    *,
    drop: float,
    duplicate: float,
    reorder: float,
    seed: int,
    max_hold: float = 0.2,
) -> Run:
    """Sends COUNT numbered datagrams through a relay to the echo server and collects the echoes.

    At most WINDOW datagrams are on their way at a time, so no socket buffer
    overflows and every loss seen is one the relay made.
    """
    received: list[int] = []
    echoed_before = echo.echoed
    with (
        FaultyRelay(
            echo.address,
            drop=drop,
            duplicate=duplicate,
            reorder=reorder,
            seed=seed,
            max_hold=max_hold,
        ) as relay,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        client.setblocking(False)
        client.connect(relay.address)
        deadline = time.monotonic() + DEADLINE
        for number in range(COUNT):
            while in_flight(relay.stats(), number, len(received)) >= WINDOW:
                assert time.monotonic() < deadline, "the relay stopped forwarding"
                pump(client, received)
            client.send(b"%d" % number)
        while not settled(relay, echo.echoed - echoed_before, received):
            assert time.monotonic() < deadline, "echoes went missing"
            pump(client, received)
        return Run(relay.stats(), received)


def in_flight(stats: RelayStats, sent: int, received: int) -> int:
    """Datagrams sent or echoed that are neither received nor dropped yet, held ones included."""
    copies = sent + stats.to_server.duplicated + stats.to_client.duplicated
    return copies - stats.to_server.dropped - stats.to_client.dropped - received


def settled(relay: FaultyRelay, echoed: int, received: list[int]) -> bool:
    """True once every datagram the relay passed came back: the accounting is exact."""
    to_server, to_client = relay.stats().to_server, relay.stats().to_client
    echoes = to_server.passed + to_server.duplicated
    return (
        to_server.received == COUNT
        and echoed == echoes
        and to_client.received == echoes
        and len(received) == to_client.passed + to_client.duplicated
    )


def assert_near(observed: int, trials: int, probability: float, what: str) -> None:
    """Within five standard deviations of a binomial: a real bug is far outside."""
    expected = trials * probability
    spread = 5 * math.sqrt(trials * probability * (1 - probability)) + 2
    assert abs(observed - expected) <= spread, f"{what}: {observed}, expected about {expected}"


def inversions(received: list[int]) -> int:
    """Datagrams that arrived after a higher-numbered one, repeats left out."""
    seen: set[int] = set()
    highest = -1
    late = 0
    for number in received:
        if number in seen:
            continue
        seen.add(number)
        if number < highest:
            late += 1
        highest = max(highest, number)
    return late


def test_no_faults_delivers_everything_once_in_order(echo: EchoServer) -> None:
    run = exchange(echo, drop=0.0, duplicate=0.0, reorder=0.0, seed=1)
    assert run.received == list(range(COUNT))
    assert run.stats.to_server == LinkStats(received=COUNT, passed=COUNT)
    assert run.stats.to_client == LinkStats(received=COUNT, passed=COUNT)


def test_fault_rates_are_near_the_asked_ones(echo: EchoServer) -> None:
    drop, duplicate, reorder = 0.1, 0.05, 0.05
    run = exchange(echo, drop=drop, duplicate=duplicate, reorder=reorder, seed=7)
    for direction in (run.stats.to_server, run.stats.to_client):
        assert direction.passed + direction.dropped == direction.received
        assert_near(direction.dropped, direction.received, drop, "dropped")
        assert_near(direction.duplicated, direction.passed, duplicate, "duplicated")
        assert_near(direction.reordered, direction.passed, reorder, "reordered")

    distinct = set(run.received)
    kept = (1 - drop) * (1 - drop * drop * duplicate - drop * (1 - duplicate))
    assert_near(len(distinct), COUNT, kept, "numbers that came back")
    assert len(run.received) > len(distinct), "no repeated datagram reached the client"
    assert inversions(run.received) > 0, "no datagram reached the client out of order"


def test_same_seed_same_faults_other_seed_other_faults(echo: EchoServer) -> None:
    """A long max_hold keeps a slow machine from releasing a held datagram early."""
    faults = {"drop": 0.1, "duplicate": 0.05, "reorder": 0.05, "max_hold": 2.0}
    first = exchange(echo, seed=3, **faults)
    again = exchange(echo, seed=3, **faults)
    other = exchange(echo, seed=4, **faults)
    assert again.stats == first.stats
    assert again.received == first.received
    assert other.stats != first.stats


def test_each_client_gets_its_own_source_address_and_its_own_replies(echo: EchoServer) -> None:
    with FaultyRelay(echo.address, max_clients=2) as relay:
        clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
        try:
            for index, client in enumerate([*clients, clients[0]]):
                client.settimeout(DEADLINE)
                client.sendto(b"client %d" % index, relay.address)
                assert client.recv(64) == b"client %d" % index
            assert relay.client_count() == 2
        finally:
            for client in clients:
                client.close()
    assert len(set(echo.sources)) == 4, "an evicted client must come back on a new address"


def test_close_joins_the_thread_and_closes_the_sockets(echo: EchoServer) -> None:
    relay = FaultyRelay(echo.address)
    relay.start()
    assert relay.thread_name in {thread.name for thread in threading.enumerate()}
    relay.close()
    assert relay.thread_name not in {thread.name for thread in threading.enumerate()}
    relay.close()
    with pytest.raises(RuntimeError):
        relay.start()


def test_rejects_impossible_rates() -> None:
    with pytest.raises(ValueError):
        FaultyRelay(("127.0.0.1", 9), drop=1.5)
