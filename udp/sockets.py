"""UDP socket settings that the server, the client and the benchmarks share."""

from __future__ import annotations

import socket

SOCKET_BUFFER_BYTES = 4 << 20


def enlarge_buffers(sock: socket.socket, size: int = SOCKET_BUFFER_BYTES) -> None:
    """Kernel buffers big enough that a burst on loopback is not lost in them.

    The kernel caps them at ``net.core.rmem_max``/``wmem_max``; raise those
    to get the full size where the defaults are small.
    """
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, size)
