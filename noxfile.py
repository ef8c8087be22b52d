"""Development sessions: ``nox -s tests``, ``lint``, ``typecheck``, ``docs``, ``bench``.

``nox`` alone runs the default sessions (all but ``bench``). Each session gets its own
venv under ``.nox/`` built from the Python that runs nox, and installs trioflow with
its test extra through :func:`install`.
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["tests", "lint", "typecheck", "docs"]


def install(session: nox.Session, *tools: str, extras: str = "test") -> None:
    """Install trioflow (editable, with `extras`) and the given tools."""
    session.install("-e", f".[{extras}]", *tools)


@nox.session
def tests(session: nox.Session) -> None:
    """Run the whole test suite; extra arguments go to pytest (``nox -s tests -- -k run``).
    The docs extra too: tests/test_docs.py builds the site."""
    install(session, extras="test,docs")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Check lint rules and formatting with ruff (config in pyproject.toml)."""
    install(session, "ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """Run mypy --strict (config in pyproject.toml) on the trioflow package."""
    install(session, "mypy")
    session.run("mypy", "trioflow")


@nox.session
def docs(session: nox.Session) -> None:
    """Run every ```python block of README.md and docs/*.md, checking the output they
    show (docs/check_snippets.py), then build the site with warnings as errors into
    docs/_build/html."""
    install(session, extras="test,docs")
    session.run("python", "docs/check_snippets.py")
    session.run(
        "python", "-m", "sphinx", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html"
    )


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmarks; extra arguments go to benchmarks/run.py."""
    install(session)
    session.run("python", "benchmarks/run.py", *session.posargs)
