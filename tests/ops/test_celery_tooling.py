"""tenantq workers are plain Celery workers: the stock tools see them unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from tests.conftest import ROOT, free_port, wait_until

pytestmark = pytest.mark.e2e


def running_nodes() -> list[str]:
    from tenantq.core.celery import app

    replies = wait_until(lambda: app.control.ping(timeout=1.0), timeout=60, message="a worker to answer ping")
    return sorted(name for reply in replies for name in reply)


def celery_cli(platform_env, *args: str) -> dict:
    """Run ``celery -A tenantq.worker <args>`` as an operator would. Naming the nodes (``-d``) lets the
    command return as soon as they answered instead of waiting out its timeout."""
    env = {**os.environ, **platform_env, "PYTHONPATH": str(ROOT)}
    nodes = ",".join(running_nodes())
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tenantq.worker",
            *args,
            "--json",
            "--timeout=30",
            f"--destination={nodes}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # `celery inspect --json` prints one JSON object per answering node.
    replies: dict = {}
    for line in out.stdout.splitlines():
        if line.startswith("{"):
            replies.update(json.loads(line))
    return replies


class TestInspect:
    def test_active_and_active_queues_answer_for_a_running_worker(self, platform_env, platform_processes):
        queues = celery_cli(platform_env, "inspect", "active_queues")
        assert queues, "no worker answered inspect active_queues"
        for node, consumed in queues.items():
            names = {q["name"] for q in consumed}
            assert {"tq.exec", "tq.system"} <= names, (node, names)
        active = celery_cli(platform_env, "inspect", "active")
        assert set(active) == set(queues)
        assert all(isinstance(tasks, list) for tasks in active.values())

    def test_stats_and_conf_show_the_pool_and_settings(self, platform_env, platform_processes):
        stats = celery_cli(platform_env, "inspect", "stats")
        assert all(s["pool"]["max-concurrency"] >= 1 for s in stats.values())
        # The safety settings reached the worker as configured in tenantq.core.celery.
        conf = celery_cli(platform_env, "inspect", "conf")
        for node_conf in conf.values():
            assert node_conf["task_acks_late"] is True and node_conf["worker_prefetch_multiplier"] == 1
            assert node_conf["worker_max_tasks_per_child"] == 10_000


class TestEvents:
    def test_events_dump_shows_a_job_run(self, api, platform_env, platform_processes, tmp_path):
        """`celery -A tenantq.worker events --dump` (Celery's event monitor) on either broker."""
        from tests.factories import ApiKeyFactory, auth

        env = {**os.environ, **platform_env, "PYTHONPATH": str(ROOT)}
        with open(tmp_path / "events.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "tenantq.worker", "events", "--dump"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            dump = tmp_path / "events.log"
            # Heartbeats arrive once the monitor's event queue is bound: from then on it sees task events.
            wait_until(lambda: "] heartbeat:" in dump.read_text(), timeout=90, message="a heartbeat")
            key = ApiKeyFactory()
            job = api.post("/v1/jobs", json={"task": "demo.echo", "args": {}}, headers=auth(key)).json()
            wait_until(
                # The dumper names the task (with its id, the job id + attempt) once it saw it received.
                lambda: any(
                    "task succeeded:" in line and job["id"] in line for line in dump.read_text().splitlines()
                ),
                timeout=90,
                message="the job's task-succeeded event",
            )
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class TestFlower:
    def test_flower_lists_tenantq_workers(self, platform_env, platform_processes, tmp_path):
        pytest.importorskip("flower")
        port = free_port()
        env = {**os.environ, **platform_env, "PYTHONPATH": str(ROOT), "FLOWER_UNAUTHENTICATED_API": "true"}
        with open(tmp_path / "flower.log", "wb") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "tenantq.worker",
                    "flower",
                    "--address=127.0.0.1",
                    f"--port={port}",
                    f"--db={tmp_path / 'flower.db'}",
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:

            def workers():
                try:
                    r = httpx.get(f"http://127.0.0.1:{port}/api/workers?refresh=1", timeout=15)
                except httpx.HTTPError:
                    return None
                return r.json() if r.status_code == 200 and r.json() else None

            found = wait_until(workers, timeout=90, interval=0.5, message="Flower to list the workers")
            for info in found.values():
                assert "tq.exec" in {q["name"] for q in info.get("active_queues", [])}
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
