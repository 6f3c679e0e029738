// The tab's one SSE connection (GET /sse/tab): every feed the tab shows, multiplexed, so any number of
// tabs stay live within the browser's six connections per host. Each event's first data line names
// its feed ("SPX:butterfly"); the rest is the JSON the per-feed endpoints send. The feed keeps every
// feed's last version and reconnects (its own backoff, not EventSource's, whose retry would repeat
// the first request) with all of them, so each feed resumes exactly where it stopped: no gap, no
// duplicate. Changing the feeds reopens the connection the same way: the feeds kept resume, the new
// ones start from a snapshot. A "stalled" event says the gateway's store stopped answering (the
// connection stays up, the diffs wait); "resumed" that it answers again and the held diffs follow.

import { timedId } from "./alerts.js";

const RETRY_MIN_MS = 300;
const RETRY_MAX_MS = 4000;
// level: a point of a level series ("U:levels.gex"); alert: an alert ("U:alerts")
const TYPES = ["geometry", "snapshot", "diff", "level", "alert"];

export class TabFeed {
  // onEvent(feed, type, body) for every event in order; onStatus("up" | "stalled" | "retry") as the
  // connection and the store behind it go.
  constructor(onEvent, onStatus) {
    this.onEvent = onEvent;
    this.onStatus = onStatus;
    this.feeds = [];
    this.versions = new Map(); // feed -> last version applied
    this.es = null;
    this.timer = null;
    this.retryMs = RETRY_MIN_MS;
    this.status = "retry";
    this.stalled = new Set(); // feeds whose store stopped answering
  }

  // Follow exactly these feeds ("U:model"); the ones already followed keep their place.
  set(feeds) {
    const next = [...new Set(feeds)].sort();
    if (next.join(",") === this.feeds.join(",") && (this.es || this.timer)) return;
    for (const f of [...this.versions.keys()]) if (!next.includes(f)) this.versions.delete(f);
    this.feeds = next;
    this.open();
  }

  url() {
    const parts = this.feeds.map((f) => (this.versions.has(f) ? `${f}@${this.versions.get(f)}` : f));
    return `/sse/tab?feeds=${encodeURIComponent(parts.join(","))}`;
  }

  open() {
    this.close();
    if (!this.feeds.length) return;
    const es = new EventSource(this.url(), { withCredentials: true });
    this.es = es;
    es.onopen = () => { if (this.es === es) { this.retryMs = RETRY_MIN_MS; this.stalled.clear(); this.setStatus("up"); } };
    es.onerror = () => {
      if (this.es !== es) return;
      this.close();
      this.setStatus("retry");
      this.timer = setTimeout(() => { this.timer = null; this.open(); }, this.retryMs);
      this.retryMs = Math.min(RETRY_MAX_MS, this.retryMs * 2);
    };
    for (const type of TYPES) es.addEventListener(type, (e) => { if (this.es === es) this.take(type, e.data); });
    for (const type of ["stalled", "resumed"]) {
      es.addEventListener(type, (e) => {
        if (this.es !== es) return;
        const feed = e.data.slice(0, e.data.indexOf("\n"));
        if (type === "stalled") this.stalled.add(feed); else this.stalled.delete(feed);
        this.setStatus(this.stalled.size ? "stalled" : "up");
      });
    }
  }

  take(type, data) {
    const nl = data.indexOf("\n");
    const feed = data.slice(0, nl), body = JSON.parse(data.slice(nl + 1));
    if (!this.feeds.includes(feed)) return;
    this.onEvent(feed, type, body);
    if (type === "level") this.versions.set(feed, body.t); // a level series resumes after a time
    else if (type === "alert") this.versions.set(feed, timedId(body.id)); // alerts after an alert
    else if (type !== "geometry" && body) this.versions.set(feed, body.version);
  }

  close() {
    if (this.timer) { clearTimeout(this.timer); this.timer = null; }
    if (this.es) { this.es.close(); this.es = null; }
  }

  setStatus(s) { if (s !== this.status) { this.status = s; this.onStatus(s); } }
}
