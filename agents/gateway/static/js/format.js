// Formatting and escaping for every view: numbers, money, strikes, times, colours. Every string that
// comes from data and goes into markup goes through esc(); text goes in through textContent.

export const $ = (id) => document.getElementById(id);

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
export function esc(x) { return String(x ?? "").replace(/[&<>"']/g, (c) => ESCAPES[c]); }

const VIRIDIS = ["#440154", "#482475", "#414487", "#355f8d", "#2a788e", "#21918c", "#22a884", "#44bf70", "#7ad151", "#bddf26", "#fde725"];
function hex(h) { return [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16)); }
export function color(t) {
  const x = Math.max(0, Math.min(1, t)) * (VIRIDIS.length - 1);
  const i = Math.floor(x);
  const j = Math.min(VIRIDIS.length - 1, i + 1);
  const a = hex(VIRIDIS[i]), b = hex(VIRIDIS[j]), f = x - i;
  return `rgb(${a.map((v, k) => Math.round(v + (b[k] - v) * f)).join(",")})`;
}

export function fmt(v, d = 2) { return v === null || v === undefined || Number.isNaN(v) ? "-" : Number(v).toFixed(d); }
export function money(v) {
  if (v === null || v === undefined) return "-";
  const a = Math.abs(v);
  const s = a >= 1e9 ? (a / 1e9).toFixed(2) + "B" : a >= 1e6 ? (a / 1e6).toFixed(1) + "M" : a.toFixed(0);
  return (v < 0 ? "-$" : "$") + s;
}
export function strikeLabel(k) { return Number.isInteger(k) ? String(k) : Number(k).toFixed(2); }

export function localTime(ns) {
  const d = new Date(ns / 1e6), pad = (x, n = 2) => String(x).padStart(n, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}
export function ageText(age) {
  return age < 90 ? `${age.toFixed(1)}s old` : age < 5400 ? `${(age / 60).toFixed(0)}m old` : age < 172800 ? `${(age / 3600).toFixed(1)}h old` : `${(age / 86400).toFixed(0)}d old`;
}

// <option>s for a <select>, each value and label escaped.
export function options(values, label = (v) => v) {
  return values.map((v) => `<option value="${esc(v)}">${esc(label(v))}</option>`).join("");
}
