"""The Python examples of docs/methods.md run, and print what the page says they print.

Each ```python block is executed on its own; a line ``print(...)  # text`` in a block must
print exactly ``text``, in order. Docs that need trained checkpoints or downloads (README,
prototypes.md, evaluation.md) are exercised by the command-line tests instead.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)
PRINT = re.compile(r"^\s*print\(.*\)\s+# (.*)$")


def _blocks(name: str) -> list[str]:
    return BLOCK.findall((DOCS / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize("index", range(len(_blocks("methods.md"))))
def test_methods_md_examples_print_what_they_say(index: int) -> None:
    code = _blocks("methods.md")[index]
    expected = [m.group(1).strip() for line in code.splitlines() if (m := PRINT.match(line))]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"docs/methods.md block {index + 1}", "exec"), {})
    assert [line.strip() for line in out.getvalue().splitlines()] == expected


def test_methods_md_has_examples() -> None:
    assert len(_blocks("methods.md")) >= 4
