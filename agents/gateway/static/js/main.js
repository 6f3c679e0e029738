// MarketSwarm dashboard: one tab, one SSE connection (feed.js) carrying the heatmap or GEX model on
// screen and the four derived models (market mode, dealer gravity, liquidity intent, best flies).
// This module owns the tab's state (the viewer's choices, the models as they arrive, the connection),
// the controls and the frame loop; each view draws from that state (heatmap.js, gex.js, derived.js).
// What the server computes (scores, leg weights, expiry closes) comes from the server.

import { renderFlies, renderIndicators, renderIntent } from "./derived.js";
import { TabFeed } from "./feed.js";
import { $, ageText, localTime, options } from "./format.js";
import { renderGex } from "./gex.js";
import { renderHeatmap, unflash } from "./heatmap.js";
import { ColumnsModel } from "./model.js";
import { bindTip, naturalDebit } from "./tip.js";

const DERIVED = ["market_mode", "gravity", "intent", "best_flies"];
const HEATMAPS = ["single", "vertical", "butterfly"];
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
  model: new ColumnsModel(), // the heatmap or GEX model on screen
  docs: {}, // the derived models' documents, by name
  conn: "connecting", // the tab's connection: connecting | up | stalled (its store is not answering) | retry
  table: null, // the heatmap table on screen: {key, cells: Map(pos -> td)}
  flashed: [], // [td, since] of cells flashing, oldest first
  scale: { lo: 0, hi: 1, at: 0 },
  shownFlies: null, // the best flies as the table shows them
  quotes: new Map(), // "epoch|sym,sym" -> {at, quotes}: the hover's legs
  hovered: null,
};

const isDoc = () => DERIVED.includes(app.view.strategy);
const modelFeed = () => (isDoc() ? null : `${app.view.underlying}:${app.view.strategy}`);
const current = () => (isDoc() ? app.docs[app.view.strategy] || null : app.model.header);

const feed = new TabFeed(
  (name, type, body) => {
    if (name === modelFeed()) app.model.apply(type, body);
    else if (type !== "geometry" && body) app.docs[name.slice(name.indexOf(":") + 1)] = body.header;
    schedule();
  },
  (status) => setConn(status),
);

function follow() {
  const u = app.view.underlying;
  const feeds = DERIVED.map((d) => `${u}:${d}`);
  if (modelFeed()) feeds.push(modelFeed());
  feed.set(feeds);
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
  if (s === "gex") renderGex(app, activate);
  else if (s === "intent") renderIntent(app, activate);
  else if (s === "best_flies") renderFlies(app);
  else renderHeatmap(app);
  freshness();
  app.model.dirty.clear();
  if (unflash(app, performance.now())) schedule();
}

// {level: fresh | lagging | stale, text}: the one answer to "can I trust what is on screen?".
function staleness() {
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
  if (modelFeed() !== before) app.model = new ColumnsModel(); // its feed starts from a snapshot
  app.table = null;
  remember("strategy", s);
  activate("tabs", "strategy", s);
  const heatmap = HEATMAPS.includes(s);
  $("gex-view").hidden = s !== "gex";
  $("intent-view").hidden = s !== "intent";
  $("flies-view").hidden = s !== "best_flies";
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
    app.docs = {};
    app.model = new ColumnsModel();
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
  bindTip(app);
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
  const s = app.view.strategy;
  app.view.strategy = null;
  setStrategy([...HEATMAPS, "gex", ...DERIVED].includes(s) ? s : "butterfly");
}

// For tests and the curious: the tab's state as the views read it.
window.marketswarm = {
  app,
  feed,
  get state() { return { ...app.view, header: app.model.header, version: app.model.version, conn: app.conn }; },
  get derived() { return { docs: app.docs }; },
  tileAt: (p, blank = false) => app.model.tileAt(p, blank),
  staleness,
  naturalDebit,
};

init();
