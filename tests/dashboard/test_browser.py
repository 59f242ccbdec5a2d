"""The dashboards in a real browser: Debian's Chromium driven by Playwright against a real uvicorn
server, with the session's real Celery worker and dispatcher behind it.

Screenshots of the main pages (1280 px and phone width) go to ``tests/artifacts/screenshots/``.
"""

from __future__ import annotations

import csv
import io
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from tenantq.core.keys import quota_compute_key
from tenantq.core.periods import current_period
from tenantq.tenants.accounts.models import Plan
from tests.conftest import ROOT, ProcessGroup, free_port, wait_until
from tests.factories import ApiKeyFactory, JobFactory, TenantFactory

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
SCREENSHOTS = ROOT / "tests" / "artifacts" / "screenshots"
ADMIN_TOKEN = "test-admin-token-0123456789abcdef"  # set by the platform_env fixture
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
TIMEOUT_MS = 30_000

if not Path(CHROMIUM).exists():
    pytest.skip(
        f"{CHROMIUM} is missing: install Debian's 'chromium' package (.ci/run does)", allow_module_level=True
    )


@pytest.fixture(scope="module")
def server(platform_env, platform_processes, tmp_path_factory) -> Iterator[str]:
    """The API as its own uvicorn process, on a free port."""
    group = ProcessGroup(platform_env, tmp_path_factory.mktemp("dashboard-server"))
    port = free_port()
    group.start("api", [sys.executable, "-m", "tenantq.cli", "api", "--port", str(port)])
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            if group.procs["api"].poll() is not None:
                raise AssertionError("API server exited:\n" + group.log("api")) from None
            return False

    try:
        wait_until(up, timeout=60, interval=0.2, message="the API server to answer /healthz")
        yield base
    finally:
        group.stop_all()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(base_url=server, viewport=DESKTOP, accept_downloads=True)
    context.set_default_timeout(TIMEOUT_MS)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.on("dialog", lambda dialog: dialog.accept())  # confirm() before cancel / revoke / suspend
    yield pg
    context.close()
    assert not errors, f"uncaught JavaScript errors: {errors}"


def sign_in(page, key) -> None:
    page.goto("/dashboard/login")
    page.get_by_label("API key").fill(key.plaintext)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/dashboard/jobs")


def operator_sign_in(page) -> None:
    page.goto("/admin/login")
    page.get_by_label("Operator token").fill(ADMIN_TOKEN)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/admin")


def submit(server: str, key, body: dict) -> dict:
    resp = httpx.post(
        f"{server}/v1/jobs", json=body, headers={"Authorization": f"Bearer {key.plaintext}"}, timeout=10
    )
    assert resp.status_code == 202, resp.text
    return resp.json()


def shoot(page, name: str) -> None:
    """Screenshot at desktop and phone width; the page must not scroll sideways at phone width."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size(DESKTOP)
    page.screenshot(path=str(SCREENSHOTS / f"{name}-1280.png"), full_page=True)
    page.set_viewport_size(PHONE)
    page.wait_for_timeout(100)
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, f"{name}: page is {overflow}px wider than a phone screen"
    page.screenshot(path=str(SCREENSHOTS / f"{name}-phone.png"), full_page=True)
    page.set_viewport_size(DESKTOP)
    assert (SCREENSHOTS / f"{name}-1280.png").stat().st_size > 0


class TestTenantDashboard:
    def test_sign_in_with_key(self, page):
        key = ApiKeyFactory()
        page.goto("/dashboard/jobs")
        page.wait_for_url("**/dashboard/login?next=/dashboard/jobs")
        shoot(page, "login")
        page.get_by_label("API key").fill("tq_live_wrong")
        page.get_by_role("button", name="Sign in").click()
        assert page.get_by_role("alert").inner_text().startswith("Malformed API key")
        page.get_by_label("API key").fill(key.plaintext)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url("**/dashboard/jobs")
        assert page.locator(".who-name").inner_text() == key.tenant.name
        page.locator(".empty").wait_for()
        assert "No jobs yet" in page.locator(".empty").inner_text()
        # The session cookie is HttpOnly: page scripts cannot read it.
        assert "tq_session" not in page.evaluate("document.cookie")

    def test_submitted_job_appears_and_succeeds_without_reload(self, page, server):
        key = ApiKeyFactory()
        sign_in(page, key)
        page.evaluate("window.__noReload = 'still here'")
        job = submit(server, key, {"task": "demo.sleep", "args": {"seconds": 0.5}, "priority": 7})
        row = page.locator(f'tr[data-job-id="{job["id"]}"]')
        row.wait_for()
        page.locator(f'tr[data-job-id="{job["id"]}"][data-status="succeeded"]').wait_for(timeout=60_000)
        assert page.evaluate("window.__noReload") == "still here"
        cells = row.locator("td").all_inner_texts()
        assert cells[1] == "demo.sleep" and cells[2] == "succeeded" and cells[3] == "7" and cells[4] == "1"
        assert cells[7].endswith(" s") or cells[7].endswith(" ms")
        shoot(page, "jobs")
        # Keyboard focus survives the live refresh (the table is re-rendered every 2 s).
        row.locator("a").focus()
        page.wait_for_timeout(4500)
        focused = page.evaluate(
            "document.activeElement.closest('tr') && document.activeElement.closest('tr').dataset.jobId"
        )
        assert focused == job["id"]

        # Filters: a status that does not match hides it; the task filter keeps it.
        page.get_by_label("Status").select_option("failed")
        page.locator(".empty").wait_for()
        page.get_by_label("Status").select_option("")
        page.get_by_label("Task type").select_option("demo.sleep")
        row.wait_for()
        assert "task=demo.sleep" in page.url

        row.locator("a").click()
        page.wait_for_url(f"**/dashboard/jobs/{job['id']}")
        page.locator("#job-summary .status-succeeded").wait_for()
        assert '"slept": 0.5' in page.locator("#job-outcome").inner_text()
        assert '"seconds": 0.5' in page.locator("#job-args").inner_text()
        shoot(page, "job")

    def test_failed_job_shows_traceback(self, page, server):
        key = ApiKeyFactory()
        sign_in(page, key)
        job = submit(server, key, {"task": "demo.fail", "args": {"message": "boom from the browser test"}})
        page.goto(f"/dashboard/jobs/{job['id']}")
        page.locator("#job-summary .status-failed").wait_for(timeout=60_000)
        assert page.locator("#outcome-title").inner_text() == "Error"
        text = page.locator("#job-outcome").inner_text()
        assert "Traceback" in text and "RuntimeError: boom from the browser test" in text
        shoot(page, "job-failed")

    def test_other_tenants_job_page_is_404(self, page):
        mine, theirs = ApiKeyFactory(), ApiKeyFactory()
        their_job = JobFactory(tenant=theirs.tenant, args={"secret": "not-yours"})
        sign_in(page, mine)
        resp = page.goto(f"/dashboard/jobs/{their_job.id}")
        assert resp.status == 404
        assert page.get_by_role("heading", level=1).inner_text() == "Job not found"
        assert "not-yours" not in page.content()
        # And the API behind it says the same.
        api = page.request.get(f"/v1/jobs/{their_job.id}")
        assert api.status == 404
        shoot(page, "job-404")

    def test_cancel_queued_job_from_the_ui(self, page, server, redis_client):
        key = ApiKeyFactory()
        # A paused tenant keeps its jobs queued (the dispatcher skips it), so the job is still waiting.
        redis_client.sadd("tq:paused", key.tenant_id)
        try:
            job = submit(server, key, {"task": "demo.echo", "args": {"x": 1}})
            sign_in(page, key)
            page.goto(f"/dashboard/jobs/{job['id']}")
            page.locator("#job-summary .status-queued").wait_for()
            page.get_by_role("button", name="Cancel job").click()
            page.locator("#job-summary .status-cancelled").wait_for()
            # The page's 2 s poll may render the cancelled job before the cancel request's answer
            # writes the message: wait for the message rather than read it at once.
            expect(page.locator("#job-message")).to_contain_text("removed from the queue", timeout=30_000)
            expect(page.get_by_role("button", name="Cancel job")).to_be_hidden(timeout=30_000)
        finally:
            redis_client.srem("tq:paused", key.tenant_id)
        body = httpx.get(
            f"{server}/v1/jobs/{job['id']}", headers={"Authorization": f"Bearer {key.plaintext}"}
        ).json()
        assert body["status"] == "cancelled"

    def test_queue_page_says_the_queue_is_held_by_the_compute_quota(
        self, page, server, redis_client, db_session
    ):
        plan = Plan(
            name=f"held-{uuid.uuid4().hex[:8]}",
            display_name="held",
            submit_rate=1000,
            submit_burst=1000,
            exec_rate=1000,
            concurrency=10,
            max_queued=1000,
            included_jobs=1000,
            included_compute_seconds=1,
            hard_limits=True,
        )
        db_session.add(plan)
        db_session.commit()
        key = ApiKeyFactory(tenant=TenantFactory(plan_name=plan.name))
        redis_client.sadd("tq:paused", key.tenant_id)  # keeps the job waiting whatever the counter says
        try:
            submit(server, key, {"task": "demo.echo", "args": {}, "countdown": 3600})
            redis_client.set(quota_compute_key(key.tenant_id, current_period()), 1500)
            sign_in(page, key)
            page.goto("/dashboard/queue")
            page.locator("#queue-cards .status-held").wait_for()
            message = page.locator("#queue-held").inner_text()
            assert "compute seconds" in message and "held" in message
            assert "Held: jobs stay queued" in page.locator("#queue-cards").inner_text()
        finally:
            redis_client.srem("tq:paused", key.tenant_id)

    def test_create_and_revoke_key(self, page, server):
        key = ApiKeyFactory()
        sign_in(page, key)
        page.goto("/dashboard/settings")
        page.get_by_label("Name").fill("browser-made key")
        page.get_by_label("jobs:write").uncheck()
        page.get_by_role("button", name="Create key").click()
        new_key = page.locator("#new-key-value").inner_text()
        assert new_key.startswith("tq_")
        shoot(page, "settings")
        headers = {"Authorization": f"Bearer {new_key}"}
        assert httpx.get(f"{server}/v1/jobs", headers=headers).status_code == 200
        # Scopes chosen in the form are the key's scopes.
        assert httpx.post(f"{server}/v1/jobs", json={"task": "demo.echo"}, headers=headers).status_code == 403

        page.get_by_role("button", name="Revoke key browser-made key").click()
        page.get_by_text("Key 'browser-made key' revoked.").wait_for()
        # The list shows it revoked (or, if the API hides revoked keys, no longer lists it as active).
        page.locator('tr[data-state="active"]').filter(has_text="browser-made key").wait_for(state="detached")
        wait_until(
            lambda: httpx.get(f"{server}/v1/jobs", headers=headers).status_code == 401,
            timeout=10,
            message="the revoked key to stop working",
        )
        # The new key is never shown again.
        page.reload()
        page.locator("#keys-table").wait_for()
        assert new_key not in page.content()

    def test_set_billing_email(self, page, server, db_session):
        key = ApiKeyFactory()
        sign_in(page, key)
        page.goto("/dashboard/settings")
        page.get_by_label("Email address").fill("invoices@tenant.example")
        page.get_by_role("button", name="Save billing email").click()
        page.get_by_text("Invoices will be sent to invoices@tenant.example.").wait_for()
        headers = {"Authorization": f"Bearer {key.plaintext}"}
        assert httpx.get(f"{server}/v1/billing/settings", headers=headers).json() == {
            "billing_email": "invoices@tenant.example"
        }
        field = page.get_by_label("Email address")
        field.fill("not an address")
        page.get_by_role("button", name="Save billing email").click()
        # The browser refuses it before any request (an email input); the server's own 422
        # invalid_billing_email is tested through the API (tests/billing/test_corrections.py,
        # TestTenantBillingSettings).
        assert field.evaluate("el => el.validity.typeMismatch") is True
        page.reload()
        # The page fills the field from GET /v1/billing/settings after it loads: wait for that (reading
        # the value at once raced it and found the field still empty on a loaded CI machine).
        expect(page.get_by_label("Email address")).to_have_value("invoices@tenant.example", timeout=30_000)

    def test_download_csv_report(self, page, server):
        key = ApiKeyFactory()
        job = submit(server, key, {"task": "demo.echo", "args": {"csv": True}})
        wait_until(
            lambda: (
                httpx.get(
                    f"{server}/v1/jobs/{job['id']}", headers={"Authorization": f"Bearer {key.plaintext}"}
                ).json()["status"]
                == "succeeded"
            ),
            timeout=60,
            message="the job to finish",
        )
        sign_in(page, key)
        page.goto("/dashboard/usage")
        link = page.get_by_role("link", name="Download CSV report")
        with page.expect_download() as info:
            link.click()
        download = info.value
        text = Path(download.path()).read_text()
        rows = list(csv.reader(io.StringIO(text)))
        assert {"key", "jobs", "attempts", "compute_seconds", "wall_seconds", "charges"} <= {
            c.strip().lstrip("\ufeff") for c in rows[0]
        }
        assert download.suggested_filename.endswith(".csv")


class TestOperatorDashboard:
    def test_operator_sees_tenant_and_workers(self, page, server, redis_client):
        tenant = TenantFactory(plan_name="pro")
        redis_client.zadd(f"tq:q:{tenant.id}", {"browser-a": 1, "browser-b": 2})
        try:
            page.goto("/admin")
            page.wait_for_url("**/admin/login?next=/admin")
            page.get_by_label("Operator token").fill("wrong")
            page.get_by_role("button", name="Sign in").click()
            assert page.get_by_role("alert").inner_text() == "Wrong operator token."
            operator_sign_in(page)
            row = page.locator(f'tr[data-tenant-id="{tenant.id}"]')
            row.wait_for()
            cells = row.locator("td").all_inner_texts()
            assert tenant.name in cells[0] and "active" in cells[2] and cells[3] == "2"
            shoot(page, "admin-tenants")
        finally:
            redis_client.delete(f"tq:q:{tenant.id}")
        page.goto("/admin/workers")
        page.locator("tr[data-worker]").first.wait_for()
        page.locator("#chart-throughput svg[role=img]").wait_for()
        assert "tq.exec" in page.locator("#exec-queues").inner_text()
        shoot(page, "admin-workers")

    def test_operator_suspends_tenant(self, page, server):
        key = ApiKeyFactory()
        operator_sign_in(page)
        row = page.locator(f'tr[data-tenant-id="{key.tenant_id}"]')
        row.get_by_role("button", name=f"Suspend {key.tenant.name}").click()
        page.locator(f'tr[data-tenant-id="{key.tenant_id}"][data-status="suspended"]').wait_for()
        expect(page.locator("#tenants-message")).to_contain_text("suspended", timeout=30_000)
        resp = httpx.get(
            f"{server}/admin/v1/tenants/{key.tenant_id}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert resp.json()["status"] == "suspended"
        # The suspended tenant is refused by the API.
        denied = httpx.post(
            f"{server}/v1/jobs",
            json={"task": "demo.echo"},
            headers={"Authorization": f"Bearer {key.plaintext}"},
        )
        assert denied.status_code == 403
        row.get_by_role("button", name=f"Reactivate {key.tenant.name}").click()
        page.locator(f'tr[data-tenant-id="{key.tenant_id}"][data-status="active"]').wait_for()

    def test_operator_pauses_and_resumes_queue(self, page, redis_client):
        tenant = TenantFactory()
        operator_sign_in(page)
        row = page.locator(f'tr[data-tenant-id="{tenant.id}"]')
        row.get_by_role("button", name=f"Pause queue of {tenant.name}").click()
        row.locator(".status-paused").wait_for()
        assert redis_client.sismember("tq:paused", tenant.id)
        row.get_by_role("button", name=f"Resume queue of {tenant.name}").click()
        row.locator(".status-paused").wait_for(state="detached")
        assert not redis_client.sismember("tq:paused", tenant.id)


class TestDashboardDefects:
    """What a newcomer saw wrong on the pages."""

    def test_retried_job_wait_is_measured_to_the_first_start(self, page):
        key = ApiKeyFactory()
        created = datetime(2026, 1, 5, 12, 0, 0, tzinfo=UTC)
        # A retried job: the first attempt started 1.5 s after creation; the retry moved run_at later.
        job = JobFactory(
            tenant=key.tenant,
            status="succeeded",
            attempts=2,
            created_at=created,
            started_at=created + timedelta(seconds=1.5),
            run_at=created + timedelta(seconds=4),
            finished_at=created + timedelta(seconds=5),
        )
        sign_in(page, key)
        row = page.locator(f'tr[data-job-id="{job.id}"]')
        row.wait_for()
        assert row.locator("td").all_inner_texts()[6] == "1.50 s"
        page.goto(f"/dashboard/jobs/{job.id}")
        page.locator("#job-summary .status-succeeded").wait_for()
        waited = page.locator("#job-summary div", has=page.locator("dt", has_text="Waited")).locator("dd")
        assert waited.inner_text() == "1.50 s"

    @pytest.mark.parametrize(
        ("status", "offered"), [("succeeded", False), ("failed", True), ("cancelled", True)]
    )
    def test_rerun_offered_only_where_the_api_accepts_it(self, page, status, offered):
        key = ApiKeyFactory()
        job = JobFactory(tenant=key.tenant, status=status)
        sign_in(page, key)
        page.goto(f"/dashboard/jobs/{job.id}")
        page.locator(f"#job-summary .status-{status}").wait_for()
        assert page.get_by_role("button", name="Re-run job").is_visible() is offered

    def test_legend_squares_and_money(self, page):
        operator_sign_in(page)
        page.goto("/admin/workers")
        legend = page.locator("#chart-throughput .legend svg").first
        legend.wait_for()
        box = legend.bounding_box()
        assert box is not None and box["width"] <= 12 and box["height"] <= 12
        page.goto("/admin/plans")
        fee = page.locator("#plan-free-base_fee")
        fee.wait_for()
        assert fee.input_value() == "0.00"
        # Saving without touching it changes nothing (the formatted fee equals the stored one).
        page.get_by_role("button", name="Save free").click()
        expect(page.locator("#plans-message")).to_contain_text("Nothing changed in free", timeout=30_000)

    def test_usage_page_explains_its_job_counts(self, page):
        key = ApiKeyFactory()
        sign_in(page, key)
        page.goto("/dashboard/usage")
        note = page.locator("#jobs-counts-note").inner_text()
        assert "accepted this period" in note and "ran" in note and "Jobs page lists every job" in note


class TestPagesRender:
    """Every main page renders without script errors at both widths, and shows its data or an empty
    state."""

    def test_tenant_pages(self, page, server):
        key = ApiKeyFactory()
        submit(server, key, {"task": "demo.echo", "args": {"n": 1}})
        sign_in(page, key)
        for name in ["usage", "queue", "billing", "settings"]:
            page.goto(f"/dashboard/{name}")
            page.wait_for_load_state("networkidle")
            main = page.locator("main")
            assert main.locator(".empty, table, .card .metric, .quota, details").count() > 0, name
            if name == "settings":
                shoot(page, "settings-page")
            else:
                shoot(page, name)

    def test_operator_pages(self, page):
        operator_sign_in(page)
        for name, path in [("admin-plans", "/admin/plans"), ("admin-billing", "/admin/billing")]:
            page.goto(path)
            page.wait_for_load_state("networkidle")
            assert page.locator("main").locator(".empty, table, form.card, p").count() > 0
            shoot(page, name)

    def test_unknown_page_is_a_friendly_404(self, page):
        resp = page.goto("/dashboard/definitely/not/here")
        assert resp.status == 404
        assert page.get_by_role("heading", level=1).inner_text() == "Page not found"
        assert page.get_by_role("link", name="Back to the dashboard").is_visible()
