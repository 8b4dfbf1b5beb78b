"""What one delivery costs the kernel on this machine: the floor under any chat server.

Contract:
    measure_floor(peers=200, rounds=100) -> Floor   (CPU µs per TCP send and per UDP sendto)
    python -m benchmarks.floor                       prints them

A chat server's fan-out is, at bottom, one `send` per recipient (fewer when writes coalesce).
This measures that alone, with no chat around it: one thread writes a chat-sized frame to each
of `peers` loopback peers in turn, a round at a time with a millisecond between rounds, as the
TCP server's flusher does at 200 clients x 5 msg/s, while another process reads everything (a
thread would share the interpreter lock and add its hand-offs to the cost). The writer's CPU
time (user and kernel, `time.thread_time`) divided by its writes is the floor.
On loopback the kernel hands each segment to its reader inside the writer's `send`, so that
time includes the receiving side's TCP work, as it does for the servers under test.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import select
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.synchronize import Event

FRAME = b'{"type":"msg","from":"c123","text":"b123:45:1234567890123456","ts":1764000000000}\n'
_PAUSE_S = 0.001
_READ_BYTES = 65536
_READ_WAIT_S = 0.05


@dataclass(frozen=True)
class Floor:
    """CPU microseconds of one write, Python's call included: the least a delivery can cost."""

    tcp_send_us: float
    udp_sendto_us: float


def _drain(readers: Sequence[socket.socket], stop: Event) -> None:
    """Read whatever arrives until told to stop."""
    poller = select.epoll()
    by_fd = {sock.fileno(): sock for sock in readers}
    for fd in by_fd:
        poller.register(fd, select.EPOLLIN)
    with poller:
        while not stop.is_set():
            for fd, _ in poller.poll(_READ_WAIT_S):
                with contextlib.suppress(BlockingIOError):
                    by_fd[fd].recv(_READ_BYTES)


def _cpu_per_write(
    writes: Sequence[Callable[[], object]], readers: Sequence[socket.socket], rounds: int
) -> float:
    """Writer-thread CPU µs per call of `writes`, a round of them per millisecond."""
    for sock in readers:
        sock.setblocking(False)
    context = multiprocessing.get_context("fork")
    stop = context.Event()
    drainer = context.Process(target=_drain, args=(readers, stop), name="floor-reader")
    drainer.start()
    try:
        spent = 0.0
        for _ in range(rounds):
            start = time.thread_time()
            for write in writes:
                write()
            spent += time.thread_time() - start
            time.sleep(_PAUSE_S)
    finally:
        stop.set()
        drainer.join()
    return spent / (rounds * len(writes)) * 1e6


@contextlib.contextmanager
def _tcp_pairs(peers: int) -> Iterator[tuple[list[socket.socket], list[socket.socket]]]:
    """`peers` connected loopback pairs: (server ends, client ends)."""
    opened: list[socket.socket] = []
    with socket.create_server(("127.0.0.1", 0), backlog=peers) as listener:
        try:
            for _ in range(peers):
                opened.append(socket.create_connection(listener.getsockname()))
                opened.append(listener.accept()[0])
                opened[-1].setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            yield opened[1::2], opened[0::2]
        finally:
            for sock in opened:
                sock.close()


@contextlib.contextmanager
def _udp_peers(peers: int) -> Iterator[tuple[socket.socket, list[socket.socket]]]:
    """One sending socket and `peers` bound receivers."""
    opened = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(peers + 1)]
    try:
        for sock in opened[1:]:
            sock.bind(("127.0.0.1", 0))
        yield opened[0], opened[1:]
    finally:
        for sock in opened:
            sock.close()


def measure_floor(peers: int = 200, rounds: int = 100) -> Floor:
    """About a second: `rounds` rounds of a write to each of `peers` peers, TCP then UDP."""
    with _tcp_pairs(peers) as (senders, readers):
        writes = [lambda s=sock: s.send(FRAME, socket.MSG_DONTWAIT) for sock in senders]
        tcp = _cpu_per_write(writes, readers, rounds)
    with _udp_peers(peers) as (sender, receivers):
        targets = [sock.getsockname() for sock in receivers]
        writes = [lambda a=address: sender.sendto(FRAME, a) for address in targets]
        udp = _cpu_per_write(writes, receivers, rounds)
    return Floor(tcp_send_us=tcp, udp_sendto_us=udp)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor", description=__doc__)
    parser.add_argument("--peers", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args(argv)
    floor = measure_floor(args.peers, args.rounds)
    print(f"TCP send:   {floor.tcp_send_us:.2f} µs of CPU each")
    print(f"UDP sendto: {floor.udp_sendto_us:.2f} µs of CPU each")


if __name__ == "__main__":
    main()
