"""Check that every ```python block in README.md and docs/*.md compiles.

Usage: ``python docs/check_snippets.py [FILE.md ...]`` (default: README.md and
docs/*.md of this repository). Top-level ``await`` is allowed, as in an async REPL.
Each block that does not compile is reported as ``path:line: message`` and the exit
status is 1. Blocks are compiled, not run: a wrong name or a failing call is not caught.
"""

from __future__ import annotations

import ast
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LANGUAGES = {"python", "py", "python3"}
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


def python_blocks(text: str) -> Iterator[tuple[int, str]]:
    """Yield ``(line number of the block's first code line, code)`` for each python block."""
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        index += 1
        if opening is None:
            continue
        fence = opening["fence"]
        words = opening["info"].strip().split()
        language = words[0].lower() if words else ""
        start = index
        while index < len(lines):
            closing = _FENCE.match(lines[index])
            if (
                closing is not None
                and closing["fence"][0] == fence[0]
                and len(closing["fence"]) >= len(fence)
                and not closing["info"].strip()
            ):
                break
            index += 1
        body = lines[start:index]
        index += 1  # skip the closing fence (or run off the end of an unclosed block)
        if language in LANGUAGES:
            yield start + 1, textwrap.dedent("\n".join(body)) + "\n"


def check_file(path: Path) -> list[str]:
    """Return one ``path:line: message`` string per python block of ``path`` that fails."""
    try:
        shown = path.resolve().relative_to(ROOT)
    except ValueError:
        shown = path
    errors = []
    for first_line, code in python_blocks(path.read_text(encoding="utf-8")):
        try:
            compile(
                code,
                f"{shown}:{first_line}",
                "exec",
                flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
                dont_inherit=True,
            )
        except SyntaxError as exc:
            line = first_line + (exc.lineno or 1) - 1
            errors.append(f"{shown}:{line}: {exc.msg}")
    return errors


def main(argv: list[str]) -> int:
    paths = [Path(arg) for arg in argv] or [ROOT / "README.md", *sorted(ROOT.glob("docs/*.md"))]
    errors: list[str] = []
    blocks = 0
    for path in paths:
        if not path.exists():
            errors.append(f"{path}: no such file")
            continue
        blocks += sum(1 for _ in python_blocks(path.read_text(encoding="utf-8")))
        errors.extend(check_file(path))
    for error in errors:
        print(error, file=sys.stderr)
    print(f"{blocks} python blocks in {len(paths)} files, {len(errors)} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
