"""`trioflow.http_app` and `trioflow.serve_http`: the doors to the optional web extra.

The HTTP API and the dashboard need Starlette and Hypercorn (``pip install
'trioflow[web]'``), which the core does not depend on: these wrappers import
`trioflow._web` when called, never when trioflow is imported, and say how to install
the extra when it is missing. (A module ``__getattr__`` was rejected: the names would
then report the private module they live in.)
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from ._engine import Engine

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def _web() -> ModuleType:
    try:
        from . import _web
    except ImportError as exc:  # the extra's libraries are missing
        raise ImportError(
            f"the trioflow HTTP API needs the web extra ({exc.name or exc} is not installed); "
            "install it with: pip install 'trioflow[web]'"
        ) from exc
    return _web


def http_app(engine: Engine, *, token: str | None = None) -> Any:
    """The HTTP API and dashboard over `engine`, as an ASGI application to serve on
    Trio (Hypercorn's Trio worker) or to mount in another ASGI app. With `token`,
    every API call needs ``Authorization: Bearer <token>``."""
    return _web().http_app(engine, token=token)


async def serve_http(
    engine: Engine,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `http_app(engine)` on `host`:`port` until cancelled; for
    ``url = await nursery.start(serve_http, engine)``, which reports the URL served
    (``port=0`` picks a free port). Any `host` but a loopback address needs `token`."""
    await _web().serve_http(engine, host=host, port=port, token=token, task_status=task_status)
