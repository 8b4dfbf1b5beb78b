"""The load generator in C (`loadgen.c`), built on demand: an instrument, not part of the chat.

Contract:
    binary() -> Path        the compiled generator; built first if missing or older than its
                            source; raises CompilerMissing when there is no C compiler
    available() -> bool     whether binary() can succeed (a compiler, or an up-to-date binary)

Why C: the Python clients (benchmarks.clients) share the machine's two cores with the server
and were past the harness's limits in most runs, so they, not the server, may have set the
pace. It drives the TCP servers (the project's JSON lines, the assignment's raw text) and raw
UDP sessions (1.0 datagrams and v1.2 packets) and reliable packet sessions (acks, in-order
delivery, a say sent again until acknowledged); reliable 1.0 sessions stay with the Python
clients. loadgen.c follows
the method of benchmarks.measure step for step (its own comment says how) with one thread and
one epoll, and prints its raw counts as JSON, which benchmarks.measure turns into a LoadResult.
The binary lives next to the source in `.build/` (not committed) and is rebuilt whenever
loadgen.c is newer: `cc -O2 -o .build/loadgen loadgen.c -lm`, with `$CC` if set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "loadgen.c"
BINARY = SOURCE.parent / ".build" / "loadgen"
_FLAGS = ("-O2", "-std=c11", "-Wall")


class CompilerMissing(RuntimeError):
    """No C compiler to build the generator with."""


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and (path := shutil.which(name)):
            return path
    return None


def _up_to_date() -> bool:
    return BINARY.exists() and BINARY.stat().st_mtime >= SOURCE.stat().st_mtime


def available() -> bool:
    """Whether the generator can run here."""
    return _up_to_date() or _compiler() is not None


def binary() -> Path:
    """The compiled generator, built now if missing or older than loadgen.c. The build goes to
    a temporary name first, so that a concurrent run never sees half a binary."""
    if _up_to_date():
        return BINARY
    compiler = _compiler()
    if compiler is None:
        raise CompilerMissing(
            "no C compiler (cc, gcc or clang; or $CC) to build benchmarks/cgen/loadgen.c: "
            "install gcc, or run with --generator python"
        )
    BINARY.parent.mkdir(exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=BINARY.parent, prefix="loadgen.")
    os.close(handle)
    try:
        built = subprocess.run(
            [compiler, *_FLAGS, "-o", temporary, str(SOURCE), "-lm"],
            capture_output=True,
            text=True,
            check=False,
        )
        if built.returncode != 0:
            raise RuntimeError(f"building {SOURCE} failed:\n{built.stderr}")
        os.replace(temporary, BINARY)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return BINARY
