// A heatmap or GEX model by position, as the feed delivers it: `geometry` (the epoch's labels, once),
// `snapshot` (every position's numbers), then `diff`s (changed positions as gaps, their numbers, the
// server's scores, contracts' quote times). Numbers live in typed arrays indexed by position; a diff
// marks its positions dirty so the next frame repaints only those cells.

export class ColumnsModel {
  constructor() {
    this.geom = null; // the geometry JSON, with typed arrays
    this.k = 1;
    this.vals = new Float64Array(0); // size * k; NaN = absent
    this.scores = new Float64Array(0); // per position: the server's reward/risk (NaN = none)
    this.cts = new Float64Array(0); // per contract: quote time, epoch ms (display only)
    this.header = null;
    this.version = null;
    this.dirty = new Set(); // positions changed since the last frame
    this.layout = 0; // bumped whenever positions mean something new (a new epoch, a snapshot)
  }

  geometry(g) {
    if (!g) return;
    g.seriesOf = Int16Array.from(g.series_of);
    g.strikeK = Float64Array.from(g.strike);
    g.widthW = Float64Array.from(g.width);
    g.legPos = Int32Array.from(g.legs);
    g.size = g.strikeK.length;
    this.geom = g;
    this.reset(this.k); // numbers for the new grid follow (a snapshot, or the diff that starts its epoch)
  }

  reset(k) {
    const g = this.geom;
    this.k = k;
    this.vals = new Float64Array((g ? g.size : 0) * k).fill(NaN);
    this.scores = new Float64Array(g ? g.size : 0).fill(NaN);
    this.cts = new Float64Array(g ? g.contracts.length : 0);
    this.layout++;
  }

  setTimes(cpos, ago, asofNs) {
    const asofMs = asofNs / 1e6;
    for (let i = 0; i < cpos.length; i++) this.cts[cpos[i]] = ago[i] === null ? 0 : asofMs - ago[i] / 1e6;
  }

  snapshot(s) {
    this.reset(s.k);
    const v = s.vals;
    for (let i = 0; i < v.length; i++) this.vals[i] = v[i] === null ? NaN : v[i];
    if (s.scores) for (let i = 0; i < s.scores.length; i++) this.scores[i] = s.scores[i] === null ? NaN : s.scores[i];
    this.setTimes(s.cts_ago_ns.map((_, i) => i), s.cts_ago_ns, s.header.asof_ns);
    this.header = s.header;
    this.version = s.version;
  }

  // A diff carries every column of the positions it changes, or those its ``cols`` name (the others
  // did not change: a heatmap's theo and PoP move only at a theo refresh). A position whose first
  // column is null is absent: every column of it.
  diff(d) {
    if (d.reset) this.reset(d.k);
    const k = d.k, cols = d.cols || [...Array(k).keys()], n = cols.length;
    let p = 0;
    for (let i = 0; i < d.pos.length; i++) {
      p += d.pos[i];
      if (d.vals[i * n] === null) this.vals.fill(NaN, p * k, p * k + k);
      else for (let j = 0; j < n; j++) { const x = d.vals[i * n + j]; this.vals[p * k + cols[j]] = x === null ? NaN : x; }
      if (d.scores) this.scores[p] = d.scores[i] === null ? NaN : d.scores[i];
      this.dirty.add(p);
    }
    let c = 0;
    const cpos = d.cpos.map((gap) => (c += gap));
    this.setTimes(cpos, d.cts_ago_ns, d.asof_ns);
    this.header = d.header;
    this.version = d.version;
  }

  apply(type, body) {
    if (type === "geometry") this.geometry(body);
    else if (type === "snapshot") this.snapshot(body);
    else if (type === "diff") this.diff(body);
  }

  value(p) { return this.vals[p * this.k]; }

  // A heatmap tile's other columns (the server's order: value, natural, theo, pop); NaN when absent.
  column(p, j) { return j < this.k ? this.vals[p * this.k + j] : NaN; }

  // Theo minus mid, and the market's width (natural debit less natural credit): the server's
  // definitions (schemas/documents.py edges, spreads) on its columns.
  edge(p) { return this.column(p, 2) - this.value(p); }

  spread(p) { return 2 * (this.column(p, 1) - this.value(p)); }

  score(p) { const s = this.scores[p]; return Number.isNaN(s) ? null : s; }

  // A tile as the REST model has it (blank: also a position without a value).
  tileAt(p, blank = false) {
    const g = this.geom, v = this.value(p);
    if (!g || (Number.isNaN(v) && !blank)) return null;
    const s = g.series[g.seriesOf[p]], n = g.n_legs;
    const legs = [], ts = [];
    for (let j = 0; j < n; j++) { const c = g.legPos[p * n + j]; legs.push(g.contracts[c]); ts.push(this.cts[c]); }
    const value = Number.isNaN(v) ? null : v;
    const num = (x) => (value === null || Number.isNaN(x) ? null : x);
    return { expiry: s.expiry, side: s.side, strike: g.strikeK[p], width: g.widthW[p], value, score: value === null ? null : this.score(p),
      natural: num(this.column(p, 1)), theo: num(this.column(p, 2)), pop: num(this.column(p, 3)), edge: num(this.edge(p)), spread: num(this.spread(p)), legs, ts };
  }
}

// An expiry is over once its close (the server's close_ns: 16:00 New York) is behind the model's
// as-of time: a replay of an old chain hides the expiries that had expired by then, as live does.
export function expired(series, asofNs) { return !!asofNs && asofNs >= series.close_ns; }
