// lmgate's dashboard: plain JavaScript over the admin API, no dependencies and no
// build step. Everything shown is built with textContent (never innerHTML): model
// names, error messages and logged bodies come from clients and upstreams.
"use strict";

// Signed in with the admin key (kept in this tab), or by a session cookie (state.me:
// who, and their role: admin, viewer, or member, who sees their own keys only).
const state = { key: sessionStorage.getItem("lmgate-admin-key"), me: null, timer: null };
const role = () => (state.key ? "admin" : state.me && state.me.signed_in ? state.me.role : null);
const $ = (selector) => document.querySelector(selector);

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "style") Object.assign(node.style, value); // CSSOM: allowed by the CSP
    else if (value !== null && value !== undefined && value !== false) node.setAttribute(name, value);
  }
  for (const child of children.flat(Infinity)) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { ...(state.key ? { "Authorization": `Bearer ${state.key}` } : {}), "Content-Type": "application/json" },
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = (body.error && body.error.message) || `HTTP ${response.status}`;
    // A wrong admin key, or a session that ended; a role's 403 is only this action's.
    if (response.status === 401 || (response.status === 403 && state.key)) signOut(message);
    throw new ApiError(response.status, message);
  }
  return body;
}

// ---- formatting -------------------------------------------------------------------

const number = (value) => (value === null || value === undefined ? "–" : Number(value).toLocaleString("en-US"));
const ms = (value) => (value === null || value === undefined ? "–"
  : value < 10 ? `${Number(value).toFixed(2)} ms` : `${Math.round(value).toLocaleString("en-US")} ms`);
const usd = (value) => (value === null || value === undefined ? "–" : `$${Number(value).toFixed(value >= 1 ? 2 : 6)}`);
const when = (unix) => new Date(unix * 1000).toLocaleString("en-GB", { hour12: false });
const clock = (unix) => new Date(unix * 1000).toLocaleTimeString("en-GB", { hour12: false, hour: "2-digit", minute: "2-digit" });

function statusBadge(status) {
  const cls = status >= 500 || status === 499 ? "badge bad" : status >= 400 ? "badge warn" : "badge";
  return h("span", { class: cls }, status);
}

function table(columns, rows, onClick) {
  return h("div", { class: "scroll" }, h("table", {},
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.num ? "num" : null }, c.label)))),
    h("tbody", {}, rows.map((row) => h("tr", onClick ? { class: "clickable", onclick: () => onClick(row) } : {},
      columns.map((c) => h("td", { class: c.num ? "num" : null }, c.value(row))))))));
}

// ---- what the tables name: keys by name, models by catalog id ------------------------

async function loadNames() {
  const [keys, models] = await Promise.all([api("/admin/keys").catch(() => ({ data: [] })), api("/admin/deployments")]);
  state.keys = Object.fromEntries(keys.data.map((k) => [k.id, k]));
  state.models = new Set(models.data.map((m) => m.id));
}

function keyName(id) {
  if (!id) return "–";
  if (id.startsWith("config:")) return "config key";
  const key = (state.keys || {})[id];
  return key ? key.name : id;
}

function keyState(k) {
  if (k.revoked_at) return ["revoked", "badge bad"];
  if (k.expires_at && k.expires_at * 1000 < Date.now()) return ["expired", "badge warn"];
  if ((k.budget_tokens !== null && k.used_tokens >= k.budget_tokens) || (k.budget_usd !== null && k.used_usd >= k.budget_usd)) return ["exhausted", "badge warn"];
  return ["active", "badge"];
}

// requested → served, with a badge when another model answered than the one asked for.
function modelCell(r) {
  const served = r.model, asked = r.requested_model;
  if (!served || !asked || served === asked) return served || asked || "–";
  const fallback = state.models && state.models.has(asked);
  return h("span", {}, `${asked} → ${served} `, fallback ? h("span", { class: "badge warn", "data-testid": "fallback" }, "fallback") : null);
}

// ---- the drawer: details over the page, in view wherever the list was scrolled --------

function openDrawer(title, ...content) {
  closeDrawer();
  const close = h("button", { type: "button", class: "secondary close", "aria-label": "Close", onclick: closeDrawer }, "Close");
  // Not modal: the page and its navigation stay usable beside it (navigating closes it).
  const drawer = h("aside", { class: "drawer", role: "dialog", "aria-label": title, "data-testid": "drawer" }, close, h("h2", {}, title), ...content);
  document.body.append(drawer);
  close.focus();
  return drawer;
}

function closeDrawer() {
  for (const node of document.querySelectorAll(".drawer")) node.remove();
}

document.addEventListener("keydown", (event) => { if (event.key === "Escape") closeDrawer(); });

// ---- a stream's reply as text: its frames in any of the four protocols -----------------

function reassemble(raw) {
  const text = [], reasoning = [], tools = [];
  for (const line of raw.split("\n")) {
    if (!line.startsWith("data:")) continue;
    let event;
    try { event = JSON.parse(line.slice(5)); } catch { continue; }
    const choice = event.choices && event.choices[0];
    if (choice && choice.delta) { // OpenAI chat
      if (choice.delta.content) text.push(choice.delta.content);
      if (choice.delta.reasoning_content) reasoning.push(choice.delta.reasoning_content);
      for (const call of choice.delta.tool_calls || []) if (call.function) tools.push(`${call.function.name || ""}${call.function.arguments || ""}`);
    } else if (event.type === "content_block_delta" && event.delta) { // Anthropic
      if (event.delta.text) text.push(event.delta.text);
      if (event.delta.thinking) reasoning.push(event.delta.thinking);
      if (event.delta.partial_json) tools.push(event.delta.partial_json);
    } else if (event.type === "response.output_text.delta") text.push(event.delta); // Responses
    else if (event.type === "response.reasoning_summary_text.delta" || event.type === "response.reasoning_text.delta") reasoning.push(event.delta);
    else if (event.type === "response.function_call_arguments.delta") tools.push(event.delta);
    else if (event.candidates) { // Gemini
      for (const part of ((event.candidates[0] || {}).content || {}).parts || []) {
        if (part.text) (part.thought ? reasoning : text).push(part.text);
        if (part.functionCall) tools.push(JSON.stringify(part.functionCall));
      }
    }
  }
  return { text: text.join(""), reasoning: reasoning.join(""), tools: tools.join("") };
}

// ---- charts (SVG) -----------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#2f6fed", "#d92d20", "#12a150", "#dc6803", "#7a5af8", "#0e9384"];

// The smallest of 1, 2, 2.5 and 5 times a power of ten that is at least ``step``: ticks
// at round numbers.
function niceStep(step) {
  const power = 10 ** Math.floor(Math.log10(step));
  return power * ([1, 2, 2.5, 5, 10].find((m) => m * power >= step * (1 - 1e-9)) || 10);
}

function lineChart(title, points, series, format) {
  const values = series.flatMap((s) => points.map((p) => p[s.key]).filter((v) => v !== null && v !== undefined));
  const Y_TICKS = 4;
  const max = (Y_TICKS - 1) * niceStep(Math.max(1e-9, ...values) / (Y_TICKS - 1));
  const x = (i) => (100 * i) / Math.max(1, points.length - 1);
  const y = (v) => 100 * (1 - v / max);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 100 100");
  svg.setAttribute("preserveAspectRatio", "none");
  const add = (tag, attrs) => {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
    svg.append(node);
    return node;
  };
  for (let i = 1; i < Y_TICKS - 1; i++) add("line", { x1: 0, x2: 100, y1: (100 * i) / (Y_TICKS - 1), y2: (100 * i) / (Y_TICKS - 1), class: "grid-line", "vector-effect": "non-scaling-stroke" });
  series.forEach((s, index) => {
    const coords = points.map((p, i) => (p[s.key] === null || p[s.key] === undefined ? null : `${x(i)},${y(p[s.key])}`));
    const path = coords.filter(Boolean).map((c, i) => (i ? "L" : "M") + c).join(" ");
    if (path) {
      const line = add("path", { d: path, fill: "none", stroke: COLORS[index], "stroke-width": 2, "vector-effect": "non-scaling-stroke", "data-series": s.key });
      const tip = document.createElementNS(SVG, "title");
      tip.textContent = s.label;
      line.append(tip);
    }
  });
  const yTicks = h("div", { class: "y-ticks" },
    Array.from({ length: Y_TICKS }, (_, i) => h("span", { class: "tick" }, format((max * (Y_TICKS - 1 - i)) / (Y_TICKS - 1)))));
  const xTicks = h("div", { class: "x-ticks" });
  if (points.length) {
    const first = points[0].at, last = points[points.length - 1].at;
    const long = last - first > 20 * 3600;
    const label = (at) => (long ? `${new Date(at * 1000).toLocaleDateString("en-GB", { day: "2-digit", month: "short" })} ${clock(at)}` : clock(at));
    const count = long ? 4 : 5;
    for (let i = 0; i < count; i++) xTicks.append(h("span", { class: "tick" }, label(first + ((last - first) * i) / (count - 1))));
  }
  const legend = h("div", { class: "legend" }, series.map((s, i) => h("span", {}, h("i", { style: { background: COLORS[i] } }), s.label)));
  return h("div", { class: "card" }, h("h2", {}, title), h("div", { class: "chart", "data-testid": "chart" }, yTicks, svg, xTicks), legend);
}

// ---- pages --------------------------------------------------------------------------

const pages = {};

pages.overview = async (root) => {
  const range = h("select", { id: "range", "data-testid": "range" },
    ["15m", "1h", "6h", "24h", "7d"].map((r) => h("option", { value: r, selected: r === (state.range || "1h") }, r)));
  const by = h("select", { id: "by" }, ["model", "key", "provider", "session", "user", "team"].map((b) => h("option", { value: b, selected: b === (state.by || "model") }, `by ${b}`)));
  const body = h("div", {});
  root.append(h("h1", {}, "Overview"), h("div", { class: "toolbar" }, h("label", {}, "Time range", range), h("label", {}, "Breakdown", by)), body);
  const draw = async () => {
    state.range = range.value; state.by = by.value;
    const [series, summary] = await Promise.all([
      api(`/admin/usage/series?since=${range.value}`),
      api(`/admin/usage?since=${range.value}&by=${by.value}`),
    ]);
    const points = series.points;
    const totals = summary.data.reduce((t, g) => ({
      requests: t.requests + g.requests, errors: t.errors + g.errors,
      tokens: t.tokens + g.input_tokens + g.output_tokens, cost: t.cost + (g.cost || 0),
    }), { requests: 0, errors: 0, tokens: 0, cost: 0 });
    const overall = series.overall;
    const tile = (label, value, id) => h("div", { class: "tile", "data-testid": id }, h("div", { class: "value" }, value), h("div", { class: "label" }, label));
    const maxRequests = Math.max(1, ...summary.data.map((g) => g.requests));
    body.replaceChildren(
      h("div", { class: "tiles" },
        tile("requests", number(totals.requests), "tile-requests"),
        tile("errors", number(totals.errors), "tile-errors"),
        tile("p50 latency", ms(overall.p50_ms), "tile-p50"),
        tile("p95 latency", ms(overall.p95_ms), "tile-p95"),
        tile("time to first token p50 (streams)", ms(overall.ttft_p50_ms), "tile-ttft"),
        tile("tokens", number(totals.tokens), "tile-tokens"),
        tile("cost", usd(totals.cost), "tile-cost")),
      h("div", { class: "grid" },
        lineChart("Requests and errors", points, [{ key: "requests", label: "requests" }, { key: "errors", label: "errors" }], number),
        lineChart("Latency", points, [{ key: "p50_ms", label: "p50" }, { key: "p95_ms", label: "p95" }, { key: "ttft_p50_ms", label: "time to first token p50" }], ms),
        lineChart("Tokens", points, [{ key: "input_tokens", label: "input" }, { key: "output_tokens", label: "output" }], number),
        lineChart("Cost", points, [{ key: "cost", label: "USD" }], usd)),
      h("div", { class: "card" }, h("h2", {}, `By ${by.value}`),
        h("div", { "data-testid": "breakdown" }, table([
          { label: by.value, value: (g) => (by.value === "key" ? keyName(g.group === "-" ? null : g.group) : g.group) },
          { label: "requests", num: true, value: (g) => number(g.requests) },
          { label: "", value: (g) => h("div", { class: "bar", style: { width: `${Math.round((100 * g.requests) / maxRequests)}%` } }) },
          { label: "errors", num: true, value: (g) => number(g.errors) },
          { label: "input", num: true, value: (g) => number(g.input_tokens) },
          { label: "output", num: true, value: (g) => number(g.output_tokens) },
          { label: "cache hit", num: true, value: (g) => (g.input_tokens ? `${Math.round((100 * (g.cached_tokens || 0)) / g.input_tokens)}%` : "–") },
          { label: "cost", num: true, value: (g) => (g.unpriced ? `${usd(g.cost)} (${g.unpriced} unpriced)` : usd(g.cost)) },
          { label: "p50", num: true, value: (g) => ms(g.p50_ms) },
          { label: "p95", num: true, value: (g) => ms(g.p95_ms) },
        ], summary.data))));
  };
  range.addEventListener("change", draw);
  by.addEventListener("change", draw);
  await draw();
  return draw;
};

pages.models = async (root) => {
  const body = h("div", {});
  root.append(h("h1", {}, "Models and deployments"), h("p", { class: "muted" }, "Live: refreshed every 5 seconds."), body);
  const draw = async () => {
    const { data } = await api("/admin/deployments");
    body.replaceChildren(...data.map((model) => h("div", { class: "card", "data-testid": "model" },
      h("h2", {}, model.id, model.name !== model.id ? h("span", { class: "muted" }, ` · ${model.name}`) : null),
      table([
        { label: "deployment", value: (d) => d.name },
        { label: "type", value: (d) => d.type },
        { label: "circuit", value: (d) => h("span", { class: d.circuit === "open" ? "badge bad" : "badge", "data-testid": "circuit" },
          d.circuit === "open" ? `open ${Math.ceil(d.open_for_seconds)}s` : "closed") },
        { label: "in flight", num: true, value: (d) => (d.max_in_flight ? `${d.in_flight} / ${d.max_in_flight}` : d.in_flight) },
        { label: "failures in a row", num: true, value: (d) => d.failures_in_a_row },
        { label: "price in / out per M", value: (d) => (d.price ? `$${d.price.input} / $${d.price.output}` : h("span", { class: "muted" }, "no price")) },
        { label: "recent errors", value: (d) => (d.recent_errors.length
          ? h("div", {}, d.recent_errors.map((e) => h("div", { class: "error" }, `${Math.round(e.seconds_ago)}s ago · ${e.kind}: ${e.message}`)))
          : h("span", { class: "muted" }, "none")) },
      ], model.deployments))));
  };
  await draw();
  state.timer = setInterval(() => draw().catch(showError), 5000);
};

pages.keys = async (root) => {
  const field = (name, label, type = "text") => h("label", {}, label, h("input", { name, type, "data-testid": `key-${name}`, step: type === "number" ? "any" : null, min: type === "number" ? "0" : null }));
  const created = h("div", {});
  const form = h("form", { class: "inline", "data-testid": "create-key" },
    field("name", "Name"), field("models", "Models (comma-separated; empty: all)"),
    field("rpm", "Requests / min", "number"), field("tpm", "Tokens / min", "number"),
    field("budget_tokens", "Budget (tokens)", "number"), field("budget_usd", "Budget (USD)", "number"),
    field("expires", "Expires (YYYY-MM-DD)"), h("button", { type: "submit" }, "Create key"));
  const list = h("div", {});
  const mine = role() === "member";
  const ownUsage = h("div", { "data-testid": "own-usage" });
  root.append(h("div", {}, h("h1", {}, mine ? "Your keys" : "API keys"),
    role() !== "viewer" ? h("div", { class: "card" }, h("h2", {}, "New key"), form, created) : null,
    h("div", { class: "card" }, list), mine ? h("div", { class: "card" }, h("h2", {}, "Your usage (30 days)"), ownUsage) : null));
  const draw = async () => {
    const [keys, usage] = await Promise.all([api("/admin/keys"), api("/admin/usage?by=key&since=30d")]);
    const used = Object.fromEntries(usage.data.map((g) => [g.group, g]));
    if (mine) {
      const byModel = await api("/admin/usage?by=model&since=30d");
      ownUsage.replaceChildren(table([
        { label: "model", value: (g) => g.group },
        { label: "requests", num: true, value: (g) => number(g.requests) },
        { label: "tokens in / out", num: true, value: (g) => `${number(g.input_tokens)} / ${number(g.output_tokens)}` },
        { label: "cost", num: true, value: (g) => usd(g.cost) },
      ], byModel.data));
    }
    list.replaceChildren(h("div", { "data-testid": "keys" }, table([
      { label: "name", value: (k) => k.name },
      { label: "key", value: (k) => h("span", { title: k.id }, `${k.prefix}…`) },
      { label: "models", value: (k) => (k.models ? k.models.join(", ") : "all") },
      { label: "rpm", num: true, value: (k) => number(k.rpm) },
      { label: "tpm", num: true, value: (k) => number(k.tpm) },
      { label: "tokens used / budget", num: true, value: (k) => `${number(k.used_tokens)} / ${number(k.budget_tokens)}` },
      { label: "USD used / budget", num: true, value: (k) => `${usd(k.used_usd)} / ${usd(k.budget_usd)}` },
      { label: "requests (30 d)", num: true, value: (k) => number((used[k.id] || {}).requests || 0) },
      { label: "expires", value: (k) => (k.expires_at ? when(k.expires_at) : "never") },
      { label: "state", value: (k) => { const [name, cls] = keyState(k); return h("span", { class: cls }, name); } },
      { label: "", value: (k) => (k.revoked_at || role() === "viewer" ? null : h("span", { class: "toolbar" },
        role() === "admin" ? h("button", { class: "secondary", type: "button", onclick: () => edit(k) }, "Edit") : null,
        h("button", { class: "secondary", type: "button", onclick: () => rotate(k).catch(showError) }, "Rotate"),
        h("button", { class: "danger", type: "button", "data-testid": `revoke-${k.id}`,
          onclick: async () => { if (confirm(`Revoke key ${k.name}?`)) { await api(`/admin/keys/${encodeURIComponent(k.id)}`, { method: "DELETE" }); await draw(); } } }, "Revoke"))) },
    ], keys.data.slice().reverse())));
    state.keys = Object.fromEntries(keys.data.map((k) => [k.id, k]));
  };
  const rotate = async (k) => {
    if (!confirm(`Give key ${k.name} a new secret? The old one stops working.`)) return;
    const key = await api(`/admin/keys/${encodeURIComponent(k.id)}/rotate`, { method: "POST" });
    created.replaceChildren(h("p", {}, `Key ${k.name} rotated. Its new secret is shown only this once:`), h("div", { class: "secret", "data-testid": "secret" }, key.key));
    await draw();
  };
  const edit = (k) => {
    const value = (v) => (v === null || v === undefined ? "" : String(v));
    const field = (name, label, current, type = "text") => h("label", {}, label, h("input", { name, type, value: value(current), "data-testid": `edit-${name}`, step: type === "number" ? "any" : null, min: type === "number" ? "0" : null }));
    const problem = h("p", { class: "error", role: "alert", "data-testid": "edit-error" });
    const expires = k.expires_at ? new Date(k.expires_at * 1000).toISOString().slice(0, 10) : "";
    const form = h("form", { class: "inline", "data-testid": "edit-key" },
      field("name", "Name", k.name), field("models", "Models (comma-separated; empty: all)", (k.models || []).join(", ")),
      field("rpm", "Requests / min", k.rpm, "number"), field("tpm", "Tokens / min", k.tpm, "number"),
      field("budget_tokens", "Budget (tokens)", k.budget_tokens, "number"), field("budget_usd", "Budget (USD)", k.budget_usd, "number"),
      field("expires", "Expires (YYYY-MM-DD; empty: never)", expires), h("button", { type: "submit" }, "Save"));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const values = Object.fromEntries(new FormData(form).entries());
      const body = { name: values.name };
      body.models = values.models.trim() ? values.models.split(",").map((m) => m.trim()).filter(Boolean) : null;
      for (const name of ["rpm", "tpm", "budget_tokens"]) body[name] = values[name] ? parseInt(values[name], 10) : null;
      body.budget_usd = values.budget_usd ? parseFloat(values.budget_usd) : null;
      if (values.expires !== expires) body.expires = values.expires || null;
      try {
        await api(`/admin/keys/${encodeURIComponent(k.id)}`, { method: "PATCH", body: JSON.stringify(body) });
        closeDrawer();
        await draw();
      } catch (error) {
        problem.textContent = error.message;
      }
    });
    openDrawer(`Key ${k.name}`, h("p", { class: "muted" }, `${k.id} · ${k.prefix}… · an empty field removes that limit`), form, problem);
  };
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const values = Object.fromEntries(new FormData(form).entries());
    const body = { name: values.name };
    if (values.models.trim()) body.models = values.models.split(",").map((m) => m.trim()).filter(Boolean);
    for (const name of ["rpm", "tpm", "budget_tokens"]) if (values[name]) body[name] = parseInt(values[name], 10);
    if (values.budget_usd) body.budget_usd = parseFloat(values.budget_usd);
    if (values.expires) body.expires = values.expires;
    try {
      const key = await api("/admin/keys", { method: "POST", body: JSON.stringify(body) });
      created.replaceChildren(h("p", {}, `Key ${key.id} created. Its secret is shown only this once:`), h("div", { class: "secret", "data-testid": "secret" }, key.key));
      form.reset();
      await draw();
    } catch (error) {
      created.replaceChildren(h("p", { class: "error", "data-testid": "create-error" }, error.message));
    }
  });
  await draw();
};

// A form that creates a team or a person: its fields, then POST; the page redraws.
function creator(kind, fields, teams) {
  const input = (name, label, type = "text") => h("label", {}, label, h("input", { name, type, "data-testid": `${kind}-${name}`, step: type === "number" ? "any" : null, min: type === "number" ? "0" : null }));
  const select = (name, label, options) => h("label", {}, label, h("select", { name, "data-testid": `${kind}-${name}` }, options.map(([value, text]) => h("option", { value }, text))));
  const problem = h("p", { class: "error", role: "alert", "data-testid": `${kind}-error` });
  const form = h("form", { class: "inline", "data-testid": `create-${kind}` },
    ...fields.map((f) => f === "team_id" ? select("team_id", "Team", [["", "none"], ...teams.map((t) => [t.id, t.name])])
      : f === "role" ? select("role", "Role", [["member", "member"], ["viewer", "viewer"], ["admin", "admin"]])
      : f === "budget_period" ? select("budget_period", "Budget period", [["total", "total"], ["monthly", "monthly"], ["weekly", "weekly"], ["daily", "daily"]])
      : input(f, { name: "Name", email: "Email", budget_usd: "Budget (USD)" }[f], f === "budget_usd" ? "number" : "text")),
    h("button", { type: "submit" }, kind === "team" ? "Create team" : "Add person"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const values = Object.fromEntries(new FormData(form).entries());
    const body = {};
    for (const [name, value] of Object.entries(values)) if (value !== "") body[name] = name === "budget_usd" ? parseFloat(value) : value;
    try {
      await api(`/admin/${kind}s`, { method: "POST", body: JSON.stringify(body) });
      render();
    } catch (error) {
      problem.textContent = error.message;
    }
  });
  return h("div", {}, form, problem);
}

pages.teams = async (root) => {
  const [teams, users, log] = await Promise.all([api("/admin/teams"), api("/admin/users"), api("/admin/audit?limit=50")]);
  const teamName = Object.fromEntries(teams.data.map((t) => [t.id, t.name]));
  const budget = (a) => {
    const period = a.budget_period === "total" ? "" : ` ${a.budget_period}`;
    const parts = [];
    if (a.budget_usd !== null) parts.push(`${usd(a.used_usd)} / ${usd(a.budget_usd)}${period}`);
    if (a.budget_tokens !== null) parts.push(`${number(a.used_tokens)} / ${number(a.budget_tokens)} tokens${period}`);
    return parts.length ? parts.join(" · ") : h("span", { class: "muted" }, `${usd(a.used_usd)} spent, no budget`);
  };
  const resets = (a) => (a.budget_resets_at ? when(a.budget_resets_at) : h("span", { class: "muted" }, "never"));
  const limits = (a) => [a.rpm ? `${number(a.rpm)} rpm` : null, a.tpm ? `${number(a.tpm)} tpm` : null,
    a.models ? a.models.join(", ") : null].filter(Boolean).join(" · ") || h("span", { class: "muted" }, "none");
  root.append(h("h1", {}, "Teams and people"),
    ...(role() === "admin" ? [
      h("div", { class: "card" }, h("h2", {}, "New team"), creator("team", ["name", "budget_usd", "budget_period"], teams.data)),
      h("div", { class: "card" }, h("h2", {}, "New person"), creator("user", ["email", "team_id", "role", "budget_usd", "budget_period"], teams.data)),
    ] : []),
    h("div", { class: "card" }, h("h2", {}, "Teams"), h("div", { "data-testid": "teams" }, table([
      { label: "team", value: (t) => t.name },
      { label: "used / budget", value: budget },
      { label: "resets", value: resets },
      { label: "limits", value: limits },
    ], teams.data))),
    h("div", { class: "card" }, h("h2", {}, "People"), h("div", { "data-testid": "users" }, table([
      { label: "email", value: (u) => u.email },
      { label: "team", value: (u) => (u.team_id ? teamName[u.team_id] || u.team_id : h("span", { class: "muted" }, "none")) },
      { label: "role", value: (u) => u.role },
      { label: "used / budget", value: budget },
      { label: "resets", value: resets },
      { label: "limits", value: limits },
    ], users.data))),
    h("div", { class: "card" }, h("h2", {}, "Changes"), h("div", { "data-testid": "audit" }, table([
      { label: "when", value: (e) => when(e.at) },
      { label: "who", value: (e) => e.actor },
      { label: "what", value: (e) => e.action },
      { label: "target", value: (e) => e.target || "" },
    ], log.data, (e) => openDrawer(`${e.action} ${e.target || ""}`,
      h("h3", {}, "Before"), h("pre", {}, JSON.stringify(e.before, null, 2)),
      h("h3", {}, "After"), h("pre", {}, JSON.stringify(e.after, null, 2)))))));
};

pages.requests = async (root) => {
  const input = (name, label, type = "text") => h("label", {}, label, h("input", { name, type, "data-testid": `filter-${name}` }));
  const status = h("select", { name: "status", "data-testid": "filter-status" },
    [["", "any"], ["ok", "ok"], ["error", "errors"], ["429", "429 limited"], ["499", "499 client left"],
      ["502", "502 upstream"], ["503", "503 unavailable"], ["504", "504 timeout"], ["401", "401 key"], ["400", "400 bad request"]]
      .map(([v, l]) => h("option", { value: v }, l)));
  const keys = h("select", { name: "key", "data-testid": "filter-key" }, h("option", { value: "" }, "any"),
    Object.values(state.keys || {}).map((k) => h("option", { value: k.id }, k.name)));
  const filters = h("form", { class: "inline" }, input("q", "Search (id, model, deployment, error)", "search"), input("model", "Model"),
    h("label", {}, "Key", keys), h("label", {}, "Status", status), h("button", { type: "submit" }, "Filter"));
  const list = h("div", { "data-testid": "requests" });
  const more = h("button", { type: "button", class: "secondary" }, "Older");
  root.append(h("h1", {}, "Recent requests"), h("div", { class: "card" }, filters), h("div", { class: "card" }, list, more));
  let rows = [];
  const load = async (append) => {
    const params = new URLSearchParams();
    for (const [name, value] of new FormData(filters).entries()) if (value) params.set(name, value);
    if (append && rows.length) params.set("before", rows[rows.length - 1].id);
    const { data } = await api(`/admin/requests?${params}`);
    rows = append ? rows.concat(data) : data;
    more.hidden = data.length < 50;
    list.replaceChildren(rows.length ? table([
      { label: "time", value: (r) => when(r.at) },
      { label: "key", value: (r) => keyName(r.key_id) },
      { label: "model", value: modelCell },
      { label: "deployment", value: (r) => r.deployment || "–" },
      { label: "protocol", value: (r) => `${r.protocol}${r.stream ? " · stream" : ""}` },
      { label: "status", value: (r) => statusBadge(r.status) },
      { label: "latency", num: true, value: (r) => ms(r.latency_ms) },
      { label: "first token", num: true, value: (r) => ms(r.ttft_ms) },
      { label: "tokens in / out", num: true, value: (r) => `${number(r.input_tokens)} / ${number(r.output_tokens)}` },
      { label: "cost", num: true, value: (r) => usd(r.cost) },
      { label: "error", value: (r) => (r.error_message ? h("span", { class: "error" }, r.error_message) : "") },
    ], rows, (row) => show(row).catch(showError)) : h("p", { class: "muted" }, "No requests in this selection."));
  };
  filters.addEventListener("submit", (event) => { event.preventDefault(); load(false).catch(showError); });
  more.addEventListener("click", () => load(true).catch(showError));
  await load(false);
};

const pretty = (text) => { try { return JSON.stringify(JSON.parse(text), null, 2); } catch { return text; } };

async function show(row) {
  const found = await api(`/admin/requests/${encodeURIComponent(row.request_id)}`);
  // A client may send one id with several requests: this row's own record and bodies.
  const record = found.records.find((r) => r.id === row.id) || row;
  const log = record.log;
  const facts = [
    ["time", when(record.at)], ["request id", found.request_id], ["key", keyName(record.key_id)],
    ["model", modelCell(record)], ["deployment", record.deployment || "none (refused before any upstream)"],
    ["protocol", `${record.protocol}${record.stream ? " · stream" : ""}`], ["status", statusBadge(record.status)],
    ["latency", ms(record.latency_ms)], ["upstream first byte", ms(record.upstream_ms)], ["gateway overhead", ms(record.overhead_ms)],
    ["tokens in / out", `${number(record.input_tokens)} / ${number(record.output_tokens)}`], ["cost", usd(record.cost)],
  ];
  let reply = null;
  if (log && record.stream) {
    const parts = reassemble(log.reply);
    reply = [
      parts.reasoning ? [h("h2", {}, "Reasoning"), h("div", { class: "reassembled", "data-testid": "reasoning" }, parts.reasoning)] : null,
      h("h2", {}, "Reply (the stream's text)"), h("div", { class: "reassembled", "data-testid": "reassembled" }, parts.text || "(no text)"),
      parts.tools ? [h("h2", {}, "Tool call arguments"), h("pre", {}, parts.tools)] : null,
      h("details", {}, h("summary", {}, "Raw frames"), h("pre", { "data-testid": "logged-reply" }, log.reply)),
    ];
  } else if (log) {
    reply = [h("h2", {}, "Reply"), h("pre", { "data-testid": "logged-reply" }, pretty(log.reply))];
  }
  openDrawer(`Request ${found.request_id}`,
    h("dl", {}, facts.map(([name, value]) => [h("dt", {}, name), h("dd", {}, value)])),
    record.error_message ? h("p", { class: "error" }, `${record.error_type}: ${record.error_message}`) : null,
    log ? [h("h2", {}, "Request body"), h("pre", { "data-testid": "logged-request" }, pretty(log.request)), reply]
      : h("p", { class: "muted" }, "Bodies are not logged (request_log.enabled is off, or the entry expired)."));
}

// ---- shell ---------------------------------------------------------------------------

function showError(error) {
  $("#page").prepend(h("p", { class: "error", role: "alert" }, error.message));
}

async function signOut(message) {
  sessionStorage.removeItem("lmgate-admin-key");
  state.key = null;
  if (state.me && state.me.signed_in) {
    state.me = { signed_in: false, oidc: true };
    await fetch("/auth/logout", { method: "POST" }).catch(() => null);
  }
  await render();
  if (message) $("#sign-in-error").textContent = message;
}

// Pages by role: a member has their own keys (and usage) only.
const allowed = (page) => role() !== "member" || page === "keys";

async function render() {
  clearInterval(state.timer);
  const signedIn = Boolean(role());
  $("#sign-in").hidden = signedIn;
  $("#sso").hidden = !(state.me && state.me.oidc);
  $("#nav").hidden = !signedIn;
  $("#whoami").textContent = state.key ? "admin key" : signedIn ? `${state.me.email} (${state.me.role})` : "";
  const root = $("#page");
  root.replaceChildren();
  if (!signedIn) return;
  const name = (location.hash.replace("#/", "") || "overview");
  const page = pages[name] && allowed(name) ? name : role() === "member" ? "keys" : "overview";
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("active", link.dataset.page === page);
    link.hidden = !allowed(link.dataset.page);
  }
  closeDrawer();
  try {
    await loadNames();
    await pages[page](root);
  } catch (error) {
    if (role()) showError(error);
  }
}

$("#sign-in").addEventListener("submit", async (event) => {
  event.preventDefault();
  state.key = $("#admin-key").value.trim();
  try {
    await api("/admin/deployments");
  } catch (error) {
    state.key = null;
    $("#sign-in-error").textContent = error.status === 404 ? "The admin API is off: set server.admin_key." : error.message;
    return;
  }
  sessionStorage.setItem("lmgate-admin-key", state.key);
  $("#sign-in-error").textContent = "";
  $("#admin-key").value = "";
  render();
});
$("#sign-out").addEventListener("click", () => signOut());
window.addEventListener("hashchange", render);
// Who is signed in by a session cookie, and whether this gateway offers sign-in.
fetch("/auth/me").then((r) => r.json()).catch(() => ({ signed_in: false, oidc: false }))
  .then((me) => { state.me = me; render(); });
