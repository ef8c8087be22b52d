"""A throwaway PostgreSQL server for the tests and benchmarks, and the storage fixtures.

`PostgresServer` runs ``initdb`` into a temporary directory and ``pg_ctl start`` on a
free loopback port (fsync off: nothing here must survive a power cut; ``durable=True``
keeps PostgreSQL's default durability, for benchmarks), and removes it all on `stop()`.
For fault tests it can restart the server (``pg_ctl restart -m fast``), shut it down and
start it again, stall it (SIGSTOP of the postmaster and every backend), and add a role
that must log in with a password. As root (initdb refuses root) the server runs as the
``postgres`` user if there is one, else as ``nobody``. Binaries are looked up on PATH,
then in Debian's ``/usr/lib/postgresql/*/bin``; `.ci/run` installs them when missing.

Fixtures (imported by conftest.py, except ``own_postgres_server``: import it where used):

- ``postgres_server`` (session): the server; a clear failure if it cannot start, or a
  skip when ``TRIOFLOW_SKIP_POSTGRES=1``.
- ``own_postgres_server``: a server of the test's own, for tests that restart, stall or
  stop it (the session's server is left alone).
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
import signal
import socket
import subprocess
import tempfile
import time
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

    def __init__(self, *, durable: bool = False) -> None:
        self.durable = durable
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
        self._options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=300"
        )
        if not self.durable:
            self._options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._pg_ctl_start("start")
        admin = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
        import psycopg

        with psycopg.connect(admin, autocommit=True) as conn:
            # FILE_COPY (PostgreSQL 15+) is far faster than WAL_LOG with fsync off.
            strategy = " STRATEGY = FILE_COPY" if conn.info.server_version >= 150000 else ""
            conn.execute(f"CREATE DATABASE trioflow{strategy}")
        self.dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=trioflow"
        return self.dsn

    def _pg_ctl_start(self, command: str, *extra: str) -> None:
        assert self.root is not None
        data, log = str(self.root / "data"), str(self.root / "server.log")
        # -l: without a log file the server would keep our output pipe open.
        done = self._run(
            self._pg_ctl, "-D", data, "-o", self._options, "-l", log, command, *extra,
            "-w", "-t", "60",
        )  # fmt: skip
        self._check(done, f"pg_ctl {command}")

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every connection is closed; back up on return."""
        self._pg_ctl_start("restart", "-m", "fast")

    def shut_down(self) -> None:
        """``pg_ctl stop -m fast``, keeping the data for `start_again`."""
        assert self.root is not None
        done = self._run(self._pg_ctl, "-D", str(self.root / "data"), "stop", "-m", "fast", "-w")
        self._check(done, "pg_ctl stop")

    def start_again(self) -> None:
        self._pg_ctl_start("start")

    def processes(self) -> list[int]:
        """The postmaster's pid, then its children's (the backends and helpers)."""
        assert self.root is not None
        postmaster = int((self.root / "data" / "postmaster.pid").read_text().split()[0])
        children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
        return [postmaster, *map(int, children)]

    def stall(self, seconds: float) -> None:
        """Freeze every server process (SIGSTOP) for `seconds`, then let them go on.
        Their sockets stay open: clients see a server that answers nothing."""
        pids = self.processes()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            for pid in reversed(pids):
                os.kill(pid, signal.SIGCONT)

    def add_password_role(self, role: str, password: str) -> None:
        """A login role that must give `password` over TCP (the others stay trusted)."""
        assert self.root is not None
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
            conn.execute(f"GRANT ALL ON DATABASE trioflow TO {role}")
            conn.execute(f"GRANT ALL ON SCHEMA public TO {role}")
        hba = self.root / "data" / "pg_hba.conf"
        rule = f"host all {role} 127.0.0.1/32 scram-sha-256\n"
        hba.write_text(rule + hba.read_text())
        done = self._run(self._pg_ctl, "-D", str(self.root / "data"), "reload")
        self._check(done, "pg_ctl reload")
        time.sleep(0.5)  # the postmaster rereads pg_hba.conf on SIGHUP, asynchronously

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
def own_postgres_server() -> Iterator[PostgresServer]:
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"PostgreSQL tests skipped ({SKIP_ENV}=1)")
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
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
