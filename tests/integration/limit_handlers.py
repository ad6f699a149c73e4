"""Handlers that pass one of Lambda's limits, for tests/integration/test_limits.py: each does the real function's
work (it calls the real handler) after doing the one thing that passes the limit. The limits are what is under
test; these are the workloads. A test names one in the engine's catalog overrides, e.g.
`LocalEngine(..., functions={"plan": {"handler": "tests.integration.limit_handlers.slow_plan"}})`."""

from __future__ import annotations

import os
import tempfile
import time

from lambdas import fetch as _fetch
from lambdas import plan as _plan


def slow_plan(event, context):
    time.sleep(float(os.environ.get("LIMIT_SLEEP_S", "30")))
    return _plan.handler(event, context)


def slow_points_fetch(event, context):
    """A points batch (level 3) that hangs: a vendor call that never answers, say."""
    if event.get("level") == 3:
        time.sleep(float(os.environ.get("LIMIT_SLEEP_S", "30")))
    return _fetch.handler(event, context)


def greedy_plan(event, context):
    """Holds LIMIT_MB of memory (written, so resident) for a moment."""
    hog = b"\x01" * (int(os.environ.get("LIMIT_MB", "400")) * 2**20)
    time.sleep(2)
    return {**_plan.handler(event, context), "held": len(hog) > 0}


def tmp_filling_plan(event, context):
    """Writes LIMIT_MB into /tmp (tempfile's folder) and leaves it there."""
    with tempfile.NamedTemporaryFile(delete=False) as f:
        f.write(b"\x01" * (int(os.environ.get("LIMIT_MB", "3")) * 2**20))
    return _plan.handler(event, context)


def big_answer_plan(event, context):
    """Returns LIMIT_KB of extra data with the plan's answer."""
    return {**_plan.handler(event, context), "extra": "x" * (int(os.environ.get("LIMIT_KB", "300")) * 1024)}
