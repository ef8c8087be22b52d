"""``trioflow worker``: a real worker process executes runs queued by another process,
and Ctrl-C stops it without canceling the runs it holds."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

import trioflow

ROOT = Path(__file__).resolve().parent.parent
ORDER_FILE = ROOT / "examples" / "order_pipeline.py"
ORDER = {"order_id": "A-7", "sku": "trio-mug", "quantity": 1}


def _order_workflow() -> Any:
    spec = importlib.util.spec_from_file_location("order_pipeline_for_worker", ORDER_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.workflow


def _start_worker(db: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "trioflow", "worker", f"{ORDER_FILE}:workflow", "--db", str(db)],
        env={**os.environ, "NO_COLOR": "1"},
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
async def test_worker_executes_queued_runs_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    workflow = _order_workflow()
    worker = _start_worker(db)
    try:
        assert worker.stderr is not None
        ready = await trio.to_thread.run_sync(worker.stderr.readline)
        assert "executing queued runs of order-pipeline" in ready
        storage = trioflow.SQLiteStorage(db)
        async with trioflow.open_engine(storage=storage, workflows=[workflow]) as engine:
            runs = [await engine.enqueue(workflow, ORDER) for _ in range(3)]
            with trio.fail_after(20):
                results = [await run.result() for run in runs]
        assert [r.status for r in results] == ["success"] * 3
        assert all(r.result.tracking == "TRK-A-7" for r in results)
        worker.send_signal(signal.SIGINT)
        assert await trio.to_thread.run_sync(worker.wait, 20) == 0
        assert "worker stopping" in worker.stderr.read()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        assert worker.stderr is not None
        worker.stderr.close()
