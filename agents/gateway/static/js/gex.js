// The GEX view: the headline cards and the charts (by strike with the gamma profile, by expiry,
// strike x expiry), from the GEX model by position and its header.

import { drawGexChart } from "./charts.js";
import { $, esc, fmt, money, options, strikeLabel } from "./format.js";

function card(k, v, cls = "", extra = "") {
  return `<div class="card ${extra}"><div class="k">${esc(k)}</div><div class="v ${cls}">${esc(v)}</div></div>`;
}
const sign = (v) => (v > 0 ? "pos" : v < 0 ? "neg" : "");

export function renderGex(app, activate) {
  const m = app.model, h = m.header, v = app.view;
  const cards = $("gex-cards");
  if (!h || !m.geom) { cards.innerHTML = '<div class="empty">Waiting for the first published GEX...</div>'; return false; }
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
  activate("gex-mode", "gexmode", v.gexMode);
  const sel = $("gex-expiry");
  const choices = ["all", ...(h.zero_dte ? ["0dte"] : []), ...(h.by_expiry_strike ? h.by_expiry_strike.expiries : [])];
  if (sel.dataset.list !== choices.join(",")) {
    sel.innerHTML = options(choices, (o) => (o === "all" ? "All expiries" : o === "0dte" ? "0DTE (today)" : o));
    sel.dataset.list = choices.join(",");
  }
  if (!choices.includes(v.gexExpiry)) v.gexExpiry = "all";
  sel.value = v.gexExpiry;
  $("gex-expiry-label").style.display = v.gexMode === "strike" ? "" : "none";
  const g = m.geom, rows = [];
  for (let p = 0; p < g.size; p++) {
    const call = m.vals[p * 3];
    if (!Number.isNaN(call)) rows.push({ strike: g.strikeK[p], call, put: m.vals[p * 3 + 1], net: m.vals[p * 3 + 2] });
  }
  rows.sort((a, b) => a.strike - b.strike);
  const drawn = h.spot ? drawGexChart(v.gexMode, h, rows, v.gexExpiry) : false;
  $("gex-none").hidden = drawn;
  return true;
}
