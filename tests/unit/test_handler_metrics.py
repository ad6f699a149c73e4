"""The handlers' Powertools metrics keep their namespace and service whatever imported them first."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from harvester.functions import COMMON_ENVIRONMENT


def test_the_fetch_handler_has_its_namespace_whatever_the_import_order():
    """Powertools reads POWERTOOLS_METRICS_NAMESPACE when Metrics() is built, that is when lambdas/fetch.py is
    imported: a process that imported it before the function's environment was in place (a test, a tool) held a
    Metrics without a namespace for its life, and the first EMF document it serialized raised SchemaValidationError
    ("Must contain a metric namespace")."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POWERTOOLS_")}
    code = ("import lambdas.fetch as f; f.metrics.add_metric(name='Probe', unit='Count', value=1); "
            "f.metrics.flush_metrics()")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    [doc] = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert doc["_aws"]["CloudWatchMetrics"][0]["Namespace"] == COMMON_ENVIRONMENT["POWERTOOLS_METRICS_NAMESPACE"]
    assert doc["service"] == COMMON_ENVIRONMENT["POWERTOOLS_SERVICE_NAME"] and doc["Probe"] == [1.0]
