"""Baseline chat server: the straightforward thread-per-client design, kept for comparison.

Contract: `python -m benchmarks.naive_server [--host HOST] [--port PORT]` (port 0 picks a free
one) writes `listening on HOST:PORT` to stderr once it accepts connections, then serves the TCP
JSON-lines protocol just far enough for the load benchmark: `hello` -> `welcome`, `say` -> `msg`
(with `from`, `text`, `ts`) to every registered client, the sender included, `bye` ends the
session. Every other frame, and anything that is not a JSON object, is ignored. SIGTERM stops it.

It is the design most course solutions arrive at, written plainly and without handicaps: one
thread per client, a shared list of clients behind a lock, and each message encoded once and
written by the sender's own thread with one blocking `sendall` per recipient, over a snapshot of
the list. Nagle's algorithm stays on (the socket default). A per-recipient lock keeps concurrent
senders from interleaving bytes within one frame. There is no validation, rate limiting or
slow-client protection: a client that stops reading eventually stalls every sender, which is part
of what the comparison shows.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class _Client:
    """One registered session; `lock` serialises writes so frames never interleave."""

    name: str
    sock: socket.socket
    lock: threading.Lock = field(default_factory=threading.Lock)


def _decode(line: bytes) -> dict[str, Any]:
    """The frame as a dict, or an empty one for anything that is not a JSON object."""
    try:
        frame = json.loads(line)
    except ValueError:
        return {}
    return frame if isinstance(frame, dict) else {}


def _encode(frame: dict[str, Any]) -> bytes:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


class NaiveServer:
    """The shared state: the list of registered clients."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: list[_Client] = []

    def serve_forever(self, listener: socket.socket) -> None:
        """Accept connections forever, one daemon thread per connection."""
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        client: _Client | None = None
        try:
            with conn.makefile("rb") as lines:
                for line in lines:
                    frame = _decode(line)
                    kind = frame.get("type")
                    if kind == "bye":
                        break
                    if client is None:
                        if kind == "hello" and isinstance(frame.get("name"), str):
                            client = _Client(frame["name"], conn)
                            self._register(client)
                    elif kind == "say" and isinstance(frame.get("text"), str):
                        self._broadcast(client.name, frame["text"])
        except OSError:
            pass
        finally:
            if client is not None:
                with self._lock:
                    self._clients.remove(client)
            conn.close()

    def _register(self, client: _Client) -> None:
        with self._lock:
            self._clients.append(client)
            names = [other.name for other in self._clients]
        welcome = {"type": "welcome", "name": client.name, "users": names, "count": len(names)}
        with client.lock:
            client.sock.sendall(_encode(welcome))

    def _broadcast(self, sender: str, text: str) -> None:
        msg = {"type": "msg", "from": sender, "text": text, "ts": time.time_ns() // 1_000_000}
        data = _encode(msg)
        with self._lock:
            recipients = list(self._clients)
        for recipient in recipients:
            try:
                with recipient.lock:
                    recipient.sock.sendall(data)
            except OSError:
                # The recipient's own thread sees the broken connection and removes it.
                continue


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Thread-per-client baseline chat server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    listener = socket.create_server((args.host, args.port), backlog=socket.SOMAXCONN)
    host, port = listener.getsockname()[:2]
    print(f"listening on {host}:{port}", file=sys.stderr, flush=True)
    try:
        NaiveServer().serve_forever(listener)
    except KeyboardInterrupt:
        pass
    finally:
        listener.close()


if __name__ == "__main__":
    main()
