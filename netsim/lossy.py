"""A real lossy link: a Linux network namespace whose loopback drops UDP datagrams
and TCP segments alike.

Loopback never loses anything and this kernel has no netem (``tc qdisc add ...
netem`` answers "Specified qdisc kind is unknown"), so losses come from
nftables: the namespace gets a table with an input-hook chain whose rule is
``meta l4proto { tcp, udp } numgen random mod 100 < P drop`` (P is the loss
percent). Delay cannot be emulated: every round trip is loopback's.

Contract:

- ``LossyNamespace(loss_percent)`` is a context manager. On entry it creates a
  namespace with a unique name (``chatlab-<pid>-<n>``), brings its ``lo`` up and
  loads the table; on exit it ends the processes still running inside and
  deletes the namespace, also when the body raised. Failures raise
  ``LossyLinkError``.
- The namespace has no interface but ``lo``: everything run in it talks to the
  namespace's own 127.0.0.1, so a server and its clients must all run inside it
  (``ns.run([sys.executable, "-m", ...])``) and no traffic leaves it.
- Every UDP datagram and every TCP segment (data or bare ack) crosses the input
  hook of ``lo`` exactly once, so each direction of a conversation loses
  ``loss_percent`` percent independently, for both transports.
- ``lo`` has an Ethernet-sized MTU (LAN_MTU) and segments no larger than it
  (``gso_max_size``): otherwise loopback hands TCP segments of up to 64 KiB to
  the hook, and one drop would cost TCP what forty would cost it on a LAN.
- ``counters()`` reads three named nft counters: UDP datagrams and TCP
  segments that reached the input hook, and those the rule dropped.
  ``set_loss`` swaps the rules in one transaction and keeps the counters
  running.
- ``tcp_retransmitted()`` is the namespace's own count of TCP segments sent
  again (``RetransSegs`` of its ``/proc/net/snmp``), both ends together.
- ``lossy_link_unavailable()`` says in one sentence why this machine cannot
  provide the link (not root, a missing package, namespaces refused), or
  returns None; it tries once per process and caches the answer.

Needs root, iproute2 and nftables (``.ci/install-system-deps`` installs them).
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

TABLE = "chatlab"
"""The nftables table (family ``inet``) loaded in every namespace."""
LAN_MTU = 1500
"""The MTU of the namespace's ``lo``, and its largest segment: an Ethernet LAN's."""

_COMMAND_TIMEOUT = 10.0
_STOP_TIMEOUT = 2.0
_SYSTEM_PATHS = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")
_names = itertools.count()


class LossyLinkError(RuntimeError):
    """A namespace or nftables command failed; the message carries its stderr."""


@dataclass(frozen=True)
class LossCounters:
    """UDP datagrams and TCP segments that reached the namespace's input hook, and how many
    of them (both kinds) were dropped."""

    udp_packets: int
    dropped: int
    tcp_segments: int = 0


def _find(tool: str) -> str | None:
    """Looks in the sbin directories too: a non-login root shell may lack them in PATH."""
    search = os.pathsep.join([os.environ.get("PATH", ""), *_SYSTEM_PATHS])
    return shutil.which(tool, path=search)


def _require(tool: str, package: str) -> str:
    path = _find(tool)
    if path is None:
        raise LossyLinkError(f"needs the {package} package: apt-get install {package}")
    return path


def _check(argv: Sequence[str], what: str, stdin: str | None = None) -> str:
    """Runs a short admin command and turns a failure into a readable LossyLinkError."""
    try:
        done = subprocess.run(
            list(argv),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=_COMMAND_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise LossyLinkError(f"{what}: {error}") from error
    if done.returncode != 0:
        raise LossyLinkError(f"{what}: {done.stderr.strip() or f'exit {done.returncode}'}")
    return done.stdout


def _rules(loss_percent: int) -> str:
    """The chain's rules; numgen's range is 0..99, so 100 % is an unconditional drop."""
    chance = "" if loss_percent == 100 else f"numgen random mod 100 < {loss_percent} "
    return (
        f'add rule inet {TABLE} input meta l4proto udp counter name "udp_in"\n'
        f'add rule inet {TABLE} input meta l4proto tcp counter name "tcp_in"\n'
        f"add rule inet {TABLE} input meta l4proto {{ tcp, udp }} {chance}"
        f'counter name "dropped" drop\n'
    )


def _check_percent(loss_percent: int) -> int:
    if isinstance(loss_percent, bool) or not isinstance(loss_percent, int):
        raise TypeError("loss_percent must be an int")
    if not 0 <= loss_percent <= 100:
        raise ValueError("loss_percent must be between 0 and 100")
    return loss_percent


class LossyNamespace:
    """A network namespace whose loopback drops ``loss_percent`` % of UDP datagrams and of
    TCP segments."""

    def __init__(self, loss_percent: int) -> None:
        self.loss_percent = _check_percent(loss_percent)
        self.name = f"chatlab-{os.getpid()}-{next(_names)}"
        self._ip = _require("ip", "iproute2")
        self._nft = _require("nft", "nftables")
        self._processes: list[subprocess.Popen[Any]] = []
        self._created = False

    def __enter__(self) -> LossyNamespace:
        _check(
            [self._ip, "netns", "add", self.name],
            "cannot create network namespaces here",
        )
        self._created = True
        try:
            _check([self._ip, "-n", self.name, "link", "set", "lo", "up"], "cannot bring lo up")
            size = str(LAN_MTU)
            _check(
                [self._ip, "-n", self.name, "link", "set", "lo", "mtu", size,
                 "gso_max_size", size, "gro_max_size", size],
                "cannot give lo a LAN's MTU",
            )  # fmt: skip
            self._nft_load(
                f"add table inet {TABLE}\n"
                f"add counter inet {TABLE} udp_in\n"
                f"add counter inet {TABLE} tcp_in\n"
                f"add counter inet {TABLE} dropped\n"
                f"add chain inet {TABLE} input "
                "{ type filter hook input priority filter; policy accept; }\n"
                + _rules(self.loss_percent)
            )
        except BaseException:
            self._delete()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._delete()

    def run(self, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Starts ``argv`` inside the namespace; it is ended on exit if still running."""
        self._require_created()
        process: subprocess.Popen[Any] = subprocess.Popen(self._inside(*argv), **popen_kwargs)
        self._processes.append(process)
        return process

    def set_loss(self, loss_percent: int) -> None:
        """Replaces the rules atomically, so no datagram sees a chain without them."""
        self._require_created()
        percent = _check_percent(loss_percent)
        self._nft_load(f"flush chain inet {TABLE} input\n" + _rules(percent))
        self.loss_percent = percent

    def counters(self) -> LossCounters:
        self._require_created()
        listing = _check(
            self._inside(self._nft, "-j", "list", "counters", "table", "inet", TABLE),
            "cannot read the nftables counters",
        )
        packets = {
            item["counter"]["name"]: int(item["counter"]["packets"])
            for item in json.loads(listing)["nftables"]
            if "counter" in item
        }
        return LossCounters(
            udp_packets=packets["udp_in"],
            dropped=packets["dropped"],
            tcp_segments=packets["tcp_in"],
        )

    def tcp_retransmitted(self) -> int:
        self._require_created()
        snmp = _check(self._inside("cat", "/proc/net/snmp"), "cannot read /proc/net/snmp")
        tcp = [line.split()[1:] for line in snmp.splitlines() if line.startswith("Tcp:")]
        names, values = tcp[0], tcp[1]
        return int(values[names.index("RetransSegs")])

    def _nft_load(self, script: str) -> None:
        _check(
            self._inside(self._nft, "-f", "-"),
            "cannot load nftables rules here",
            stdin=script,
        )

    def _inside(self, *argv: str) -> list[str]:
        return [self._ip, "netns", "exec", self.name, *argv]

    def _require_created(self) -> None:
        if not self._created:
            raise LossyLinkError(f"namespace {self.name} is not set up: use it with 'with'")

    def _delete(self) -> None:
        """Ends what runs inside first: a namespace lives on while a process is in it."""
        if not self._created:
            return
        try:
            for process in self._processes:
                _stop(process)
            self._kill_leftovers()
        finally:
            self._created = False
            _check([self._ip, "netns", "delete", self.name], "cannot delete the namespace")

    def _kill_leftovers(self) -> None:
        """Children of the processes started here would keep the namespace alive."""
        listing = _check([self._ip, "netns", "pids", self.name], "cannot list the namespace")
        for pid in listing.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                continue


def _stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@functools.cache
def lossy_link_unavailable() -> str | None:
    """Why a LossyNamespace cannot work here, or None once one was really set up."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and nftables need it)"
    try:
        with LossyNamespace(0):
            pass
    except LossyLinkError as error:
        return str(error)
    return None
