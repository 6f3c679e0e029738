// The day as a timeline: the level history (the Day view's rows, from REST, then the level feeds'
// points as they come) and a past moment (the scrubber: every view drawn from the models as they
// stood then, read with ?at=). The server answers what was in force at a time; this module only
// fetches, keeps rows in time order, and carries each series' values forward as the server does.

import { ColumnsModel } from "./model.js";

export const LEVEL_MODELS = ["gex", "market_mode", "gravity", "intent"];
const PAGE_ROWS = 5000;

const get = async (url) => {
  const r = await fetch(url, { credentials: "same-origin" });
  return r.ok ? r.json() : null;
};

export class DayHistory {
  constructor() {
    this.u = null;
    this.fields = null; // the REST columns' names, t first
    this.rows = []; // {t, field: value...} in time order, every field carried forward
    this.sources = {}; // model -> its fields (from the level events)
    this.span = null; // {first, last}: the retained level history (epoch ms)
    this.loading = null;
    this.ready = false; // loaded: the level feeds go on from the last row
  }

  // Today's rows of underlying u, page by page (REST), from the start of its newest day.
  load(u) {
    if (this.u === u && this.loading) return this.loading;
    this.u = u;
    this.rows = [];
    this.loading = (async () => {
      let from = null, guard = 0;
      do {
        const q = new URLSearchParams({ limit: String(PAGE_ROWS) });
        if (from !== null) q.set("from", String(from));
        const page = await get(`/api/history/${encodeURIComponent(u)}/levels?${q}`);
        if (!page || this.u !== u) return;
        this.fields = page.fields;
        this.span = page.retained;
        const cols = page.columns;
        for (let i = 0; i < cols.t.length; i++) {
          const row = {};
          for (const f of page.fields) row[f] = cols[f][i];
          this.insert(row, null);
        }
        from = page.next;
      } while (from !== null && ++guard < 50);
      this.ready = true;
    })();
    return this.loading;
  }

  // A level event ({model, t, its fields}) from the tab's feed: a row at t, the model's fields set
  // there and on every later row (they carried the model's older values forward).
  add(point) {
    const { model, t, ...values } = point;
    this.sources[model] = Object.keys(values);
    if (this.span) this.span.last = Math.max(this.span.last, t);
    this.insert({ t, ...values }, values);
  }

  insert(row, values) {
    const rows = this.rows;
    let i = rows.length;
    while (i > 0 && rows[i - 1].t > row.t) i--;
    if (i > 0 && rows[i - 1].t === row.t) {
      Object.assign(rows[i - 1], values || row);
      i--;
    } else {
      const prev = i > 0 ? rows[i - 1] : {};
      rows.splice(i, 0, { ...prev, ...row });
    }
    if (values) for (let j = i + 1; j < rows.length; j++) Object.assign(rows[j], values);
  }
}

// A past moment: the heatmap or GEX on screen (its columns, as the SSE snapshot has them) and the
// derived models' documents, as they stood at t. null entries: nothing kept from then.
export async function loadPast(u, strategy, columnsModel, derived, t) {
  const U = encodeURIComponent(u);
  const [cols, ...docs] = await Promise.all([
    columnsModel ? get(`/api/columns/${U}/${encodeURIComponent(strategy)}?at=${t}`) : null,
    ...derived.map((d) => get(`/api/models/${U}/${d}?at=${t}`)),
  ]);
  const model = new ColumnsModel();
  if (cols) { model.geometry(cols.geometry); model.snapshot(cols.snapshot); }
  const out = {};
  derived.forEach((d, i) => { if (docs[i]) out[d] = docs[i]; });
  return { t, model, docs: out };
}
