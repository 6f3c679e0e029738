// The heatmap view: one series (expiry x side) as strike x width, or "single" as strike x expiry;
// cells coloured by value, the server's score, edge (theo - mid) or spread, flashing when they change, repainted by position.

import { $, color, esc, fmt, strikeLabel } from "./format.js";
import { expired } from "./model.js";

const SCALE_EVERY_MS = 2000; // the colour scale (5th..95th percentile) is recomputed at most this often
const FLASH_MS = 400;

export function openExpiries(app) {
  const m = app.model, asof = m.header ? m.header.asof_ns : null;
  const open = m.geom.series.filter((s) => !expired(s, asof)).map((s) => s.expiry);
  return [...new Set(open)].sort();
}

function seriesIndex(app) {
  const g = app.model.geom, v = app.view;
  const expiries = openExpiries(app);
  const sel = $("expiry");
  if (sel.dataset.list !== expiries.join(",")) {
    sel.innerHTML = expiries.map((e) => `<option>${esc(e)}</option>`).join("");
    sel.dataset.list = expiries.join(",");
  }
  if (!expiries.includes(v.expiry)) v.expiry = expiries[0] || null;
  sel.value = v.expiry || "";
  return g.series.findIndex((s) => s.expiry === v.expiry && s.side === v.side);
}

function shown(app, p) {
  const m = app.model, v = m.value(p);
  if (Number.isNaN(v)) return null;
  const by = app.view.colorBy;
  const x = by === "score" ? m.score(p) : by === "edge" ? m.edge(p) : by === "spread" ? m.spread(p) : v;
  return x === null || Number.isNaN(x) ? null : x;
}

function rescale(app, positions, now) {
  const xs = [];
  for (const p of positions) { const x = shown(app, p); if (x !== null && Number.isFinite(x)) xs.push(x); }
  xs.sort((a, b) => a - b);
  const lo = xs.length ? xs[Math.floor(xs.length * 0.05)] : 0;
  const hi = xs.length ? xs[Math.min(xs.length - 1, Math.floor(xs.length * 0.95))] : 1;
  const moved = lo !== app.scale.lo || hi !== app.scale.hi;
  app.scale = { lo, hi, at: now };
  legend(app, lo, hi);
  return moved;
}

// The table's columns: widths of one series, or (single) the open expiries of one side.
function columnsOf(app, si) {
  const g = app.model.geom, positions = [];
  if (app.view.strategy === "single") {
    const open = new Set(openExpiries(app));
    for (let p = 0; p < g.size; p++) { const s = g.series[g.seriesOf[p]]; if (s.side === app.view.side && open.has(s.expiry)) positions.push(p); }
    const cols = [...open].sort();
    return { positions, cols, colOf: (p) => g.series[g.seriesOf[p]].expiry, head: (e) => `<th title="${esc(e)}">${esc(e.slice(5))}</th>` };
  }
  for (let p = 0; p < g.size; p++) if (g.seriesOf[p] === si) positions.push(p);
  const cols = [...new Set(positions.map((p) => g.widthW[p]))].sort((a, b) => a - b);
  return { positions, cols, colOf: (p) => g.widthW[p], head: (w) => `<th>w ${esc(strikeLabel(w))}</th>` };
}

function buildTable(app, si) {
  const g = app.model.geom;
  const { positions, cols, colOf, head: th } = columnsOf(app, si);
  const strikes = [...new Set(positions.map((p) => g.strikeK[p]))].sort((a, b) => b - a);
  const head = `<tr><th class="strike">${app.view.strategy === "butterfly" ? "center" : "strike"}</th>` + cols.map(th).join("") + "</tr>";
  $("heatmap").querySelector("thead").innerHTML = head;
  const spot = app.model.header ? app.model.header.spot : null;
  const spotStrike = spot ? strikes.reduce((best, k) => (best === null || Math.abs(k - spot) < Math.abs(best - spot) ? k : best), null) : null;
  const tbody = $("heatmap").querySelector("tbody");
  tbody.innerHTML = strikes.map((k) => `<tr${k === spotStrike ? ' class="spot"' : ""}><td class="strike">${esc(strikeLabel(k))}</td>` +
    cols.map((w) => `<td data-k="${esc(k)}|${esc(w)}"></td>`).join("") + "</tr>").join("");
  const byKey = new Map([...tbody.querySelectorAll("td[data-k]")].map((td) => [td.dataset.k, td]));
  const cells = new Map();
  for (const p of positions) {
    const td = byKey.get(`${g.strikeK[p]}|${colOf(p)}`);
    if (td) { td.dataset.pos = p; cells.set(p, td); }
  }
  for (const td of byKey.values()) if (!td.dataset.pos) td.className = "void";
  return { key: viewKey(app, si), cells };
}

function viewKey(app, si) {
  const v = app.view;
  return `${v.strategy}|${app.model.layout}|${app.model.geom.epoch}|${si}|${v.colorBy}|${v.strategy === "single" ? v.side + openExpiries(app).join(",") : ""}`;
}

// The money on screen: the spot row in the middle of the scroller (unless a tile was opened).
function scrollToMoney() {
  const row = $("heatmap").querySelector("tr.spot"), box = $("heatmap").closest(".scroller");
  if (!row || !box) return;
  const offset = row.getBoundingClientRect().top - box.getBoundingClientRect().top;
  box.scrollTop = Math.max(0, box.scrollTop + offset - box.clientHeight / 2 + row.offsetHeight / 2);
}

export function renderHeatmap(app) {
  const m = app.model, g = m.geom;
  if (!g || !m.header) { $("empty").hidden = false; return; }
  const si = seriesIndex(app);
  $("expiry-label").style.display = app.view.strategy === "single" ? "none" : "";
  const key = viewKey(app, si);
  const now = performance.now();
  let full = false;
  let built = false;
  if (!app.table || app.table.key !== key) { app.table = buildTable(app, si); app.flashed = []; full = true; built = true; }
  const cells = app.table.cells;
  if (full || now - app.scale.at > SCALE_EVERY_MS) full = rescale(app, cells.keys(), now) || full;
  const { lo, hi } = app.scale;
  if (full) {
    for (const [p, td] of cells) paint(app, td, p, lo, hi, false);
  } else {
    for (const p of m.dirty) { const td = cells.get(p); if (td) paint(app, td, p, lo, hi, true); }
  }
  let any = false;
  for (const p of cells.keys()) if (!Number.isNaN(m.value(p))) { any = true; break; }
  $("empty").hidden = any;
  $("empty").textContent = openExpiries(app).length ? "Waiting for the first published version..." : "Every expiry of this model has expired (as of its last event).";
  if (app.view.focus && full) showFocus(app, cells);
  else if (built) scrollToMoney();
}

// A tile opened from elsewhere (the best-flies table): outlined (again whenever the table is rebuilt)
// and scrolled into view once, until another view is chosen.
function showFocus(app, cells) {
  const f = app.view.focus, g = app.model.geom;
  for (const [p, td] of cells) {
    if (g.strikeK[p] === f.strike && g.widthW[p] === f.width) {
      td.classList.add("focus");
      if (!f.scrolled) { td.scrollIntoView({ block: "center", inline: "center" }); f.scrolled = true; }
      return;
    }
  }
}

function paint(app, td, p, lo, hi, flash) {
  const v = app.model.value(p);
  if (Number.isNaN(v)) { td.className = "none"; td.textContent = ""; td.style.background = ""; return; }
  const x = shown(app, p);
  const t = x === null || !Number.isFinite(x) ? null : hi > lo ? (x - lo) / (hi - lo) : 0.5;
  // A debit structure priced at or below zero at mid is not a real price: a leg's quote is stale or
  // crossed against the others. Flagged, never silently coloured like the rest.
  const negative = v <= 0 && app.view.strategy !== "single";
  td.className = "cell" + (t !== null && t < 0.45 ? " dim" : "") + (negative ? " neg" : "");
  td.style.background = t === null ? "#1b232d" : color(t);
  td.textContent = fmt(v, 2);
  if (flash && !td.classList.contains("flash")) { td.classList.add("flash"); app.flashed.push([td, performance.now()]); }
}

// Cells flash for FLASH_MS after a change; one sweep per frame instead of a timer per cell. True
// while some still flash (another frame is wanted).
export function unflash(app, now) {
  let i = 0;
  while (i < app.flashed.length && now - app.flashed[i][1] > FLASH_MS) app.flashed[i++][0].classList.remove("flash");
  if (i) app.flashed.splice(0, i);
  return app.flashed.length > 0;
}

function legend(app, lo, hi) {
  const c = $("legend").getContext("2d");
  for (let i = 0; i < 220; i++) { c.fillStyle = color(i / 219); c.fillRect(i, 0, 1, 10); }
  const s = app.view.strategy;
  const titles = { score: "score (reward/risk)", edge: "edge (theo - mid)", spread: "spread (natural debit - natural credit)" };
  $("legend-title").textContent = titles[app.view.colorBy] || (s === "single" ? "mid" : "mid debit");
  $("legend-range").textContent = `${fmt(lo)} .. ${fmt(hi)}`;
  $("neg-key").hidden = s === "single";
}
