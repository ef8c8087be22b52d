"""What the commands share: errors a person can act on, loading the app, JSON arguments,
opening the database, and the exit codes."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec

from .._errors import ValidationError
from .._queues import Queue
from .._schedules import Schedule
from .._schema import convert
from .._step import Step
from .._workflow import Workflow
from ..storage import PostgresStorage, SQLiteStorage, Storage
from ..storage._postgres import _describe as describe_dsn

EXIT_SUCCESS = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_SUSPENDED = 3
EXIT_CANCELED = 130

EXIT_CODES = {"success": EXIT_SUCCESS, "suspended": EXIT_SUSPENDED, "canceled": EXIT_CANCELED}

DEFAULT_DB = "trioflow.db"


def exit_code(status: str) -> int:
    """The exit code of a command that ends with a run in `status`."""
    return EXIT_CODES.get(status, EXIT_FAILED)


class CliError(Exception):
    """A problem the person at the terminal can fix: printed as one line, no traceback."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


# --- JSON ----------------------------------------------------------------------------


def json_dumps(value: Any, *, indent: int | None = None) -> str:
    """`value` (Structs, dicts, exceptions as strings...) as JSON text."""
    data = msgspec.json.encode(value, enc_hook=_fallback)
    if indent is not None:
        data = msgspec.json.format(data, indent=indent)
    return data.decode()


def _fallback(value: Any) -> Any:
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    return str(value)


def parse_json_arg(text: str | None, option: str) -> Any:
    """The value of a ``--input``/``--data`` argument: JSON text, or ``@path`` to a JSON
    file (``@-``: standard input). ``None`` when the option was not given."""
    if text is None:
        return None
    source = option
    if text.startswith("@"):
        path = text[1:]
        if path == "-":
            text, source = sys.stdin.read(), f"{option} @- (standard input)"
        else:
            try:
                text = Path(path).read_text(encoding="utf-8")
            except OSError as exc:
                raise CliError(
                    f"{option} @{path}: cannot read the file ({exc.strerror or exc}); "
                    "check the path, or pass the JSON itself"
                ) from exc
            source = f"{option} @{path}"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # bytes the terminal could not decode (surrogates)
        raise CliError(
            f"{source} is not UTF-8 text (an undecodable byte at position {exc.start}); "
            "pass UTF-8 JSON"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(
            f"{source} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}; "
            f"""quote it for the shell, e.g. {option} '{{"key": "value"}}'"""
        ) from exc


def check_input(workflow: Workflow, data: Any) -> None:
    """Validate the run's input against the workflow's input schema, before any run
    is created: the message names the field and the expected type."""
    try:
        convert(data, workflow.input_schema, step_id=None, what="input")
    except ValidationError as exc:
        hint = (
            "pass it with --input JSON or --input @file.json"
            if data is None
            else "fix the --input JSON to match the workflow's input schema"
        )
        raise CliError(f"invalid input for workflow {workflow.id!r}: {exc.detail}; {hint}") from exc


# --- loading the app -------------------------------------------------------------------


def split_app(spec: str) -> tuple[str, str | None]:
    """``MODULE_OR_FILE:NAME`` -> (module or file, name); the name may be left out."""
    target, sep, name = spec.rpartition(":")
    if not sep or not name or "/" in name or "\\" in name or name.endswith(".py"):
        return spec, None  # no name, or a Windows drive letter ("C:\\app.py")
    return target, name


def load_workflow(spec: str) -> Workflow:
    """The committed workflow named by ``MODULE_OR_FILE:WORKFLOW`` (WORKFLOW defaults
    to ``workflow``; a workflow id works too)."""
    target, name = split_app(spec)
    if not target:
        raise CliError(
            f"{spec!r} names no module; use MODULE_OR_FILE:WORKFLOW, "
            "e.g. examples/order_pipeline.py:workflow"
        )
    module = _import(target)
    found = _workflows_in(module)
    wanted = name or "workflow"
    obj = getattr(module, wanted, None)
    if obj is None:
        by_id = [w for w in found.values() if w.id == wanted]
        if len(by_id) == 1:
            return by_id[0]
        raise CliError(f"{target} has no workflow named {wanted!r}; {_choices(target, found)}")
    if not isinstance(obj, Workflow):
        kind = "step" if isinstance(obj, Step) else f"{type(obj).__name__}"
        raise CliError(
            f"{target}:{wanted} is a {kind}, not a workflow; name a workflow built with "
            f"trioflow.create_workflow(...).commit() ({_choices(target, found)})"
        )
    if not obj.committed:
        raise CliError(
            f"workflow {target}:{wanted} is not committed; end its definition with .commit()"
        )
    return obj


def app_objects(specs: list[str]) -> tuple[list[Queue], list[Schedule]]:
    """The `trioflow.Queue` and `trioflow.Schedule` objects defined at module level in
    the modules of ``MODULE_OR_FILE[:WORKFLOW]`` specs (each module once)."""
    queues: dict[str, Queue] = {}
    schedules: dict[str, Schedule] = {}
    for target in dict.fromkeys(split_app(spec)[0] for spec in specs):
        for value in vars(_import(target)).values():
            if isinstance(value, Queue):
                queues.setdefault(value.name, value)
            elif isinstance(value, Schedule):
                schedules.setdefault(value.id, value)
    return list(queues.values()), list(schedules.values())


def _workflows_in(module: ModuleType) -> dict[str, Workflow]:
    return {
        attr: value
        for attr, value in vars(module).items()
        if isinstance(value, Workflow) and value.committed and not attr.startswith("_")
    }


def _choices(target: str, found: dict[str, Workflow]) -> str:
    if not found:
        return f"{target} defines no committed workflow at module level"
    names = ", ".join(f"{attr} (id {w.id!r})" for attr, w in sorted(found.items()))
    return f"its workflows: {names}"


def _is_file(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def _import(target: str) -> ModuleType:
    if _is_file(target):
        return _import_file(target)
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: modules of the current folder
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (target == exc.name or target.startswith(exc.name + ".")):
            raise CliError(
                f"cannot import module {target!r}: there is no such module; check the "
                "spelling and the current folder, or give the path of a .py file"
            ) from exc
        raise _import_failed(target, exc) from exc
    except Exception as exc:
        raise _import_failed(target, exc) from exc


# Files already loaded, by resolved path: a worker reads its workflows, queues and
# schedules from one module, which must run once (its objects are compared).
_loaded_files: dict[Path, ModuleType] = {}


def _import_file(target: str) -> ModuleType:
    path = Path(target)
    if not path.is_file():
        raise CliError(
            f"cannot load {target}: no such file; check the path (relative to {os.getcwd()})"
        )
    loaded = _loaded_files.get(path.resolve())
    if loaded is not None:
        return loaded
    stem = path.stem
    name = stem if stem.isidentifier() and stem not in sys.modules else "__trioflow_app__"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise CliError(f"cannot load {target}: not a Python file; give a .py file")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # as `python FILE` does: its neighbours import
    sys.modules[name] = module  # Structs resolve their annotations through sys.modules
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise _import_failed(target, exc) from exc
    _loaded_files[path.resolve()] = module
    return module


def _import_failed(target: str, exc: Exception) -> CliError:
    if isinstance(exc, SyntaxError):
        where = f"{exc.filename}:{exc.lineno}" if exc.filename else target
        return CliError(
            f"cannot import {target}: syntax error at {where}: {exc.msg}; fix the module"
        )
    where = ""
    frames = traceback.extract_tb(exc.__traceback__)
    user_frames = [f for f in frames if "importlib" not in f.filename]
    if user_frames:
        last = user_frames[-1]
        where = f" at {_short(last.filename)}:{last.lineno}"
    return CliError(
        f"cannot import {target}: importing it raised {type(exc).__name__}: {exc}{where}; "
        "fix the module (--debug shows the traceback)"
    )


def _short(filename: str) -> str:
    try:
        return os.path.relpath(filename)
    except ValueError:
        return filename


# --- the database ----------------------------------------------------------------------


def existing_db(path: str) -> str:
    """`path` if a database is there: commands that read runs never create one."""
    if os.path.isdir(path):
        raise CliError(f"{path} is a folder; pass --db the path of a trioflow database file")
    if not os.path.exists(path):
        raise CliError(
            f"no trioflow database at {path}; pass --db PATH (or set TRIOFLOW_DB) to where "
            "`trioflow run` stored its runs"
        )
    return path


def open_storage(
    args: argparse.Namespace, *, read_only: bool = False, must_exist: bool = True
) -> Storage:
    """The storage the command works on: PostgreSQL at ``--dsn`` (or $TRIOFLOW_DSN), else
    the SQLite file of ``--db`` (which must exist for commands that only look at runs)."""
    if args.dsn:
        return PostgresStorage(args.dsn, read_only=read_only)
    path = existing_db(args.db) if must_exist else args.db
    return SQLiteStorage(path, read_only=read_only)


def place(args: argparse.Namespace) -> str:
    """Where the runs are, for messages: the SQLite path, or the DSN without its password."""
    if args.dsn:
        return f"PostgreSQL ({describe_dsn(args.dsn)})"
    return str(args.db)


def not_found(run_id: str, db: str) -> CliError:
    where = "" if db.startswith("PostgreSQL") else f" --db {db}"
    return CliError(
        f"no run with id {run_id!r} in {db}; `trioflow runs list{where}` shows the stored runs"
    )
