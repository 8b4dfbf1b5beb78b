"""Resource use of another process, read from Linux's /proc.

Contract: every function takes a pid and returns the value at the moment of the call; each
raises OSError (FileNotFoundError) once the process is gone, so read them before stopping it.
CPU time counts all threads of the process, user plus system, at the kernel's clock-tick
resolution (usually 10 ms), which is fine for windows of seconds.
"""

from __future__ import annotations

import os

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
"""The resolution of every CPU time /proc gives: a tick is 1 / CLOCK_TICKS_PER_S seconds."""


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far, in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat_file:
        stat = stat_file.read()
    # The command name (field 2) is in parentheses and may itself contain spaces or ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLOCK_TICKS_PER_S


def _status_field(pid: int, key: str) -> str:
    with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as status_file:
        for line in status_file:
            name, _, value = line.partition(":")
            if name == key:
                return value.strip()
    raise KeyError(f"{key} not in /proc/{pid}/status")


def peak_rss_bytes(pid: int) -> int:
    """Peak resident set size (VmHWM) in bytes."""
    kilobytes, _, _unit = _status_field(pid, "VmHWM").partition(" ")
    return int(kilobytes) * 1024


def thread_count(pid: int) -> int:
    """Number of threads the process has now."""
    return int(_status_field(pid, "Threads"))
