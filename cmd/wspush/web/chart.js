// Time-series storage and canvas charts for the dashboard: no libraries.
// A Series keeps, per sensor, the source time (ts) of each value, its
// end-to-end latency and up to MAX_FIELDS numeric fields, bounded by age
// and by count. drawChart plots one of them against a time axis.

export const MAX_FIELDS = 4;
export const MAX_POINTS = 2000; // per sensor: 15 min at 2 values/s
export const MAX_AGE = 15 * 60 * 1000; // the longest chart window

export class Series {
  constructor() {
    this.t = [];      // value times (ms): the publication's ts
    this.lat = [];    // now − ts at arrival (ms)
    this.fields = new Map(); // field name -> values (NaN where absent)
    this.head = 0;    // index of the oldest kept point
    this.marks = [];  // {t, label}: resets, drawn as vertical lines
  }

  get length() { return this.t.length - this.head; }

  // push appends a point: nums is [[field, number], ...].
  push(t, lat, nums) {
    const n = this.t.length;
    for (const [k] of nums) {
      if (!this.fields.has(k) && this.fields.size < MAX_FIELDS) this.fields.set(k, new Array(n).fill(NaN));
    }
    this.t.push(t);
    this.lat.push(lat);
    for (const [k, ys] of this.fields) {
      const hit = nums.find((e) => e[0] === k);
      ys.push(hit ? hit[1] : NaN);
    }
    this.trim(t);
  }

  mark(t, label) {
    this.marks.push({ t, label });
    if (this.marks.length > 50) this.marks.shift();
  }

  // trim drops points older than MAX_AGE before now and beyond MAX_POINTS,
  // compacting the arrays now and then instead of shifting at every value.
  trim(now) {
    const end = this.t.length;
    while (this.head < end && (end - this.head > MAX_POINTS || this.t[this.head] < now - MAX_AGE)) this.head++;
    while (this.marks.length && this.marks[0].t < now - MAX_AGE) this.marks.shift();
    if (this.head > 512 && this.head * 2 > end) {
      this.t.splice(0, this.head);
      this.lat.splice(0, this.head);
      for (const ys of this.fields.values()) ys.splice(0, this.head);
      this.head = 0;
    }
  }

  // varying returns the first field whose values are not all equal, else the first.
  varying() {
    let first = null;
    for (const [k, ys] of this.fields) {
      first ??= k;
      let a = NaN;
      for (let i = this.head; i < ys.length; i++) {
        if (Number.isNaN(ys[i])) continue;
        if (Number.isNaN(a)) a = ys[i];
        else if (ys[i] !== a) return k;
      }
    }
    return first;
  }
}

// ---------- drawing ----------

const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800].map((s) => s * 1000);
const pad2 = (n) => String(n).padStart(2, '0');

function timeLabel(t, step) {
  const d = new Date(t);
  return step < 60000 ? `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}` : `${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
}

// niceStep rounds a raw step up to 1, 2 or 5 times a power of ten.
function niceStep(raw) {
  const p = 10 ** Math.floor(Math.log10(raw)), f = raw / p;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
}

export function fmtNum(v, step = 0) {
  if (!Number.isFinite(v)) return '–';
  const digits = step > 0 ? Math.max(0, Math.min(6, -Math.floor(Math.log10(step)))) : (Math.abs(v) >= 100 ? 0 : Math.abs(v) >= 1 ? 2 : 3);
  return v.toFixed(digits);
}

export function fmtMs(ms) {
  if (!Number.isFinite(ms)) return '–';
  const a = Math.abs(ms);
  if (a < 10 && !Number.isInteger(ms)) return `${ms.toFixed(1)} ms`;
  if (a < 1000) return `${Math.round(ms)} ms`;
  if (a < 60000) return `${(ms / 1000).toFixed(a < 10000 ? 2 : 1)} s`;
  if (a < 3600000) return `${(ms / 60000).toFixed(1)} min`;
  return `${(ms / 3600000).toFixed(1)} h`;
}

// Colours come from the page's CSS variables, read once and again when the
// colour scheme changes.
let theme = null;
export function readTheme() {
  const cs = getComputedStyle(document.documentElement);
  const v = (name) => cs.getPropertyValue(name).trim();
  theme = { fg: v('--fg'), muted: v('--muted'), grid: v('--border'), line: v('--accent'), lat: v('--warn'), mark: v('--bad'), font: '11px system-ui, sans-serif' };
}

// fit sizes the canvas's backing store to its CSS size (given, never read
// from layout here: callers cache it from a ResizeObserver) and returns the
// context scaled to CSS pixels, or null when it has no size.
export function fit(canvas, w, h) {
  if (!w || !h) return null;
  const dpr = window.devicePixelRatio || 1, bw = Math.round(w * dpr), bh = Math.round(h * dpr);
  if (canvas.width !== bw || canvas.height !== bh) { canvas.width = bw; canvas.height = bh; }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  return ctx;
}

// empty writes a note in the middle of a chart that has nothing to show.
export function empty(ctx, w, h, text) {
  if (!theme) readTheme();
  ctx.font = theme.font;
  ctx.fillStyle = theme.muted;
  ctx.textAlign = 'center';
  ctx.textBaseline = 'middle';
  ctx.fillText(text, w / 2, h / 2);
}

// plot draws ys (against series.t) in the rectangle r = {x, y, w, h} over
// the time range [from, to], with a y axis on the left and, when xAxis is
// set, time labels below. It returns the {min, max, last} it showed.
export function plot(ctx, series, ys, r, from, to, { color, xAxis = true, fmtY = fmtNum, yTicks = 3, gapMs = 0 }) {
  if (!theme) readTheme();
  const { t, head } = series;
  let lo = Infinity, hi = -Infinity, last = NaN, n = 0;
  for (let i = head; i < t.length; i++) {
    if (t[i] < from || t[i] > to || Number.isNaN(ys[i])) continue;
    lo = Math.min(lo, ys[i]); hi = Math.max(hi, ys[i]); last = ys[i]; n++;
  }
  ctx.font = theme.font;
  ctx.lineWidth = 1;
  // y axis: nice ticks around the data.
  const dataMin = lo, dataMax = hi;
  if (!n) { lo = 0; hi = 1; }
  if (hi === lo) { const d = Math.abs(hi) * 0.05 || 0.5; lo -= d; hi += d; }
  const step = niceStep((hi - lo) / yTicks);
  const y0 = Math.floor(lo / step) * step, y1 = Math.ceil(hi / step) * step;
  const Y = (v) => r.y + r.h - ((v - y0) / (y1 - y0)) * r.h;
  const X = (tt) => r.x + ((tt - from) / (to - from)) * r.w;
  ctx.textBaseline = 'middle';
  ctx.textAlign = 'right';
  ctx.strokeStyle = theme.grid;
  ctx.fillStyle = theme.muted;
  ctx.beginPath();
  for (let v = y0; v <= y1 + step / 2; v += step) {
    const y = Math.round(Y(v)) + 0.5;
    ctx.moveTo(r.x, y); ctx.lineTo(r.x + r.w, y);
    ctx.fillText(fmtY(v, step), r.x - 4, y);
  }
  // time axis: ticks at round local times.
  const maxTicks = Math.max(2, Math.floor(r.w / 70));
  const tStep = TIME_STEPS.find((s) => (to - from) / s <= maxTicks) ?? TIME_STEPS[TIME_STEPS.length - 1];
  const off = new Date(to).getTimezoneOffset() * 60000;
  ctx.textAlign = 'center';
  ctx.textBaseline = 'top';
  for (let tt = Math.ceil((from - off) / tStep) * tStep + off; tt <= to; tt += tStep) {
    const x = Math.round(X(tt)) + 0.5;
    ctx.moveTo(x, r.y); ctx.lineTo(x, r.y + r.h);
    if (xAxis && x > r.x + 20 && x < r.x + r.w - 20) ctx.fillText(timeLabel(tt, tStep), x, r.y + r.h + 3);
  }
  ctx.stroke();
  // reset marks
  ctx.strokeStyle = theme.mark;
  ctx.setLineDash([3, 3]);
  ctx.beginPath();
  for (const m of series.marks) {
    if (m.t < from || m.t > to) continue;
    const x = Math.round(X(m.t)) + 0.5;
    ctx.moveTo(x, r.y); ctx.lineTo(x, r.y + r.h);
  }
  ctx.stroke();
  ctx.setLineDash([]);
  // the line, broken at resets and at gaps longer than gapMs
  ctx.save();
  ctx.beginPath();
  ctx.rect(r.x, r.y - 2, r.w + 3, r.h + 4);
  ctx.clip();
  ctx.strokeStyle = color ?? theme.line;
  ctx.lineWidth = 1.5;
  ctx.lineJoin = 'round';
  ctx.beginPath();
  // A gap: no value for 5 times the usual interval (and at least 10 s).
  if (!gapMs) {
    const d = [];
    for (let i = Math.max(head + 1, t.length - 41); i < t.length; i++) d.push(t[i] - t[i - 1]);
    d.sort((a, b) => a - b);
    gapMs = Math.max(10000, 5 * (d[d.length >> 1] ?? 0));
  }
  let pen = false, prevT = -Infinity, mi = 0, lx = NaN, ly = NaN;
  const marks = series.marks;
  for (let i = head; i < t.length; i++) {
    if (t[i] < from - (to - from) / 50 || Number.isNaN(ys[i])) continue;
    while (mi < marks.length && marks[mi].t <= t[i]) { if (marks[mi].t > prevT) pen = false; mi++; }
    if (t[i] - prevT > gapMs) pen = false;
    lx = X(t[i]); ly = Y(ys[i]);
    if (pen) ctx.lineTo(lx, ly); else ctx.moveTo(lx, ly);
    pen = true;
    prevT = t[i];
  }
  ctx.stroke();
  if (Number.isFinite(lx)) {
    ctx.fillStyle = color ?? theme.line;
    ctx.beginPath();
    ctx.arc(lx, ly, 2.5, 0, 2 * Math.PI);
    ctx.fill();
  }
  ctx.restore();
  return { min: n ? dataMin : NaN, max: n ? dataMax : NaN, last, n };
}

export const themeColor = (name) => { if (!theme) readTheme(); return theme[name]; };
