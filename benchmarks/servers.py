"""The chat server under test, run as its own process.

Contract:
    server_command(kind, nagle=..., max_outbox=..., coalesce_ms=..., nodelay=...) -> argv
                                                (kind: "tcp", "assignment" or "udp")
    ServerProcess(argv, launch=subprocess.Popen)  starts it; wait_ready() -> (host, port);
    stop() -> True when it exited with status 0 in time and logged no traceback;
    retransmitted   after stop(): the frames the server says it retransmitted (-1: it does not)
    wait_until(condition, timeout=5) -> bool  poll until it holds (the benchmarks' and the tests')

Every server listens on 127.0.0.1 with `--port 0` and prints `listening on HOST:PORT` on stderr;
the project's servers also get `--rate-limit 0` so the load is not refused. The TCP server gets
`--quiet` too; the UDP server keeps its one line per join and per leave, because the leave line
is where it says how many frames it retransmitted to that session (`N retransmitted`), and the
harness adds those up: retransmissions counted at the server, not only at the clients.
`launch` lets a caller start the process elsewhere, e.g. `LossyNamespace.run` to put it inside a
network namespace (`ip netns exec` execs the server, so the pid is the server's own).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

SERVER_MODULES = {
    "tcp": "tcp.server",
    "assignment": "benchmarks.assignment_server",
    "udp": "udp.server",
}

REPO_ROOT = Path(__file__).resolve().parent.parent
_READY_RE = re.compile(r"listening on (\S+):(\d+)")
_RETRANSMITTED_RE = re.compile(r"(\d+) retransmitted")
_READY_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0

Launcher = Callable[..., "subprocess.Popen[Any]"]


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``condition`` every 10 ms until it holds or ``timeout`` passes; whether it held.

    The tests' bounded wait too (``tests.conftest`` passes it on), so there is one of it."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def server_command(
    kind: str,
    *,
    nagle: bool = False,
    max_outbox: int | None = None,
    coalesce_ms: float | None = None,
    nodelay: bool = False,
) -> list[str]:
    """The argv that starts one server on a free port of 127.0.0.1 (TCP flags for TCP only,
    `nodelay` for the assignment's server only)."""
    if kind not in SERVER_MODULES:
        raise ValueError(f"server must be one of {sorted(SERVER_MODULES)}")
    command = [sys.executable, "-m", SERVER_MODULES[kind], "--host", "127.0.0.1", "--port", "0"]
    if kind != "assignment":
        command += ["--rate-limit", "0"]
    if kind == "tcp":
        command.append("--quiet")
    if nodelay and kind == "assignment":
        command.append("--nodelay")
    if nagle and kind == "tcp":
        command.append("--nagle")
    if max_outbox is not None and kind == "tcp":
        command += ["--max-outbox", str(max_outbox)]
    if coalesce_ms is not None and kind == "tcp":
        command += ["--coalesce-ms", f"{coalesce_ms:g}"]
    return command


class ServerProcess:
    """One server; a thread drains its stderr so it can never block on it."""

    def __init__(self, argv: Sequence[str], launch: Launcher = subprocess.Popen) -> None:
        self.proc: subprocess.Popen[Any] = launch(
            list(argv),
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # Its own session is its own scheduling group (Linux autogroup), so CPU is shared
            # between server and harness as wholes: otherwise a server with hundreds of runnable
            # threads starves the harness's few and the harness's timing suffers.
            start_new_session=True,
        )
        self._address: tuple[str, int] | None = None
        self._settled = threading.Event()
        self._stderr_tail: deque[str] = deque(maxlen=50)
        self._counted: int | None = None
        self._reader = threading.Thread(target=self._read_stderr, name="server-stderr", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self._stderr_tail.append(line)
            said = _RETRANSMITTED_RE.search(line)
            if said:
                self._counted = (self._counted or 0) + int(said.group(1))
            match = _READY_RE.search(line)
            if match and self._address is None:
                self._address = (match.group(1), int(match.group(2)))
                self._settled.set()
        self._settled.set()

    def wait_ready(self) -> tuple[str, int]:
        """The address from the ready line; raises if the server dies or stays silent."""
        self._settled.wait(_READY_TIMEOUT_S)
        if self._address is None:
            raise RuntimeError(f"server did not report its address; stderr:\n{self.tail()}")
        return self._address

    @property
    def retransmitted(self) -> int:
        """Frames the server said it retransmitted, summed over its sessions; -1 when it said
        nothing of the kind (read after stop(), once its last lines are in)."""
        return -1 if self._counted is None else self._counted

    def tail(self) -> str:
        """The last lines the server wrote on stderr."""
        return "\n".join(self._stderr_tail)

    def stop(self) -> bool:
        """SIGTERM, then SIGKILL if it lingers; True if it ended in time without a traceback,
        with status 0 or by the SIGTERM itself (the baseline server has no handler for it)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return False
        finally:
            self._reader.join(_STOP_TIMEOUT_S)
        return code in (0, -signal.SIGTERM) and not any(
            "Traceback" in line for line in self._stderr_tail
        )
