"""The operator's tasks reach the system queue through ``task_routes``, not the deprecated ``queue`` task
attribute; tenants' task types keep the execution queue the dispatcher names."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT

# Imports every task module (tenantq.worker), binds every task, and reports Celery's deprecation
# warnings and each task's route. In a fresh interpreter: Celery warns once per task class, at bind.
PROBE = """
import json, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import tenantq.worker
    from tenantq.core.celery import app
    from tenantq.core.settings import get_settings
    from tenantq.platform.jobs.registry import REGISTRY
    app.finalize(auto=True)
    names = [n for n in app.tasks if not n.startswith("celery.")]
    tenant_tasks = sorted(set(names) & set(REGISTRY))
    exec_queue = get_settings().exec_queue
    router = app.amqp.router
    print(json.dumps({
        "warnings": [str(w.message) for w in caught if "task attribute" in str(w.message)],
        "system": {n: router.route({}, n)["queue"].name for n in names if n not in REGISTRY},
        "tenant": {n: router.route({"queue": exec_queue}, n)["queue"].name for n in tenant_tasks},
        "exec_queue": exec_queue,
    }))
"""


def test_system_tasks_are_routed_without_the_deprecated_queue_attribute():
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["warnings"] == []
    system = report["system"]
    # The tasks that used to declare queue=SYSTEM_QUEUE, plus the rest of the operator's tasks.
    for name in (
        "jobs.purge_expired_results",
        "billing.close_due_periods",
        "billing.stripe_sync_invoice",
        "billing.stripe_event",
        "billing.stripe_event_sweep",
        "billing.stripe_meter_events",
        "webhooks.deliver",
        "webhooks.sweep",
        "billing.reconcile_usage",
    ):
        assert system[name] == "tq.system", name
    assert set(system.values()) == {"tq.system"}
    assert report["tenant"], "no tenant task type registered"
    assert set(report["tenant"].values()) == {report["exec_queue"]}
