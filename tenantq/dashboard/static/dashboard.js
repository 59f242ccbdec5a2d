/*
 * tenantq dashboard: renders the pages from the JSON API with the session cookie.
 *
 * - Every request sends X-Requested-With (the server's CSRF guard requires it, or a JSON body, on
 *   cookie-authenticated writes).
 * - Data is put in the page with textContent / DOM nodes only, never innerHTML: tenant-supplied
 *   strings (task args, errors, key names) cannot inject markup.
 * - Charts are small hand-written SVG bar charts; nothing is loaded from a CDN.
 */
"use strict";

(function () {
  const body = document.body;
  const AREA = body.dataset.area;
  const PAGE = body.dataset.page;
  const LOGIN = AREA === "admin" ? "/admin/login" : "/dashboard/login";
  const TERMINAL = new Set(["succeeded", "failed", "cancelled", "rejected"]);
  const CANCELLABLE = new Set(["queued", "scheduled", "running", "retrying"]);
  // POST /v1/jobs/{id}/retry accepts only these.
  const RERUNNABLE = new Set(["failed", "cancelled"]);

  // ------------------------------------------------------------------------------------------------
  // DOM helpers

  function $(sel) { return document.querySelector(sel); }

  function h(tag, attrs, ...children) {
    const el = document.createElementNS(
      tag === "svg" || SVG_TAGS.has(tag) ? "http://www.w3.org/2000/svg" : "http://www.w3.org/1999/xhtml", tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
      else if (key === "text") el.textContent = value;
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }
  const SVG_TAGS = new Set(["rect", "line", "text", "g", "title", "desc", "path"]);

  function show(el, ...nodes) { if (el) el.replaceChildren(...nodes); }

  // Polled tables are re-rendered in place; keep keyboard focus on the same control of the same row
  // (rows carry data-*-id attributes) so a refresh never throws a keyboard user back to the top.
  function showKeepingFocus(el, ...nodes) {
    const active = document.activeElement;
    let memo = null;
    if (active && active !== document.body && el.contains(active)) {
      const row = active.closest("tr");
      const ids = row ? [...row.attributes].filter((a) => /^data-[a-z-]*id$/.test(a.name)) : [];
      memo = { ids, tag: active.tagName, label: active.getAttribute("aria-label") || active.textContent };
    }
    show(el, ...nodes);
    if (!memo || !memo.ids.length) return;
    const row = el.querySelector("tr" + memo.ids.map((a) => `[${a.name}="${CSS.escape(a.value)}"]`).join(""));
    const target = row && [...row.querySelectorAll(memo.tag)]
      .find((c) => (c.getAttribute("aria-label") || c.textContent) === memo.label);
    if (target) target.focus();
  }
  function emptyState(text) { return h("p", { class: "empty" }, text); }
  function errorBox(text) { return h("p", { class: "banner banner-error", role: "alert" }, text); }
  function say(el, text, kind) {
    if (!el) return;
    el.className = text ? "banner banner-" + (kind || "info") : "";
    el.textContent = text || "";
  }
  function badge(status) { return h("span", { class: "badge status-" + status }, status); }

  // ------------------------------------------------------------------------------------------------
  // Formatting

  function fmtTime(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    return isNaN(d) ? String(iso) : d.toLocaleString();
  }
  function timeEl(iso) {
    return iso ? h("time", { datetime: iso, title: iso }, fmtTime(iso)) : "—";
  }
  function fmtMs(ms) {
    if (ms === null || ms === undefined || isNaN(ms)) return "—";
    if (ms < 1000) return Math.round(ms) + " ms";
    const s = ms / 1000;
    if (s < 60) return s.toFixed(s < 10 ? 2 : 1) + " s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + " min " + Math.round(s % 60) + " s";
    return Math.floor(m / 60) + " h " + (m % 60) + " min";
  }
  function between(a, b) { return a && b ? Date.parse(b) - Date.parse(a) : null; }
  // Queueing time before the first attempt. started_at is the first attempt's start, while a retry moves
  // run_at to its own later due time: run_at counts only when it precedes started_at (a countdown).
  function waitMs(job, now) {
    const due = job.run_at && (!job.started_at || Date.parse(job.run_at) <= Date.parse(job.started_at))
      ? job.run_at : job.created_at;
    if (job.started_at) return Math.max(0, between(due, job.started_at));
    return TERMINAL.has(job.status) ? null : Math.max(0, now - Date.parse(due));
  }
  function fmtNum(n, digits) {
    if (n === null || n === undefined || n === "") return "—";
    const x = Number(n);
    if (isNaN(x)) return String(n);
    return x.toLocaleString(undefined, { maximumFractionDigits: digits === undefined ? 2 : digits });
  }
  function fmtMoney(amount, currency) {
    if (amount === null || amount === undefined) return "—";
    return (currency ? String(currency).toUpperCase() + " " : "") + fmtAmount(amount, currency);
  }
  // Money as its currency writes it ("999.00", "500" for JPY), from the exact decimal text the API sends.
  function fmtAmount(amount, currency) {
    const x = Number(amount);
    if (amount === "" || isNaN(x)) return String(amount);
    let digits = 2;
    try {
      if (currency) digits = new Intl.NumberFormat("en", { style: "currency", currency: String(currency).toUpperCase() })
        .resolvedOptions().maximumFractionDigits;
    } catch (e) { /* unknown currency code: two decimals */ }
    return x.toFixed(digits);
  }
  function fmtValue(v) {
    if (v === null || v === undefined) return "—";
    if (typeof v === "boolean") return v ? "yes" : "no";
    if (typeof v === "object") return JSON.stringify(v);
    if (typeof v === "string" && /^\d{4}-\d\d-\d\dT\d\d:\d\d/.test(v)) return fmtTime(v);
    return String(v);
  }
  function currentMonth() {
    const d = new Date();
    return d.getUTCFullYear() + "-" + String(d.getUTCMonth() + 1).padStart(2, "0");
  }

  // ------------------------------------------------------------------------------------------------
  // API

  let redirecting = false;

  async function api(method, url, payload) {
    const headers = { "Accept": "application/json", "X-Requested-With": "tenantq-dashboard" };
    const init = { method, headers, credentials: "same-origin" };
    if (payload !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(payload);
    }
    let resp;
    try {
      resp = await fetch(url, init);
    } catch (e) {
      return { ok: false, status: 0, data: null, message: "The server could not be reached." };
    }
    if (resp.status === 401) {
      // Session expired or its key was revoked: back to sign-in, then back here.
      if (!redirecting) {
        redirecting = true;
        window.location.assign(LOGIN + "?next=" + encodeURIComponent(location.pathname + location.search));
      }
      return new Promise(() => {});
    }
    let data = null;
    const type = resp.headers.get("content-type") || "";
    if (resp.status !== 204 && type.includes("json")) {
      try { data = await resp.json(); } catch (e) { data = null; }
    }
    const err = data && data.error ? data.error : null;
    let message = "";
    if (!resp.ok) {
      message = err ? err.message : "Request failed (HTTP " + resp.status + ").";
      if (err && Array.isArray(err.details) && resp.status === 422) {
        message += " " + err.details.map((d) => (d.loc || []).slice(1).join(".") + ": " + d.msg).join("; ");
      }
    }
    return { ok: resp.ok, status: resp.status, data, message, code: err ? err.code : null };
  }

  function failure(r, what) {
    if (r.status === 403) return errorBox(r.message + " (ask for a key with the right scope, then sign in with it)");
    return errorBox(what + ": " + r.message);
  }

  // Re-run ``fn`` every ``ms`` while the tab is visible. ``fn`` may return true to stop.
  function poll(fn, ms) {
    let timer = null;
    let stopped = false;
    async function tick() {
      timer = null;
      if (document.hidden) { timer = setTimeout(tick, ms); return; }
      let stop = false;
      try { stop = await fn(); } catch (e) { console.error(e); }
      if (!stop && !stopped) timer = setTimeout(tick, ms);
    }
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && timer !== null) { clearTimeout(timer); tick(); }
    });
    tick();
    return {
      now() { if (timer !== null) clearTimeout(timer); stopped = false; tick(); },
      stop() { stopped = true; if (timer !== null) clearTimeout(timer); },
    };
  }

  function table(columns, rows, opts) {
    const o = opts || {};
    const thead = h("thead", {}, h("tr", {}, columns.map((c) =>
      h("th", { scope: "col", class: [c.num ? "num" : "", c.narrow ? "hide-narrow" : ""].join(" ").trim() || null },
        c.label))));
    const tbody = h("tbody", {}, rows.map((row) => {
      const cells = row.cells || row;
      const tr = h("tr", row.attrs || {}, cells.map((cell, i) =>
        h("td", { class: [columns[i].num ? "num" : "", columns[i].narrow ? "hide-narrow" : ""].join(" ").trim() || null },
          cell)));
      return tr;
    }));
    return h("table", { id: o.id || null }, o.caption ? h("caption", {}, o.caption) : null, thead, tbody,
      o.foot ? h("tfoot", {}, o.foot) : null);
  }

  // A table of arbitrary API objects: preferred columns first (when present), then the rest.
  function genericTable(items, preferred, opts) {
    const present = new Set();
    items.forEach((it) => Object.keys(it).forEach((k) => present.add(k)));
    const cols = (preferred || []).filter((k) => present.has(k));
    for (const k of present) if (!cols.includes(k) && cols.length < 8) cols.push(k);
    const extra = (opts && opts.extra) || null;
    const columns = cols.map((k) => ({ label: k.replace(/_/g, " "), num: items.some((it) => typeof it[k] === "number") }));
    if (extra) columns.push({ label: extra.label });
    return table(columns, items.map((it) => {
      const cells = cols.map((k) => (k === "status" && typeof it[k] === "string" ? badge(it[k]) : fmtValue(it[k])));
      if (extra) cells.push(extra.cell(it));
      return cells;
    }));
  }

  // ------------------------------------------------------------------------------------------------
  // SVG bar chart (hand-written: labels, values, one or two series, accessible data table)

  function niceMax(v) {
    if (v <= 0) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function barChart(fig, spec) {
    const W = 640, H = 240, L = 48, R = 10, T = 12, B = 34;
    const labels = spec.labels;
    const series = spec.series; // [{name, values, cls}]
    const n = labels.length;
    const max = niceMax(Math.max(0, ...series.flatMap((s) => s.values)));
    const plotW = W - L - R, plotH = H - T - B;
    const slot = n ? plotW / n : plotW;
    const barW = Math.max(1, (slot * 0.8) / series.length);
    const total = series.map((s) => s.name + " total " + fmtNum(s.values.reduce((a, b) => a + b, 0)));
    const svg = h("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": spec.title + ": " + total.join(", ") });
    for (let i = 0; i <= 4; i++) {
      const y = T + plotH - (plotH * i) / 4;
      svg.append(h("line", { class: "grid", x1: L, x2: W - R, y1: y, y2: y }));
      svg.append(h("text", { x: L - 6, y: y + 4, "text-anchor": "end" }, fmtNum((max * i) / 4, 2)));
    }
    svg.append(h("line", { class: "axis", x1: L, x2: W - R, y1: T + plotH, y2: T + plotH }));
    const every = Math.max(1, Math.ceil(n / 10));
    labels.forEach((label, i) => {
      series.forEach((s, j) => {
        const v = s.values[i] || 0;
        const bh = (v / max) * plotH;
        const x = L + i * slot + slot * 0.1 + j * barW;
        svg.append(h("rect", { class: s.cls, x: x.toFixed(1), y: (T + plotH - bh).toFixed(1), width: barW.toFixed(1),
          height: Math.max(0, bh).toFixed(1) }, h("title", {}, `${label}: ${fmtNum(v)} ${s.name}`)));
      });
      if (i % every === 0) {
        svg.append(h("text", { x: (L + i * slot + slot / 2).toFixed(1), y: H - B + 16, "text-anchor": "middle" },
          spec.short ? spec.short(label) : label));
      }
    });
    const data = h("details", {}, h("summary", {}, "Data table"),
      table([{ label: spec.labelName || "Label" }, ...series.map((s) => ({ label: s.name, num: true }))],
        labels.map((label, i) => [label, ...series.map((s) => fmtNum(s.values[i] || 0))])));
    const legend = series.length > 1 ? h("span", { class: "legend" }, series.map((s) =>
      h("span", {}, h("svg", { viewBox: "0 0 10 10", width: 10, height: 10, "aria-hidden": "true" },
        h("rect", { class: s.cls, width: 10, height: 10 })), " " + s.name))) : null;
    fig.replaceChildren(h("figcaption", {}, spec.title, legend), svg, data);
  }

  // ------------------------------------------------------------------------------------------------
  // Tenant pages

  const pages = {};

  pages.jobs = function () {
    const tableEl = $("#jobs-table"), statusEl = $("#jobs-status"), more = $("#jobs-more");
    const fStatus = $("#f-status"), fTask = $("#f-task"), fSince = $("#f-since");
    const params = new URLSearchParams(location.search);
    fStatus.value = params.get("status") || "";
    fSince.value = params.get("since") || "";
    let limit = 50;
    let seen = null;

    api("GET", "/v1/task-types").then((r) => {
      if (r.ok) for (const t of r.data) fTask.append(h("option", { value: t.name }, t.name));
      fTask.value = params.get("task") || "";
      if (fTask.value !== (params.get("task") || "")) {
        fTask.append(h("option", { value: params.get("task") }, params.get("task")));
        fTask.value = params.get("task");
      }
    });

    function row(job) {
      const now = Date.now();
      const wait = waitMs(job, now);
      const dur = job.started_at ? (job.finished_at ? between(job.started_at, job.finished_at) : now - Date.parse(job.started_at)) : null;
      const running = !job.finished_at && job.started_at;
      const attrs = { "data-job-id": job.id, "data-status": job.status };
      if (seen && !seen.has(job.id)) attrs.class = "new-row";
      return {
        attrs,
        cells: [
          h("a", { href: "/dashboard/jobs/" + encodeURIComponent(job.id), title: job.id }, h("code", {}, job.id.slice(0, 8))),
          job.task,
          badge(job.status),
          String(job.priority),
          String(job.attempts),
          timeEl(job.created_at),
          wait === null ? "—" : (job.started_at ? fmtMs(wait) : "waiting " + fmtMs(Math.max(0, wait))),
          dur === null ? "—" : (running ? "running " + fmtMs(Math.max(0, dur)) : fmtMs(dur)),
        ],
      };
    }

    const handle = poll(async () => {
      const q = new URLSearchParams({ limit: String(limit) });
      if (fStatus.value) q.set("status", fStatus.value);
      if (fTask.value) q.set("task", fTask.value);
      const r = await api("GET", "/v1/jobs?" + q);
      if (!r.ok) { show(tableEl, failure(r, "The job list")); statusEl.textContent = ""; return r.status === 403; }
      let items = r.data.items || [];
      if (fSince.value) {
        const cutoff = Date.now() - Number(fSince.value) * 60000;
        items = items.filter((j) => Date.parse(j.created_at) >= cutoff);
      }
      if (!items.length) {
        const filtered = fStatus.value || fTask.value || fSince.value;
        show(tableEl, emptyState(filtered ? "No job matches these filters." :
          "No jobs yet. Submit one with POST /v1/jobs and it appears here within seconds."));
      } else {
        showKeepingFocus(tableEl, table([
          { label: "Job" }, { label: "Task" }, { label: "Status" }, { label: "Priority", num: true, narrow: true },
          { label: "Attempts", num: true, narrow: true }, { label: "Created", narrow: true }, { label: "Wait", narrow: true },
          { label: "Duration" },
        ], items.map(row), { id: "jobs", caption: "Jobs, newest first" }));
      }
      seen = new Set(items.map((j) => j.id));
      more.hidden = !r.data.next_cursor || limit >= 500;
      statusEl.textContent = items.length + (items.length === 1 ? " job" : " jobs") + " shown · updated " +
        new Date().toLocaleTimeString();
      return false;
    }, 2000);

    function filtersChanged() {
      const q = new URLSearchParams();
      if (fStatus.value) q.set("status", fStatus.value);
      if (fTask.value) q.set("task", fTask.value);
      if (fSince.value) q.set("since", fSince.value);
      history.replaceState(null, "", location.pathname + (q.toString() ? "?" + q : ""));
      seen = null;
      handle.now();
    }
    [fStatus, fTask, fSince].forEach((el) => el.addEventListener("change", filtersChanged));
    $("#job-filters").addEventListener("submit", (e) => { e.preventDefault(); filtersChanged(); });
    more.addEventListener("click", () => { limit = Math.min(500, limit + 50); handle.now(); });
  };

  pages.job = function () {
    const id = body.dataset.jobId;
    const msg = $("#job-message");
    const cancelBtn = $("#cancel-job"), retryBtn = $("#retry-job");
    let job = null;

    function render(j) {
      job = j;
      body.dataset.jobStatus = j.status;
      const items = [
        ["Status", badge(j.status)], ["Task", h("code", {}, j.task)], ["Priority", String(j.priority)],
        ["Attempts", String(j.attempts)], ["Created", timeEl(j.created_at)],
        ...(j.run_at ? [["Runs at", timeEl(j.run_at)]] : []), ["Started", timeEl(j.started_at)], ["Finished", timeEl(j.finished_at)],
        ["Waited", fmtMs(j.started_at ? waitMs(j, Date.now()) : null)],
        ["Duration", fmtMs(between(j.started_at, j.finished_at))],
      ];
      if (j.progress) items.push(["Progress", progressEl(j.progress)]);
      if (j.idempotency_key) items.push(["Idempotency key", h("code", {}, j.idempotency_key)]);
      if (j.result_expires_at) items.push(["Result kept until", timeEl(j.result_expires_at)]);
      show($("#job-summary"), ...items.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v))));
      $("#job-args").textContent = JSON.stringify(j.args, null, 2);
      const out = $("#job-outcome");
      if (j.error) {
        $("#outcome-title").textContent = j.status === "failed" ? "Error" : "Last error";
        out.className = "code error";
        out.textContent = j.error;
      } else if (j.status === "succeeded") {
        $("#outcome-title").textContent = "Result";
        out.className = "code";
        out.textContent = JSON.stringify(j.result, null, 2);
      } else {
        $("#outcome-title").textContent = "Result";
        out.className = "code";
        out.textContent = TERMINAL.has(j.status) ? "No result (" + j.status + ")." : "No result yet: the job is " + j.status + ".";
      }
      renderAttempts(j);
      cancelBtn.hidden = !CANCELLABLE.has(j.status);
      retryBtn.hidden = !RERUNNABLE.has(j.status);
    }

    function renderAttempts(j) {
      const el = $("#job-attempts");
      if (!j.attempt_log.length) { show(el, emptyState("No attempt has started yet.")); return; }
      show(el, table([{ label: "#", num: true }, { label: "Status" }, { label: "Started" }, { label: "Finished", narrow: true },
        { label: "Duration" }, { label: "Worker", narrow: true }, { label: "Error" }],
      j.attempt_log.map((a) => [String(a.attempt), badge(a.status), timeEl(a.started_at), timeEl(a.finished_at),
        fmtMs(between(a.started_at, a.finished_at)), a.worker || "—",
        a.error ? h("details", {}, h("summary", {}, a.error.trim().split("\n").slice(-1)[0].slice(0, 120)),
          h("pre", { class: "code error" }, a.error)) : "—"])));
    }

    // What the task last reported with ctx.progress(fraction, message).
    function progressEl(p) {
      const pct = Math.round(p.fraction * 100);
      return h("span", { class: "job-progress" },
        h("progress", { max: "100", value: String(pct), "aria-label": "Progress" }),
        " " + pct + "%" + (p.message ? " — " + p.message : ""));
    }

    // While the page is open and the job unfinished, GET /v1/jobs/{id}/events pushes its changes (the
    // session cookie authenticates it); polling below only runs while no stream is open.
    let stream = null, forced = false;
    function follow() {
      if (stream || !window.EventSource || (job && TERMINAL.has(job.status))) return;
      stream = new EventSource("/v1/jobs/" + encodeURIComponent(id) + "/events");
      stream.addEventListener("job", (e) => {
        render(JSON.parse(e.data));
        if (TERMINAL.has(job.status)) { stream.close(); stream = null; }
      });
      stream.addEventListener("progress", (e) => {
        if (!job) return;
        const p = JSON.parse(e.data);
        render(Object.assign({}, job, { progress: p }));
      });
      const refresh = () => { forced = true; handle.now(); };
      stream.addEventListener("status", refresh);
      stream.addEventListener("attempt", refresh);
      stream.onerror = () => { if (stream) stream.close(); stream = null; };
    }

    const handle = poll(async () => {
      if (stream && !forced) return false;
      forced = false;
      const r = await api("GET", "/v1/jobs/" + encodeURIComponent(id));
      if (!r.ok) { say(msg, r.message, "error"); return true; }
      render(r.data);
      if (TERMINAL.has(r.data.status)) return true;
      follow();
      return false;
    }, 2000);

    cancelBtn.addEventListener("click", async () => {
      if (!window.confirm("Cancel this job?")) return;
      cancelBtn.disabled = true;
      const r = await api("POST", "/v1/jobs/" + encodeURIComponent(id) + "/cancel");
      cancelBtn.disabled = false;
      if (!r.ok) say(msg, "Could not cancel: " + r.message, "error");
      else {
        const how = { dequeued: "removed from the queue before it ran", terminated: "stopped while running",
          requested: "cancellation requested; the worker stops it shortly", already_finished: "it had already finished" };
        say(msg, "Job cancelled: " + (how[r.data.cancellation] || r.data.cancellation || r.data.status) + ".", "ok");
      }
      forced = true; handle.now();
    });

    retryBtn.addEventListener("click", async () => {
      retryBtn.disabled = true;
      const r = await api("POST", "/v1/jobs/" + encodeURIComponent(id) + "/retry");
      retryBtn.disabled = false;
      if (!r.ok) { say(msg, "Could not re-run: " + r.message, "error"); return; }
      if (r.data && r.data.id && r.data.id !== id) {
        msg.className = "banner banner-ok";
        msg.replaceChildren("Re-run submitted as a new job: ",
          h("a", { href: "/dashboard/jobs/" + encodeURIComponent(r.data.id) }, r.data.id), ".");
      } else {
        say(msg, "Re-run submitted.", "ok");
        forced = true; handle.now();
      }
    });
  };

  pages.usage = function () {
    const periodEl = $("#u-period"), csv = $("#csv-link");
    periodEl.value = new URLSearchParams(location.search).get("period") || currentMonth();

    async function loadQuotas() {
      const el = $("#quotas");
      const r = await api("GET", "/v1/usage");
      if (!r.ok) { show(el, failure(r, "Usage and quotas")); return; }
      const quotas = r.data.quotas || [];
      const period = r.data.period || {};
      const head = h("p", { class: "muted" }, "Current period: " + fmtTime(period.start) + " – " + fmtTime(period.end));
      if (!quotas.length) { show(el, head, emptyState("Your plan has no quotas.")); return; }
      show(el, head, ...quotas.map((q) => {
        const used = Number(q.used), limit = q.limit === null || q.limit === undefined ? null : Number(q.limit);
        const pct = limit ? Math.min(100, (used / limit) * 100) : 0;
        const label = q.name.replace(/_/g, " ");
        const bar = limit ? h("div", { class: "bar", role: "progressbar", "aria-label": label, "aria-valuemin": 0,
          "aria-valuemax": limit, "aria-valuenow": used, "aria-valuetext": fmtNum(used) + " of " + fmtNum(limit) + " " + (q.unit || "") },
        h("div", { class: "bar-fill" + (used >= limit ? " over" : pct >= 80 ? " warn" : "") })) : null;
        if (bar) bar.firstChild.style.width = pct.toFixed(1) + "%";
        return h("div", { class: "quota", "data-quota": q.name },
          h("div", { class: "quota-head" },
            h("strong", {}, label, q.hard ? " " : null, q.hard ? h("span", { class: "badge", title: "Hard limit: submissions are refused beyond it" }, "hard") : null),
            h("span", {}, fmtNum(used) + " / " + (limit === null ? "no limit" : fmtNum(limit)) + " " + (q.unit || ""))),
          bar,
          q.resets_at ? h("small", { class: "muted" }, "Resets " + fmtTime(q.resets_at)) : null);
      }));
    }

    function daysOf(period) {
      const [y, m] = period.split("-").map(Number);
      const days = [];
      const last = new Date(Date.UTC(y, m, 0)).getUTCDate();
      const today = new Date();
      for (let d = 1; d <= last; d++) {
        const date = new Date(Date.UTC(y, m - 1, d));
        if (date > today) break;
        days.push(date.toISOString().slice(0, 10));
      }
      return days;
    }

    async function loadReport() {
      const period = periodEl.value || currentMonth();
      const byTask = $("#by-task"), cj = $("#chart-jobs"), cc = $("#chart-compute");
      csv.href = "/v1/usage/report?" + new URLSearchParams({ period, group_by: "task", format: "csv" });
      csv.setAttribute("download", "tenantq-usage-" + period + ".csv");
      const [days, tasks] = await Promise.all([
        api("GET", "/v1/usage/report?" + new URLSearchParams({ period, group_by: "day", format: "json" })),
        api("GET", "/v1/usage/report?" + new URLSearchParams({ period, group_by: "task", format: "json" })),
      ]);
      if (!days.ok) { show(cj, failure(days, "The usage chart")); cc.replaceChildren(); }
      else {
        const byDay = new Map((days.data.rows || []).map((r) => [String(r.key).slice(0, 10), r]));
        const labels = daysOf(period);
        for (const k of byDay.keys()) if (!labels.includes(k)) labels.push(k);
        labels.sort();
        barChart(cj, { title: "Jobs per day", labelName: "Day", labels, short: (d) => d.slice(8),
          series: [{ name: "jobs", cls: "series-a", values: labels.map((d) => Number((byDay.get(d) || {}).jobs || 0)) }] });
        barChart(cc, { title: "Compute seconds per day", labelName: "Day", labels, short: (d) => d.slice(8),
          series: [{ name: "compute seconds", cls: "series-b", values: labels.map((d) => Number((byDay.get(d) || {}).compute_seconds || 0)) }] });
      }
      if (!tasks.ok) { show(byTask, failure(tasks, "The usage report")); return; }
      const rows = tasks.data.rows || [];
      if (!rows.length) { show(byTask, emptyState("No usage in " + period + ".")); return; }
      const t = tasks.data.totals || {};
      show(byTask, table([{ label: "Task type" }, { label: "Jobs", num: true }, { label: "Attempts", num: true },
        { label: "Compute s", num: true }, { label: "Wall s", num: true, narrow: true }, { label: "Charges", num: true }],
      rows.map((r) => [h("code", {}, r.key), fmtNum(r.jobs), fmtNum(r.attempts), fmtNum(r.compute_seconds, 3),
        fmtNum(r.wall_seconds, 3), String(r.charges ?? "0")]),
      { id: "usage-by-task", foot: h("tr", {}, h("th", { scope: "row" }, "Total"), h("td", { class: "num" }, fmtNum(t.jobs)),
        h("td", { class: "num" }, fmtNum(t.attempts)), h("td", { class: "num" }, fmtNum(t.compute_seconds, 3)),
        h("td", { class: "num hide-narrow" }, fmtNum(t.wall_seconds, 3)), h("td", { class: "num" }, String(t.charges ?? "—"))) }));
    }

    periodEl.addEventListener("change", () => {
      history.replaceState(null, "", location.pathname + "?period=" + encodeURIComponent(periodEl.value));
      loadReport();
    });
    $("#usage-filters").addEventListener("submit", (e) => { e.preventDefault(); loadReport(); });
    loadQuotas();
    loadReport();
  };

  pages.queue = function () {
    const el = $("#queue-cards"), status = $("#queue-status");
    function card(title, value, extra) {
      return h("section", { class: "card", "aria-label": title }, h("h2", {}, title), h("p", { class: "metric" }, value), extra || null);
    }
    function rate(v) {
      if (v === null || v === undefined) return "no limit";
      if (typeof v === "object") return Object.entries(v).map(([k, x]) => k.replace(/_/g, " ") + ": " + fmtValue(x)).join(" · ");
      return fmtNum(v) + " jobs/s";
    }
    poll(async () => {
      const r = await api("GET", "/v1/queue");
      if (!r.ok) { show(el, failure(r, "Queue figures")); return r.status === 403; }
      const q = r.data;
      const cap = q.concurrency_limit;
      const bar = cap ? h("div", { class: "bar", role: "progressbar", "aria-label": "Running versus concurrency cap",
        "aria-valuemin": 0, "aria-valuemax": cap, "aria-valuenow": q.running }, h("div", { class: "bar-fill" + (q.running >= cap ? " warn" : "") })) : null;
      if (bar) bar.firstChild.style.width = Math.min(100, (q.running / cap) * 100).toFixed(1) + "%";
      const wait = q.recent_wait_ms || {};
      show(el,
        card("Waiting", fmtNum(q.depth), h("p", { class: "muted" },
          q.held ? "Held: jobs stay queued and are not started." : q.paused ? "Paused: jobs stay queued." : "Jobs in your queue.")),
        card("Running", h("span", {}, fmtNum(q.running), h("small", {}, cap ? " / " + cap + " max" : "")), bar),
        card("Rate limit", h("small", {}, rate(q.rate_limit))),
        card("Recent wait", h("span", {}, fmtMs(wait.p50), h("small", {}, " p50")), h("p", { class: "muted" }, "p95: " + fmtMs(wait.p95))),
        card("State", q.held ? badge("held") : q.paused ? badge("paused") : badge("active"),
          q.held ? h("p", { id: "queue-held", role: "status" }, q.held.message) : null));
      status.textContent = "Updated " + new Date().toLocaleTimeString();
      return false;
    }, 3000);
  };

  pages.billing = async function () {
    const el = $("#invoices");
    const r = await api("GET", "/v1/invoices");
    if (!r.ok) { show(el, failure(r, "Invoices")); return; }
    const items = r.data.items;
    if (!items.length) { show(el, emptyState("No invoices yet: the first one is issued when the current billing period closes.")); return; }
    show(el, ...items.map((inv) => {
      const lines = h("div", { class: "table-wrap" }, h("p", { class: "muted" }, "Loading lines…"));
      const det = h("details", { class: "card", "data-invoice-id": inv.id },
        h("summary", {}, inv.period, " · ", badge(inv.status), " · ", fmtMoney(inv.total, inv.currency)),
        lines);
      det.addEventListener("toggle", () => {
        if (!det.open || det.dataset.loaded) return;
        det.dataset.loaded = "1";
        const full = inv;
        if (!full.lines.length) { show(lines, emptyState("This invoice has no lines.")); return; }
        show(lines, table([{ label: "Description" }, { label: "Metric", narrow: true }, { label: "Quantity", num: true },
          { label: "Unit price", num: true, narrow: true }, { label: "Amount", num: true }],
        full.lines.map((l) => [l.description || l.metric, h("code", {}, l.metric || ""), String(l.quantity), String(l.unit_price), String(l.amount)]),
        { foot: h("tr", {}, h("th", { scope: "row", colspan: 4 }, "Total"), h("td", { class: "num" }, fmtMoney(full.total, full.currency))) }));
      });
      return det;
    }));
  };

  pages.settings = function () {
    const sessionKey = body.dataset.sessionKeyId || "";

    // API keys
    const keysEl = $("#keys"), keysMsg = $("#keys-message"), form = $("#key-form"), newKey = $("#new-key");
    async function loadKeys() {
      const r = await api("GET", "/v1/keys");
      if (!r.ok) { show(keysEl, failure(r, "API keys")); if (r.status === 403) form.hidden = true; return; }
      const items = r.data.items;
      if (!items.length) { show(keysEl, emptyState("No API keys.")); return; }
      const now = Date.now();
      show(keysEl, table([{ label: "Name" }, { label: "Key" }, { label: "Scopes", narrow: true }, { label: "Created", narrow: true },
        { label: "Last used", narrow: true }, { label: "Expires", narrow: true }, { label: "Status" }, { label: "" }],
      items.map((k) => {
        const revoked = k.revoked_at && Date.parse(k.revoked_at) <= now;
        const expired = k.expires_at && Date.parse(k.expires_at) <= now;
        const state = revoked ? "revoked" : expired ? "expired" : "active";
        const mine = k.id === sessionKey;
        return {
          attrs: { "data-key-id": k.id, "data-state": state },
          cells: [k.name || h("span", { class: "muted" }, "(unnamed)"),
            h("code", {}, (k.prefix || "") + k.id + "_…"),
            (k.scopes || []).join(", "), timeEl(k.created_at), timeEl(k.last_used_at), timeEl(k.expires_at),
            h("span", {}, badge(state), mine ? h("small", { class: "muted" }, " (this session)") : null),
            state === "active" ? h("button", { type: "button", class: "danger small",
              "aria-label": "Revoke key " + (k.name || k.id), onclick: () => revoke(k, mine) }, "Revoke") : ""],
        };
      }), { id: "keys-table" }));
    }
    async function revoke(k, mine) {
      const warning = mine ? "Revoke the key you signed in with? This also ends your session." : "Revoke key '" + (k.name || k.id) + "'? Programs using it stop working within a second.";
      if (!window.confirm(warning)) return;
      const r = await api("DELETE", "/v1/keys/" + encodeURIComponent(k.id));
      if (!r.ok) { say(keysMsg, "Could not revoke: " + r.message, "error"); return; }
      say(keysMsg, "Key '" + (k.name || k.id) + "' revoked.", "ok");
      loadKeys();
    }
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const scopes = [...form.querySelectorAll("input[name=scopes]:checked")].map((i) => i.value);
      if (!scopes.length) { say(keysMsg, "Choose at least one scope.", "error"); return; }
      const payload = { name: $("#key-name").value.trim(), scopes };
      const exp = $("#key-expires").value;
      if (exp) payload.expires_at = exp + "T23:59:59Z";
      const r = await api("POST", "/v1/keys", payload);
      if (!r.ok) { say(keysMsg, "Could not create the key: " + r.message, "error"); return; }
      say(keysMsg, "");
      const code = h("code", { id: "new-key-value" }, r.data.key);
      const copy = h("button", { type: "button", class: "small", onclick: async () => {
        try { await navigator.clipboard.writeText(r.data.key); copy.textContent = "Copied"; } catch (err) {
          const range = document.createRange(); range.selectNodeContents(code);
          const sel = window.getSelection(); sel.removeAllRanges(); sel.addRange(range); copy.textContent = "Selected: press Ctrl+C";
        }
      } }, "Copy");
      newKey.replaceChildren(h("strong", {}, "New key '" + (r.data.name || "") + "' created. Copy it now: it will not be shown again."),
        h("div", { class: "secret" }, code, copy));
      newKey.hidden = false;
      form.reset();
      loadKeys();
    });

    // Schedules
    const schedEl = $("#schedules"), schedMsg = $("#schedules-message");
    async function loadSchedules() {
      const r = await api("GET", "/v1/schedules");
      if (!r.ok) { show(schedEl, failure(r, "Schedules")); return; }
      const items = r.data.items;
      if (!items.length) { show(schedEl, emptyState("No schedules.")); return; }
      show(schedEl, genericTable(items, ["name", "task", "cron", "interval_seconds", "enabled", "next_run_at", "last_run_at"], {
        extra: { label: "", cell: (s) => h("button", { type: "button", class: "danger small",
          "aria-label": "Delete schedule " + (s.name || s.id), onclick: async () => {
            if (!window.confirm("Delete this schedule?")) return;
            const d = await api("DELETE", "/v1/schedules/" + encodeURIComponent(s.id));
            say(schedMsg, d.ok ? "Schedule deleted." : "Could not delete: " + d.message, d.ok ? "ok" : "error");
            loadSchedules();
          } }, "Delete") },
      }));
    }

    // Webhooks
    const hooksEl = $("#webhooks"), hooksMsg = $("#webhooks-message"), hookForm = $("#webhook-form"), newHook = $("#new-webhook");
    async function loadWebhooks() {
      const r = await api("GET", "/v1/webhooks");
      if (!r.ok) { show(hooksEl, failure(r, "Webhook endpoints")); return; }
      const items = r.data.items;
      if (!items.length) { show(hooksEl, emptyState("No webhook endpoints.")); return; }
      show(hooksEl, ...items.map((w) => {
        const deliveries = h("div", { class: "table-wrap" });
        const det = h("details", {}, h("summary", {}, "Recent deliveries"), deliveries);
        det.addEventListener("toggle", async () => {
          if (!det.open) return;
          const d = await api("GET", "/v1/webhooks/" + encodeURIComponent(w.id) + "/deliveries");
          if (!d.ok) { show(deliveries, failure(d, "Delivery history")); return; }
          const rows = d.data.items;
          show(deliveries, rows.length ? genericTable(rows, ["created_at", "event", "status", "response_status", "attempts", "job_id"])
            : emptyState("No deliveries yet."));
        });
        const del = h("button", { type: "button", class: "danger small", "aria-label": "Delete endpoint " + w.url,
          onclick: async () => {
            if (!window.confirm("Delete this webhook endpoint?")) return;
            const d = await api("DELETE", "/v1/webhooks/" + encodeURIComponent(w.id));
            say(hooksMsg, d.ok ? "Endpoint deleted." : "Could not delete: " + d.message, d.ok ? "ok" : "error");
            loadWebhooks();
          } }, "Delete");
        return h("div", { class: "card", "data-webhook-id": w.id },
          h("div", { class: "page-head" }, h("code", { class: "wrap" }, w.url || w.id), del),
          w.events ? h("p", { class: "muted" }, "Events: " + [].concat(w.events).join(", ")) : null, det);
      }));
    }
    hookForm.addEventListener("submit", async (e) => {
      e.preventDefault();
      const r = await api("POST", "/v1/webhooks", { url: $("#webhook-url").value.trim() });
      if (!r.ok) { say(hooksMsg, "Could not add the endpoint: " + r.message, "error"); return; }
      say(hooksMsg, "");
      if (r.data && r.data.secret) {
        newHook.replaceChildren(h("strong", {}, "Endpoint added. Its signing secret is shown once:"),
          h("div", { class: "secret" }, h("code", {}, r.data.secret)));
        newHook.hidden = false;
      } else {
        say(hooksMsg, "Endpoint added.", "ok");
      }
      hookForm.reset();
      loadWebhooks();
    });

    // Billing email: where invoices are sent (writing needs the keys:manage scope).
    const emailForm = $("#billing-email-form"), emailInput = $("#billing-email"), emailMsg = $("#billing-email-message");
    // The field stays disabled until the current address is in it: typed earlier, it would be
    // overwritten by the load (and an empty address saved, which removes it).
    async function loadBillingEmail() {
      const r = await api("GET", "/v1/billing/settings");
      if (!r.ok) { say(emailMsg, "Billing settings: " + r.message, "error"); emailForm.hidden = true; return; }
      emailInput.value = r.data.billing_email || "";
      $("#billing-email-fields").disabled = false;
    }
    emailForm.addEventListener("submit", async (e) => {
      e.preventDefault();
      const r = await api("PUT", "/v1/billing/settings", { billing_email: emailInput.value.trim() });
      if (!r.ok) { say(emailMsg, "Could not save the billing email: " + r.message, "error"); return; }
      emailInput.value = r.data.billing_email || "";
      say(emailMsg, r.data.billing_email ? "Invoices will be sent to " + r.data.billing_email + "." : "Billing email removed.", "ok");
    });

    loadKeys();
    loadSchedules();
    loadWebhooks();
    loadBillingEmail();
  };

  // ------------------------------------------------------------------------------------------------
  // Operator pages

  pages.tenants = function () {
    const el = $("#tenants"), status = $("#tenants-status"), msg = $("#tenants-message");
    let revenue = new Map();

    async function loadRevenue(period) {
      const r = await api("GET", "/admin/v1/reports/usage?" + new URLSearchParams({ period, format: "json" }));
      if (!r.ok) return;
      revenue = new Map();
      for (const row of r.data.rows) revenue.set(row.tenant_id, row.charges);
    }

    async function changePlan(t, plan, select) {
      select.disabled = true;
      const r = await api("PATCH", "/admin/v1/tenants/" + encodeURIComponent(t.id), { plan });
      select.disabled = false;
      say(msg, r.ok ? "Plan of " + t.name + " set to " + plan + "." : "Could not change the plan: " + r.message, r.ok ? "ok" : "error");
      handle.now();
    }

    async function setState(t, action) {
      if (action === "suspend" && !window.confirm("Suspend " + t.name + "? Their jobs stop being run and new ones are refused.")) return;
      const r = await api("POST", "/admin/v1/tenants/" + encodeURIComponent(t.id) + "/" + action);
      say(msg, r.ok ? t.name + (action === "suspend" ? " suspended." : " reactivated.") : "Could not " + action + ": " + r.message,
        r.ok ? "ok" : "error");
      handle.now();
    }

    async function setQueue(t, action) {
      const r = await api("POST", "/admin/v1/tenants/" + encodeURIComponent(t.id) + "/queue/" + action);
      say(msg, r.ok ? "Queue of " + t.name + (action === "pause" ? " paused: its jobs stay queued." : " resumed.")
        : "Could not " + action + " the queue: " + r.message, r.ok ? "ok" : "error");
      handle.now();
    }

    const handle = poll(async () => {
      if (el.contains(document.activeElement) && document.activeElement.tagName === "SELECT") return false;
      const r = await api("GET", "/admin/v1/overview");
      if (!r.ok) { show(el, failure(r, "The tenant overview")); return false; }
      const o = r.data;
      await loadRevenue(o.period.start.slice(0, 7));
      if (!o.tenants.length) { show(el, emptyState("No tenants yet. Create one with `tenantq tenant create` or POST /admin/v1/tenants.")); return false; }
      showKeepingFocus(el, table([{ label: "Tenant" }, { label: "Plan" }, { label: "Status" }, { label: "Queued", num: true },
        { label: "Running", num: true }, { label: "Jobs/min", num: true, narrow: true }, { label: "Jobs this period", num: true, narrow: true },
        { label: "Compute s", num: true, narrow: true }, { label: "Revenue", num: true, narrow: true }, { label: "Actions" }],
      o.tenants.map((t) => {
        const plan = h("select", { "aria-label": "Plan of " + t.name }, o.plans.map((p) =>
          h("option", { value: p.name, selected: p.name === t.plan }, p.display_name)));
        plan.addEventListener("change", () => changePlan(t, plan.value, plan));
        const suspended = t.status === "suspended";
        const action = suspended ? "reactivate" : "suspend";
        // Holding a tenant's queue (jobs stay queued) without suspending the account.
        const queueAction = t.paused ? "resume" : "pause";
        const queueBtn = !suspended ? h("button", { type: "button", class: "small",
          "aria-label": (t.paused ? "Resume queue of " : "Pause queue of ") + t.name,
          onclick: () => setQueue(t, queueAction) }, t.paused ? "Resume queue" : "Pause queue") : null;
        return {
          attrs: { "data-tenant-id": t.id, "data-status": t.status },
          cells: [h("div", {}, h("strong", {}, t.name), h("br"), h("small", { class: "muted hide-narrow" }, h("code", {}, t.id))),
            plan, h("span", {}, badge(t.status), t.paused && !suspended ? h("span", {}, " ", badge("paused")) : null),
            fmtNum(t.queue_depth), fmtNum(t.running), fmtNum(t.jobs_per_min),
            fmtNum(t.jobs_this_period) + (t.failed_this_period ? " (" + t.failed_this_period + " failed)" : ""),
            fmtNum(t.compute_seconds_this_period, 1),
            revenue.has(t.id) ? String(revenue.get(t.id)) : "—",
            h("div", { class: "actions" },
              h("button", { type: "button", class: suspended ? "small" : "danger small",
                "aria-label": (suspended ? "Reactivate " : "Suspend ") + t.name, onclick: () => setState(t, action) },
              suspended ? "Reactivate" : "Suspend"), queueBtn)],
        };
      }), { id: "tenants-table" }));
      status.textContent = o.tenants.length + " tenants" + (o.truncated ? " (first 1000)" : "") + " · period from " +
        fmtTime(o.period.start) + " · updated " + new Date().toLocaleTimeString();
      return false;
    }, 10000);
    $("#refresh").addEventListener("click", () => handle.now());
  };

  pages.workers = function () {
    poll(async () => {
      const [w, o] = await Promise.all([api("GET", "/admin/v1/workers"), api("GET", "/admin/v1/overview")]);
      const wEl = $("#workers");
      if (!w.ok) show(wEl, failure(w, "Worker status"));
      else if (w.data.error) show(wEl, errorBox(w.data.error));
      else if (!w.data.workers.length) show(wEl, emptyState("No worker has sent a heartbeat. Start one with `tenantq worker`."));
      else show(wEl, h("p", { class: "muted" }, fmtNum(w.data.running) + " attempts running now on all workers."),
        table([{ label: "Worker" }, { label: "State" }, { label: "Last heartbeat", num: true }],
          w.data.workers.map((x) => ({ attrs: { "data-worker": x.name }, cells: [h("code", {}, x.name),
            badge(x.online ? "online" : "silent"), fmtMs(x.heartbeat_age_s * 1000) + " ago"] }))));
      if (o.ok) {
        show($("#exec-queues"), table([{ label: "Queue" }, { label: "Messages waiting", num: true }],
          o.data.exec_queues.map((q) => [h("code", {}, q.name), fmtNum(q.depth)])));
        const pts = o.data.throughput;
        const labels = pts.map((p) => new Date(p.minute).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
        barChart($("#chart-throughput"), { title: "Jobs finished per minute", labelName: "Minute", labels,
          series: [{ name: "succeeded", cls: "series-a", values: pts.map((p) => p.succeeded) },
            { name: "failed", cls: "series-fail", values: pts.map((p) => p.failed) }] });
        barChart($("#chart-failures"), { title: "Failure rate per minute (%)", labelName: "Minute", labels,
          series: [{ name: "% failed", cls: "series-fail", values: pts.map((p) => {
            const n = p.succeeded + p.failed; return n ? Math.round((p.failed / n) * 1000) / 10 : 0; }) }] });
      } else {
        show($("#exec-queues"), failure(o, "Queue depths"));
      }
      const aq = $("#admin-queues");
      const q = await api("GET", "/admin/v1/queues");
      if (!q.ok) show(aq, failure(q, "Tenant queues"));
      else {
        const items = q.data.items;
        show(aq, items.length ? genericTable(items, ["tenant_id", "tenant_name", "depth", "running", "paused", "concurrency_limit"])
          : emptyState("No tenant has queued jobs."));
      }
      return false;
    }, 5000);
  };

  const PLAN_FIELDS = [
    ["display_name", "Display name"], ["submit_rate", "Submit rate (jobs/s)"], ["submit_burst", "Submit burst"],
    ["exec_rate", "Execution rate (jobs/s)"], ["concurrency", "Concurrency"], ["max_queued", "Max queued"],
    ["weight", "Fair-share weight"], ["priority_min", "Lowest priority"], ["priority_max", "Highest priority"],
    ["max_time_limit_s", "Max time limit (s)"], ["max_retries", "Max retries"], ["included_jobs", "Included jobs"],
    ["included_compute_seconds", "Included compute s"], ["base_fee", "Base fee"], ["currency", "Currency"],
    ["hard_limits", "Hard limits"],
  ];

  pages.plans = async function () {
    const el = $("#plans"), msg = $("#plans-message");
    const r = await api("GET", "/admin/v1/plans");
    if (!r.ok) { show(el, failure(r, "Plans")); return; }
    const plans = r.data.items;
    if (!plans.length) { show(el, emptyState("No plans defined.")); return; }
    show(el, ...plans.map((p) => {
      const inputs = {};
      const fields = PLAN_FIELDS.filter(([k]) => k in p).map(([k, label]) => {
        const id = "plan-" + p.name + "-" + k;
        const v = k === "base_fee" ? fmtAmount(p[k], p.currency) : p[k];
        const input = typeof v === "boolean" ? h("input", { id, type: "checkbox", checked: v })
          : h("input", { id, value: v === null ? "" : String(v), inputmode: typeof v === "number" ? "decimal" : null });
        inputs[k] = input;
        return typeof v === "boolean" ? h("div", { class: "field" }, h("label", { class: "check", for: id }, input, " ", label))
          : h("div", { class: "field" }, h("label", { for: id }, label), input);
      });
      const form = h("form", { class: "card", "data-plan": p.name, "aria-label": "Plan " + p.name },
        h("h2", {}, p.display_name || p.name, " ", h("small", { class: "muted" }, h("code", {}, p.name))),
        h("div", { class: "plan-grid" }, fields),
        h("button", { type: "submit", class: "primary" }, "Save " + p.name));
      form.addEventListener("submit", async (e) => {
        e.preventDefault();
        const changes = {};
        for (const [k, input] of Object.entries(inputs)) {
          const old = p[k];
          let val;
          if (typeof old === "boolean") val = input.checked;
          else if (typeof old === "number") {
            if (input.value.trim() === "" || isNaN(Number(input.value))) { say(msg, k + " must be a number.", "error"); input.focus(); return; }
            val = Number(input.value);
          } else val = input.value;
          if (k === "base_fee" ? Number(val) !== Number(old) || val.trim() === "" : val !== old) changes[k] = val;
        }
        if (!Object.keys(changes).length) { say(msg, "Nothing changed in " + p.name + ".", "info"); return; }
        const u = await api("PATCH", "/admin/v1/plans/" + encodeURIComponent(p.name), changes);
        if (!u.ok) { say(msg, "Could not save " + p.name + ": " + u.message, "error"); return; }
        Object.assign(p, u.data);
        say(msg, "Plan " + p.name + " saved (" + Object.keys(changes).join(", ") + ").", "ok");
      });
      return form;
    }));
  };

  pages.admin_billing = function () {
    const periodEl = $("#a-period");
    periodEl.value = new URLSearchParams(location.search).get("period") || currentMonth();
    async function load() {
      const period = periodEl.value || currentMonth();
      const ps = $("#period-status");
      const [y, m] = period.split("-").map(Number);
      const start = new Date(Date.UTC(y, m - 1, 1)), end = new Date(Date.UTC(y, m, 1));
      const state = Date.now() >= end.getTime() ? "ended: closes into invoices when the billing close runs" : "open (current period)";
      show(ps, h("p", {}, h("strong", {}, period), " · " + fmtTime(start.toISOString()) + " – " + fmtTime(end.toISOString()) + " · " + state));
      const el = $("#admin-report");
      const r = await api("GET", "/admin/v1/reports/usage?" + new URLSearchParams({ period, format: "json" }));
      if (!r.ok) { show(el, failure(r, "The operator usage report")); return; }
      const rows = r.data.rows;
      show(el, rows.length ? genericTable(rows, ["tenant_id", "tenant", "jobs", "attempts", "compute_seconds", "charges"])
        : emptyState("No usage in " + period + "."));
    }
    periodEl.addEventListener("change", () => {
      history.replaceState(null, "", location.pathname + "?period=" + encodeURIComponent(periodEl.value));
      load();
    });
    $("#admin-billing-filters").addEventListener("submit", (e) => { e.preventDefault(); load(); });
    load();
  };

  const key = AREA === "admin" && PAGE === "billing" ? "admin_billing" : PAGE;
  if (body.dataset.jobId) pages.job();
  else if (pages[key]) pages[key]();
})();
