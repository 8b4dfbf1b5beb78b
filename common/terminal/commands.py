"""What a person types, turned into protocol messages.

The terminal clients and the server's text mode (``nc``/``telnet``) read
the same commands, so they are parsed here once. A mistake in a command is
a ``Usage`` error: shown to the person who typed it, never sent to anyone.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.protocol.codec import (
    HISTORY_DEFAULT_LIMIT,
    HISTORY_MAX_LIMIT,
    Bye,
    ClientMessage,
    History,
    Nick,
    Say,
    SendDm,
    Who,
    check_name,
    check_text,
)

QUIT_WORDS = frozenset({"/quit", "/exit", "выход"})

COMMANDS_HELP = """\
commands:
  /who             who is online
  /msg NAME TEXT   a private message to NAME
  /nick NAME       change your name
  /history [N]     the last N messages from before you joined (20; up to 100)
  /quit            leave the chat (so does typing: выход)
  /help            this help"""
MESSAGE_HELP = "anything else is a message to everyone; start it with // to send a leading /"


def help_text(local: str = "") -> str:
    """The help: the commands, then ``local`` (a client's own commands), then what is a message."""
    return "\n".join(filter(None, (COMMANDS_HELP, local, MESSAGE_HELP)))


HELP_TEXT = help_text()


class Usage(Exception):
    """A command typed wrong; the text says how to type it right."""


@dataclass(frozen=True)
class ShowHelp:
    """``/help``: answered locally, nothing goes on the wire."""


def parse_command(line: str) -> ClientMessage | ShowHelp:
    """Turn one typed line into a message, raising ``Usage`` or a ``ProtocolError``.

    The text and name rules are checked here too, so a person hears about
    a bad name before anything is sent.
    """
    stripped = line.strip()
    if stripped.casefold() in QUIT_WORDS:
        return Bye()
    if not stripped.startswith("/") or stripped.startswith("//"):
        return Say(text=check_text(line[1:] if stripped.startswith("//") else line))
    command, _, rest = stripped.partition(" ")
    command = command.lower()
    rest = rest.strip()
    if command == "/who":
        return Who()
    if command == "/help":
        return ShowHelp()
    if command == "/nick":
        if not rest:
            raise Usage("usage: /nick NAME")
        return Nick(name=check_name(rest))
    if command == "/history":
        return History(limit=history_limit(rest))
    if command in ("/msg", "/dm"):
        to, _, text = rest.partition(" ")
        if not to or not text.strip():
            raise Usage("usage: /msg NAME TEXT")
        return SendDm(to=to, text=check_text(text.strip()))
    raise Usage(f"unknown command {command[:30]}; /help lists the commands")


def history_limit(typed: str) -> int:
    """The N of ``/history [N]``."""
    if not typed:
        return HISTORY_DEFAULT_LIMIT
    if not (typed.isascii() and typed.isdigit() and 1 <= int(typed) <= HISTORY_MAX_LIMIT):
        raise Usage(f"usage: /history [N], N from 1 to {HISTORY_MAX_LIMIT}")
    return int(typed)
