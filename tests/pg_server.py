"""A throwaway PostgreSQL server for the tests and benchmarks, and the storage fixtures.

`PostgresServer` runs ``initdb`` into a temporary directory and ``pg_ctl start`` on a
free loopback port (fsync off: nothing here must survive a power cut), and removes it
all on `stop()`. As root (initdb refuses root) the server runs as the ``postgres`` user
if there is one, else as ``nobody``. Binaries are looked up on PATH, then in Debian's
``/usr/lib/postgresql/*/bin``; `.ci/run` installs them when missing.

Fixtures (imported by conftest.py):

- ``postgres_server`` (session): the server; a clear failure if it cannot start, or a
  skip when ``TRIOFLOW_SKIP_POSTGRES=1``.
- ``postgres_dsn``: a DSN whose search_path is a fresh schema, so each test starts empty.
- ``storage_factory``: parametrized over ``sqlite`` and ``postgres``; calling it makes a
  new storage instance on one shared store (one per engine), ``.url`` names that store
  for subprocesses (`make_storage(url)`).
- ``storage``: one instance from ``storage_factory``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import trioflow

SKIP_ENV = "TRIOFLOW_SKIP_POSTGRES"


def find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """A PostgreSQL server in a temporary directory; `dsn` reaches database `trioflow`."""

    def __init__(self) -> None:
        self.root: Path | None = None
        self.port = 0
        self.dsn = ""
        self._user: str | None = None
        self._pg_ctl = ""

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", self._user, "--"] if self._user else []
        return subprocess.run(
            [*prefix, *argv], capture_output=True, text=True, timeout=120, check=False
        )

    def _check(self, done: subprocess.CompletedProcess[str], what: str) -> None:
        if done.returncode != 0:
            log = ""
            if self.root is not None and (self.root / "server.log").exists():
                log = (self.root / "server.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(
                f"{what} failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}\n{log}"
            )

    def start(self) -> str:
        initdb, pg_ctl = find_binary("initdb"), find_binary("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise RuntimeError(
                "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in "
                "/usr/lib/postgresql/*/bin; install them (apt-get install -y postgresql) "
                f"or set {SKIP_ENV}=1 to skip the PostgreSQL tests"
            )
        self._pg_ctl = pg_ctl
        self.root = Path(tempfile.mkdtemp(prefix="trioflow-pg-"))
        if os.geteuid() == 0:  # initdb refuses to run as root
            for user in ("postgres", "nobody"):
                with contextlib.suppress(KeyError):
                    entry = pwd.getpwnam(user)
                    os.chown(self.root, entry.pw_uid, entry.pw_gid)
                    self._user = user
                    break
            if self._user is None:
                raise RuntimeError("running as root and no 'postgres' or 'nobody' user")
        os.chmod(self.root, 0o700)
        data = str(self.root / "data")
        self._check(
            self._run(
                initdb, "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"
            ),
            "initdb",
        )
        self.port = _free_port()
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        self._check(
            self._run(
                pg_ctl, "-D", data, "-o", options, "-l", str(self.root / "server.log"),
                "start", "-w", "-t", "60",
            ),
            "pg_ctl start",
        )  # fmt: skip
        admin = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
        import psycopg

        with psycopg.connect(admin, autocommit=True) as conn:
            # FILE_COPY (PostgreSQL 15+) is far faster than WAL_LOG with fsync off.
            strategy = " STRATEGY = FILE_COPY" if conn.info.server_version >= 150000 else ""
            conn.execute(f"CREATE DATABASE trioflow{strategy}")
        self.dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=trioflow"
        return self.dsn

    def stop(self) -> None:
        if self.root is None:
            return
        if (self.root / "data" / "postmaster.pid").exists():
            self._run(self._pg_ctl, "-D", str(self.root / "data"), "stop", "-m", "fast", "-w")
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def new_schema_dsn(self) -> str:
        """A DSN whose tables go to a new, empty schema of the database."""
        import psycopg

        schema = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        return f"{self.dsn} options='-c search_path={schema}'"


@contextlib.contextmanager
def running_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


def make_storage(url: str) -> trioflow.Storage:
    """A new storage instance on the store `url` names: ``sqlite:PATH`` or a DSN."""
    if url.startswith("sqlite:"):
        return trioflow.SQLiteStorage(url.removeprefix("sqlite:"))
    return trioflow.PostgresStorage(url)


class StorageFactory:
    """Makes storage instances (one per engine) on one shared store."""

    def __init__(self, kind: str, url: str) -> None:
        self.kind = kind
        self.url = url

    def __call__(self) -> trioflow.Storage:
        return make_storage(self.url)

    def __repr__(self) -> str:
        return f"StorageFactory({self.kind})"


# ---- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"PostgreSQL tests skipped ({SKIP_ENV}=1)")
    server = PostgresServer()
    try:
        server.start()
    except Exception as exc:
        server.stop()
        pytest.fail(
            f"could not start a PostgreSQL server for the tests: {exc}\n"
            f"(set {SKIP_ENV}=1 to skip the PostgreSQL tests locally)",
            pytrace=False,
        )
    yield server
    server.stop()


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> str:
    return postgres_server.new_schema_dsn()


@pytest.fixture(params=["sqlite", "postgres"])
def storage_factory(request: pytest.FixtureRequest, tmp_path: Path) -> StorageFactory:
    if request.param == "sqlite":
        return StorageFactory("sqlite", f"sqlite:{tmp_path / 'runs.db'}")
    return StorageFactory("postgres", request.getfixturevalue("postgres_dsn"))


@pytest.fixture
def storage(storage_factory: StorageFactory) -> trioflow.Storage:
    return storage_factory()
