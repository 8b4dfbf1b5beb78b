"""The codec: every frame type, every rule, any split of the byte stream."""

from __future__ import annotations

import contextlib
import json
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.protocol.codec import (
    MAX_FRAME_BYTES,
    MAX_NAME_CHARS,
    MAX_TEXT_CHARS,
    Ack,
    BadFrame,
    Bye,
    Decoded,
    Dm,
    Error,
    Hello,
    HistoryEnd,
    Joined,
    Left,
    LineFramer,
    Msg,
    NameInvalid,
    Nick,
    NoSuchUser,
    Ping,
    ProtocolError,
    Renamed,
    Resume,
    Say,
    SendDm,
    TextInvalid,
    TooLarge,
    UnknownType,
    Users,
    Welcome,
    Who,
    check_name,
    check_text,
    decode_client,
    decode_server,
    encode,
    encode_line,
    name_key,
    script,
)


def frame(**fields: object) -> bytes:
    return json.dumps(fields, ensure_ascii=False).encode()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (frame(type="hello", name="Алиса"), Hello(name="Алиса")),
        (frame(type="hello", name="bob_2", reliable=True), Hello(name="bob_2", reliable=True)),
        (frame(type="say", text="hi\tthere"), Say(text="hi\tthere")),
        (frame(type="dm", to="BOB", text="psst"), SendDm(to="BOB", text="psst")),
        (frame(type="who"), Who()),
        (frame(type="nick", name="a.b-c"), Nick(name="a.b-c")),
        (frame(type="ping", extra="ignored"), Ping()),
        (frame(type="bye"), Bye()),
        (frame(type="ack", seq=3), Ack(seq=3)),
    ],
)
def test_decodes_every_client_frame(data: bytes, expected: object) -> None:
    assert decode_client(data).message == expected


def test_envelope_carries_seq_and_session() -> None:
    decoded = decode_client(frame(type="say", text="x", seq=7, session="ab"))
    assert (decoded.seq, decoded.session) == (7, "ab")
    malformed = decode_client(frame(type="say", text="x", seq="7", session=5))
    assert (malformed.seq, malformed.session) == (None, None)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"not json", BadFrame),
        (b"[1,2]", BadFrame),
        (b'{"name":"x"}', BadFrame),
        (b'{"type":5}', BadFrame),
        (b'{"type":"say","text":"\xff"}', BadFrame),
        (b"[" * 4000 + b"]" * 4000, BadFrame),
        (b'{"type":"dance"}', UnknownType),
        (frame(type="hello"), NameInvalid),
        (frame(type="hello", name=""), NameInvalid),
        (frame(type="hello", name="x" * (MAX_NAME_CHARS + 1)), NameInvalid),
        (frame(type="hello", name="bob smith"), NameInvalid),
        (frame(type="nick", name="a/b"), NameInvalid),
        (frame(type="say"), TextInvalid),
        (frame(type="say", text=""), TextInvalid),
        (frame(type="say", text=5), TextInvalid),
        (frame(type="say", text="x" * (MAX_TEXT_CHARS + 1)), TextInvalid),
        (frame(type="say", text="bell\x07"), TextInvalid),
        (frame(type="say", text="esc\x1b[2J"), TextInvalid),
        (frame(type="say", text="del\x7f"), TextInvalid),
        (frame(type="say", text="c1\x9b"), TextInvalid),
        (b'{"type":"say","text":"\\ud800"}', TextInvalid),
        (frame(type="dm", text="hi"), NoSuchUser),
        (frame(type="ack", seq=0), BadFrame),
        (frame(type="ack", seq=True), BadFrame),
        (b" " * (MAX_FRAME_BYTES + 1), TooLarge),
    ],
)
def test_refuses_bad_frames_with_their_code(data: bytes, error: type[ProtocolError]) -> None:
    with pytest.raises(error) as caught:
        decode_client(data)
    assert caught.value.code == error.code
    assert str(caught.value)


def test_a_frame_of_exactly_the_limit_decodes_and_one_byte_more_does_not() -> None:
    """The protocol's 8192 bytes are a frame's whole size: a datagram of exactly that passes."""
    padding = b'{"type":"say","text":"hi","pad":""}'
    exact = padding[:-2] + b"x" * (MAX_FRAME_BYTES - len(padding)) + b'"}'
    assert len(exact) == MAX_FRAME_BYTES
    assert decode_client(exact).message == Say(text="hi")
    with pytest.raises(TooLarge):
        decode_client(exact[:-2] + b'x"}')


def test_error_codes_match_the_protocol() -> None:
    codes = {cls.code for cls in ProtocolError.__subclasses__()}
    assert codes == {
        "bad_frame", "too_large", "unknown_type", "not_registered", "already_registered",
        "name_invalid", "name_taken", "text_invalid", "no_such_user", "rate_limited",
        "server_full",
    }  # fmt: skip


def test_names_compare_without_case_or_width() -> None:
    assert name_key("Bob") == name_key("BOB") == name_key("Ｂｏｂ")
    assert name_key("Алиса") == name_key("АЛИСА")
    assert name_key("\u0390") == name_key("\u03aa\u0301")  # ΐ and Ϊ́
    assert name_key("\u03b0") == name_key("\u03ab\u0301")  # ΰ and Ϋ́
    assert name_key("ǅ") == name_key("Ǆ") == name_key("ǆ") == name_key("DŽ")


@given(st.text(max_size=12))
def test_the_name_key_is_its_own_key(name: str) -> None:
    """NFKC_Casefold is a closure: a key folds to itself, so two names equal once are equal."""
    assert name_key(name_key(name)) == name_key(name)
    assert check_name("Алиса") == "Алиса"
    assert check_name("x" * MAX_NAME_CHARS) == "x" * MAX_NAME_CHARS


@pytest.mark.parametrize(
    "name",
    [
        "Алиса", "bob_2", "Боб", "Ｂｏｂ", "a.b-c", "José", "Jose\u0301", "Ελένη", "محمد",
        "تست۱۲۳", "नमस्ते", "ப்ரியா", "ราตรี", "ქეთი", "山田", "やまだ太郎", "田中ミーナ",
        "김민준", "王小明ㄅ", "Tokyo東京", "e" + "\u0301" * 4,
    ],
)  # fmt: skip
def test_names_in_any_script_and_with_the_marks_it_needs(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("\u3164", "visible"),
        ("bob\u3164", "visible"),
        ("\u115f\u1160", "visible"),
        ("\uffa0", "visible"),
        ("bob\ufe0f", "visible"),
        ("bob\u034f", "visible"),
        ("\u0301bob", "combining mark"),
        ("e" + "\u0301" * 5, "marks"),
        ("\u0415ve", "Cyrillic and Latin"),
        ("p\u0430ypal", "Cyrillic and Latin"),
        ("\u0391lice", "Greek and Latin"),
        ("Боб\u0363", "Cyrillic and Latin"),
        ("a\u0967", "Devanagari and Latin"),
        ("김やま", "Hangul and Hiragana"),
        ("ㄅカ", "Bopomofo and Katakana"),
    ],
)
def test_invisible_stacked_and_mixed_script_names_are_refused(name: str, why: str) -> None:
    with pytest.raises(NameInvalid, match=why):
        check_name(name)
    with pytest.raises(NameInvalid):
        decode_client(frame(type="hello", name=name))


@pytest.mark.parametrize(
    ("ch", "expected"),
    [
        ("a", "LATIN"), ("Ｂ", "LATIN"), ("𝐁", "LATIN"), ("Е", "CYRILLIC"), ("\u0485", "CYRILLIC"),
        ("\u0301", "INHERITED"), ("\u0363", "LATIN"), ("े", "DEVANAGARI"), ("漢", "HAN"),
        ("々", "HAN"), ("ー", "COMMON"), ("7", "COMMON"), ("٣", "ARABIC"), ("𐌀", "OLD ITALIC"),
        ("𐎠", "OLD PERSIAN"),
    ],
)  # fmt: skip
def test_the_script_of_a_character_comes_from_its_name(ch: str, expected: str) -> None:
    assert script(unicodedata.normalize("NFKC", ch)) == expected


def test_text_limits_count_characters_not_bytes() -> None:
    assert check_text("я" * MAX_TEXT_CHARS) == "я" * MAX_TEXT_CHARS
    with pytest.raises(TextInvalid):
        check_text("я" * (MAX_TEXT_CHARS + 1))


def test_encodes_compact_utf8_in_protocol_order() -> None:
    assert encode(Msg(sender="Алиса", text="привет", ts=1)) == (
        '{"type":"msg","from":"Алиса","text":"привет","ts":1}'.encode()
    )
    assert encode(Dm(sender="a", to="b", text="t", ts=2)) == (
        b'{"type":"dm","from":"a","to":"b","text":"t","ts":2}'
    )
    assert encode(Hello(name="c")) == b'{"type":"hello","name":"c"}'
    assert encode(Bye(reason="shutdown")) == b'{"type":"bye","reason":"shutdown"}'
    assert encode(Bye()) == b'{"type":"bye"}'
    assert encode(Ack(seq=4), session="s") == b'{"type":"ack","seq":4,"session":"s"}'
    assert encode_line(Error(code="x", text="y")).endswith(b"}\n")


@settings(max_examples=200)
@given(
    seq=st.one_of(st.integers(min_value=-5, max_value=10**20), st.just(True)),
    session=st.text(alphabet="0123456789abcdefABCDEF-x", max_size=70),
)
def test_acks_as_clients_write_them_decode_as_the_general_path_does(seq: int, session: str) -> None:
    plain = b'{"type":"ack","seq":%s,"session":"%s"}' % (
        json.dumps(seq).encode(),
        session.encode(),
    )
    spaced = plain.replace(b",", b", ")  # the same frame, kept from the short path
    results: list[Decoded | str] = []
    for data in (plain, spaced):
        try:
            results.append(decode_client(data))
        except ProtocolError as exc:
            results.append(exc.code)
    assert results[0] == results[1]


def test_long_name_lists_are_cut_to_fit_and_count_stays_whole() -> None:
    names = tuple(f"user{i:05d}" for i in range(5000))
    for message in (Welcome(name="me", users=names, count=5000), Users(names=names, count=5000)):
        for limit in (MAX_FRAME_BYTES - 1, 300):
            data = encode(message, seq=9, session="f" * 32, limit=limit)
            assert len(data) <= limit
            obj = json.loads(data)
            listed = obj["users" if isinstance(message, Welcome) else "names"]
            assert obj["count"] == 5000
            assert 0 < len(listed) < 5000
            assert listed == list(names[: len(listed)])
            longer = [*listed, names[len(listed)]]
            obj["users" if isinstance(message, Welcome) else "names"] = longer
            assert len(json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()) > limit


def test_a_frame_too_big_to_send_raises() -> None:
    huge = Dm(sender="𠀀" * 24, to="𠀁" * 24, text="😀" * MAX_TEXT_CHARS, ts=1)
    with pytest.raises(TooLarge):
        encode_line(huge)


def test_server_frames_decode_leniently() -> None:
    decoded = decode_server(b'{"type":"msg","from":"a","text":"hi","ts":5,"seq":2,"x":1}')
    assert decoded.message == Msg(sender="a", text="hi", ts=5)
    assert decoded.seq == 2
    assert decode_server(b'{"type":"welcome"}').message == Welcome(name="", users=(), count=0)


server_messages = st.one_of(
    st.builds(Msg, sender=st.text(min_size=1), text=st.text(min_size=1), ts=st.integers(0, 2**53)),
    st.builds(Users, names=st.lists(st.text()).map(tuple), count=st.integers(0, 10**6)),
)


@given(server_messages)
def test_server_messages_round_trip(message: Msg | Users) -> None:
    try:
        data = encode(message)
    except (TooLarge, UnicodeEncodeError):
        return
    if isinstance(message, Users) and len(data) >= MAX_FRAME_BYTES - 100:
        return
    assert decode_server(data).message == message


# ---- framing --------------------------------------------------------------

valid_lines = st.lists(
    st.builds(
        lambda t: encode(Say(text=t)),
        st.text(st.characters().filter(lambda c: not "\ud800" <= c <= "\udfff"), min_size=1),
    ).filter(lambda b: len(b) < MAX_FRAME_BYTES),
    min_size=1,
    max_size=12,
)


@given(valid_lines, st.data())
@settings(max_examples=200)
def test_any_split_of_a_stream_yields_the_same_lines(
    lines: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(line + (b"\r\n" if i % 2 else b"\n") for i, line in enumerate(lines))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    framer = LineFramer()
    got: list[bytes] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        got.extend(framer.feed(stream[start:cut]))
        start = cut
    assert got == lines
    assert framer.pending == 0


def test_one_byte_at_a_time_across_a_split_utf8_character() -> None:
    stream = encode(Say(text="ü€😀")) + b"\n"
    framer = LineFramer()
    got = [line for byte in stream for line in framer.feed(bytes([byte]))]
    assert [decode_client(line).message for line in got] == [Say(text="ü€😀")]


def test_blank_lines_come_out_empty() -> None:
    assert list(LineFramer().feed(b"\n\r\n  \n{}\n")) == [b"", b"", b"", b"{}"]


def test_a_line_of_exactly_the_limit_passes_and_one_more_byte_does_not() -> None:
    exact = b"x" * (MAX_FRAME_BYTES - 1) + b"\n"
    assert list(LineFramer().feed(exact)) == [exact[:-1]]
    with pytest.raises(TooLarge):
        list(LineFramer().feed(b"x" * MAX_FRAME_BYTES + b"\n"))


def test_an_endless_line_is_refused_as_soon_as_it_is_one_frame_long() -> None:
    """Never more than one frame's worth is held: the byte that makes it too long is refused."""
    framer = LineFramer()
    assert list(framer.feed(b"y" * (MAX_FRAME_BYTES - 1))) == []
    assert framer.pending == MAX_FRAME_BYTES - 1
    with pytest.raises(TooLarge):
        list(framer.feed(b"y"))


def test_good_lines_before_a_too_long_one_still_come_out() -> None:
    lines = LineFramer().feed(b"{}\n" + b"z" * MAX_FRAME_BYTES + b"\n")
    assert next(lines) == b"{}"
    with pytest.raises(TooLarge):
        next(lines)


@given(st.binary(max_size=3000))
@settings(max_examples=300)
def test_random_bytes_never_escape_as_anything_but_protocol_errors(data: bytes) -> None:
    framer = LineFramer()
    try:
        for line in framer.feed(data):
            with contextlib.suppress(ProtocolError):
                decode_client(line)
    except TooLarge:
        pass
    assert framer.pending < MAX_FRAME_BYTES


# ---- resume (v1.2) ----------------------------------------------------------


def test_hello_carries_resumable_and_resume() -> None:
    resume = {"session": "ab" * 16, "epoch": "e1", "after": "42"}
    decoded = decode_client(frame(type="hello", name="a", resumable=True, resume=resume))
    assert decoded.message == Hello(
        name="a", resumable=True, resume=Resume(session="ab" * 16, epoch="e1", after="42")
    )
    fresh = decode_client(frame(type="hello", name="a", resume={"session": "s", "epoch": "e"}))
    assert fresh.message.resume == Resume(session="s", epoch="e", after=None)
    assert decode_client(frame(type="hello", name="a", resume=None)).message == Hello(name="a")


@pytest.mark.parametrize(
    "resume",
    [
        "s",
        [],
        {"epoch": "e", "after": None},
        {"session": "s", "after": None},
        {"session": 5, "epoch": "e"},
        {"session": "s", "epoch": "e", "after": 7},
        {"session": "s" * 201, "epoch": "e", "after": None},
    ],
)
def test_a_malformed_resume_is_a_bad_frame(resume: object) -> None:
    with pytest.raises(BadFrame):
        decode_client(frame(type="hello", name="a", resume=resume))


def test_resume_fields_encode_in_protocol_order() -> None:
    hello = Hello(name="a", resumable=True, resume=Resume(session="s", epoch="e", after=None))
    assert encode(hello) == (
        b'{"type":"hello","name":"a","resumable":true,'
        b'"resume":{"session":"s","epoch":"e","after":null}}'
    )
    assert encode(Welcome(name="a", users=("a",), count=1, session="s", epoch="e")) == (
        b'{"type":"welcome","name":"a","users":["a"],"count":1,"session":"s","epoch":"e",'
        b'"last":null}'
    )
    assert encode(Welcome(name="a", users=("a",), count=1)) == (
        b'{"type":"welcome","name":"a","users":["a"],"count":1}'
    )
    assert encode(Msg(sender="a", text="t", ts=1, id="7")) == (
        b'{"type":"msg","from":"a","text":"t","ts":1,"id":"7"}'
    )
    assert encode(Msg(sender="a", text="t", ts=1, history=True, id="7")).endswith(
        b'"history":true,"id":"7"}'
    )
    assert encode(HistoryEnd(count=0, resumed=False)) == (
        b'{"type":"history_end","count":0,"resumed":false}'
    )
    assert encode(HistoryEnd(count=0)) == b'{"type":"history_end","count":0}'


@pytest.mark.parametrize(
    "message",
    [
        Welcome(name="a", users=("a",), count=1, session="s", epoch="e", last="5-0"),
        Welcome(name="a", users=("a",), count=1, session="s", epoch="e", last=None),
        Msg(sender="a", text="t", ts=1, history=True, id="12"),
        Joined(name="a", ts=1, id="1"),
        Left(name="a", reason="quit", ts=1, id="2"),
        Renamed(old="a", new="b", ts=1, id="3"),
        HistoryEnd(count=3, resumed=True),
        HistoryEnd(count=0, resumed=False),
        HistoryEnd(count=2),
    ],
)
def test_resume_fields_round_trip(message: object) -> None:
    decoded = decode_server(encode(message)).message  # type: ignore[arg-type]
    assert decoded == message
    assert getattr(decoded, "id", None) == getattr(message, "id", None)  # not part of ==


def test_a_udp_welcome_has_its_session_once() -> None:
    welcome = Welcome(name="a", users=("a",), count=1, session="s", epoch="e")
    data = encode(welcome, session="s", seq=1)
    assert data.count(b'"session"') == 1
    assert decode_server(data).session == "s"
