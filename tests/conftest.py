"""Shared test configuration.

Hypothesis runs derandomized (the same examples every run, so CI is reproducible) and
without deadlines (a slow CI machine must not turn into a flaky failure). Set
``HYPOTHESIS_PROFILE=explore`` to search with fresh random examples locally.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", deadline=None, derandomize=True, database=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
