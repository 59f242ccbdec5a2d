"""``GET /metrics``: per-tenant figures from real jobs on a real worker, cluster state, label bounds."""

from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from tenantq.core import metrics
from tenantq.core.errors import PaymentRequired, TooManyRequests
from tenantq.core.settings import Settings
from tenantq.ops import metrics as ops_metrics
from tenantq.platform.dispatch.repository import TenantQueues
from tenantq.tenants.access.dependencies import CurrentTenant
from tests.conftest import wait_until
from tests.factories import ApiKeyFactory, auth
from tests.ops.helpers import bucket_count, parse, value


def scrape(api, headers=None):
    response = api.get("/metrics", headers=headers or {})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def submit(api, key, task, args, **extra):
    response = api.post("/v1/jobs", json={"task": task, "args": args, **extra}, headers=auth(key))
    assert response.status_code == 202, response.text
    return response.json()


def wait_terminal(api, key, job_id):
    def done():
        body = api.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()
        return body if body["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_until(done, timeout=90, message=f"job {job_id} to finish")


class TestSubmittedCounter:
    def test_batch_and_workflow_jobs_count_as_submitted(self, api, redis_client):
        key = ApiKeyFactory()
        TenantQueues(redis_client).pause(key.tenant.id, "test")  # counted at the enqueue: nothing runs
        resp = api.post(
            "/v1/jobs/batch",
            json={"jobs": [{"task": "demo.echo"}, {"task": "demo.echo", "countdown": 60}]},
            headers=auth(key),
        )
        assert resp.status_code == 200, resp.text
        steps = [{"group": [{"task": "demo.sleep", "args": {"seconds": 0}}] * 3}, {"task": "demo.echo"}]
        resp = api.post("/v1/workflows", json={"steps": steps}, headers=auth(key))
        assert resp.status_code == 202, resp.text
        s = scrape(api)
        # The workflow's later step is counted when a worker queues it, not at the start.
        assert value(s, "tenantq_jobs_submitted_total", tenant=key.tenant.id, task="demo.echo") == 2
        assert value(s, "tenantq_jobs_submitted_total", tenant=key.tenant.id, task="demo.sleep") == 3


@pytest.mark.e2e
class TestJobMetricsFromRealWorkers:
    def test_per_tenant_counts_match_what_ran(self, api, platform_processes):
        key_a, key_b = ApiKeyFactory(), ApiKeyFactory()
        a, b = key_a.tenant.id, key_b.tenant.id
        jobs = [(key_a, submit(api, key_a, "demo.echo", {"n": i})) for i in range(3)]
        jobs.append((key_b, submit(api, key_b, "demo.fail", {"message": "planned"})))
        jobs.append((key_b, submit(api, key_b, "demo.flaky", {"failures": 1}, max_retries=1)))
        finals = [wait_terminal(api, key, job["id"])["status"] for key, job in jobs]
        assert finals == ["succeeded"] * 3 + ["failed", "succeeded"]

        # postrun's metrics land just after the status update the API showed: poll the scrape.
        def settled():
            s = scrape(api)
            ok = (
                value(s, "tenantq_jobs_succeeded_total", tenant=a) == 3
                and value(s, "tenantq_jobs_failed_total", tenant=b) == 1
                and value(s, "tenantq_jobs_succeeded_total", tenant=b) == 1
            )
            return s if ok else None

        s = wait_until(settled, timeout=30, interval=0.3, message="metrics for both tenants")
        assert value(s, "tenantq_jobs_submitted_total", tenant=a, task="demo.echo") == 3
        assert value(s, "tenantq_jobs_submitted_total", tenant=b) == 2
        assert value(s, "tenantq_jobs_started_total", tenant=a, task="demo.echo") == 3
        # demo.fail once; demo.flaky twice (fails, is retried, succeeds).
        assert value(s, "tenantq_jobs_started_total", tenant=b, task="demo.fail") == 1
        assert value(s, "tenantq_jobs_started_total", tenant=b, task="demo.flaky") == 2
        assert value(s, "tenantq_jobs_succeeded_total", tenant=a, task="demo.echo") == 3
        assert value(s, "tenantq_jobs_failed_total", tenant=a) == 0
        assert value(s, "tenantq_jobs_failed_total", tenant=b, task="demo.fail") == 1
        assert value(s, "tenantq_jobs_retried_total", tenant=b, task="demo.flaky") == 1
        assert value(s, "tenantq_jobs_retried_total", tenant=a) == 0
        assert value(s, "tenantq_jobs_succeeded_total", tenant=b, task="demo.flaky") == 1
        # Wait time is observed for first attempts only; run time for every attempt.
        assert bucket_count(s, "tenantq_job_wait_seconds", tenant=a, task="demo.echo") == 3
        assert bucket_count(s, "tenantq_job_wait_seconds", tenant=b, task="demo.flaky") == 1
        assert bucket_count(s, "tenantq_job_run_seconds", tenant=a, task="demo.echo") == 3
        assert bucket_count(s, "tenantq_job_run_seconds", tenant=b, task="demo.flaky") == 2
        assert value(s, "tenantq_job_wait_seconds_sum", tenant=a) >= 0
        # Nothing left running or queued for them; the platform's health is visible.
        assert value(s, "tenantq_jobs_running", tenant=a) == 0
        assert value(s, "tenantq_queue_depth", tenant=a) == 0
        assert value(s, "tenantq_redis_up") == 1
        assert value(s, "tenantq_workers") >= 1
        assert value(s, "tenantq_dispatcher_up") == 1
        assert time.time() - value(s, "tenantq_dispatcher_heartbeat_timestamp_seconds") < 30
        assert value(s, "tenantq_exec_queue_depth", queue="tq.exec") >= 0
        assert value(s, "tenantq_http_requests_total", method="POST", route="/v1/jobs", status="202") >= 5

    def test_running_jobs_are_counted_while_they_run(self, api, platform_processes):
        key = ApiKeyFactory()
        job = submit(api, key, "demo.sleep", {"seconds": 3})

        def running():
            s = scrape(api)
            return (
                s if value(s, "tenantq_jobs_running", tenant=key.tenant.id, task="demo.sleep") == 1 else None
            )

        wait_until(running, timeout=60, interval=0.2, message="the sleep job to show as running")
        assert wait_terminal(api, key, job["id"])["status"] == "succeeded"

        def stopped():
            s = scrape(api)
            return s if value(s, "tenantq_jobs_running", tenant=key.tenant.id) == 0 else None

        s = wait_until(
            stopped,
            timeout=30,
            message="running to drop to 0",
        )
        assert value(s, "tenantq_jobs_succeeded_total", tenant=key.tenant.id) == 1


class TestQueueState:
    def test_depth_per_tenant_for_a_paused_queue(self, api, redis_client):
        key = ApiKeyFactory()
        tenant = key.tenant.id
        # Paused: the dispatcher leaves the jobs queued, so the depth holds still while we scrape.
        redis_client.sadd("tq:paused", tenant)
        try:
            ids = [submit(api, key, "demo.echo", {"i": i})["id"] for i in range(2)]
            s = scrape(api)
            assert value(s, "tenantq_queue_depth", tenant=tenant) == 2
            assert value(s, "tenantq_queue_depth_total") >= 2
            assert value(s, "tenantq_tenants_paused") >= 1
        finally:
            queues = TenantQueues(redis_client)
            for job_id in ids:
                queues.remove(tenant, job_id)
            redis_client.srem("tq:paused", tenant)

    def test_usage_backlog_without_and_with_consumer_group(self, redis_client):
        redis_client.delete(ops_metrics.USAGE_STREAM)
        assert ops_metrics.usage_backlog(redis_client) == (0, 0.0)
        now_ms = int(time.time() * 1000)
        redis_client.xadd(ops_metrics.USAGE_STREAM, {"e": "1"}, id=f"{now_ms - 5000}-0")
        redis_client.xadd(ops_metrics.USAGE_STREAM, {"e": "2"}, id=f"{now_ms - 1000}-0")
        try:
            count, age = ops_metrics.usage_backlog(redis_client, now=now_ms / 1000)
            assert count == 2 and age == pytest.approx(5.0, abs=0.01)
            # A flusher group that read (but has not acknowledged) the first entry: both still unflushed.
            redis_client.xgroup_create(ops_metrics.USAGE_STREAM, "flusher", id="0")
            got = redis_client.xreadgroup("flusher", "c1", {ops_metrics.USAGE_STREAM: ">"}, count=1)
            count, age = ops_metrics.usage_backlog(redis_client, now=now_ms / 1000)
            assert count == 2 and age == pytest.approx(5.0, abs=0.01)
            # Acknowledge it: only the second is left, one second old.
            redis_client.xack(ops_metrics.USAGE_STREAM, "flusher", got[0][1][0][0])
            count, age = ops_metrics.usage_backlog(redis_client, now=now_ms / 1000)
            assert count == 1 and age == pytest.approx(1.0, abs=0.01)
        finally:
            redis_client.delete(ops_metrics.USAGE_STREAM)

    def test_redis_down_is_reported_not_raised(self):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
        families = list(ops_metrics.ClusterStateCollector(client=dead).collect())
        assert [(f.name, f.samples[0].value) for f in families] == [("tenantq_redis_up", 0)]


class TestRejections:
    def test_429_and_402_are_counted_per_tenant_and_code(self, api):
        app = api.app

        def limited(ctx: CurrentTenant) -> None:
            raise TooManyRequests("slow down", code="submit_rate_limited", headers={"Retry-After": "1"})

        def over_quota(ctx: CurrentTenant) -> None:
            raise PaymentRequired("quota", code="quota_exceeded")

        app.add_api_route("/v1/_test/limited", limited, methods=["POST"])
        app.add_api_route("/v1/_test/quota", over_quota, methods=["POST"])
        key = ApiKeyFactory()
        for _ in range(2):
            assert api.post("/v1/_test/limited", headers=auth(key)).status_code == 429
        assert api.post("/v1/_test/quota", headers=auth(key)).status_code == 402
        s = scrape(api)
        t = key.tenant.id
        assert value(s, "tenantq_rejections_total", tenant=t, code="submit_rate_limited", status="429") == 2
        assert value(s, "tenantq_rejections_total", tenant=t, code="quota_exceeded", status="402") == 1

    def test_metrics_token_when_configured(self, api, monkeypatch):
        from tenantq.core.settings import reset_settings_cache

        monkeypatch.setenv("TENANTQ_METRICS_TOKEN", "scrape-secret")
        reset_settings_cache()
        try:
            denied = api.get("/metrics")
            assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_metrics_token"
            assert api.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert value(scrape(api, {"Authorization": "Bearer scrape-secret"}), "tenantq_redis_up") == 1
        finally:
            monkeypatch.delenv("TENANTQ_METRICS_TOKEN")
            reset_settings_cache()


class TestTenantLabels:
    def test_modes(self, redis_client):
        assert metrics.TenantLabeler("all").label("t1") == "t1"
        assert metrics.TenantLabeler("none").label("t1") == "all"

        redis_client.delete(metrics.VOLUME_KEY)
        top = metrics.TenantLabeler("top:2", refresh_s=0)
        for tenant, n in (("big", 50), ("mid", 20), ("small", 1)):
            top.record_submission(redis_client, tenant, n)
        try:
            assert [top.label(t) for t in ("big", "mid", "small")] == ["big", "mid", "other"]
            top.record_submission(redis_client, "small", 100)  # grows into the top 2
            assert [top.label(t) for t in ("big", "mid", "small")] == ["big", "other", "small"]
        finally:
            redis_client.delete(metrics.VOLUME_KEY)

    def test_top_n_aggregates_depth_into_other(self, redis_client):
        tenants = ["lab-a", "lab-b", "lab-c"]
        redis_client.delete(metrics.VOLUME_KEY)
        redis_client.zadd(metrics.VOLUME_KEY, {"lab-a": 10, "lab-b": 5, "lab-c": 1})
        redis_client.sadd("tq:paused", *tenants)
        queues = TenantQueues(redis_client)
        try:
            for i, t in enumerate(tenants):
                for j in range(i + 1):
                    queues.enqueue(t, f"{t}-{j}", 5, {"task": "demo.echo"})
            collector = ops_metrics.ClusterStateCollector(
                tenant_labeler=metrics.TenantLabeler("top:1", refresh_s=0)
            )
            depth = next(f for f in collector.collect() if f.name == "tenantq_queue_depth")
            got = {
                s.labels["tenant"]: s.value for s in depth.samples if s.labels["tenant"] in ("lab-a", "other")
            }
            assert got["lab-a"] == 1
            assert got["other"] >= 5  # lab-b (2) + lab-c (3), plus any other tenant's queued jobs
            assert not any(s.labels["tenant"] in ("lab-b", "lab-c") for s in depth.samples)
        finally:
            for i, t in enumerate(tenants):
                for j in range(i + 1):
                    queues.remove(t, f"{t}-{j}")
            redis_client.srem("tq:paused", *tenants)
            redis_client.delete(metrics.VOLUME_KEY)

    def test_setting_is_validated(self):
        assert Settings(metrics_tenant_labels="top:25").metrics_tenant_labels == "top:25"
        for bad in ("top:0", "some", "top:x"):
            with pytest.raises(ValidationError):
                Settings(metrics_tenant_labels=bad)


class TestExportedNames:
    def test_declared_names_are_exactly_the_scraped_ones(self, api):
        """Dashboards and alerts are checked against ``exported_sample_names()``: it must match a scrape."""
        m = metrics.get_metrics()
        for metric in vars(m).values():
            metric.labels(*["names-check"] * len(metric._labelnames))  # a zero-valued series for each
        text = api.get("/metrics").text
        families = {f.name for f in text_string_to_metric_families(text) if f.name.startswith("tenantq_")}
        assert families == set(metrics.EVENT_METRICS) | set(ops_metrics.STATE_METRICS)
        samples = {name for name in parse(text) if name.startswith("tenantq_")}
        assert samples <= ops_metrics.exported_sample_names()
        # Everything but a gauge family that happens to be empty (no job running) has samples.
        assert ops_metrics.exported_sample_names() - samples <= {
            "tenantq_jobs_running",
            "tenantq_queue_depth",
        }


class TestMultiprocessFiles:
    CHILD = (
        "import sys; from prometheus_client import Counter, Histogram; "
        "Counter('tq_demo', 'demo', ['tenant']).labels('t1').inc(float(sys.argv[1])); "
        "Histogram('tq_demo_seconds', 'demo', ['tenant']).labels('t1').observe(0.2)"
    )

    def run_child(self, directory, amount):
        import os
        import subprocess
        import sys

        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
        subprocess.run([sys.executable, "-c", self.CHILD, str(amount)], env=env, check=True, timeout=60)

    def totals(self, directory):
        s = parse(ops_metrics.render(include_cluster_state=False, path=directory)[0].decode())
        return value(s, "tq_demo_total", tenant="t1"), bucket_count(s, "tq_demo_seconds", tenant="t1")

    def test_exited_processes_are_folded_without_changing_any_sum(self, tmp_path):
        """Recycled pool processes leave files; compaction keeps the sums and bounds the file count."""
        for amount in (2, 3):
            self.run_child(tmp_path, amount)
        assert len(list(tmp_path.glob("*.db"))) == 4  # a counter and a histogram file per process
        assert self.totals(tmp_path) == (5, 2)
        assert metrics.compact_dead_files(tmp_path) == 4
        assert sorted(p.name for p in tmp_path.glob("*.db")) == ["counter_archive.db", "histogram_archive.db"]
        assert self.totals(tmp_path) == (5, 2)
        self.run_child(tmp_path, 1)  # a later process adds to the archive, not to a new series
        assert metrics.compact_dead_files(tmp_path) == 2
        assert self.totals(tmp_path) == (6, 3)
        assert len(list(tmp_path.glob("*.db"))) == 2

    def test_live_processes_files_are_left_alone(self, tmp_path):
        import os

        from prometheus_client.mmap_dict import MmapedDict, mmap_key

        own = MmapedDict(str(tmp_path / f"counter_{os.getpid()}.db"))
        own.write_value(mmap_key("tq_demo", "tq_demo_total", ["tenant"], ["t1"], "demo"), 4.0, 0.0)
        own.close()
        assert metrics.compact_dead_files(tmp_path) == 0
        assert self.totals(tmp_path) == (4, 0)


class TestTenantqUp:
    def test_children_share_one_metrics_dir_under_the_data_dir(self, tmp_path, monkeypatch):
        from tenantq.ops.supervisor import Supervisor

        monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
        sup = Supervisor(Settings(data_dir=tmp_path), host="127.0.0.1", port=1, concurrency=1, migrate=False)
        sup.redis_url = "redis://127.0.0.1:1/0"
        assert sup.child_env()["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path.resolve() / "prometheus")
        # An operator's own directory wins (and is not emptied by tenantq up).
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "mine"))
        assert sup.child_env()["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path / "mine")

    def test_reset_empties_only_metric_files(self, tmp_path):
        (tmp_path / "counter_1.db").write_bytes(b"x")
        (tmp_path / "keep.txt").write_text("x")
        metrics.reset_multiproc_dir(tmp_path)
        assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
