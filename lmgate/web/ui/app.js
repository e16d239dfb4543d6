// lmgate's dashboard: plain JavaScript over the admin API, no dependencies and no
// build step. Everything shown is built with textContent (never innerHTML): model
// names, error messages and logged bodies come from clients and upstreams.
"use strict";

const state = { key: sessionStorage.getItem("lmgate-admin-key"), timer: null };
const $ = (selector) => document.querySelector(selector);

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "style") Object.assign(node.style, value); // CSSOM: allowed by the CSP
    else if (value !== null && value !== undefined && value !== false) node.setAttribute(name, value);
  }
  for (const child of children.flat()) {
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
    headers: { "Authorization": `Bearer ${state.key}`, "Content-Type": "application/json" },
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = (body.error && body.error.message) || `HTTP ${response.status}`;
    if (response.status === 401 || response.status === 403) signOut(message);
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
  return h("table", {},
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.num ? "num" : null }, c.label)))),
    h("tbody", {}, rows.map((row) => h("tr", onClick ? { class: "clickable", onclick: () => onClick(row) } : {},
      columns.map((c) => h("td", { class: c.num ? "num" : null }, c.value(row)))))));
}

// ---- charts (SVG) -----------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#2f6fed", "#d92d20", "#12a150", "#dc6803", "#7a5af8", "#0e9384"];

function lineChart(title, points, series, format) {
  const width = 600, height = 180, left = 56, bottom = 20, top = 8;
  const values = series.flatMap((s) => points.map((p) => p[s.key]).filter((v) => v !== null && v !== undefined));
  const max = Math.max(1e-9, ...values);
  const x = (i) => left + (i * (width - left - 8)) / Math.max(1, points.length - 1);
  const y = (v) => top + (height - top - bottom) * (1 - v / max);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("data-testid", "chart");
  const add = (tag, attrs, text) => {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
    if (text !== undefined) node.textContent = text;
    svg.append(node);
    return node;
  };
  add("line", { x1: left, y1: height - bottom, x2: width, y2: height - bottom, class: "axis" });
  add("line", { x1: left, y1: top, x2: left, y2: height - bottom, class: "axis" });
  add("text", { x: left - 4, y: top + 8, "text-anchor": "end" }, format(max));
  add("text", { x: left - 4, y: height - bottom, "text-anchor": "end" }, format(0));
  if (points.length) {
    const long = points[points.length - 1].at - points[0].at > 20 * 3600;
    const label = (at) => (long ? `${new Date(at * 1000).toLocaleDateString("en-GB", { day: "2-digit", month: "short" })} ${clock(at)}` : clock(at));
    add("text", { x: left, y: height - 4 }, label(points[0].at));
    add("text", { x: width - 8, y: height - 4, "text-anchor": "end" }, label(points[points.length - 1].at));
  }
  series.forEach((s, index) => {
    const coords = points.map((p, i) => (p[s.key] === null || p[s.key] === undefined ? null : `${x(i)},${y(p[s.key])}`));
    const path = coords.filter(Boolean).map((c, i) => (i ? "L" : "M") + c).join(" ");
    if (path) add("path", { d: path, fill: "none", stroke: COLORS[index], "stroke-width": 2, "data-series": s.key });
    points.forEach((p, i) => {
      if (p[s.key] !== null && p[s.key] !== undefined && p.requests) {
        const dot = add("circle", { cx: x(i), cy: y(p[s.key]), r: 2.5, fill: COLORS[index] });
        const tip = document.createElementNS(SVG, "title");
        tip.textContent = `${s.label} ${format(p[s.key])} at ${when(p.at)}`;
        dot.append(tip);
      }
    });
  });
  const legend = h("div", { class: "legend" }, series.map((s, i) => h("span", {}, h("i", { style: { background: COLORS[i] } }), s.label)));
  return h("div", { class: "card" }, h("h2", {}, title), svg, legend);
}

// ---- pages --------------------------------------------------------------------------

const pages = {};

pages.overview = async (root) => {
  const range = h("select", { id: "range", "data-testid": "range" },
    ["15m", "1h", "6h", "24h", "7d"].map((r) => h("option", { value: r, selected: r === (state.range || "1h") }, r)));
  const by = h("select", { id: "by" }, ["model", "key", "provider"].map((b) => h("option", { value: b, selected: b === (state.by || "model") }, `by ${b}`)));
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
          { label: by.value, value: (g) => g.group },
          { label: "requests", num: true, value: (g) => number(g.requests) },
          { label: "", value: (g) => h("div", { class: "bar", style: { width: `${Math.round((100 * g.requests) / maxRequests)}%` } }) },
          { label: "errors", num: true, value: (g) => number(g.errors) },
          { label: "input", num: true, value: (g) => number(g.input_tokens) },
          { label: "output", num: true, value: (g) => number(g.output_tokens) },
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
  root.append(h("h1", {}, "API keys"), h("div", { class: "card" }, h("h2", {}, "New key"), form, created), h("div", { class: "card" }, list));
  const draw = async () => {
    const [keys, usage] = await Promise.all([api("/admin/keys"), api("/admin/usage?by=key&since=30d")]);
    const used = Object.fromEntries(usage.data.map((g) => [g.group, g]));
    list.replaceChildren(h("div", { "data-testid": "keys" }, table([
      { label: "id", value: (k) => k.id },
      { label: "name", value: (k) => k.name },
      { label: "key", value: (k) => `${k.prefix}…` },
      { label: "models", value: (k) => (k.models ? k.models.join(", ") : "all") },
      { label: "rpm", num: true, value: (k) => number(k.rpm) },
      { label: "tpm", num: true, value: (k) => number(k.tpm) },
      { label: "tokens used / budget", num: true, value: (k) => `${number(k.used_tokens)} / ${number(k.budget_tokens)}` },
      { label: "USD used / budget", num: true, value: (k) => `${usd(k.used_usd)} / ${usd(k.budget_usd)}` },
      { label: "requests (30 d)", num: true, value: (k) => number((used[k.id] || {}).requests || 0) },
      { label: "state", value: (k) => (k.revoked_at ? h("span", { class: "badge bad" }, "revoked")
        : k.expires_at && k.expires_at * 1000 < Date.now() ? h("span", { class: "badge warn" }, "expired") : h("span", { class: "badge" }, "active")) },
      { label: "", value: (k) => (k.revoked_at ? null : h("button", { class: "danger", type: "button", "data-testid": `revoke-${k.id}`,
        onclick: async () => { if (confirm(`Revoke key ${k.name}?`)) { await api(`/admin/keys/${encodeURIComponent(k.id)}`, { method: "DELETE" }); await draw(); } } }, "Revoke")) },
    ], keys.data.slice().reverse())));
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

pages.requests = async (root) => {
  const input = (name, label) => h("label", {}, label, h("input", { name, "data-testid": `filter-${name}` }));
  const status = h("select", { name: "status", "data-testid": "filter-status" },
    [["", "any"], ["ok", "ok"], ["error", "errors"]].map(([v, l]) => h("option", { value: v }, l)));
  const filters = h("form", { class: "inline" }, input("model", "Model"), input("key", "Key id"), h("label", {}, "Status", status), h("button", { type: "submit" }, "Filter"));
  const list = h("div", { "data-testid": "requests" });
  const more = h("button", { type: "button", class: "secondary" }, "Older");
  const detail = h("div", { "data-testid": "detail" });
  root.append(h("h1", {}, "Recent requests"), h("div", { class: "card" }, filters), h("div", { class: "card" }, list, more), detail);
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
      { label: "request id", value: (r) => r.request_id },
      { label: "key", value: (r) => r.key_id || "–" },
      { label: "model", value: (r) => r.model || r.requested_model || "–" },
      { label: "protocol", value: (r) => `${r.protocol}${r.stream ? " · stream" : ""}` },
      { label: "status", value: (r) => statusBadge(r.status) },
      { label: "latency", num: true, value: (r) => ms(r.latency_ms) },
      { label: "first token", num: true, value: (r) => ms(r.ttft_ms) },
      { label: "tokens in / out", num: true, value: (r) => `${number(r.input_tokens)} / ${number(r.output_tokens)}` },
      { label: "cost", num: true, value: (r) => usd(r.cost) },
      { label: "error", value: (r) => (r.error_message ? h("span", { class: "error" }, r.error_message) : "") },
    ], rows, show) : h("p", { class: "muted" }, "No requests in this selection."));
  };
  const pretty = (text) => { try { return JSON.stringify(JSON.parse(text), null, 2); } catch { return text; } };
  const show = async (row) => {
    const found = await api(`/admin/requests/${encodeURIComponent(row.request_id)}`);
    // A client may send one id with several requests: this row's own record and bodies.
    const record = found.records.find((r) => r.id === row.id) || row;
    const log = record.log;
    detail.replaceChildren(h("div", { class: "card" },
      h("h2", {}, `Request ${found.request_id}`),
      h("p", {}, `${when(record.at)} · ${record.protocol} · ${record.deployment || "no deployment"} · status ${record.status} · `,
        `upstream first byte ${ms(record.upstream_ms)} · gateway overhead ${ms(record.overhead_ms)}`),
      record.error_message ? h("p", { class: "error" }, `${record.error_type}: ${record.error_message}`) : null,
      log ? [h("h2", {}, "Request body"), h("pre", { "data-testid": "logged-request" }, pretty(log.request)),
        h("h2", {}, "Reply"), h("pre", { "data-testid": "logged-reply" }, pretty(log.reply))]
        : h("p", { class: "muted" }, "Bodies are not logged (request_log.enabled is off, or the entry expired).")));
  };
  filters.addEventListener("submit", (event) => { event.preventDefault(); load(false).catch(showError); });
  more.addEventListener("click", () => load(true).catch(showError));
  await load(false);
};

// ---- shell ---------------------------------------------------------------------------

function showError(error) {
  $("#page").prepend(h("p", { class: "error", role: "alert" }, error.message));
}

function signOut(message) {
  sessionStorage.removeItem("lmgate-admin-key");
  state.key = null;
  render();
  if (message) $("#sign-in-error").textContent = message;
}

async function render() {
  clearInterval(state.timer);
  const signedIn = Boolean(state.key);
  $("#sign-in").hidden = signedIn;
  $("#nav").hidden = !signedIn;
  const root = $("#page");
  root.replaceChildren();
  if (!signedIn) return;
  const name = (location.hash.replace("#/", "") || "overview");
  const page = pages[name] ? name : "overview";
  for (const link of document.querySelectorAll("#nav a")) link.classList.toggle("active", link.dataset.page === page);
  try {
    await pages[page](root);
  } catch (error) {
    if (state.key) showError(error);
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
render();
