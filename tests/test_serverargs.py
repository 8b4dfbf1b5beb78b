"""The flags both servers share: defaults from the protocol, bad values refused."""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

import common.server.main
import tcp.server
import udp.server
from common.cli.serverargs import add_common_arguments
from common.protocol.limits import Limits
from common.room.room import wall_clock_ms

PROTOCOL_LIMITS = Limits(
    hello_timeout=10.0,
    rate_limit=20.0,
    burst=50,
    max_users=10000,
    max_outbox=1048576,
    session_timeout=15.0,
)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_common_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_are_the_protocols() -> None:
    args = parse()
    assert (args.host, args.port) == ("127.0.0.1", 8080)
    assert Limits.from_args(args) == PROTOCOL_LIMITS


@pytest.mark.parametrize(
    ("module", "server_class"), [(tcp.server, "ChatServer"), (udp.server, "UdpChatServer")]
)
def test_each_server_without_flags_runs_with_the_protocols_limits(
    module: ModuleType, server_class: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What each server's own flags hand its server, not what ``Limits`` defaults to."""
    built: list[tuple[Limits, dict[str, Any]]] = []

    def build(limits: Limits, **options: Any) -> None:
        built.append((limits, options))

    def serve(make: Callable[[], None], args: argparse.Namespace) -> int:
        make()
        return 0

    monkeypatch.setattr(module, server_class, build)
    monkeypatch.setattr(common.server.main, "serve_until_signalled", serve)
    monkeypatch.setattr(common.server.main, "configure_logging", lambda quiet, verbose: None)
    monkeypatch.setattr(threading, "stack_size", lambda size=0: 0)
    assert module.main([]) == 0
    [(limits, options)] = built
    assert (options["host"], options["port"], options["history"]) == ("127.0.0.1", 8080, 1000)
    assert limits == PROTOCOL_LIMITS


def test_flags_set_the_limits() -> None:
    args = parse("--hello-timeout", "0.5", "--rate-limit", "0", "--burst", "3", "--max-users", "2")
    limits = Limits.from_args(args, max_outbox=100, session_timeout=2.5)
    assert (limits.hello_timeout, limits.rate_limit, limits.burst, limits.max_users) == (
        0.5,
        0.0,
        3,
        2,
    )
    assert (limits.max_outbox, limits.session_timeout) == (100, 2.5)


@pytest.mark.parametrize(
    "argv",
    [
        ("--hello-timeout", "0"),
        ("--rate-limit", "-1"),
        ("--burst", "0"),
        ("--max-users", "x"),
        ("--quiet", "--verbose"),
    ],
)
def test_bad_values_are_refused(argv: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit):
        parse(*argv)


def test_ts_is_wall_clock_milliseconds() -> None:
    assert abs(wall_clock_ms() - time.time() * 1000) < 1000
