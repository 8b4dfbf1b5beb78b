"""Three people chat over the real TCP server and client: ``make demo-tcp``.

Starts ``tcp.server`` on a free port and one ``tcp.client`` process each for
alice, bob and carol, on pipes (the client's plain mode). It types for them
(``name > text``) and prints every line each one's screen shows
(``name | line``) as it arrives: joins, messages, a private message, a
rename, ``/who`` and two ways of leaving. Each step waits until the people
concerned have seen the one before, so the story always holds; the whole
run takes a few seconds and stops by itself. Exit code 0 when everyone saw
what they should have, 1 otherwise.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WAIT = 5.0
STEP_PAUSE = 0.15
READY = re.compile(r"listening on (\S+):(\d+)")

print_lock = threading.Lock()


def say(text: str) -> None:
    with print_lock:
        print(text, flush=True)


class DemoFailed(Exception):
    """Someone did not see what they should have, in time."""


class Person:
    """One ``tcp.client`` process: type into its stdin, watch its stdout."""

    def __init__(self, name: str, port: int) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tcp.client", "--port", str(port), "--name", name],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._watch, name=f"screen-{name}", daemon=True)
        self._reader.start()

    def _watch(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.rstrip("\n")
            say(f"{self.name:>8} | {line}")
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def type(self, text: str) -> None:
        time.sleep(STEP_PAUSE)
        say(f"{self.name:>8} > {text}")
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def sees(self, fragment: str) -> None:
        """Wait until a line on this person's screen holds ``fragment``."""
        deadline = time.monotonic() + WAIT
        with self._changed:
            while not any(fragment in line for line in self.lines):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DemoFailed(f"{self.name} never saw {fragment!r}")
                self._changed.wait(left)

    def leave(self) -> int:
        """End of input, as Ctrl+D: the client says bye and exits."""
        time.sleep(STEP_PAUSE)
        say(f"{self.name:>8} > (Ctrl+D)")
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.wait()

    def wait(self) -> int:
        code = self.proc.wait(WAIT)
        self._reader.join(WAIT)
        return code


def start_server() -> tuple[subprocess.Popen[str], int]:
    server = subprocess.Popen(
        [sys.executable, "-m", "tcp.server", "--port", "0", "--quiet"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stderr is not None
    for line in server.stderr:
        if match := READY.search(line):
            threading.Thread(target=server.stderr.read, name="server-log", daemon=True).start()
            return server, int(match.group(2))
    raise DemoFailed("the server did not start")


def story(port: int) -> list[int]:
    """The scripted chat; returns the clients' exit codes."""
    alice = Person("alice", port)
    alice.sees("welcome, alice")
    bob = Person("bob", port)
    alice.sees("bob joined")
    carol = Person("carol", port)
    bob.sees("carol joined")

    alice.type("hi everyone!")
    carol.sees("<alice> hi everyone!")
    bob.type("hello alice")
    alice.sees("<bob> hello alice")
    bob.type("/msg carol lunch at noon?")
    carol.sees("[dm from bob] lunch at noon?")
    carol.type("/nick caroline")
    alice.sees("carol is now caroline")
    carol.type("/msg bob sure, see you there")
    bob.sees("[dm from caroline] sure, see you there")
    alice.type("/who")
    alice.sees("online (3)")
    carol.type("выход")
    alice.sees("caroline left")
    codes = [carol.wait(), alice.leave()]
    bob.sees("alice left")
    codes.append(bob.leave())
    return codes


def main() -> int:
    started = time.monotonic()
    server, port = start_server()
    say(f"server listening on 127.0.0.1:{port}; alice, bob and carol join\n")
    try:
        codes = story(port)
    except DemoFailed as exc:
        say(f"\ndemo failed: {exc}")
        return 1
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(WAIT)
    say(f"\nclients exited with {codes}; the demo took {time.monotonic() - started:.1f} s")
    return 0 if codes == [0, 0, 0] else 1


if __name__ == "__main__":
    sys.exit(main())
