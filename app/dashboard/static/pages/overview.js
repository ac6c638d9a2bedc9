// Overview: status cards, throughput and failures per minute (last hour) and per hour (7 days),
// queue depth (an estimate), the queues (pause / resume) and the workers. Data: GET
// /dashboard/api/overview (admins); refreshed when GET /events reports something, at most once
// every REFRESH_MS, and every POLL_MS regardless (the safety net when the stream is down).
"use strict";

import { api, duration, el, errorBox, fill, number, streamEvents, throttle, when } from "../common.js";
import { lineChart, stackedBars } from "../charts.js";

const STATUSES = ["waiting", "queued", "running", "failed", "succeeded", "dead", "cancelled"];
const REFRESH_MS = 5000;
const POLL_MS = 30000;
const COLORS = { succeeded: "#12b76a", failed: "#f79009", dead: "#d92d20", cancelled: "#98a2b3" };
const LINE_COLORS = ["#2f5bd3", "#12b76a", "#f79009", "#d92d20", "#7a5af8", "#0ba5ec", "#ee46bc", "#667085"];

function hhmm(iso) {
  const d = new Date(iso);
  return `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
}

function section(title, id, ...children) {
  return el("section", { class: "card section", id, "aria-labelledby": `${id}-title` },
    el("h2", { id: `${id}-title` }, title), ...children);
}

function cards(counts) {
  return el("div", { class: "stats", id: "status-cards" }, STATUSES.filter((s) => counts[s] && (counts[s].jobs || s !== "waiting")).map((status) => {
    const { jobs, estimated } = counts[status];
    return el("a", { class: "stat", href: `/dashboard/jobs?status=${status}`, "data-status": status, "data-count": jobs,
                     "data-estimated": estimated ? "true" : "false",
                     title: estimated ? "an estimate from the planner's statistics (the table is too large to count on each refresh)" : "exact" },
      el("span", { class: "muted" }, status), el("b", {}, `${estimated ? "≈ " : ""}${number(jobs)}`));
  }));
}

function minuteChart(minutes) {
  const points = minutes.map((m, i) => ({
    label: i % 10 === 0 ? hhmm(m.minute) : "",
    title: `${hhmm(m.minute)}: ${m.succeeded} succeeded, ${m.failed} failed attempts, ${m.dead} dead, ${m.cancelled} cancelled`,
    values: m,
  }));
  const series = ["succeeded", "failed", "dead", "cancelled"].map((key) => ({ key, color: COLORS[key], name: key }));
  return el("figure", {}, stackedBars(points, series, { ariaLabel: "jobs ended and failed attempts per minute, last hour" }), legend(series));
}

function hourChart(hours, missing) {
  const points = hours.map((h, i) => {
    const d = new Date(h.hour);
    return { label: i % 24 === 0 ? d.toLocaleDateString(undefined, { weekday: "short" }) : "",
             title: `${d.toLocaleString()}: ${h.succeeded} succeeded, ${h.dead} dead, ${h.cancelled} cancelled`, values: h };
  });
  const series = ["succeeded", "dead", "cancelled"].map((key) => ({ key, color: COLORS[key], name: key }));
  return el("figure", {}, stackedBars(points, series, { ariaLabel: "jobs ended per hour, last 7 days" }), legend(series),
    missing ? el("figcaption", { class: "muted" }, `${missing} older hours are still being counted (a few per refresh).`) : null);
}

function depthChart(depth) {
  if (!depth || !depth.points.length) return el("p", { class: "muted" }, "No depth data.");
  const queues = [...new Set(depth.points.flatMap((p) => Object.keys(p.waiting)))].sort();
  const lines = queues.map((queue, i) => ({ name: queue, color: LINE_COLORS[i % LINE_COLORS.length],
                                            values: depth.points.map((p) => p.waiting[queue] || 0) }));
  const labels = depth.points.map((p, i) => (i % 3 === 0 ? hhmm(p.at) : ""));
  return el("figure", {}, lineChart(labels, lines, { width: 900, ariaLabel: "jobs waiting per queue, last hour (estimate)" }),
    legend(lines.map((l) => ({ name: l.name, color: l.color }))),
    el("figcaption", { class: "muted", id: "depth-note" },
      "Estimate: rebuilt from the jobs' timestamps every 5 minutes (the waits before a retried job's earlier attempts are not kept)",
      depth.capped ? "; capped: more jobs than the estimate reads, so it is low." : "."));
}

function legend(series) {
  return el("div", { class: "legend" }, series.map((s) => el("span", {}, el("i", { class: "swatch", style: `background:${s.color}` }), s.name)));
}

function queueTable(queues, me, onChange) {
  const head = ["Queue", "Queued", "Scheduled", "Running", "Failed, waiting", "Oldest wait", "Jobs/min", "State", "Limits"];
  const rows = queues.map((q) => {
    const limits = [q.concurrency_limit && `${q.concurrency_limit} at once`, q.rate && `${q.rate}`,
                    q.key_concurrency_limit && `${q.key_concurrency_limit} per key`, q.key_rate && `${q.key_rate} per key`].filter(Boolean);
    const action = q.paused ? "resume" : "pause";
    const button = me.is_admin ? el("button", { type: "button", "data-action": action, "data-queue": q.queue,
      "aria-label": `${action} queue ${q.queue}`,
      onclick: async (event) => {
        event.target.disabled = true;
        try { await api(`/queues/${encodeURIComponent(q.queue)}/${action}`, { method: "POST" }); } catch (error) { alert(error.message); }
        onChange();
      } }, q.paused ? "Resume" : "Pause") : null;
    return el("tr", { "data-queue": q.queue },
      el("td", {}, el("a", { href: `/dashboard/jobs?queue=${encodeURIComponent(q.queue)}` }, q.queue)),
      el("td", { class: "n", "data-field": "queued" }, number(q.queued)), el("td", { class: "n" }, number(q.scheduled)),
      el("td", { class: "n", "data-field": "running" }, number(q.running)),
      el("td", { class: "n", "data-field": "failed_waiting" }, number(q.failed_waiting)),
      el("td", {}, q.oldest_wait_seconds == null ? "–" : duration(q.oldest_wait_seconds)),
      el("td", { class: "n" }, q.jobs_per_minute.toFixed(1)),
      el("td", {}, el("span", { class: `badge ${q.paused ? "dead" : "succeeded"}`, "data-state": q.paused ? "paused" : "active" },
                      q.paused ? "paused" : "active"), " ", button),
      el("td", {}, limits.length ? limits.join(", ") : el("span", { class: "muted" }, "none")));
  });
  const capped = queues.some((q) => q.capped);
  return el("div", { class: "scroll" }, el("table", { id: "queues" },
    el("thead", {}, el("tr", {}, head.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: head.length, class: "muted" }, "No queues yet.")))),
    capped ? el("p", { class: "muted" }, "Some counts are capped (more live jobs than the table reads).") : null);
}

function workerTable(workers) {
  const head = ["Worker", "Host", "PID", "Queues", "Started", "Last heartbeat", "Running now", "State"];
  return el("div", { class: "scroll" }, el("table", { id: "workers" },
    el("thead", {}, el("tr", {}, head.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, workers.length ? workers.map((w) => el("tr", { "data-worker": w.id },
      el("td", { class: "mono" }, w.id), el("td", {}, w.hostname), el("td", { class: "n" }, w.pid),
      el("td", {}, w.queues.join(", ")), el("td", {}, when(w.started_at)), el("td", {}, when(w.heartbeat_at)),
      el("td", { class: "n" }, `${w.running} / ${w.concurrency}`),
      el("td", {}, el("span", { class: `badge ${w.alive ? "succeeded" : "dead"}`, "data-alive": w.alive ? "true" : "false" },
                      w.alive ? "alive" : "gone"))))
      : el("tr", {}, el("td", { colspan: head.length, class: "muted" }, "No workers registered.")))));
}

async function mountUserStats(root) {
  // the overview shows everyone's queues and workers: admins only; others see their own numbers
  const stats = await api("/stats");
  const counts = Object.fromEntries(Object.entries(stats.by_status).map(([s, jobs]) => [s, { jobs, estimated: false }]));
  root.append(el("h1", {}, "Your jobs"), cards(counts),
    section("Finished per minute (last hour)", "per-minute",
      minuteChart(stats.finished_per_minute.map((m) => ({ ...m, failed: 0 })))),
    el("p", { class: "muted" }, "Queues and workers are shown to admins."));
}

export async function mount(root, { me }) {
  if (!me.is_admin) return mountUserStats(root);
  const body = el("div", { id: "overview" });
  const stamp = el("p", { class: "muted", id: "generated", "aria-live": "polite" });
  root.append(el("div", { class: "title-row" }, el("h1", {}, "Overview"), stamp), body);
  let busy = false, again = false;

  async function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    try {
      const data = await api("/dashboard/api/overview");
      const missing = Object.entries(data.unavailable);
      fill(body,
        missing.length ? el("p", { class: "error" }, missing.map(([k, why]) => `${k}: ${why}`).join("; ")) : null,
        cards(data.counts),
        el("div", { class: "grid2" },
          section("Ended and failed attempts per minute (last hour)", "per-minute", minuteChart(data.per_minute)),
          section("Ended per hour (7 days)", "per-hour", hourChart(data.per_hour, data.per_hour_missing))),
        section("Queue depth (jobs waiting, last hour, estimate)", "depth", depthChart(data.depth)),
        section("Queues", "queues-section", queueTable(data.queues, me, refresh)),
        section("Workers", "workers-section", workerTable(data.workers)));
      fill(stamp, "updated ", when(data.generated_at));
      root.dataset.generatedAt = data.generated_at;
    } catch (error) {
      body.prepend(errorBox(error));
    } finally {
      busy = false;
      if (again) { again = false; setTimeout(refresh, REFRESH_MS); }
    }
  }

  await refresh();
  const soon = throttle(refresh, REFRESH_MS);
  const live = document.getElementById("global-live");
  const stop = streamEvents("/events", soon, { onState: (on) => { live.classList.toggle("on", on); live.textContent = on ? "live" : "offline"; } });
  const timer = setInterval(refresh, POLL_MS);
  addEventListener("pagehide", () => { stop(); clearInterval(timer); });
}
