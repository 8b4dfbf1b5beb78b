"""What both servers share on the command line: their flags, logs and signals."""

from __future__ import annotations

import argparse
import contextlib
import logging
import resource
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Protocol, TypeVar

from common.room.sharing import DEFAULT_LEASE
from common.room.starterror import StartError

Number = TypeVar("Number", int, float)

DEFAULT_PORT = 8080


def raise_open_file_limit() -> None:
    """Thousands of clients need thousands of descriptors: take all the hard limit allows.

    An unlimited hard limit cannot always be taken literally; then the soft one stays.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _number(cast: Callable[[str], Number], *, zero_allowed: bool) -> Callable[[str], Number]:
    """An argparse ``type``: ``cast`` the text, then refuse what is negative (or zero)."""

    def parse(text: str) -> Number:
        value = cast(text)
        if value < 0 or (value == 0 and not zero_allowed):
            bound = "0 or more" if zero_allowed else "more than 0"
            raise argparse.ArgumentTypeError(f"must be {bound}, not {text}")
        return value

    parse.__name__ = cast.__name__  # what argparse names in "invalid ... value"
    return parse


positive_float = _number(float, zero_allowed=False)
non_negative_float = _number(float, zero_allowed=True)
positive_int = _number(int, zero_allowed=False)
non_negative_int = _number(int, zero_allowed=True)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags both servers take, with the protocol's defaults."""
    _add_address(parser)
    _add_limits(parser)
    _add_history(parser)
    _add_sharing(parser)
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("--quiet", "-q", action="store_true", help="log only warnings")
    loudness.add_argument("--verbose", "-v", action="store_true", help="log every connection too")


def _add_address(parser: argparse.ArgumentParser) -> None:
    """Where to listen."""
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="port to listen on; 0 picks a free one (default: %(default)s)",
    )


def _add_limits(parser: argparse.ArgumentParser) -> None:
    """The protocol's Limits table."""
    parser.add_argument(
        "--hello-timeout",
        type=positive_float,
        default=10.0,
        metavar="SECONDS",
        help="time a new client has to send a good hello (default: %(default)s)",
    )
    parser.add_argument(
        "--rate-limit",
        type=non_negative_float,
        default=20.0,
        metavar="PER_SECOND",
        help="frames a client may send per second, sustained; 0 turns the limit off "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--burst",
        type=positive_int,
        default=50,
        metavar="N",
        help="frames a client may send in a burst (default: %(default)s)",
    )
    parser.add_argument(
        "--max-users",
        type=positive_int,
        default=10000,
        metavar="N",
        help="registered users at most; past it a hello gets server_full (default: %(default)s)",
    )
    parser.add_argument(
        "--resume-grace",
        type=non_negative_float,
        default=10.0,
        metavar="SECONDS",
        help="how long a client that can resume keeps its place, unannounced, after its "
        "connection broke; it comes back with what it missed, and nobody sees it leave and "
        "join again. 0 lets it leave at once (default: %(default)s)",
    )


def _add_history(parser: argparse.ArgumentParser) -> None:
    """How much of the chat is kept for those who ask what was said before they came."""
    parser.add_argument(
        "--history",
        type=non_negative_int,
        default=1000,
        metavar="N",
        help="messages kept for users who ask what was said before they came; "
        "0 turns history off (default: %(default)s)",
    )


def _add_sharing(parser: argparse.ArgumentParser) -> None:
    """Where the room lives besides this process (``common.room.sharing``)."""
    parser.add_argument(
        "--history-file",
        metavar="PATH",
        help="keep the messages in this SQLite file too, so history survives a restart "
        "(default: in memory only)",
    )
    parser.add_argument(
        "--redis",
        metavar="URL",
        help="share the room with every server on this Redis, e.g. redis://127.0.0.1:6379/0 "
        "(needs: pip install -r requirements-redis.txt)",
    )
    parser.add_argument(
        "--room",
        default="lobby",
        metavar="NAME",
        help="with --redis: the shared room's name (default: %(default)s)",
    )
    parser.add_argument(
        "--lease",
        type=positive_float,
        default=DEFAULT_LEASE,
        metavar="SECONDS",
        help="with --redis: how long this server's users stay in the room once it stops "
        "answering; it renews its lease 4 times as often (default: %(default)s)",
    )


def configure_logging(quiet: bool, verbose: bool) -> None:
    """Readable lines on stderr: time, level, what happened."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S"
    )


def announce(what: str, address: tuple[str, int], join_with: str) -> None:
    """The start-up line, shown even with --quiet: where the server is and how to join it.

    It is information, not a warning, so it is printed rather than logged;
    scripts wait for its ``listening on HOST:PORT``.
    """
    host, port = address
    print(
        f"{what} listening on {host}:{port}; join with: {join_with.format(host=host, port=port)}",
        file=sys.stderr,
        flush=True,
    )


class Stoppable(Protocol):
    def serve_forever(self) -> None: ...

    def stop(self) -> None: ...


def serve_until_signalled(make: Callable[[], Stoppable], args: argparse.Namespace) -> int:
    """Start a server and serve until Ctrl+C or SIGTERM; return the exit code.

    The signal handler only asks the server to stop: its own thread then runs
    the shutdown, outside the handler, where it may take locks and join
    threads. A port that cannot be had, or anything else it needs at start
    (``StartError``), is one line on stderr and exit code 1.
    """
    try:
        server = make()
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    except StartError as exc:
        print(exc, file=sys.stderr)
        return 1

    def on_signal(signum: int, frame: FrameType | None) -> None:
        server.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    server.serve_forever()
    return 0
