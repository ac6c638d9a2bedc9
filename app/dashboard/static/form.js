// Forms generated from the JSON schemas in /openapi.json (the msgspec types the API validates
// with): typed inputs, enums as selects, required fields marked, nested objects as fieldsets,
// and the server's 422 details shown next to the field they name. Text only, never innerHTML.
"use strict";

import { ApiError, el, token } from "./common.js";

let openapi = null;

// The OpenAPI document, fetched once per page (it needs no token).
export async function schemas() {
  if (!openapi) {
    const response = await fetch("/openapi.json");
    if (!response.ok) throw new Error(`GET /openapi.json: HTTP ${response.status}`);
    openapi = await response.json();
  }
  return openapi;
}

export function resolve(schema, doc) {
  for (let depth = 0; schema && schema.$ref && depth < 20; depth++) {
    schema = doc.components.schemas[schema.$ref.split("/").pop()];
  }
  return schema || {};
}

// The component a POST body of a kind uses: the discriminator's mapping of /jobs's anyOf.
export function kindSchemas(doc) {
  const body = doc.paths["/jobs"].post.requestBody.content["application/json"].schema;
  const out = {};
  for (const [kind, ref] of Object.entries(body.discriminator.mapping)) out[kind] = resolve({ $ref: ref }, doc);
  return out;
}

export function ensureStyle() {
  if (document.querySelector("link[data-forms-css]")) return;
  document.head.append(el("link", { rel: "stylesheet", href: "/dashboard/static/pages/forms.css", "data-forms-css": "" }));
}

// {nullable, schema}: "X | None" is anyOf [X, null]; the field is then optional and may be empty.
function unwrap(schema, doc) {
  schema = resolve(schema, doc);
  if (schema.anyOf) {
    const arms = schema.anyOf.map((arm) => resolve(arm, doc));
    const real = arms.filter((arm) => arm.type !== "null");
    if (real.length === 1) return { nullable: real.length < arms.length, schema: { ...real[0], default: schema.default, description: real[0].description || schema.description } };
  }
  return { nullable: false, schema };
}

function words(name) {
  return name.replaceAll("_", " ");
}

function hint(schema) {
  const bits = [];
  if (schema.description) bits.push(schema.description);
  if (schema.minimum !== undefined && schema.maximum !== undefined) bits.push(`${schema.minimum}–${schema.maximum}`);
  else if (schema.minimum !== undefined) bits.push(`at least ${schema.minimum}`);
  else if (schema.maximum !== undefined) bits.push(`at most ${schema.maximum}`);
  if (schema.maxLength !== undefined && schema.maxLength < 100000) bits.push(`up to ${schema.maxLength} characters`);
  return bits.join(" · ");
}

const slug = (path) => path.replace(/[^A-Za-z0-9_-]/g, "-");

function isoFromLocal(value) {
  // <input type=datetime-local> holds local wall time; the API wants an offset: send UTC.
  const at = new Date(value);
  return Number.isNaN(at.getTime()) ? value : at.toISOString();
}

// A Form is a tree of fields; each has a path ("payload.to"), read(), showError(), clear().
export class Form {
  constructor(doc, idPrefix) {
    this.doc = doc;
    this.prefix = idPrefix;
    this.fields = new Map();  // path -> {read, error element, input}
    this.general = el("ul", { class: "form-errors", role: "alert" });
  }

  // An object schema as a list of labelled fields (or a fieldset when nested).
  object(schema, path, { only, skip = [], advanced = [], legend } = {}) {
    schema = resolve(schema, this.doc);
    const required = new Set(schema.required || []);
    const names = Object.keys(schema.properties || {}).filter((name) => !skip.includes(name) && (!only || only.includes(name)));
    const parts = [];
    const reads = {};
    const more = [];
    for (const name of names) {
      const field = this.field(schema.properties[name], path ? `${path}.${name}` : name, name, required.has(name));
      reads[name] = field.read;
      (advanced.includes(name) ? more : parts).push(field.node);
    }
    if (more.length) parts.push(el("details", { class: "more" }, el("summary", {}, "More options"), more));
    const node = legend === undefined ? el("div", { class: "fields" }, parts)
      : el("fieldset", { class: "fields" }, el("legend", {}, legend), parts);
    const read = () => {
      const out = {};
      for (const [name, get] of Object.entries(reads)) {
        const value = get();
        if (value !== undefined) out[name] = value;
      }
      return out;
    };
    if (path) this.fields.set(path, { read, error: null, node });
    return { node, read };
  }

  field(rawSchema, path, name, required) {
    const { nullable, schema } = unwrap(rawSchema, this.doc);
    const id = `${this.prefix}-${slug(path)}`;
    const error = el("p", { class: "field-error", id: `${id}-error`, "data-field": path });
    const help = hint(schema);
    const helpNode = help ? el("small", { class: "help", id: `${id}-help` }, help) : null;
    const describedBy = [helpNode && `${id}-help`, `${id}-error`].filter(Boolean).join(" ");
    const label = el("label", { for: id }, words(name), required ? el("span", { class: "req", title: "required" }, " *") : null);
    const type = schema.type;

    if (type === "object" && schema.properties && Object.keys(schema.properties).length) {
      const nested = this.object(schema, path, { legend: words(name) });
      nested.node.append(error);
      return { node: nested.node, read: () => nested.read() };
    }

    let input, read;
    if (schema.enum) {
      input = el("select", { id, name: path, "aria-describedby": describedBy });
      if (!required && schema.default === undefined) input.append(el("option", { value: "" }, "–"));
      for (const value of schema.enum) input.append(el("option", { value: String(value), selected: value === schema.default }, String(value)));
      read = () => (input.value === "" ? undefined : schema.enum.find((v) => String(v) === input.value));
    } else if (type === "boolean") {
      input = el("input", { id, name: path, type: "checkbox", checked: schema.default === true, "aria-describedby": describedBy });
      read = () => input.checked;
      return this.register(path, el("div", { class: "field check" }, input, label, helpNode, error), read, error, input);
    } else if (type === "integer" || type === "number") {
      input = el("input", { id, name: path, type: "number", inputmode: type === "integer" ? "numeric" : "decimal",
        min: schema.minimum, max: schema.maximum, step: type === "integer" ? 1 : "any",
        value: schema.default ?? undefined, required: required || undefined, "aria-describedby": describedBy });
      // an id past 2^53 must stay exact: send the digits as they were typed
      read = () => {
        const text = input.value.trim();
        if (text === "") return undefined;
        if (type === "integer" && /^-?\d+$/.test(text)) return Number.isSafeInteger(Number(text)) ? Number(text) : new RawNumber(text);
        return Number(text);
      };
    } else if (type === "string" && schema.format === "date-time") {
      input = el("input", { id, name: path, type: "datetime-local", step: 1, "aria-describedby": describedBy });
      read = () => (input.value ? isoFromLocal(input.value) : undefined);
    } else if (type === "string") {
      const isUrl = /(^|_)url$/.test(name);
      const long = schema.maxLength !== undefined && schema.maxLength > 500 && !isUrl;
      const secret = name === "api_key" || /secret|password|token/.test(name);
      input = long
        ? el("textarea", { id, name: path, rows: 3, "aria-describedby": describedBy })
        : el("input", { id, name: path, type: secret ? "password" : schema.format === "email" ? "email" : isUrl ? "url" : "text",
          maxlength: schema.maxLength, autocomplete: "off", "aria-describedby": describedBy });
      if (typeof schema.default === "string") input.value = schema.default;
      if (required) input.required = true;
      // empty and optional: left out, so the server's default applies
      read = () => (input.value === "" && !required ? undefined : input.value);
    } else if (type === "array" && ["string", "integer", "number"].includes(resolve(schema.items, this.doc).type)) {
      const items = resolve(schema.items, this.doc);
      input = el("input", { id, name: path, type: "text", autocomplete: "off", "aria-describedby": describedBy,
        placeholder: items.type === "string" ? "comma-separated" : "comma-separated numbers, e.g. 12, 15" });
      if (Array.isArray(schema.default) && schema.default.length) input.value = schema.default.join(", ");
      read = () => {
        const parts = input.value.split(",").map((s) => s.trim()).filter(Boolean);
        if (!parts.length) return nullable || !required ? undefined : [];
        if (items.type === "string") return parts;
        return parts.map((part) => (/^-?\d+$/.test(part) && !Number.isSafeInteger(Number(part)) ? new RawNumber(part) : Number(part)));
      };
    } else {  // anything else (any JSON, a dict, a list of objects): JSON in a textarea, checked here
      input = el("textarea", { id, name: path, rows: 3, class: "json", spellcheck: "false", "aria-describedby": describedBy,
        placeholder: "JSON, e.g. {\"key\": \"value\"}" });
      if (schema.default !== undefined && schema.default !== null) input.value = JSON.stringify(schema.default);
      read = () => {
        const text = input.value.trim();
        if (!text) return required ? null : undefined;
        try {
          return new RawJson(text, JSON.parse(text));
        } catch (exc) {
          throw new FieldProblem(path, `not valid JSON: ${exc.message}`);
        }
      };
    }
    return this.register(path, el("div", { class: "field" }, label, input, helpNode, error), read, error, input);
  }

  register(path, node, read, error, input) {
    this.fields.set(path, { read, error, node, input });
    return { node, read };
  }

  clearErrors() {
    for (const { error, input, node } of this.fields.values()) {
      if (error) error.textContent = "";
      if (input) input.removeAttribute("aria-invalid");
      node.classList.remove("invalid");
    }
    this.general.replaceChildren();
  }

  // One entry per bad field (the API's 422 details): shown under the field whose path is the
  // longest prefix of the detail's field; the rest in the list at the form's top.
  showErrors(details, mapField = (field) => field) {
    for (const detail of details) {
      const path = mapField(String(detail.field || ""));
      const field = this.nearest(path);
      if (field && field.error) {
        field.error.textContent = field.error.textContent ? `${field.error.textContent}; ${detail.message}` : detail.message;
        field.node.classList.add("invalid");
        if (field.input) field.input.setAttribute("aria-invalid", "true");
      } else {
        this.general.append(el("li", {}, detail.field ? `${detail.field}: ${detail.message}` : detail.message));
      }
    }
    const first = [...this.fields.values()].find((f) => f.node.classList.contains("invalid") && f.input);
    if (first) first.input.focus();
  }

  nearest(path) {
    const parts = path.split(".");
    for (let n = parts.length; n > 0; n--) {
      const field = this.fields.get(parts.slice(0, n).join("."));
      if (field && field.error) return field;
    }
    return null;
  }
}

export class FieldProblem extends Error {
  constructor(field, message) {
    super(message);
    this.field = field;
  }
}

// Values JSON.stringify must write as they were typed: big integers, and JSON a user pasted.
class RawNumber {
  constructor(text) { this.text = text; }
}
class RawJson {
  constructor(text, value) { this.text = text; this.value = value; }
}

// JSON text of a value that may hold RawNumber / RawJson (exact big integers, the user's JSON as typed).
export function toJson(value) {
  if (value instanceof RawNumber) return value.text;
  if (value instanceof RawJson) return value.text;
  if (Array.isArray(value)) return `[${value.map(toJson).join(",")}]`;
  if (value && typeof value === "object") {
    return `{${Object.entries(value).filter(([, v]) => v !== undefined).map(([k, v]) => `${JSON.stringify(k)}:${toJson(v)}`).join(",")}}`;
  }
  return JSON.stringify(value === undefined ? null : value);
}

// A JSON request whose body is already JSON text (toJson); the token in the header as api() sends it.
export async function sendJson(path, method, bodyText) {
  const response = await fetch(path, { method, body: bodyText,
    headers: { Authorization: `Bearer ${token()}`, "Content-Type": "application/json" } });
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { error: { message: text.slice(0, 200) } }; }
  if (response.status === 401) dispatchEvent(new Event("pgq:unauthorized"));
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

// Reads a form; a FieldProblem (JSON that does not parse) is shown at its field and rethrown.
export function readForm(form, reader) {
  form.clearErrors();
  try {
    return reader();
  } catch (exc) {
    if (exc instanceof FieldProblem) form.showErrors([{ field: exc.field, message: exc.message }]);
    throw exc;
  }
}

// The error an API call ended with, as field details: a 422's details, else one general entry.
export function detailsOf(error) {
  const body = error && error.body && error.body.error;
  if (body && Array.isArray(body.details) && body.details.length) return body.details;
  return [{ field: "", message: String(error.message || error) }];
}
