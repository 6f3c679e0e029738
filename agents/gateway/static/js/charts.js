// MarketSwarm dashboard charts: GEX (by strike with the gamma profile, by expiry, strike x expiry) and
// the intent map, drawn with Apache ECharts (vendored: static/vendor/echarts, see ops/vendor). Axes,
// units, legends, tooltips and zoom are the library's; this file only maps the models onto it.
// ECharts is the vendored classic script (the global `echarts`), loaded before the modules.
import { esc } from "./format.js";

const echarts = window.echarts;

const CHART_THEME = {
  text: "#7d8a99", line: "#1f2a36", good: "#3ddc97", bad: "#ff5d6c", accent: "#4cc2ff", warn: "#ffb547", fg: "#d6dde6",
};
const GEX_UNITS = "GEX, USD per 1% move";
const GEX_RANGE = 0.06; // strikes within +/- 6 % of spot on the by-strike chart (zoom shows the rest)

const charts = {}; // element id -> echarts instance

function chartOn(id) {
  const el = document.getElementById(id);
  let c = charts[id];
  if (!c || c.isDisposed()) {
    c = echarts.init(el, null, { renderer: "canvas" });
    charts[id] = c;
    new ResizeObserver(() => c.resize()).observe(el);
  }
  return c;
}

function moneyAxis(v) {
  const a = Math.abs(v);
  const s = a >= 1e9 ? (a / 1e9).toFixed(1) + "B" : a >= 1e6 ? (a / 1e6).toFixed(0) + "M" : a >= 1e3 ? (a / 1e3).toFixed(0) + "K" : a.toFixed(0);
  return (v < 0 ? "-$" : "$") + s;
}

const axisStyle = (name, extra = {}) => ({
  name, nameLocation: "middle", nameGap: 34, nameTextStyle: { color: CHART_THEME.text },
  axisLine: { lineStyle: { color: CHART_THEME.line } }, axisLabel: { color: CHART_THEME.text },
  splitLine: { lineStyle: { color: CHART_THEME.line } }, ...extra,
});

// The levels a trader reads off a GEX chart, as vertical lines at their strikes. Each label runs
// along its own line, so levels a few points apart never print over each other.
function levelLines(h, view) {
  const lines = [
    ["spot", h.spot, CHART_THEME.accent, "solid"],
    ["flip", view.flip, CHART_THEME.warn, "dashed"],
    ["call wall", view.call_wall_above, CHART_THEME.good, "dotted"],
    ["put wall", view.put_wall_below, CHART_THEME.bad, "dotted"],
  ].filter(([, x]) => x !== null && x !== undefined);
  return {
    symbol: "none", silent: true,
    data: lines.map(([name, x, color, type]) => ({
      name, xAxis: x, lineStyle: { color, type, width: 1.5 },
      label: { formatter: `${name} ${Number(x).toFixed(0)}`, position: "insideEndTop", color, fontSize: 11 },
    })),
  };
}

// GEX by strike: call and put bars (stacked, they are of opposite signs), net as a line, and the gamma
// profile (net GEX re-priced at each hypothetical spot) on the same axes: x is a price either way.
function gexByStrikeOption(h, view, rows) {
  const lo = h.spot * (1 - GEX_RANGE), hi = h.spot * (1 + GEX_RANGE);
  const near = rows.filter((r) => r.strike >= lo && r.strike <= hi);
  const step = near.length > 1 ? Math.min(...near.slice(1).map((r, i) => r.strike - near[i].strike)) : 5;
  const bar = (name, key, color) => ({
    name, type: "bar", stack: "gex", data: near.map((r) => [r.strike, r[key]]), itemStyle: { color }, barWidth: "60%",
    emphasis: { focus: "series" },
  });
  const series = [];
  if (near.some((r) => r.call !== undefined)) series.push(bar("Call GEX", "call", CHART_THEME.good), bar("Put GEX", "put", CHART_THEME.bad));
  series.push({ name: "Net GEX", type: "line", data: near.map((r) => [r.strike, r.net]), symbol: "circle", symbolSize: 3,
    lineStyle: { color: CHART_THEME.fg, width: 1 }, itemStyle: { color: CHART_THEME.fg }, markLine: levelLines(h, view) });
  const prof = (view.profile || []).filter((p) => p.spot >= lo && p.spot <= hi);
  if (prof.length) series.push({ name: "Gamma profile (net GEX if spot were here)", type: "line", smooth: true, showSymbol: false, yAxisIndex: 1,
    data: prof.map((p) => [p.spot, p.net]), lineStyle: { color: CHART_THEME.accent, width: 2, type: "dashed" }, itemStyle: { color: CHART_THEME.accent } });
  return {
    animation: false, backgroundColor: "transparent",
    grid: { left: 80, right: prof.length ? 80 : 30, top: 40, bottom: 80 },
    legend: { top: 4, textStyle: { color: CHART_THEME.fg } },
    tooltip: { trigger: "axis", axisPointer: { type: "line" },
      valueFormatter: (v) => (typeof v === "number" ? moneyAxis(v) : v) },
    xAxis: axisStyle("strike (spot, for the profile)", { type: "value", min: Math.floor(lo / step) * step, max: Math.ceil(hi / step) * step, scale: true }),
    // The profile sums every strike: its own axis (right), or the strikes' bars would be flat lines.
    yAxis: [
      axisStyle(GEX_UNITS + " (by strike)", { type: "value", nameGap: 62, axisLabel: { color: CHART_THEME.text, formatter: moneyAxis } }),
      axisStyle("profile: total net " + GEX_UNITS, { type: "value", nameGap: 62, position: "right", show: prof.length > 0,
        splitLine: { show: false }, axisLabel: { color: CHART_THEME.accent, formatter: moneyAxis } }),
    ],
    dataZoom: [{ type: "inside", xAxisIndex: 0 }, { type: "slider", xAxisIndex: 0, bottom: 8, height: 18, textStyle: { color: CHART_THEME.text } }],
    series,
  };
}

function gexByExpiryOption(h) {
  const rows = h.by_expiry || [];
  return {
    animation: false, grid: { left: 80, right: 30, top: 40, bottom: 60 },
    legend: { top: 4, textStyle: { color: CHART_THEME.fg } },
    tooltip: { trigger: "axis", valueFormatter: moneyAxis },
    xAxis: axisStyle("expiry", { type: "category", data: rows.map((r) => r.expiry) }),
    yAxis: axisStyle(GEX_UNITS, { type: "value", nameGap: 62, axisLabel: { color: CHART_THEME.text, formatter: moneyAxis } }),
    dataZoom: [{ type: "inside" }],
    series: [{ name: "Net GEX by expiry", type: "bar", data: rows.map((r) => ({ value: r.net, itemStyle: { color: r.net >= 0 ? CHART_THEME.good : CHART_THEME.bad } })) }],
  };
}

function gexMatrixOption(h) {
  const m = h.by_expiry_strike;
  if (!m) return null;
  const data = [], abs = [];
  m.net.forEach((row, y) => row.forEach((v, x) => { data.push([x, y, v]); abs.push(Math.abs(v)); }));
  const top = Math.max(1, ...abs);
  const spotX = m.strikes.reduce((b, k, i) => (Math.abs(k - h.spot) < Math.abs(m.strikes[b] - h.spot) ? i : b), 0);
  return {
    animation: false, grid: { left: 90, right: 30, top: 30, bottom: 110 },
    tooltip: { formatter: (p) => `${esc(m.expiries[p.value[1]])} · strike ${esc(m.strikes[p.value[0]])}<br>net GEX ${moneyAxis(p.value[2])} per 1%` },
    xAxis: axisStyle("strike", { type: "category", data: m.strikes.map(String), splitArea: { show: false } }),
    yAxis: axisStyle("expiry", { type: "category", data: m.expiries, nameGap: 76 }),
    visualMap: { min: -top, max: top, calculable: true, orient: "horizontal", left: "center", bottom: 8,
      text: ["dealers long gamma", "short gamma"], textStyle: { color: CHART_THEME.text },
      inRange: { color: [CHART_THEME.bad, "#121821", CHART_THEME.good] }, formatter: moneyAxis },
    dataZoom: [{ type: "inside", xAxisIndex: 0 }],
    series: [{ name: "Net GEX (strike x expiry)", type: "heatmap", data, emphasis: { itemStyle: { borderColor: "#fff", borderWidth: 1 } },
      markLine: { symbol: "none", silent: true, data: [{ name: "spot", xAxis: spotX, lineStyle: { color: CHART_THEME.accent }, label: { formatter: `spot ${h.spot.toFixed(0)}`, color: CHART_THEME.accent } }] } }],
  };
}

// The per-strike rows of the chosen expiry view: every expiry (the model's columns), 0DTE (its own
// view), or one expiry of the strike x expiry matrix (net only).
function gexView(h, rows, which) {
  if (which === "0dte") return h.zero_dte ? { view: h.zero_dte, rows: h.zero_dte.by_strike } : null;
  if (which && which !== "all") {
    const m = h.by_expiry_strike, y = m ? m.expiries.indexOf(which) : -1;
    if (y < 0) return null;
    // One expiry: net by strike only; its own flip and walls are not in the model, so none is drawn.
    const view = { profile: [], flip: null, call_wall_above: null, put_wall_below: null };
    return { view, rows: m.strikes.map((k, x) => ({ strike: k, net: m.net[y][x] })) };
  }
  return { view: h, rows };
}

function drawGexChart(mode, h, rows, which) {
  const c = chartOn("gex-chart");
  let option = null;
  if (mode === "expiry") option = gexByExpiryOption(h);
  else if (mode === "matrix") option = gexMatrixOption(h);
  else { const v = gexView(h, rows, which); option = v ? gexByStrikeOption(h, v.view, v.rows) : null; }
  if (!option) { c.clear(); return false; }
  c.setOption(option, { notMerge: true, lazyUpdate: true });
  return true;
}

function drawIntentChart(rows) {
  if (!rows.length) { chartOn("intent-chart").clear(); return; }
  const by = new Map();
  for (const r of rows) { const e = by.get(r.strike) || { call: 0, put: 0 }; e[r.side] = r.net_premium; by.set(r.strike, e); }
  const strikes = [...by.keys()].sort((a, b) => a - b);
  const c = chartOn("intent-chart");
  c.setOption({
    animation: false, grid: { left: 80, right: 30, top: 40, bottom: 60 },
    legend: { top: 4, textStyle: { color: CHART_THEME.fg } },
    tooltip: { trigger: "axis", valueFormatter: moneyAxis },
    xAxis: axisStyle("strike", { type: "category", data: strikes.map(String) }),
    yAxis: axisStyle("net premium, USD (bought − sold)", { type: "value", nameGap: 62, axisLabel: { color: CHART_THEME.text, formatter: moneyAxis } }),
    dataZoom: [{ type: "inside" }, { type: "slider", bottom: 8, height: 18 }],
    series: [
      { name: "Calls", type: "bar", data: strikes.map((k) => by.get(k).call), itemStyle: { color: CHART_THEME.good } },
      { name: "Puts", type: "bar", data: strikes.map((k) => by.get(k).put), itemStyle: { color: CHART_THEME.bad } },
    ],
  }, { notMerge: true, lazyUpdate: true });
}

// The Day view: spot over the session with the levels as step lines (each holds until its next
// point), the market mode as a coloured band under it, and the 5-minute net premium as bars. One
// tooltip reads every value of the row at the hovered time.
const MODE_COLORS = { compression: CHART_THEME.good, expansion: CHART_THEME.bad, transition: CHART_THEME.warn, neutral: "#3a4654" };
const DAY_LINES = [
  ["spot", "Spot", CHART_THEME.accent, "solid", false],
  ["flip", "Flip", CHART_THEME.warn, "dashed", true],
  ["call_wall", "Call wall", CHART_THEME.good, "dotted", true],
  ["put_wall", "Put wall", CHART_THEME.bad, "dotted", true],
  ["gravity_level", "Gravity level", "#c792ea", "dashed", true],
];
const DAY_TIP = [
  ["spot", "spot", 2], ["flip", "flip", 2], ["call_wall", "call wall", 2], ["put_wall", "put wall", 2],
  ["gex_total", "net GEX", "money"], ["mode", "mode", null], ["mode_score", "mode score", 0],
  ["gravity_level", "gravity level", 2], ["gravity_band_low", "band low", 2], ["gravity_band_high", "band high", 2],
  ["expected_move", "expected move", 2], ["intent_bias", "intent bias", 0], ["intent_pin", "intent pin", 0],
  ["intent_quadrant", "quadrant", null], ["net_premium_day", "net premium (day)", "money"], ["net_premium_5m", "net premium (5m)", "money"],
];

function dayTipValue(v, how) {
  if (v === null || v === undefined) return "-";
  if (how === "money") return moneyAxis(v);
  return how === null ? String(v) : Number(v).toFixed(how);
}

function timeLabel(t) {
  const d = new Date(t), pad = (x) => String(x).padStart(2, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function modeBands(rows) {
  const out = [];
  for (let i = 0; i < rows.length; i++) {
    const m = rows[i].mode;
    if (!m) continue;
    const end = i + 1 < rows.length ? rows[i + 1].t : rows[i].t + 1000;
    const last = out[out.length - 1];
    if (last && last.mode === m && last.end === rows[i].t) last.end = end;
    else out.push({ mode: m, start: rows[i].t, end });
  }
  return out.map((b) => [{ xAxis: b.start, itemStyle: { color: MODE_COLORS[b.mode] || "#3a4654", opacity: 0.8 }, name: b.mode }, { xAxis: b.end }]);
}

function drawDayChart(rows) {
  const c = chartOn("day-chart");
  if (!rows.length) { c.clear(); return false; }
  const x = { type: "time", axisLabel: { color: CHART_THEME.text, formatter: (t) => timeLabel(t) }, axisLine: { lineStyle: { color: CHART_THEME.line } }, splitLine: { show: false } };
  const series = DAY_LINES.map(([f, name, color, type, step]) => ({
    name, type: "line", xAxisIndex: 0, yAxisIndex: 0, showSymbol: false, step: step ? "end" : false, connectNulls: false,
    data: rows.map((r) => [r.t, r[f]]), lineStyle: { color, type, width: f === "spot" ? 2 : 1.5 }, itemStyle: { color },
  }));
  series.push({ name: "Market mode", type: "line", xAxisIndex: 1, yAxisIndex: 1, showSymbol: false, data: rows.map((r) => [r.t, 0]),
    lineStyle: { opacity: 0 }, markArea: { silent: true, data: modeBands(rows) } });
  series.push({ name: "Net premium (5m)", type: "bar", xAxisIndex: 2, yAxisIndex: 2, large: true,
    data: rows.map((r) => ({ value: [r.t, r.net_premium_5m], itemStyle: { color: r.net_premium_5m >= 0 ? CHART_THEME.good : CHART_THEME.bad } })) });
  c.setOption({
    animation: false, backgroundColor: "transparent",
    legend: { top: 4, textStyle: { color: CHART_THEME.fg }, data: [...DAY_LINES.map((l) => l[1]), "Net premium (5m)"] },
    axisPointer: { link: [{ xAxisIndex: "all" }] },
    grid: [{ left: 80, right: 30, top: 36, height: "52%" }, { left: 80, right: 30, top: "64%", height: 18 }, { left: 80, right: 30, top: "72%", bottom: 60 }],
    xAxis: [{ ...x, gridIndex: 0, axisLabel: { show: false } }, { ...x, gridIndex: 1, axisLabel: { show: false } }, { ...x, gridIndex: 2 }],
    yAxis: [
      axisStyle("price", { gridIndex: 0, type: "value", scale: true, nameGap: 56 }),
      { gridIndex: 1, type: "value", show: false, min: 0, max: 1 },
      axisStyle("net premium, 5m", { gridIndex: 2, type: "value", nameGap: 56, axisLabel: { color: CHART_THEME.text, formatter: moneyAxis } }),
    ],
    tooltip: {
      trigger: "axis", className: "day-tip",
      formatter: (params) => {
        const p = params.find((q) => q.seriesIndex === 0) || params[0];
        const r = rows[p.dataIndex];
        if (!r) return "";
        return `<b data-t="${Number(r.t)}">${esc(timeLabel(r.t))}</b><br>` + DAY_TIP.map(([f, label, how]) => `<span data-f="${f}">${esc(label)} <b>${esc(dayTipValue(r[f], how))}</b></span>`).join("<br>");
      },
    },
    dataZoom: [{ type: "inside", xAxisIndex: [0, 1, 2] }, { type: "slider", xAxisIndex: [0, 1, 2], bottom: 8, height: 18, textStyle: { color: CHART_THEME.text } }],
    series,
  }, { lazyUpdate: true }); // merged: the zoom and a tooltip under the mouse survive new points
  return true;
}

function hideDayTip() {
  const c = charts["day-chart"];
  if (c && !c.isDisposed()) c.dispatchAction({ type: "hideTip" });
}

export { charts, drawDayChart, drawGexChart, drawIntentChart, gexView, hideDayTip };

// A position's risk graph (GET /api/risk): P&L in dollars against the underlying in points, at expiry
// and before it, with the breakevens, spot and the expected move marked.
export function drawRiskChart(id, r) {
  const usd = (pts) => pts * r.multiplier;
  const line = (name, ys, color, type = "solid") => ({
    name, type: "line", showSymbol: false, data: r.x.map((x, i) => [x, usd(ys[i])]), lineStyle: { color, width: 2, type }, itemStyle: { color },
  });
  const colors = [CHART_THEME.accent, CHART_THEME.warn, CHART_THEME.text];
  const series = [line("at expiry", r.expiry_pnl, CHART_THEME.fg), ...r.curves.map((c, i) => line(c.label, c.pnl, colors[i % colors.length], "dashed"))];
  const em = r.expected_move;
  series[0].markLine = { symbol: "none", silent: true, data: [
    ...r.breakevens.map((b) => ({ xAxis: b, lineStyle: { color: CHART_THEME.good, type: "dotted" }, label: { formatter: `breakeven ${b.toFixed(2)}`, color: CHART_THEME.good, position: "insideEndTop", fontSize: 11 } })),
    { xAxis: r.spot, lineStyle: { color: CHART_THEME.accent }, label: { formatter: `spot ${r.spot.toFixed(2)}`, color: CHART_THEME.accent, position: "insideStartTop", fontSize: 11 } },
    { yAxis: 0, lineStyle: { color: CHART_THEME.line }, label: { show: false } },
  ] };
  series[0].markArea = { silent: true, itemStyle: { color: "rgba(76,194,255,0.07)" }, data: [[{ xAxis: em.low, name: "expected move" }, { xAxis: em.high }]],
    label: { color: CHART_THEME.text, fontSize: 10 } };
  const lo = Math.max(0, em.low - 2 * em.points), hi = em.high + 2 * em.points;
  chartOn(id).setOption({
    animation: false, backgroundColor: "transparent", grid: { left: 70, right: 20, top: 36, bottom: 70 },
    legend: { top: 4, textStyle: { color: CHART_THEME.fg } },
    tooltip: { trigger: "axis", valueFormatter: (v) => (typeof v === "number" ? "$" + v.toFixed(0) : v) },
    xAxis: axisStyle(`${r.underlying} at ${r.expiry} (points)`, { type: "value", min: Math.floor(lo), max: Math.ceil(hi), scale: true }),
    yAxis: axisStyle("P&L (USD)", { type: "value", nameGap: 52, axisLabel: { color: CHART_THEME.text, formatter: (v) => "$" + v } }),
    dataZoom: [{ type: "inside" }, { type: "slider", bottom: 8, height: 16, textStyle: { color: CHART_THEME.text } }],
    series,
  }, true);
}
