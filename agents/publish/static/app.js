// MarketSwarm dashboard: a live heatmap / GEX view fed by Server-Sent Events (snapshot, then diffs).
"use strict";

const $ = (id) => document.getElementById(id);
const VIRIDIS = ["#440154", "#482475", "#414487", "#355f8d", "#2a788e", "#21918c", "#22a884", "#44bf70", "#7ad151", "#bddf26", "#fde725"];

const state = {
  underlying: localStorage.getItem("ms.underlying") || "SPX",
  strategy: localStorage.getItem("ms.strategy") || "butterfly",
  expiry: null,
  side: localStorage.getItem("ms.side") || "call",
  colorBy: localStorage.getItem("ms.colorBy") || "value",
  tiles: new Map(),
  header: null,
  version: null,
  source: null,
  dirty: new Set(),
  structure: "",
  cells: new Map(),
};

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

// --- connection ------------------------------------------------------------------------------

function connect() {
  if (state.source) state.source.close();
  state.tiles = new Map();
  state.header = null;
  state.version = null;
  state.structure = "";
  setConn("retry", "connecting");
  const url = state.strategy === "gex"
    ? `/sse/gex?underlying=${encodeURIComponent(state.underlying)}`
    : `/sse/heatmap/${state.strategy}?underlying=${encodeURIComponent(state.underlying)}`;
  const es = new EventSource(url, { withCredentials: true });
  state.source = es;
  es.onopen = () => setConn("up", "live");
  es.onerror = () => setConn(es.readyState === EventSource.CLOSED ? "down" : "retry", es.readyState === EventSource.CLOSED ? "disconnected" : "reconnecting");
  es.addEventListener("snapshot", (e) => {
    const model = JSON.parse(e.data);
    state.tiles = new Map();
    const rows = model.tiles || model.by_strike || [];
    for (const t of rows) state.tiles.set(keyOf(t), t);
    delete model.tiles; delete model.by_strike;
    state.header = model;
    state.version = model.version;
    state.structure = "";
    schedule();
  });
  es.addEventListener("diff", (e) => {
    const d = JSON.parse(e.data);
    if (d.reset) { state.tiles = new Map(); state.structure = ""; }
    for (const [k, t] of Object.entries(d.upserts || {})) { state.tiles.set(k, t); state.dirty.add(k); }
    for (const [k, v] of Object.entries(d.values || {})) {
      const t = state.tiles.get(k);  // a tile we have: only its numbers changed
      if (t) { t.value = v[0]; t.score = v[1]; t.legs_ts_ns = v[2]; state.dirty.add(k); }
    }
    for (const k of d.removes || []) { state.tiles.delete(k); state.dirty.add(k); }
    if (d.header) state.header = d.header;
    state.version = d.version;
    schedule();
  });
}
function keyOf(t) { return t.k || `s|${String(Math.round(t.strike * 1000)).padStart(12, "0")}`; }
function setConn(cls, text) { const c = $("conn"); c.className = "pill " + cls; c.textContent = text; }

let pending = false;
function schedule() { if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; render(); }); } }

// --- rendering -------------------------------------------------------------------------------

function render() {
  const h = state.header;
  $("version").textContent = state.version ?? "-";
  $("spot").textContent = h && h.spot ? fmt(h.spot, 2) : "-";
  $("asof").textContent = h && h.asof ? h.asof.replace("T", " ").replace("Z", "") : "-";
  freshness();
  if (state.strategy === "gex") renderGex(); else renderHeatmap();
}

function freshness() {
  const h = state.header, el = $("fresh");
  if (!h || !h.asof_ns) { el.textContent = "-"; el.className = "pill"; return; }
  const age = Date.now() / 1000 - h.asof_ns / 1e9;
  el.textContent = age < 90 ? `${age.toFixed(1)}s old` : age < 5400 ? `${(age / 60).toFixed(0)}m old` : `${(age / 3600).toFixed(1)}h old`;
  el.className = "pill " + (age < 5 ? "fresh" : age < 60 ? "lagging" : "stale");
}

function visibleTiles() {
  const out = [];
  for (const t of state.tiles.values()) if (t.expiry === state.expiry && t.side === state.side) out.push(t);
  return out;
}

function renderHeatmap() {
  const expiries = [...new Set([...state.tiles.values()].map((t) => t.expiry))].sort();
  const sel = $("expiry");
  if (sel.dataset.list !== expiries.join(",")) {
    sel.innerHTML = expiries.map((e) => `<option>${e}</option>`).join("");
    sel.dataset.list = expiries.join(",");
  }
  if (!expiries.includes(state.expiry)) state.expiry = expiries[0] || null;
  sel.value = state.expiry || "";
  const tiles = visibleTiles();
  $("empty").hidden = tiles.length > 0;
  const strikes = [...new Set(tiles.map((t) => t.strike))].sort((a, b) => b - a);
  const widths = [...new Set(tiles.map((t) => t.width))].sort((a, b) => a - b);
  const structure = `${state.strategy}|${state.expiry}|${state.side}|${strikes.join(",")}|${widths.join(",")}`;
  const vals = tiles.map((t) => (state.colorBy === "score" ? t.score : t.value)).filter((v) => v !== null && Number.isFinite(v)).sort((a, b) => a - b);
  const lo = vals.length ? vals[Math.floor(vals.length * 0.05)] : 0;
  const hi = vals.length ? vals[Math.min(vals.length - 1, Math.floor(vals.length * 0.95))] : 1;
  legend(lo, hi);
  const byKey = new Map(tiles.map((t) => [`${t.strike}|${t.width}`, t]));
  if (structure !== state.structure) {
    state.structure = structure;
    const head = `<tr><th class="strike">${state.strategy === "butterfly" ? "center" : "strike"}</th>` +
      widths.map((w) => `<th>${state.strategy === "single" ? "mid" : "w " + strikeLabel(w)}</th>`).join("") + "</tr>";
    $("heatmap").querySelector("thead").innerHTML = head;
    const spot = state.header ? state.header.spot : null;
    let spotStrike = null;
    if (spot) spotStrike = strikes.reduce((best, k) => (best === null || Math.abs(k - spot) < Math.abs(best - spot) ? k : best), null);
    const body = strikes.map((k) => `<tr${k === spotStrike ? ' class="spot"' : ""}><td class="strike">${strikeLabel(k)}</td>` +
      widths.map((w) => `<td data-k="${k}|${w}"></td>`).join("") + "</tr>").join("");
    const tbody = $("heatmap").querySelector("tbody");
    tbody.innerHTML = body;
    state.cells = new Map([...tbody.querySelectorAll("td[data-k]")].map((td) => [td.dataset.k, td]));
    for (const [k, td] of state.cells) paint(td, byKey.get(k), lo, hi, false);
  } else {
    for (const [k, td] of state.cells) paint(td, byKey.get(k), lo, hi, state.dirty.has(byKey.get(k)?.k));
  }
  state.dirty.clear();
}

function paint(td, t, lo, hi, flash) {
  if (!t) { td.className = "none"; td.textContent = ""; td.removeAttribute("data-tile"); return; }
  const v = state.colorBy === "score" ? t.score : t.value;
  const x = v === null || !Number.isFinite(v) ? null : hi > lo ? (v - lo) / (hi - lo) : 0.5;
  td.className = "cell" + (x !== null && x < 0.45 ? " dim" : "");
  td.style.background = x === null ? "#1b232d" : color(x);
  td.textContent = fmt(t.value, 2);
  td.dataset.tile = t.k;
  if (flash) { td.classList.add("flash"); setTimeout(() => td.classList.remove("flash"), 400); }
}

function legend(lo, hi) {
  const c = $("legend").getContext("2d");
  for (let i = 0; i < 220; i++) { c.fillStyle = color(i / 219); c.fillRect(i, 0, 1, 10); }
  $("legend-title").textContent = state.colorBy === "score" ? "score (reward/risk)" : "mid debit";
  $("legend-range").textContent = `${fmt(lo)} .. ${fmt(hi)}`;
}

function renderGex() {
  const h = state.header;
  const cards = $("gex-cards");
  if (!h) { cards.innerHTML = '<div class="empty">Waiting for the first published GEX...</div>'; return; }
  const card = (k, v, cls = "") => `<div class="card"><div class="k">${k}</div><div class="v ${cls}">${v}</div></div>`;
  const sign = (v) => (v > 0 ? "pos" : v < 0 ? "neg" : "");
  cards.innerHTML = [
    card("Net GEX / 1%", money(h.total), sign(h.total)),
    card("Calls", money(h.calls), "pos"),
    card("Puts", money(h.puts), "neg"),
    card("Flip (zero gamma)", h.flip ? fmt(h.flip, 0) : "none"),
    card("Call wall", h.call_wall ? strikeLabel(h.call_wall) : "-"),
    card("Put wall", h.put_wall ? strikeLabel(h.put_wall) : "-"),
    card("0DTE net", h.zero_dte ? money(h.zero_dte.total) : "-", h.zero_dte ? sign(h.zero_dte.total) : ""),
    card("Data", h.stale ? "STALE" : "current", h.stale ? "neg" : "pos"),
  ].join("");
  const rows = [...state.tiles.values()].filter((r) => h.spot && Math.abs(r.strike / h.spot - 1) < 0.06).sort((a, b) => b.strike - a.strike);
  drawGex(rows, h);
}

function drawGex(rows, h) {
  const svg = $("gex-chart");
  const W = svg.clientWidth || 900, H = svg.clientHeight || 600, padL = 70, padR = 20, padT = 10, padB = 20;
  if (!rows.length) { svg.innerHTML = ""; return; }
  const max = Math.max(1, ...rows.map((r) => Math.max(Math.abs(r.call), Math.abs(r.put))));
  const kmin = rows[rows.length - 1].strike, kmax = rows[0].strike;
  const y = (k) => padT + ((kmax - k) / Math.max(1e-9, kmax - kmin)) * (H - padT - padB);
  const x0 = padL + (W - padL - padR) / 2, sx = (W - padL - padR) / 2 / max;
  const bh = Math.max(1, (H - padT - padB) / rows.length - 1);
  let out = `<line x1="${x0}" x2="${x0}" y1="${padT}" y2="${H - padB}" stroke="#2a3746"/>`;
  for (const r of rows) {
    const yy = y(r.strike) - bh / 2;
    out += `<rect x="${x0}" y="${yy}" width="${Math.abs(r.call) * sx}" height="${bh}" fill="#3ddc97" opacity=".85"><title>${strikeLabel(r.strike)} calls ${money(r.call)}</title></rect>`;
    out += `<rect x="${x0 - Math.abs(r.put) * sx}" y="${yy}" width="${Math.abs(r.put) * sx}" height="${bh}" fill="#ff5d6c" opacity=".85"><title>${strikeLabel(r.strike)} puts ${money(r.put)}</title></rect>`;
    out += `<circle cx="${x0 + r.net * sx}" cy="${y(r.strike)}" r="1.6" fill="#d6dde6"/>`;
  }
  const step = Math.max(1, Math.ceil(rows.length / 30));
  rows.forEach((r, i) => { if (i % step === 0) out += `<text x="${padL - 6}" y="${y(r.strike) + 3}" text-anchor="end">${strikeLabel(r.strike)}</text>`; });
  const mark = (k, col, label, dash, below) => {
    if (k === null || k === undefined || k < kmin || k > kmax) return "";
    return `<line x1="${padL}" x2="${W - padR}" y1="${y(k)}" y2="${y(k)}" stroke="${col}" stroke-dasharray="${dash}"/>` +
      `<text x="${W - padR}" y="${y(k) + (below ? 11 : -3)}" text-anchor="end" style="fill:${col}">${label} ${fmt(k, 0)}</text>`;
  };
  out += mark(h.spot, "#4cc2ff", "spot", "0", false);
  out += mark(h.flip, "#ffb547", "flip", "6 4", false);
  out += mark(h.call_wall, "#3ddc97", "call wall", "2 3", false);
  out += mark(h.put_wall, "#ff5d6c", "put wall", "2 3", true);
  svg.innerHTML = out;
}

// --- controls --------------------------------------------------------------------------------

function activate(groupId, attr, value) {
  for (const b of document.querySelectorAll(`#${groupId} button`)) b.classList.toggle("active", b.dataset[attr] === value);
}

function setStrategy(s) {
  state.strategy = s;
  localStorage.setItem("ms.strategy", s);
  activate("tabs", "strategy", s);
  const gex = s === "gex";
  $("gex-view").hidden = !gex;
  $("heatmap-view").hidden = gex;
  for (const el of document.querySelectorAll(".hm-only")) el.style.visibility = gex ? "hidden" : "visible";
  connect();
}

async function init() {
  let list = [];
  try { list = await (await fetch("/api/underlyings", { credentials: "same-origin" })).json(); } catch (e) { list = []; }
  if (!list.length) list = [state.underlying];
  if (!list.includes(state.underlying)) state.underlying = list[0];
  $("underlying").innerHTML = list.map((u) => `<option>${u}</option>`).join("");
  $("underlying").value = state.underlying;
  $("underlying").onchange = (e) => { state.underlying = e.target.value; localStorage.setItem("ms.underlying", state.underlying); connect(); };
  for (const b of document.querySelectorAll("#tabs button")) b.onclick = () => setStrategy(b.dataset.strategy);
  for (const b of document.querySelectorAll("#side button")) b.onclick = () => { state.side = b.dataset.side; localStorage.setItem("ms.side", state.side); activate("side", "side", state.side); state.structure = ""; schedule(); };
  for (const b of document.querySelectorAll("#colorby button")) b.onclick = () => { state.colorBy = b.dataset.color; localStorage.setItem("ms.colorBy", state.colorBy); activate("colorby", "color", state.colorBy); state.structure = ""; schedule(); };
  $("expiry").onchange = (e) => { state.expiry = e.target.value; state.structure = ""; schedule(); };
  activate("side", "side", state.side);
  activate("colorby", "color", state.colorBy);
  const tip = $("tip");
  $("heatmap").addEventListener("mousemove", (e) => {
    const td = e.target.closest("td[data-tile]");
    if (!td) { tip.hidden = true; return; }
    const t = state.tiles.get(td.dataset.tile);
    if (!t) { tip.hidden = true; return; }
    tip.textContent = `${t.expiry} ${t.side} ${strikeLabel(t.strike)}${t.width ? " w " + strikeLabel(t.width) : ""}\nvalue ${fmt(t.value, 3)}  score ${fmt(t.score, 2)}\n${t.legs.join("\n")}`;
    tip.style.left = e.clientX + 14 + "px"; tip.style.top = e.clientY + 14 + "px"; tip.hidden = false;
  });
  $("heatmap").addEventListener("mouseleave", () => { tip.hidden = true; });
  setInterval(freshness, 1000);
  setStrategy(state.strategy);
}

init();
