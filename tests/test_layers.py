"""The folders are the layers: each package imports only from the layers below it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BELOW = {
    "common.protocol": set(),
    "common.room": {"common.protocol"},
    "common.terminal": {"common.protocol"},
    "common.cli": {"common.protocol", "common.room"},
    "netsim": set(),
}
BELOW["common.server"] = {"common.protocol", "common.room", "common.terminal", "common.cli"}
BELOW["tcp"] = BELOW["udp"] = set(BELOW)
BELOW["benchmarks"] = set(BELOW) - {"benchmarks"}
BELOW["report"] = set(BELOW) - {"report"}
IMPORT = re.compile(
    r"^\s*(?:from|import) ((?:common|netsim|tcp|udp|benchmarks|report)[\w.]*)", re.M
)


def layer_of(module: str) -> str | None:
    for layer in sorted(BELOW, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


def test_every_import_goes_down_the_layers() -> None:
    wrong = []
    for path in ROOT.glob("*/**/*.py"):
        relative = path.relative_to(ROOT)
        me = layer_of(".".join(relative.with_suffix("").parts))
        if me is None:
            continue
        for module in IMPORT.findall(path.read_text(encoding="utf-8")):
            other = layer_of(module)
            if other is not None and other != me and other not in BELOW[me]:
                wrong.append(f"{relative} imports {module}")
    assert wrong == []


def test_the_layers_are_folders() -> None:
    for layer in BELOW:
        assert (ROOT / layer.replace(".", "/") / "__init__.py").is_file(), layer


MAX_FUNCTION_LINES = 40
SHORT = ("common", "tcp", "udp")


def test_no_function_in_the_servers_layers_is_long() -> None:
    """A function a newcomer reads at once: 40 lines at most, docstring and all."""
    long = []
    for top in SHORT:
        for path in sorted((ROOT / top).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = (node.end_lineno or node.lineno) - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} {lines}")
    assert long == []
