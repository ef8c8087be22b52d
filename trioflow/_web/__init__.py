"""The HTTP API and the dashboard (the ``trioflow[web]`` extra). Imported only by
`trioflow.http_app` and `trioflow.serve_http`, never by the core."""

from ._app import http_app
from ._serve import serve_http

__all__ = ["http_app", "serve_http"]
