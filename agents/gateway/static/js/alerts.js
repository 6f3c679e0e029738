// Alerts: the log panel, a toast for each new alert, and browser notifications. The day's alerts come
// from REST (/api/alerts), new ones on the tab's connection: one feed per alerts stream ("U:alerts",
// "U:alerts.intent", "U:alerts.best_flies"), each resumed after the newest id REST saw in it. Notifications are off until the viewer turns them on (the browser asks for its
// permission then); they show while the tab is in the background, one per alert (tagged with its
// fingerprint, so a repeat replaces rather than adds). Every string from data goes in as text.

import { $, fmt, localTime } from "./format.js";

const KEEP = 200; // alerts the log holds
const TOAST_MS = 8000;

// An alert's id "<ms>-<n>" as the feed's resume point: ms * 1000 + n.
export const timedId = (id) => { const [ms, n] = id.split("-").map(Number); return ms * 1000 + n; };
export const ALERT_FEEDS = ["alerts", "alerts.intent", "alerts.best_flies"];

const valuesText = (values) => Object.entries(values || {})
  .filter(([k]) => k !== "direction")
  .map(([k, v]) => `${k} ${typeof v === "number" ? fmt(v, Number.isInteger(v) ? 0 : 2) : v ?? "-"}`)
  .join(", ");

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

export class AlertLog {
  constructor() {
    this.u = null;
    this.items = []; // newest first
    this.ids = new Set();
    this.last = {}; // feed -> the newest id its stream held when the list was read: where it resumes
    this.notify = localStorage.getItem("ms.notify") === "on" && typeof Notification !== "undefined" && Notification.permission === "granted";
    this.unseen = 0;
  }

  // Today's alerts of ``u`` (REST), replacing the log; resolves when loaded.
  async load(u) {
    this.u = u;
    this.items = []; this.ids.clear(); this.last = {}; this.unseen = 0;
    try {
      const r = await fetch(`/api/alerts?underlying=${encodeURIComponent(u)}&limit=${KEEP}`, { credentials: "same-origin" });
      const body = r.ok ? await r.json() : null;
      if (body && this.u === u) {
        for (const a of body.alerts) this.add(a, false);
        this.last = body.last;
      }
    } catch { /* the feed brings new ones; the log fills as they come */ }
    this.render();
  }

  // An alert; ``fresh``: it just fired (toast and notification), not history.
  add(a, fresh = true) {
    const key = `${a.rule}|${a.id}`; // an id is unique within its stream; a rule belongs to one stream
    if (this.ids.has(key) || a.underlying !== this.u) return;
    this.ids.add(key);
    this.items.unshift(a);
    this.items.length = Math.min(this.items.length, KEEP);
    if (!fresh) return;
    if ($("alerts-panel").hidden) this.unseen++;
    this.render();
    this.toast(a);
    if (this.notify && typeof Notification !== "undefined" && Notification.permission === "granted") {
      new Notification(`${a.underlying} ${a.rule.replace("_", " ")} (${a.severity})`, { body: `${a.message}\n${valuesText(a.values)}`, tag: a.fingerprint });
    }
  }

  toast(a) {
    const t = el("div", `toast ${a.severity}`);
    t.append(el("b", "", a.message), el("div", "sub", valuesText(a.values)));
    $("toasts").append(t);
    setTimeout(() => t.remove(), TOAST_MS);
  }

  render() {
    $("alerts-count").textContent = String(this.unseen || this.items.length);
    $("alerts-btn").classList.toggle("hot", this.unseen > 0);
    const list = $("alerts-log");
    list.replaceChildren(...this.items.map((a) => {
      const li = el("li", a.severity);
      li.append(el("time", "", localTime(a.t_ns).slice(11, 19)), el("span", "rule", a.rule.replace("_", " ")),
        el("span", "msg", a.message), el("span", "sub", valuesText(a.values)));
      return li;
    }));
    $("alerts-empty").hidden = this.items.length > 0;
    const btn = $("notify");
    btn.textContent = this.notify ? "Notifications on" : "Notify me";
    btn.classList.toggle("active", this.notify);
  }

  async toggleNotify() {
    if (this.notify) { this.notify = false; localStorage.setItem("ms.notify", "off"); this.render(); return; }
    if (typeof Notification === "undefined") { $("notify").textContent = "no notifications in this browser"; return; }
    const p = Notification.permission === "granted" ? "granted" : await Notification.requestPermission();
    this.notify = p === "granted";
    localStorage.setItem("ms.notify", this.notify ? "on" : "off");
    this.render();
    if (!this.notify) $("notify").textContent = "notifications blocked by the browser";
  }

  togglePanel() {
    const panel = $("alerts-panel");
    panel.hidden = !panel.hidden;
    if (!panel.hidden) this.unseen = 0;
    this.render();
  }
}
