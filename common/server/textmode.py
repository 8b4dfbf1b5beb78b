"""Text mode (``nc``, ``telnet``, the assignment's client) as a codec: lines in, messages
out, the room's entries back as readable text. Sans-IO: the transport frames and moves bytes.

A session is in text mode when the first byte it sends that is not blank is not ``{``. Its
first line is the name to join under; then every line is a message or a command
(``common.terminal.commands``). What it gets back is what a terminal client would show.
"""

from __future__ import annotations

from common.protocol.codec import ClientMessage, Dm, Hello, HistoryEnd, Msg, Renamed, check_name
from common.room.room import Entry
from common.terminal.commands import HELP_TEXT, ShowHelp, Usage, parse_command
from common.terminal.render import NOTHING_EARLIER, text_mode_line

TEXT_HISTORY = 10
"""Earlier messages a text-mode session is shown right after its greeting."""
TEXT_SILENCE = 0.1
"""Seconds of silence after which a text-mode session's unfinished line counts as a line: the
assignment's own client sends its user's name and each message with no line end."""
GREETING = "* type a message and press Enter; /help lists the commands"


def is_text(first: bytes) -> bool:
    """Whether a session whose first bytes that are not blank are ``first`` is in text mode."""
    return not first.startswith(b"{")


class TextMode:
    """One text-mode session's codec: ``read`` a typed line, ``write`` what it is sent."""

    def __init__(self) -> None:
        self._history_answers = 0  # the first is the greeting's

    @staticmethod
    def read(line: bytes, joined: bool) -> ClientMessage | str:
        """What a typed line asks for; or, as text, the answer it gets from text mode itself.

        Before the session joined, a line is the name it joins under (a bad name raises the
        codec's ``ProtocolError``, as a bad ``hello`` does).
        """
        try:
            text = line.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            return "! that line is not UTF-8"
        if not joined:
            return Hello(name=check_name(text.strip()))
        try:
            command = parse_command(text)
        except Usage as exc:
            return f"! {exc}"
        if isinstance(command, ShowHelp):
            return HELP_TEXT
        return command

    def write(self, entries: list[Entry], me: str) -> bytes:
        """The entries as the session shows them; an empty answer to a ``/history`` the user
        typed (not the greeting's) says so."""
        out = []
        for entry in entries:
            if isinstance(entry.message, HistoryEnd):
                self._history_answers += 1
                if self._history_answers > 1 and entry.message.count == 0:
                    out.append(NOTHING_EARLIER.plain().encode() + b"\n")
                    continue
            out.append(text_line(entry, me))
        return b"".join(out)


def plain(text: str) -> Entry:
    """A line of text mode's own, as an entry the room can queue in its place."""
    return Entry(None, (text + "\n").encode("utf-8"))


def text_line(entry: Entry, me: str) -> bytes:
    """An entry as a text-mode session shows it; made once unless it speaks of ``me``."""
    message = entry.message
    if message is None:
        return entry.line
    personal = (
        isinstance(message, Dm)
        or (isinstance(message, Msg) and message.sender == me)
        or (isinstance(message, Renamed) and me in (message.old, message.new))
    )
    if personal:
        return text_mode_line(message, me)
    if entry.cache is None:
        entry.cache = text_mode_line(message, "")
    return entry.cache
