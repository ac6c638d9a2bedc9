// Shared by the dashboard's pages: the API token (this tab's sessionStorage, sent as a header,
// never a cookie), JSON requests, safe DOM building (text only, never innerHTML), and times.
"use strict";

export const TOKEN_KEY = "pgqueue.token";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

// Every request carries the token in the Authorization header; there is no cookie to forge.
export async function api(path, { method = "GET", body } = {}) {
  const headers = { Authorization: `Bearer ${token()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

// el("td", {class: "n", title: "..."}, "text", child): children are text or nodes, never HTML.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const UNITS = [["d", 86400], ["h", 3600], ["min", 60], ["s", 1]];

export function duration(seconds) {
  const s = Math.abs(seconds);
  if (s < 1) return "now";
  for (const [unit, size] of UNITS) if (s >= size) return `${Math.floor(s / size)} ${unit}`;
  return `${Math.round(s)} s`;
}

// "3 s ago" / "in 5 min", with the exact time (local and UTC) on hover.
export function when(iso) {
  if (!iso) return el("span", { class: "muted" }, "–");
  const at = new Date(iso);
  const seconds = (Date.now() - at.getTime()) / 1000;
  const text = Math.abs(seconds) < 1 ? "now" : seconds > 0 ? `${duration(seconds)} ago` : `in ${duration(seconds)}`;
  return el("time", { datetime: iso, title: `${at.toLocaleString()} (${iso})` }, text);
}

export function number(n) {
  return Number(n).toLocaleString("en-US");
}


// The response body as text (for the JSON viewer: JSON.parse would round big integers).
export async function apiText(path) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${token()}` } });
  const text = await response.text();
  if (!response.ok) throw new ApiError(response.status, text ? JSON.parse(text) : null);
  return text;
}

// -- JSON that keeps every digit ------------------------------------------------------------------
// parseExact(text) -> a tree: {t: "object", entries: [[key, node]]}, {t: "array", items},
// {t: "number", raw: "12345678901234567890"}, {t: "string", value}, {t: "bool"|"null", value}.
// Numbers stay as the server's digits; nothing is ever evaluated or inserted as HTML.
export function parseExact(text) {
  let i = 0;
  const fail = (what) => { throw new SyntaxError(`${what} at character ${i}`); };
  const space = () => { while (i < text.length && " \t\n\r".includes(text[i])) i++; };
  const string = () => {
    const start = i;
    i++;
    while (i < text.length && text[i] !== '"') i += text[i] === "\\" ? 2 : 1;
    if (text[i] !== '"') fail("unterminated string");
    i++;
    return JSON.parse(text.slice(start, i));  // a string alone: JSON.parse is exact for strings
  };
  const value = () => {
    space();
    const c = text[i];
    if (c === "{") {
      i++; const entries = []; space();
      if (text[i] === "}") { i++; return { t: "object", entries }; }
      for (;;) {
        space(); if (text[i] !== '"') fail("expected a key");
        const key = string(); space();
        if (text[i++] !== ":") fail("expected ':'");
        entries.push([key, value()]); space();
        if (text[i] === ",") { i++; continue; }
        if (text[i++] !== "}") fail("expected '}'");
        return { t: "object", entries };
      }
    }
    if (c === "[") {
      i++; const items = []; space();
      if (text[i] === "]") { i++; return { t: "array", items }; }
      for (;;) {
        items.push(value()); space();
        if (text[i] === ",") { i++; continue; }
        if (text[i++] !== "]") fail("expected ']'");
        return { t: "array", items };
      }
    }
    if (c === '"') return { t: "string", value: string() };
    const number = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(i, i + 400));
    if (number) { i += number[0].length; return { t: "number", raw: number[0] }; }
    for (const [word, v] of [["true", true], ["false", false], ["null", null]]) {
      if (text.startsWith(word, i)) { i += word.length; return { t: v === null ? "null" : "bool", value: v }; }
    }
    return fail("unexpected character");
  };
  const tree = value();
  space();
  if (i !== text.length) fail("trailing characters");
  return tree;
}

// The member `key` of an object node (or undefined).
export function member(node, key) {
  if (!node || node.t !== "object") return undefined;
  const found = node.entries.find(([k]) => k === key);
  return found ? found[1] : undefined;
}

// A collapsible viewer: objects and arrays are <details> (open to `openDepth` levels), leaves
// are text nodes, so a value holding "<script>" is shown as those characters.
export function jsonView(node, { openDepth = 2, label } = {}) {
  const leaf = (n) => {
    if (n.t === "string") return el("span", { class: "j-str" }, JSON.stringify(n.value));
    if (n.t === "number") return el("span", { class: "j-num" }, n.raw);
    return el("span", { class: "j-lit" }, String(n.value));
  };
  const render = (n, depth, name) => {
    const key = name === undefined ? null : el("span", { class: "j-key" }, typeof name === "number" ? `${name}: ` : `${JSON.stringify(name)}: `);
    if (n.t !== "object" && n.t !== "array") return el("div", { class: "j-row" }, key, leaf(n));
    const children = n.t === "object" ? n.entries : n.items.map((item, index) => [index, item]);
    const summary = n.t === "object" ? `{${children.length} ${children.length === 1 ? "key" : "keys"}}` : `[${children.length}]`;
    if (!children.length) return el("div", { class: "j-row" }, key, el("span", { class: "j-lit" }, n.t === "object" ? "{}" : "[]"));
    return el("details", { class: "j-node", open: depth < openDepth },
      el("summary", {}, key, el("span", { class: "muted" }, summary)),
      el("div", { class: "j-children" }, children.map(([k, child]) => render(child, depth + 1, k))));
  };
  return el("div", { class: "json", "aria-label": label || "JSON" }, render(node, 0));
}

// -- live events ------------------------------------------------------------------------------------
// streamEvents("/events", onEvent) or ("/jobs/42/events", ...): an EventSource with a short-lived
// stream token (EventSource cannot send headers; the API token never goes into a URL). On an
// error it reconnects after `retryMs` with a fresh token from the last id it saw. Returns stop().
export const EVENT_TYPES = ["created", "waiting", "started", "progress", "log", "retried", "failed", "rescued",
  "released", "cancel_requested", "succeeded", "dead", "cancelled", "deleted"];

export function streamEvents(path, onEvent, { onState = () => {}, retryMs = 3000, endOn = () => false, after = 0 } = {}) {
  let source = null, stopped = false, lastId = after, timer = null;
  const open = async () => {
    if (stopped) return;
    let streamToken;
    try {
      streamToken = (await api("/auth/stream-token", { method: "POST" })).token;
    } catch (error) {
      onState(false);
      timer = setTimeout(open, retryMs * 3);
      return;
    }
    if (stopped) return;
    const after = lastId ? `&last_event_id=${lastId}` : "";
    source = new EventSource(`${path}?stream_token=${encodeURIComponent(streamToken)}${after}`);
    source.onopen = () => onState(true);
    for (const type of EVENT_TYPES) {
      source.addEventListener(type, (message) => {
        const id = Number(message.lastEventId) || 0;
        if (id && id <= lastId) return;  // already seen (a replay after a reconnect)
        lastId = id || lastId;
        const event = JSON.parse(message.data);
        onEvent(event);
        if (endOn(event)) stop();
      });
    }
    source.onerror = () => {
      onState(false);
      if (stopped) return;
      source.close();  // a stale token would be refused on the browser's own retry: get a new one
      timer = setTimeout(open, retryMs);
    };
  };
  const stop = () => {
    stopped = true;
    clearTimeout(timer);
    if (source) source.close();
    onState(false);
  };
  open();
  return stop;
}

// Run `fn` at most once per `ms` (the last call wins; nothing is dropped, only merged).
export function throttle(fn, ms) {
  let timer = null, last = 0;
  return () => {
    if (timer) return;
    const wait = Math.max(0, last + ms - Date.now());
    timer = setTimeout(() => { timer = null; last = Date.now(); fn(); }, wait);
  };
}

export function badge(status) {
  return el("span", { class: `badge ${status}`, "data-status": status }, status);
}

export function errorBox(error) {
  const body = error && error.body && error.body.error;
  const details = body && body.details && body.details.length
    ? body.details.map((d) => `${d.field}: ${d.message}`).join("\n") : "";
  return el("p", { class: "error", role: "alert" }, String(error.message || error), details ? `\n${details}` : "");
}

// The exact tree back as JSON text (numbers as the server wrote them).
export function toText(node) {
  if (node.t === "object") return `{${node.entries.map(([k, v]) => `${JSON.stringify(k)}:${toText(v)}`).join(",")}}`;
  if (node.t === "array") return `[${node.items.map(toText).join(",")}]`;
  if (node.t === "number") return node.raw;
  return JSON.stringify(node.value);
}

// A modal confirmation (a <dialog>: focus stays inside, Escape cancels) -> Promise<boolean>.
export function confirmDialog(title, text, okLabel, { danger = false } = {}) {
  return new Promise((resolve) => {
    const ok = el("button", { type: "button", class: danger ? "danger" : "primary", id: "confirm-ok" }, okLabel);
    const dialog = el("dialog", { class: "confirm" }, el("h2", {}, title), el("p", {}, text),
      el("div", { class: "actions" }, ok, el("button", { type: "button", id: "confirm-cancel", onclick: () => dialog.close() }, "Cancel")));
    let answer = false;
    ok.addEventListener("click", () => { answer = true; dialog.close(); });
    dialog.addEventListener("close", () => { dialog.remove(); resolve(answer); });
    document.body.append(dialog);
    dialog.showModal();
    ok.focus();
  });
}

// node.replaceChildren with el()'s rules: arrays are flattened, null / false / undefined skipped.
export function fill(node, ...children) {
  node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false)
    .map((c) => (c instanceof Node ? c : document.createTextNode(String(c)))));
  return node;
}
