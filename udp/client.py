"""The UDP chat client: ``python -m udp.client [--host H] [--port P] [--name N] [--reliable]``.

The terminal side (prompt, rendering, commands, the keyboard and receiver
threads) is ``common.terminal.console``; this module adds ``UdpTransport``, one
connected UDP socket speaking the protocol's UDP session rules:

* ``hello`` is sent again every second until a ``welcome`` or an ``error``
  answers it, five times at most; the ``welcome``'s ``session`` token then
  goes into every later frame, with this side's own ``seq``.
* Every datagram's ``seq`` is counted (``SeqCounter``). In a raw session a
  gap, a repeat or a late arrival is shown as it is noticed, and a repeated
  datagram is shown once. ``/stats`` prints the counters.
* Reliable sessions (``--reliable``) ack every frame with a ``seq`` and hand
  frames on once and in order (``ReliableReceiver``); frames sent are kept
  and retransmitted until acked (``ReliableSender``). A frame that comes
  again is acked twice, as the server does: its first ack was lost, and
  losing acks costs retransmissions, or the whole session once six tries are
  lost.
* Packet sessions (v1.2, the command line's default; ``--no-packets`` for
  1.0) put every datagram after the ``welcome`` in a numbered packet and
  leave acks, loss recovery and congestion control to a ``PacketLink``
  (``common.protocol.packetlink``), the server's own rules, once the
  ``welcome`` says ``"packets": true`` (a 1.0 server's does not: the session
  then stays 1.0). Right after the
  ``welcome`` a ``ping`` goes out in the first packet, which proves this
  address to the server; until a packet comes back it is sent again every
  ``HELLO_INTERVAL``.
* A ``ping`` goes out whenever nothing was sent for ``PING_INTERVAL``. When
  nothing at all has come from the server for ``--give-up-after`` seconds,
  despite those pings, or for ``UNANSWERED_AFTER`` while a reliable session's
  own frames wait for an ack, the session is over: the terminal client counts the
  connection as lost and resumes it (v1.2) from a new socket, so a new port.
  So it is at once when the server's host answers a datagram with "port
  unreachable" (the socket's ``ECONNREFUSED``): nothing listens there, the
  server died or is restarting, and waiting for silence would only delay the
  resume; the next try then waits as ``Retry``'s backoff says.

Threads: ``main`` reads the keyboard and ``receiver`` blocks in
``UdpTransport.receive`` (both from ``common.terminal.console``); ``udp-timer``
resends hellos, pings, retransmits and watches for silence. One lock guards
the session state and the socket writes. What the client notices itself
reaches the screen as lines that never went over the wire (a loss, a
repeat); when it gives up (no answer to any hello, silence, frames never
acknowledged) the session ends and ``failure`` is the one line that says why.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import math
import socket
import sys
import threading
import time

from common.cli.serverargs import DEFAULT_PORT, positive_float
from common.protocol.codec import (
    Ack,
    AckRanges,
    Bye,
    ClientMessage,
    Error,
    Hello,
    Ping,
    ProtocolError,
    ServerMessage,
    Welcome,
    decode_server,
    encode,
)
from common.protocol.packetlink import PacketLink
from common.protocol.packets import BadPacket, parse
from common.protocol.recovery import MAX_PROBE_TIMEOUTS
from common.protocol.reliable import (
    MAX_TRIES,
    ReliableReceiver,
    ReliableSender,
    SeqCounter,
    SeqEvent,
    SeqKind,
)
from common.terminal.commands import help_text
from common.terminal.console import (
    ChatError,
    Console,
    add_server_argument,
    run_client,
    split_address,
)
from common.terminal.render import Line
from udp.sockets import enlarge_buffers

HELLO_INTERVAL = 1.0
HELLO_TRIES = 5
PING_INTERVAL = 5.0
GIVE_UP_AFTER = 15.0
UNANSWERED_AFTER = 3.0
"""Seconds a reliable session may go without hearing anything while frames of its own wait for
an ack: past it the server is taken to be gone (a restarted server answers no packet of a
session it does not know, and the probe timeouts, doubling from a round trip the load made
long, would take far longer to say so). A resume costs little if it was wrong."""
RECV_BYTES = 65536
POLL_INTERVAL = 0.1
TICK = 0.05
"""The code of the ``error`` messages the client makes up to tell its user something."""
NAME_ERRORS = frozenset({"name_taken", "name_invalid"})


@dataclasses.dataclass(frozen=True)
class TransportStats:
    """What one session counted: datagrams from the server, and frames sent to it."""

    received: int
    lost: int
    repeated: int
    reordered: int
    sent: int
    retransmitted: int


class UdpTransport:
    """One UDP session with the chat server, as a ``common.terminal.console.Transport``."""

    help_text = "  /stats           datagrams from the server lost, repeated, reordered"

    def __init__(
        self,
        sock: socket.socket,
        peer: str,
        reliable: bool,
        give_up_after: float,
        packets: bool = False,
    ) -> None:
        self.peer = peer
        self.reliable = reliable
        self.packets = packets
        self.give_up_after = give_up_after
        self._ping_interval = min(PING_INTERVAL, give_up_after / 3)
        self._sock = sock
        self._lock = threading.Lock()
        self._ready: collections.deque[ServerMessage | Line] = collections.deque()
        self._over = False
        self.failure: str | None = None
        self._token: str | None = None
        self._joined = False
        self._hello = b""
        self._hello_tries = 0
        self._next_hello = math.inf
        self._next_seq = 1
        self._bye_seq: int | None = None
        self._sender = ReliableSender() if reliable else None
        self._receiver = ReliableReceiver() if reliable else None
        # A packet session's link, from its welcome on; until a packet comes back, the
        # first ping is sent again at ``_next_proof``.
        self._link: PacketLink | None = None
        self._next_proof = math.inf
        self._counter = SeqCounter()
        self._sent = 0
        self._last_heard = self._last_sent = time.monotonic()
        self._stop = threading.Event()
        # Set when a packet gives the link's timers an earlier deadline than the timer knows.
        self._wake = threading.Event()
        self._timer = threading.Thread(target=self._run_timer, name="udp-timer", daemon=True)

    @classmethod
    def connect(
        cls,
        host: str,
        port: int,
        reliable: bool = False,
        give_up_after: float = GIVE_UP_AFTER,
        server: str | None = None,
        packets: bool = False,
    ) -> UdpTransport:
        """A socket that takes datagrams from ``host:port`` only, and its timer thread.

        ``server`` is the server's address as shown to people when
        ``host:port`` is a relay in front of it (the demo's lossy link).
        ``packets`` asks for a packet session (v1.2).
        """
        peer = server or f"{host}:{port}"
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            enlarge_buffers(sock)
            sock.connect((host, port))
        except OSError as exc:
            sock.close()
            raise ChatError(f"cannot reach {host}:{port}: {exc.strerror or exc}") from None
        sock.settimeout(POLL_INTERVAL)
        transport = cls(sock, peer, reliable, give_up_after, packets)
        transport._timer.start()
        return transport

    # ---- sending (main thread, and the timer) --------------------------

    def send(self, message: ClientMessage) -> None:
        with self._lock:
            if self._over:
                raise ConnectionError(f"the session with {self.peer} is over")
            if isinstance(message, Hello):
                self._hello = encode(
                    dataclasses.replace(message, reliable=self.reliable, packets=self.packets)
                )
                self._hello_tries = 0
                self._send_hello(time.monotonic())
                return
            if self._token is None:
                raise ConnectionError("no session yet: send hello first")
            seq = self._send_frame(message, time.monotonic())
            if isinstance(message, Bye):
                if not self.reliable:
                    self._over = True
                else:
                    self._bye_seq = seq

    def _send_hello(self, now: float) -> None:
        self._hello_tries += 1
        self._next_hello = now + HELLO_INTERVAL
        self._write(self._hello, now)

    def _send_frame(self, message: ClientMessage, now: float) -> int:
        """Send with the token and the next seq (kept until acked when reliable); return the seq."""
        assert self._token is not None
        if self._link is not None:
            seq = self._link.next_seq
            self._link.queue(seq, encode(message, seq=seq))
            self._write_link(now)
            return seq
        if self._sender is None:
            seq = self._next_seq
            self._next_seq += 1
            self._write(encode(message, session=self._token, seq=seq), now)
            return seq
        seq = self._sender.next_seq
        self._sender.queue(seq, encode(message, session=self._token, seq=seq))
        for frame in self._sender.due(now):
            self._write(frame, now)
        return seq

    def _write_link(self, now: float) -> None:
        assert self._link is not None
        for datagram in self._link.datagrams(now):
            self._write(datagram, now)
        if self._bye_seq is not None and self._link.acked(self._bye_seq):
            self._over = True

    def _write(self, data: bytes, now: float) -> None:
        self._sent += 1
        self._last_sent = now
        try:
            self._sock.send(data, socket.MSG_DONTWAIT)
        except ConnectionRefusedError:  # an earlier datagram's "port unreachable", seen here
            self._give_up(f"nothing listens at {self.peer} (port unreachable)")
        except OSError:
            pass  # a full buffer: the datagram is lost, as on the network

    # ---- receiving (receiver thread) -----------------------------------

    def receive(self) -> ServerMessage | Line | None:
        while True:
            with self._lock:
                if self._ready:
                    return self._ready.popleft()
                if self._over:
                    return None
            try:
                data = self._sock.recv(RECV_BYTES)
            except TimeoutError:
                continue
            except ConnectionRefusedError:
                with self._lock:  # the server's host says nothing listens on its port
                    self._give_up(f"nothing listens at {self.peer} (port unreachable)")
                continue
            except OSError:
                return None
            with self._lock:
                self._on_datagram(data, time.monotonic())

    def _on_datagram(self, data: bytes, now: float) -> None:
        self._last_heard = now
        if self._link is not None:
            try:
                self._on_packet(data, now)
                return
            except BadPacket:
                pass  # the welcome again: its hello was repeated
        try:
            decoded = decode_server(data)
        except ProtocolError:
            return
        message = decoded.message
        if isinstance(message, Ack):
            self._on_ack(message.seq, now)
            return
        if isinstance(message, Welcome) and self._token is None:
            if decoded.session is None:
                return
            self._token = decoded.session
            if self.packets and decoded.fields.get("packets") is True:
                self._start_packets(message, decoded.seq, data, now)
                return
        if self._link is not None:
            return  # outside a packet, only the welcome counts
        seq = decoded.seq
        if seq is None:
            self._take(message)
            return
        event = self._counter.on_seq(seq)
        if self._receiver is None:
            self._notice_raw(event, seq)
            if event.kind is not SeqKind.DUPLICATE:
                self._take(message)
            return
        self._in_order(seq, data, message, now)

    def _in_order(self, seq: int, data: bytes, message: ServerMessage, now: float) -> None:
        """A reliable session's frame: acked, then taken once and in order."""
        assert self._receiver is not None
        acks = self._receiver.acks_for(seq)
        frames = self._receiver.on_frame(seq, data)
        if frames is None or self._token is None:
            return
        ack = encode(Ack(seq=seq), session=self._token)
        for _ in range(acks):
            self._write(ack, now)
        for frame in frames:
            self._take(message if frame is data else decode_server(frame).message)

    def _start_packets(self, welcome: Welcome, seq: int | None, data: bytes, now: float) -> None:
        """A packet session's welcome: the link starts, and its first packet proves the address."""
        assert self._token is not None
        self._link = PacketLink(reliable=self.reliable, session=self._token)
        if seq is not None:
            self._counter.on_seq(seq)
            if self.reliable:
                self._link.on_frame(seq, data)
        self._take(welcome)
        self._send_frame(Ping(), now)
        self._next_proof = now + HELLO_INTERVAL

    def _on_packet(self, data: bytes, now: float) -> None:
        """One packet from the server: acks to the link, frames by ``seq`` to the reader."""
        link = self._link
        assert link is not None
        packet = parse(data)
        frames: list[tuple[bytes, ServerMessage, int | None]] = []
        for line in packet.frames:
            try:
                decoded = decode_server(line)
            except ProtocolError:
                continue
            frames.append((line, decoded.message, decoded.seq))
        eliciting = any(not isinstance(message, AckRanges) for _, message, _ in frames)
        if not link.on_packet(packet.pn, eliciting, now):
            return
        self._next_proof = math.inf
        for line, message, seq in frames:
            if isinstance(message, AckRanges):
                link.on_ack(message.ranges, message.delay, now)
            elif seq is None:
                self._take(message)
            elif not link.reliable:
                event = self._counter.on_seq(seq)
                self._notice_raw(event, seq)
                if event.kind is not SeqKind.DUPLICATE:
                    self._take(message)
            else:
                self._counter.on_seq(seq)
                for frame in link.on_frame(seq, line) or ():
                    self._take(message if frame is line else decode_server(frame).message)
        if self._over:  # the server's bye: acknowledge it before leaving
            for datagram in link.ack_now(now):
                self._write(datagram, now)
            return
        self._write_link(now)
        self._wake.set()

    def _on_ack(self, seq: int, now: float) -> None:
        if self._sender is None:
            return
        frames = self._sender.on_ack(seq, now)
        if seq == self._bye_seq:
            self._over = True
            return
        for frame in frames:
            self._write(frame, now)

    def _take(self, message: ServerMessage) -> None:
        """Queue a message for ``receive``, ending the session where the message does."""
        if isinstance(message, Welcome):
            if self._joined:
                return
            self._joined = True
            self._next_hello = math.inf
        elif isinstance(message, Error) and not self._joined:
            self._next_hello = math.inf
            self._over = message.code not in NAME_ERRORS
        elif isinstance(message, Bye):
            self._over = True
        self._ready.append(message)

    def _notice_raw(self, event: SeqEvent, seq: int) -> None:
        if event.kind is SeqKind.GAP:
            first = seq - event.missing
            span = f"seq {first}" if event.missing == 1 else f"seq {first}-{seq - 1}"
            self._notice(f"lost {event.missing} datagram(s) from the server ({span})")
        elif event.kind is SeqKind.DUPLICATE:
            self._notice(f"datagram seq {seq} came again; shown once")
        elif event.kind is SeqKind.LATE:
            self._notice(f"datagram seq {seq} came late, out of order")
        elif event.kind is SeqKind.RESTART:
            self._notice(f"datagram seq {seq} is far from the ones before; counting from it")

    def _notice(self, text: str) -> None:
        self._ready.append(Line("system", text))

    # ---- the timer thread ----------------------------------------------

    def _run_timer(self) -> None:
        wait = TICK
        while not self._stop.is_set():
            self._wake.wait(wait)
            self._wake.clear()
            with self._lock:
                if self._over:
                    return
                now = time.monotonic()
                self._tick(now)
                deadline = self._link.next_deadline() if self._link is not None else None
                wait = TICK if deadline is None else min(TICK, max(0.001, deadline - now))

    def _tick(self, now: float) -> None:
        if not self._joined:
            if now >= self._next_hello:
                if self._hello_tries >= HELLO_TRIES:
                    self._give_up(
                        f"no answer from {self.peer} to {HELLO_TRIES} hellos "
                        f"{HELLO_INTERVAL:g} s apart: is the server running?"
                    )
                else:
                    self._send_hello(now)
            return
        if self._link is not None:
            self._write_link(now)
            if self._link.failed:
                self._give_up(
                    f"the server at {self.peer} stopped acknowledging: "
                    f"{MAX_PROBE_TIMEOUTS} probe timeouts in a row"
                )
                return
            if now >= self._next_proof:
                self._send_frame(Ping(), now)
                self._next_proof = now + HELLO_INTERVAL
        if self._sender is not None:
            for frame in self._sender.due(now):
                self._write(frame, now)
            if self._sender.failed:
                self._give_up(
                    f"the server at {self.peer} stopped acknowledging: "
                    f"a frame went unacknowledged {MAX_TRIES} times"
                )
                return
        self._check_silence(now)

    def _check_silence(self, now: float) -> None:
        """Give up on a server heard from too long ago; ping one that we have been quiet to."""
        silent = now - self._last_heard
        if self._waiting_for_ack() and silent > min(UNANSWERED_AFTER, self.give_up_after):
            self._give_up(
                f"the server at {self.peer} stopped answering: "
                f"nothing heard for {UNANSWERED_AFTER:g} s while frames wait for an ack"
            )
        elif silent > self.give_up_after:
            self._give_up(
                f"the server at {self.peer} stopped answering: "
                f"nothing heard for {self.give_up_after:g} s despite pings"
            )
        elif now - self._last_sent >= self._ping_interval:
            self._send_frame(Ping(), now)

    def _waiting_for_ack(self) -> bool:
        """Whether frames of this reliable session's own wait for the server's ack."""
        if not self.reliable:
            return False
        if self._link is not None:
            return self._link.pending > 0
        return self._sender is not None and self._sender.pending > 0

    def _give_up(self, why: str) -> None:
        """End the session; ``why`` (the first reason found) becomes the client's last line."""
        self.failure = self.failure or why
        self._over = True

    # ---- the rest ------------------------------------------------------

    def stats(self) -> TransportStats:
        with self._lock:
            c = self._counter
            return TransportStats(
                received=c.received,
                lost=c.lost,
                repeated=c.repeated,
                reordered=c.reordered,
                sent=self._sent,
                retransmitted=(
                    self._link.retransmissions
                    if self._link
                    else self._sender.retransmissions
                    if self._sender
                    else 0
                ),
            )

    def local_command(self, line: str) -> str | None:
        if line.strip().lower() != "/stats":
            return None
        s = self.stats()
        mode = ("reliable" if self.reliable else "raw") + (" packet" if self._link else "")
        resent = f", {s.retransmitted} retransmitted" if self.reliable else ""
        return (
            f"{mode} session with {self.peer}\n"
            f"from the server: {s.received} datagrams, {s.lost} lost, "
            f"{s.repeated} repeated, {s.reordered} reordered\n"
            f"to the server: {s.sent} datagrams{resent}"
        )

    def close(self) -> None:
        with self._lock:
            self._over = True
        self._stop.set()
        self._wake.set()
        if self._timer is not threading.current_thread() and self._timer.is_alive():
            self._timer.join()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


def add_where_arguments(parser: argparse.ArgumentParser) -> None:
    """Which server, and under what name."""
    parser.add_argument("--host", default="127.0.0.1", help="server address (default: %(default)s)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="server port (default: %(default)s)"
    )
    add_server_argument(parser)
    parser.add_argument("--name", help="your name in the chat (asked for when not given)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m udp.client",
        description="The terminal client of the UDP chat.",
        epilog=help_text(UdpTransport.help_text),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_where_arguments(parser)
    parser.add_argument(
        "--reliable",
        action="store_true",
        help="ask for a reliable session: acks and retransmission, nothing lost or repeated",
    )
    parser.add_argument(
        "--no-packets",
        dest="packets",
        action="store_false",
        help="speak protocol 1.0 (one frame per datagram, acks per frame) instead of packets",
    )
    parser.add_argument(
        "--give-up-after",
        type=positive_float,
        default=GIVE_UP_AFTER,
        metavar="SECONDS",
        help="silence from the server after which the connection counts as lost and the "
        "client resumes from a new port (default: %(default)s)",
    )
    args = parser.parse_args(argv)

    def connect(server: str) -> UdpTransport:
        """A new socket (so a new port) for every try: a resume comes from a new address."""
        host, port = split_address(server)
        return UdpTransport.connect(
            host, port, args.reliable, args.give_up_after, packets=args.packets
        )

    servers = args.server or [f"{args.host}:{args.port}"]
    return run_client(connect, Console(), args.name, servers)


if __name__ == "__main__":
    sys.exit(main())
