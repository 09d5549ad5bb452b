// tunelab studio: shared helpers (API calls, element building, formatting, polling). No libraries, no network.
"use strict";

const TL = { pages: {}, timers: [], runsCache: null };
// Whether a run's problem type can chat; needs TL.problemTypes() loaded (the facts come from the server).
TL.canChat = (run) => Boolean(TL.problemTypesCache && (TL.problemTypesCache[run.problem_type] || {}).can_chat);

class ApiError extends Error {
  constructor(message, status, field, problems) {
    super(message);
    this.status = status;
    this.field = field || null;
    this.problems = problems || [];
  }
}

// fetch + JSON; a refusal becomes an ApiError carrying the server's one-line message and the field it concerns.
TL.api = async function (method, path, body) {
  const init = { method, headers: {}, credentials: "same-origin" };
  if (body instanceof Blob) {
    init.body = body;
    init.headers["Content-Type"] = "application/octet-stream";
  } else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const res = await fetch(path, init);
  if (res.status === 401) {
    location.href = "/login?next=" + encodeURIComponent("/" + location.hash);
    throw new ApiError("log in first", 401);
  }
  let data = null;
  try {
    data = await res.json();
  } catch (e) {
    data = null;
  }
  if (!res.ok) {
    const err = (data && data.error) || {};
    throw new ApiError(err.message || `${res.status} ${res.statusText}`, res.status, err.field, err.problems);
  }
  return data;
};

// h("div", {class: "x", onclick: fn}, "text", child): text is always set as text, never parsed as HTML.
TL.h = function (tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "value") el.value = value;
    else if (key === "checked") el.checked = Boolean(value);
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
};

TL.num = function (value) {
  if (value === null || value === undefined || value === "") return "–";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value)) return value.toLocaleString("en");
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e6)) return value.toExponential(2);
  return String(Number(value.toPrecision(4)));
};

TL.duration = function (seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
};

TL.bytes = function (n) {
  if (n < 1024) return `${n} B`;
  if (n < 2 ** 20) return `${(n / 1024).toFixed(1)} KB`;
  if (n < 2 ** 30) return `${(n / 2 ** 20).toFixed(1)} MB`;
  return `${(n / 2 ** 30).toFixed(2)} GB`;
};

TL.time = function (epoch) {
  return epoch ? new Date(epoch * 1000).toLocaleString() : "–";
};

TL.badge = function (status, text) {
  return TL.h("span", { class: `badge st-${status}`, "data-status": status }, text || status);
};

// The key metric of a run for tables: "accuracy 0.95" (and two more).
TL.metricsText = function (run) {
  const shown = run.shown_metrics || {};
  const keys = Object.keys(shown);
  if (!keys.length) return "–";
  const first = run.key_metric && keys.includes(run.key_metric) ? [run.key_metric] : [];
  const order = first.concat(keys.filter((k) => !first.includes(k))).slice(0, 3);
  return order.map((k) => `${k} ${TL.num(shown[k])}`).join(", ");
};

// Polling that stops when the page changes.
TL.every = function (fn, ms) {
  const token = TL.routeToken;
  const id = setInterval(() => (token === TL.routeToken ? fn() : clearInterval(id)), ms);
  TL.timers.push(id);
  return id;
};

TL.toast = function (message, kind) {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.className = `show ${kind || ""}`;
  clearTimeout(TL.toastTimer);
  TL.toastTimer = setTimeout(() => (el.className = ""), 4000);
};

// An error box: the server's message, and when given, the run's last log lines.
TL.errorBox = function (message, lines) {
  return TL.h(
    "div",
    { class: "error-box" },
    TL.h("strong", {}, "Error: "),
    message,
    lines && lines.length ? TL.h("pre", { class: "log" }, lines.join("\n")) : null
  );
};

TL.card = function (title, ...children) {
  return TL.h("section", { class: "card" }, title ? TL.h("h2", {}, title) : null, ...children);
};

TL.field = function (label, input, help) {
  return TL.h("label", { class: "field" }, TL.h("span", { class: "label" }, label), input, help ? TL.h("small", {}, help) : null);
};

TL.select = function (options, value, attrs) {
  const el = TL.h("select", attrs || {});
  for (const opt of options) {
    const [val, text] = Array.isArray(opt) ? opt : [opt, opt];
    el.append(TL.h("option", { value: val }, text));
  }
  if (value !== undefined) el.value = value;
  return el;
};

TL.runs = async function () {
  const data = await TL.api("GET", "/api/runs");
  TL.runsCache = data.runs;
  return data.runs;
};

// Every problem type's facts (GET /api/problem-types: tunelab's ProblemSpec), by name, in registration order.
TL.problemTypes = async function () {
  if (!TL.problemTypesCache) {
    const data = await TL.api("GET", "/api/problem-types");
    TL.problemTypesCache = Object.fromEntries(data.problem_types.map((p) => [p.name, p]));
  }
  return TL.problemTypesCache;
};

// The first problem type whose facts satisfy ``test`` (registration order), or undefined.
TL.firstProblemType = (types, test) => (Object.values(types).find(test) || {}).name;

TL.schema = async function () {
  if (!TL.schemaCache) TL.schemaCache = await TL.api("GET", "/api/schema");
  return TL.schemaCache;
};
