"""Make tests/data/schema2_pg.sql: a plain-SQL dump of a PostgreSQL database of
trioflow's PostgreSQL schema 2 (one row per run, a whole snapshot in it), holding a run
of every status (tests/migration_app.py says which), for tests/test_migration.py to load
into a fresh database and open with the trioflow of the day.

Run from the repository root with the trioflow that writes schema 2:

    PYTHONPATH=. python tests/data/make_schema2_pg.py [--dsn DSN] [--out FILE]

`--dsn` names an empty database (its tables go to its search_path, ``public`` by
default); without it a throwaway server is started (tests/pg_server.py). The dump is
``pg_dump --no-owner --no-privileges --inserts`` of that database: the schema and one
INSERT per row, loadable with psql into any empty database.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/, for migration_app and pg_server

import migration_app  # noqa: E402
from pg_server import PostgresServer, find_binary  # noqa: E402

import trioflow  # noqa: E402
from trioflow.storage import _postgres  # noqa: E402


def dump(dsn: str, out: Path) -> None:
    pg_dump = find_binary("pg_dump")
    if pg_dump is None:
        raise SystemExit("pg_dump not found on PATH or in /usr/lib/postgresql/*/bin")
    done = subprocess.run(
        [pg_dump, "--no-owner", "--no-privileges", "--inserts", f"--dbname={dsn}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"pg_dump failed: {done.stderr}")
    # Newer pg_dump (15.14+, 16.10+, 17.6+) fences the dump in psql's \restrict KEY and
    # \unrestrict KEY, against meta-commands smuggled in by a hostile server. This dump
    # is ours and committed; without them it is plain SQL that any psql, or psycopg
    # executing the file, can load.
    lines = done.stdout.splitlines(keepends=True)
    fences = ("\\restrict ", "\\unrestrict ")
    out.write_text("".join(line for line in lines if not line.startswith(fences)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="an empty database (default: a throwaway server)")
    parser.add_argument("--out", type=Path, default=HERE / "schema2_pg.sql")
    args = parser.parse_args()
    assert _postgres.SCHEMA_VERSION == 2, "this fixture is of PostgreSQL schema 2"
    server = None
    dsn = args.dsn
    if dsn is None:
        server = PostgresServer()
        dsn = server.start()
    try:
        trio.run(migration_app.write_runs, trioflow.PostgresStorage(dsn))
        dump(dsn, args.out)
    finally:
        if server is not None:
            server.stop()
    text = args.out.read_text()
    print(f"{args.out}: {len(text)} characters, {text.count('INSERT INTO')} INSERTs")


if __name__ == "__main__":
    main()
