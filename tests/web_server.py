"""A real ``trioflow serve`` process over tests/web_app.py, for the tests that need a
live server (the property-based API run, the browser): a free port on 127.0.0.1."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

APP = Path(__file__).resolve().parent / "web_app.py"
WORKFLOWS = ["quick", "long", "approval", "signal", "broken", "writer"]


@contextmanager
def serving(db: Path, *, token: str | None = None, quick_seconds: float = 0.05) -> Iterator[str]:
    """Serve on a free port; yield its URL; stop it with Ctrl-C (SIGINT) at the end."""
    command = [sys.executable, "-m", "trioflow", "serve"]
    command += [f"{APP}:{name}" for name in WORKFLOWS]
    command += ["--db", str(db), "--port", "0"]
    if token is not None:
        command += ["--token", token]
    env = {**os.environ, "WEB_APP_QUICK_SECONDS": str(quick_seconds)}
    server = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        url = None
        lines = []
        for line in server.stderr:
            lines.append(line)
            found = re.search(r"dashboard at (http://127\.0\.0\.1:\d+)/", line)
            if found:
                url = found.group(1)
                break
        assert url is not None, "the server did not start:\n" + "".join(lines)
        # Keep reading its stderr, so that a chatty server never blocks on a full pipe.
        drain = threading.Thread(target=server.stderr.read, daemon=True)
        drain.start()
        yield url
    finally:
        server.send_signal(signal.SIGINT)
        try:
            code = server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
            raise AssertionError("the server did not stop within 15 s of Ctrl-C") from None
        if server.stderr is not None:
            server.stderr.close()
        assert code == 0, f"the server exited with {code} on Ctrl-C"
