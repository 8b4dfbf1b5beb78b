"""The terminal chat client, shared by the TCP and the UDP chat.

Two threads, each with one job:

* ``main`` reads the keyboard (``Console.read_line``) and sends what the
  person typed through the transport;
* ``receiver`` blocks in ``Transport.receive()`` and shows every message
  above the line being typed (``Console.show``).

A network is anything that fits ``Transport``: ``send`` a message,
``receive`` the next one (``None`` once the session is over), ``close``,
plus ``local_command`` for commands that only that transport understands
(the UDP client's ``/stats``). ``run_client(connect, console, name)`` is the
whole client: ``connect()`` opens a transport (or raises ``ChatError``) for
each try at a name, asking again while the server refuses it; then it chats
until the person quits (``/quit``, ``выход``, Ctrl+C, Ctrl+D: ``bye`` is
sent, exit code 0), the server ends the session (its ``bye``: one line
saying so, exit code 0) or the connection breaks (one line saying so on
stderr, exit code 1). A name given on the command line is not asked
again: if it is refused, the reason is that one line, exit code 1.

``Console`` is the terminal. When both stdin and stdout are terminals it
prompts, keeps the half-typed line intact below incoming messages (redrawn
with readline's buffer), and colours names; otherwise it reads lines and
writes plain lines with no escape sequence at all. Everything it writes
goes through ``render.safe``, so nothing that came from the network can
move the cursor, clear the screen or retitle the window.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import sys
import threading
import unicodedata
import zlib
from collections.abc import Callable, Mapping
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
# The session: joining, then the two threads.


class ChatSession:
    """One run of the client: join, chat, leave; ``run`` gives the exit code."""

    def __init__(self, connect: Callable[[], Transport], console: Console) -> None:
        self.connect = connect
        self.console = console
        self.me = ""
        self._quitting = threading.Event()
        self._lost = False
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
        receiver = threading.Thread(
            target=self._receive, args=(transport,), name=RECEIVER_THREAD, daemon=True
        )
        try:
            receiver.start()
            self._talk(transport)
        except KeyboardInterrupt:
            self.console.ignore_interrupts()
        return self._leave(transport, receiver)

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
        """A transport registered as ``name``, or ``NameRefused``."""
        try:
            check_name(name)
        except NameInvalid as exc:
            raise NameRefused(str(exc)) from None
        transport = self.connect()
        try:
            answer = self._hello(transport, name)
        except BaseException:
            transport.close()
            raise
        if isinstance(answer, Error):
            transport.close()
            raise NameRefused(answer.text or answer.code)
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

    def _hello(self, transport: Transport, name: str) -> Welcome | Error:
        """Send ``hello`` and wait for the welcome, or for the refusal of the name."""
        try:
            transport.send(Hello(name=name))
        except OSError:
            raise ChatError(lost(transport)) from None
        while (message := transport.receive()) is not None:
            if isinstance(message, Welcome):
                return message
            if isinstance(message, Error) and message.code in NAME_ERRORS:
                return message
            if isinstance(message, Error):
                raise ChatError(f"{transport.peer} refused: {message.text or message.code}")
            self._show(message)
        raise ChatError(lost(transport))

    # ---- the main thread: the keyboard --------------------------------

    def _talk(self, transport: Transport) -> None:
        """Read and send lines until the person quits or the connection breaks."""
        while (line := self.console.read_line(f"{safe(self.me)}> ")) is not None:
            try:
                if not self._command(transport, line):
                    break
            except OSError:
                self._lost = True
                break
        self.console.ignore_interrupts()

    def _command(self, transport: Transport, line: str) -> bool:
        """Act on one typed line; False when it asks to quit."""
        if not line.strip():
            return True
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
        transport.send(command)
        return True

    def _leave(self, transport: Transport, receiver: threading.Thread) -> int:
        """Say ``bye`` (unless the session is over), let the last answers arrive, close.

        The exit code is 0 when the person quit or the server said ``bye``
        (it stopped cleanly: one line says so), 1 when the connection broke.
        """
        self._quitting.set()
        if not self._lost:
            with contextlib.suppress(OSError):
                transport.send(Bye())
            receiver.join(QUIT_GRACE)
        transport.close()
        receiver.join(QUIT_GRACE)
        if self._server_bye is not None:
            reason = f" ({self._server_bye.reason})" if self._server_bye.reason else ""
            self.console.show(Line("system", f"the server ended the session{reason}"))
            return 0
        if self._lost:
            self.console.fatal(lost(transport))
            return 1
        return 0

    # ---- the receiver thread: the network -----------------------------

    def _receive(self, transport: Transport) -> None:
        """Show every message; when the session ends unasked, wake the main thread."""
        while (message := transport.receive()) is not None:
            if isinstance(message, Bye):
                self._server_bye = message
            if isinstance(message, Renamed) and message.old == self.me:
                self.me = message.new
            self._show(message)
        if not self._quitting.is_set():
            self._lost = True
            self.console.interrupt()

    def _show(self, message: ServerMessage | Line) -> None:
        if isinstance(message, Line):
            self.console.show(message)
            return
        line = describe(message, self.me)
        if isinstance(message, HistoryEnd):
            self._history_answers += 1
            if self._history_answers > 1 and message.count == 0:
                line = NOTHING_EARLIER
        if line is not None:
            self.console.show(line)


def lost(transport: Transport) -> str:
    """The line that says the session ended under the client."""
    return transport.failure or f"connection to {transport.peer} lost"


def run_client(connect: Callable[[], Transport], console: Console, name: str | None) -> int:
    """The whole terminal client; returns the exit code (0: the person quit)."""
    return ChatSession(connect, console).run(name)
