"""The chat's wire codec: frames as typed messages, with no socket in sight.

Contract (the same for the TCP and the UDP transport, and for every client):

* ``decode_client(data)`` and ``decode_server(data)`` take the bytes of one
  frame (a TCP line without its ``\\n``, or one UDP datagram) and return a
  ``Decoded``: the typed message plus the ``seq``/``session`` envelope that UDP
  puts around it. Anything wrong raises a ``ProtocolError`` subclass whose
  ``code`` is the protocol's error code, ready to be sent back as ``error``.
* ``encode(message, seq=..., session=..., limit=...)`` returns the frame's
  bytes (compact JSON, UTF-8, no newline). A list of names that would push the
  frame past ``limit`` is cut to what fits; any other frame past the limit
  raises ``TooLarge``, so nobody ever sends what a peer must refuse.
* ``LineFramer`` turns a TCP byte stream, cut anywhere, into lines. It never
  holds more than one frame's worth of an unfinished line.

Nothing here reads a clock: the server passes ``ts`` in.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, NoReturn, TypeGuard

MAX_FRAME_BYTES = 8192
MAX_TEXT_CHARS = 2000
MAX_NAME_CHARS = 24
NAME_PUNCTUATION = frozenset("_-.")
HISTORY_DEFAULT_LIMIT = 20
HISTORY_MAX_LIMIT = 100
MAX_ACK_RANGES = 16
"""Ranges an ack of packets may list (v1.2 packets); more is ``bad_frame``."""


# --------------------------------------------------------------------------
# Errors: each carries the protocol's code, so a transport answers with
# ``Error(code=exc.code, text=str(exc))`` and nothing more.


class ProtocolError(Exception):
    """Something a peer sent (or asked for) is refused."""

    code: ClassVar[str] = "bad_frame"


class BadFrame(ProtocolError):
    code = "bad_frame"


class TooLarge(ProtocolError):
    code = "too_large"


class UnknownType(ProtocolError):
    code = "unknown_type"


class NotRegistered(ProtocolError):
    code = "not_registered"


class AlreadyRegistered(ProtocolError):
    code = "already_registered"


class NameInvalid(ProtocolError):
    code = "name_invalid"


class NameTaken(ProtocolError):
    code = "name_taken"


class TextInvalid(ProtocolError):
    code = "text_invalid"


class NoSuchUser(ProtocolError):
    code = "no_such_user"


class RateLimited(ProtocolError):
    code = "rate_limited"


class ServerFull(ProtocolError):
    code = "server_full"


class Unavailable(RateLimited):
    """The room is shared through a backplane the server cannot reach just now.

    The protocol has no code of its own for it: like ``rate_limited``, the
    frame is dropped and the session goes on, and the text says why.
    """


# --------------------------------------------------------------------------
# Validation of the two kinds of free-form field.


def name_key(name: str) -> str:
    """The form under which names are compared: case and width folded.

    ``Bob``, ``BOB`` and the full-width ``Ｂｏｂ`` are one user, so nobody can
    pass for someone else by changing case or character width. It is the
    closure of NFKC and case folding (UAX #31's NFKC_Casefold): folding can
    undo a composition (``Ϊ́`` folds to ``ΐ``, which NFKC composes to ``ΐ``,
    whose own fold is decomposed), so the two are repeated until nothing changes.
    """
    key = unicodedata.normalize("NFKC", name)
    while (folded := unicodedata.normalize("NFKC", key.casefold())) != key:
        key = folded
    return key


COMMON, INHERITED = "COMMON", "INHERITED"
SCRIPT_OF_WORD = {
    # Letters of no one script, and the marks that go with any script.
    "DIGIT": COMMON,
    "SPACE": COMMON,
    "MIDDLE": COMMON,
    "MODIFIER": COMMON,
    "CARON": COMMON,
    "KATAKANA-HIRAGANA": COMMON,
    "VERTICAL": COMMON,
    "MASU": COMMON,
    "COMBINING": INHERITED,
    "VARIATION": INHERITED,
    "MUSICAL": INHERITED,
    "PHAISTOS": INHERITED,
    "VEDIC": INHERITED,
    "ZNAMENNY": INHERITED,
    # Scripts whose characters are named after something else.
    "CJK": "HAN",
    "IDEOGRAPHIC": "HAN",
    "VIETNAMESE": "HAN",
    "HENTAIGANA": "HIRAGANA",
    "ARABIC-INDIC": "ARABIC",
    "EXTENDED": "ARABIC",
    "TURNED": "LATIN",
    "ROMAN": "LATIN",
}
SCRIPTS_OF_THEIR_MARKS = frozenset({"CYRILLIC", "DEVANAGARI", "GREEK"})
"""Scripts whose ``COMBINING <SCRIPT> ...`` marks are all their own, not only letters and digits."""
TWO_WORD_SCRIPTS = frozenset({"OLD", "TAI", "INSCRIPTIONAL", "LINEAR", "MEROITIC"})
"""First words that several scripts share (OLD ITALIC, OLD PERSIAN, ...): the second tells."""
SCRIPTS_USED_TOGETHER = (
    frozenset({"LATIN", "HAN", "HIRAGANA", "KATAKANA"}),
    frozenset({"LATIN", "HAN", "BOPOMOFO"}),
    frozenset({"LATIN", "HAN", "HANGUL"}),
)
INVISIBLE_IN_NAMES = frozenset(
    chr(code)
    for first, last in (
        (0x034F, 0x034F),  # combining grapheme joiner
        (0x115F, 0x1160),  # Hangul choseong and jungseong fillers
        (0x17B4, 0x17B5),  # Khmer inherent vowels
        (0x180B, 0x180D),  # Mongolian free variation selectors
        (0x180F, 0x180F),
        (0x3164, 0x3164),  # Hangul filler
        (0xFE00, 0xFE0F),  # variation selectors
        (0xFFA0, 0xFFA0),  # halfwidth Hangul filler
        (0x16FE4, 0x16FE4),  # Khitan small script filler
        (0xE0100, 0xE01EF),  # variation selectors supplement
    )
    for code in range(first, last + 1)
)
"""Letters and marks that show nothing: Unicode's default-ignorable ones, and the Khitan filler."""
MAX_MARKS_IN_A_ROW = 4
"""More non-spacing marks on one letter only pile up over the lines around (UTS #39, 5.4)."""


def script(ch: str) -> str:
    """The script ``ch`` is written in, as the first word(s) of its Unicode name.

    Python has no Script property, but Unicode names every letter, mark
    and digit of a script after it (``CYRILLIC CAPITAL LETTER IE``,
    ``DEVANAGARI VOWEL SIGN E``, ``THAI CHARACTER KO KAI``): the first
    word is the script, which needs no table of ranges to keep up with
    new versions of Unicode. ``SCRIPT_OF_WORD`` covers the exceptions
    among letters, marks and digits once they are NFKC-folded (which
    turns ``Ｂ`` and ``𝐁`` into ``B``): ideographs named ``CJK ...``, the
    few letters of no one script (``ー``, ``ʼ``, ``0``) and the marks
    that go with any (``COMBINING ACUTE ACCENT``; but ``COMBINING
    CYRILLIC LETTER A`` is Cyrillic). Checked against Unicode's own
    Script property for every such character: where the two differ, this
    is stricter (``𝐁`` counts as Latin, Unicode says Common), except that
    a few historic scripts that share one first word are told apart by
    the second. A character without a name (the Tangut ideographs, in
    some versions of Python) is a script of its own, ``""``.
    """
    words = unicodedata.name(ch, "").split(" ")
    if words[0] == "COMBINING" and (
        "LETTER" in words or "DIGIT" in words or words[1] in SCRIPTS_OF_THEIR_MARKS
    ):
        words = words[1:]
    first = " ".join(words[:2]) if words[0] in TWO_WORD_SCRIPTS else words[0]
    return SCRIPT_OF_WORD.get(first, first)


def name_scripts(name: str) -> frozenset[str]:
    """The scripts of ``name`` as it is compared (NFKC), besides Common and Inherited."""
    folded = unicodedata.normalize("NFKC", name)
    scripts = {script(ch) for ch in folded if ch not in NAME_PUNCTUATION}
    return frozenset(scripts - {COMMON, INHERITED})


def check_name(name: object) -> str:
    """Return ``name`` if it is a valid user name, else raise ``NameInvalid``.

    Beyond the protocol's letters, digits, ``_``, ``-`` and ``.``, a name
    may hold the marks its script needs (``नमस्ते``), after a letter, a
    few at a time. A name must be visible: no filler letter that shows
    nothing (``U+3164``). And it is written in one script, or in
    one of the combinations that languages use (Han with Hiragana and
    Katakana, with Bopomofo, or with Hangul, any of them with Latin),
    which is UTS #39's "highly restrictive" level: ``Eve`` with a
    Cyrillic ``Е`` would pass for ``Eve``, so it is refused.
    """
    if not isinstance(name, str):
        raise NameInvalid("a name must be a string")
    if not 1 <= len(name) <= MAX_NAME_CHARS:
        raise NameInvalid(f"a name has 1 to {MAX_NAME_CHARS} characters")
    marks = 0
    for i, ch in enumerate(name):
        category = unicodedata.category(ch)
        if ch in INVISIBLE_IN_NAMES:
            raise NameInvalid(f"a name is visible: U+{ord(ch):04X} shows nothing")
        if category[0] == "M":
            if i == 0:
                raise NameInvalid("a name starts with a letter or digit, not a combining mark")
            marks = marks + 1 if category != "Mc" else 0
            if marks > MAX_MARKS_IN_A_ROW:
                raise NameInvalid(f"at most {MAX_MARKS_IN_A_ROW} marks on one letter")
            continue
        marks = 0
        if not (ch.isalpha() or category == "Nd" or ch in NAME_PUNCTUATION):
            raise NameInvalid(f"a name holds only letters, digits, '_', '-' and '.', not {ch!r}")
    scripts = name_scripts(name)
    if len(scripts) > 1 and not any(scripts <= used for used in SCRIPTS_USED_TOGETHER):
        mixed = " and ".join(sorted(s.title() for s in scripts))
        raise NameInvalid(f"a name is written in one script, not {mixed}")
    return name


def check_text(text: object) -> str:
    """Return ``text`` if it is a valid message text, else raise ``TextInvalid``.

    Control characters (except tab) and lone surrogates are refused: the first
    could rewrite a reader's terminal, the second cannot even be encoded.
    """
    if not isinstance(text, str):
        raise TextInvalid("a text must be a string")
    if not 1 <= len(text) <= MAX_TEXT_CHARS:
        raise TextInvalid(f"a text has 1 to {MAX_TEXT_CHARS} characters")
    if text.isprintable():  # the common case, checked in C: no control character at all
        return text
    for ch in text:
        if ch != "\t" and unicodedata.category(ch) in ("Cc", "Cs"):
            raise TextInvalid(f"a text holds no control characters, found U+{ord(ch):04X}")
    return text


def _is_seq(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_seq(value: object) -> int:
    if not _is_seq(value):
        raise BadFrame("seq is a whole number from 1 up")
    return value


# --------------------------------------------------------------------------
# Messages from client to server.


@dataclass(frozen=True, kw_only=True)
class Resume:
    """Where a client left off: its old ``session``, the room's ``epoch`` then, the last ``id``.

    ``after`` is None when the client saw no ``id`` and its welcome's ``last`` was null.
    """

    session: str
    epoch: str
    after: str | None = None


@dataclass(frozen=True, kw_only=True)
class Hello:
    """``hello``; ``resumable`` keeps the place through a broken connection, ``resume`` asks
    for a session and the messages missed since (v1.2)."""

    type: ClassVar[str] = "hello"
    name: str
    reliable: bool = False
    packets: bool = False
    pad: str = ""
    resumable: bool = False
    resume: Resume | None = None


@dataclass(frozen=True, kw_only=True)
class Say:
    type: ClassVar[str] = "say"
    text: str


@dataclass(frozen=True, kw_only=True)
class SendDm:
    type: ClassVar[str] = "dm"
    to: str
    text: str


@dataclass(frozen=True, kw_only=True)
class Who:
    type: ClassVar[str] = "who"


@dataclass(frozen=True, kw_only=True)
class Nick:
    type: ClassVar[str] = "nick"
    name: str


@dataclass(frozen=True, kw_only=True)
class Ping:
    type: ClassVar[str] = "ping"


@dataclass(frozen=True, kw_only=True)
class Bye:
    """``bye``: from a client it means "I leave"; from the server, "you are out"."""

    type: ClassVar[str] = "bye"
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class Ack:
    type: ClassVar[str] = "ack"
    seq: int


@dataclass(frozen=True, kw_only=True)
class AckRanges:
    """``ack`` of a packet session (v1.2): the packet numbers received, largest range first.

    ``ranges`` are ``(hi, lo)`` pairs, ``hi >= lo``, each below the one before;
    ``delay`` is how long, in milliseconds, the sender of the ack held it.
    """

    type: ClassVar[str] = "ack"
    ranges: tuple[tuple[int, int], ...]
    delay: int = 0


@dataclass(frozen=True, kw_only=True)
class History:
    """``history``: the ``limit`` most recent messages from before this session's welcome."""

    type: ClassVar[str] = "history"
    limit: int = HISTORY_DEFAULT_LIMIT


# --------------------------------------------------------------------------
# Messages from server to client.


@dataclass(frozen=True, kw_only=True)
class Welcome:
    """``welcome``: since v1.2 every one carries ``session``, ``epoch`` and ``last`` (what a
    client needs to resume later), on TCP too; a 1.1 client ignores them. Like ``id``,
    they are not part of ``==``: two welcomes are equal when they say the same to a person."""

    type: ClassVar[str] = "welcome"
    name: str
    users: tuple[str, ...]
    count: int
    session: str = field(default="", compare=False)
    epoch: str = field(default="", compare=False)
    last: str | None = field(default=None, compare=False)


@dataclass(frozen=True, kw_only=True)
class Msg:
    """A message to the room; ``history`` marks a copy sent in answer to ``history``."""

    type: ClassVar[str] = "msg"
    sender: str
    text: str
    ts: int
    history: bool = False
    id: str = field(default="", compare=False)  # where it stands in the room, not what it says


@dataclass(frozen=True, kw_only=True)
class Dm:
    type: ClassVar[str] = "dm"
    sender: str
    to: str
    text: str
    ts: int


@dataclass(frozen=True, kw_only=True)
class Joined:
    type: ClassVar[str] = "joined"
    name: str
    ts: int
    id: str = field(default="", compare=False)  # where it stands in the room, not what it says


@dataclass(frozen=True, kw_only=True)
class Left:
    type: ClassVar[str] = "left"
    name: str
    reason: str
    ts: int
    id: str = field(default="", compare=False)  # where it stands in the room, not what it says


@dataclass(frozen=True, kw_only=True)
class Renamed:
    type: ClassVar[str] = "renamed"
    old: str
    new: str
    ts: int
    id: str = field(default="", compare=False)  # where it stands in the room, not what it says


@dataclass(frozen=True, kw_only=True)
class Users:
    type: ClassVar[str] = "users"
    names: tuple[str, ...]
    count: int


@dataclass(frozen=True, kw_only=True)
class Pong:
    type: ClassVar[str] = "pong"


@dataclass(frozen=True, kw_only=True)
class HistoryEnd:
    """``history_end``; ``resumed`` (True or False) only where it ends a resume's answer."""

    type: ClassVar[str] = "history_end"
    count: int
    resumed: bool | None = None


@dataclass(frozen=True, kw_only=True)
class Error:
    type: ClassVar[str] = "error"
    code: str
    text: str

    @classmethod
    def of(cls, exc: ProtocolError) -> Error:
        return cls(code=exc.code, text=str(exc))


ClientMessage = Hello | Say | SendDm | Who | Nick | Ping | Bye | Ack | AckRanges | History
ServerMessage = (
    Welcome
    | Msg
    | Dm
    | Joined
    | Left
    | Renamed
    | Users
    | Pong
    | Error
    | Bye
    | Ack
    | AckRanges
    | HistoryEnd
)
Message = ClientMessage | ServerMessage


@dataclass(frozen=True, kw_only=True)
class Decoded:
    """One decoded frame: the message and the UDP envelope around it."""

    message: Any
    seq: int | None = None
    session: str | None = None
    fields: dict[str, Any] = field(default_factory=dict, repr=False)


# --------------------------------------------------------------------------
# Decoding.


def _load_object(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_FRAME_BYTES:
        raise TooLarge(f"a frame is at most {MAX_FRAME_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadFrame(f"a frame is UTF-8; byte {exc.start} is not") from None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise BadFrame("a frame is one JSON object") from None
    if not isinstance(obj, dict):
        raise BadFrame("a frame is a JSON object")
    if not isinstance(obj.get("type"), str):
        raise BadFrame("a frame has a string field 'type'")
    return obj


def _envelope(obj: dict[str, Any]) -> tuple[int | None, str | None]:
    """The UDP envelope; a malformed one reads as absent (TCP does not use it)."""
    seq = obj.get("seq")
    session = obj.get("session")
    return (seq if _is_seq(seq) else None), (session if isinstance(session, str) else None)


def _client_message(obj: dict[str, Any]) -> ClientMessage:
    kind = obj["type"]
    if kind == "hello":
        pad = obj.get("pad", "")
        return Hello(
            name=check_name(obj.get("name")),
            reliable=obj.get("reliable") is True,
            packets=obj.get("packets") is True,
            pad=pad if isinstance(pad, str) else "",
            resumable=obj.get("resumable") is True,
            resume=_resume(obj.get("resume")),
        )
    if kind == "say":
        return Say(text=check_text(obj.get("text")))
    if kind == "dm":
        to = obj.get("to")
        if not isinstance(to, str) or not to:
            raise NoSuchUser("a dm names its receiver in 'to'")
        return SendDm(to=to, text=check_text(obj.get("text")))
    if kind == "who":
        return Who()
    if kind == "nick":
        return Nick(name=check_name(obj.get("name")))
    if kind == "ping":
        return Ping()
    if kind == "bye":
        return Bye()
    if kind == "ack":
        return _ack(obj)
    if kind == "history":
        return History(limit=_history_limit(obj.get("limit", HISTORY_DEFAULT_LIMIT)))
    raise UnknownType(f"unknown frame type {kind[:40]!r}")


MAX_RESUME_FIELD = 200
"""Characters a ``resume`` field may have: tokens, epochs and ids are far shorter."""


def _resume(value: object) -> Resume | None:
    """A hello's ``resume``: absent or null is none; anything but the protocol's form is refused."""
    if value is None:
        return None
    if isinstance(value, dict):
        session, epoch, after = value.get("session"), value.get("epoch"), value.get("after")
        if (
            isinstance(session, str)
            and isinstance(epoch, str)
            and (after is None or isinstance(after, str))
            and all(len(s) <= MAX_RESUME_FIELD for s in (session, epoch, after or ""))
        ):
            return Resume(session=session, epoch=epoch, after=after)
    raise BadFrame('resume is {"session": S, "epoch": E, "after": ID or null}, each a short string')


def _ack(obj: dict[str, Any]) -> Ack | AckRanges:
    """A 1.0 ack names a ``seq``; a packet session's lists ``ranges`` of packet numbers."""
    if "ranges" not in obj:
        return Ack(seq=_check_seq(obj.get("seq")))
    ranges, delay = obj["ranges"], obj.get("delay", 0)
    if not isinstance(ranges, list) or not 1 <= len(ranges) <= MAX_ACK_RANGES:
        raise BadFrame(f"an ack lists 1 to {MAX_ACK_RANGES} ranges")
    pairs: list[tuple[int, int]] = []
    below: int | None = None
    for pair in ranges:
        if not (isinstance(pair, list) and len(pair) == 2 and all(map(_is_pn, pair))):
            raise BadFrame("an ack range is [HI, LO], two packet numbers")
        hi, lo = pair
        if hi < lo or (below is not None and hi >= below):
            raise BadFrame("ack ranges have HI >= LO, largest first, apart")
        pairs.append((hi, lo))
        below = lo
    if not _is_pn(delay):
        raise BadFrame("an ack's delay is a whole number of milliseconds from 0 up")
    return AckRanges(ranges=tuple(pairs), delay=delay)


def _is_pn(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _history_limit(value: object) -> int:
    if not (_is_seq(value) and value <= HISTORY_MAX_LIMIT):
        raise BadFrame(f"history's limit is a whole number from 1 to {HISTORY_MAX_LIMIT}")
    return value


_PLAIN_ACK = re.compile(rb'\{"type":"ack","seq":([1-9][0-9]{0,17}),"session":"([0-9a-f]{1,64})"\}')
"""An ack as clients write it. Acks are most of what a busy reliable room sends the server,
so this form is read without the JSON parser; any other spelling takes the general path."""


_ONE_RANGE_ACK = re.compile(
    rb'\{"type":"ack","ranges":\[\[(0|[1-9][0-9]{0,17}),(0|[1-9][0-9]{0,17})\]\],"delay":(0|[1-9][0-9]{0,17})\}'
)
"""A packet session's ack of one range as clients write it: most of what a busy reliable room
sends the server in packets, read without the JSON parser too."""


def decode_client(data: bytes) -> Decoded:
    """Decode one client-to-server frame, validating every field the server uses."""
    if (ack := _PLAIN_ACK.fullmatch(data)) is not None:
        acked = int(ack[1])
        return Decoded(message=Ack(seq=acked), seq=acked, session=ack[2].decode("ascii"))
    if (one := _ONE_RANGE_ACK.fullmatch(data)) is not None and int(one[1]) >= int(one[2]):
        ranges = ((int(one[1]), int(one[2])),)
        return Decoded(message=AckRanges(ranges=ranges, delay=int(one[3])), seq=None, session=None)
    obj = _load_object(data)
    seq, session = _envelope(obj)
    return Decoded(message=_client_message(obj), seq=seq, session=session)


def _names(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(n for n in value if isinstance(n, str))


def _str(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key, "")
    return value if isinstance(value, str) else str(value)


def _int(obj: dict[str, Any], key: str) -> int:
    value = obj.get(key, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _str_or_none(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) else None


def _server_message(obj: dict[str, Any]) -> ServerMessage:
    kind = obj["type"]
    if kind == "welcome":
        return Welcome(
            name=_str(obj, "name"),
            users=_names(obj.get("users")),
            count=_int(obj, "count"),
            session=_str(obj, "session"),
            epoch=_str(obj, "epoch"),
            last=_str_or_none(obj, "last"),
        )
    if kind == "msg":
        return Msg(
            sender=_str(obj, "from"),
            text=_str(obj, "text"),
            ts=_int(obj, "ts"),
            history=obj.get("history") is True,
            id=_str(obj, "id"),
        )
    if kind == "dm":
        return Dm(
            sender=_str(obj, "from"), to=_str(obj, "to"), text=_str(obj, "text"), ts=_int(obj, "ts")
        )
    if kind == "joined":
        return Joined(name=_str(obj, "name"), ts=_int(obj, "ts"), id=_str(obj, "id"))
    if kind == "left":
        return Left(
            name=_str(obj, "name"),
            reason=_str(obj, "reason"),
            ts=_int(obj, "ts"),
            id=_str(obj, "id"),
        )
    if kind == "renamed":
        return Renamed(
            old=_str(obj, "old"), new=_str(obj, "new"), ts=_int(obj, "ts"), id=_str(obj, "id")
        )
    if kind == "users":
        return Users(names=_names(obj.get("names")), count=_int(obj, "count"))
    if kind == "pong":
        return Pong()
    if kind == "error":
        return Error(code=_str(obj, "code"), text=_str(obj, "text"))
    if kind == "bye":
        return Bye(reason=_str(obj, "reason"))
    if kind == "ack":
        return _ack(obj)
    if kind == "history_end":
        resumed = obj.get("resumed")
        return HistoryEnd(
            count=_int(obj, "count"), resumed=resumed if isinstance(resumed, bool) else None
        )
    raise UnknownType(f"unknown frame type {kind[:40]!r}")


def decode_server(data: bytes) -> Decoded:
    """Decode one server-to-client frame.

    A client is lenient about the server's fields (a missing one reads as
    empty) and leaves every safety check of what it shows to its display:
    it must stay safe even against a server that lets anything through.
    """
    obj = _load_object(data)
    seq, session = _envelope(obj)
    return Decoded(message=_server_message(obj), seq=seq, session=session, fields=obj)


# --------------------------------------------------------------------------
# Encoding.


WIRE_NAMES = {"sender": "from"}
OMITTED_WHEN_EMPTY = frozenset(
    {"reliable", "packets", "pad", "reason", "history", "resumable", "id", "session", "epoch"}
)
"""Fields left out when false or empty."""
OMITTED_WHEN_NONE = frozenset({"resume", "resumed", "last"})
"""Fields left out when None; but a welcome's ``last`` is null in a room that has said
nothing yet, and is left out only from a welcome without ``epoch`` (a 1.1 welcome)."""


def _wire_fields(message: Message) -> dict[str, Any]:
    """The JSON object of a message, its fields in declaration order."""
    out: dict[str, Any] = {}
    for f in fields(message):
        name = f.name
        value = getattr(message, name)
        if name in OMITTED_WHEN_EMPTY:
            if not value:
                continue
        elif name in OMITTED_WHEN_NONE:
            if value is None and not (isinstance(message, Welcome) and message.epoch):
                continue
            if isinstance(value, Resume):
                value = {"session": value.session, "epoch": value.epoch, "after": value.after}
        out[WIRE_NAMES.get(name, name)] = list(value) if isinstance(value, tuple) else value
    return out


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def encode(
    message: Message,
    *,
    seq: int | None = None,
    session: str | None = None,
    limit: int = MAX_FRAME_BYTES,
) -> bytes:
    """Encode a message as one frame of at most ``limit`` bytes.

    For TCP, ``limit`` counts the ``\\n`` the transport adds, so a TCP caller
    passes ``MAX_FRAME_BYTES - 1``. A ``welcome`` or ``users`` list is cut to
    fit (``count`` still tells how many there are); anything else too big
    raises ``TooLarge``.
    """
    obj: dict[str, Any] = {"type": message.type, **_wire_fields(message)}
    if session is not None:
        obj["session"] = session
    if seq is not None:
        obj["seq"] = seq
    if isinstance(message, (Welcome, Users)):
        _fit_names(obj, "users" if isinstance(message, Welcome) else "names", limit)
    frame = _dumps(obj)
    if len(frame) > limit:
        raise TooLarge(f"the frame would be {len(frame)} bytes, more than {limit}")
    return frame


def _fit_names(obj: dict[str, Any], key: str, limit: int) -> None:
    """Cut the list ``obj[key]`` to what fits in ``limit`` bytes, costing only what it keeps."""
    names: list[str] = obj[key]
    obj[key] = []
    room = limit - len(_dumps(obj))
    kept: list[str] = []
    for name in names:
        room -= _json_size(name) + (1 if kept else 0)
        if room < 0:
            break
        kept.append(name)
    obj[key] = kept


def _json_size(text: str) -> int:
    """Bytes of ``text`` as a JSON string; a name (printable, no quote) is counted, not encoded.

    A welcome in a room of thousands sizes hundreds of names: this keeps a join cheap.
    """
    if text.isprintable() and '"' not in text and "\\" not in text:
        return len(text.encode("utf-8")) + 2
    return len(_dumps(text))


ENVELOPE_ROOM = 64
"""Bytes kept free in a frame built from a client's text: for the ``id`` the room gives it
(a Redis stream id is some 15 to 20 characters) and a UDP ``seq``."""


def encode_checked(message: ServerMessage) -> bytes:
    """Encode a message built from a client's text, refusing one too big to send.

    The limit leaves room for the UDP envelope, so a text is accepted or
    refused the same way by both servers. Nobody gets part of it: the
    refusal comes before the first copy is queued.
    """
    try:
        return encode(message, limit=MAX_FRAME_BYTES - ENVELOPE_ROOM)
    except TooLarge:
        raise TextInvalid("that message is too long once encoded; send it in parts") from None


def encode_line(message: Message) -> bytes:
    """Encode a message as one TCP line, ``\\n`` included."""
    return encode(message, limit=MAX_FRAME_BYTES - 1) + b"\n"


# --------------------------------------------------------------------------
# TCP framing.


class LineFramer:
    """Split a TCP byte stream into lines, keeping the unfinished tail.

    ``feed(data)`` returns the complete lines in ``data`` (without ``\\n`` or
    a trailing ``\\r``). A blank line comes out empty: the protocol ignores
    it, but a server still counts it against the rate limit. A line longer
    than the frame limit raises ``TooLarge`` as soon as that is certain,
    without waiting for its end: the buffer never grows past one frame.
    """

    def __init__(self, limit: int = MAX_FRAME_BYTES) -> None:
        self._limit = limit
        self._tail = b""

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Yield the lines ``data`` completes, in order.

        A line that is too long raises ``TooLarge`` where it stands, so the
        good lines before it are still handled.
        """
        buffer = self._tail + data if self._tail else data
        lines = buffer.split(b"\n")
        self._tail = lines.pop()
        for line in lines:
            if len(line) >= self._limit:
                self._refuse()
            if line.endswith(b"\r"):
                line = line[:-1]
            yield line if line.strip() else b""
        if len(self._tail) >= self._limit:
            self._refuse()

    def _refuse(self) -> NoReturn:
        """Give up on the stream: a frame boundary can no longer be trusted."""
        self._tail = b""
        raise TooLarge(f"a line is at most {self._limit} bytes")

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held back."""
        return len(self._tail)
