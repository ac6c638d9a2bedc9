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

export function requireToken() {
  if (token()) return true;
  location.href = `/?next=${encodeURIComponent(location.pathname + location.search)}`;
  return false;
}
