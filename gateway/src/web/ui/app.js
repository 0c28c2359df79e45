// Holdfast's technician UI: one page, no framework, no build step. Every datum comes from
// the REST API under /api/v1/ and is put into the page as text (never as HTML). Changes carry
// the session's CSRF token.
"use strict";

const state = { csrf: null, timer: null, history: {}, route: "" };
const REFRESH_MS = 2000;
const PAGE_ROWS = 50;
const GRAPH_POINTS = 150;

// ---------- DOM helpers ----------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function view(...children) {
  const main = document.getElementById("view");
  main.replaceChildren(...children);
  return main;
}

function say(text) {
  const el = document.getElementById("status");
  el.textContent = text;
  clearTimeout(say.timer);
  say.timer = setTimeout(() => { if (el.textContent === text) el.textContent = ""; }, 8000);
}

function table(caption, columns, rows, empty) {
  if (!rows.length) return h("p", { class: "empty" }, empty || "Nothing here.");
  return h("div", { class: "scroll", role: "region", "aria-label": caption + " table", tabindex: "0" },
    h("table", {},
      h("caption", { class: "visually-hidden" }, caption),
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c.title || h("span", { class: "visually-hidden" }, "Actions"))))),
      h("tbody", {}, rows.map((r) => h("tr", {}, columns.map((c) => h("td", { "data-label": c.title }, c.cell(r))))))));
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function duration(s) {
  if (s === null || s === undefined) return "–";
  s = Math.floor(s);
  const d = Math.floor(s / 86400), hh = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  return (d ? d + "d " : "") + (d || hh ? hh + "h " : "") + m + "m " + (s % 60) + "s";
}

function when(unix) {
  return unix ? new Date(unix * 1000).toLocaleString() : "–";
}

// ---------- the API ----------

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || "HTTP " + status);
    this.status = status;
    this.body = body;
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && state.csrf) headers["X-CSRF-Token"] = state.csrf;
  const response = await fetch("/api/v1/" + path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  if (response.status !== 204) {
    try { data = await response.json(); } catch (_) { data = null; }
  }
  if (response.status === 401 && path !== "login" && path !== "setup") {
    stopRefresh();
    state.csrf = null;
    showLogin("Your session ended; log in again.");
    throw new ApiError(401, data);
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

function stopRefresh() {
  if (state.timer) clearTimeout(state.timer);
  state.timer = null;
}

// Runs `load` now and every REFRESH_MS while the page stays on this route.
function every(route, load) {
  stopRefresh();
  const tick = async () => {
    if (state.route !== route) return;
    try { await load(); } catch (e) { if (!(e instanceof ApiError && e.status === 401)) say(e.message); }
    if (state.route === route) state.timer = setTimeout(tick, REFRESH_MS);
  };
  tick();
}

// ---------- first boot and login ----------

function passwordField(id, label, autocomplete) {
  return [h("label", { for: id }, label),
    h("input", { id, name: id, type: "password", required: true, autocomplete, minlength: id === "token" ? null : 10 })];
}

function showSetup(message) {
  chrome(false);
  const error = h("p", { class: "error", role: "alert", id: "form-error" }, message || "");
  const form = h("form", { class: "card narrow", "aria-labelledby": "setup-title" },
    h("h1", { id: "setup-title" }, "Set up this gateway"),
    h("p", {}, "There is no admin account yet. The gateway wrote a one-time setup token to ",
      h("code", {}, "{data_dir}/setup-token"), " on the board (its log says where). Enter it and choose the admin password."),
    ...passwordField("token", "Setup token", "off"),
    ...passwordField("password", "New admin password (at least 10 characters)", "new-password"),
    ...passwordField("confirm", "Repeat the password", "new-password"),
    error,
    h("button", { type: "submit" }, "Create the admin account"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = ev.target.elements;
    if (f.password.value !== f.confirm.value) { error.textContent = "The passwords differ."; f.confirm.focus(); return; }
    try {
      const r = await api("POST", "setup", { token: f.token.value.trim(), password: f.password.value });
      state.csrf = r.csrf;
      start();
    } catch (e) { error.textContent = e.message; }
  });
  view(form);
  form.elements.token.focus();
}

function showLogin(message) {
  chrome(false);
  const error = h("p", { class: "error", role: "alert", id: "form-error" }, message || "");
  const form = h("form", { class: "card narrow", "aria-labelledby": "login-title" },
    h("h1", { id: "login-title" }, "Log in"),
    h("input", { type: "text", name: "username", value: "admin", autocomplete: "username", hidden: true, "aria-hidden": "true" }),
    ...passwordField("password", "Admin password", "current-password"),
    error,
    h("button", { type: "submit" }, "Log in"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const r = await api("POST", "login", { password: ev.target.elements.password.value });
      state.csrf = r.csrf;
      start();
    } catch (e) { error.textContent = e.message; ev.target.elements.password.select(); }
  });
  view(form);
  form.elements.password.focus();
}

function chrome(on) {
  document.getElementById("nav").hidden = !on;
  document.getElementById("logout").hidden = !on;
  if (!on) {
    stopRefresh();
    document.getElementById("alarm").hidden = true;
    document.getElementById("probation").hidden = true;
  }
}

async function start() {
  try {
    const s = await api("GET", "setup");
    if (s.setup_required) return showSetup();
    const session = await fetch("/api/v1/session", { credentials: "same-origin" });
    if (!session.ok) return showLogin();
    state.csrf = (await session.json()).csrf;
  } catch (e) {
    view(h("p", { class: "error" }, "The gateway does not answer: " + e.message));
    return;
  }
  chrome(true);
  showProbation();
  route(false);
}

// ---------- pages ----------

const pages = {
  overview: overviewPage,
  clients: clientsPage,
  client: clientPage,
  subscriptions: () => listingPage("Subscriptions", "subscriptions", "subscriptions",
    [{ title: "Client", cell: (r) => clientLink(r.client_id) }, { title: "Filter", cell: (r) => r.filter }, { title: "QoS", cell: (r) => r.qos }],
    (r) => r.client_id + " " + r.filter),
  retained: () => listingPage("Retained messages", "retained", "retained",
    [{ title: "Topic", cell: (r) => r.topic }, { title: "Size", cell: (r) => bytes(r.payload_size) }, { title: "QoS", cell: (r) => r.qos }],
    (r) => r.topic),
  bridges: bridgesPage,
  devices: devicesPage,
  config: configPage,
  logs: logsPage,
  tokens: tokensPage,
};

// Shows the page of the address; after a link is followed, focus moves to the new content
// (on first load it stays at the top, where the skip link is the first stop).
function route(moveFocus) {
  const [name, ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  const page = pages[name] || pages.overview;
  state.route = location.hash || "#/overview";
  stopRefresh();
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.getAttribute("href") === "#/" + (pages[name] ? name : "overview")) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  page(rest.map(decodeURIComponent));
  if (moveFocus) document.getElementById("view").focus({ preventScroll: true });
}

function heading(title, ...extra) {
  document.title = title + " · Holdfast";
  return h("div", { class: "heading" }, h("h1", {}, title), ...extra);
}

function clientLink(id) {
  return h("a", { href: "#/client/" + encodeURIComponent(id) }, id);
}

function tile(label, value, detail) {
  return h("div", { class: "tile" }, h("span", { class: "label" }, label), h("span", { class: "value" }, value),
    detail ? h("span", { class: "detail" }, detail) : null);
}

async function overviewPage() {
  const tiles = h("div", { class: "tiles" });
  const listeners = h("section", { "aria-labelledby": "listeners-title" }, h("h2", { id: "listeners-title" }, "Listeners"));
  const counters = h("section", { "aria-labelledby": "counters-title" }, h("h2", { id: "counters-title" }, "Counters"));
  view(heading("Overview"), tiles, listeners, counters);
  every(state.route, async () => {
    const [board, stats, ls] = await Promise.all([api("GET", "board"), api("GET", "stats"), api("GET", "listeners")]);
    const s = stats.stats, hl = board.health || {}, id = board.identity || {};
    if (id.node || id.hostname) document.getElementById("node").textContent = id.node || id.hostname;
    showAlarms(board.alarms);
    const mem = hl.mem_total_bytes ? (100 * (1 - hl.mem_available_bytes / hl.mem_total_bytes)).toFixed(0) + "% used" : null;
    const disk = hl.data_dir_total_bytes ? bytes(hl.data_dir_free_bytes) + " free of " + bytes(hl.data_dir_total_bytes) : "–";
    tiles.replaceChildren(
      tile("Status", board.status || "–"),
      tile("Gateway uptime", duration(s.uptime_seconds)),
      tile("Connections", s["connections/count"]),
      tile("Messages in / out", s["messages/received"] + " / " + s["messages/sent"]),
      tile("Dropped", s["messages/dropped"]),
      tile("Queued", s["messages/queued"]),
      tile("CPU load", hl.load ? hl.load.map((x) => x.toFixed(2)).join(" ") : "–", "1, 5, 15 min"),
      tile("Memory", mem || "–", hl.process_rss_bytes ? "gateway " + bytes(hl.process_rss_bytes) : null),
      tile("Data disk", disk),
      tile("Temperature", hl.cpu_temp_celsius !== null && hl.cpu_temp_celsius !== undefined ? hl.cpu_temp_celsius.toFixed(1) + " °C" : "–"));
    listeners.replaceChildren(listeners.firstChild, table("Listeners", [
      { title: "Name", cell: (r) => r.name }, { title: "Address", cell: (r) => r.listen_on },
      { title: "Running", cell: (r) => (r.running ? "yes" : "no") }, { title: "Connections", cell: (r) => r.current_conn + " / " + r.max_conns },
      { title: "Accepted", cell: (r) => r.accepted }, { title: "Refused", cell: (r) => r.refused },
      { title: "Handshakes failed", cell: (r) => r.handshake_failed }], ls.listeners));
    const rows = Object.entries(s).map(([k, v]) => ({ k, v }));
    counters.replaceChildren(counters.firstChild, table("Counters", [{ title: "Counter", cell: (r) => r.k }, { title: "Value", cell: (r) => r.v }], rows));
  });
}

// The last apply, while it waits to be kept: a banner on every page with its deadline.
async function showProbation() {
  const el = document.getElementById("probation");
  let c;
  try { c = await api("GET", "config"); } catch (_) { return; }
  if (!c.probation) { el.hidden = true; el.replaceChildren(); return; }
  const by = new Date(c.probation.confirm_by * 1000);
  el.hidden = false;
  el.replaceChildren(
    h("p", {}, "The configuration applied from here runs on probation. Keep it before " + by.toLocaleTimeString() +
      ", or the gateway rolls back to the previous one and restarts."),
    h("button", { type: "button", class: "primary", onclick: async () => {
      try {
        await api("POST", "config/confirm");
        say("The configuration is kept.");
      } catch (e) { say(e.message); }
      showProbation();
    } }, "Keep this configuration"));
}

function showAlarms(alarms) {
  const el = document.getElementById("alarm");
  const list = Array.isArray(alarms) ? alarms : [];
  el.hidden = !list.length;
  el.replaceChildren(...list.map((a) => h("p", {}, typeof a === "string" ? a : JSON.stringify(a))));
}

// A searchable, paged table of one listing (`clients`, `subscriptions`, `retained`).
function pagedTable(caption, columns, text) {
  const search = h("input", { type: "search", id: "search", placeholder: "Search", "aria-label": "Search " + caption.toLowerCase() });
  const body = h("div", {});
  const pager = h("div", { class: "pager" });
  let rows = [], page = 0, truncated = false;
  const draw = () => {
    const q = search.value.trim().toLowerCase();
    const hits = q ? rows.filter((r) => text(r).toLowerCase().includes(q)) : rows;
    const pages = Math.max(1, Math.ceil(hits.length / PAGE_ROWS));
    page = Math.min(page, pages - 1);
    body.replaceChildren(table(caption, columns, hits.slice(page * PAGE_ROWS, (page + 1) * PAGE_ROWS), q ? "No match." : "Nothing here."));
    pager.replaceChildren(
      h("button", { type: "button", class: "quiet", disabled: page === 0, onclick: () => { page--; draw(); } }, "Previous"),
      h("span", {}, `Page ${page + 1} of ${pages} · ${hits.length} of ${rows.length}${truncated ? " (list cut short)" : ""}`),
      h("button", { type: "button", class: "quiet", disabled: page >= pages - 1, onclick: () => { page++; draw(); } }, "Next"));
  };
  search.addEventListener("input", () => { page = 0; draw(); });
  return {
    el: h("div", {}, h("div", { class: "toolbar" }, search), body, pager),
    set(listing) { rows = listing.rows; truncated = listing.truncated; draw(); },
  };
}

function listingPage(title, path, key, columns, text) {
  const t = pagedTable(title, columns, text);
  view(heading(title), t.el);
  every(state.route, async () => t.set((await api("GET", path))[key]));
}

async function kick(id) {
  if (!confirm(`Disconnect client "${id}"?`)) return false;
  try {
    await api("POST", "clients/" + encodeURIComponent(id) + "/kick");
    say(`Client "${id}" disconnected.`);
    return true;
  } catch (e) { say(e.message); return false; }
}

// The clients are searched and paged by the gateway (there may be tens of thousands).
function clientsPage() {
  const columns = [
    { title: "Client id", cell: (r) => clientLink(r.client_id) },
    { title: "State", cell: (r) => (r.connected ? "connected" : "offline") },
    { title: "Protocol", cell: (r) => r.proto_name || "–" },
    { title: "User", cell: (r) => r.username || "–" },
    { title: "Peer", cell: (r) => r.peer || "–" },
    { title: "Queued", cell: (r) => r.queued },
    { title: "Subscriptions", cell: (r) => r.subscriptions },
    { title: "", cell: (r) => (r.connected ? h("button", { type: "button", class: "danger", "aria-label": "Kick " + r.client_id, onclick: () => kick(r.client_id) }, "Kick") : "") },
  ];
  const search = h("input", { type: "search", id: "search", placeholder: "Client id, user or address", "aria-label": "Search clients" });
  const body = h("div", {});
  const pager = h("div", { class: "pager" });
  let page = 0;
  const load = async () => {
    const q = search.value.trim();
    const r = await api("GET", `clients?search=${encodeURIComponent(q)}&offset=${page * PAGE_ROWS}&limit=${PAGE_ROWS}`);
    const { rows, total } = r.clients;
    const pages = Math.max(1, Math.ceil(total / PAGE_ROWS));
    if (page > pages - 1) { page = pages - 1; return load(); }
    body.replaceChildren(table("Clients", columns, rows, q ? "No match." : "No clients."));
    pager.replaceChildren(
      h("button", { type: "button", class: "quiet", disabled: page === 0, onclick: () => { page--; load(); } }, "Previous"),
      h("span", {}, `Page ${page + 1} of ${pages} · ${total} client${total === 1 ? "" : "s"}${q ? " match" : ""}`),
      h("button", { type: "button", class: "quiet", disabled: page >= pages - 1, onclick: () => { page++; load(); } }, "Next"));
  };
  let typing = null;
  search.addEventListener("input", () => { page = 0; clearTimeout(typing); typing = setTimeout(() => load().catch((e) => say(e.message)), 250); });
  view(heading("Clients"), h("div", {}, h("div", { class: "toolbar" }, search), body, pager));
  every(state.route, load);
}

function clientPage([id]) {
  const body = h("div", {});
  view(heading("Client " + id, h("a", { href: "#/clients" }, "All clients")), body);
  every(state.route, async () => {
    let r;
    try { r = await api("GET", "clients/" + encodeURIComponent(id)); } catch (e) {
      body.replaceChildren(h("p", { class: "error" }, e.message));
      return;
    }
    const c = r.client || r;
    const fields = [["Connected", c.connected ? "yes" : "no"], ["Protocol", c.proto_name || "–"], ["MQTT level", c.protocol],
      ["User", c.username || "–"], ["Peer", c.peer || "–"], ["Connected at", when(c.connected_at)],
      ["Queued", c.queued], ["In flight", c.inflight], ["Subscriptions", c.subscriptions]];
    body.replaceChildren(
      h("dl", { class: "fields" }, fields.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
      c.connected ? h("button", { type: "button", class: "danger", onclick: () => kick(id) }, "Kick") : null,
      h("h2", {}, "Subscriptions"),
      table("Subscriptions of " + id, [{ title: "Filter", cell: (s) => s.filter }, { title: "QoS", cell: (s) => s.qos }], r.subscriptions || []));
  });
}

function sparkline(points, label) {
  const w = 300, hgt = 60, max = Math.max(1, ...points);
  const step = points.length > 1 ? w / (GRAPH_POINTS - 1) : 0;
  const d = points.map((p, i) => `${i ? "L" : "M"}${(i * step).toFixed(1)},${(hgt - (p / max) * (hgt - 4) - 2).toFixed(1)}`).join(" ");
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${hgt}`);
  svg.setAttribute("class", "graph");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${label}: now ${points[points.length - 1] || 0}, highest ${max} in the last ${Math.round(points.length * REFRESH_MS / 1000)} s`);
  const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
  path.setAttribute("d", d || "M0,0");
  svg.append(path);
  return svg;
}

function bridgesPage() {
  const body = h("div", {});
  view(heading("Bridges"), body);
  every(state.route, async () => {
    const { bridges } = await api("GET", "bridges");
    const now = Date.now();
    for (const b of bridges) {
      const hist = state.history[b.name] || (state.history[b.name] = []);
      const last = hist[hist.length - 1];
      const rate = last ? Math.max(0, (b.forwarded - last.forwarded) / ((now - last.t) / 1000)) : 0;
      hist.push({ t: now, queued: b.queued, forwarded: b.forwarded, rate });
      if (hist.length > GRAPH_POINTS) hist.shift();
    }
    if (!bridges.length) {
      body.replaceChildren(h("p", { class: "empty" }, "No bridges are configured ([[bridges]] in the configuration)."));
      return;
    }
    body.replaceChildren(...bridges.map((b) => {
      const hist = state.history[b.name];
      const rate = hist[hist.length - 1].rate;
      return h("section", { class: "card", "aria-labelledby": "bridge-" + b.name },
        h("h2", { id: "bridge-" + b.name }, b.name, " ", h("span", { class: "badge state-" + b.state, "data-testid": "bridge-state" }, b.state)),
        h("dl", { class: "fields" },
          h("dt", {}, "Queued"), h("dd", { "data-testid": "bridge-queued" }, b.queued + " messages, " + bytes(b.queued_bytes)),
          h("dt", {}, "Forwarded"), h("dd", {}, b.forwarded),
          h("dt", {}, "Drain rate"), h("dd", {}, rate.toFixed(0) + " msg/s"),
          h("dt", {}, "Reconnects"), h("dd", {}, b.reconnects),
          h("dt", {}, "Last error"), h("dd", {}, b.last_error || "none")),
        h("figure", {}, sparkline(hist.map((p) => p.queued), "Queue depth of " + b.name),
          h("figcaption", {}, "Queue depth, last " + Math.round(hist.length * REFRESH_MS / 1000) + " s")));
    }));
  });
}

function devicesPage() {
  const sections = [
    { path: "modbus", title: "Modbus devices", key: "devices", cols: (rows) => Object.keys(rows[0] || {}) },
    { path: "serial", title: "Serial ports", key: "ports", cols: (rows) => Object.keys(rows[0] || {}) },
    { path: "coap", title: "CoAP clients", key: "peers", cols: (rows) => Object.keys(rows[0] || {}) },
    { path: "lwm2m", title: "LwM2M endpoints", key: "endpoints", cols: (rows) => Object.keys(rows[0] || {}) },
  ];
  const boxes = sections.map((s) => h("section", { "aria-labelledby": "dev-" + s.path }, h("h2", { id: "dev-" + s.path }, s.title), h("div", {})));
  view(heading("Device gateways"), ...boxes);
  every(state.route, async () => {
    await Promise.all(sections.map(async (s, i) => {
      const box = boxes[i].lastChild;
      try {
        const r = await api("GET", s.path);
        const rows = r[s.key] || [];
        const cols = s.cols(rows).map((k) => ({ title: k, cell: (row) => (typeof row[k] === "object" && row[k] !== null ? JSON.stringify(row[k]) : row[k] ?? "–") }));
        box.replaceChildren(table(s.title, cols, rows, "None yet."));
      } catch (e) {
        if (e.status === 404) box.replaceChildren(h("p", { class: "empty" }, e.message));
        else throw e;
      }
    }));
  });
}

// ---------- configuration ----------

function configPage() {
  const editor = h("textarea", { id: "config-text", spellcheck: "false", autocapitalize: "off", wrap: "off", rows: 24, "aria-describedby": "config-help" });
  const gutter = h("div", { class: "gutter", "aria-hidden": "true" });
  const problems = h("div", { id: "problems", role: "alert" });
  const versions = h("div", {});
  const file = h("p", { id: "config-help" });
  const check = h("button", { type: "button", onclick: () => run(false) }, "Check");
  const apply = h("button", { type: "button", class: "primary", disabled: true, onclick: () => run(true) }, "Apply and restart");
  let base = null;
  const numbers = () => {
    const n = editor.value.split("\n").length;
    gutter.textContent = Array.from({ length: n }, (_, i) => i + 1).join("\n");
    gutter.scrollTop = editor.scrollTop;
  };
  editor.addEventListener("input", numbers);
  editor.addEventListener("scroll", () => { gutter.scrollTop = editor.scrollTop; });
  const goTo = (line) => {
    const lines = editor.value.split("\n");
    const start = lines.slice(0, line - 1).reduce((a, l) => a + l.length + 1, 0);
    editor.focus();
    editor.setSelectionRange(start, start + (lines[line - 1] || "").length);
    editor.scrollTop = Math.max(0, (line - 5) * parseFloat(getComputedStyle(editor).lineHeight || "18"));
  };
  const showProblems = (list) => {
    problems.replaceChildren(list.length ? h("div", { class: "problems" },
      h("h2", {}, list.length + " problem" + (list.length === 1 ? "" : "s")),
      h("ul", {}, list.map((p) => h("li", { class: "problem", "data-line": p.line ?? "" },
        p.line ? h("button", { type: "button", class: "link", onclick: () => goTo(p.line) }, "Line " + p.line) : null,
        p.line ? ": " : "", p.key ? h("code", {}, p.key) : null, p.key ? " " : "", p.message)))) : "");
  };
  async function run(doApply) {
    problems.replaceChildren();
    try {
      if (!doApply) {
        await api("POST", "config/check", { text: editor.value });
        problems.replaceChildren(h("p", { class: "ok" }, "No problems found."));
        return;
      }
      if (!confirm("Apply this configuration? The gateway restarts on it (clients reconnect). It rolls back by itself if it does not start, or if you do not keep it within a few minutes.")) return;
      await api("POST", "config/apply", { text: editor.value, base });
      restarting();
    } catch (e) {
      if (e.status === 422 && e.body && e.body.problems) showProblems(e.body.problems);
      else if (e.status !== 401) problems.replaceChildren(h("p", { class: "error" }, e.message));
    }
  }
  view(heading("Configuration"), file,
    h("div", { class: "editor" }, gutter, h("label", { for: "config-text", class: "visually-hidden" }, "Configuration (TOML)"), editor),
    h("div", { class: "toolbar" }, check, apply), problems,
    h("section", { "aria-labelledby": "versions-title" }, h("h2", { id: "versions-title" }, "Previous versions"), versions));
  api("GET", "config").then((c) => {
    editor.value = c.text;
    numbers();
    file.textContent = c.editable
      ? "Editing " + c.file + ". Check shows each mistake at its line; Apply keeps the current file as a version and restarts the gateway on the new one, which you then keep (or it rolls back)."
      : c.file ? "Editing " + c.file + " can be checked here but not applied: " + c.not_editable
        : "The gateway runs on its built-in defaults (no --config file): this is the example configuration, which can be checked but not applied.";
    apply.disabled = !c.editable;
    base = c.digest;
    versions.replaceChildren(table("Previous versions", [
      { title: "Replaced", cell: (v) => new Date(Number(v.id)).toLocaleString() },
      { title: "Size", cell: (v) => bytes(v.size) },
      { title: "", cell: (v) => h("button", { type: "button", class: "quiet", onclick: async () => {
        const r = await api("GET", "config/versions/" + v.id);
        editor.value = r.text; numbers(); showProblems([]);
        say("Version of " + new Date(Number(v.id)).toLocaleString() + " loaded into the editor; Apply to go back to it.");
      } }, "Load into editor") },
    ], c.versions, "None yet: the first Apply keeps the current file here."));
  }).catch((e) => say(e.message));
}

function restarting() {
  stopRefresh();
  state.csrf = null;
  chrome(false);
  view(h("div", { class: "card narrow" }, h("h1", {}, "Restarting…"), h("p", {}, "The gateway restarts on the new configuration. This page reconnects when it is back.")));
  const began = Date.now();
  const poll = async () => {
    try {
      const r = await fetch("/api/v1/setup", { cache: "no-store" });
      if (r.ok && Date.now() - began > 1000) {
        // The session was kept across the restart: straight back, with the banner to keep it.
        const s = await fetch("/api/v1/session", { credentials: "same-origin", cache: "no-store" });
        const csrf = s.ok ? (await s.json()).csrf : null;
        if (csrf) {
          state.csrf = csrf;
          chrome(true);
          showProbation();
          if (location.hash === "#/overview") route(true); else location.hash = "#/overview";
          say("The gateway restarted on the new configuration. Keep it (the banner at the top), or it rolls back; the Overview shows an alarm if it rolled back already.");
          return;
        }
        showLogin("The gateway restarted. Log in again and keep the new configuration (or it rolls back); the Overview shows an alarm if it rolled back already.");
        return;
      }
    } catch (_) { /* still down */ }
    if (Date.now() - began > 120000) {
      view(h("p", { class: "error" }, "The gateway has not come back after 2 minutes. If its address changed in the new configuration, open the new address."));
      return;
    }
    setTimeout(poll, 1000);
  };
  setTimeout(poll, 1000);
}

// ---------- logs and traces ----------

const LOG_LINES = 2000;

function logsPage() {
  const pre = h("pre", { id: "log", class: "log", tabindex: "0", role: "log", "aria-label": "Log lines, newest last" });
  const filter = h("input", { type: "search", id: "log-filter", placeholder: "Show lines containing…", "aria-label": "Filter log lines" });
  const pause = h("button", { type: "button", class: "quiet", "aria-pressed": "false" }, "Pause");
  const running = h("div", {});
  const files = h("div", {});
  const kind = h("select", { id: "trace-kind" }, h("option", { value: "client" }, "Client id"), h("option", { value: "topic" }, "Topic filter"), h("option", { value: "ip" }, "Address or network"));
  const value = h("input", { id: "trace-value", required: true, maxlength: 256, autocomplete: "off" });
  const form = h("form", { class: "toolbar" }, h("label", { for: "trace-kind" }, "Trace by"), kind,
    h("label", { for: "trace-value" }, "Value"), value, h("button", { type: "submit" }, "Start trace"));
  let last = 0, paused = false;
  const lines = [];
  const span = (l) => h("span", { class: /\bERROR\b/.test(l) ? "lvl-error" : /\bWARN\b/.test(l) ? "lvl-warn" : null }, l + "\n");
  const matches = (l) => !filter.value || l.toLowerCase().includes(filter.value.toLowerCase());
  // The whole list again (a new filter); new lines are appended by `add` instead.
  const draw = () => {
    pre.replaceChildren(...lines.filter(matches).map(span));
    pre.scrollTop = pre.scrollHeight;
  };
  const add = (fresh) => {
    const atEnd = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 40;
    pre.append(...fresh.filter(matches).map(span));
    while (pre.childNodes.length > LOG_LINES) pre.firstChild.remove();
    if (atEnd) pre.scrollTop = pre.scrollHeight;
  };
  filter.addEventListener("input", draw);
  pause.addEventListener("click", () => {
    paused = !paused;
    pause.textContent = paused ? "Resume" : "Pause";
    pause.setAttribute("aria-pressed", String(paused));
  });
  const loadTraces = async () => {
    const t = await api("GET", "traces");
    running.replaceChildren(table("Running traces", [
      { title: "Kind", cell: (r) => r.kind }, { title: "Value", cell: (r) => r.value },
      { title: "Lines", cell: (r) => r.lines }, { title: "Started", cell: (r) => when(r.started_at) },
      { title: "", cell: (r) => h("button", { type: "button", class: "danger", "aria-label": `Stop trace of ${r.value}`, onclick: async () => {
        await api("DELETE", `traces?kind=${r.kind}&value=${encodeURIComponent(r.value)}`); say("Trace stopped."); loadTraces();
      } }, "Stop") }], t.running, "No trace is running."));
    files.replaceChildren(table("Trace files", [
      { title: "File", cell: (f) => h("a", { href: "/api/v1/traces/files/" + encodeURIComponent(f.name), download: f.name }, f.name) },
      { title: "Size", cell: (f) => bytes(f.size) },
      { title: "", cell: (f) => h("button", { type: "button", class: "quiet", "aria-label": "Delete " + f.name, onclick: async () => {
        try { await api("DELETE", "traces/files/" + encodeURIComponent(f.name)); say("Deleted " + f.name + "."); } catch (e) { say(e.message); }
        loadTraces();
      } }, "Delete") }], t.files, "No trace files."));
  };
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await api("POST", "traces", { kind: kind.value, value: value.value.trim() });
      say("Trace started: every line about " + value.value.trim() + ", debug included, goes to its file.");
      value.value = "";
      loadTraces();
    } catch (e) { say(e.message); }
  });
  view(heading("Logs"),
    h("section", { "aria-labelledby": "tail-title" }, h("h2", { id: "tail-title" }, "Live log"), h("div", { class: "toolbar" }, filter, pause), pre),
    h("section", { "aria-labelledby": "trace-title" }, h("h2", { id: "trace-title" }, "Traces"),
      h("p", {}, "A trace writes every log line of one client, topic or address, debug level included, to a file on the board (at most 16 MiB)."),
      form, running, h("h3", {}, "Files"), files));
  loadTraces().catch((e) => say(e.message));
  every(state.route, async () => {
    if (paused) return;
    const t = await api("GET", "logs?after=" + last);
    const fresh = t.lines.map((l) => l.text);
    if (t.gap && last) fresh.unshift("… (older lines left out)");
    lines.push(...fresh);
    if (lines.length > LOG_LINES) lines.splice(0, lines.length - LOG_LINES);
    last = t.last;
    if (fresh.length) add(fresh);
  });
}

// ---------- API tokens ----------

function tokensPage() {
  const list = h("div", {});
  const made = h("div", { role: "status" });
  const name = h("input", { id: "token-name", required: true, maxlength: 64, autocomplete: "off" });
  const scope = h("select", { id: "token-scope" },
    h("option", { value: "metrics" }, "metrics: the Prometheus scrape only"),
    h("option", { value: "read", selected: true }, "read: every read but the config and trace files"),
    h("option", { value: "admin" }, "admin: everything but tokens"));
  const form = h("form", { class: "toolbar" }, h("label", { for: "token-name" }, "Name"), name,
    h("label", { for: "token-scope" }, "May do"), scope, h("button", { type: "submit" }, "Create token"));
  const load = async () => {
    const { tokens } = await api("GET", "tokens");
    list.replaceChildren(table("API tokens", [
      { title: "Name", cell: (t) => t.name }, { title: "Scope", cell: (t) => t.scope }, { title: "Id", cell: (t) => t.id },
      { title: "Created", cell: (t) => when(t.created) },
      { title: "", cell: (t) => h("button", { type: "button", class: "danger", "aria-label": "Revoke " + t.name, onclick: async () => {
        if (!confirm(`Revoke token "${t.name}"? Automation using it stops working.`)) return;
        await api("DELETE", "tokens/" + encodeURIComponent(t.id)); say("Token revoked."); load();
      } }, "Revoke") }], tokens, "No API tokens."));
  };
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const r = await api("POST", "tokens", { name: name.value, scope: scope.value });
      made.replaceChildren(h("p", {}, "Copy this token now; it is not shown again: "), h("code", { class: "secret" }, r.token));
      name.value = "";
      load();
    } catch (e) { made.replaceChildren(h("p", { class: "error" }, e.message)); }
  });
  view(heading("API tokens"), h("p", {}, "Automation sends a token as ", h("code", {}, "Authorization: Bearer <token>"), "."), form, made, list);
  load().catch((e) => say(e.message));
}

// ---------- start ----------

window.addEventListener("hashchange", () => { if (state.csrf !== null) route(true); });
document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("logout").addEventListener("click", async () => {
    try { await api("POST", "logout"); } catch (_) { /* gone anyway */ }
    state.csrf = null;
    showLogin("Logged out.");
  });
  start();
});
