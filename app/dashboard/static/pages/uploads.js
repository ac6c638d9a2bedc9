// Uploads: drag a .jsonl in (or choose it with the file input), watch the upload's progress
// (XHR upload events), then the ingest job's progress live over its SSE stream; past uploads below.
"use strict";

import { api, el, number, token, when } from "../common.js";
import { ensureStyle } from "../form.js";
import { followJob } from "../follow.js";

export async function mount(root) {
  ensureStyle();
  const input = el("input", { type: "file", id: "upload-input", accept: ".jsonl,application/x-ndjson,application/jsonl", class: "visually-plain" });
  const zone = el("div", { class: "dropzone", id: "dropzone" },
    el("p", {}, el("b", {}, "Drop a .jsonl log file here")),
    el("p", { class: "muted" }, "or ", el("label", { for: "upload-input", class: "link-label" }, "choose a file"), ": "), input,
    el("p", { class: "muted" }, "One JSON object per line with timestamp, level and message; bad lines are reported, good ones kept."));
  const status = el("div", { id: "upload-status", "aria-live": "polite" });
  const listHolder = el("div", { class: "table-wrap", id: "uploads-table" });
  root.append(
    el("section", { class: "card page-card" }, el("h1", {}, "Upload a log file"), zone, status),
    el("section", { class: "card page-card" }, el("h2", {}, "Past uploads"), listHolder));

  const refresh = async () => {
    try {
      const { files } = await api("/api/v1/files");
      listHolder.replaceChildren(fileTable(files));
    } catch (error) {
      listHolder.replaceChildren(el("p", { class: "error" }, `Could not load the uploads: ${error.message}`));
    }
  };
  const start = (file) => { if (file) uploadFile(file, status, refresh); };
  input.addEventListener("change", () => { start(input.files[0]); input.value = ""; });
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    start(event.dataTransfer.files[0]);
  });
  await refresh();
}

function bar(id, label) {
  const meter = el("progress", { id, max: 100, value: 0, "aria-label": label });
  const text = el("span", { class: "progress-text", id: `${id}-text` }, "");
  return { node: el("div", { class: "progress-block" }, el("label", { for: id }, label), meter, text), meter, text };
}

function size(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

function uploadFile(file, status, refresh) {
  const upload = bar("upload-progress", `Uploading ${file.name}`);
  const ingest = bar("ingest-progress", "Ingesting");
  const counts = el("div", { class: "counts", id: "ingest-counts" });
  const message = el("p", { role: "alert", id: "upload-message" });
  status.replaceChildren(upload.node, message);
  if (!file.name.toLowerCase().endsWith(".jsonl")) {
    message.className = "error";
    message.textContent = `Only .jsonl files are accepted, not “${file.name}”.`;
    return;
  }
  const form = new FormData();
  form.append("file", file, file.name);
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/api/v1/files/upload");
  xhr.setRequestHeader("Authorization", `Bearer ${token()}`);  // a header, never a cookie
  xhr.upload.addEventListener("progress", (event) => {
    if (!event.lengthComputable) return;
    const percent = Math.round((100 * event.loaded) / event.total);
    upload.meter.value = percent;
    upload.text.textContent = `${percent} % of ${size(event.total)}`;
  });
  xhr.addEventListener("error", () => {
    message.className = "error";
    message.textContent = "The upload failed: the connection was lost.";
  });
  xhr.addEventListener("load", async () => {
    let body = null;
    try { body = JSON.parse(xhr.responseText); } catch { /* not JSON: reported below */ }
    if (xhr.status !== 202 || !body) {
      message.className = "error";
      const error = body && body.error;
      message.textContent = `The upload was refused (HTTP ${xhr.status}): ${error ? error.message : xhr.responseText.slice(0, 200)}`;
      if (error && error.details) message.textContent += ` — ${error.details.map((d) => d.message).join("; ")}`;
      if (xhr.status === 401) dispatchEvent(new Event("pgq:unauthorized"));
      return;
    }
    upload.meter.value = 100;
    upload.text.textContent = `uploaded, ${size(file.size)}`;
    message.className = "";
    message.replaceChildren(`File ${body.file_id} stored; ingest job `, el("a", { href: `/dashboard/jobs/${body.job_id}` }, `#${body.job_id}`), " queued.");
    status.append(ingest.node, counts);
    await follow(body.job_id, ingest, counts, message, refresh);
    refresh();
  });
  xhr.send(form);
}

async function follow(jobId, ingest, counts, message, refresh) {
  const showCounts = async () => {
    const progress = await api(`/api/v1/jobs/${jobId}`);
    if (progress.percent !== null) {
      ingest.meter.value = progress.percent;
      ingest.text.textContent = `${progress.percent} %`;
    }
    ingest.meter.dataset.status = progress.status;
    if (progress.lines) {
      counts.replaceChildren(
        el("div", {}, el("b", {}, number(progress.lines.total)), "lines"),
        el("div", {}, el("b", { id: "lines-valid" }, number(progress.lines.valid)), "valid"),
        el("div", {}, el("b", { id: "lines-invalid" }, number(progress.lines.invalid)), "invalid"),
        el("div", {}, el("b", {}, progress.status), "status"));
    }
    return progress;
  };
  let pending = null;
  const onEvent = (event) => {
    if (event.type === "progress" && event.data) {
      ingest.meter.value = event.data.percent;
      ingest.text.textContent = `${event.data.percent} %${event.data.message ? ` — ${event.data.message}` : ""}`;
    }
    if (!pending) pending = setTimeout(() => { pending = null; showCounts().catch(() => {}); }, 250);
  };
  await new Promise((resolve) => {
    followJob(jobId, onEvent, resolve).catch((error) => { message.textContent = `Live progress unavailable: ${error.message}`; resolve(); });
  });
  clearTimeout(pending);
  const final = await showCounts();
  ingest.meter.dataset.final = final.status;
  if (final.status === "completed") {
    ingest.meter.value = 100;
    ingest.text.textContent = "100 % — done";
  } else if (final.status === "failed") {
    message.className = "error";
    message.textContent = `The ingest failed: ${final.error || final.job_status}`;
  }
  refresh();
}

function fileTable(files) {
  if (!files.length) return el("p", { class: "muted", id: "no-uploads" }, "No uploads yet.");
  const rows = files.map((f) => el("tr", { "data-id": f.id },
    el("td", { class: "wrap file-name" }, f.name),
    el("td", { class: "n" }, size(f.size)),
    el("td", { class: "n" }, number(f.lines_valid)),
    el("td", { class: "n" }, number(f.lines_invalid)),
    el("td", {}, f.job_status ? el("span", { class: `badge ${f.job_status}` }, f.job_status) : el("span", { class: "muted" }, "pruned")),
    el("td", {}, f.job_id ? el("a", { href: `/dashboard/jobs/${f.job_id}` }, `#${f.job_id}`) : "–"),
    el("td", {}, when(f.created_at))));
  return el("table", {}, el("thead", {}, el("tr", {}, ["File", "Size", "Valid", "Invalid", "Status", "Job", "Uploaded"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows));
}
