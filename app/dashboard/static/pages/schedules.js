// Schedules (periodic jobs): each expression with its meaning in words, the next fire times,
// the last runs and the paused state; pause/resume, add and remove (admins: the REST routes
// under /schedules are admins' only). A bad cron expression's error is shown at its field.
"use strict";

import { api, el, when } from "../common.js";
import { detailsOf, ensureStyle, Form, kindSchemas, readForm, schemas, sendJson, toJson } from "../form.js";

const NOT_SCHEDULABLE = new Set(["api_ingest"]);  // a sync part needs its sync: start syncs on the Syncs page

export async function mount(root, { me, data }) {
  ensureStyle();
  root.append(el("h1", { class: "page-title" }, "Schedules"));
  if (!me.is_admin) {
    root.append(el("p", { class: "notice", id: "schedules-admin-only" },
      "Schedules are run by the service for everyone, so only admins may list or change them."));
    return;
  }
  const doc = await schemas();
  const listCard = el("section", { class: "card page-card" }, el("h2", {}, "Periodic jobs"));
  const tableHolder = el("div", { class: "table-wrap", id: "schedules-table" });
  const listError = el("p", { class: "error", role: "alert", id: "schedules-error" });
  listCard.append(listError, tableHolder);
  const addCard = el("section", { class: "card page-card" }, el("h2", {}, "Add a schedule"));
  root.append(listCard, addCard);

  const refresh = async () => {
    try {
      const { schedules } = await api("/schedules");
      tableHolder.replaceChildren(table(schedules, refresh, listError));
      listError.textContent = "";
    } catch (error) {
      listError.textContent = `Could not load the schedules: ${error.message}`;
    }
  };
  addCard.append(addForm(doc, data.kinds.filter((k) => !NOT_SCHEDULABLE.has(k)), refresh));
  await refresh();
  // the next fire times move on: redraw every 30 s while the tab is visible
  setInterval(() => { if (document.visibilityState === "visible") refresh(); }, 30000);
}

function badge(status) {
  return el("span", { class: `badge ${status}` }, status);
}

function table(schedules, refresh, listError) {
  if (!schedules.length) return el("p", { class: "muted", id: "no-schedules" }, "No schedules yet.");
  const rows = schedules.map((s) => {
    const paused = s.state === "paused";
    const toggle = el("button", { type: "button", class: "toggle", "data-action": paused ? "resume" : "pause",
      "aria-label": `${paused ? "Resume" : "Pause"} ${s.name}` }, paused ? "Resume" : "Pause");
    const remove = el("button", { type: "button", class: "remove", "aria-label": `Remove ${s.name}` }, "Remove");
    toggle.addEventListener("click", async () => {
      toggle.disabled = true;
      try {
        await api(`/schedules/${encodeURIComponent(s.name)}/${paused ? "resume" : "pause"}`, { method: "POST" });
        await refresh();
      } catch (error) {
        listError.textContent = `${s.name}: ${error.message}`;
        toggle.disabled = false;
      }
    });
    remove.addEventListener("click", async () => {
      if (!confirm(`Remove the schedule “${s.name}”? Jobs it already enqueued stay.`)) return;
      try {
        await api(`/schedules/${encodeURIComponent(s.name)}`, { method: "DELETE" });
        await refresh();
      } catch (error) {
        listError.textContent = `${s.name}: ${error.message}`;
      }
    });
    const runs = s.recent_runs.length
      ? el("ul", { class: "times" }, s.recent_runs.map((run) => el("li", {}, when(run.fire_at), " ",
        el("a", { href: `/dashboard/jobs/${run.job_id}` }, `#${run.job_id}`), " ", run.status ? badge(run.status) : el("span", { class: "muted" }, "pruned"))))
      : el("span", { class: "muted" }, "none yet");
    const next = s.next_fire_times.length
      ? el("ul", { class: "times" }, s.next_fire_times.map((t) => el("li", {}, when(t))))
      : el("span", { class: "muted" }, "never");
    return el("tr", { "data-name": s.name, "data-state": s.state },
      el("td", { class: "wrap" }, el("b", { class: "schedule-name" }, s.name),
        s.declared_in_code ? el("div", { class: "muted" }, "declared in code") : null),
      el("td", { class: "wrap" }, el("code", { class: "expr" }, s.expression), el("div", { class: "meaning" }, `${s.meaning} (${s.timezone})`)),
      el("td", { class: "wrap" }, s.kind, el("div", { class: "muted" }, `queue ${s.queue}, priority ${s.priority}`),
        el("code", { class: "payload" }, JSON.stringify(s.payload).slice(0, 160))),
      el("td", {}, el("span", { class: `badge state-${s.state}` }, s.state)),
      el("td", {}, paused ? el("div", { class: "muted" }, "on resume:") : null, next),
      el("td", {}, runs),
      el("td", {}, el("div", { class: "inline" }, toggle, remove)));
  });
  return el("table", {}, el("thead", {}, el("tr", {}, ["Name", "Expression", "Job", "State", "Next fires", "Last runs", ""].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows));
}

function addForm(doc, kinds, refresh) {
  const byKind = kindSchemas(doc);
  const schema = doc.components.schemas.ScheduleCreate;
  const holder = el("div");
  let kind = kinds.includes("notification") ? "notification" : kinds[0];
  const picker = el("select", { id: "schedule-kind", name: "kind" }, kinds.map((k) => el("option", { value: k, selected: k === kind }, k)));
  const done = el("p", { class: "ok", role: "status", "aria-live": "polite", id: "schedule-added" });

  const draw = () => {
    const form = new Form(doc, "schedule");
    const main = form.object(schema, "", { skip: ["kind", "payload"], advanced: ["queue", "priority", "max_attempts", "catch_up", "catch_up_window"] });
    const kindError = el("p", { class: "field-error", id: "schedule-kind-error" });
    const kindField = el("div", { class: "field" }, el("label", { for: "schedule-kind" }, "kind", el("span", { class: "req" }, " *")), picker, kindError);
    form.register("kind", kindField, () => kind, kindError, picker);
    const payload = form.object(byKind[kind].properties.payload, "payload");
    const submit = el("button", { class: "primary", type: "submit", id: "schedule-submit" }, "Add schedule");
    const node = el("form", { id: "schedule-form", novalidate: true }, form.general, main.node, kindField,
      el("fieldset", { class: "fields" }, el("legend", {}, `Payload of each ${kind} job`), payload.node),
      el("div", { class: "actions" }, submit), done);
    node.addEventListener("submit", async (event) => {
      event.preventDefault();
      done.textContent = "";
      let body;
      try {
        body = readForm(form, () => ({ ...main.read(), kind, payload: payload.read() || {} }));
      } catch {
        return;
      }
      submit.disabled = true;
      try {
        const created = await sendJson("/schedules", "POST", toJson(body));
        done.textContent = `Added “${created.name}”: ${created.meaning} (${created.timezone}).`;
        draw();
        await refresh();
      } catch (error) {
        form.showErrors(detailsOf(error));
      } finally {
        submit.disabled = false;
      }
    });
    holder.replaceChildren(node);
    livePreview(form, node);
  };
  picker.addEventListener("change", () => { kind = picker.value; draw(); });
  draw();
  return holder;
}

// As the expression or zone is typed: its meaning and next fire times (GET /cron), or the parse
// error at the field, before anything is submitted.
function livePreview(form, node) {
  const expression = node.querySelector("#schedule-expression");
  const zone = node.querySelector("#schedule-timezone");
  if (!expression || !zone) return;
  const preview = el("div", { class: "preview", id: "schedule-preview", "aria-live": "polite" });
  expression.closest(".field").append(preview);
  let timer = null;
  let asked = 0;
  const show = async () => {
    const errors = { expression: form.fields.get("expression"), timezone: form.fields.get("timezone") };
    if (!expression.value.trim()) { preview.replaceChildren(); return; }
    const mine = ++asked;
    const query = new URLSearchParams({ expression: expression.value, timezone: zone.value || "UTC", count: "3" });
    try {
      const answer = await api(`/cron?${query}`);
      if (mine !== asked) return;
      for (const field of Object.values(errors)) if (field) { field.error.textContent = ""; field.node.classList.remove("invalid"); }
      preview.replaceChildren(el("b", {}, answer.meaning), ` (${answer.timezone}); next: `,
        ...answer.next_fire_times.flatMap((t, i) => (i ? [", ", when(t)] : [when(t)])));
    } catch (error) {
      if (mine !== asked) return;
      preview.replaceChildren();
      const details = (error.body && error.body.error && error.body.error.details) || [];
      for (const detail of details) {
        const field = errors[detail.field];
        if (field) { field.error.textContent = detail.message; field.node.classList.add("invalid"); }
      }
    }
  };
  const later = () => { clearTimeout(timer); timer = setTimeout(show, 300); };
  expression.addEventListener("input", later);
  zone.addEventListener("input", later);
}
