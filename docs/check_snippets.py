"""Run every ```python block of README.md and docs/*.md, and check what it prints.

Usage: ``python docs/check_snippets.py [FILE.md ...]`` (default: README.md and
docs/*.md of this repository). Each failure is reported as ``path:line: message`` and
the exit status is 1.

The conventions a page follows:

1. **A page is one program.** Its ```python blocks run in order in one namespace, in an
   interpreter and a temporary working directory of its own, so a block may use what an
   earlier block of the same page defined or imported, and never what another page did.
   The first block that fails stops its page. (The checker itself imports ``trio``,
   ``trio.testing`` and ``trioflow.testing``; a page should still import what it uses.)
2. **Top-level ``await``** is allowed, as in an async REPL: such a block runs as the
   body of an async function under ``trio.run``.
3. **Time is virtual.** Every ``trio.run`` without a ``clock=`` (the checker's and the
   snippets' own) runs under ``trio.testing.MockClock(autojump_threshold=0)`` with
   trioflow's wall clock tied to it: ``await trio.sleep(10)`` takes no real time. A
   block marked ``<!-- check-snippets: real-clock -->`` (on a line of its own, before
   the fence) runs on the real clock instead: use it for SQLite and PostgreSQL, whose
   worker threads an autojumping clock would not wait for.
4. **Shown output is checked.** What a block writes to stdout must equal, line by line:

   - the ```text (or ```console / ```output) block that directly follows it (only blank
     lines between), if there is one;
   - else its ``# prints: ...`` comments, one output line each, in order (a block with
     none of them may print anything).

   ``...`` in an expected line matches any text (``CancelResult(message=..., ...)``);
   trailing spaces and leading/trailing blank lines are ignored.
5. **Hidden code.** ``<!-- check-snippets: run`` on a line of its own, then Python lines,
   then ``-->``, runs at that place in the page but is not shown to readers: stand-ins
   for the reader's own services (``send()``, ``storage_service``) and checks the page
   needs but would distract from its point.
6. **Skipped blocks.** ``<!-- check-snippets: skip -->`` before a fence: that block does
   not run (another library's code shown for comparison); words after ``skip`` say why.
   Blocks in other languages (```bash, ```typescript, ...) never run.
7. **Tests run under pytest.** If a page defines ``test_*`` functions, its blocks
   (shown and hidden, except those with top-level ``await``) are written, each at its
   own line number, to a test module that pytest runs with ``trio_mode`` and trioflow's
   plugin: every test must pass (a test meant to fail says so with
   ``pytest.mark.xfail(strict=True)``, in hidden code if need be).
8. **PostgreSQL.** A block marked ``<!-- check-snippets: postgres -->`` runs on the real
   clock with ``TRIOFLOW_DSN`` set to a throwaway PostgreSQL server (started once, with
   tests/pg_server.py, and removed when the check ends), as a reader's own server.
"""

from __future__ import annotations

import ast
import atexit
import contextlib
import dataclasses
import difflib
import inspect
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import traceback
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = {"python", "py", "python3"}
OUTPUT = {"text", "console", "output"}
PYTEST_TIMEOUT = 300  # seconds for one page's tests, in a subprocess

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_MARKER = re.compile(
    r"^\s*<!--\s*check-snippets:\s*(?P<what>[\w-]+)(?P<note>[^>]*?)\s*(?P<end>-->)?\s*$"
)
_PRINTS = re.compile(r"#\s*prints:\s?(?P<line>.*)$")


@dataclasses.dataclass
class Block:
    line: int  # the page's line number of the block's first code line
    code: str  # dedented
    hidden: bool = False
    skip: bool = False
    real_clock: bool = False
    postgres: bool = False  # needs TRIOFLOW_DSN: a throwaway server is started for it
    expected: list[str] | None = None  # what it must print; None: anything
    end: int = 0  # the page's line index (0-based) of its closing fence

    def compiled(self, filename: str) -> types.CodeType:
        # Padding keeps the page's line numbers in tracebacks.
        return compile(
            "\n" * (self.line - 1) + self.code,
            filename,
            "exec",
            flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
            dont_inherit=True,
        )


class PageError(Exception):
    """A block failed: ``line`` is the page line to report."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def parse_page(text: str) -> list[Block]:
    """The python blocks (shown and hidden) of a markdown page, in page order."""
    lines = text.splitlines()
    blocks: list[Block] = []
    markers: set[str] = set()
    index = 0
    while index < len(lines):
        marker = _MARKER.match(lines[index])
        if marker is not None:
            what = marker["what"]
            if what == "run" and not marker["end"] and not marker["note"].strip():
                start = index + 1
                index = start
                while index < len(lines) and lines[index].strip() != "-->":
                    index += 1
                code = textwrap.dedent("\n".join(lines[start:index])) + "\n"
                blocks.append(Block(start + 1, code, hidden=True))
            elif what in {"skip", "real-clock", "postgres"} and marker["end"]:
                markers.add(what)
            else:
                raise PageError(index + 1, f"unknown check-snippets marker: {lines[index]!r}")
            index += 1
            continue
        opening = _FENCE.match(lines[index])
        index += 1
        if opening is None:
            continue
        words = opening["info"].strip().split()
        language = words[0].lower() if words else ""
        start = index
        index = _closing_fence(lines, start, opening["fence"])
        body = textwrap.dedent("\n".join(lines[start:index])) + "\n"
        index += 1  # skip the closing fence (or run off the end of an unclosed block)
        if language in PYTHON:
            skip = "skip" in markers
            # A PostgreSQL block runs on the real clock: its waits are on a real server.
            real_clock = "real-clock" in markers or "postgres" in markers
            block = Block(start + 1, body, skip=skip, real_clock=real_clock, end=index - 1)
            block.postgres = "postgres" in markers
            blocks.append(block)
        elif language in OUTPUT and blocks and not blocks[-1].hidden:
            previous = blocks[-1]
            if all(not line.strip() for line in lines[previous.end + 1 : start - 1]):
                previous.expected = body.splitlines()
        markers.clear()
    for block in blocks:
        if block.expected is None:
            prints = [m["line"] for m in map(_PRINTS.search, block.code.splitlines()) if m]
            block.expected = prints or None
    return blocks


def _closing_fence(lines: list[str], start: int, fence: str) -> int:
    index = start
    while index < len(lines):
        closing = _FENCE.match(lines[index])
        if (
            closing is not None
            and closing["fence"][0] == fence[0]
            and len(closing["fence"]) >= len(fence)
            and not closing["info"].strip()
        ):
            return index
        index += 1
    return index


def output_mismatch(expected: list[str], printed: str) -> str | None:
    """``None`` if `printed` matches `expected` (convention 4), else a diff."""
    want = _trim([line.rstrip() for line in expected])
    got = _trim([line.rstrip() for line in printed.splitlines()])
    if len(want) == len(got) and all(map(_line_matches, want, got)):
        return None
    diff = difflib.unified_diff(want, got, "shown on the page", "printed", lineterm="")
    return "\n".join(diff)


def _trim(lines: list[str]) -> list[str]:
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _line_matches(want: str, got: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in want.split("..."))
    return re.fullmatch(pattern, got) is not None


@contextlib.contextmanager
def virtual_time(enabled: Callable[[], bool]) -> Iterator[None]:
    """Make ``trio.run`` default to an autojumping MockClock with trioflow's wall clock
    tied to it, while `enabled()` is true (convention 3)."""
    import trio
    import trio.testing

    from trioflow.testing import tie_wall_clock

    real_run = trio.run

    def run(async_fn: Callable[..., Any], *args: Any, **options: Any) -> Any:
        if options.get("clock") is not None or not enabled():
            return real_run(async_fn, *args, **options)
        with tie_wall_clock():
            clock = trio.testing.MockClock(autojump_threshold=0)
            return real_run(async_fn, *args, clock=clock, **options)

    trio.run = run
    try:
        yield
    finally:
        trio.run = real_run


_SERVER: list[Any] = []


def postgres_dsn() -> str:
    """The DSN of a throwaway PostgreSQL server (tests/pg_server.py), started on first
    use and stopped when the check ends (convention 8)."""
    if not _SERVER:
        sys.path.insert(0, str(ROOT / "tests"))
        from pg_server import PostgresServer

        server = PostgresServer()
        server.start()
        atexit.register(server.stop)
        _SERVER.append(server)
    return str(_SERVER[0].dsn)


def run_block(block: Block, module: types.ModuleType, filename: str) -> None:
    import trio

    if block.postgres:
        os.environ["TRIOFLOW_DSN"] = postgres_dsn()

    code = block.compiled(filename)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            result = eval(code, module.__dict__)
            if inspect.iscoroutine(result):

                async def body() -> None:
                    await result

                trio.run(body)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise PageError(block.line, _describe(exc, filename)) from exc
    if block.expected is not None:
        diff = output_mismatch(block.expected, printed.getvalue())
        if diff is not None:
            raise PageError(block.line, f"the block prints something else:\n{diff}")


def _describe(exc: BaseException, filename: str) -> str:
    """The exception, and the last line of the page's code it went through."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename]
    where = f" (line {frames[-1].lineno})" if frames else ""
    text = "".join(traceback.format_exception_only(exc)).strip()
    return f"{text}{where}"


def check_file(path: Path) -> list[str]:
    """Run `path`'s blocks; one ``path:line: message`` string per failure."""
    try:
        shown = str(path.resolve().relative_to(ROOT))
    except ValueError:
        shown = str(path)
    try:
        blocks = parse_page(path.read_text(encoding="utf-8"))
    except PageError as exc:
        return [f"{shown}:{exc.line}: {exc.message}"]
    name = "snippets_" + re.sub(r"\W", "_", path.stem)
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module
    current: list[Block] = []
    cwd = Path.cwd()
    try:
        with tempfile.TemporaryDirectory() as folder:
            os.chdir(folder)
            with virtual_time(lambda: not current[0].real_clock):
                for block in blocks:
                    if block.skip:
                        continue
                    current[:] = [block]
                    run_block(block, module, shown)
            tests = [
                name
                for name, value in vars(module).items()
                if name.startswith("test") and inspect.isfunction(value)
            ]
            if tests:
                run_tests(blocks, Path(folder), path, shown)
    except PageError as exc:
        return [f"{shown}:{exc.line}: {exc.message}"]
    finally:
        os.chdir(cwd)
        del sys.modules[name]
    return []


def run_tests(blocks: list[Block], folder: Path, path: Path, shown: str) -> None:
    """Convention 7: the page's tests, through pytest in a subprocess."""
    lines: list[str] = []
    for block in blocks:
        if block.skip or block.compiled(shown).co_flags & inspect.CO_COROUTINE:
            continue
        lines.extend([""] * (block.line - 1 - len(lines)))
        lines.extend(block.code.splitlines())
    module = folder / f"test_{path.stem.replace('-', '_')}_page.py"
    module.write_text("\n".join(lines) + "\n", encoding="utf-8")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "trio_mode=true",
            "-o",
            "timeout=60",
            "-W",
            "error",
            "--rootdir",
            str(folder),
            str(module),
        ],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=PYTEST_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        report = (done.stdout + done.stderr).replace(str(module), shown).strip()
        first = next((b.line for b in blocks if "def test" in b.code), 1)
        raise PageError(first, f"the page's tests fail under pytest:\n{report}")


def check_in_own_process(path: Path) -> list[str]:
    """`check_file` in a fresh interpreter: what one page imports or patches (a module
    such as ``trio.testing``, trio-asyncio's event loop policy) cannot help or break
    another page."""
    done = subprocess.run(
        [sys.executable, __file__, "--one-page", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return [f"{path}: the check itself crashed:\n{done.stderr.strip()}"]
    errors: list[str] = json.loads(done.stdout)
    return errors


def main(argv: list[str]) -> int:
    if argv[:1] == ["--one-page"]:
        print(json.dumps(check_file(Path(argv[1]))))
        return 0
    paths = [Path(arg) for arg in argv] or [ROOT / "README.md", *sorted(ROOT.glob("docs/*.md"))]
    errors: list[str] = []
    blocks = 0
    for path in paths:
        if not path.exists():
            errors.append(f"{path}: no such file")
            continue
        with contextlib.suppress(PageError):
            blocks += sum(1 for b in parse_page(path.read_text(encoding="utf-8")) if not b.skip)
        errors.extend(check_in_own_process(path))
    for error in errors:
        print(error, file=sys.stderr)
    print(f"{blocks} python blocks run in {len(paths)} files, {len(errors)} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
