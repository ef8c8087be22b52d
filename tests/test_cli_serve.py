"""``trioflow serve``: a real server process, refused on a non-loopback address without a
token, and stopped by Ctrl-C without canceling the runs it executes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from web_server import APP, serving

from trioflow.storage import SQLiteStorage


def _trioflow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trioflow", *args], capture_output=True, text=True, timeout=30
    )


def test_serve_refuses_another_address_without_a_token(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    for host in ["0.0.0.0", "10.1.2.3"]:
        done = _trioflow("serve", f"{APP}:quick", "--db", str(db), "--host", host)
        assert done.returncode == 2
        assert f"serving on {host}" in done.stderr and "--token" in done.stderr
    assert not db.exists()  # refused before anything was opened


def test_serve_without_the_web_extra_says_how_to_install_it(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['hypercorn'] = None\n"
        "from trioflow._cli import main\n"
        f"sys.exit(main(['serve', {str(APP) + ':quick'!r}, '--db', {str(tmp_path / 'x.db')!r}]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 2
    assert "pip install 'trioflow[web]'" in done.stderr


@pytest.mark.slow
async def test_ctrl_c_stops_the_server_and_leaves_its_runs_recoverable(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    with serving(db) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            response = await client.post("/api/workflows/long/runs", json={"run_id": "kept"})
            assert response.status_code == 201
    # serving() sent SIGINT and waited: the run was interrupted, not canceled.
    async with SQLiteStorage(db) as storage:
        row = await storage.load("kept")
    assert row.status in ("pending", "running")
    assert not row.cancel_requested
