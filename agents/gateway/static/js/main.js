// MarketSwarm dashboard: one tab, one SSE connection (feed.js) carrying the heatmap or GEX model on
// screen and the four derived models (market mode, dealer gravity, liquidity intent, best flies), and
// on the Day view the level series. The scrubber shows a past moment: every view draws the models as
// they stood then (history.js, REST ?at=) while the live ones keep arriving underneath; Live returns.
// This module owns the tab's state (the viewer's choices, the models as they arrive, the connection),
// the controls and the frame loop; each view draws from that state (heatmap.js, gex.js, derived.js).
// What the server computes (scores, leg weights, expiry closes) comes from the server.

import { ALERT_FEEDS, AlertLog, timedId } from "./alerts.js";
import { renderFlies, renderIndicators, renderIntent } from "./derived.js";
import { TabFeed } from "./feed.js";
import { drawDayChart, hideDayTip } from "./charts.js";
import { $, ageText, localTime, options } from "./format.js";
import { DayHistory, LEVEL_MODELS, loadPast } from "./history.js";
import { renderGex } from "./gex.js";
import { renderHeatmap, unflash } from "./heatmap.js";
import { ColumnsModel } from "./model.js";
import { RiskPanel } from "./risk.js";
import { bindTip } from "./tip.js";

const DERIVED = ["market_mode", "gravity", "intent", "best_flies"];
const HEATMAPS = ["single", "vertical", "butterfly"];
const MINUTE_MS = 60000;
const DAY_DRAW_MS = 1000; // the Day chart is redrawn at most this often while points arrive
// One notion of freshness for every view: the age of the model's newest event (wall clock minus
// as-of), the connection, and the model's own stale flag. The pill, the cells and the cards show it.
const FRESH_S = 5, STALE_S = 60;

const stored = (k, d) => localStorage.getItem("ms." + k) || d;
const remember = (k, v) => localStorage.setItem("ms." + k, v);

const app = {
  view: {
    underlying: stored("underlying", "SPX"),
    strategy: stored("strategy", "butterfly"),
    expiry: null,
    side: stored("side", "call"),
    colorBy: stored("colorBy", "value"),
    flowWindow: stored("flowWindow", "day"),
    gexMode: stored("gexMode", "strike"), // strike | expiry | matrix
    gexExpiry: "all", // all | 0dte | an expiry of the strike x expiry matrix
    focus: null, // a tile to show once the heatmap is drawn: {strike, width, scrolled}
  },
  model: null, // the heatmap or GEX model on screen: the live one, or a past one (scrubber)
  docs: null, // the derived models' documents on screen, by name
  past: null, // {t, model, docs}: the moment the scrubber shows; null: live
  day: new DayHistory(), // the Day view's rows
  alerts: new AlertLog(), // the alerts of the underlying on screen
  conn: "connecting", // the tab's connection: connecting | up | stalled (its store is not answering) | retry
  table: null, // the heatmap table on screen: {key, cells: Map(pos -> td)}
  flashed: [], // [td, since] of cells flashing, oldest first
  scale: { lo: 0, hi: 1, at: 0 },
  shownFlies: null, // the best flies as the table shows them
  quotes: new Map(), // "epoch|sym,sym" -> {at, quotes}: the hover's legs
  hovered: null,
};

const live = { model: new ColumnsModel(), docs: {} }; // what the feeds keep current
app.model = live.model;
app.docs = live.docs;

const isDoc = () => DERIVED.includes(app.view.strategy) || app.view.strategy === "day";
const modelFeed = () => (isDoc() ? null : `${app.view.underlying}:${app.view.strategy}`);
const current = () => (app.view.strategy === "day" ? app.docs.market_mode || null : isDoc() ? app.docs[app.view.strategy] || null : app.model.header);

const feed = new TabFeed(
  (name, type, body) => {
    if (type === "level") { app.day.add(body); dayChanged(); return; }
    if (type === "alert") { app.alerts.add(body); return; }
    if (name === modelFeed()) live.model.apply(type, body);
    else if (type !== "geometry" && body) live.docs[name.slice(name.indexOf(":") + 1)] = body.header;
    if (!app.past) schedule();
  },
  (status) => setConn(status),
);

function follow() {
  const u = app.view.underlying;
  const feeds = DERIVED.map((d) => `${u}:${d}`);
  if (modelFeed()) feeds.push(modelFeed());
  if (app.view.strategy === "day" && app.day.ready) feeds.push(...levelFeeds());
  if (app.alerts.u === u && alertsReady) feeds.push(...ALERT_FEEDS.map((a) => `${u}:${a}`));
  feed.set(feeds);
}

// The alerts: today's from REST, then a feed per alerts stream after the newest it held when they were
// read, so none fired in between is missed.
let alertsReady = false;
function openAlerts() {
  const u = app.view.underlying, log = app.alerts;
  alertsReady = false;
  return log.load(u).then(() => {
    if (log.u !== u || u !== app.view.underlying) return;
    for (const a of ALERT_FEEDS) feed.versions.set(`${u}:${a}`, timedId(log.last[`${u}:${a}`] || "0-0"));
    alertsReady = true;
    if (app.view.strategy) follow(); // at start, the first connection carries them (init)
  });
}

// --- the Day view and the scrubber ------------------------------------------------------------

const levelFeeds = () => LEVEL_MODELS.map((m) => `${app.view.underlying}:levels.${m}`);

// The Day view: today's rows from REST, then the level feeds from the last of them on.
function openDay() {
  const day = app.day;
  day.load(app.view.underlying).then(() => {
    if (day !== app.day) return;
    for (const f of levelFeeds()) if (!feed.versions.has(f)) feed.versions.set(f, day.span ? day.span.last : 0);
    follow();
    scrubRange();
    schedule();
  });
}

let dayDrawn = 0, dayTimer = null;
function dayChanged() {
  scrubRange();
  if (app.view.strategy !== "day" || dayTimer) return;
  dayTimer = setTimeout(() => { dayTimer = null; schedule(); }, Math.max(0, DAY_DRAW_MS - (performance.now() - dayDrawn)));
}

function renderDay() {
  dayDrawn = performance.now();
  const drawn = drawDayChart(app.day.rows);
  $("day-empty").hidden = drawn || app.day.loading === null;
}

// The scrubber spans the day of the newest data: from its first level point to the newest as-of time.
function scrubRange() {
  const el = $("scrub"), h = live.model.header || live.docs.market_mode;
  const newest = Math.max(h && h.asof_ns ? Math.floor(h.asof_ns / 1e6) : 0, app.day.span ? app.day.span.last : 0);
  if (!newest) return;
  const first = app.day.span ? Math.max(app.day.span.first, newest - 86400000) : newest - 3600000;
  el.min = String(Math.floor(first / MINUTE_MS) * MINUTE_MS);
  el.max = String(newest);
  if (!app.past && !scrubbing) el.value = el.max;
}

let pastSeq = 0, scrubbing = false; // scrubbing: the viewer is moving the scrubber (not yet settled)
async function showPast(t) {
  const seq = ++pastSeq, v = app.view;
  const past = await loadPast(v.underlying, v.strategy, modelFeed() !== null, DERIVED, t);
  if (seq !== pastSeq) return; // a newer move of the scrubber won
  app.past = past;
  app.model = past.model;
  app.docs = past.docs;
  app.table = null;
  $("scrub").value = String(t);
  const when = $("when");
  when.textContent = `as of ${localTime(t * 1e6).slice(11, 16)} (history)`;
  when.className = "pill history";
  $("live").hidden = false;
  schedule();
}

function goLive() {
  pastSeq++;
  app.past = null;
  app.model = live.model;
  app.docs = live.docs;
  app.table = null;
  $("when").textContent = "live";
  $("when").className = "pill up";
  $("live").hidden = true;
  scrubRange();
  schedule();
}

// Scrub to t (epoch ms): the newest second or later is live.
function scrubTo(t) {
  scrubbing = false;
  if (t >= Number($("scrub").max) - 1000) goLive();
  else showPast(t);
}

function bindScrubber() {
  let timer = null;
  $("scrub").addEventListener("input", (e) => {
    clearTimeout(timer);
    scrubbing = true;
    const t = Number(e.target.value);
    timer = setTimeout(() => scrubTo(t), 120);
  });
  $("live").onclick = goLive;
  document.addEventListener("keydown", (e) => {
    if (e.key !== "ArrowLeft" && e.key !== "ArrowRight") return;
    const el = document.activeElement;
    if (el && el !== $("scrub") && ["INPUT", "SELECT", "TEXTAREA"].includes(el.tagName)) return;
    e.preventDefault();
    const now = app.past ? app.past.t : Number($("scrub").max);
    // The minute boundary before (or after) the moment shown.
    scrubTo(e.key === "ArrowLeft" ? Math.floor((now - 1) / MINUTE_MS) * MINUTE_MS : (Math.floor(now / MINUTE_MS) + 1) * MINUTE_MS);
  });
}

const CONN_TEXT = { up: "live", connecting: "connecting", retry: "reconnecting", stalled: "store stalled" };

function setConn(status) {
  app.conn = status === "up" || status === "stalled" ? status : app.conn === "connecting" ? "connecting" : "retry";
  const c = $("conn");
  c.className = "pill " + (app.conn === "up" ? "up" : "retry");
  c.textContent = CONN_TEXT[app.conn];
  c.title = app.conn === "stalled" ? "the gateway's store is not answering: the screen holds its last data and resumes by itself" : "";
  freshness();
}

let pending = false;
function schedule() { if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; render(); }); } }

function activate(groupId, attr, value) {
  for (const b of document.querySelectorAll(`#${groupId} button`)) b.classList.toggle("active", b.dataset[attr] === value);
}

function render() {
  const h = current(), s = app.view.strategy;
  $("version").textContent = h ? h.version : "-";
  $("spot").textContent = h && h.spot ? Number(h.spot).toFixed(2) : "-";
  $("delayed").hidden = !(h && h.delayed);
  $("asof").textContent = h && h.asof ? localTime(h.asof_ns) : "-";
  renderIndicators(app.docs);
  if (!app.past) scrubRange(); // the scrubber's right end follows the newest data
  if (s === "day") renderDay();
  else if (s === "gex") renderGex(app, activate);
  else if (s === "intent") renderIntent(app, activate);
  else if (s === "best_flies") renderFlies(app);
  else renderHeatmap(app);
  freshness();
  app.model.dirty.clear();
  if (unflash(app, performance.now())) schedule();
}

// {level: fresh | lagging | stale, text}: the one answer to "can I trust what is on screen?".
function staleness() {
  if (app.past) return { level: "history", text: "history" };
  const h = current();
  if (!h || !h.asof_ns) return { level: "stale", text: app.conn === "up" ? "no data yet" : "no data" };
  const age = Math.max(0, Date.now() / 1000 - h.asof_ns / 1e9); // event time ahead of this clock: 0, never negative
  const old = ageText(age);
  if (app.conn !== "up") return { level: "stale", text: `${CONN_TEXT[app.conn]} · ${old}` };
  if (h.stale) return { level: "stale", text: `chain data stale · ${old}` };
  return { level: age < FRESH_S ? "fresh" : age < STALE_S ? "lagging" : "stale", text: old };
}

function freshness() {
  const f = staleness(), el = $("fresh");
  el.textContent = f.text;
  el.className = "pill " + f.level;
  el.title = `fresh under ${FRESH_S} s, lagging under ${STALE_S} s, stale beyond, when disconnected, or when the chain data is stale: the cells dim with it`;
  document.body.dataset.fresh = f.level;
  const card = document.querySelector("#gex-cards .fresh-card .v");
  if (card) { card.textContent = f.level; card.className = "v " + (f.level === "fresh" ? "pos" : f.level === "stale" ? "neg" : ""); }
}

function setStrategy(s) {
  const before = modelFeed();
  app.view.strategy = s;
  if (modelFeed() !== before) live.model = new ColumnsModel(); // its feed starts from a snapshot
  if (!app.past) app.model = live.model;
  app.table = null;
  remember("strategy", s);
  activate("tabs", "strategy", s);
  const heatmap = HEATMAPS.includes(s);
  $("gex-view").hidden = s !== "gex";
  $("intent-view").hidden = s !== "intent";
  $("flies-view").hidden = s !== "best_flies";
  if (s !== "day") hideDayTip();
  $("day-view").hidden = s !== "day";
  if (s === "day") openDay();
  if (app.past) showPast(app.past.t); // the past moment, for this view
  $("heatmap-view").hidden = !heatmap;
  for (const el of document.querySelectorAll(".hm-only")) el.style.visibility = heatmap ? "visible" : "hidden";
  follow();
  schedule();
}

function openFly(f) {
  app.view.expiry = f.expiry;
  app.view.side = f.side;
  remember("side", f.side);
  activate("side", "side", f.side);
  app.view.focus = { strike: f.strike, width: f.width, scrolled: false };
  setStrategy("butterfly");
}

function bind() {
  const v = app.view;
  $("underlying").onchange = (e) => {
    v.underlying = e.target.value;
    remember("underlying", v.underlying);
    live.docs = {};
    live.model = new ColumnsModel();
    app.day = new DayHistory();
    openAlerts();
    goLive();
    setStrategy(v.strategy); // every feed changes: each starts from a snapshot
  };
  for (const b of document.querySelectorAll("#flow-window button")) b.onclick = () => { v.flowWindow = b.dataset.window; remember("flowWindow", v.flowWindow); schedule(); };
  $("flies").querySelector("tbody").addEventListener("click", (e) => {
    const tr = e.target.closest("tr[data-i]");
    if (tr && app.shownFlies) openFly(app.shownFlies[Number(tr.dataset.i)]);
  });
  for (const b of document.querySelectorAll("#tabs button")) b.onclick = () => { v.focus = null; setStrategy(b.dataset.strategy); };
  for (const b of document.querySelectorAll("#side button")) b.onclick = () => { v.focus = null; v.side = b.dataset.side; remember("side", v.side); activate("side", "side", v.side); schedule(); };
  for (const b of document.querySelectorAll("#colorby button")) b.onclick = () => { v.colorBy = b.dataset.color; remember("colorBy", v.colorBy); activate("colorby", "color", v.colorBy); schedule(); };
  $("expiry").onchange = (e) => { v.expiry = e.target.value; v.focus = null; schedule(); };
  for (const b of document.querySelectorAll("#gex-mode button")) b.onclick = () => { v.gexMode = b.dataset.gexmode; remember("gexMode", v.gexMode); schedule(); };
  $("gex-expiry").onchange = (e) => { v.gexExpiry = e.target.value; schedule(); };
  activate("side", "side", v.side);
  activate("colorby", "color", v.colorBy);
  $("alerts-btn").onclick = () => app.alerts.togglePanel();
  $("notify").onclick = () => app.alerts.toggleNotify();
  bindTip(app);
  app.risk = new RiskPanel(app);
  $("heatmap").addEventListener("click", (e) => {
    const td = e.target.closest("td[data-pos]");
    if (td && !app.past) app.risk.open(Number(td.dataset.pos));
  });
  bindScrubber();
  setInterval(freshness, 1000);
}

async function init() {
  let list = [];
  try { list = await (await fetch("/api/underlyings", { credentials: "same-origin" })).json(); } catch (e) { list = []; }
  if (!list.length) list = [app.view.underlying];
  if (!list.includes(app.view.underlying)) app.view.underlying = list[0];
  $("underlying").innerHTML = options(list);
  $("underlying").value = app.view.underlying;
  bind();
  await openAlerts(); // before the first connection, which then carries the alerts feeds too
  const s = app.view.strategy;
  app.view.strategy = null;
  setStrategy([...HEATMAPS, "gex", ...DERIVED, "day"].includes(s) ? s : "butterfly");
  app.day.load(app.view.underlying).then(scrubRange); // the scrubber's range
}

// For tests and the curious: the tab's state as the views read it.
window.marketswarm = {
  app,
  feed,
  get state() { return { ...app.view, header: app.model.header, version: app.model.version, conn: app.conn }; },
  get derived() { return { docs: app.docs }; },
  tileAt: (p, blank = false) => app.model.tileAt(p, blank),
  staleness,
  get risk() { return app.risk.shown; },
  get history() { return { past: app.past ? app.past.t : null, rows: app.day.rows.length }; },
  get alerts() { return { items: app.alerts.items, notify: app.alerts.notify, feeds: feed.feeds }; },
};

init();
