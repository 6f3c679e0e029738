// The heatmap's hover: a tile's legs with their bid/ask and quote times; the server's mid, natural debit
// (asks paid, bids taken), theo, edge and probability of profit; and why a blank cell is blank.

import { $, fmt, strikeLabel } from "./format.js";

const QUOTES_TTL_MS = 1500; // the hover's legs' quotes are re-fetched at most this often
const QUOTES_KEPT = 500;

function legProblem(q) {
  if (!q || (q.bid === null && q.ask === null)) return "no quote";
  if (!(q.bid > 0)) return "no bid";
  if (!(q.ask > 0)) return "no ask";
  if (q.bid > q.ask) return "crossed (bid > ask)";
  return null;
}

function tipText(app, t, quotes) {
  const weights = app.model.geom.leg_weights;
  const head = `${t.expiry} ${t.side} ${strikeLabel(t.strike)}${t.width ? " w " + strikeLabel(t.width) : ""}`;
  const single = app.view.strategy === "single";
  const price = t.value === null
    ? "no mid: " + (quotes ? t.legs.map((s, i) => [s, legProblem(quotes[i])]).filter(([, why]) => why).map(([s, why]) => `${s} has ${why}`).join("; ") || "a leg has no two-sided quote" : "loading the legs' quotes...")
    : `${single ? "mid" : "mid debit"} ${fmt(t.value, 2)}   ${single ? "ask" : "natural debit"} ${fmt(t.natural, 2)}${single ? "" : `   score ${fmt(t.score, 2)}`}` +
      `\ntheo ${fmt(t.theo, 2)}   edge ${fmt(t.edge, 2)}   PoP ${t.pop === null ? "-" : (100 * t.pop).toFixed(1) + " %"}   (click: risk graph)`;
  const flag = t.value !== null && t.value <= 0 && !single ? "\n! non-positive mid debit: a leg is stale or crossed against the others" : "";
  const legs = t.legs.map((s, i) => {
    const q = quotes ? quotes[i] : null, w = weights[i];
    const side = `${w > 0 ? "+" : "−"}${Math.abs(w)}`;
    const bidask = q ? `bid ${fmt(q.bid, 2)}  ask ${fmt(q.ask, 2)}${legProblem(q) ? "  (" + legProblem(q) + ")" : ""}` : "quote ...";
    return `${side} ${s}  ${bidask}  ${t.ts[i] ? new Date(t.ts[i]).toLocaleTimeString([], { hour12: false }) : "-"}`;
  });
  return `${head}\n${price}${flag}\n${legs.join("\n")}`;
}

async function hover(app, p) {
  const m = app.model, t = m.tileAt(p, true);
  if (!t) return;
  app.hovered = p;
  const key = `${m.geom.epoch}|${t.legs.join(",")}`, cached = app.quotes.get(key);
  const tip = $("tip");
  tip.textContent = tipText(app, t, cached ? cached.quotes : null);
  if (cached && performance.now() - cached.at < QUOTES_TTL_MS) return;
  app.quotes.set(key, { at: performance.now(), quotes: cached ? cached.quotes : null });
  try {
    const q = new URLSearchParams({ epoch: m.geom.epoch, symbols: t.legs.join(",") });
    const r = await fetch(`/api/quotes/${encodeURIComponent(app.view.underlying)}?${q}`, { credentials: "same-origin" });
    if (!r.ok) return;
    const quotes = (await r.json()).quotes;
    app.quotes.set(key, { at: performance.now(), quotes });
    if (app.quotes.size > QUOTES_KEPT) app.quotes.delete(app.quotes.keys().next().value);
    const now = m.tileAt(p, true);
    if (app.hovered === p && !tip.hidden && now) tip.textContent = tipText(app, now, quotes);
  } catch (e) { /* the next hover tries again */ }
}

export function bindTip(app) {
  const tip = $("tip");
  $("heatmap").addEventListener("mousemove", (e) => {
    const td = e.target.closest("td[data-pos], td.void");
    if (!td) { tip.hidden = true; return; }
    tip.hidden = false;
    tip.style.left = Math.min(e.clientX + 14, innerWidth - tip.offsetWidth - 8) + "px";
    tip.style.top = (e.clientY + 14 + tip.offsetHeight > innerHeight ? e.clientY - tip.offsetHeight - 10 : e.clientY + 14) + "px";
    if (!td.dataset.pos) { tip.textContent = "no such structure: a leg's strike is not listed for this expiry"; return; }
    hover(app, Number(td.dataset.pos));
  });
  $("heatmap").addEventListener("mouseleave", () => { tip.hidden = true; app.hovered = null; });
}
