"""The flags both servers share: defaults from the protocol, bad values refused."""

from __future__ import annotations

import argparse
import time

import pytest

from common.room import wall_clock_ms
from common.serverargs import Limits, add_common_arguments


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_common_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_are_the_protocols() -> None:
    args = parse()
    assert (args.host, args.port) == ("127.0.0.1", 8080)
    assert Limits.from_args(args) == Limits(
        hello_timeout=10.0,
        rate_limit=20.0,
        burst=50,
        max_users=10000,
        max_outbox=1048576,
        session_timeout=15.0,
    )


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
