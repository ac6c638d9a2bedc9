// Syncs (API ingest): admins start one (POST /api/v1/syncs, the form generated from its
// SourceConfig schema); anyone follows theirs: pages, events, retries, live progress of each part.
"use strict";

import { api, el, number, when } from "../common.js";
import { detailsOf, ensureStyle, Form, readForm, schemas, sendJson, toJson } from "../form.js";
import { followJob } from "../follow.js";

const MAIN_FIELDS = ["url", "source", "target", "pagination", "api_key", "page_size", "items_path", "cursor_path", "id_field", "ts_field"];

export async function mount(root, { me }) {
  ensureStyle();
  const doc = await schemas();
  const followCard = el("section", { class: "card page-card hidden", id: "sync-follow" });
  const listHolder = el("div", { class: "table-wrap", id: "syncs-table" });
  const startCard = el("section", { class: "card page-card" }, el("h1", {}, "Start an API sync"));
  if (me.is_admin) startCard.append(startForm(doc, (created) => show(created.sync_id)));
  else startCard.append(el("p", { class: "notice" }, "Only admins may start a sync (it calls out to another service and writes tables)."));
  root.append(startCard, followCard, el("section", { class: "card page-card" }, el("h2", {}, "Recent syncs"), listHolder));

  let stops = [];
  const refresh = async () => {
    try {
      const { syncs } = await api("/api/v1/syncs");
      listHolder.replaceChildren(syncTable(syncs, show));
    } catch (error) {
      listHolder.replaceChildren(el("p", { class: "error" }, `Could not load the syncs: ${error.message}`));
    }
  };

  async function show(syncId) {
    for (const stop of stops) stop();
    stops = [];
    followCard.classList.remove("hidden");
    const parts = new Map();
    const summary = el("div", { id: "sync-summary" });
    const partList = el("div", { id: "sync-parts" });
    followCard.replaceChildren(el("h2", {}, `Sync ${syncId}`), summary, partList);
    const url = new URL(location.href);
    url.searchParams.set("sync", syncId);
    history.replaceState(null, "", url);
    let pending = null;
    const draw = async () => {
      const sync = await api(`/api/v1/syncs/${syncId}`);
      summary.replaceChildren(syncSummary(sync));
      summary.dataset.status = sync.status;
      return sync;
    };
    const later = () => { if (!pending) pending = setTimeout(() => { pending = null; draw().then(refresh).catch(() => {}); }, 300); };
    const sync = await draw();
    sync.job_ids.forEach((jobId, index) => {
      const meter = el("progress", { max: 100, value: 0, id: `sync-part-${index}`, "aria-label": `part ${index} progress` });
      const text = el("span", { class: "progress-text" }, "");
      parts.set(jobId, { meter, text });
      partList.append(el("div", { class: "progress-block" },
        el("label", { for: `sync-part-${index}` }, `Part ${index}: job `, el("a", { href: `/dashboard/jobs/${jobId}` }, `#${jobId}`)), meter, text));
      followJob(jobId, (event) => {
        if (event.type === "progress" && event.data) {
          meter.value = event.data.percent;
          text.textContent = `${event.data.percent} %${event.data.message ? ` — ${event.data.message}` : ""}`;
        } else if (["retried", "failed", "succeeded", "dead", "cancelled", "started"].includes(event.type)) {
          text.textContent = event.type;
          if (event.type === "succeeded") meter.value = 100;
        }
        later();
      }, later).then((stop) => stops.push(stop)).catch(() => {});
    });
  }

  await refresh();
  const wanted = new URLSearchParams(location.search).get("sync");
  if (wanted && /^\d+$/.test(wanted)) show(wanted).catch((error) => {
    followCard.classList.remove("hidden");
    followCard.replaceChildren(el("p", { class: "error" }, `Sync ${wanted}: ${error.message}`));
  });
}

function syncSummary(s) {
  const cell = (label, value, id) => el("div", {}, el("b", { id }, value), label);
  return el("div", {},
    el("p", {}, el("span", { class: `badge ${s.status === "failed" ? "dead" : s.status}`, id: "sync-status" }, s.status), " ",
      el("b", {}, s.source), " → table ", el("code", {}, s.target), ", started ", when(s.created_at),
      s.last_page_at ? [", last page ", when(s.last_page_at)] : null),
    el("div", { class: "counts" },
      cell("pages", number(s.pages), "sync-pages"),
      cell(s.total !== null ? `events of ${number(s.total)}` : "events", number(s.events), "sync-events"),
      cell("inserted", number(s.inserted), "sync-inserted"),
      cell("invalid", number(s.invalid), "sync-invalid"),
      cell("retries", number(s.retries), "sync-retries"),
      cell("rate limited", number(s.rate_limited), "sync-rate-limited"),
      cell("parts", `${s.part_statuses.filter((p) => p === "succeeded").length}/${s.parts}`, "sync-parts-done")),
    s.errors.length ? el("div", {}, el("b", {}, "Errors"), s.errors.map((e) => el("pre", {}, e))) : null);
}

function syncTable(syncs, show) {
  if (!syncs.length) return el("p", { class: "muted", id: "no-syncs" }, "No syncs yet.");
  const rows = syncs.map((s) => {
    const open = el("button", { type: "button", "aria-label": `Follow sync ${s.id}` }, "Follow");
    open.addEventListener("click", () => show(s.id));
    return el("tr", { "data-id": s.id },
      el("td", {}, `#${s.id}`), el("td", { class: "wrap" }, s.source), el("td", {}, s.target),
      el("td", {}, el("span", { class: `badge ${s.status === "failed" ? "dead" : s.status}` }, s.status)),
      el("td", { class: "n" }, number(s.pages)), el("td", { class: "n" }, number(s.inserted)), el("td", { class: "n" }, number(s.retries)),
      el("td", {}, when(s.created_at)), el("td", {}, open));
  });
  return el("table", {}, el("thead", {}, el("tr", {}, ["Sync", "Source", "Table", "Status", "Pages", "Inserted", "Retries", "Started", ""].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows));
}

function startForm(doc, onStarted) {
  const schema = doc.components.schemas.SourceConfig;
  const form = new Form(doc, "sync");
  const advanced = Object.keys(schema.properties).filter((name) => !MAIN_FIELDS.includes(name));
  const fields = form.object(schema, "", { advanced });
  const submit = el("button", { class: "primary", type: "submit", id: "sync-submit" }, "Start sync");
  const note = el("p", { class: "muted" }, "The API's first page is fetched before anything is written: a config that cannot work is refused with the field named.");
  const node = el("form", { id: "sync-form", novalidate: true }, note, form.general, fields.node, el("div", { class: "actions" }, submit));
  node.addEventListener("submit", async (event) => {
    event.preventDefault();
    let body;
    try {
      body = readForm(form, () => fields.read());
    } catch {
      return;
    }
    submit.disabled = true;
    try {
      onStarted(await sendJson("/api/v1/syncs", "POST", toJson(body)));
    } catch (error) {
      form.showErrors(detailsOf(error));
    } finally {
      submit.disabled = false;
    }
  });
  return node;
}
