"""The `trioflow` command on PostgreSQL: every command takes ``--dsn`` (or $TRIOFLOW_DSN)
as it takes ``--db``; the commands that only look at runs create and change nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
APP = f"{ROOT / 'examples' / 'approval_flow.py'}:workflow"
ENV = {**os.environ, "NO_COLOR": "1", "TRIOFLOW_DB": "", "TRIOFLOW_DSN": ""}


def trioflow(
    tmp_path: Path, *args: str, dsn: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = ENV if dsn is None else {**ENV, "TRIOFLOW_DSN": dsn}
    return subprocess.run(
        [sys.executable, "-m", "trioflow", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_every_runs_command_works_on_postgresql(tmp_path: Path, postgres_dsn: str) -> None:
    order = json.dumps({"request_id": "PO-1", "amount": 12.5, "requester": "ada"})
    ran = trioflow(tmp_path, "--dsn", postgres_dsn, "run", APP, "--input", order, "--run-id", "p1")
    assert ran.returncode == 3, ran.stderr  # suspended for an approval
    listed = trioflow(tmp_path, "runs", "list", "--json", dsn=postgres_dsn)  # $TRIOFLOW_DSN
    assert [(r["run_id"], r["status"]) for r in json.loads(listed.stdout)] == [("p1", "suspended")]
    shown = trioflow(tmp_path, "runs", "show", "p1", "--dsn", postgres_dsn)
    assert "status    suspended" in shown.stdout
    canceled = trioflow(tmp_path, "runs", "cancel", "p1", "--dsn", postgres_dsn)
    assert canceled.returncode == 0, canceled.stderr
    assert "run p1 of 'approval' was canceled" in canceled.stdout
    deleted = trioflow(tmp_path, "runs", "delete", "p1", "--dsn", postgres_dsn)
    assert deleted.stdout.strip() == "deleted run p1 (canceled)"
    missing = trioflow(tmp_path, "runs", "show", "p1", "--dsn", postgres_dsn)
    assert missing.returncode == 2
    assert "no run with id 'p1' in PostgreSQL (host=127.0.0.1" in missing.stderr
    assert not (tmp_path / "trioflow.db").exists()  # nothing went to the SQLite default


def test_looking_at_a_database_without_runs_creates_nothing(
    tmp_path: Path, postgres_dsn: str
) -> None:
    for args in (["runs", "list"], ["runs", "show", "x"]):
        done = trioflow(tmp_path, *args, "--dsn", postgres_dsn)
        assert done.returncode == 1, done.stdout
        assert "no trioflow runs are stored there (no trioflow_meta table)" in done.stderr
    with psycopg.connect(postgres_dsn) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchone()
    assert tables == (0,)
