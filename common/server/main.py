"""The shape of both servers: turn until stopped, then shut down; and their ``main``."""

from __future__ import annotations

import argparse
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable

from common.cli.serverargs import (
    add_common_arguments,
    announce,
    configure_logging,
    positive_int,
    serve_until_signalled,
)
from common.server.core import (
    DEFAULT_MAX_REFUSED_BEFORE_HELLO,
    DEFAULT_MAX_WAITING_PER_ADDRESS,
    MAX_WAITING,
)


class Server(ABC):
    """A chat server: ``serve_forever`` runs its turns until ``stop``, then its shutdown.

    ``stop`` may be called from any thread (a signal handler calls it): it
    only sets ``stopping``, which the serving thread sees within one turn
    (a poll interval at most) and then runs the shutdown itself.
    """

    address: tuple[str, int]
    what = "chat server"
    join_with = ""

    def __init__(self) -> None:
        self.stopping = threading.Event()

    def serve_forever(self) -> None:
        """Start the server's threads, say where it listens, serve until ``stopping``."""
        self._start()
        announce(self.what, self.address, self.join_with)
        while not self.stopping.is_set():
            self._turn()
        self._shutdown()

    def stop(self) -> None:
        self.stopping.set()

    @abstractmethod
    def _start(self) -> None:
        """Start the threads the server owns."""

    @abstractmethod
    def _turn(self) -> None:
        """Accept or receive for one poll interval at most."""

    @abstractmethod
    def _shutdown(self) -> None:
        """Say ``bye`` to everyone, close every socket, join every thread started."""


def main(
    argv: list[str] | None,
    parser: argparse.ArgumentParser,
    add_flags: Callable[[argparse.ArgumentParser], None],
    make: Callable[[argparse.Namespace], Server],
) -> int:
    """Parse the flags both servers take and the transport's own, then serve until signalled."""
    add_common_arguments(parser)
    add_flags(parser)
    args = parser.parse_args(argv)
    configure_logging(args.quiet, args.verbose)
    return serve_until_signalled(lambda: make(args), args)


def add_admission_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of ``Admission``: how many strangers, and how patient with them."""
    parser.add_argument(
        "--max-waiting-per-address",
        type=positive_int,
        default=DEFAULT_MAX_WAITING_PER_ADDRESS,
        metavar="N",
        help="connections from one address that have yet to say hello, at most; past it a "
        f"new one gets server_full (default: %(default)s; {MAX_WAITING} from all addresses)",
    )
    parser.add_argument(
        "--max-refused-before-hello",
        type=positive_int,
        default=DEFAULT_MAX_REFUSED_BEFORE_HELLO,
        metavar="N",
        help="frames refused from a connection that has not said hello yet before it is "
        "closed (default: %(default)s)",
    )
