"""Make tests/data/schema3.db: a SQLite database of trioflow's schema 3 (one row per run,
a whole snapshot in it), holding a run of every status (tests/migration_app.py says
which), for tests/test_migration.py to open with the trioflow of the day.

Run from the repository root with the trioflow that writes schema 3:

    PYTHONPATH=. python tests/data/make_schema3_db.py [OUT]

The file is left as trioflow leaves it (WAL mode), but whole: checkpointed, VACUUMed,
closed, no -wal or -shm beside it.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/, for migration_app

import migration_app  # noqa: E402

import trioflow  # noqa: E402
from trioflow.storage import _sqlite  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "schema3.db"
    assert _sqlite.SCHEMA_VERSION == 3, "this fixture is of SQLite schema 3"
    for leftover in (out, Path(f"{out}-wal"), Path(f"{out}-shm")):
        leftover.unlink(missing_ok=True)
    trio.run(migration_app.write_runs, trioflow.SQLiteStorage(out))
    conn = sqlite3.connect(out, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("VACUUM")
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        rows = conn.execute("SELECT run_id, status FROM trioflow_runs ORDER BY run_id").fetchall()
    finally:
        conn.close()  # the last connection: SQLite checkpoints and removes -wal, -shm
    for suffix in ("-wal", "-shm"):
        assert not Path(f"{out}{suffix}").exists(), f"{out}{suffix} left behind"
    print(f"{out}: schema {version}, {out.stat().st_size} bytes")
    for run_id, status in rows:
        print(f"  {run_id}: {status}")


if __name__ == "__main__":
    main()
