"""The terminal chat client, shared by the TCP and the UDP chat.

Two threads, each with one job:

* ``main`` reads the keyboard (``Console.read_line``) and sends what the
  person typed through the transport;
* ``receiver`` blocks in ``Transport.receive()`` and shows every message
  above the line being typed (``Console.show``).

A network is anything that fits ``Transport``: ``send`` a message,
``receive`` the next one (``None`` once the session is over), ``close``,
plus ``local_command`` for commands that only that transport understands
(the UDP client's ``/stats``). ``run_client(connect, console, name, servers)``
is the whole client: ``connect(server)`` opens a transport to one of the
``servers`` (or raises ``ChatError``) for each try at a name, asking again
while the server refuses it; then it chats until the person quits (``/quit``,
``выход``, Ctrl+C, Ctrl+D: ``bye`` is sent, exit code 0) or the server ends
the session (its ``bye``: one line saying so, exit code 0). When the
connection breaks, the receiver thread says so on one line and comes back
by itself (protocol v1.2 resume, ``common.terminal.resume``), until it is
back or the person quits; only a rejoin refused (the name taken meanwhile)
ends the client with exit code 1. A name given on the command line is not
asked again: if it is refused, the reason is that one line, exit code 1.

``Console`` is the terminal. When both stdin and stdout are terminals it
prompts, keeps the half-typed line intact below incoming messages (redrawn
with readline's buffer), and colours names; otherwise it reads lines and
writes plain lines with no escape sequence at all. Everything it writes
goes through ``render.safe``, so nothing that came from the network can
move the cursor, clear the screen or retitle the window.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import enum
import os
import shutil
import signal
import sys
import threading
import time
import unicodedata
import zlib
from collections.abc import Callable, Mapping, Sequence
from random import random as random_float
from types import FrameType, ModuleType
from typing import Protocol, TextIO

from common.protocol.codec import (
    Bye,
    ClientMessage,
    Error,
    Hello,
    History,
    HistoryEnd,
    NameInvalid,
    ProtocolError,
    Renamed,
    ServerMessage,
    Welcome,
    check_name,
    name_key,
)
from common.terminal.commands import ShowHelp, Usage, help_text, parse_command
from common.terminal.render import NOTHING_EARLIER, Line, describe, safe
from common.terminal.resume import LOST, Retry, Tracker

RECEIVER_THREAD = "receiver"
QUIT_GRACE = 1.0
PROMPT_WAIT = 0.5
INTERRUPT_RETRY = 0.1
NAME_ERRORS = frozenset({"name_taken", "name_invalid"})
JOIN_HISTORY = 20
"""Messages from before the welcome asked for on joining, shown above the live chat."""

RESET = "\x1b[0m"
BOLD, DIM, RED = "1", "2", "31"
NAME_COLOURS = ("32", "33", "34", "35", "36", "92", "93", "94", "95", "96")
CLEAR_LINE = "\r\x1b[2K"
CLEAR_BELOW = "\r\x1b[J"


# --------------------------------------------------------------------------
# Rendering: a Line as the text of one screen line.


def name_colour(name: str) -> str:
    """The SGR colour code of ``name``, the same in every run and on every machine.

    The hash is CRC-32 of the folded name, not ``hash()``, which changes from
    process to process; folding gives ``Bob`` and ``BOB`` (one user) one colour.
    Red is left out: it means an error.
    """
    return NAME_COLOURS[zlib.crc32(name_key(name).encode("utf-8")) % len(NAME_COLOURS)]


def paint(text: str, *codes: str) -> str:
    """``text`` between the SGR codes and a reset (unchanged when no code is given)."""
    return f"\x1b[{';'.join(codes)}m{text}{RESET}" if codes else text


def format_line(line: Line, colour: bool = False) -> str:
    """The text of one line as the console shows it, coloured or plain.

    Every field goes through ``safe`` again, whatever made the Line: this is
    the last stop before the terminal. Own chat lines say ``(you)``,
    private ones ``dm`` and earlier ones (history) ``earlier``, so they
    stand out in plain mode too; in colour earlier ones are all dim.
    """
    text, who, time = safe(line.text), safe(line.who), safe(line.time)

    def style(part: str, *codes: str) -> str:
        return paint(part, *codes) if colour else part

    if line.kind == "system":
        return style(f"{time} * {text}" if time else f"* {text}", DIM)
    if line.kind == "error":
        return style(f"! {text}", BOLD, RED)
    if line.kind == "note":
        return text
    if line.earlier:
        return style(safe(line.plain()), DIM)
    stamp = style(time, DIM) + " " if time else ""
    if line.kind == "dm":
        label, _, name = who.rpartition(" ")
        tag = f"{label} {style(name, name_colour(name))}".lstrip()
        return f"{stamp}{style('[', BOLD)}{tag}{style(']', BOLD)} {text}"
    if line.own:
        return f"{stamp}<{style(who, BOLD, name_colour(who))} (you)> {text}"
    return f"{stamp}<{style(who, name_colour(who))}> {text}"


def display_width(text: str) -> int:
    """Columns ``text`` takes on a terminal: wide CJK characters two, combining marks none."""
    return sum(map(columns, text))


def columns(ch: str) -> int:
    """Columns one character takes.

    A mark is told by its category, not by ``unicodedata.combining``: many
    vowel signs (Devanagari's ``े``) have combining class 0 yet take no column.
    """
    if unicodedata.category(ch) in ("Mn", "Me"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in "WF" else 1


def wants_colour(environ: Mapping[str, str]) -> bool:
    """Colour unless the person asked for none (https://no-color.org) or the terminal is dumb."""
    return not environ.get("NO_COLOR") and environ.get("TERM", "") != "dumb"


def cursor_up(rows: int) -> str:
    return f"\x1b[{rows}A" if rows > 0 else ""


def readline_point(readline: ModuleType | None) -> ctypes.c_int | None:
    """Readline's cursor (``rl_point``, a byte offset), which the module does not expose.

    Without it a redraw puts the cursor at the end of the typed text, which
    is right unless the person had moved it back.
    """
    if readline is None or readline.__file__ is None:
        return None
    try:
        return ctypes.c_int.in_dll(ctypes.CDLL(readline.__file__), "rl_point")
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------
# The terminal.


class Console:
    """The person's terminal: lines in, lines out, from any thread.

    Interactive (stdin and stdout both terminals): ``read_line`` prompts
    through readline (editing, history), and ``show`` prints above the line
    being typed, then redraws the prompt and the half-typed text under it.
    Otherwise plain lines, never an escape sequence. One lock covers every
    write, so lines from two threads never mix.

    Create it in the main thread (elsewhere it raises ValueError, as
    ``signal.signal`` does): it takes over SIGINT so that Ctrl+C, and
    ``interrupt()`` from the receiver thread, raise ``KeyboardInterrupt``
    in the main thread, and never again after ``ignore_interrupts()``, so a
    client that is already quitting cannot be torn out of its cleanup.
    """

    def __init__(
        self,
        stdin: TextIO | None = None,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
        *,
        colour: bool | None = None,
    ) -> None:
        self._stdin = stdin or sys.stdin
        self._stdout = stdout or sys.stdout
        self._stderr = stderr or sys.stderr
        for stream in (self._stdout, self._stderr):
            if hasattr(stream, "reconfigure"):
                stream.reconfigure(errors="replace")
        self.interactive = (
            self._stdin is sys.stdin
            and self._stdout is sys.stdout
            and self._stdin.isatty()
            and self._stdout.isatty()
        )
        self.colour = self.interactive and wants_colour(os.environ) if colour is None else colour
        self._readline: ModuleType | None = None
        if self.interactive:
            with contextlib.suppress(ImportError):
                import readline

                self._readline = readline
                readline.set_pre_input_hook(self._prompt_shown)
        self._point = readline_point(self._readline)
        self._lock = threading.Condition()
        self._prompting = False
        self._reading = False
        self._prompt = ""
        self._interrupts_off = threading.Event()
        signal.signal(signal.SIGINT, self._on_interrupt)
        if self.interactive:
            take_the_terminal(self._stdin.fileno())

    # ---- input (main thread) ------------------------------------------

    def read_line(self, prompt: str) -> str | None:
        """The next line typed, without its newline; None at the end of input (Ctrl+D)."""
        if not self.interactive:
            line = self._stdin.readline()
            return line.rstrip("\r\n") if line else None
        with self._lock:
            # A redraw that raced with Enter may have left a stale prompt on this line.
            self._write(CLEAR_LINE)
            self._prompt = prompt
            # Without readline's hook nothing tells when the prompt is up: assume it is.
            self._prompting = self._readline is not None
            self._reading = not self._prompting
        finished = False
        try:
            line = input(prompt)
            finished = True
            return line
        except EOFError:
            return None
        finally:
            with self._lock:
                self._prompting = self._reading = False
                self._lock.notify_all()
                if not finished:
                    # Ctrl+C or Ctrl+D left the cursor after the typed text.
                    self._write("\n")

    def _prompt_shown(self) -> None:
        """Readline's pre-input hook: the prompt is on the screen, redraws may include it."""
        with self._lock:
            self._prompting = False
            self._reading = True
            self._lock.notify_all()

    def ask(self, question: str) -> str | None:
        """A question with its answer on the same line; None at the end of input."""
        if not self.interactive:
            with self._lock:
                self._write(question.rstrip() + "\n")
        return self.read_line(question)

    # ---- output (any thread) ------------------------------------------

    def show(self, line: Line) -> None:
        """Print ``line`` above whatever is being typed."""
        self._emit(format_line(line, self.colour))

    def note(self, text: str) -> None:
        """Local information (help, statistics), one screen line per text line."""
        for part in text.splitlines():
            self.show(Line("note", part))

    def warn(self, text: str) -> None:
        """A local complaint: a command typed wrong, a name refused."""
        self.show(Line("error", text))

    def fatal(self, text: str) -> None:
        """The one line that says why the client stops, on stderr."""
        with self._lock:
            self._stdout.flush()
            self._stderr.write(safe(text) + "\n")
            self._stderr.flush()

    def _emit(self, text: str) -> None:
        with self._lock:
            # While readline draws the prompt, a redraw would show it twice or wipe it out.
            self._lock.wait_for(lambda: not self._prompting, timeout=PROMPT_WAIT)
            if not self.interactive:
                self._write(text + "\n")
            elif not self._reading:
                self._write(CLEAR_LINE + text + "\n")
            else:
                self._write(self._redraw(text))

    def _redraw(self, text: str) -> str:
        """Clear the prompt and the typed text, print ``text``, draw them again below.

        The typed text may wrap over several rows and readline's cursor may
        sit anywhere in it: the clearing starts on the prompt's first row and
        the cursor goes back where readline left it, so editing goes on.
        """
        before, after = self._typed()
        columns = shutil.get_terminal_size().columns
        row, column = divmod(display_width(self._prompt + before), columns)
        out = cursor_up(row) + CLEAR_BELOW + text + "\n" + self._prompt + before + after
        if after:
            end_row = display_width(self._prompt + before + after) // columns
            out += cursor_up(end_row - row) + "\r" + (f"\x1b[{column}C" if column else "")
        return out

    def _typed(self) -> tuple[str, str]:
        """The half-typed line, split at readline's cursor."""
        if self._readline is None:
            return "", ""
        typed: str = self._readline.get_line_buffer()
        if self._point is None:
            return typed, ""
        before = typed.encode()[: self._point.value].decode(errors="ignore")
        return before, typed[len(before) :]

    def _write(self, text: str) -> None:
        """One write and one flush, so the terminal gets each update whole."""
        with contextlib.suppress(OSError, ValueError):
            self._stdout.write(text)
            self._stdout.flush()

    # ---- waking the main thread ---------------------------------------

    def interrupt(self) -> None:
        """From another thread: make the main thread raise KeyboardInterrupt (see class doc).

        The signal goes again until the main thread calls ``ignore_interrupts``:
        one that lands just before the main thread blocks in a read does not
        wake it, and readline swallows one that lands in its hook.
        """
        main = threading.main_thread()
        while main.ident is not None and main.is_alive() and not self._interrupts_off.is_set():
            signal.pthread_kill(main.ident, signal.SIGINT)
            self._interrupts_off.wait(INTERRUPT_RETRY)

    def ignore_interrupts(self) -> None:
        """From now on Ctrl+C and ``interrupt()`` do nothing: the client is quitting."""
        self._interrupts_off.set()

    def _on_interrupt(self, signum: int, frame: FrameType | None) -> None:
        if not self._interrupts_off.is_set():
            raise KeyboardInterrupt


def take_the_terminal(fd: int) -> None:
    """Make this process the terminal's foreground, alone, when it shares its group.

    Under ``make chat-tcp`` the client shares make's process group, so Ctrl+C reaches make
    too, which dies of it (exit code 130) however cleanly the client ends. In a group of its
    own at the front, Ctrl+C reaches the client alone; the terminal goes back to the group
    it came from when the client exits. Started by a shell (a group of its own already) or
    without a terminal, nothing changes.
    """
    with contextlib.suppress(OSError):
        before = os.tcgetpgrp(fd)
        if before != os.getpgrp() or os.getpgrp() == os.getpid():
            return
        os.setpgid(0, 0)
        _set_foreground(fd, os.getpgrp())
        atexit.register(_set_foreground, fd, before)


def _set_foreground(fd: int, group: int) -> None:
    """``tcsetpgrp``, from the front or the back: SIGTTOU would stop a background process."""
    previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        with contextlib.suppress(OSError):
            os.tcsetpgrp(fd, group)
    finally:
        signal.signal(signal.SIGTTOU, previous)


# --------------------------------------------------------------------------
# The network, as the session sees it.


class ChatError(Exception):
    """The chat cannot go on; the text is the one line that says why.

    A transport's connect function raises it when it cannot reach the
    server, e.g. ``cannot connect to 127.0.0.1:8080: Connection refused``.
    """


class NameRefused(Exception):
    """The name is not valid, or the server would not have it; the text says why."""


class Transport(Protocol):
    """One session with a chat server, as the client needs it.

    ``send`` is called from the main thread only, ``receive`` from the
    receiver thread only (and from the main thread before that one starts),
    ``close`` from the main thread, possibly while ``receive`` blocks: it
    must make ``receive`` return None soon.
    """

    @property
    def peer(self) -> str:
        """The server's address as people write it, ``127.0.0.1:8080``."""
        ...

    @property
    def help_text(self) -> str:
        """Help lines for this transport's local commands, added to ``/help`` ("" for none)."""
        ...

    @property
    def failure(self) -> str | None:
        """Once ``receive`` has returned None: why, when the transport knows better than "lost".

        The UDP transport never had a connection to lose: it says that
        nothing answered, or that the server fell silent.
        """
        ...

    def send(self, message: ClientMessage) -> None:
        """Send one message; OSError when the connection is gone."""
        ...

    def receive(self) -> ServerMessage | Line | None:
        """Block until the next message; None once the session is over.

        A ``Line`` is something the transport noticed itself (a lost
        datagram, say): it is shown as it is.

        After ``send(Bye())`` it should return None as soon as the server
        has let go of the session (the client waits ``QUIT_GRACE`` at most).
        """
        ...

    def close(self) -> None:
        """Release the connection; any blocked ``receive`` returns None."""
        ...

    def local_command(self, line: str) -> str | None:
        """Answer a typed line that only this transport understands, else None."""
        ...


# --------------------------------------------------------------------------
# The session: joining, then the two threads, and coming back after a loss.


class Phase(enum.Enum):
    """Where the session is, once joined; ``ChatSession._move`` is the one place it changes."""

    CHATTING = "chatting"
    """A transport is up: the main thread sends on it, the receiver thread reads it."""
    RECONNECTING = "reconnecting"
    """The connection broke: the receiver thread is getting a new one; typed lines wait."""
    QUITTING = "quitting"
    """The person quit: nothing reconnects any more (final)."""
    ENDED = "ended"
    """The server said ``bye``, or refused the name on a rejoin: the client stops (final)."""


FINAL = frozenset({Phase.QUITTING, Phase.ENDED})
WAITING = "not connected: this goes out once back"


class ChatSession:
    """One run of the client: join, chat, come back after lost connections, leave.

    ``connect(server)`` opens a transport to one of ``servers`` (``HOST:PORT``,
    several servers of one room) or raises ``ChatError``. ``run`` gives the
    exit code.

    Threads: ``main`` reads the keyboard and sends; ``receiver`` shows what
    arrives and, when the connection breaks without a ``bye``, reconnects
    (``_reconnect``: backoff and servers from ``Retry``, the place and the
    resume's answer from ``Tracker``), so the line being typed is never
    disturbed. Lines typed meanwhile wait in ``_pending`` and go out, in
    order, before the phase is back to CHATTING; so only one thread ever
    sends on a transport at a time.

    Locking rule: ``_lock`` guards ``_phase``, ``_transport`` and ``_pending``,
    and is never held while sending, receiving or writing to the console.
    """

    def __init__(
        self,
        connect: Callable[[str], Transport],
        console: Console,
        servers: Sequence[str],
        random: Callable[[], float] = random_float,
    ) -> None:
        self.connect = connect
        self.console = console
        self.me = ""
        self._retry = Retry(servers, random, time.monotonic)
        self._tracker = Tracker()
        self._lock = threading.Lock()
        self._phase = Phase.CHATTING
        self._transport: Transport | None = None
        self._pending: list[ClientMessage] = []
        self._over = threading.Event()
        """Set once the phase is final: a reconnect waiting out its backoff stops."""
        self._failure: str | None = None
        self._server_bye: Bye | None = None
        self._history_answers = 0  # the receiver's: the first is the one asked on joining

    def run(self, name: str | None) -> int:
        try:
            transport = self._join(name)
        except ChatError as exc:
            self.console.fatal(str(exc))
            return 1
        except KeyboardInterrupt:
            return 0
        if transport is None:
            return 0
        self._transport = transport
        receiver = threading.Thread(
            target=self._receive, args=(transport,), name=RECEIVER_THREAD, daemon=True
        )
        try:
            receiver.start()
            self._talk()
        except KeyboardInterrupt:
            self.console.ignore_interrupts()
        return self._leave(receiver)

    def _move(self, to: Phase) -> Phase | None:
        """Change the phase; the phase it was, or None when it is final already (no change).

        Back to CHATTING only once nothing typed is waiting (``_go_live`` sends it first).
        """
        with self._lock:
            was = self._phase
            if was in FINAL or (to is Phase.CHATTING and self._pending):
                return None
            self._phase = to
        if to in FINAL:
            self._over.set()
        return was

    # ---- joining (main thread) ----------------------------------------

    def _join(self, name: str | None) -> Transport | None:
        """Register, asking for another name while the one typed is refused.

        A name given on the command line is not asked again: a refusal ends
        the client with the reason (a script would otherwise send its next
        line as a name). Each try has a connection of its own, so a person
        who takes a while to think of a new name never runs into the
        server's hello timeout. None: the person gave up (end of input).
        """
        asked = name is None
        while True:
            if name is None:
                name = self.console.ask("your name: ")
                if name is None:
                    return None
            try:
                return self._register(name.strip())
            except NameRefused as exc:
                if not asked:
                    raise ChatError(f"cannot join as {name.strip()}: {exc}") from None
                self.console.warn(f"{exc}; try another")
            name = None

    def _register(self, name: str) -> Transport:
        """A transport registered as ``name`` on the first server that lets it in, or an error.

        ``NameRefused`` when a server refuses the name; ``ChatError`` (the
        last server's) when none answers.
        """
        try:
            check_name(name)
        except NameInvalid as exc:
            raise NameRefused(str(exc)) from None
        error = ChatError("no server to try")
        for server in self._retry.servers:
            try:
                transport = self.connect(server)
                answer = self._hello(transport, Hello(name=name, resumable=True))
            except ChatError as exc:
                error = exc
                continue
            if isinstance(answer, Error):
                transport.close()
                raise NameRefused(answer.text or answer.code)
            self._retry.moved(server)
            self._tracker.joined(answer)
            self.me = answer.name
            self._show(answer)
            hint = "type a message and press Enter; /help lists the commands"
            self.console.show(Line("system", hint))
            try:
                transport.send(History(limit=JOIN_HISTORY))
            except OSError:
                transport.close()
                raise ChatError(lost(transport)) from None
            return transport
        raise error

    def _hello(self, transport: Transport, hello: Hello) -> Welcome | Error:
        """Send ``hello`` and wait for the welcome, or for the refusal of the name.

        Anything else goes wrong: the transport is closed and ``ChatError`` says why.
        """
        try:
            transport.send(hello)
            while (message := transport.receive()) is not None:
                if isinstance(message, Welcome):
                    return message
                if isinstance(message, Error) and message.code in NAME_ERRORS:
                    return message
                if isinstance(message, Error):
                    raise ChatError(f"{transport.peer} refused: {message.text or message.code}")
                self._show(message)
            raise ChatError(lost(transport))
        except OSError:
            transport.close()
            raise ChatError(lost(transport)) from None
        except BaseException:
            transport.close()
            raise

    # ---- the main thread: the keyboard --------------------------------

    def _talk(self) -> None:
        """Read and send lines until the person quits or the session ends."""
        while (line := self.console.read_line(f"{safe(self.me)}> ")) is not None:
            if not self._command(line):
                break
        self.console.ignore_interrupts()

    def _command(self, line: str) -> bool:
        """Act on one typed line; False when it asks to quit."""
        if not line.strip():
            return True
        with self._lock:
            transport = self._transport
        assert transport is not None
        reply = transport.local_command(line)
        if reply is not None:
            self.console.note(reply)
            return True
        try:
            command = parse_command(line)
        except (Usage, ProtocolError) as exc:
            self.console.warn(str(exc))
            return True
        if isinstance(command, ShowHelp):
            self.console.note(help_text(transport.help_text))
            return True
        if isinstance(command, Bye):
            return False
        self._send(command)
        return True

    def _send(self, message: ClientMessage) -> None:
        """Send on the current transport; while there is none, keep it for when there is.

        A send that fails on a transport that is still the current one is
        kept too: the receiver thread is about to see the loss and reconnect.
        If it already has, the message goes out on the new transport.
        """
        while True:
            with self._lock:
                transport = self._transport
                waiting = self._phase is not Phase.CHATTING
                if waiting:
                    self._pending.append(message)
            if waiting:
                self.console.show(Line("system", WAITING))
                return
            assert transport is not None
            try:
                transport.send(message)
                return
            except OSError:
                with self._lock:
                    if self._transport is transport:
                        self._pending.append(message)
                        return

    def _leave(self, receiver: threading.Thread) -> int:
        """Say ``bye`` (when connected), let the last answers arrive, close.

        The exit code is 0 when the person quit or the server said ``bye``
        (it stopped cleanly: one line says so), 1 when the session could not
        go on (a rejoin refused).
        """
        was = self._move(Phase.QUITTING)
        with self._lock:
            transport = self._transport
        assert transport is not None
        if was is Phase.CHATTING:
            with contextlib.suppress(OSError):
                transport.send(Bye())
            receiver.join(QUIT_GRACE)
        transport.close()
        receiver.join(QUIT_GRACE)
        if self._server_bye is not None:
            reason = f" ({self._server_bye.reason})" if self._server_bye.reason else ""
            self.console.show(Line("system", f"the server ended the session{reason}"))
            return 0
        if self._failure is not None:
            self.console.fatal(self._failure)
            return 1
        return 0

    # ---- the receiver thread: the network -----------------------------

    def _receive(self, transport: Transport) -> None:
        """Show every message, reconnecting after losses; when the session ends, wake main."""
        current: Transport | None = transport
        while current is not None:
            while (message := current.receive()) is not None:
                self._on_message(message)
            current = self._reconnect(current)
        with self._lock:
            ended = self._phase is Phase.ENDED  # else the person quit: main is leaving already
        if ended:
            self.console.interrupt()

    def _on_message(self, message: ServerMessage | Line) -> History | None:
        """Show one message as the tracker says; the history request it calls for, if any."""
        if isinstance(message, Line):
            self.console.show(message)
            return None
        if isinstance(message, Bye):
            self._server_bye = message
            self._move(Phase.ENDED)
        if isinstance(message, Renamed) and message.old == self.me:
            self.me = message.new
        step = self._tracker.on_message(message)
        for shown in step.show:
            self._show(shown)
        return step.ask

    def _reconnect(self, old: Transport) -> Transport | None:
        """After a loss: one line, then tries until one resumes; None when the session is over."""
        old.close()
        if self._move(Phase.RECONNECTING) is None:
            return None
        self.console.show(Line("system", LOST))
        delay = self._retry.lost()
        while not self._over.wait(delay):
            try:
                transport = self._rejoin(self._retry.server)
            except NameRefused as exc:
                self._failure = f"cannot rejoin as {self.me}: {exc}"
                self._move(Phase.ENDED)
                return None
            if transport is not None:
                self._retry.back()
                return transport
            delay = self._retry.failed()
        return None

    def _rejoin(self, server: str) -> Transport | None:
        """One try: connect, ``hello`` with the place kept, the answer shown, waiting lines sent.

        None when the try did not get in (or the person quit meanwhile).
        """
        asked = self._tracker.place.resume()
        try:
            transport = self.connect(server)
        except ChatError:
            return None
        with self._lock:
            adopted = self._phase is Phase.RECONNECTING
            if adopted:
                self._transport = transport  # so that quitting closes it
        if not adopted:
            transport.close()
            return None
        try:
            answer = self._hello(transport, Hello(name=self.me, resumable=True, resume=asked))
        except ChatError:
            return None
        if isinstance(answer, Error):
            transport.close()
            raise NameRefused(answer.text or answer.code)
        step = self._tracker.rejoined(answer, asked)
        for shown in step.show:
            self._show(shown)
        ask = step.ask
        while self._tracker.answering:
            message = transport.receive()
            if message is None:
                transport.close()
                return None
            ask = self._on_message(message) or ask
        return transport if self._go_live(transport, ask) else None

    def _go_live(self, transport: Transport, ask: History | None) -> bool:
        """Send the history request and the lines typed while away, then chat; False if over."""
        batch: list[ClientMessage] = [ask] if ask is not None else []
        while batch or self._move(Phase.CHATTING) is None:
            if self._over.is_set():
                return False
            try:
                for message in batch:
                    transport.send(message)
            except OSError:
                transport.close()
                return False
            with self._lock:
                batch, self._pending = self._pending, []
        return True

    def _show(self, message: ServerMessage | Line) -> None:
        if isinstance(message, Line):
            self.console.show(message)
            return
        line = describe(message, self.me)
        if isinstance(message, HistoryEnd) and message.resumed is None:  # a history answer
            self._history_answers += 1
            if self._history_answers > 1 and message.count == 0:
                line = NOTHING_EARLIER
        if line is not None:
            self.console.show(line)


def lost(transport: Transport) -> str:
    """The line that says a session ended under the client before it joined."""
    return transport.failure or f"connection to {transport.peer} lost"


def run_client(
    connect: Callable[[str], Transport],
    console: Console,
    name: str | None,
    servers: Sequence[str],
) -> int:
    """The whole terminal client; returns the exit code (0: the person quit).

    ``servers`` are ``HOST:PORT`` of one room, tried in turn; ``connect``
    opens a transport to one of them.
    """
    return ChatSession(connect, console, servers).run(name)


def split_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) as a host and a port; ValueError if it is not."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not (sep and host and port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def server_address(text: str) -> str:
    """An argparse type: ``HOST:PORT`` checked, kept as typed."""
    try:
        split_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_server_argument(parser: argparse.ArgumentParser) -> None:
    """``--server HOST:PORT``, repeatable: the servers of one room, tried in turn."""
    parser.add_argument(
        "--server",
        action="append",
        type=server_address,
        metavar="HOST:PORT",
        help="a server of the room, instead of --host and --port; give it again for "
        "more servers of the same room: the client moves to the next when one is gone",
    )
