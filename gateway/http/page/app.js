// The monitoring page: a grid of terminals and their table (the first 500, polled), charts of the last
// minutes (polled from /api/activity, drawn by uPlot), events (live over /api/stream), users
// (searched) and one user's detail. Plain DOM, no framework, no build step; data goes into the
// page as text, never as HTML.
"use strict";

const KEEP_EVENTS = 500;
const events = [];          // newest first
const shortNames = {};      // sync event type -> short name, used as a CSS class
let lastEventId = 0;

async function getJSON(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (className) td.className = className;
  return td;
}

const pad = (n, width = 2) => String(n).padStart(width, "0");

// Local time, short and fixed-width: the time alone today, with the date otherwise.
function when(ms) {
  if (!ms) return "";
  const t = new Date(ms);
  const time = `${pad(t.getHours())}:${pad(t.getMinutes())}:${pad(t.getSeconds())}`;
  if (t.toDateString() === new Date().toDateString()) return time;
  return `${t.getFullYear()}-${pad(t.getMonth() + 1)}-${pad(t.getDate())} ${time}`;
}

function element(tag, className, text) {
  const found = document.createElement(tag);
  if (className) found.className = className;
  if (text !== undefined) found.textContent = text;
  return found;
}

// -- terminals --------------------------------------------------------------------------------

// What a tile says and its colour: readable from across the room.
function terminalState(t) {
  if (t.admission !== "admitted") return ["waiting", t.admission === "pending" ? "pending admission" : "refused"];
  if (!t.online && t.offline_reason) return ["offline", `offline: ${t.offline_reason}`];
  if (!t.online) return ["offline", t.last_seen_ms ? `offline since ${when(t.last_seen_ms)}` : "never connected"];
  if (t.lag) return ["lagging", `${t.lag} change${t.lag === 1 ? "" : "s"} behind`];
  const differ = t.reconciliation ? t.reconciliation.differences : 0;
  if (differ) return ["online", `${differ} user${differ === 1 ? " differs" : "s differ"}`];
  return ["online", "in sync"];
}

// What the last reconciliation found: repairs made, and differences left as the rules allow, by why.
function reconciliationText(r) {
  if (!r) return ["", "not compared yet"];
  if (r.note) return ["—", r.note];
  const why = Object.entries(r.why).map(([reason, n]) => `${n} ${reason}`);
  const repaired = Object.entries(r.repaired).map(([kind, n]) => `${n} ${kind}`);
  const title = [`compared ${when(r.at_ms)}: ${r.compared} users`, ...why,
    repaired.length ? `repaired: ${repaired.join(", ")}` : "nothing to repair", `repaired since start: ${r.repaired_total}`];
  return [`${r.differences} / ${r.repaired_total}`, title.join("\n")];
}

function terminalTile(t, stateText) {
  const [state, text] = stateText || terminalState(t);
  const tile = element("div", `tile ${state}`);
  tile.dataset.id = t.id;
  tile.dataset.state = state;
  tile.title = [t.kind === "zk" ? "ZKTeco" : "", t.link, [t.model, t.firmware].filter(Boolean).join(" "), `cursor ${t.cursor}`].filter(Boolean).join(" · ");
  tile.append(element("div", String(t.id).length > 6 ? "tile-id long" : "tile-id", String(t.id)), element("div", "tile-name", t.name || " "), element("div", "tile-state", text));
  return tile;
}

// The first terminals by id: a site of thousands is not fetched whole every two seconds (the
// gateway builds each one's JSON for every request); the summary counts the whole fleet.
const TERMINALS_SHOWN = 500;

function renderGrid(terminals, fleet, more) {
  document.getElementById("terminal-grid").replaceChildren(...terminals.map((t) => terminalTile(t)));
  const shown = more ? ` (the first ${terminals.length} of ${fleet.terminals} shown)` : "";
  document.getElementById("fleet-summary").textContent = `${fleet.online} of ${fleet.admitted} terminals online${shown}`;
}

async function refreshTerminals() {
  const { terminals, fleet, more } = await getJSON(`/api/terminals?limit=${TERMINALS_SHOWN}`);
  renderGrid(terminals, fleet, more);
  const body = document.querySelector("#terminals tbody");
  body.replaceChildren();
  for (const t of terminals) {
    const row = body.insertRow();
    row.dataset.id = t.id;
    cell(row, t.id, "num");
    cell(row, t.name);
    cell(row, t.online ? "online" : t.offline_reason ? `offline: ${t.offline_reason}` : "offline", t.online ? "online" : "offline");
    cell(row, t.admission);
    cell(row, t.link);
    cell(row, t.online ? "now" : when(t.last_seen_ms));
    cell(row, [t.model, t.firmware].filter(Boolean).join(" / "));
    cell(row, t.cursor, "num");
    cell(row, t.lag, t.lag ? "num lagging" : "num");
    const [text, title] = reconciliationText(t.reconciliation);
    cell(row, text, t.reconciliation && t.reconciliation.differences ? "num lagging" : "num").title = title;
  }
}

// Addresses locked out after wrong proofs keep every terminal behind them out: say so under the tiles.
async function refreshLockouts() {
  const { lockouts } = await getJSON("/api/lockouts");
  const list = document.getElementById("lockouts");
  list.replaceChildren(...lockouts.map((l) => element("li", `lockout ${l.kind}`, l.kind === "address"
    ? `${l.address} locked out for another ${Math.round(l.remaining_s)} s after ${l.why} (gateway lockouts clear ${l.address})`
    : `terminal ${l.terminal_id} under attack for another ${Math.round(l.remaining_s)} s: ${l.why}`)));
  list.hidden = lockouts.length === 0;
}

async function refreshSyncMode() {
  document.getElementById("sync-mode").textContent = (await getJSON("/api/sync")).mode;
}

// -- events -----------------------------------------------------------------------------------

function matchesFilter(e) {
  const type = document.getElementById("event-type").value;
  const text = document.getElementById("event-text").value.trim();
  if (type === "sync" && !e.sync) return false;
  if (type && type !== "sync" && e.type !== type) return false;
  if (text && String(e.terminal_id ?? "") !== text && !(e.user_id || "").includes(text)) return false;
  return true;
}

function eventRow(e, fresh) {
  const row = document.createElement("tr");
  row.dataset.id = e.id;
  row.dataset.type = e.type;
  const classes = e.sync ? ["sync", shortNames[e.type]] : [];
  if (fresh) classes.push("fresh");
  if (e.unsaved) classes.push("unsaved");
  row.className = classes.join(" ");
  cell(row, e.unsaved ? "unsaved" : e.id, "num");  // waiting for the database: no id yet
  cell(row, when(e.occurred_ms));
  cell(row, e.terminal_id, "num");
  cell(row, e.origin);
  cell(row, e.type);
  cell(row, e.user_id);
  cell(row, e.detail);
  return row;
}

function renderEvents() {
  const shown = events.filter(matchesFilter);
  document.querySelector("#events tbody").replaceChildren(...shown.map((e) => eventRow(e, false)));
  document.getElementById("event-count").textContent = `${shown.length} of the latest ${events.length}`;
}

function addLiveEvent(e) {
  if (!e.unsaved) {
    if (e.id <= lastEventId) return; // already shown (a resumed stream replays)
    lastEventId = e.id;
  }
  events.unshift(e);
  if (events.length > KEEP_EVENTS) events.pop();
  if (matchesFilter(e)) document.querySelector("#events tbody").prepend(eventRow(e, true));
  document.getElementById("event-count").textContent = `${events.filter(matchesFilter).length} of the latest ${events.length}`;
  if (e.sync) syncHappened();
}

async function loadEventTypes() {
  const { types } = await getJSON("/api/event-types");
  const select = document.getElementById("event-type");
  for (const t of types) {
    if (t.short) shortNames[t.type] = t.short;
    const option = new Option(t.type, t.type);
    select.add(option);
  }
}

async function loadRecentEvents() {
  const page = await getJSON(`/api/events?limit=${KEEP_EVENTS}`);
  events.splice(0, events.length, ...page.unsaved, ...page.events);
  lastEventId = page.events.length ? page.events[0].id : lastEventId;
  renderEvents();
}

function follow() {
  const state = document.getElementById("stream-state");
  const source = new EventSource(`/api/stream?after=${lastEventId}`);
  source.onopen = () => { state.textContent = "live stream: connected"; state.className = "state on"; };
  source.onerror = () => { state.textContent = "live stream: reconnecting"; state.className = "state off"; };
  source.onmessage = (message) => addLiveEvent(JSON.parse(message.data));
  // Too far behind to replay: start again from the stored log.
  source.addEventListener("gap", () => { source.close(); loadRecentEvents().then(follow); });
}

// -- charts -----------------------------------------------------------------------------------

const CHART_SECONDS = 300;
const charts = {};  // figure id -> { plot, figure }
const number = new Intl.NumberFormat();

const CHART_LOOK = {
  "chart-stored": { stroke: "#2f6fd0", fill: "rgba(47, 111, 208, 0.18)", unit: "/s" },
  "chart-deliveries": { stroke: "#1f9d3a", fill: "rgba(31, 157, 58, 0.18)", unit: "/s" },
  "chart-propagation": { stroke: "#8a4fd0", fill: null, unit: " ms", points: true },
  "chart-failures": { stroke: "#c62828", fill: "rgba(198, 40, 40, 0.18)", unit: "/s" },
};

// Counts and milliseconds are whole numbers: no tick at 0.5.
const WHOLE_STEPS = [1, 2, 5].flatMap((m) => [1, 10, 100, 1000, 10000, 100000, 1000000].map((p) => m * p)).sort((a, b) => a - b);

function chartSize(figure) {
  return { width: Math.max(200, figure.querySelector(".plot").clientWidth), height: 160 };
}

function makeChart(figure) {
  const look = CHART_LOOK[figure.id];
  const series = { stroke: look.stroke, width: 2, spanGaps: false, points: { show: Boolean(look.points), size: 6, fill: look.stroke } };
  if (look.fill) series.fill = look.fill;
  const options = {
    ...chartSize(figure),
    legend: { show: false },
    cursor: { show: true, drag: { x: false, y: false } },
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(look.points ? 10 : 1, max * 1.15)] } },
    axes: [
      { stroke: "#5b6670", grid: { stroke: "#eceff2" }, ticks: { stroke: "#d5dadf" }, space: 70, size: 32,
        values: (u, ticks) => ticks.map((s) => when(s * 1000).slice(-8)) },
      { stroke: "#5b6670", grid: { stroke: "#eceff2" }, ticks: { stroke: "#d5dadf" }, size: 56, incrs: WHOLE_STEPS,
        values: (u, ticks) => ticks.map((v) => number.format(v)) },
    ],
    series: [{}, series],
  };
  return new uPlot(options, [[], []], figure.querySelector(".plot"));
}

function headline(figure, activity) {
  const key = figure.dataset.series;
  const values = activity[key];
  const totals = activity.totals;
  const strong = figure.querySelector(".headline");
  const note = figure.querySelector(".note");
  if (key === "propagation_p99_ms") {
    const p99 = totals.propagation_p99_ms;
    strong.textContent = p99 === null ? "—" : `${number.format(p99)} ms`;
    note.textContent = `${number.format(totals.changes_propagated)} keypad changes timed`;
    figure.dataset.total = totals.changes_propagated;
    return;
  }
  const recent = values.slice(-10);
  const rate = recent.reduce((a, b) => a + b, 0) / Math.max(1, recent.length);
  strong.textContent = `${rate >= 10 ? number.format(Math.round(rate)) : rate.toFixed(1)}/s`;
  note.textContent = `${number.format(totals[key])} in 5 min`;
  figure.dataset.total = totals[key];
  figure.classList.toggle("alarm", key === "sync_failures" && totals[key] > 0);
}

async function refreshCharts() {
  const activity = await getJSON(`/api/activity?seconds=${CHART_SECONDS}`);
  for (const figure of document.querySelectorAll("#charts figure")) {
    if (!charts[figure.id]) charts[figure.id] = makeChart(figure);
    charts[figure.id].setData([activity.seconds, activity[figure.dataset.series]]);
    headline(figure, activity);
  }
}

function resizeCharts() {
  for (const figure of document.querySelectorAll("#charts figure")) {
    if (charts[figure.id]) charts[figure.id].setSize(chartSize(figure));
  }
}

// -- users ------------------------------------------------------------------------------------

let userSearch = "";
let usersNext = null;
let syncReload = null;

function syncHappened() {
  // Users and cursors just changed; a burst of sync events reloads them once, and a storm every
  // half second (not once it is over: a debounce would starve the lists while events keep coming).
  if (syncReload !== null) return;
  syncReload = setTimeout(() => {
    syncReload = null;
    loadUsers(false).catch((error) => console.warn(error));
    refreshTerminals().catch((error) => console.warn(error));
  }, 500);
}

async function loadUsers(append) {
  const query = new URLSearchParams({ limit: "50" });
  if (userSearch) query.set("search", userSearch);
  if (append && usersNext) query.set("after", usersNext);
  const page = await getJSON(`/api/users?${query}`);
  const body = document.querySelector("#users tbody");
  if (!append) body.replaceChildren();
  for (const u of page.users) {
    const row = body.insertRow();
    row.dataset.id = u.user_id;
    row.tabIndex = 0;
    cell(row, u.user_id);
    cell(row, u.name);
    cell(row, u.access_groups.join(", "));
    cell(row, u.cards.join(", "));
    cell(row, u.fingerprints, "num");
    cell(row, u.faces, "num");
    cell(row, u.has_pin ? "yes" : "");
    cell(row, u.disabled ? "yes" : "");
  }
  usersNext = page.next;
  document.getElementById("users-more").hidden = !page.more;
}

// -- one user ---------------------------------------------------------------------------------

let shownUser = null;

function credentials(u) {
  return [
    ["Name", u.name || "—"],
    ["Access groups", u.access_groups.join(", ") || "—"],
    ["Cards", u.cards.length ? u.cards.join(", ") : "none"],
    ["Fingerprints", String(u.fingerprints)],
    ["Faces", String(u.faces)],
    ["PIN", u.has_pin ? "set" : "none"],
    ["Photo", u.has_photo ? "yes" : "none"],
    ["Disabled", u.disabled ? "yes" : "no"],
    ["Changed", when(u.updated_ms)],
  ];
}

function holderTile(t) {
  let state = ["holds", "holds it"];
  if (!t.targeted) state = ["waiting", "not for this terminal"];
  else if (!t.holds) state = [t.online ? "lagging" : "offline", t.online ? "not yet" : "not yet (offline)"];
  return terminalTile(t, state);
}

function givenBy(entry) {
  if (!entry.source) return "before the history";
  return entry.terminal_id === null ? entry.source : `${entry.source} ${entry.terminal_id}`;
}

function plain(value) {
  if (value === null || value === undefined) return "";
  if (Array.isArray(value)) return value.join(", ");
  if (typeof value === "object") return `${when(value.start * 1000)} – ${when(value.end * 1000)}`;
  return String(value);
}

function provenanceRows(fields) {
  return fields.map((f) => {
    const row = document.createElement("tr");
    for (const text of [f.field, plain(f.value), givenBy(f), when(f.at_ms), f.rule || ""]) cell(row, text);
    return row;
  });
}

const HISTORY_SHOWN = 200;  // the newest entries; `gateway users history` prints them all

function historyRows(entries, rules) {
  const rows = [];
  for (const entry of entries.slice(-HISTORY_SHOWN).reverse()) {
    entry.changes.forEach((c, i) => {
      const row = document.createElement("tr");
      row.className = c.outcome;
      const head = i === 0 ? [entry.version === null ? "—" : String(entry.version), when(entry.at_ms), givenBy(entry)] : ["", "", ""];
      for (const text of [...head, c.field, c.outcome, plain(c.old), plain(c.new), c.rule]) cell(row, text);
      row.lastChild.title = rules[c.rule] || "";
      rows.push(row);
    });
  }
  return rows;
}

async function showUser(userId) {
  const path = `/api/users/${encodeURIComponent(userId)}`;
  const [user, holders, given, history] = await Promise.all(
    [getJSON(path), getJSON(`${path}/terminals`), getJSON(`${path}/provenance`), getJSON(`${path}/history`)]);
  document.querySelector("#user-provenance tbody").replaceChildren(...provenanceRows(given.fields));
  document.querySelector("#user-history tbody").replaceChildren(...historyRows(history.history, history.rules));
  document.getElementById("user-history-count").textContent =
    `${history.history.length}${history.more ? "+" : ""} entries${history.history.length > HISTORY_SHOWN ? `, newest ${HISTORY_SHOWN} shown` : ""}`;
  shownUser = userId;
  document.getElementById("user-title").textContent = `${user.user_id}${user.name ? ` · ${user.name}` : ""}`;
  document.getElementById("user-credentials").replaceChildren(
    ...credentials(user).flatMap(([term, value]) => [element("dt", "", term), element("dd", "", value)]));
  const holding = holders.terminals.filter((t) => t.holds).length;
  document.getElementById("user-version").textContent =
    `${holding} of ${holders.terminals.filter((t) => t.targeted).length} · version ${holders.change_seq} · ${holders.sync_mode}`;
  document.getElementById("user-holders").replaceChildren(...holders.terminals.map(holderTile));
  const dialog = document.getElementById("user-detail");
  if (!dialog.open) dialog.showModal();
}

function refreshShownUser() {
  if (shownUser && document.getElementById("user-detail").open) return showUser(shownUser);
  return Promise.resolve();
}

// -- start ------------------------------------------------------------------------------------

function every(seconds, refresh) {
  const run = () => refresh().catch((error) => console.warn(error));
  run();
  setInterval(run, seconds * 1000);
}

async function start() {
  document.getElementById("event-type").addEventListener("change", renderEvents);
  document.getElementById("event-text").addEventListener("input", renderEvents);
  let typing;
  document.getElementById("user-search").addEventListener("input", (event) => {
    clearTimeout(typing);
    typing = setTimeout(() => { userSearch = event.target.value.trim(); loadUsers(false); }, 250);
  });
  document.getElementById("users-more").addEventListener("click", () => loadUsers(true));
  const usersBody = document.querySelector("#users tbody");
  const openRow = (event) => {
    const row = event.target.closest("tr[data-id]");
    if (row) showUser(row.dataset.id).catch((error) => console.warn(error));
  };
  usersBody.addEventListener("click", openRow);
  usersBody.addEventListener("keydown", (event) => { if (event.key === "Enter") openRow(event); });
  document.getElementById("user-close").addEventListener("click", () => document.getElementById("user-detail").close());
  document.getElementById("user-detail").addEventListener("close", () => { shownUser = null; });
  window.addEventListener("resize", resizeCharts);
  every(2, refreshTerminals);
  every(2, refreshCharts);
  every(2, refreshShownUser);
  every(5, refreshSyncMode);
  every(5, refreshLockouts);
  loadUsers(false).catch((error) => console.warn(error));
  await loadEventTypes();
  await loadRecentEvents();
  follow();
}

document.addEventListener("DOMContentLoaded", start);
