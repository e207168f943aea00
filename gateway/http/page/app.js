// The monitoring page: terminals (polled), events (live over /api/stream), users (searched).
// Plain DOM, no framework, no build step; data goes into the page as text, never as HTML.
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

function when(ms) {
  return ms ? new Date(ms).toLocaleString() : "";
}

// -- terminals --------------------------------------------------------------------------------

async function refreshTerminals() {
  const { terminals } = await getJSON("/api/terminals");
  const body = document.querySelector("#terminals tbody");
  body.replaceChildren();
  for (const t of terminals) {
    const row = body.insertRow();
    row.dataset.id = t.id;
    cell(row, t.id, "num");
    cell(row, t.name);
    cell(row, t.online ? "online" : "offline", t.online ? "online" : "offline");
    cell(row, t.admission);
    cell(row, t.link);
    cell(row, t.online ? "now" : when(t.last_seen_ms));
    cell(row, [t.model, t.firmware].filter(Boolean).join(" / "));
    cell(row, t.cursor, "num");
    cell(row, t.lag, t.lag ? "num lagging" : "num");
  }
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
  row.className = classes.join(" ");
  cell(row, e.id, "num");
  cell(row, when(e.occurred_ms));
  cell(row, e.terminal_id, "num");
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
  if (e.id <= lastEventId) return; // already shown (a resumed stream replays)
  lastEventId = e.id;
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
  events.splice(0, events.length, ...page.events);
  lastEventId = events.length ? events[0].id : 0;
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

// -- users ------------------------------------------------------------------------------------

let userSearch = "";
let usersNext = null;
let syncReload;

function syncHappened() {
  // Users and cursors just changed; a burst of sync events reloads them once.
  clearTimeout(syncReload);
  syncReload = setTimeout(() => {
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
  every(2, refreshTerminals);
  every(5, refreshSyncMode);
  loadUsers(false).catch((error) => console.warn(error));
  await loadEventTypes();
  await loadRecentEvents();
  follow();
}

document.addEventListener("DOMContentLoaded", start);
