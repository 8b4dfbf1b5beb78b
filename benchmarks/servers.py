"""The processes the benchmarks and the tests start: the chat servers, and Redis.

Contract:
    python_server(module, *args, host="127.0.0.1", port=0) -> argv   one of the project's servers
    server_command(kind, nagle=..., max_outbox=..., coalesce_ms=..., nodelay=...) -> argv
                                                (kind: "tcp", "assignment" or "udp")
    ServerProcess(argv, launch=subprocess.Popen, env=None, own_session=True, echo=False)
        starts it; a thread reads its log (stdout and stderr) to the end, so it never blocks
        wait_ready() -> (host, port)       from its `listening on HOST:PORT` line
        wait_for_log(pattern, timeout) -> re.Match   the first line that matches
        address, host, port, pid, proc, log, tail(), threads()
        stop(sig=SIGTERM, timeout=5) -> exit code   signal, wait, SIGKILL if it lingers
        clean_exit      after stop(): status 0 (or the SIGTERM itself) and no traceback
        retransmitted   after stop(): the frames the server says it retransmitted (-1: it does not)
    start_redis(binary, port, host="127.0.0.1", options=IN_MEMORY) -> ServerProcess, once ready
    free_port(count=1) -> int                   a port of 127.0.0.1 nothing listens on now
    wait_until(condition, timeout=5, step=0.01) -> bool   poll until it holds (benchmarks', tests')

A server of `server_command` listens on 127.0.0.1 with `--port 0` and prints `listening on
HOST:PORT` on stderr; the project's servers also get `--rate-limit 0` so the load is not
refused. The TCP server gets `--quiet` too; the UDP server keeps its one line per join and per
leave, because the leave line is where it says how many frames it retransmitted to that session
(`N retransmitted`), and the harness adds those up: retransmissions counted at the server, not
only at the clients.
`launch` lets a caller start the process elsewhere, e.g. `LossyNamespace.run` to put it inside a
network namespace (`ip netns exec` execs the server, so the pid is the server's own).
`own_session`: a session of its own is its own scheduling group (Linux autogroup), so CPU is
shared between server and harness as wholes (otherwise a server with hundreds of runnable
threads starves the harness's few), and the terminal's Ctrl+C does not reach it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.procstat import thread_count

SERVER_MODULES = {
    "tcp": "tcp.server",
    "assignment": "benchmarks.assignment_server",
    "udp": "udp.server",
}

REPO_ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on (\S+):(\d+)")
REDIS_READY = re.compile("Ready to accept connections")
IN_MEMORY = ("--save", "", "--appendonly", "no")
_RETRANSMITTED_RE = re.compile(r"(\d+) retransmitted")
_READY_TIMEOUT_S = 10.0
_LOG_TIMEOUT_S = 5.0
_STOP_TIMEOUT_S = 5.0
_TAIL_LINES = 50

Launcher = Callable[..., "subprocess.Popen[Any]"]


def wait_until(condition: Callable[[], bool], timeout: float = 5.0, step: float = 0.01) -> bool:
    """Poll ``condition`` every ``step`` seconds until it holds or ``timeout`` passes; whether
    it held.

    The tests' bounded wait too (``tests.conftest`` passes it on), so there is one of it."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


def free_port(count: int = 1) -> int:
    """A port on loopback that nothing listens on now, the first of ``count`` in a row
    free for both TCP and UDP (``make run-cluster`` takes consecutive ports)."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if port + count <= 65536 and all(_free(port + i) for i in range(count)):
            return port


def _free(port: int) -> bool:
    """Whether ``port`` of 127.0.0.1 can be bound now, for TCP and for UDP."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def python_server(module: str, *args: str, host: str = "127.0.0.1", port: int = 0) -> list[str]:
    """The argv that runs ``module`` (a server of this project) on ``host:port``."""
    return [sys.executable, "-m", module, "--host", host, "--port", str(port), *args]


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
    command = python_server(SERVER_MODULES[kind])
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
    """One server process and its log: a thread reads the log to its end, keeps every line
    (a test or a run may look back) and, with ``echo``, shows each line after the one that
    says it listens. ``env``: variables added to this process's own."""

    def __init__(
        self,
        argv: Sequence[str],
        launch: Launcher = subprocess.Popen,
        *,
        env: Mapping[str, str] | None = None,
        own_session: bool = True,
        echo: bool = False,
    ) -> None:
        self.proc: subprocess.Popen[Any] = launch(
            list(argv),
            cwd=REPO_ROOT,
            env={**os.environ, **env} if env else None,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            start_new_session=own_session,
        )
        self.lines: list[str] = []
        self._ended = False  # the log is read to its end
        self._echo = echo
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read_log, name="server-log", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_log(self) -> None:
        assert self.proc.stdout is not None
        listening = False
        for raw in self.proc.stdout:
            line = raw.rstrip("\n")
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
            if self._echo and listening:
                print(line, flush=True)
            listening = listening or LISTENING.search(line) is not None
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def wait_for_log(
        self, pattern: re.Pattern[str] | str, timeout: float = _LOG_TIMEOUT_S
    ) -> re.Match[str]:
        """The first log line that matches ``pattern``, once there is one; RuntimeError with
        the log if none comes in ``timeout`` or the process ends first."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if match := regex.search(line):
                        return match
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or self._ended:
                    raise RuntimeError(f"no log line matches {regex.pattern!r}:\n{self.tail()}")
                self._changed.wait(left)

    def wait_ready(self) -> tuple[str, int]:
        """The address from its `listening on` line; RuntimeError if it dies or stays silent."""
        match = self.wait_for_log(LISTENING, _READY_TIMEOUT_S)
        return match.group(1), int(match.group(2))

    @property
    def address(self) -> tuple[str, int]:
        return self.wait_ready()

    @property
    def host(self) -> str:
        return self.address[0]

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def log(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def tail(self) -> str:
        """The last lines of its log."""
        with self._changed:
            return "\n".join(self.lines[-_TAIL_LINES:])

    def threads(self) -> int:
        """Its number of threads now."""
        return thread_count(self.pid)

    @property
    def retransmitted(self) -> int:
        """Frames the server said it retransmitted, summed over its sessions; -1 when it said
        nothing of the kind (read after stop(), once its last lines are in)."""
        with self._changed:
            said = [int(m.group(1)) for line in self.lines if (m := _RETRANSMITTED_RE.search(line))]
        return sum(said) if said else -1

    def stop(self, sig: int = signal.SIGTERM, timeout: float = _STOP_TIMEOUT_S) -> int:
        """Send ``sig`` (if it still runs) and wait ``timeout``; past it, SIGKILL. Its exit code
        (-SIGKILL when it had to be killed), once the rest of its log is read. The one way
        every process the project starts is stopped."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout)
        code: int = self.proc.returncode
        return code

    @property
    def clean_exit(self) -> bool:
        """After stop(): it ended with status 0 or by a SIGTERM itself (the baseline server has
        no handler for it), and logged no traceback."""
        return self.proc.returncode in (0, -signal.SIGTERM) and "Traceback" not in self.log


def start_redis(
    binary: str, port: int, *, host: str = "127.0.0.1", options: Sequence[str] = IN_MEMORY
) -> ServerProcess:
    """A ``redis-server`` on ``host:port``, once it accepts connections, in a session of its
    own (no Ctrl+C reaches it); its data in memory unless ``options`` say otherwise."""
    redis = ServerProcess([binary, "--bind", host, "--port", str(port), *options])
    try:
        redis.wait_for_log(REDIS_READY, _READY_TIMEOUT_S)
    except RuntimeError:
        redis.stop(signal.SIGKILL)
        raise
    return redis
