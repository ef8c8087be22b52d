"""Shared test configuration.

Hypothesis runs derandomized (the same examples every run, so CI is reproducible) and
without deadlines (a slow CI machine must not turn into a flaky failure). Set
``HYPOTHESIS_PROFILE=explore`` to search with fresh random examples locally.
"""

from __future__ import annotations

import os

from hypothesis import settings

# Storage fixtures (`storage`, `storage_factory` over sqlite and postgres, `postgres_dsn`,
# the session's `postgres_server`): see tests/pg_server.py.
from pg_server import postgres_dsn as postgres_dsn
from pg_server import postgres_server as postgres_server
from pg_server import storage as storage
from pg_server import storage_factory as storage_factory

settings.register_profile("ci", deadline=None, derandomize=True, database=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
