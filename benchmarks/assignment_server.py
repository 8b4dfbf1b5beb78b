"""The assignment's server: the design of the course's example TCP chat, as a measured baseline.

Contract: `python -m benchmarks.assignment_server [--host HOST] [--port PORT] [--nodelay]` (port
0 picks a free one; `--nodelay` sets TCP_NODELAY on every connection, the one change the
benchmark's ablation makes to this design) writes `listening on HOST:PORT` to stderr once it
accepts connections. A client's first line is its name; every later line is a message, which
every *other* client receives as the raw text line `name: text`. A join is announced to the
others as `name joined`, a leave as `name left`. There are no frames, no commands, no limits.
SIGTERM stops it.

Why it exists: the project's servers are judged against the design the assignment itself
shows, so that design is measured here, rather than a slower cousin of it. It keeps every
trait that sets that design's cost and latency:

- one thread per client, which reads and also does the fan-out: for each read, the reading
  thread calls `sendall` once per recipient with everything that read brought (one send per
  recipient per read, as the example's one `send` per `recv`);
- Nagle's algorithm stays on (the socket default), so the kernel coalesces small writes, at
  the price of waiting for acks;
- no per-recipient lock: two readers may write to one recipient at once, as in the example;
- the list of clients is a tuple replaced under a lock on join and leave, and read without one.

Where the example is wrong rather than merely simple, this one is not: it splits lines at `\n`
(the example broadcasts whatever one `recv` returned, which cuts messages in two under load)
and stops a reader's thread when its connection ends.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading

_READ_BYTES = 65536


class AssignmentServer:
    """Who is online: a tuple of (name, socket), replaced whole on every join and leave."""

    def __init__(self, nodelay: bool = False) -> None:
        self._nodelay = nodelay
        self._lock = threading.Lock()
        self._clients: tuple[tuple[bytes, socket.socket], ...] = ()

    def serve_forever(self, listener: socket.socket) -> None:
        """Accept connections forever, one daemon thread per connection."""
        while True:
            conn, _ = listener.accept()
            if self._nodelay:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        name = b""
        try:
            pending = b""
            while not name:
                data = conn.recv(_READ_BYTES)
                if not data:
                    return
                pending += data
                if b"\n" not in pending:
                    continue
                line, _, pending = pending.partition(b"\n")
                name = line.strip()
            self._join(name, conn)
            prefix = name + b": "
            while True:
                cut = pending.rfind(b"\n") + 1
                if cut:
                    lines = pending[:cut].splitlines(keepends=True)
                    self._broadcast(conn, b"".join(prefix + line for line in lines))
                    pending = pending[cut:]
                data = conn.recv(_READ_BYTES)
                if not data:
                    return
                pending += data
        except OSError:
            return
        finally:
            if name:
                self._leave(name, conn)
            conn.close()

    def _join(self, name: bytes, conn: socket.socket) -> None:
        with self._lock:
            self._clients = (*self._clients, (name, conn))
        self._broadcast(conn, name + b" joined\n")

    def _leave(self, name: bytes, conn: socket.socket) -> None:
        with self._lock:
            self._clients = tuple(c for c in self._clients if c[1] is not conn)
        self._broadcast(conn, name + b" left\n")

    def _broadcast(self, sender: socket.socket, data: bytes) -> None:
        """One `sendall` per recipient, from the sender's own thread; a failed write is left
        to the recipient's own reader to notice."""
        for _, recipient in self._clients:
            if recipient is sender:
                continue
            try:
                recipient.sendall(data)
            except OSError:
                continue


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.assignment_server",
        description="The assignment's thread-per-client chat server, as a baseline.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--nodelay", action="store_true", help="TCP_NODELAY on every connection (Nagle off)"
    )
    args = parser.parse_args(argv)
    listener = socket.create_server((args.host, args.port), backlog=socket.SOMAXCONN)
    host, port = listener.getsockname()[:2]
    print(f"listening on {host}:{port}", file=sys.stderr, flush=True)
    try:
        AssignmentServer(args.nodelay).serve_forever(listener)
    except KeyboardInterrupt:
        pass
    finally:
        listener.close()


if __name__ == "__main__":
    main()
