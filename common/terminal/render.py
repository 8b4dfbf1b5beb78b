"""Server messages as lines a person reads.

Used by the terminal clients and by the server's text mode. Everything that
came from the network goes through ``safe`` first: a peer (or a server that
lets anything through) must not be able to move the cursor, clear, retitle
or spoof a reader's screen with control characters or escape sequences.
"""

from __future__ import annotations

import time
import unicodedata
from dataclasses import dataclass

from common.protocol.codec import (
    Bye,
    Dm,
    Error,
    HistoryEnd,
    Joined,
    Left,
    Msg,
    Renamed,
    ServerMessage,
    Users,
    Welcome,
)

UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})

LEFT_REASONS = {
    "quit": "left",
    "disconnected": "disconnected",
    "timeout": "timed out",
    "too_slow": "was dropped (too slow to read)",
    "shutdown": "left (server shutdown)",
}


def safe(text: str) -> str:
    """``text`` with every control or formatting character made visible and inert."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch == "\t":
            out.append("    ")
        elif unicodedata.category(ch) in UNSAFE_CATEGORIES:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def clock(ts_ms: int) -> str:
    """The local wall-clock time of a server timestamp, HH:MM:SS."""
    if ts_ms <= 0:
        return time.strftime("%H:%M:%S")
    return time.strftime("%H:%M:%S", time.localtime(ts_ms / 1000))


@dataclass(frozen=True)
class Line:
    """One line to show. ``kind`` is chat, dm, system or error.

    ``own``: a chat line of the reader's own; ``earlier``: one said before
    the reader joined (an answer to ``history``), marked as such in plain
    text too, so that it is never taken for live chat.
    """

    kind: str
    text: str
    time: str = ""
    who: str = ""
    own: bool = False
    earlier: bool = False

    def plain(self) -> str:
        stamp = f"{self.time} " if self.time else ""
        if self.kind == "chat" and self.earlier:
            return f"{stamp}earlier <{self.who}> {self.text}"
        if self.kind == "chat":
            you = " (you)" if self.own else ""
            return f"{stamp}<{self.who}{you}> {self.text}"
        if self.kind == "dm":
            return f"{stamp}[{self.who}] {self.text}"
        if self.kind == "error":
            return f"! {self.text}"
        return f"{stamp}* {self.text}"


NOTHING_EARLIER = Line("system", "nothing was said before you joined")
"""What an empty answer to a ``/history`` the user typed shows; the one asked for on joining
shows nothing."""


def describe(message: ServerMessage, me: str = "") -> Line | None:
    """The line that shows ``message`` to the user named ``me`` (None: nothing to show)."""
    if isinstance(message, Msg):
        return Line(
            "chat",
            safe(message.text),
            clock(message.ts),
            safe(message.sender),
            own=message.sender == me and not message.history,
            earlier=message.history,
        )
    if isinstance(message, HistoryEnd):
        if message.count <= 0:
            return None
        plural = "s" if message.count != 1 else ""
        return Line("system", f"{message.count} earlier message{plural} above")
    if isinstance(message, Dm):
        own = message.sender == me
        who = f"dm to {safe(message.to)}" if own else f"dm from {safe(message.sender)}"
        return Line("dm", safe(message.text), clock(message.ts), who, own=own)
    if isinstance(message, Joined):
        return Line("system", f"{safe(message.name)} joined", clock(message.ts))
    if isinstance(message, Left):
        how = LEFT_REASONS.get(message.reason, f"left ({safe(message.reason)})")
        return Line("system", f"{safe(message.name)} {how}", clock(message.ts))
    if isinstance(message, Renamed):
        # Either name may be ``me``, whether the reader has caught up with the rename or not.
        if me in (message.old, message.new):
            return Line("system", f"you are now {safe(message.new)}", clock(message.ts))
        return Line("system", f"{safe(message.old)} is now {safe(message.new)}", clock(message.ts))
    if isinstance(message, (Users, Welcome)):
        return _online(message)
    if isinstance(message, Error):
        return Line("error", safe(message.text or message.code))
    return None


def _online(message: Users | Welcome) -> Line:
    """Who is online, as ``who`` answers it or a welcome tells it."""
    if isinstance(message, Users):
        more = (
            ""
            if len(message.names) >= message.count
            else f" and {message.count - len(message.names)} more"
        )
        names = ", ".join(safe(n) for n in message.names)
        return Line("system", f"online ({message.count}): {names}{more}")
    others = [safe(n) for n in message.users if n != message.name]
    who = ", ".join(others) if others else "nobody else yet"
    return Line("system", f"welcome, {safe(message.name)}! online: {who} ({message.count} in all)")


def text_mode_line(message: ServerMessage, me: str) -> bytes:
    """``message`` as the TCP server's text mode (``nc``) shows it to ``me``: one or two lines."""
    if isinstance(message, Bye):
        return b"* the server is shutting down\n"
    line = describe(message, me)
    text = "" if line is None else line.plain() + "\n"
    if isinstance(message, HistoryEnd):
        text += "* live chat follows\n"
    return text.encode("utf-8")
