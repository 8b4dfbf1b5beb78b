"""The protocol's Limits table: what one server allows each client, as it was started."""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Limits:
    """The protocol's Limits table, as one server was started with them."""

    hello_timeout: float = 10.0
    rate_limit: float = 20.0
    burst: int = 50
    max_users: int = 10000
    max_outbox: int = 1048576
    session_timeout: float = 15.0
    resume_grace: float = 10.0

    @classmethod
    def from_args(
        cls,
        args: argparse.Namespace,
        *,
        max_outbox: int = 1048576,
        session_timeout: float = 15.0,
    ) -> Limits:
        """The limits of ``add_common_arguments``, plus the one flag each server adds."""
        return cls(
            hello_timeout=args.hello_timeout,
            rate_limit=args.rate_limit,
            burst=args.burst,
            max_users=args.max_users,
            max_outbox=max_outbox,
            session_timeout=session_timeout,
            resume_grace=args.resume_grace,
        )
