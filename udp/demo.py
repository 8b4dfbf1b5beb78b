"""A two-second tour of the UDP chat: ``python -m udp.demo [--loss 0.2]``.

Starts ``udp.server`` on a free port and three scripted clients: alice (raw,
straight to the server), bob (reliable) and carol (raw), the last two behind a
``FaultyRelay`` that drops ``--loss`` of the datagrams each way. Everyone says
a few lines: what each one types is printed as ``name > text``, and each
client's screen as it happens, as ``name | line``; then each one's
``/stats`` and the server's log of how the sessions ended. Bob's reliable
session shows every line once and in order; carol's raw one shows the gaps
it noticed. Exits 0 once the server has stopped cleanly.
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from common.protocol.codec import Bye, Hello, Say, Welcome
from common.terminal.render import Line, describe
from netsim.faults import FaultyRelay
from udp.client import UdpTransport

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"listening on (\S+):(\d+)")
SCRIPT = [
    ("alice", "hi all, this is the UDP chat"),
    ("bob", "hello alice; my session is reliable"),
    ("carol", "mine is raw: I may miss a line or two"),
    *[("alice", f"line {n} of a burst") for n in range(1, 9)],
    ("bob", "every one of those reached me, in order"),
    ("carol", "/stats will tell what I lost"),
]
PAUSE = 0.05
SETTLE = 1.5


class Screen:
    """One client's view, printed line by line with its name in front."""

    def __init__(self, name: str, transport: UdpTransport, out: threading.Lock) -> None:
        self.name = name
        self.transport = transport
        self.out = out
        self.welcomed = threading.Event()
        self.thread = threading.Thread(target=self.run, name=f"demo-{name}", daemon=True)
        self.thread.start()

    def run(self) -> None:
        while (message := self.transport.receive()) is not None:
            if isinstance(message, Welcome):
                self.welcomed.set()
            line = message if isinstance(message, Line) else describe(message, self.name)
            if line is not None:
                self.print(line.plain())

    def print(self, text: str, mark: str = "|") -> None:
        with self.out:
            print(f"{self.name:>6} {mark} {text}", flush=True)

    def type(self, text: str) -> None:
        """Show what this person types, then send it as the client would."""
        self.print(text, ">")
        self.transport.send(Say(text=text))


def play(address: tuple[str, int], loss: float) -> None:
    """The script, played by alice (direct), bob (reliable) and carol (raw) behind the relay."""
    out = threading.Lock()
    with FaultyRelay(address, drop=loss, seed=2) as relay:
        at = f"{address[0]}:{address[1]}"
        print(
            f"server on {at}; bob and carol reach it through a relay on "
            f"{relay.address[0]}:{relay.address[1]} that loses {loss:.0%} each way"
        )
        screens = {
            "alice": Screen("alice", UdpTransport.connect(*address), out),
            "bob": Screen(
                "bob", UdpTransport.connect(*relay.address, reliable=True, server=at), out
            ),
            "carol": Screen("carol", UdpTransport.connect(*relay.address, server=at), out),
        }
        for name, screen in screens.items():
            screen.transport.send(Hello(name=name))
            screen.welcomed.wait(6)
        for name, text in SCRIPT:
            screens[name].type(text)
            time.sleep(PAUSE)
        time.sleep(SETTLE)
        for screen in screens.values():
            screen.print("/stats", ">")
            for line in (screen.transport.local_command("/stats") or "").splitlines():
                screen.print(line)
            screen.transport.send(Bye())
        for screen in screens.values():
            screen.thread.join(1.0)
            screen.transport.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m udp.demo", description=__doc__)
    parser.add_argument(
        "--loss", type=float, default=0.2, help="fraction dropped each way for bob and carol"
    )
    args = parser.parse_args(argv)
    server = subprocess.Popen(
        [sys.executable, "-m", "udp.server", "--port", "0", "--rate-limit", "0"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stderr is not None
    ready = READY.search(server.stderr.readline())
    if ready is None:
        server.kill()
        print("the server did not start", file=sys.stderr)
        return 1
    address = (ready.group(1), int(ready.group(2)))
    play(address, args.loss)
    server.send_signal(signal.SIGINT)
    _, log = server.communicate(timeout=5)
    for line in log.splitlines():
        if " left " in line:
            print(f"server | {line}")
    return server.returncode


if __name__ == "__main__":
    sys.exit(main())
