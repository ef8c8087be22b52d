"""The docs: every snippet of README.md and docs/*.md runs and prints what its page
shows (docs/check_snippets.py), the check catches a page whose shown output is wrong,
the API reference covers every public name, and no page cites the internal spec."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

import trioflow

ROOT = Path(__file__).resolve().parent.parent
CHECKER = ROOT / "docs" / "check_snippets.py"


def load_checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_snippets", CHECKER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run_checker(*pages: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHECKER), *map(str, pages)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def write_page(folder: Path, text: str) -> Path:
    page = folder / "page.md"
    page.write_text(textwrap.dedent(text), encoding="utf-8")
    return page


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_snippet_of_the_readme_and_docs_runs_and_prints_what_is_shown() -> None:
    done = run_checker()
    assert done.returncode == 0, done.stderr
    blocks, files = re.fullmatch(
        r"(\d+) python blocks run in (\d+) files, 0 errors\n", done.stdout
    ).groups()  # type: ignore[union-attr]
    assert int(files) == 1 + len(list((ROOT / "docs").glob("*.md")))
    assert int(blocks) >= 50  # all of them; not a page or two found by mistake


BROKEN_PAGE = """\
    # A page whose shown output is wrong

    ```python
    import trio


    async def main() -> None:
        await trio.sleep(3600)  # virtual time: the check does not wait an hour
        print("slept", trio.current_time())


    trio.run(main)
    ```

    ```text
    slept 60.0
    ```
    """


def test_the_check_fails_when_a_snippet_prints_something_else(tmp_path: Path) -> None:
    page = write_page(tmp_path, BROKEN_PAGE)
    done = run_checker(page)
    assert done.returncode == 1
    assert done.stdout == "1 python blocks run in 1 files, 1 errors\n"
    assert done.stderr.splitlines() == [
        f"{page}:4: the block prints something else:",
        "--- shown on the page",
        "+++ printed",
        "@@ -1 +1 @@",
        "-slept 60.0",
        "+slept 3600.0",
    ]


def test_the_check_passes_the_same_page_with_the_right_output(tmp_path: Path) -> None:
    page = write_page(tmp_path, BROKEN_PAGE.replace("slept 60.0", "slept 3600.0"))
    done = run_checker(page)
    assert (done.returncode, done.stderr) == (0, "")


def test_prints_comments_hidden_code_and_skipped_blocks(tmp_path: Path) -> None:
    page = write_page(
        tmp_path,
        """\
        <!-- check-snippets: run
        def secret() -> str:
            return "from hidden code"
        -->

        ```python
        print(secret())  # prints: from hidden ...
        ```

        <!-- check-snippets: skip: another library's code -->
        ```python
        raise SystemExit("a skipped block never runs")
        ```

        ```python
        print(secret().upper())  # prints: from hidden code
        ```
        """,
    )
    done = run_checker(page)
    assert done.returncode == 1
    assert done.stderr.splitlines()[0] == f"{page}:16: the block prints something else:"
    assert "+FROM HIDDEN CODE" in done.stderr.splitlines()


def test_a_failing_snippet_is_reported_with_its_page_line(tmp_path: Path) -> None:
    page = write_page(
        tmp_path,
        """\
        ```python
        x = 1
        ```

        ```python
        y = x + 1
        z = undefined_name
        ```
        """,
    )
    done = run_checker(page)
    assert done.returncode == 1
    assert done.stderr == (f"{page}:6: NameError: name 'undefined_name' is not defined (line 7)\n")


def test_a_pages_failing_test_function_fails_the_check(tmp_path: Path) -> None:
    page = write_page(
        tmp_path,
        """\
        ```python
        import trio


        async def test_sleeping(trioflow_clock) -> None:
            await trio.sleep(5)
            assert trio.current_time() == 4
        ```
        """,
    )
    done = run_checker(page)
    assert done.returncode == 1
    assert done.stderr.startswith(f"{page}:2: the page's tests fail under pytest:")
    assert "1 failed" in done.stderr


def test_each_page_stands_alone(tmp_path: Path) -> None:
    first = tmp_path / "first.md"
    first.write_text("```python\nimport xml.dom.minidom\n```\n", encoding="utf-8")
    second = tmp_path / "second.md"
    second.write_text("```python\nimport xml\n\nprint(xml.dom)\n```\n", encoding="utf-8")
    done = run_checker(first, second)
    assert done.returncode == 1
    assert done.stderr == (
        f"{second}:2: AttributeError: module 'xml' has no attribute 'dom' (line 4)\n"
    )


def test_output_matching_ignores_trailing_space_and_expands_ellipses() -> None:
    checker = load_checker()
    assert checker.output_mismatch(["a ...", "b"], "a anything  \nb\n\n") is None
    assert checker.output_mismatch(["a", "b"], "a\n") is not None
    assert checker.output_mismatch(["(x)"], "(x)") is None  # not a regular expression


def test_a_text_block_is_output_only_right_after_a_python_block() -> None:
    checker = load_checker()
    blocks = checker.parse_page(
        "```python\nprint(1)\n```\n\n```text\n1\n```\n\n"
        "```python\nprint(2)\n```\nSome prose.\n```text\nnot output\n```\n"
    )
    assert [(b.line, b.expected) for b in blocks] == [(2, ["1"]), (10, None)]


def documented_names() -> set[str]:
    text = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    return set(
        re.findall(
            r"^\.\. (?:autoclass|autofunction|autoexception|py:data):: trioflow\.(\w+)$", text, re.M
        )
    )


def test_the_api_reference_documents_every_public_name() -> None:
    assert documented_names() == set(trioflow.__all__)


def test_every_public_name_has_a_docstring() -> None:
    undocumented = [
        name
        for name in trioflow.__all__
        if name != "WorkflowEvent" and not (getattr(trioflow, name).__doc__ or "").strip()
    ]
    assert undocumented == []


def test_no_page_cites_the_internal_spec() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    citations = [
        f"{page.name}:{number}"
        for page in pages
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
        if "SPEC" in line
    ]
    assert citations == []


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_site_builds_without_warnings_and_documents_run_cancel(tmp_path: Path) -> None:
    build = ["-d", str(tmp_path / "doctrees"), str(ROOT / "docs"), str(tmp_path / "html")]
    done = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", *build],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    reference = (tmp_path / "html" / "reference.html").read_text(encoding="utf-8")
    for name in trioflow.__all__:
        assert f'id="trioflow.{name}"' in reference, name
    assert 'id="trioflow.Run.cancel"' in reference
    index = (tmp_path / "html" / "index.html").read_text(encoding="utf-8")
    assert "Durable, cancellable workflow runs for" in index  # the README is the front page
