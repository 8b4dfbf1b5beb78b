"""The TCP chat client: ``python -m tcp.client [--host H] [--port P] [--server H:P] [--name N]``.

The terminal side (threads, prompt, rendering, commands, coming back after a
lost connection) is ``common.terminal.console``; this module only adds
``TcpTransport``: one socket, JSON lines out with ``encode_line``, lines in
through ``LineFramer`` and ``decode_server``. Exit code 0 when the person
quits or the server ends the session, 1 when no server can be reached or
the name is refused.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import socket
import sys

from common.protocol.codec import (
    ClientMessage,
    LineFramer,
    ProtocolError,
    ServerMessage,
    decode_server,
    encode_line,
)
from common.terminal.commands import HELP_TEXT
from common.terminal.console import (
    ChatError,
    Console,
    add_server_argument,
    run_client,
    split_address,
)

CONNECT_TIMEOUT = 5.0
RECV_BYTES = 65536
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_PROBES = 10, 5, 3
"""A server that vanished without a word (its machine gone, a NAT that forgot the
connection) is noticed within about 25 s even while nobody says anything, so the client
resumes instead of waiting on a dead connection."""
UNACKED_LIMIT_MS = 30_000
"""The same while something sent is not acknowledged (``TCP_USER_TIMEOUT``)."""


class TcpTransport:
    """One TCP connection to the chat server, as a ``common.terminal.console.Transport``."""

    help_text = ""
    failure = None

    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.peer = peer
        self._sock = sock
        self._framer = LineFramer()
        self._lines: collections.deque[bytes] = collections.deque()

    @classmethod
    def connect(cls, server: str) -> TcpTransport:
        """A connection to ``server`` (``HOST:PORT``), or ``ChatError`` saying why not."""
        host, port = split_address(server)
        peer = f"{host}:{port}"
        try:
            sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
        except OSError as exc:
            raise ChatError(f"cannot connect to {peer}: {exc.strerror or exc}") from None
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, UNACKED_LIMIT_MS)
        return cls(sock, peer)

    def send(self, message: ClientMessage) -> None:
        self._sock.sendall(encode_line(message))

    def receive(self) -> ServerMessage | None:
        """The next message; a frame this client cannot read is skipped, not fatal."""
        while True:
            while not self._lines:
                try:
                    data = self._sock.recv(RECV_BYTES)
                    self._lines.extend(line for line in self._framer.feed(data) if line)
                except (OSError, ProtocolError):
                    return None
                if not data:
                    return None
            try:
                message: ServerMessage = decode_server(self._lines.popleft()).message
            except ProtocolError:
                continue
            return message

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    def local_command(self, line: str) -> str | None:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tcp.client",
        description="The terminal client of the TCP chat.",
        epilog=HELP_TEXT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="server address (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8080, help="server port (default: %(default)s)")
    add_server_argument(parser)
    parser.add_argument("--name", help="your name in the chat (asked for when not given)")
    args = parser.parse_args(argv)
    servers = args.server or [f"{args.host}:{args.port}"]
    return run_client(TcpTransport.connect, Console(), args.name, servers)


if __name__ == "__main__":
    sys.exit(main())
