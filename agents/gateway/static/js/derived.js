// The derived models' views: the indicator row (market mode, the volatility regime, dealer gravity,
// intent structure, net flow), the intent map and the best-flies table. Each model's whole document arrives as the header
// of its snapshot and diffs.

import { drawIntentChart } from "./charts.js";
import { $, esc, fmt, money, strikeLabel } from "./format.js";

function setCard(id, html, sub) {
  $(id).querySelector(".v").innerHTML = html;
  let el = $(id).querySelector(":scope > .sub");
  if (!el) { el = document.createElement("div"); el.className = "sub"; $(id).appendChild(el); }
  el.textContent = sub;
}

export function renderIndicators(docs) {
  const m = docs.market_mode;
  if (m) {
    const cls = m.mode === "compression" ? "pos" : m.mode === "expansion" ? "neg" : "";
    $("ind-mode").querySelector(".v").className = "v " + cls;
    const needle = Math.max(0, Math.min(100, Number(m.score) || 0));
    setCard("ind-mode", `${esc(m.mode)} <span class="score">score ${esc(fmt(m.score, 0))}</span><div class="gauge" title="0 deep negative gamma, 50 at the flip, 100 deep positive gamma"><div class="needle"></div></div>`,
      `flip ${m.flip === null ? "none" : fmt(m.flip, 0)}${m.distance_pct === null ? "" : ` (${m.distance_pct > 0 ? "+" : ""}${fmt(m.distance_pct, 2)}%)`} · net ${money(m.total)}`);
    $("ind-mode").querySelector(".needle").style.left = `calc(${needle}% - 1px)`;
    const hot = { low: "pos", normal: "", elevated: "warn", high: "neg" };
    $("ind-vol").querySelector(".v").className = "v " + (hot[m.regime] || "");
    setCard("ind-vol", m.vix === null || m.vix === undefined ? "no VIX yet" : `VIX ${esc(fmt(m.vix, 2))} <span class="score">${esc(m.regime)}</span>`,
      "regimes: low < 17 · normal < 23 · elevated < 32 · high");
  }
  const g = docs.gravity;
  if (g) setCard("ind-gravity", g.level === null ? "no level" : `level ${esc(strikeLabel(g.level))}`,
    `band ${g.band.map((x) => (x === null ? "-" : strikeLabel(x))).join(" – ")} · em ±${fmt(g.em, 1)} · conf ${g.confidence === null ? "-" : fmt(g.confidence * 100, 0) + "%"}`);
  const i = docs.intent;
  if (i && i.structure) setCard("ind-intent", esc(i.structure.quadrant || "-"), `bias ${fmt(i.structure.bias, 0)} · pin ${fmt(i.structure.pin, 0)}`);
  if (i && i.flow) {
    const day = i.flow.day.totals, w5 = i.flow["5m"].totals;
    $("ind-flow").querySelector(".v").className = "v " + (day.net_premium > 0 ? "pos" : day.net_premium < 0 ? "neg" : "");
    setCard("ind-flow", `day ${esc(money(day.net_premium))}`, `5m ${money(w5.net_premium)} · ${day.bought} bought / ${day.sold} sold`);
  }
}

export function renderIntent(app, activate) {
  activate("flow-window", "window", app.view.flowWindow);
  const doc = app.docs.intent;
  const w = doc && doc.flow ? doc.flow[app.view.flowWindow] : null;
  const rows = w ? w.rows : [];
  $("intent-empty").hidden = rows.length > 0;
  $("flow-totals").textContent = w ? `net ${money(w.totals.net_premium)} · bought ${money(w.totals.bought_premium)} · sold ${money(w.totals.sold_premium)} · unclassified ${money(w.totals.unclassified_premium)}` : "";
  drawIntentChart(rows);
}

export function renderFlies(app) {
  const doc = app.docs.best_flies, flies = doc ? doc.flies : [];
  $("flies-empty").hidden = !doc || flies.length > 0;
  $("flies-note").textContent = doc ? `expiries ${doc.expiries.join(", ")} · gravity level ${doc.gravity.level === null ? "none" : strikeLabel(doc.gravity.level)} · em ±${fmt(doc.gravity.em, 1)} · VIX ${fmt(doc.vix, 2)} (${doc.regime || "no regime yet"}): widths near ${flies.length && flies[0].parts.suited_width !== null ? fmt(flies[0].parts.suited_width, 0) : "-"} suit the day · costed at the natural debit · click a row to open its tile` : "";
  app.shownFlies = flies; // a click opens the fly on screen, even if a newer version has arrived since
  const td = (x) => `<td>${esc(x)}</td>`;
  $("flies").querySelector("tbody").innerHTML = flies.map((f, i) =>
    `<tr data-i="${i}">${td(i + 1)}${td(f.expiry)}${td(f.side)}${td(strikeLabel(f.strike))}${td(strikeLabel(f.width))}` +
    `${td(fmt(f.debit, 2))}${td(fmt(f.mid, 2))}${td(fmt(f.spread, 2))}${td(fmt(f.theo, 2))}${td(fmt(f.edge, 2))}` +
    `${td(f.pop === null ? "-" : (100 * f.pop).toFixed(1) + " %")}${td(fmt(f.ev, 2))}${td(fmt(f.reward_risk, 1))}${td(fmt(f.composite, 3))}` +
    `${td([f.parts.value, f.parts.reward, f.parts.gravity, f.parts.width].map((x) => fmt(x, 2)).join(" · "))}</tr>`).join("");
}
