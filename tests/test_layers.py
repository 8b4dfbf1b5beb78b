"""The folders are the layers: each package imports only from the layers below it."""

from __future__ import annotations

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
