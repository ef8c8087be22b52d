"""`serve_http`: the app on Hypercorn's Trio worker, bound to one address.

Loopback by default. Any other address puts the API (which starts and cancels runs)
on a network, so it needs a token: refused before anything is bound otherwise."""

from __future__ import annotations

import functools
import ipaddress

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from .._engine import Engine
from ._app import http_app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_exposure(host: str, token: str | None) -> None:
    if token is None and not is_loopback(host):
        raise ValueError(
            f"serving on {host} lets anyone who reaches it start and cancel runs; pass a "
            "token (--token T, or token=...) so every API call must carry it, or serve "
            "on 127.0.0.1"
        )


async def serve_http(
    engine: Engine,
    *,
    host: str,
    port: int,
    token: str | None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    check_exposure(host, token)
    app = http_app(engine, token=token)
    config = Config()
    address = f"[{host.strip('[]')}]" if ":" in host else host
    config.bind = [f"{address}:{port}"]
    config.accesslog = None
    config.loglevel = "WARNING"  # errors still show; "Running on ..." is for the caller to say
    config.graceful_timeout = 1.0
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(functools.partial(serve, app, config))  # type: ignore[arg-type]
        task_status.started(binds[0])
