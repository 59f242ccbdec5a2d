"""infra/: every file parses, manifests validate, commands exist, alerts and dashboards use real metrics.

Docker and kubectl are not available here, so the checks are what can run without them: Kubernetes
schemas (kubernetes-validate, strict), PromQL parsing (promql-parser) and, when installed, promtool.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tenantq.core.settings import Settings
from tenantq.ops.metrics import exported_sample_names
from tests.conftest import ROOT

INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
PROM = INFRA / "prometheus"
IMAGE = "ghcr.io/example/tenantq"
METRIC_RE = re.compile(r"\b(tenantq_[a-z0-9_]+)\b")
SECRET_ENV = (
    "TENANTQ_DATABASE_URL",
    "TENANTQ_REDIS_URL",
    "TENANTQ_BROKER_URL",
    "TENANTQ_SECRET_KEY",
    "TENANTQ_ADMIN_TOKEN",
    "TENANTQ_METRICS_TOKEN",
    "FLOWER_BASIC_AUTH",
)
RUNBOOK = ROOT / "docs" / "operations.md"


def yaml_docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def k8s_docs() -> list[tuple[Path, dict]]:
    return [(p, d) for p in sorted(K8S.glob("*.yaml")) for d in yaml_docs(p)]


def workloads() -> list[tuple[Path, dict]]:
    return [(p, d) for p, d in k8s_docs() if d["kind"] in ("Deployment", "Job")]


def pod_spec(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


def containers(doc: dict) -> list[dict]:
    return pod_spec(doc)["containers"]


def promql(expr: str):
    import promql_parser

    # Grafana variables are not PromQL: give them plausible values before parsing.
    expr = expr.replace("$__rate_interval", "5m").replace("$tenant", ".*")
    return promql_parser.parse(expr)


def metric_names(expr: str) -> set[str]:
    return set(METRIC_RE.findall(expr))


def known_metric(name: str) -> bool:
    return name in exported_sample_names()


def tenantq_cli_accepts(args: list[str]) -> None:
    """Parse ``tenantq <args>`` with the real CLI definition (options and values) without running it."""
    import click
    import typer

    from tenantq.cli import app

    command = typer.main.get_command(app)
    ctx = command.make_context("tenantq", list(args), resilient_parsing=False)
    while isinstance(command, click.Group):
        name, sub, rest = command.resolve_command(ctx, ctx.protected_args + ctx.args)
        assert sub is not None, f"tenantq has no command {name!r}"
        ctx = sub.make_context(name, rest, parent=ctx)
        command = sub


def celery_cli_accepts(args: list[str]) -> None:
    """``celery -A tenantq.worker flower ...``: the subcommand exists and takes these options."""
    assert args[:2] == ["-A", "tenantq.worker"], args
    assert args[2] == "flower", args
    from flower.command import flower

    flower.make_context("flower", list(args[3:]))


class TestFilesParse:
    def test_every_yaml_and_json_under_infra_parses(self):
        files = sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml", ".json"))
        assert len(files) >= 12
        for path in files:
            if path.suffix == ".json":
                assert isinstance(json.loads(path.read_text()), dict), path
            else:
                assert yaml_docs(path), f"{path} is empty"

    def test_dockerfile_one_image_non_root_role_by_command(self):
        text = (INFRA / "Dockerfile").read_text()
        users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
        assert users and users[-1] not in ("root", "0"), "the final image must not run as root"
        assert '"${UID}"' not in users[-1]
        assert re.search(r"^ARG UID=(\d+)", text, re.MULTILINE).group(1) != "0"
        assert 'ENTRYPOINT ["tenantq"]' in text
        cmd = json.loads(re.search(r"^CMD (\[.*\])", text, re.MULTILINE).group(1))
        tenantq_cli_accepts(cmd)
        for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.MULTILINE):
            for item in src.split():
                assert (ROOT / item).exists(), f"Dockerfile copies missing {item}"
        assert '".[ops]"' in text and "ops = [" in (ROOT / "pyproject.toml").read_text()


class TestKubernetes:
    def test_core_manifests_validate_against_the_kubernetes_schema(self):
        kv = pytest.importorskip("kubernetes_validate")
        version = kv.latest_version()
        validated = set()
        for _path, doc in k8s_docs():
            if doc["apiVersion"].startswith(("keda.sh/", "kustomize.config.k8s.io/", "rabbitmq.com/")):
                continue  # CRDs / tooling: checked structurally below
            kv.validate(doc, version, strict=True)
            validated.add(doc["kind"])
        assert {
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "ConfigMap",
            "Job",
            "HorizontalPodAutoscaler",
            "Namespace",
        } <= validated

    def test_one_deployment_per_role_with_matching_selectors(self):
        deployments = {d["metadata"]["name"]: d for _, d in k8s_docs() if d["kind"] == "Deployment"}
        assert {"tenantq-api", "tenantq-worker", "tenantq-dispatcher", "tenantq-beat"} <= set(deployments)
        for name, d in deployments.items():
            selector = d["spec"]["selector"]["matchLabels"]
            labels = d["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= labels.items(), name
            assert d["metadata"]["namespace"] == "tenantq"
        assert deployments["tenantq-beat"]["spec"]["replicas"] == 1
        assert deployments["tenantq-beat"]["spec"]["strategy"]["type"] == "Recreate"

    def test_every_container_has_requests_limits_and_runs_unprivileged(self):
        for path, doc in workloads():
            spec = pod_spec(doc)
            assert spec["securityContext"]["runAsNonRoot"] is True, path
            for c in containers(doc):
                res = c["resources"]
                assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(
                    res["limits"]
                ), c["name"]
                assert c["securityContext"]["allowPrivilegeEscalation"] is False
                assert c["securityContext"]["readOnlyRootFilesystem"] is True
                # A read-only root needs a writable /tmp for the metrics directory.
                assert any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts", [])), c["name"]

    def test_api_probes(self):
        api = next(
            d for _, d in k8s_docs() if d["kind"] == "Deployment" and d["metadata"]["name"] == "tenantq-api"
        )
        c = containers(api)[0]
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert c["readinessProbe"]["httpGet"]["port"] in ports and ports["http"] == 8000
        from tenantq.app import create_app

        assert {"/readyz", "/healthz", "/metrics"} <= set(create_app().openapi()["paths"])

    def test_worker_liveness_pings_its_own_celery_node(self):
        worker = next(
            d
            for _, d in k8s_docs()
            if d["kind"] == "Deployment" and d["metadata"]["name"] == "tenantq-worker"
        )
        c = containers(worker)[0]
        probe = " ".join(c["livenessProbe"]["exec"]["command"])
        assert "celery -A tenantq.worker inspect ping" in probe and "worker@${POD_NAME}" in probe
        assert "worker@$(POD_NAME)" in c["args"]
        env = {e["name"]: e for e in c["env"]}
        assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        assert env["TENANTQ_WORKER_METRICS_PORT"]["value"] == str(c["ports"][0]["containerPort"])

    def test_secrets_only_by_reference(self):
        assert not any(d["kind"] == "Secret" for _, d in k8s_docs()), "no secret values in the repository"
        used = 0
        for path, doc in workloads():
            for c in containers(doc):
                for e in c.get("env", []):
                    if e["name"] in SECRET_ENV:
                        assert "value" not in e, f"{path}: {e['name']} must come from a secretKeyRef"
                        assert e["valueFrom"]["secretKeyRef"]["name"] == "tenantq"
                        used += 1
        assert used >= 10
        config = next(d for _, d in k8s_docs() if d["kind"] == "ConfigMap")
        assert not set(config["data"]) & set(SECRET_ENV)

    def test_env_names_are_real_settings(self):
        fields = {f"TENANTQ_{name.upper()}" for name in Settings.model_fields}
        config = next(d for _, d in k8s_docs() if d["kind"] == "ConfigMap")
        names = {k for k in config["data"] if k.startswith("TENANTQ_")}
        for _, doc in workloads():
            for c in containers(doc):
                names |= {e["name"] for e in c.get("env", []) if e["name"].startswith("TENANTQ_")}
        assert names and names <= fields, names - fields
        Settings(metrics_tenant_labels=config["data"]["TENANTQ_METRICS_TENANT_LABELS"])

    def test_commands_are_real_cli_commands(self):
        checked = 0
        for path, doc in workloads():
            for c in containers(doc):
                assert c["image"].startswith(IMAGE + ":"), path
                if c.get("command") == ["celery"]:
                    celery_cli_accepts(c["args"])
                else:
                    assert "command" not in c, "the image's entrypoint is tenantq"
                    tenantq_cli_accepts(c["args"])
                checked += 1
        assert checked >= 6

    def test_pod_disruption_budgets_cover_the_scaled_roles(self):
        deployments = {d["metadata"]["name"]: d for _, d in k8s_docs() if d["kind"] == "Deployment"}
        covered = set()
        for _, pdb in [(p, d) for p, d in k8s_docs() if d["kind"] == "PodDisruptionBudget"]:
            match = pdb["spec"]["selector"]["matchLabels"]
            hits = [
                n
                for n, d in deployments.items()
                if match.items() <= d["spec"]["template"]["metadata"]["labels"].items()
            ]
            assert len(hits) == 1, pdb["metadata"]["name"]
            covered.add(hits[0])
        assert covered == {"tenantq-api", "tenantq-worker", "tenantq-dispatcher"}

    def test_keda_scales_workers_on_queue_depth(self):
        scaled = [d for _, d in k8s_docs() if d["kind"] == "ScaledObject"]
        assert len(scaled) == 1
        so = scaled[0]
        assert so["apiVersion"] == "keda.sh/v1alpha1"
        assert so["spec"]["scaleTargetRef"]["name"] == "tenantq-worker"
        assert 1 <= so["spec"]["minReplicaCount"] < so["spec"]["maxReplicaCount"]
        prom = next(t for t in so["spec"]["triggers"] if t["type"] == "prometheus")
        query = prom["metadata"]["query"]
        promql(query)
        assert {"tenantq_queue_depth_total", "tenantq_exec_queue_depth"} <= metric_names(query)
        assert all(known_metric(n) for n in metric_names(query))
        assert float(prom["metadata"]["threshold"]) > 0
        # The cpu trigger needs CPU requests on the target.
        worker = next(
            d
            for _, d in k8s_docs()
            if d["kind"] == "Deployment" and d["metadata"]["name"] == "tenantq-worker"
        )
        assert containers(worker)[0]["resources"]["requests"]["cpu"]

    def test_every_role_takes_the_optional_broker_url_and_the_rabbitmq_cluster_outwaits_time_limits(self):
        from tenantq.core.celery import CONSUMER_TIMEOUT_MS, MAX_TIME_LIMIT_S

        roles = [d for _, d in k8s_docs() if d["kind"] == "Deployment"]
        assert len(roles) >= 5
        for doc in roles:
            env = {e["name"]: e for e in containers(doc)[0]["env"]}
            ref = env["TENANTQ_BROKER_URL"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "tenantq", "key": "broker-url", "optional": True}, doc["metadata"]["name"]
        (cluster,) = [d for _, d in k8s_docs() if d["kind"] == "RabbitmqCluster"]
        assert cluster["metadata"]["namespace"] == "tenantq" and cluster["spec"]["replicas"] >= 3
        config = dict(
            line.split(" = ", 1) for line in cluster["spec"]["rabbitmq"]["additionalConfig"].splitlines()
        )
        assert int(config["consumer_timeout"]) >= CONSUMER_TIMEOUT_MS > MAX_TIME_LIMIT_S * 1000

    def test_kustomization_lists_existing_files(self):
        kust = yaml_docs(K8S / "kustomization.yaml")[0]
        for res in kust["resources"]:
            assert (K8S / res).exists(), res
        # The RabbitMQ cluster needs its operator installed first: applied on its own when wanted.
        listed = set(kust["resources"]) | {"kustomization.yaml", "migrate-job.yaml", "rabbitmq-cluster.yaml"}
        assert {p.name for p in K8S.glob("*.yaml")} == listed


class TestCompose:
    def compose(self) -> dict:
        return yaml_docs(INFRA / "compose.yaml")[0]

    def test_services(self):
        services = self.compose()["services"]
        assert {
            "postgres",
            "redis",
            "api",
            "worker",
            "beat",
            "dispatcher",
            "flower",
            "prometheus",
            "migrate",
        } <= set(services)
        assert services["worker"]["deploy"]["replicas"] >= 2
        assert services["api"]["healthcheck"]["test"][-1].count("/readyz") == 1

    def test_commands_exist_and_env_is_settings(self):
        fields = {f"TENANTQ_{name.upper()}" for name in Settings.model_fields}
        tenantq_services = 0
        for name, svc in self.compose()["services"].items():
            if svc.get("image") != "tenantq:latest":
                continue
            tenantq_services += 1
            assert svc["build"]["dockerfile"] == "infra/Dockerfile"
            assert (INFRA / svc["build"]["context"] / svc["build"]["dockerfile"]).exists()
            if svc.get("entrypoint") == ["celery"]:
                celery_cli_accepts(svc["command"])
            else:
                tenantq_cli_accepts(svc["command"])
            env_names = {k for k in svc["environment"] if k.startswith("TENANTQ_")}
            assert env_names <= fields, (name, env_names - fields)
        assert tenantq_services == 6  # migrate, api, worker, dispatcher, beat, flower

    def test_rabbitmq_profile(self):
        from tenantq.core.celery import CONSUMER_TIMEOUT_MS

        services = self.compose()["services"]
        rabbit = services["rabbitmq"]
        assert rabbit["profiles"] == ["rabbitmq"]  # not started unless asked for
        assert (
            f"consumer_timeout {CONSUMER_TIMEOUT_MS}"
            in rabbit["environment"]["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"]
        )
        assert any(v.endswith(":/var/lib/rabbitmq") for v in rabbit["volumes"])
        for name in ("api", "worker", "dispatcher", "beat", "flower"):
            svc = services[name]
            assert svc["depends_on"]["rabbitmq"] == {"condition": "service_healthy", "required": False}, name
            assert svc["environment"]["TENANTQ_BROKER_URL"] == "${TENANTQ_BROKER_URL:-}", name

    def test_prometheus_mounts_exist(self):
        prom = self.compose()["services"]["prometheus"]
        for mount in prom["volumes"]:
            src = mount.split(":")[0]
            assert (INFRA / src).is_file(), src


class TestPrometheus:
    REQUIRED = frozenset(
        {
            "TenantqQueueBacklogGrowing",
            "TenantqHighFailureRate",
            "TenantqUsageFlushLag",
            "TenantqDispatcherDown",
            "TenantqNoWorkers",
            "TenantqDatabaseDown",
            "TenantqOutcomesUnsettled",
            "TenantqJobsOverdue",
            "TenantqApiShedding",
        }
    )

    def rules(self) -> list[dict]:
        groups = yaml_docs(PROM / "alerts.yaml")[0]["groups"]
        return [r for g in groups for r in g["rules"]]

    def test_alert_rules_are_complete_and_use_exported_metrics(self):
        rules = self.rules()
        names = [r["alert"] for r in rules]
        assert len(names) == len(set(names)) and set(names) >= self.REQUIRED
        anchors = {
            "#" + re.sub(r"[^a-z0-9 -]", "", h.lower()).strip().replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", RUNBOOK.read_text(), re.MULTILINE)
        }
        for r in rules:
            assert re.fullmatch(r"Tenantq[A-Z][A-Za-z]+", r["alert"])
            promql(r["expr"])
            used = metric_names(r["expr"])
            assert used or 'up{job="tenantq-api"}' in r["expr"], r["alert"]  # or Prometheus's own `up`
            assert all(known_metric(n) for n in used), (r["alert"], used)
            assert r["labels"]["severity"] in ("critical", "warning", "info")
            assert re.fullmatch(r"\d+[smh]", r["for"])
            assert {"summary", "description", "runbook"} <= set(r["annotations"])
            anchor = r["annotations"]["runbook"].split("docs/operations.md", 1)[1]
            assert anchor in anchors, (r["alert"], anchor)

    def test_scrape_config(self):
        config = yaml_docs(PROM / "prometheus.yaml")[0]
        jobs = {j["job_name"]: j for j in config["scrape_configs"]}
        assert jobs["tenantq-api"]["static_configs"][0]["targets"] == ["api:8000"]
        assert jobs["tenantq-worker"]["dns_sd_configs"][0]["port"] == 9808
        assert config["rule_files"] == ["/etc/prometheus/alerts.yaml"]
        # /metrics needs the metrics token outside embedded defaults; compose mounts it as a secret.
        assert jobs["tenantq-api"]["authorization"] == {
            "type": "Bearer",
            "credentials_file": "/run/secrets/metrics_token",
        }

    @pytest.mark.skipif(
        shutil.which("promtool") is None, reason="promtool not installed (Debian: prometheus)"
    )
    def test_promtool_checks_and_alert_unit_tests(self, tmp_path):
        def run(*args):
            out = subprocess.run(
                ["promtool", *args], capture_output=True, text=True, timeout=120, cwd=PROM, check=False
            )
            assert out.returncode == 0, out.stdout + out.stderr

        run("check", "rules", "alerts.yaml")
        run("test", "rules", "alerts_test.yaml")
        # promtool checks that the files the config names exist: the compose secret is one of them.
        token_file = tmp_path / "metrics_token"
        token_file.write_text("token")
        config = (
            (PROM / "prometheus.yaml")
            .read_text()
            .replace("/etc/prometheus/alerts.yaml", str(PROM / "alerts.yaml"))
            .replace("/run/secrets/metrics_token", str(token_file))
        )
        (tmp_path / "prometheus.yaml").write_text(config)
        run("check", "config", str(tmp_path / "prometheus.yaml"))


class TestGrafana:
    def test_dashboard_panels_query_exported_metrics(self):
        dash = json.loads((INFRA / "grafana" / "tenantq.json").read_text())
        assert dash["uid"] and dash["title"] == "tenantq"
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids))
        used: set[str] = set()
        for panel in dash["panels"]:
            assert panel["targets"], panel["title"]
            assert panel["gridPos"]["x"] >= 0 and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
            for target in panel["targets"]:
                promql(target["expr"])
                names = metric_names(target["expr"])
                assert names and all(known_metric(n) for n in names), (panel["title"], names)
                used |= names
        # The figures are all on the dashboard.
        for needed in (
            "tenantq_queue_depth",
            "tenantq_jobs_running",
            "tenantq_jobs_submitted_total",
            "tenantq_jobs_failed_total",
            "tenantq_jobs_retried_total",
            "tenantq_job_wait_seconds_bucket",
            "tenantq_job_run_seconds_bucket",
            "tenantq_rejections_total",
            "tenantq_workers",
            "tenantq_dispatcher_up",
            "tenantq_usage_flush_lag_seconds",
        ):
            assert needed in used, needed
        variable = next(v for v in dash["templating"]["list"] if v["name"] == "tenant")
        assert metric_names(variable["definition"]) <= exported_sample_names()
