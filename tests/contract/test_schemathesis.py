"""schemathesis over ``/openapi.json``: the server answers as its document says.

The schemathesis CLI (as a tenant's CI would run it) fuzzes the tenant API with a tenant key and the
operator API with the admin token, over real HTTP against the contract server (its own scratch
database, ``conftest.py``). Every check runs; the run must report no failure: no 5xx, no status code
the operation does not document, no body outside its schema, no header or content type that differs.
Bounded and deterministic: a fixed seed, deterministic generation and a few examples per operation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.contract.conftest import LiveApi

ARTIFACTS = ROOT / "tests" / "artifacts" / "contract"
MAX_EXAMPLES = int(os.environ.get("TENANTQ_CONTRACT_EXAMPLES", "5"))
SEED = 20261130

# positive_data_acceptance expects a 2xx for any body the schema allows. Whether a task type exists, its
# arguments fit it, a cron expression parses or a webhook's host is public are rules of the service,
# answered 422 with their own codes; the schema documents them but cannot encode them.
EXCLUDED_CHECKS = ["positive_data_acceptance"]

# (paths included, paths excluded, credential) of each run. Revoking or rotating a key ends it, so the
# key operations run apart, with a key of their own: the tenant run keeps a working key throughout.
# A job's event stream stays open until the job finishes, and the contract server runs no worker: every
# case would hold a stream for the whole request timeout. Its document is checked in
# test_openapi_document.py, its behaviour (events, isolation, the end) in tests/platform/test_job_events.py.
APIS = {
    "tenant": (r"^/(v1|healthz|readyz|metrics)", r"^/v1/keys/|^/v1/jobs/[^/]+/events$", "tenant"),
    "tenant-keys": (r"^/v1/keys", None, "tenant"),
    "operator": (r"^/admin/v1/", None, "operator"),
}


def run_schemathesis(live_api: LiveApi, which: str, report_dir: Path) -> subprocess.CompletedProcess:
    include, exclude, credential = APIS[which]
    token = live_api.new_tenant(f"contract-{which}")[1] if credential == "tenant" else live_api.admin_token
    # st_hooks caps the long-poll's wait (see there).
    root = str(Path(__file__).resolve().parents[2])  # the run's cwd is the report dir: name the checkout
    pythonpath = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.contract.st_hooks", "PYTHONPATH": pythonpath}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{live_api.url}/openapi.json",
            "--checks",
            "all",
            "--exclude-checks",
            ",".join(EXCLUDED_CHECKS),
            "--generation-with-security-parameters",
            "false",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            str(SEED),
            "--generation-deterministic",
            "--no-shrink",
            "--workers",
            "1",
            "--request-timeout",
            "60",
            "--suppress-health-check",
            "all",
            "--include-path-regex",
            include,
            *(["--exclude-path-regex", exclude] if exclude else []),
            "--header",
            f"Authorization: Bearer {token}",
            "--report",
            "har,junit",
            "--report-dir",
            str(report_dir),
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env=env,
        cwd=report_dir,  # schemathesis keeps a cache directory in the working directory
    )


def statuses(har: Path) -> Counter[int]:
    entries = json.loads(har.read_text())["log"]["entries"]
    return Counter(entry["response"]["status"] for entry in entries)


@pytest.mark.parametrize("which", list(APIS))
def test_schemathesis_finds_nothing(live_api: LiveApi, which: str, tmp_path: Path) -> None:
    result = run_schemathesis(live_api, which, tmp_path)
    hars = list(tmp_path.glob("har-*.json"))
    assert hars, f"schemathesis wrote no report:\n{result.stdout[-5000:]}\n{result.stderr[-5000:]}"
    har = hars[0]
    counts = statuses(har)
    summary = f"{which}: {sum(counts.values())} requests, statuses {dict(sorted(counts.items()))}"
    # The figures, for the record (tests/artifacts is not committed).
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"schemathesis-{which}.txt").write_text(f"{summary}\n\n{result.stdout}")
    assert result.returncode == 0, f"{summary}\n{result.stdout[-20000:]}\n{result.stderr[-5000:]}"
    assert not [s for s in counts if s >= 500], summary
    assert sum(counts.values()) > 100, summary
