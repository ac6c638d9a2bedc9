// One job (/dashboard/jobs/{id}): its timeline (from the events and job_errors tables), attempts
// (tracebacks for admins only: others get the message from the server, never file paths),
// payload and result in collapsible viewers that keep big integers exact (the raw response is
// parsed here, not by JSON.parse), live progress and log lines from the job's SSE stream, the
// actions its state allows, and an ingest job's file or an API sync's counts.
"use strict";

import {
  api, apiText, badge, confirmDialog, el, errorBox, fill, jsonView, member, number, parseExact, streamEvents, toText, when,
} from "../common.js";

const TERMINAL = new Set(["succeeded", "dead", "cancelled", "deleted"]);
const LOG_SHOWN = 500;

function attemptOf(event) {
  return event.data && event.data.attempt ? ` (attempt ${event.data.attempt})` : "";
}

// One line per moment of the job's life; failures carry their error from job_errors.
function timeline(job, events, attempts) {
  const items = [{ at: job.created_at, type: "created", text: `created on queue ${job.queue}` }];
  if (new Date(job.scheduled_for) - new Date(job.created_at) > 1000 && !events.some((e) => e.type === "started")) {
    items.push({ at: job.scheduled_for, type: "scheduled", text: "scheduled to run" });
  }
  const errors = [...attempts];
  for (const event of events) {
    if (event.type === "progress" || event.type === "log") continue;
    const item = { at: event.created_at, type: event.type, text: event.type.replaceAll("_", " ") + attemptOf(event) };
    if (event.type === "started" && event.data.worker_id) item.text += ` on ${event.data.worker_id}`;
    if (event.type === "failed" || event.type === "dead" || event.type === "rescued") {
      const index = errors.findIndex((a) => !event.data.attempt || a.attempt === event.data.attempt);
      const error = index >= 0 ? errors.splice(index, 1)[0].error : event.data.error;
      if (error) item.error = error;
      if (event.data.retry_at) item.text += `, retry ${new Date(event.data.retry_at).toLocaleString()}`;
    }
    items.push(item);
  }
  return el("ol", { class: "timeline", id: "timeline" }, items.map((item) => el("li", { "data-type": item.type },
    el("span", { class: `dot ${item.type}` }), el("span", { class: "when" }, when(item.at)), " ", el("b", {}, item.text),
    item.error ? el("div", { class: "error-line" }, lastLine(item.error)) : null)));
}

function lastLine(text) {
  return String(text).split("\n").map((l) => l.trim()).filter(Boolean).pop() || "";
}

function attemptsTable(attempts, admin) {
  if (!attempts.length) return el("p", { class: "muted" }, "No failed attempts.");
  return el("div", { class: "scroll" }, el("table", { id: "attempts" },
    el("thead", {}, el("tr", {}, ["Attempt", "Failed", "Worker", "Error"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, attempts.map((a) => el("tr", {},
      el("td", { class: "n" }, a.attempt), el("td", {}, when(a.failed_at)), el("td", { class: "mono" }, a.worker_id || "–"),
      el("td", { class: "wrap" }, el("span", { class: "error-line" }, lastLine(a.error)),
        admin && a.error.includes("\n")
          ? el("details", { class: "trace" }, el("summary", {}, "stack trace"), el("pre", {}, a.error)) : null))))));
}

function progressBar() {
  const barFill = el("div", { id: "progress-fill" });
  const bar = el("div", { class: "progress", id: "progress-bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
                          "aria-label": "progress", "data-percent": "0" }, barFill);
  const text = el("span", { class: "progress-text", id: "progress-text" }, "no progress reported");
  return { node: el("div", {}, bar, text), set(percent, message) {
    barFill.style.width = `${percent}%`;
    bar.dataset.percent = String(Math.round(percent));
    bar.setAttribute("aria-valuenow", String(percent));
    text.textContent = `${Math.round(percent * 10) / 10} %${message ? ` · ${message}` : ""}`;
  } };
}

function related(info, job) {
  const parts = [];
  if (info.file) {
    const f = info.file;
    parts.push(el("section", { class: "card section", id: "ingest" }, el("h2", {}, "Ingested file"),
      el("dl", {}, el("dt", {}, "File"), el("dd", {}, `${f.name} (#${f.id}, ${number(f.size)} bytes)`),
        el("dt", {}, "Read"), el("dd", {}, `${number(f.bytes_read)} of ${number(f.size)} bytes`),
        el("dt", {}, "Lines"), el("dd", { id: "ingest-counts" }, `${number(f.lines_total)} total: ${number(f.lines_valid)} valid, `,
          `${number(f.lines_invalid)} bad, ${number(f.lines_blank)} blank`)),
      info.bad_lines.length ? el("div", { class: "scroll" }, el("table", { id: "bad-lines" },
        el("caption", {}, info.bad_lines.length >= info.bad_lines_shown ? `The first ${info.bad_lines_shown} bad lines` : "Bad lines"),
        el("thead", {}, el("tr", {}, ["Line", "Why", "Text"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, info.bad_lines.map((b) => el("tr", {}, el("td", { class: "n" }, b.line_no), el("td", { class: "wrap" }, b.reason),
          el("td", { class: "mono wrap" }, b.excerpt))))))
        : el("p", { class: "muted" }, "No bad lines.")));
  }
  if (info.sync) {
    const s = info.sync;
    parts.push(el("section", { class: "card section", id: "sync" }, el("h2", {}, `API sync ${s.sync_id}`),
      el("dl", {}, el("dt", {}, "Source"), el("dd", {}, s.source), el("dt", {}, "Target"), el("dd", {}, `app.${s.target}`),
        el("dt", {}, "Part"), el("dd", {}, `${s.part + 1} of ${s.parts}`),
        el("dt", {}, "Pages"), el("dd", { id: "sync-pages" }, number(s.pages)),
        el("dt", {}, "Events"), el("dd", {}, `${number(s.events)} received, ${number(s.inserted)} new, ${number(s.invalid)} invalid`
          + (s.total != null ? `, ${number(s.total)} announced` : "")),
        el("dt", {}, "Retries"), el("dd", {}, `${number(s.retries)} (${number(s.rate_limited)} rate-limited)`),
        el("dt", {}, "Last page"), el("dd", {}, when(s.last_page_at))),
      el("p", {}, el("a", { href: "/dashboard/syncs" }, "All syncs"))));
  }
  return parts;
}

export async function mount(root, { me, params }) {
  const jobId = params.job_id;
  let text;
  try {
    text = await apiText(`/jobs/${jobId}`);
  } catch (error) {
    root.append(el("h1", {}, `Job ${jobId}`), errorBox(error), el("p", {}, el("a", { href: "/dashboard/jobs" }, "All jobs")));
    return;
  }
  const detail = JSON.parse(text);
  const exact = member(parseExact(text), "job");
  let job = detail.job;
  const events = detail.events;
  const progress = progressBar();
  const log = el("ol", { class: "log", id: "log", "aria-live": "polite" });
  const head = el("div", { class: "title-row" });
  const facts = el("dl", { id: "facts" });
  const actions = el("div", { class: "actions", id: "actions" });
  const message = el("div", { id: "action-result", role: "status", "aria-live": "polite" });
  const lineEl = el("div", {});
  root.append(el("p", {}, el("a", { href: "/dashboard/jobs" }, "← Jobs")), head, message,
    el("div", { class: "grid2" },
      el("section", { class: "card section" }, el("h2", {}, "Details"), facts, actions, progress.node),
      el("section", { class: "card section" }, el("h2", {}, "Timeline"), lineEl)),
    el("section", { class: "card section" }, el("h2", {}, "Attempts"), attemptsTable(detail.attempts, me.is_admin)),
    el("div", { class: "grid2" },
      el("section", { class: "card section", id: "payload" }, el("h2", {}, "Payload"), jsonView(member(exact, "payload"), { label: "payload" })),
      el("section", { class: "card section", id: "result" }, el("h2", {}, "Result"), jsonView(member(exact, "result"), { label: "result" }))),
    el("section", { class: "card section" }, el("h2", {}, "Log"), log));

  function drawHead() {
    fill(head, el("h1", {}, `Job ${job.id} · ${job.kind}`), el("span", { id: "detail-status", "data-status": job.status }, badge(job.status)));
    fill(facts,
      ...[["Queue", job.queue], ["Priority", job.priority], ["Attempts", `${job.attempts} of ${job.max_attempts}`],
          ["Created", when(job.created_at)], ["Scheduled for", when(job.scheduled_for)], ["Started", when(job.started_at)],
          ["Finished", when(job.finished_at)], ["Worker", job.worker_id || "–"], ["Owner", job.owner_id || "–"],
          ["Cancel requested", job.cancel_requested ? "yes" : "no"],
          ["Last error", job.last_error ? lastLine(job.last_error) : "–"]]
        .flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
    const scheduled = job.status === "queued" && new Date(job.scheduled_for) > Date.now();
    const buttons = [
      ["cancel", "Cancel", ["waiting", "queued", "failed", "running"].includes(job.status) && !job.cancel_requested],
      ["retry", "Retry", ["dead", "failed", "cancelled"].includes(job.status)],
      ["run-now", "Run now", scheduled],
      ["copy", "Enqueue a copy", true],
      ["delete", "Delete", job.status !== "running"],
    ];
    fill(actions, ...buttons.filter(([, , show]) => show).map(([action, label]) =>
      el("button", { type: "button", "data-action": action, class: action === "delete" ? "danger" : "", onclick: () => act(action) }, label)));
  }

  async function act(action) {
    const noun = `job ${job.id}`;
    try {
      if (action === "cancel") {
        if (!(await confirmDialog(`Cancel ${noun}?`, job.status === "running" ? "Its handler is asked to stop." : "It will not run.", "Cancel the job"))) return;
        job = await api(`/jobs/${job.id}`, { method: "DELETE" });
      } else if (action === "retry") {
        job = await api(`/jobs/${job.id}/retry`, { method: "POST" });
      } else if (action === "run-now") {
        job = await api(`/jobs/${job.id}/run-now`, { method: "POST" });
      } else if (action === "delete") {
        if (!(await confirmDialog(`Delete ${noun}?`, "It is removed with its errors; this cannot be undone.", "Delete the job", { danger: true }))) return;
        await api("/jobs/bulk", { method: "POST", body: { action: "delete", ids: [job.id] } }).then((answer) => {
          if (!answer.results[0].ok) throw new Error(answer.results[0].error.message);
        });
        fill(message, el("p", { class: "ok" }, `Job ${job.id} deleted. `, el("a", { href: "/dashboard/jobs" }, "Back to the jobs")));
        fill(actions);
        return;
      } else if (action === "copy") {
        // the payload as the server sent it, digit for digit
        const body = `{"kind":${JSON.stringify(job.kind)},"priority":${job.priority},"max_attempts":${job.max_attempts},`
          + `"payload":${toText(member(exact, "payload"))}}`;
        const response = await fetch("/jobs", { method: "POST", body,
          headers: { Authorization: `Bearer ${sessionStorage.getItem("pgqueue.token")}`, "Content-Type": "application/json" } });
        const answer = await response.json();
        if (!response.ok) throw Object.assign(new Error(answer.error.message), { body: answer });
        fill(message, el("p", { class: "ok", id: "copy-result" }, "Enqueued a copy: ", el("a", { href: `/dashboard/jobs/${answer.id}` }, `job ${answer.id}`)));
        return;
      }
      fill(message, el("p", { class: "ok" }, `${action.replace("-", " ")}: job is ${job.status}`));
      drawHead();
      follow();
    } catch (error) {
      fill(message, errorBox(error));
    }
  }

  let logCount = 0;
  function onEvent(event) {
    if (event.type === "progress") progress.set(event.data.percent, event.data.message);
    if (event.type === "log") {
      logCount += 1;
      if (logCount <= LOG_SHOWN) {
        log.append(el("li", { "data-level": event.data.level, "data-type": "log" }, el("span", { class: "when" }, when(event.created_at)), " ",
          el("span", { class: `level ${event.data.level}` }, event.data.level), " ", event.data.line));
      }
    }
  }

  async function refresh() {
    const latest = await api(`/jobs/${job.id}`);
    job = latest.job;
    drawHead();
    fill(lineEl, timeline(job, latest.events, latest.attempts));
  }

  let stop = null;
  function follow() {
    if (stop) stop();
    stop = null;
    const after = events.length ? events[events.length - 1].id : 0;
    if (TERMINAL.has(job.status) && !job.cancel_requested && job.status !== "running") return;
    stop = streamEvents(`/jobs/${job.id}/events`, (event) => {
      events.push(event);
      onEvent(event);
      if (event.type !== "log" && event.type !== "progress") refresh().catch(() => {});
    }, { after, endOn: (event) => TERMINAL.has(event.type),
         onState: (on) => document.getElementById("global-live").classList.toggle("on", on) });
  }

  drawHead();
  fill(lineEl, timeline(job, events, detail.attempts));
  for (const event of events) onEvent(event);
  if (job.status === "succeeded") progress.set(100, "");
  try {
    const info = await api(`/dashboard/api/jobs/${job.id}/related`);
    root.append(...related(info, job));
  } catch (error) {
    root.append(errorBox(error));
  }
  follow();
  addEventListener("pagehide", () => stop && stop());
}
