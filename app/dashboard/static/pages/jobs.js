// Jobs: every GET /jobs filter plus "scheduled" and "has error", sort, pages, relative times, and
// bulk retry / cancel / delete of the selected rows or of everything matching the filter. The
// whole view lives in the URL (?status=dead&sort=-priority&offset=50 ...): a view can be
// bookmarked and shared, and the back button walks through the views (history.pushState).
"use strict";

import { api, badge, el, errorBox, fill, number, streamEvents, when } from "../common.js";

const STATUSES = ["waiting", "queued", "running", "failed", "succeeded", "dead", "cancelled"];
const FILTERS = ["status", "kind", "queue", "q", "created_after", "created_before", "scheduled", "has_error"];
const SORTS = { created: "Created", priority: "Priority", status: "Status" };
const LIMITS = [20, 50, 100];
const IDS_MAX = 1000;  // POST /jobs/bulk takes at most this many ids
const COUNT_MAX = 1000;  // the list counts matches up to this many ("1,000+"); "all matching" counts them all

function readState() {
  const params = new URLSearchParams(location.search);
  const state = { sort: params.get("sort") || "-created", offset: Number(params.get("offset")) || 0,
                  limit: LIMITS.includes(Number(params.get("limit"))) ? Number(params.get("limit")) : 50 };
  for (const name of FILTERS) if (params.get(name)) state[name] = params.get(name);
  return state;
}

function toQuery(state) {
  const params = new URLSearchParams();
  for (const name of FILTERS) if (state[name]) params.set(name, state[name]);
  if (state.sort && state.sort !== "-created") params.set("sort", state.sort);
  if (state.offset) params.set("offset", String(state.offset));
  if (state.limit && state.limit !== 50) params.set("limit", String(state.limit));
  return params.toString();
}

// the same filter as JSON for POST /jobs/bulk/filter
function toFilter(state) {
  const filter = {};
  const list = (value) => value.split(",").map((v) => v.trim()).filter(Boolean);
  if (state.status) filter.status = list(state.status);
  if (state.kind) filter.kind = list(state.kind);
  if (state.queue) filter.queue = list(state.queue);
  if (state.q) filter.q = state.q;
  if (state.created_after) filter.created_after = state.created_after;
  if (state.created_before) filter.created_before = state.created_before;
  if (state.scheduled) filter.scheduled = state.scheduled === "true";
  if (state.has_error) filter.has_error = state.has_error === "true";
  return filter;
}

function localInput(iso) {  // an ISO instant as the value of a datetime-local input
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function field(label, control) {
  return el("label", { class: "field" }, el("span", {}, label), control);
}

function triState(name, value) {
  return el("select", { name, id: `f-${name}` },
    el("option", { value: "", selected: !value }, "any"),
    el("option", { value: "true", selected: value === "true" }, "yes"),
    el("option", { value: "false", selected: value === "false" }, "no"));
}

export async function mount(root, { me, data }) {
  const kinds = [...new Set([...(data.kinds || []), "ingest_file", "api_ingest", "bulk_action"])].sort();
  const form = el("form", { class: "filters card", id: "filters", role: "search", "aria-label": "job filters" });
  const summary = el("p", { class: "muted", id: "summary", "aria-live": "polite" });
  const bar = el("div", { class: "bulkbar", id: "bulkbar" });
  const table = el("div", { class: "scroll", id: "jobs-table" });
  const pager = el("nav", { class: "pager", "aria-label": "pages" });
  const outcome = el("div", { id: "bulk-outcome", role: "status", "aria-live": "polite" });
  const dialog = el("dialog", { id: "confirm" });
  root.append(el("h1", {}, "Jobs"), form, outcome, bar, summary, table, pager, dialog);

  let state = readState();
  let page = { total: 0, jobs: [] };
  let selected = new Set();
  let allMatching = false;

  function go(next, { replace = false } = {}) {
    state = next;
    const query = toQuery(state);
    const url = `${location.pathname}${query ? `?${query}` : ""}`;
    if (replace) history.replaceState(null, "", url); else history.pushState(null, "", url);
    load();
  }

  function drawForm() {
    const statusSelect = el("select", { name: "status", id: "f-status" },
      el("option", { value: "" }, "any"),
      STATUSES.map((s) => el("option", { value: s, selected: state.status === s }, s)),
      state.status && !STATUSES.includes(state.status) ? el("option", { value: state.status, selected: true }, state.status) : null);
    const kindSelect = el("select", { name: "kind", id: "f-kind" }, el("option", { value: "" }, "any"),
      kinds.map((k) => el("option", { value: k, selected: state.kind === k }, k)));
    fill(form,
      field("Search", el("input", { type: "search", name: "q", id: "f-q", value: state.q || "", placeholder: "payload or error text", maxlength: 200 })),
      field("Status", statusSelect), field("Kind", kindSelect),
      field("Queue", el("input", { name: "queue", id: "f-queue", value: state.queue || "", placeholder: "any", size: 10 })),
      field("Created from", el("input", { type: "datetime-local", name: "created_after", id: "f-created_after", value: localInput(state.created_after) })),
      field("Created to", el("input", { type: "datetime-local", name: "created_before", id: "f-created_before", value: localInput(state.created_before) })),
      field("Scheduled", triState("scheduled", state.scheduled)), field("Has error", triState("has_error", state.has_error)),
      el("div", { class: "field buttons" }, el("button", { class: "primary", type: "submit" }, "Apply"),
        el("button", { type: "button", id: "f-clear", onclick: () => go({ sort: state.sort, limit: state.limit, offset: 0 }) }, "Clear")));
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const values = new FormData(form);
    const next = { sort: state.sort, limit: state.limit, offset: 0 };
    for (const name of FILTERS) {
      let value = String(values.get(name) || "").trim();
      if (value && (name === "created_after" || name === "created_before")) value = new Date(value).toISOString();
      if (value) next[name] = value;
    }
    go(next);
  });

  function sortHeader(key) {
    const active = state.sort.replace("-", "") === key;
    const descending = state.sort.startsWith("-");
    const next = active && descending ? key : `-${key}`;
    return el("th", { scope: "col", "aria-sort": active ? (descending ? "descending" : "ascending") : "none" },
      el("button", { type: "button", class: "link sort", "data-sort": key, onclick: () => go({ ...state, sort: next, offset: 0 }) },
        SORTS[key], active ? (descending ? " ▼" : " ▲") : ""));
  }

  function drawBar() {
    const count = allMatching ? page.total : selected.size;
    const pageIds = page.jobs.map((j) => j.id);
    const wholePage = pageIds.length > 0 && pageIds.every((id) => selected.has(id));
    fill(bar,
      el("span", { id: "selection", "data-count": count }, count ? `${number(count)} selected${allMatching ? " (all matching this filter)" : ""}` : "Select jobs to act on them"),
      wholePage && page.total > pageIds.length && !allMatching
        ? el("button", { type: "button", class: "link", id: "select-all-matching", onclick: selectAllMatching },
            `Select all ${number(page.total)}${page.total_capped ? "+" : ""} matching this filter`) : null,
      allMatching ? el("button", { type: "button", class: "link", onclick: () => { allMatching = false; selected.clear(); draw(); } }, "Clear selection") : null,
      ["retry", "cancel", "delete"].map((action) => el("button", { type: "button", "data-bulk": action, disabled: !count,
        class: action === "delete" ? "danger" : "", onclick: () => confirmBulk(action, count) }, action[0].toUpperCase() + action.slice(1))));
  }

  async function selectAllMatching() {
    if (page.total_capped) {  // the confirmation names the real count: count them all once
      const query = toQuery({ ...state, offset: 0, limit: 1 });
      try {
        const exact = await api(`/jobs?${query}`);
        page = { ...page, total: exact.total, total_capped: false };
      } catch (error) {
        fill(outcome, errorBox(error));
        return;
      }
    }
    allMatching = true;
    draw();
  }

  function confirmBulk(action, count) {
    const noun = `${number(count)} ${count === 1 ? "job" : "jobs"}`;
    const ok = el("button", { class: action === "delete" ? "danger" : "primary", type: "button", id: "confirm-ok" }, `${action[0].toUpperCase() + action.slice(1)} ${noun}`);
    fill(dialog, el("form", { method: "dialog" },
      el("h2", {}, `${action[0].toUpperCase() + action.slice(1)} ${noun}?`),
      el("p", { id: "confirm-text" }, allMatching
        ? `This ${action}s every job matching the current filter (${noun} now; jobs created after you confirm are not touched).`
        : `This ${action}s the ${noun} you selected.`,
        action === "delete" ? " Deleted jobs are gone for good." : ""),
      el("div", { class: "actions" }, ok, el("button", { type: "submit", value: "cancel", id: "confirm-cancel" }, "Keep them"))));
    ok.addEventListener("click", () => { dialog.close(); runBulk(action); });
    dialog.showModal();
    ok.focus();
  }

  async function runBulk(action) {
    fill(outcome, el("p", { class: "muted" }, `${action}…`));
    try {
      if (allMatching) {
        const answer = await api("/jobs/bulk/filter", { method: "POST", body: { action, filter: toFilter(state) } });
        if (answer.background) return followBulkJob(answer);
        fill(outcome, el("p", { class: "ok", id: "bulk-result", "data-succeeded": answer.succeeded, "data-failed": answer.failed },
          `${action}: ${answer.succeeded} done, ${answer.failed} refused`, refusals(answer.errors)));
      } else {
        const ids = [...selected];
        let succeeded = 0, failed = 0;
        const errors = {};
        for (let i = 0; i < ids.length; i += IDS_MAX) {
          const answer = await api("/jobs/bulk", { method: "POST", body: { action, ids: ids.slice(i, i + IDS_MAX) } });
          succeeded += answer.succeeded; failed += answer.failed;
          for (const r of answer.results) if (!r.ok) errors[r.error.code] = (errors[r.error.code] || 0) + 1;
        }
        fill(outcome, el("p", { class: "ok", id: "bulk-result", "data-succeeded": succeeded, "data-failed": failed },
          `${action}: ${succeeded} done, ${failed} refused`, refusals(errors)));
      }
    } catch (error) {
      fill(outcome, errorBox(error));
    }
    selected.clear(); allMatching = false;
    load();
  }

  function refusals(errors) {
    const parts = Object.entries(errors || {}).map(([code, n]) => `${n} ${code.replaceAll("_", " ")}`);
    return parts.length ? ` (${parts.join(", ")})` : "";
  }

  function followBulkJob(answer) {
    const barFill = el("div", { id: "bulk-progress-fill" });
    const text = el("span", { class: "progress-text", id: "bulk-progress-text" }, "waiting for a worker…");
    fill(outcome, el("div", { class: "card", id: "bulk-job", "data-job": answer.job_id },
      el("p", {}, `${answer.action} of ${number(answer.matched)} jobs runs in the background as `,
        el("a", { href: `/dashboard/jobs/${answer.job_id}` }, `job ${answer.job_id}`), "."),
      el("div", { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, id: "bulk-progress" }, barFill), text));
    selected.clear(); allMatching = false;
    const bar = document.getElementById("bulk-progress");
    streamEvents(`/jobs/${answer.job_id}/events`, (event) => {
      if (event.type === "progress") {
        barFill.style.width = `${event.data.percent}%`;
        bar.setAttribute("aria-valuenow", event.data.percent);
        bar.dataset.percent = String(Math.round(event.data.percent));
        text.textContent = event.data.message || `${event.data.percent}%`;
      } else if (["succeeded", "dead", "cancelled"].includes(event.type)) {
        text.textContent = `${text.textContent}: ${event.type}`;
        bar.dataset.status = event.type;
        load();
      }
    }, { endOn: (event) => ["succeeded", "dead", "cancelled", "deleted"].includes(event.type) });
  }

  function draw() {
    const head = el("tr", {},
      el("th", { scope: "col" }, el("input", { type: "checkbox", id: "select-page", "aria-label": "select every job on this page",
        checked: page.jobs.length > 0 && page.jobs.every((j) => selected.has(j.id)),
        onchange: (event) => { allMatching = false; for (const j of page.jobs) event.target.checked ? selected.add(j.id) : selected.delete(j.id); draw(); } })),
      el("th", { scope: "col" }, "Id"), el("th", { scope: "col" }, "Kind"), el("th", { scope: "col" }, "Queue"),
      sortHeader("status"), sortHeader("priority"), el("th", { scope: "col" }, "Attempts"), sortHeader("created"),
      el("th", { scope: "col" }, "Scheduled for"), el("th", { scope: "col" }, "Last error"));
    const rows = page.jobs.map((job) => el("tr", { "data-id": job.id, class: selected.has(job.id) || allMatching ? "selected" : "" },
      el("td", {}, el("input", { type: "checkbox", "aria-label": `select job ${job.id}`, checked: selected.has(job.id) || allMatching,
        disabled: allMatching, "data-select": job.id,
        onchange: (event) => { event.target.checked ? selected.add(job.id) : selected.delete(job.id); draw(); } })),
      el("td", {}, el("a", { href: `/dashboard/jobs/${job.id}` }, String(job.id))),
      el("td", {}, job.kind), el("td", {}, job.queue), el("td", {}, badge(job.status)), el("td", { class: "n" }, job.priority),
      el("td", { class: "n" }, `${job.attempts}/${job.max_attempts}`), el("td", {}, when(job.created_at)),
      el("td", {}, when(job.scheduled_for)),
      el("td", { class: "clip", title: job.last_error || "" }, job.last_error ? job.last_error.split("\n").filter(Boolean).pop() : "")));
    fill(table, el("table", { id: "jobs" }, el("thead", {}, head),
      el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: 10, class: "muted" }, "No jobs match.")))));
    const first = page.total ? state.offset + 1 : 0;
    const last = Math.min(state.offset + page.jobs.length, page.total);
    summary.textContent = `${number(first)}–${number(last)} of ${number(page.total)}${page.total_capped ? "+" : ""} jobs`;
    summary.dataset.total = page.total;
    fill(pager,
      el("button", { type: "button", id: "prev", disabled: state.offset <= 0,
        onclick: () => go({ ...state, offset: Math.max(0, state.offset - state.limit) }) }, "← Newer"),
      el("label", {}, "per page ", el("select", { id: "limit", onchange: (event) => go({ ...state, limit: Number(event.target.value), offset: 0 }) },
        LIMITS.map((n) => el("option", { value: n, selected: n === state.limit }, n)))),
      el("button", { type: "button", id: "next", disabled: last >= page.total && !page.total_capped,
        onclick: () => go({ ...state, offset: state.offset + state.limit }) }, "Older →"));
    drawBar();
  }

  let latest = 0;  // a slower answer to an older view must not replace the newer one
  async function load() {
    drawForm();
    const query = toQuery(state);
    const mine = ++latest;
    try {
      const counted = new URLSearchParams(query);
      counted.set("total_max", String(Math.max(COUNT_MAX, state.offset + state.limit)));
      const answer = await api(`/jobs?${counted}`);
      if (mine !== latest) return;
      page = answer;
      root.dataset.loaded = query;
      draw();
    } catch (error) {
      if (mine !== latest) return;
      page = { total: 0, jobs: [] };
      draw();
      table.prepend(errorBox(error));
    }
  }

  addEventListener("popstate", () => { state = readState(); selected.clear(); allMatching = false; load(); });
  await load();
}
