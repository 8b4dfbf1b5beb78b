"""Text tables for the console and for Markdown, with tabulate where it is installed.

Contract: table(rows, headers, markdown=False) -> str. Every cell is shown as str(cell).

Why a fallback: `python -m benchmarks` must run with nothing but the standard library (the
chat needs nothing else), and tabulate is only a nicer layout of the same cells.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

HAVE_TABULATE = importlib.util.find_spec("tabulate") is not None


def table(rows: Sequence[Sequence[object]], headers: Sequence[str], markdown: bool = False) -> str:
    """Columns aligned; with markdown=True a GitHub pipe table."""
    if HAVE_TABULATE:
        from tabulate import tabulate

        layout = "github" if markdown else "simple"
        return tabulate(rows, headers=headers, tablefmt=layout, disable_numparse=True)
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [[cell.ljust(width) for cell, width in zip(row, widths, strict=True)] for row in cells]
    if markdown:
        rule = ["-" * max(width, 3) for width in widths]
        lines = [
            [cell.ljust(max(width, 3)) for cell, width in zip(row, widths, strict=True)]
            for row in cells
        ]
        return "\n".join("| " + " | ".join(line) + " |" for line in [lines[0], rule, *lines[1:]])
    rule = ["-" * width for width in widths]
    return "\n".join("  ".join(line).rstrip() for line in [lines[0], rule, *lines[1:]])
