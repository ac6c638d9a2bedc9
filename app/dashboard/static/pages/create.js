// New job: one form per kind, generated from that kind's schema in /openapi.json (the msgspec
// type POST /jobs validates with), plus the engine's options (when, priority, attempts, unique
// key, dependencies, concurrency key). The server's 422 details appear next to their fields.
"use strict";

import { el } from "../common.js";
import { detailsOf, ensureStyle, FieldProblem, Form, kindSchemas, readForm, schemas, sendJson, toJson } from "../form.js";

// api_ingest jobs are parts of a sync (the Syncs page starts them); webhooks are admins' only
// (POST /jobs answers 403 to others); ingest_file is never in data.kinds (only an upload enqueues it).
const NOT_HERE = new Set(["api_ingest"]);
const ADMIN_ONLY = new Set(["webhook"]);
const OPTION_NAMES = ["priority", "max_attempts", "unique_key", "depends_on", "run_if_parent_fails", "concurrency_key"];

export function enqueueableKinds(all, me) {
  return all.filter((kind) => !NOT_HERE.has(kind) && (me.is_admin || !ADMIN_ONLY.has(kind)));
}

export async function mount(root, { me, data }) {
  ensureStyle();
  const doc = await schemas();
  const byKind = kindSchemas(doc);
  const kinds = enqueueableKinds(data.kinds, me).filter((kind) => byKind[kind]);
  const params = new URLSearchParams(location.search);
  let kind = kinds.includes(params.get("kind")) ? params.get("kind") : kinds[0];

  const picker = el("select", { id: "kind", name: "kind" }, kinds.map((k) => el("option", { value: k, selected: k === kind }, k)));
  const holder = el("div", { id: "form-holder" });
  const result = el("div", { id: "create-result", role: "status", "aria-live": "polite" });
  root.append(el("section", { class: "card form-page" },
    el("h1", {}, "New job"),
    el("p", { class: "muted" }, "The fields come from the kind's payload type, the same one the API validates with. ",
      "Required fields are marked ", el("span", { class: "req" }, "*"), "."),
    el("div", { class: "field" }, el("label", { for: "kind" }, "Kind"), picker),
    holder, result));

  const draw = () => {
    holder.replaceChildren(buildForm(doc, byKind[kind], kind, result));
    const url = new URL(location.href);
    url.searchParams.set("kind", kind);
    history.replaceState(null, "", url);
  };
  picker.addEventListener("change", () => { kind = picker.value; result.replaceChildren(); draw(); });
  draw();
}

function buildForm(doc, schema, kind, result) {
  const form = new Form(doc, "job");
  const payload = form.object(schema.properties.payload, "payload");
  const options = form.object(schema, "", { only: OPTION_NAMES, advanced: ["unique_key", "depends_on", "run_if_parent_fails", "concurrency_key"] });
  const when = whenControl(form);
  const submit = el("button", { class: "primary", type: "submit", id: "create-submit" }, `Enqueue ${kind}`);
  const node = el("form", { id: "create-form", novalidate: true, "data-kind": kind },
    form.general,
    el("fieldset", { class: "fields" }, el("legend", {}, "Payload"), payload.node),
    el("fieldset", { class: "fields" }, el("legend", {}, "Options"), when.node, options.node),
    el("div", { class: "actions" }, submit));
  node.addEventListener("submit", async (event) => {
    event.preventDefault();
    let body;
    try {
      body = readForm(form, () => ({ kind, payload: payload.read() || {}, ...options.read(), ...when.read() }));
    } catch {
      return;
    }
    submit.disabled = true;
    result.replaceChildren();
    try {
      const job = await sendJson("/jobs", "POST", toJson(body));
      result.replaceChildren(el("p", { class: "ok", id: "created" }, `Job ${job.id} enqueued (${job.status}). `,
        el("a", { href: `/dashboard/jobs/${job.id}`, id: "created-link" }, `Open job ${job.id}`)));
    } catch (error) {
      form.showErrors(detailsOf(error), (field) => (field === "scheduled_for" ? "when" : field));
    } finally {
      submit.disabled = false;
    }
  });
  return node;
}

// Run now, at a time, or after a delay: all three become `scheduled_for` (or nothing).
function whenControl(form) {
  const mode = el("select", { id: "job-when", name: "when", "aria-describedby": "job-when-error" },
    el("option", { value: "now" }, "now"), el("option", { value: "at" }, "at a time"), el("option", { value: "delay" }, "after a delay"));
  const at = el("input", { id: "job-when-at", type: "datetime-local", step: 1, class: "hidden", "aria-label": "run at (your local time)" });
  const delay = el("input", { id: "job-when-delay", type: "number", min: 0, step: "any", class: "hidden", placeholder: "seconds",
    "aria-label": "delay in seconds" });
  const error = el("p", { class: "field-error", id: "job-when-error", "data-field": "scheduled_for" });
  mode.addEventListener("change", () => {
    at.classList.toggle("hidden", mode.value !== "at");
    delay.classList.toggle("hidden", mode.value !== "delay");
  });
  const node = el("div", { class: "field" }, el("label", { for: "job-when" }, "run"), el("div", { class: "inline" }, mode, at, delay),
    el("small", { class: "help" }, "a time is your browser's local time; it is sent in UTC"), error);
  form.register("when", node, () => undefined, error, mode);
  const read = () => {
    if (mode.value === "at") {
      const time = new Date(at.value);
      if (!at.value || Number.isNaN(time.getTime())) throw new FieldProblem("when", "pick a date and time");
      return { scheduled_for: time.toISOString() };
    }
    if (mode.value === "delay") {
      const seconds = Number(delay.value);
      if (delay.value === "" || !Number.isFinite(seconds) || seconds < 0) throw new FieldProblem("when", "a delay is 0 or more seconds");
      return { scheduled_for: new Date(Date.now() + seconds * 1000).toISOString() };
    }
    return {};
  };
  return { node, read };
}
