// MarketSwarm dashboard: a live heatmap / GEX view fed by Server-Sent Events of columns, the derived
// models (market mode, dealer gravity, liquidity intent, best butterflies) as documents.
// `geometry` (the epoch's labels, once), `snapshot` (every position's numbers), then `diff` events
// (changed positions as gaps, their numbers, contracts' quote times). The model lives in typed arrays
// indexed by position; a diff marks its positions dirty and the next frame repaints only those cells.
// Charts (GEX, intent map) are charts.js, on the vendored ECharts; the heatmap stays a plain table.
"use strict";

const $ = (id) => document.getElementById(id);
const VIRIDIS = ["#440154", "#482475", "#414487", "#355f8d", "#2a788e", "#21918c", "#22a884", "#44bf70", "#7ad151", "#bddf26", "#fde725"];
const SCALE_EVERY_MS = 2000; // the colour scale (5th..95th percentile) is recomputed at most this often
const FLASH_MS = 400;
const DERIVED = ["market_mode", "gravity", "intent", "best_flies"]; // each followed over its own SSE feed
// One notion of freshness for every view: the age of the model's newest event (wall clock minus
// as-of), the connection, and the model's own stale flag. The pill, the cells and the cards show it.
const FRESH_S = 5, STALE_S = 60;
const WEIGHTS = { single: [1], vertical: [1, -1], butterfly: [1, -2, 1] }; // legs, as agents/calc/grid.py builds them
const CLOSE_MIN_ET = 16 * 60; // an expiry's close, minutes after midnight New York (PM-settled)
const QUOTES_TTL_MS = 1500; // the hover's legs' quotes are re-fetched at most this often
const NY = new Intl.DateTimeFormat("en-CA", { timeZone: "America/New_York", year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", hourCycle: "h23" });

const state = {
  underlying: localStorage.getItem("ms.underlying") || "SPX",
  strategy: localStorage.getItem("ms.strategy") || "butterfly",
  expiry: null,
  side: localStorage.getItem("ms.side") || "call",
  colorBy: localStorage.getItem("ms.colorBy") || "value",
  geom: null, // the geometry JSON, with typed arrays
  k: 1,
  vals: new Float64Array(0), // size * k; NaN = absent
  cts: new Float64Array(0), // per contract: quote time, epoch ms (display only)
  header: null,
  version: null,
  source: null,
  dirty: new Set(), // positions changed since the last frame
  view: null, // the table on screen: {key, series, cells: Map(pos -> td)}
  flashed: [], // [td, since] of cells flashing, oldest first
  scale: { lo: 0, hi: 1, at: 0 },
  flowWindow: localStorage.getItem("ms.flowWindow") || "day",
  focus: null, // a tile to show once the heatmap is drawn: {expiry, side, strike, width}
  shownFlies: null, // the best flies as the table shows them
  conn: "down", // the connection of the view on screen: up | retry | down
  gexMode: localStorage.getItem("ms.gexMode") || "strike", // strike | expiry | matrix
  gexExpiry: "all", // all | 0dte | an expiry of the strike x expiry matrix
  quotes: new Map(), // "epoch|sym,sym" -> {at, quotes}: the hover's legs
};
// The derived models: the whole document arrives as the header of each snapshot and diff.
const derived = { sources: {}, docs: {} };

function color(t) {
  const x = Math.max(0, Math.min(1, t)) * (VIRIDIS.length - 1);
  const i = Math.floor(x);
  const j = Math.min(VIRIDIS.length - 1, i + 1);
  const a = hex(VIRIDIS[i]), b = hex(VIRIDIS[j]), f = x - i;
  return `rgb(${a.map((v, k) => Math.round(v + (b[k] - v) * f)).join(",")})`;
}
function hex(h) { return [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16)); }
function fmt(v, d = 2) { return v === null || v === undefined || Number.isNaN(v) ? "-" : Number(v).toFixed(d); }
function money(v) {
  if (v === null || v === undefined) return "-";
  const a = Math.abs(v);
  const s = a >= 1e9 ? (a / 1e9).toFixed(2) + "B" : a >= 1e6 ? (a / 1e6).toFixed(1) + "M" : a.toFixed(0);
  return (v < 0 ? "-$" : "$") + s;
}
function strikeLabel(k) { return Number.isInteger(k) ? String(k) : k.toFixed(2); }
// numpy's rint: halves to even (Math.round takes them up), so scores match the REST model's exactly.
function rint(x) { const r = Math.round(x); return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r; }
// Reward/risk of a debit structure, as agents/publish/assemble.py `scores` computes it.
function score(v, w) { return w > 0 && v > 0 ? rint(((w - v) / v) * 1e4) / 1e4 : null; }

// --- the model, by position -------------------------------------------------------------------

function takeGeometry(g) {
  g.seriesOf = Int16Array.from(g.series_of);
  g.strikeK = Float64Array.from(g.strike);
  g.widthW = Float64Array.from(g.width);
  g.legPos = Int32Array.from(g.legs);
  g.size = g.strikeK.length;
  state.geom = g;
  reset(state.k); // numbers for the new grid follow (a snapshot, or the diff that starts its epoch)
}

function reset(k) {
  const g = state.geom;
  state.k = k;
  state.vals = new Float64Array((g ? g.size : 0) * k).fill(NaN);
  state.cts = new Float64Array(g ? g.contracts.length : 0);
  state.view = null;
}

function setTimes(cpos, ago, asofNs) {
  const asofMs = asofNs / 1e6;
  for (let i = 0; i < cpos.length; i++) state.cts[cpos[i]] = ago[i] === null ? 0 : asofMs - ago[i] / 1e6;
}

function onSnapshot(s) {
  reset(s.k);
  const v = s.vals;
  for (let i = 0; i < v.length; i++) state.vals[i] = v[i] === null ? NaN : v[i];
  setTimes(s.cts_ago_ns.map((_, i) => i), s.cts_ago_ns, s.header.asof_ns);
  state.header = s.header;
  state.version = s.version;
  schedule();
}

function onDiff(d) {
  if (d.reset) reset(d.k);
  const k = d.k;
  let p = 0;
  for (let i = 0; i < d.pos.length; i++) {
    p += d.pos[i];
    for (let j = 0; j < k; j++) { const x = d.vals[i * k + j]; state.vals[p * k + j] = x === null ? NaN : x; }
    state.dirty.add(p);
  }
  let c = 0;
  const cpos = d.cpos.map((gap) => (c += gap));
  setTimes(cpos, d.cts_ago_ns, d.asof_ns);
  state.header = d.header;
  state.version = d.version;
  schedule();
}

function tileAt(p, blank = false) {
  const g = state.geom, v = state.vals[p * state.k];
  if (!g || (Number.isNaN(v) && !blank)) return null;
  const s = g.series[g.seriesOf[p]], n = g.n_legs;
  const legs = [], ts = [];
  for (let j = 0; j < n; j++) { const c = g.legPos[p * n + j]; legs.push(g.contracts[c]); ts.push(state.cts[c]); }
  const value = Number.isNaN(v) ? null : v;
  return { expiry: s.expiry, side: s.side, strike: g.strikeK[p], width: g.widthW[p], value, score: value === null ? null : score(v, g.widthW[p]), legs, ts };
}

// An expiry is over once its close (16:00 New York) is behind the model's as-of time: a replay of an
// old chain hides the expiries that had expired by then, as live does at the close.
function nyParts(ms) {
  const p = Object.fromEntries(NY.formatToParts(new Date(ms)).map((x) => [x.type, x.value]));
  return { date: `${p.year}-${p.month}-${p.day}`, minutes: Number(p.hour) * 60 + Number(p.minute) };
}
function expired(expiry, asofNs) {
  if (!asofNs) return false;
  const t = nyParts(asofNs / 1e6);
  return expiry < t.date || (expiry === t.date && t.minutes >= CLOSE_MIN_ET);
}

// --- connection ------------------------------------------------------------------------------

function follow() {
  for (const es of Object.values(derived.sources)) es.close();
  derived.sources = {}; derived.docs = {};
  for (const name of DERIVED) {
    const es = new EventSource(`/sse/models/${name}?underlying=${encodeURIComponent(state.underlying)}`, { withCredentials: true });
    const take = (e) => { derived.docs[name] = JSON.parse(e.data).header; schedule(); };
    es.addEventListener("snapshot", take);
    es.addEventListener("diff", take);
    es.onopen = es.onerror = () => schedule();
    derived.sources[name] = es;
  }
}

function isDoc() { return DERIVED.includes(state.strategy); }
function current() { return isDoc() ? derived.docs[state.strategy] || null : state.header; }

function connect() {
  if (state.source) state.source.close();
  state.source = null;
  state.geom = null; state.header = null; state.version = null; state.view = null;
  state.vals = new Float64Array(0);
  if (isDoc()) { schedule(); return; } // its feed is one of the derived ones
  setConn("retry", "connecting");
  const url = state.strategy === "gex"
    ? `/sse/gex?underlying=${encodeURIComponent(state.underlying)}`
    : `/sse/heatmap/${state.strategy}?underlying=${encodeURIComponent(state.underlying)}`;
  const es = new EventSource(url, { withCredentials: true });
  state.source = es;
  es.onopen = () => setConn("up", "live");
  es.onerror = () => setConn(es.readyState === EventSource.CLOSED ? "down" : "retry", es.readyState === EventSource.CLOSED ? "disconnected" : "reconnecting");
  es.addEventListener("geometry", (e) => takeGeometry(JSON.parse(e.data)));
  es.addEventListener("snapshot", (e) => onSnapshot(JSON.parse(e.data)));
  es.addEventListener("diff", (e) => onDiff(JSON.parse(e.data)));
}
function setConn(cls, text) { state.conn = cls; const c = $("conn"); c.className = "pill " + cls; c.textContent = text; freshness(); }

let pending = false;
function schedule() { if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; render(); }); } }

// --- rendering -------------------------------------------------------------------------------

function render() {
  const h = current();
  if (isDoc()) {
    const es = derived.sources[state.strategy];
    if (es) setConn(es.readyState === 1 ? "up" : es.readyState === 2 ? "down" : "retry", es.readyState === 1 ? "live" : es.readyState === 2 ? "disconnected" : "connecting");
  }
  $("version").textContent = isDoc() ? (h ? h.version : "-") : state.version ?? "-";
  $("spot").textContent = h && h.spot ? fmt(h.spot, 2) : "-";
  $("delayed").hidden = !(h && h.delayed);
  $("asof").textContent = h && h.asof ? localTime(h.asof_ns) : "-";
  freshness();
  renderIndicators();
  if (state.strategy === "gex") renderGex();
  else if (state.strategy === "intent") renderIntent();
  else if (state.strategy === "best_flies") renderFlies();
  else renderHeatmap();
  state.dirty.clear();
  unflash(performance.now());
}

function localTime(ns) {
  const d = new Date(ns / 1e6), pad = (x, n = 2) => String(x).padStart(n, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}
function ageText(age) {
  return age < 90 ? `${age.toFixed(1)}s old` : age < 5400 ? `${(age / 60).toFixed(0)}m old` : age < 172800 ? `${(age / 3600).toFixed(1)}h old` : `${(age / 86400).toFixed(0)}d old`;
}

// {level: fresh | lagging | stale, text}: the one answer to "can I trust what is on screen?".
function staleness() {
  const h = current();
  if (!h || !h.asof_ns) return { level: "stale", text: state.conn === "up" ? "no data yet" : "no data" };
  const age = Math.max(0, Date.now() / 1000 - h.asof_ns / 1e9); // event time ahead of this clock: 0, never negative
  const old = ageText(age);
  if (state.conn === "down") return { level: "stale", text: `disconnected · ${old}` };
  if (state.conn === "retry") return { level: "stale", text: `reconnecting · ${old}` };
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

function openExpiries() {
  const asof = state.header ? state.header.asof_ns : null;
  return [...new Set(state.geom.series.map((s) => s.expiry))].sort().filter((e) => !expired(e, asof));
}

function seriesIndex() {
  const g = state.geom;
  const expiries = openExpiries();
  const sel = $("expiry");
  if (sel.dataset.list !== expiries.join(",")) {
    sel.innerHTML = expiries.map((e) => `<option>${e}</option>`).join("");
    sel.dataset.list = expiries.join(",");
  }
  if (!expiries.includes(state.expiry)) state.expiry = expiries[0] || null;
  sel.value = state.expiry || "";
  return g.series.findIndex((s) => s.expiry === state.expiry && s.side === state.side);
}

function shown(p) {
  const v = state.vals[p * state.k];
  if (Number.isNaN(v)) return null;
  return state.colorBy === "score" ? score(v, state.geom.widthW[p]) : v;
}

function rescale(positions, now) {
  const xs = [];
  for (const p of positions) { const x = shown(p); if (x !== null && Number.isFinite(x)) xs.push(x); }
  xs.sort((a, b) => a - b);
  const lo = xs.length ? xs[Math.floor(xs.length * 0.05)] : 0;
  const hi = xs.length ? xs[Math.min(xs.length - 1, Math.floor(xs.length * 0.95))] : 1;
  const moved = lo !== state.scale.lo || hi !== state.scale.hi;
  state.scale = { lo, hi, at: now };
  legend(lo, hi);
  return moved;
}

// The table's columns: widths of one series, or (single) the open expiries of one side.
function columnsOf(si) {
  const g = state.geom, positions = [];
  if (state.strategy === "single") {
    const open = new Set(openExpiries());
    for (let p = 0; p < g.size; p++) { const s = g.series[g.seriesOf[p]]; if (s.side === state.side && open.has(s.expiry)) positions.push(p); }
    const cols = [...open].sort();
    return { positions, cols, colOf: (p) => g.series[g.seriesOf[p]].expiry, head: (e) => `<th title="${e}">${e.slice(5)}</th>` };
  }
  for (let p = 0; p < g.size; p++) if (g.seriesOf[p] === si) positions.push(p);
  const cols = [...new Set(positions.map((p) => g.widthW[p]))].sort((a, b) => a - b);
  return { positions, cols, colOf: (p) => g.widthW[p], head: (w) => `<th>w ${strikeLabel(w)}</th>` };
}

function buildTable(si) {
  const g = state.geom;
  const { positions, cols, colOf, head: th } = columnsOf(si);
  const strikes = [...new Set(positions.map((p) => g.strikeK[p]))].sort((a, b) => b - a);
  const widths = cols;
  const head = `<tr><th class="strike">${state.strategy === "butterfly" ? "center" : "strike"}</th>` + cols.map(th).join("") + "</tr>";
  $("heatmap").querySelector("thead").innerHTML = head;
  const spot = state.header ? state.header.spot : null;
  const spotStrike = spot ? strikes.reduce((best, k) => (best === null || Math.abs(k - spot) < Math.abs(best - spot) ? k : best), null) : null;
  const tbody = $("heatmap").querySelector("tbody");
  tbody.innerHTML = strikes.map((k) => `<tr${k === spotStrike ? ' class="spot"' : ""}><td class="strike">${strikeLabel(k)}</td>` +
    widths.map((w) => `<td data-k="${k}|${w}"></td>`).join("") + "</tr>").join("");
  const byKey = new Map([...tbody.querySelectorAll("td[data-k]")].map((td) => [td.dataset.k, td]));
  const cells = new Map();
  for (const p of positions) {
    const td = byKey.get(`${g.strikeK[p]}|${colOf(p)}`);
    if (td) { td.dataset.pos = p; cells.set(p, td); }
  }
  for (const td of byKey.values()) if (!td.dataset.pos) td.className = "void";
  return { key: viewKey(si), series: si, cells };
}

function viewKey(si) {
  const g = state.geom;
  return `${state.strategy}|${g.epoch}|${si}|${state.colorBy}|${state.strategy === "single" ? state.side + openExpiries().join(",") : ""}`;
}

// The money on screen: the spot row in the middle of the scroller (unless a tile was opened).
function scrollToMoney() {
  const row = $("heatmap").querySelector("tr.spot"), box = $("heatmap").closest(".scroller");
  if (!row || !box) return;
  const offset = row.getBoundingClientRect().top - box.getBoundingClientRect().top;
  box.scrollTop = Math.max(0, box.scrollTop + offset - box.clientHeight / 2 + row.offsetHeight / 2);
}

function renderHeatmap() {
  const g = state.geom;
  if (!g || !state.header) { $("empty").hidden = false; return; }
  const si = seriesIndex();
  $("expiry-label").style.display = state.strategy === "single" ? "none" : "";
  const key = viewKey(si);
  const now = performance.now();
  let full = false;
  let built = false;
  if (!state.view || state.view.key !== key) { state.view = buildTable(si); state.flashed = []; full = true; built = true; }
  const cells = state.view.cells;
  if (full || now - state.scale.at > SCALE_EVERY_MS) full = rescale(cells.keys(), now) || full;
  const { lo, hi } = state.scale;
  if (full) {
    for (const [p, td] of cells) paint(td, p, lo, hi, false);
  } else {
    for (const p of state.dirty) { const td = cells.get(p); if (td) paint(td, p, lo, hi, true); }
  }
  let any = false;
  for (const p of cells.keys()) if (!Number.isNaN(state.vals[p * state.k])) { any = true; break; }
  $("empty").hidden = any;
  $("empty").textContent = openExpiries().length ? "Waiting for the first published version..." : "Every expiry of this model has expired (as of its last event).";
  if (state.focus && full) showFocus(cells);
  else if (built) scrollToMoney();
}

// A tile opened from elsewhere (the best-flies table): outlined (again whenever the table is rebuilt)
// and scrolled into view once, until another view is chosen.
function showFocus(cells) {
  const f = state.focus, g = state.geom;
  for (const [p, td] of cells) {
    if (g.strikeK[p] === f.strike && g.widthW[p] === f.width) {
      td.classList.add("focus");
      if (!f.scrolled) { td.scrollIntoView({ block: "center", inline: "center" }); f.scrolled = true; }
      return;
    }
  }
}

function paint(td, p, lo, hi, flash) {
  const v = state.vals[p * state.k];
  if (Number.isNaN(v)) { td.className = "none"; td.textContent = ""; td.style.background = ""; return; }
  const x = shown(p);
  const t = x === null || !Number.isFinite(x) ? null : hi > lo ? (x - lo) / (hi - lo) : 0.5;
  // A debit structure priced at or below zero at mid is not a real price: a leg's quote is stale or
  // crossed against the others. Flagged, never silently coloured like the rest.
  const negative = v <= 0 && state.strategy !== "single";
  td.className = "cell" + (t !== null && t < 0.45 ? " dim" : "") + (negative ? " neg" : "");
  td.style.background = t === null ? "#1b232d" : color(t);
  td.textContent = fmt(v, 2);
  if (flash && !td.classList.contains("flash")) { td.classList.add("flash"); state.flashed.push([td, performance.now()]); }
}

// Cells flash for FLASH_MS after a change; one sweep per frame instead of a timer per cell.
function unflash(now) {
  let i = 0;
  while (i < state.flashed.length && now - state.flashed[i][1] > FLASH_MS) state.flashed[i++][0].classList.remove("flash");
  if (i) state.flashed.splice(0, i);
  if (state.flashed.length) schedule();
}

function legend(lo, hi) {
  const c = $("legend").getContext("2d");
  for (let i = 0; i < 220; i++) { c.fillStyle = color(i / 219); c.fillRect(i, 0, 1, 10); }
  $("legend-title").textContent = state.colorBy === "score" ? "score (reward/risk)" : state.strategy === "single" ? "mid" : "mid debit";
  $("legend-range").textContent = `${fmt(lo)} .. ${fmt(hi)}`;
  $("neg-key").hidden = state.strategy === "single";
}

function renderGex() {
  const h = state.header;
  const cards = $("gex-cards");
  if (!h || !state.geom) { cards.innerHTML = '<div class="empty">Waiting for the first published GEX...</div>'; return; }
  const card = (k, v, cls = "", extra = "") => `<div class="card ${extra}"><div class="k">${k}</div><div class="v ${cls}">${v}</div></div>`;
  const sign = (v) => (v > 0 ? "pos" : v < 0 ? "neg" : "");
  cards.innerHTML = [
    card("Net GEX / 1% move", money(h.total), sign(h.total)),
    card("Calls", money(h.calls), "pos"),
    card("Puts", money(h.puts), "neg"),
    card("Flip (zero gamma)", h.flip ? fmt(h.flip, 0) : "none"),
    card("Call wall (≥ spot)", h.call_wall_above ? strikeLabel(h.call_wall_above) : "-"),
    card("Put wall (≤ spot)", h.put_wall_below ? strikeLabel(h.put_wall_below) : "-"),
    card("0DTE net", h.zero_dte ? money(h.zero_dte.total) : "none today", h.zero_dte ? sign(h.zero_dte.total) : ""),
    card("Data", "-", "", "fresh-card"),
  ].join("");
  freshness();
  activate("gex-mode", "gexmode", state.gexMode);
  const sel = $("gex-expiry");
  const options = ["all", ...(h.zero_dte ? ["0dte"] : []), ...(h.by_expiry_strike ? h.by_expiry_strike.expiries : [])];
  if (sel.dataset.list !== options.join(",")) {
    sel.innerHTML = options.map((o) => `<option value="${o}">${o === "all" ? "All expiries" : o === "0dte" ? "0DTE (today)" : o}</option>`).join("");
    sel.dataset.list = options.join(",");
  }
  if (!options.includes(state.gexExpiry)) state.gexExpiry = "all";
  sel.value = state.gexExpiry;
  $("gex-expiry-label").style.display = state.gexMode === "strike" ? "" : "none";
  const g = state.geom, rows = [];
  for (let p = 0; p < g.size; p++) {
    const call = state.vals[p * 3];
    if (!Number.isNaN(call)) rows.push({ strike: g.strikeK[p], call, put: state.vals[p * 3 + 1], net: state.vals[p * 3 + 2] });
  }
  rows.sort((a, b) => a.strike - b.strike);
  const drawn = h.spot ? window.msCharts.drawGexChart(state.gexMode, h, rows, state.gexExpiry) : false;
  $("gex-none").hidden = drawn;
}

// --- derived models --------------------------------------------------------------------------

function renderIndicators() {
  const d = derived.docs, set = (id, html, sub) => { $(id).querySelector(".v").innerHTML = html; let el = $(id).querySelector(":scope > .sub"); if (!el) { el = document.createElement("div"); el.className = "sub"; $(id).appendChild(el); } el.textContent = sub; };
  const m = d.market_mode;
  if (m) {
    const cls = m.mode === "compression" ? "pos" : m.mode === "expansion" ? "neg" : "";
    $("ind-mode").querySelector(".v").className = "v " + cls;
    set("ind-mode", `${m.mode} <span class="score">score ${fmt(m.score, 0)}</span><div class="gauge" title="0 deep negative gamma, 50 at the flip, 100 deep positive gamma"><div class="needle" style="left:calc(${Math.max(0, Math.min(100, m.score))}% - 1px)"></div></div>`,
      `flip ${m.flip === null ? "none" : fmt(m.flip, 0)}${m.distance_pct === null ? "" : ` (${m.distance_pct > 0 ? "+" : ""}${fmt(m.distance_pct, 2)}%)`} · net ${money(m.total)}`);
  }
  const g = d.gravity;
  if (g) set("ind-gravity", g.level === null ? "no level" : `level ${strikeLabel(g.level)}`,
    `band ${g.band.map((x) => (x === null ? "-" : strikeLabel(x))).join(" – ")} · em ±${fmt(g.em, 1)} · conf ${g.confidence === null ? "-" : fmt(g.confidence * 100, 0) + "%"}`);
  const i = d.intent;
  if (i && i.structure) set("ind-intent", i.structure.quadrant || "-", `bias ${fmt(i.structure.bias, 0)} · pin ${fmt(i.structure.pin, 0)}`);
  if (i && i.flow) {
    const day = i.flow.day.totals, w5 = i.flow["5m"].totals;
    $("ind-flow").querySelector(".v").className = "v " + (day.net_premium > 0 ? "pos" : day.net_premium < 0 ? "neg" : "");
    set("ind-flow", `day ${money(day.net_premium)}`, `5m ${money(w5.net_premium)} · ${day.bought} bought / ${day.sold} sold`);
  }
}

function renderIntent() {
  activate("flow-window", "window", state.flowWindow);
  const doc = derived.docs.intent;
  const w = doc && doc.flow ? doc.flow[state.flowWindow] : null;
  const rows = w ? w.rows : [];
  $("intent-empty").hidden = rows.length > 0;
  $("flow-totals").textContent = w ? `net ${money(w.totals.net_premium)} · bought ${money(w.totals.bought_premium)} · sold ${money(w.totals.sold_premium)} · unclassified ${money(w.totals.unclassified_premium)}` : "";
  window.msCharts.drawIntentChart(rows);
}

function renderFlies() {
  const doc = derived.docs.best_flies, flies = doc ? doc.flies : [];
  $("flies-empty").hidden = !doc || flies.length > 0;
  $("flies-note").textContent = doc ? `expiries ${doc.expiries.join(", ")} · gravity level ${doc.gravity.level === null ? "none" : strikeLabel(doc.gravity.level)} · em ±${fmt(doc.gravity.em, 1)} · click a row to open its tile` : "";
  state.shownFlies = flies; // a click opens the fly on screen, even if a newer version has arrived since
  $("flies").querySelector("tbody").innerHTML = flies.map((f, i) =>
    `<tr data-i="${i}"><td>${i + 1}</td><td>${f.expiry}</td><td>${f.side}</td><td>${strikeLabel(f.strike)}</td><td>${strikeLabel(f.width)}</td>` +
    `<td>${fmt(f.debit, 2)}</td><td>${fmt(f.reward_risk, 1)}</td><td>${fmt(f.composite, 3)}</td>` +
    `<td>${f.parts.gravity_distance_em === null ? "-" : fmt(f.parts.gravity_distance_em, 2)}</td><td>${f.parts.within_em ? "yes" : "no"}</td></tr>`).join("");
}

function openFly(f) {
  state.expiry = f.expiry;
  state.side = f.side;
  localStorage.setItem("ms.side", state.side);
  activate("side", "side", state.side);
  state.focus = { strike: f.strike, width: f.width, scrolled: false };
  setStrategy("butterfly");
}

// --- the hover: legs with their quotes, mid and natural debit, and why a blank cell is blank -------

function legProblem(q) {
  if (!q || (q.bid === null && q.ask === null)) return "no quote";
  if (!(q.bid > 0)) return "no bid";
  if (!(q.ask > 0)) return "no ask";
  if (q.bid > q.ask) return "crossed (bid > ask)";
  return null;
}

// Natural debit: pay the ask on every leg bought, take the bid on every leg sold.
function naturalDebit(weights, quotes) {
  let sum = 0;
  for (let i = 0; i < weights.length; i++) {
    const q = quotes[i], w = weights[i], px = q ? (w > 0 ? q.ask : q.bid) : null;
    if (!(px > 0)) return null;
    sum += w * px;
  }
  return sum;
}

function tipText(t, quotes) {
  const weights = WEIGHTS[state.strategy];
  const head = `${t.expiry} ${t.side} ${strikeLabel(t.strike)}${t.width ? " w " + strikeLabel(t.width) : ""}`;
  const nat = quotes ? naturalDebit(weights, quotes) : null;
  const single = state.strategy === "single";
  const price = t.value === null
    ? "no mid: " + (quotes ? t.legs.map((s, i) => [s, legProblem(quotes[i])]).filter(([, why]) => why).map(([s, why]) => `${s} has ${why}`).join("; ") || "a leg has no two-sided quote" : "loading the legs' quotes...")
    : `${single ? "mid" : "mid debit"} ${fmt(t.value, 2)}   ${single ? "ask" : "natural debit"} ${quotes ? fmt(nat, 2) : "..."}${single ? "" : `   score ${fmt(t.score, 2)}`}`;
  const flag = t.value !== null && t.value <= 0 && !single ? "\n! non-positive mid debit: a leg is stale or crossed against the others" : "";
  const legs = t.legs.map((s, i) => {
    const q = quotes ? quotes[i] : null, w = weights[i];
    const side = `${w > 0 ? "+" : "−"}${Math.abs(w)}`;
    const bidask = q ? `bid ${fmt(q.bid, 2)}  ask ${fmt(q.ask, 2)}${legProblem(q) ? "  (" + legProblem(q) + ")" : ""}` : "";
    return `${side} ${s}  ${bidask}  ${t.ts[i] ? new Date(t.ts[i]).toLocaleTimeString([], { hour12: false }) : "-"}`;
  });
  return `${head}\n${price}${flag}\n${legs.join("\n")}`;
}

async function hover(p) {
  const t = tileAt(p, true);
  if (!t) return;
  state.hovered = p;
  const key = `${state.geom.epoch}|${t.legs.join(",")}`, cached = state.quotes.get(key);
  const tip = $("tip");
  tip.textContent = tipText(t, cached ? cached.quotes : null);
  if (cached && performance.now() - cached.at < QUOTES_TTL_MS) return;
  state.quotes.set(key, { at: performance.now(), quotes: cached ? cached.quotes : null });
  try {
    const url = `/api/quotes/${encodeURIComponent(state.underlying)}?epoch=${state.geom.epoch}&symbols=${t.legs.join(",")}`;
    const r = await fetch(url, { credentials: "same-origin" });
    if (!r.ok) return;
    const quotes = (await r.json()).quotes;
    state.quotes.set(key, { at: performance.now(), quotes });
    if (state.quotes.size > 500) state.quotes.delete(state.quotes.keys().next().value);
    if (state.hovered === p && !tip.hidden) tip.textContent = tipText(tileAt(p, true), quotes);
  } catch (e) { /* the next hover tries again */ }
}

// --- controls --------------------------------------------------------------------------------

function activate(groupId, attr, value) {
  for (const b of document.querySelectorAll(`#${groupId} button`)) b.classList.toggle("active", b.dataset[attr] === value);
}

function setStrategy(s) {
  state.strategy = s;
  localStorage.setItem("ms.strategy", s);
  activate("tabs", "strategy", s);
  const heatmap = !["gex", ...DERIVED].includes(s);
  $("gex-view").hidden = s !== "gex";
  $("intent-view").hidden = s !== "intent";
  $("flies-view").hidden = s !== "best_flies";
  $("heatmap-view").hidden = !heatmap;
  for (const el of document.querySelectorAll(".hm-only")) el.style.visibility = heatmap ? "visible" : "hidden";
  connect();
}

async function init() {
  let list = [];
  try { list = await (await fetch("/api/underlyings", { credentials: "same-origin" })).json(); } catch (e) { list = []; }
  if (!list.length) list = [state.underlying];
  if (!list.includes(state.underlying)) state.underlying = list[0];
  $("underlying").innerHTML = list.map((u) => `<option>${u}</option>`).join("");
  $("underlying").value = state.underlying;
  $("underlying").onchange = (e) => { state.underlying = e.target.value; localStorage.setItem("ms.underlying", state.underlying); follow(); connect(); };
  for (const b of document.querySelectorAll("#flow-window button")) b.onclick = () => { state.flowWindow = b.dataset.window; localStorage.setItem("ms.flowWindow", state.flowWindow); schedule(); };
  $("flies").querySelector("tbody").addEventListener("click", (e) => {
    const tr = e.target.closest("tr[data-i]");
    if (tr && state.shownFlies) openFly(state.shownFlies[Number(tr.dataset.i)]);
  });
  for (const b of document.querySelectorAll("#tabs button")) b.onclick = () => { state.focus = null; setStrategy(b.dataset.strategy); };
  for (const b of document.querySelectorAll("#side button")) b.onclick = () => { state.focus = null; state.side = b.dataset.side; localStorage.setItem("ms.side", state.side); activate("side", "side", state.side); schedule(); };
  for (const b of document.querySelectorAll("#colorby button")) b.onclick = () => { state.colorBy = b.dataset.color; localStorage.setItem("ms.colorBy", state.colorBy); activate("colorby", "color", state.colorBy); schedule(); };
  $("expiry").onchange = (e) => { state.expiry = e.target.value; state.focus = null; schedule(); };
  activate("side", "side", state.side);
  activate("colorby", "color", state.colorBy);
  const tip = $("tip");
  $("heatmap").addEventListener("mousemove", (e) => {
    const td = e.target.closest("td[data-pos], td.void");
    if (!td) { tip.hidden = true; return; }
    tip.hidden = false;
    tip.style.left = Math.min(e.clientX + 14, innerWidth - tip.offsetWidth - 8) + "px";
    tip.style.top = (e.clientY + 14 + tip.offsetHeight > innerHeight ? e.clientY - tip.offsetHeight - 10 : e.clientY + 14) + "px";
    if (!td.dataset.pos) { tip.textContent = "no such structure: a leg's strike is not listed for this expiry"; return; }
    hover(Number(td.dataset.pos));
  });
  $("heatmap").addEventListener("mouseleave", () => { tip.hidden = true; state.hovered = null; });
  for (const b of document.querySelectorAll("#gex-mode button")) b.onclick = () => { state.gexMode = b.dataset.gexmode; localStorage.setItem("ms.gexMode", state.gexMode); schedule(); };
  $("gex-expiry").onchange = (e) => { state.gexExpiry = e.target.value; schedule(); };
  setInterval(freshness, 1000);
  follow();
  setStrategy(state.strategy);
}

// For tests and the curious: the tile at a position, as the REST model has it.
window.marketswarm = { state, derived, tileAt, score, staleness, expired, naturalDebit };

init();
