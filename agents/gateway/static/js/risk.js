// The risk panel: a click on a heatmap tile asks the server for its risk graph (GET /api/risk) and shows
// it: P&L at expiry, now and halfway there, the breakevens, the maximum profit and loss, the probability
// of profit and the expected P&L under the implied distribution, and the expected move. Every number
// is the server's; this file only lays them out.

import { drawRiskChart } from "./charts.js";
import { $, esc, fmt, strikeLabel } from "./format.js";

const dollars = (v) => (v === null ? "unlimited" : (v < 0 ? "−$" : "$") + Math.abs(v).toFixed(2));
const points = (v) => (v === null ? "" : ` (${v.toFixed(2)} pts)`);

export function riskUrl(underlying, legs, weights, hoursLeft) {
  const spec = legs.map((s, i) => `${s}:${weights[i]}`).join(",");
  const before = hoursLeft > 2 ? `&before=${Math.round(hoursLeft / 2)}` : "";
  return `/api/risk/${encodeURIComponent(underlying)}?legs=${encodeURIComponent(spec)}${before}`;
}

export class RiskPanel {
  constructor(app) {
    this.app = app;
    this.shown = null; // the last document drawn (for tests and the curious)
    $("risk-close").onclick = () => this.close();
  }

  close() { $("risk-panel").hidden = true; this.shown = null; }

  async open(p) {
    const app = this.app, m = app.model, t = m.tileAt(p);
    if (!t) return;
    const g = m.geom, s = g.series[g.seriesOf[p]];
    const hoursLeft = m.header ? (s.close_ns - m.header.asof_ns) / 3.6e12 : 0;
    const url = riskUrl(app.view.underlying, t.legs, g.leg_weights, hoursLeft);
    $("risk-panel").hidden = false;
    $("tip").hidden = true;
    $("risk-title").textContent = `${t.expiry} ${t.side} ${strikeLabel(t.strike)}${t.width ? " w " + strikeLabel(t.width) : ""} ${app.view.strategy}`;
    $("risk-status").textContent = "loading...";
    try {
      const r = await fetch(url, { credentials: "same-origin" });
      const body = await r.json();
      if (!r.ok) { $("risk-status").textContent = String(body.detail || r.status); return; }
      this.show(body);
    } catch (e) { $("risk-status").textContent = "the server did not answer; click again"; }
  }

  show(r) {
    this.shown = r;
    $("risk-status").textContent = `as of v${r.version} · spot ${fmt(r.spot, 2)} · ${r.legs.map((l) => `${l.qty > 0 ? "+" : ""}${l.qty} ${l.symbol}`).join("  ")}`;
    const rows = [
      ["debit (natural)", `${fmt(r.debit, 2)} pts · mid ${fmt(r.mid, 2)} · theo ${fmt(r.theo, 2)}`, "risk-debit"],
      ["breakevens", r.breakevens.length ? r.breakevens.map((b) => b.toFixed(2)).join(" · ") : "none", "risk-be"],
      ["max profit", dollars(r.max_profit_usd) + points(r.max_profit), "risk-maxprofit"],
      ["max loss", dollars(r.max_loss_usd) + points(r.max_loss), "risk-maxloss"],
      ["probability of profit", `${(100 * r.pop).toFixed(1)} %`, "risk-pop"],
      ["expected P&L", dollars(r.expected_pnl_usd) + points(r.expected_pnl), "risk-ev"],
      ["expected move", `±${fmt(r.expected_move.points, 2)} (${fmt(r.expected_move.low, 2)} .. ${fmt(r.expected_move.high, 2)})`, "risk-em"],
    ];
    $("risk-facts").innerHTML = rows.map(([k, v, id]) => `<dt>${esc(k)}</dt><dd id="${id}">${esc(v)}</dd>`).join("");
    $("risk-note").textContent = `P&L per position of ${r.multiplier} shares per contract; probability and expected P&L ${r.distribution}.`;
    drawRiskChart("risk-chart", r);
  }
}
