// wspush dashboard v2: plain ES modules, no dependencies. It talks to the
// server through the JS client served at /client.js, which tracks positions,
// reconnects and resumes (docs/PROTOCOL.md, The client rule), and batches and
// paces its commands under the server's command rate.
import { Client } from '/client.js';
import { Series, plot, fit, empty, fmtMs, fmtNum, readTheme, themeColor } from './chart.js';
import { startOps } from './ops.js';

const $ = (id) => document.getElementById(id);
const ID_RE = /^[A-Za-z0-9_-]{1,64}$/;
const ID_HELP = 'use 1–64 characters of A–Z a–z 0–9 _ -';
const MAX_SENSORS = 1000; // the server's --max-subscriptions default
const TABLE_FROM = 48;    // more sensors than this switch the page to the table view
const LOG_N = 50;
const RATE_S = 10;        // the rate is averaged over this many whole seconds
// A reset's "NOT recovered" note stays at least this long, values or not:
// a reset and the next value often land in the same frame, and a note
// nobody could see would hide the loss.
const RESET_NOTE_MS = 1500;
// Delivery modes (docs/PROTOCOL.md, Delivery modes): the value of a
// select.rate option and of data-mode, and its short label. "latest" alone
// has no max_rate; "latest:R" delivers at most R values per second.
const MODES = [
  ['stream', 'every value'], ['latest', 'latest'],
  ['latest:10', '≤ 10/s'], ['latest:5', '≤ 5/s'], ['latest:1', '≤ 1/s'], ['latest:0.5', '≤ 0.5/s'],
];
const MODE_LABEL = new Map(MODES);
const MODE_HELP = 'Delivery: every value (stream), or only the latest (values in between may be skipped), at most so many per second; switching resubscribes from the last position';
// modeOpts is what client.subscribe takes for a data-mode value.
function modeOpts(mode) {
  if (mode === 'stream') return { mode: 'stream' };
  const [, rate] = mode.split(':');
  return rate ? { mode: 'latest', maxRate: Number(rate) } : { mode: 'latest' };
}
// A sensor's selects are clones of these: 1,000 sensors cost 2,000 cheap
// clones, not 10,000 createElement calls.
const MODE_SELECT = el('select', { class: 'rate', title: MODE_HELP },
  ...MODES.map(([v, label]) => el('option', { value: v, text: label })));
const FORMAT_SELECT = el('select', { class: 'format', title: 'Format of the data frames: switching resubscribes from the last position' },
  el('option', { text: 'json' }), el('option', { text: 'binary' }));

// docs/PROTOCOL.md, Close codes. A refused upgrade (bad origin, 503, 429)
// never reaches WebSocket: the browser reports 1006 with no reason, the
// same as an unreachable server.
const CLOSE_MEANING = {
  1000: 'closed',
  1001: 'server going away (shutting down, or the connection was silent)',
  1002: 'protocol error: a frame broke RFC 6455',
  1005: 'closed without a status code',
  1006: 'connection failed (server unreachable, or refused: origin/limits)',
  1007: 'a command was not valid UTF-8',
  1008: 'closed by policy: command rate exceeded, too many bad commands, or a message not completed in time',
  1009: 'a message was too large',
  1011: 'server internal error',
  1012: 'server restarting',
  1013: 'server overloaded: try again later',
  4001: 'bad token: none, or an invalid one',
  4003: 'token expired',
  4008: 'too slow: this page did not read fast enough',
};
const RESET_MEANING = { // docs/PROTOCOL.md, Reset
  epoch: 'the server lost this key’s stream (restart, data loss or eviction) and started a new epoch',
  gap: 'values were published that the server can no longer deliver',
};

const sensors = new Map(); // "app/key" -> sensor, in the order added (the page never reorders them)
let client = null;
let connState = 'connecting';
let selected = null;       // the sensor in the detail chart
let windowMs = 60000;
let view = 'cards', viewChosen = false;
let totalValues = 0, lastTotal = 0, rateNow = 0;

// ---------- small helpers ----------
function el(tag, props = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  e.append(...kids);
  return e;
}
const pad = (n, w = 2) => String(n).padStart(w, '0');
const fmtClock = (ms) => { const d = new Date(ms); return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`; };
const plural = (n, w) => `${n.toLocaleString('en')} ${w}${n === 1 ? '' : 's'}`;
const hex = (b) => Array.from(b, (x) => pad(x.toString(16))).join(' ');
// setText changes an element's text in place: no new Text node per value.
function setText(node, text) {
  const t = node.firstChild;
  if (t && t.nodeType === 3 && !t.nextSibling) { if (t.data !== text) t.data = text; } else if (node.textContent !== text) node.textContent = text;
}
function setAttr(node, name, v) { if (node.getAttribute(name) !== v) node.setAttribute(name, v); }

// log adds an entry to the Events panel; the same text again (reconnect
// attempts) counts on the newest entry instead of filling the list.
function log(level, text) {
  const list = $('log'), top = list.firstElementChild;
  if (top && top.dataset.text === text) {
    top.dataset.n = String(Number(top.dataset.n) + 1);
    top.querySelector('time').textContent = fmtClock(Date.now());
    top.querySelector('.times').textContent = ` ×${top.dataset.n}`;
    return;
  }
  const li = el('li', { class: level, 'data-text': text, 'data-n': '1' }, el('time', { text: fmtClock(Date.now()) }), ' ', text, el('span', { class: 'times' }));
  list.prepend(li);
  while (list.children.length > LOG_N) list.lastChild.remove();
}

function closeText(code, reason) {
  const meaning = CLOSE_MEANING[code] ?? 'closed';
  return `${meaning} [${code}${reason ? `: “${reason}”` : ''}]`;
}

// ---------- connection ----------
function connect() {
  if (client) { const old = client; client = null; old.close(); }
  const token = $('token').value.trim();
  const c = new Client(undefined, token ? { token } : {});
  client = c;
  c.on('state', (e) => { if (client === c) onState(e); });
  // Errors that answer a command (they carry its id) are reported where the
  // command's promise settles; the rest (protocol breaches, a failed token
  // callback) are logged here.
  c.on('error', (e) => { if (client === c && e.id === undefined) log('error', e.message); });
  const live = [...sensors.values()].filter((s) => s.state !== 'stopped');
  for (const s of live) setState(s, 'waiting');
  subscribeSensors(live);
}

function onState({ state, code, reason, delay, attempt }) {
  connState = state;
  const conn = $('conn');
  conn.dataset.state = state;
  let text;
  if (state === 'open') text = 'connected';
  else if (state === 'connecting') text = 'connecting…';
  else if (state === 'reconnecting') text = `reconnecting in ${((delay ?? 0) / 1000).toFixed(1)} s${attempt > 1 ? ` (attempt ${attempt})` : ''}: ${code ? closeText(code, reason) : 'disconnected'}`;
  else text = code ? `${closeText(code, reason)} — press Connect` : 'closed — press Connect';
  if (state === 'closed' && code === 4001) text = `${closeText(code, reason)} — enter a valid token and press Connect`;
  conn.textContent = text;
  conn.title = text;
  if (state === 'open') {
    log('ok', 'connected');
    ops?.poll();
  } else if (code && state !== 'connecting') {
    log(code === 1000 || code === 1001 ? 'warn' : 'error', `${closeText(code, reason)}${state === 'reconnecting' ? ', reconnecting' : ''}`);
  }
  if (state !== 'open') for (const s of sensors.values()) if (s.state === 'live') setState(s, 'waiting');
}

// subscribeSensors subscribes sensors through the client: grouped by app,
// format and delivery mode; a sensor that already had values resumes from
// its position, one that had none asks for the latest value
// (docs/PROTOCOL.md, The client rule, 4). The client splits and paces the
// commands.
function subscribeSensors(list) {
  if (client.state === 'closed') { // after Disconnect or a close that must not be retried
    $('sub-msg').textContent = 'Not connected: press Connect, and the waiting sensors are subscribed.';
    return;
  }
  const groups = new Map();
  for (const s of list) {
    const resume = s.pos && s.hadData;
    const g = `${s.app}\n${s.format}\n${s.mode}\n${resume}`;
    if (!groups.has(g)) groups.set(g, { app: s.app, format: s.format, mode: s.mode, resume, list: [] });
    groups.get(g).list.push(s);
  }
  for (const { app, format, mode, resume, list: group } of groups.values()) {
    const keys = group.map((s) => s.key);
    const opts = { format, ...modeOpts(mode), onData, onReset, onAck };
    if (resume) opts.since = Object.fromEntries(group.map((s) => [s.key, { seq: s.pos.seq, epoch: s.pos.epoch }]));
    let sub;
    try {
      sub = client.subscribe(app, keys, opts);
    } catch (err) {
      refuse(group, err);
      continue;
    }
    sub.ready.then((a) => {
      log(a.recovered === false ? 'warn' : 'ok', `subscribed ${app}: ${plural(keys.length, 'key')} (${format}${mode === 'stream' ? '' : `, ${mode === 'latest' ? 'latest' : `latest ${MODE_LABEL.get(mode)}`}`}${resume ? `, resumed: ${a.recovered === false ? 'NOT recovered' : 'recovered'}` : ''})`);
    }, (err) => refuse(group, err));
  }
}

function refuse(group, err) {
  // "closed": the keys were unsubscribed before their ack, or this client
  // was replaced or closed; the sensors' state says so already.
  if (err?.code === 'closed') return;
  for (const s of group) {
    if (s.state === 'stopped') continue;
    s.state = 'stopped';
    s.stoppedAt = s.lastSeq;
    s.note = `refused: ${err.code ?? 'error'}`;
    s.noteTitle = err.message;
    markDirty(s);
  }
  $('sub-msg').textContent = `Subscribe refused (${err.code ?? 'error'}): ${err.message}`;
  log('error', `subscribe ${group[0].app} (${plural(group.length, 'key')}) refused: ${err.message}`);
  updateCounts();
}

// ---------- values ----------
function onAck(a) {
  for (const key of a.keys) {
    const s = sensors.get(`${a.app}/${key}`);
    const at = a.positions?.[key];
    if (!s || !at || s.state === 'stopped') continue;
    if (!s.hadData) s.pos = { seq: at.seq, epoch: at.epoch };
    else if (s.pos) s.pos.epoch = at.epoch;
  }
}

function onReset(r) {
  const s = sensors.get(`${r.app}/${r.key}`);
  if (!s || s.state === 'stopped') return;
  const was = s.pos ? `seq ${s.pos.seq}` : 'none';
  s.pos = { seq: r.seq, epoch: r.epoch };
  s.hadData = true; // a reset ends freshness: resume from it
  s.resets++;
  s.resetAt = Date.now();
  s.note = `NOT recovered (${r.reason}): values after ${was} lost`;
  s.noteTitle = RESET_MEANING[r.reason] ?? r.reason;
  s.series.mark(Date.now(), r.reason);
  setState(s, 'reset');
  log('warn', `RESET ${s.id} (${r.reason}: ${RESET_MEANING[r.reason] ?? 'unknown reason'}): position ${was} → seq ${r.seq}`);
}

const BUCKETS = RATE_S + 1;
function onData(p) {
  const s = sensors.get(`${p.app}/${p.key}`);
  if (!s || s.state === 'stopped') return; // in flight before the unsubscribe took effect
  const now = Date.now();
  totalValues++;
  // A latest key's seq may jump: the values in between were skipped on
  // purpose (docs/PROTOCOL.md, Delivery modes), not lost. The client has
  // accepted the jump; the page counts what was skipped.
  if (s.pos && p.epoch === s.pos.epoch && p.seq > s.pos.seq + 1) s.skipped += p.seq - s.pos.seq - 1;
  s.pos = { seq: p.seq, epoch: p.epoch };
  s.hadData = true;
  s.lastSeq = p.seq;
  s.ts = p.ts;
  s.lat = now - p.ts;
  s.value = p.json ? p.data : p.bytes;
  s.count++;
  // values per second: counts per wall-clock second, over the last RATE_S whole seconds
  const sec = Math.floor(now / 1000);
  if (sec !== s.sec) {
    for (let x = s.sec + 1; x <= sec && x <= s.sec + BUCKETS; x++) s.buckets[x % BUCKETS] = 0;
    s.sec = sec;
  }
  s.buckets[sec % BUCKETS]++;
  const v = s.value;
  const nums = typeof v === 'number' ? [['value', v]]
    : v && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Uint8Array) ? Object.entries(v).filter(([, x]) => typeof x === 'number') : [];
  s.series.push(p.ts, s.lat, nums);
  // Values resumed: the state says so at once, a reset's note only after
  // RESET_NOTE_MS.
  const noteDue = !s.resetAt || now - s.resetAt >= RESET_NOTE_MS;
  if (noteDue && s.note) { s.note = ''; s.resetAt = 0; }
  if (s.state !== 'live') setState(s, 'live'); else markDirty(s);
  s.chartDirty = true;
}

function rateOf(s, now = Date.now()) {
  const sec = Math.floor(now / 1000);
  if (s.sec < 0 || sec - s.sec > RATE_S) return 0;
  let n = 0;
  for (let x = sec - RATE_S; x < sec; x++) if (x > s.sec - BUCKETS && x <= s.sec) n += s.buckets[x % BUCKETS];
  const since = Math.max(1, Math.min(RATE_S, sec - Math.floor(s.first / 1000)));
  return n / since;
}

// ---------- sensor elements ----------
// One element per sensor, the same in both views (CSS lays it out as a card
// or as a table row): [data-sensor] with data-state, data-seq, data-format,
// data-mode.
function makeElement(s) {
  const e = {};
  const id = s.id;
  e.root = el('article', { class: 'sensor', 'data-sensor': id, 'data-state': s.state, 'data-seq': '', 'data-format': s.format, 'data-mode': s.mode, 'aria-label': id });
  e.name = el('button', { type: 'button', class: 'name', 'aria-pressed': 'false', title: `Show ${id} in the chart above` }, s.key, ' ', el('small', { class: 'muted', text: s.app }));
  e.state = el('span', { class: 'state' });
  e.value = el('span', { class: 'value', text: '…' });
  e.seq = el('span', { class: 'seq', title: 'last seq received' });
  e.rate = el('span', { class: 'rate', title: 'values per second over the last 10 s' });
  e.lat = el('span', { class: 'lat', title: 'end-to-end latency of the last value: now − ts (includes any clock difference with the source)' });
  e.age = el('span', { class: 'age', title: 'age of the last value (now − ts)' });
  e.recovery = el('span', { class: 'recovery' });
  e.format = FORMAT_SELECT.cloneNode(true);
  e.format.setAttribute('aria-label', `Format of ${id}`);
  e.format.value = s.format;
  e.mode = MODE_SELECT.cloneNode(true);
  e.mode.setAttribute('aria-label', `Delivery of ${id}`);
  e.mode.value = s.mode;
  e.cancel = el('button', { type: 'button', class: 'cancel', 'aria-label': `Cancel ${id}`, text: 'Cancel' });
  e.resume = el('button', { type: 'button', class: 'resume', 'aria-label': `Resume ${id}`, text: 'Resume', hidden: '' });
  e.canvas = el('canvas', { class: 'chart', role: 'img', 'aria-label': `${id}: no values yet` });
  e.root.append(e.name, e.state, e.value, e.seq, e.rate, e.lat, e.age, e.recovery,
    el('span', { class: 'actions' }, e.mode, e.format, e.cancel, e.resume), e.canvas);
  e.root.sensor = s;
  s.el = e;
  s.r = {}; // what was last written, to write only changes
  visibility.observe(e.root);
  resizes.observe(e.canvas);
}

// Delegated handlers: one listener for every sensor element.
$('sensors').addEventListener('click', (ev) => {
  const root = ev.target.closest('[data-sensor]');
  if (!root) return;
  const s = root.sensor;
  if (ev.target.closest('button.cancel')) cancel([s]);
  else if (ev.target.closest('button.resume')) resume([s]);
  else if (!ev.target.closest('select')) select(s);
});
$('sensors').addEventListener('change', (ev) => {
  if (ev.target.matches('select.format')) changeFormat(ev.target.closest('[data-sensor]').sensor, ev.target.value);
  else if (ev.target.matches('select.rate')) changeMode(ev.target.closest('[data-sensor]').sensor, ev.target.value);
});

function setState(s, state) {
  s.state = state;
  markDirty(s);
}

const STATE_TEXT = { waiting: 'waiting', live: 'live', reset: 'reset', stopped: 'stopped' };

// render writes a sensor's changed fields; it runs in an animation frame,
// for the sensors that changed since the last one, and never reads layout.
// An element off screen gets its data attributes only; its text is written
// when it scrolls into view.
function render(s, now) {
  const e = s.el, r = s.r;
  if (r.state !== s.state) { r.state = s.state; e.root.dataset.state = s.state; }
  if (r.format !== s.format) { r.format = s.format; e.root.dataset.format = s.format; e.format.value = s.format; }
  if (r.mode !== s.mode) { r.mode = s.mode; e.root.dataset.mode = s.mode; e.mode.value = s.mode; }
  const seq = s.count || s.lastSeq ? String(s.lastSeq) : '';
  if (r.seq !== seq) { r.seq = seq; e.root.dataset.seq = seq; }
  if (!visible.has(s) && s !== selected && r.drawn) { r.stale = true; return; }
  r.drawn = true;
  r.stale = false;
  setText(e.seq, seq || '–');
  setAttr(e.seq, 'title', s.skipped ? `last seq received; ${plural(s.skipped, 'value')} skipped on purpose (latest delivery)` : 'last seq received');
  setText(e.state, s.state === 'stopped' ? `stopped at seq ${s.stoppedAt || '–'}` : STATE_TEXT[s.state]);
  const stopped = s.state === 'stopped';
  if (r.stopped !== stopped) { r.stopped = stopped; e.cancel.hidden = stopped; e.resume.hidden = !stopped; }
  setText(e.recovery, s.note);
  setAttr(e.recovery, 'title', s.note ? s.noteTitle : '');
  if (r.count !== s.count) { r.count = s.count; setText(e.value, valueText(s.value)); }
  renderStats(s, now);
}

function renderStats(s, now) {
  const e = s.el;
  if (!s.count) { setText(e.rate, '–/s'); setText(e.lat, '–'); setText(e.age, '–'); return; }
  setText(e.rate, s.state === 'stopped' ? '–/s' : `${rateOf(s, now).toFixed(1)}/s`);
  setText(e.lat, fmtMs(s.lat));
  setText(e.age, fmtMs(now - s.ts));
}

function valueText(v) {
  if (v === undefined) return '…';
  if (v instanceof Uint8Array) return `${v.length} bytes: ${hex(v.subarray(0, 16))}${v.length > 16 ? ' …' : ''}`;
  if (v && typeof v === 'object' && !Array.isArray(v)) return Object.entries(v).map(([k, x]) => `${k} ${typeof x === 'object' ? JSON.stringify(x) : x}`).join(' · ');
  return JSON.stringify(v);
}

// ---------- batched rendering ----------
const dirty = new Set();
let raf = 0;
function markDirty(s) {
  dirty.add(s);
  if (!raf) raf = requestAnimationFrame(frame);
}
function frame() {
  raf = 0;
  const now = Date.now();
  for (const s of dirty) if (s.el) render(s, now);
  dirty.clear();
  drawCharts(now, false);
}

// Which sensor elements are on screen: only those get their stats and
// charts refreshed every tick (an off-screen one catches up when it shows).
const visible = new Set();
const visibility = new IntersectionObserver((entries) => {
  for (const en of entries) {
    const s = en.target.sensor;
    if (en.isIntersecting) { visible.add(s); s.chartDirty = true; if (s.r.stale) markDirty(s); } else visible.delete(s);
  }
});
// Canvas sizes, cached here so that drawing never reads layout.
const sizes = new WeakMap();
const resizes = new ResizeObserver((entries) => {
  for (const en of entries) {
    const b = en.contentBoxSize?.[0];
    sizes.set(en.target, b ? { w: b.inlineSize, h: b.blockSize } : { w: en.contentRect.width, h: en.contentRect.height });
    const s = en.target.closest?.('[data-sensor]')?.sensor;
    if (s) s.chartDirty = true;
  }
  detailDirty = true;
  if (!raf) raf = requestAnimationFrame(frame);
});

let detailDirty = true;
// drawCharts draws the charts of visible cards that changed (all = every
// visible one, as the time axis moves) and the detail chart.
function drawCharts(now, all) {
  if (view === 'cards') {
    for (const s of visible) {
      if (!all && !s.chartDirty) continue;
      s.chartDirty = false;
      drawCard(s, now);
    }
  }
  if (all || detailDirty || selected?.chartDirty) { detailDirty = false; drawDetail(now); }
}

function chartField(s) {
  return (s.picked && s.series.fields.has(s.picked)) ? s.picked : s.series.varying();
}

function drawCard(s, now) {
  const sz = sizes.get(s.el.canvas);
  const ctx = sz && fit(s.el.canvas, sz.w, sz.h);
  if (!ctx) return;
  const f = chartField(s);
  if (!f) { empty(ctx, sz.w, sz.h, s.count ? 'no numeric field to chart' : ''); return; }
  const res = plot(ctx, s.series, s.series.fields.get(f), { x: 34, y: 7, w: sz.w - 38, h: sz.h - 23 }, now - windowMs, now, { yTicks: 2, gapMs: 0 });
  setAttr(s.el.canvas, 'aria-label', `${s.id} ${f} over the last ${windowMs / 60000} min: ${res.n ? `${fmtNum(res.min)} to ${fmtNum(res.max)}, latest ${fmtNum(res.last)}` : 'no values'}`);
}

function drawDetail(now) {
  const canvas = $('detail-chart'), s = selected;
  const sz = sizes.get(canvas);
  if ($('detail').hidden || !sz) return;
  const ctx = fit(canvas, sz.w, sz.h);
  if (!ctx) return;
  if (!s) { setAttr(canvas, 'aria-label', 'No sensor selected'); return; }
  const f = chartField(s);
  if (!s.series.length) {
    empty(ctx, sz.w, sz.h, s.state === 'stopped' ? 'stopped before any value' : 'waiting for the first value…');
    setAttr(canvas, 'aria-label', `${s.id}: no values yet`);
    setText($('detail-stats'), `${s.state} · no values yet · format ${s.format} · ${deliveryText(s)}`);
    return;
  }
  const top = Math.round((sz.h - 36) * 0.66);
  const r1 = { x: 48, y: 14, w: sz.w - 56, h: top - 14 };
  const r2 = { x: 48, y: top + 22, w: sz.w - 56, h: sz.h - top - 40 };
  ctx.font = '11px system-ui, sans-serif';
  ctx.textAlign = 'left';
  ctx.textBaseline = 'top';
  ctx.fillStyle = themeColor('muted');
  ctx.fillText(f ?? 'value (no numeric field)', r1.x, 0);
  ctx.fillText('latency (now − ts)', r2.x, top + 8);
  const from = now - windowMs;
  const a = f ? plot(ctx, s.series, s.series.fields.get(f), r1, from, now, { yTicks: 4, xAxis: false }) : { n: 0 };
  const b = plot(ctx, s.series, s.series.lat, r2, from, now, { yTicks: 2, color: themeColor('lat'), fmtY: (v) => fmtMs(v) });
  setAttr(canvas, 'aria-label', `${s.id}: ${f ?? 'value'} ${a.n ? `from ${fmtNum(a.min)} to ${fmtNum(a.max)}, latest ${fmtNum(a.last)}` : 'no values'}; latency ${b.n ? `${fmtMs(b.min)} to ${fmtMs(b.max)}` : '–'}, over the last ${windowMs / 60000} min`);
  let sum = 0, n = 0, max = 0;
  const { t, lat, head } = s.series;
  for (let i = head; i < t.length; i++) if (t[i] >= from) { sum += lat[i]; n++; max = Math.max(max, lat[i]); }
  setText($('detail-stats'), s.count
    ? `seq ${s.lastSeq} · ${rateOf(s, now).toFixed(2)} values/s · latency last ${fmtMs(s.lat)}, mean ${fmtMs(n ? sum / n : NaN)}, max ${fmtMs(max)} · ${plural(s.count, 'value')}${s.resets ? ` · ${plural(s.resets, 'reset')}` : ''} · format ${s.format} · ${deliveryText(s)}`
    : `${s.state} · no values yet · format ${s.format} · ${deliveryText(s)}`);
}

// deliveryText is the detail line's delivery: the mode, and for a latest
// sensor how many values it skipped (seq jumps − 1, summed).
function deliveryText(s) {
  if (s.mode === 'stream') return `every value${s.skipped ? ` (${plural(s.skipped, 'value')} skipped while latest)` : ''}`;
  return `${s.mode === 'latest' ? 'latest' : `latest ${MODE_LABEL.get(s.mode)}`}: ${s.skipped.toLocaleString('en')} skipped`;
}

function select(s) {
  if (selected?.el) selected.el.name.setAttribute('aria-pressed', 'false');
  selected = s;
  if (s?.el) s.el.name.setAttribute('aria-pressed', 'true');
  $('detail').hidden = !s;
  setText($('detail-name'), s ? s.id : '');
  fillFields();
  detailDirty = true;
  if (!raf) raf = requestAnimationFrame(frame);
}

function fillFields() {
  const sel = $('detail-field'), s = selected;
  const names = s ? [...s.series.fields.keys()] : [];
  const cur = s ? chartField(s) : null;
  if (sel.dataset.names !== names.join('\n')) {
    sel.replaceChildren(...(names.length ? names.map((n) => el('option', { text: n })) : [el('option', { text: '–', value: '' })]));
    sel.dataset.names = names.join('\n');
  }
  if (cur) sel.value = cur;
  sel.disabled = names.length < 2;
}

// ---------- views ----------
function setView(v, chosen) {
  if (chosen) viewChosen = true;
  if (v === view && $('sensors').classList.contains(v)) return;
  view = v;
  const box = $('sensors');
  box.classList.toggle('cards', v === 'cards');
  box.classList.toggle('table', v === 'table');
  for (const r of document.querySelectorAll('input[name=view]')) r.checked = r.value === v;
  for (const s of visible) s.chartDirty = true;
  if (!raf) raf = requestAnimationFrame(frame);
}

function updateCounts() {
  let live = 0, stopped = 0;
  for (const s of sensors.values()) { if (s.state === 'stopped') stopped++; else if (s.state === 'live') live++; }
  $('sub-count').textContent = sensors.size ? `(${sensors.size.toLocaleString('en')}${stopped ? `, ${stopped.toLocaleString('en')} stopped` : ''})` : '';
  $('empty').hidden = sensors.size > 0;
  $('resume-all').disabled = !stopped;
  $('clear-stopped').disabled = !stopped;
  if (!viewChosen) setView(sensors.size > TABLE_FROM ? 'table' : 'cards', false);
  return { live, stopped };
}

// ---------- subscribe, cancel, resume, format, delivery ----------
function expand(tok) { // "s001..s010" -> s001 s002 … s010
  const m = /^([A-Za-z_-]*)(\d+)\.\.\1?(\d+)$/.exec(tok);
  if (!m) return [tok];
  const out = [];
  for (let i = +m[2]; i <= +m[3] && out.length <= MAX_SENSORS; i++) out.push(m[1] + pad(i, m[2].length));
  return out;
}

function newSensor(app, key, format, mode) {
  const s = {
    id: `${app}/${key}`, app, key, format, mode, skipped: 0, state: 'waiting', pos: null, hadData: false,
    lastSeq: 0, stoppedAt: 0, resetAt: 0, ts: 0, lat: NaN, value: undefined, count: 0, resets: 0, note: '', noteTitle: '',
    sec: -1, first: Date.now(), buckets: new Uint16Array(BUCKETS), series: new Series(), picked: null, chartDirty: true,
  };
  makeElement(s);
  sensors.set(s.id, s);
  return s;
}

function subscribeForm(app, keys, format, mode) {
  const msg = $('sub-msg');
  msg.textContent = '';
  if (!ID_RE.test(app)) return void (msg.textContent = `App ID “${app}” is invalid: ${ID_HELP}.`);
  if (!keys.length) return void (msg.textContent = 'Enter at least one sensor ID.');
  const bad = keys.filter((k) => !ID_RE.test(k));
  if (bad.length) return void (msg.textContent = `Invalid sensor ID${bad.length > 1 ? 's' : ''} ${bad.slice(0, 5).map((k) => `“${k}”`).join(', ')}${bad.length > 5 ? ' …' : ''}: ${ID_HELP}.`);
  const fresh = keys.filter((k) => !sensors.has(`${app}/${k}`));
  const active = [...sensors.values()].filter((s) => s.state !== 'stopped').length;
  const stoppedHere = keys.map((k) => sensors.get(`${app}/${k}`)).filter((s) => s && s.state === 'stopped');
  if (active + fresh.length + stoppedHere.length > MAX_SENSORS) {
    return void (msg.textContent = `That makes ${(active + fresh.length + stoppedHere.length).toLocaleString('en')} subscribed sensors: one connection holds at most ${MAX_SENSORS.toLocaleString('en')}. Cancel or remove some first.`);
  }
  if (!MODE_LABEL.has(mode)) mode = 'stream';
  const added = fresh.map((k) => newSensor(app, k, format, mode));
  // Append all new elements at once: one layout, not one per sensor.
  const frag = document.createDocumentFragment();
  for (const s of added) frag.append(s.el.root);
  $('sensors').append(frag);
  for (const s of stoppedHere) { s.format = format; s.mode = mode; markDirty(s); }
  const skipped = keys.length - fresh.length - stoppedHere.length;
  if (skipped) msg.textContent = `${plural(skipped, 'sensor')} already subscribed${skipped === keys.length ? '' : ', the others added'}.`;
  for (const s of added) markDirty(s);
  if (added.length) subscribeSensors(added);
  if (stoppedHere.length) resume(stoppedHere);
  if (!selected && added.length) select(added[0]);
  updateCounts();
}

// cancel unsubscribes sensors: they stay in place, greyed, "stopped at seq
// N". The client sends the keys in commands of at most 100 keys, paced under
// the server's command rate, so cancelling 1,000 sensors does not close the
// connection with 1008.
function cancel(list) {
  const todo = list.filter((s) => s.state !== 'stopped');
  if (!todo.length) return;
  const byApp = new Map();
  for (const s of todo) {
    s.stoppedAt = s.lastSeq;
    s.note = '';
    setState(s, 'stopped');
    if (!byApp.has(s.app)) byApp.set(s.app, []);
    byApp.get(s.app).push(s.key);
  }
  updateCounts();
  for (const [app, keys] of byApp) {
    if (keys.length > 1) log('info', `cancelling ${plural(keys.length, 'key')} of ${app}…`);
    client.unsubscribe(app, keys).then(
      () => log('ok', keys.length > 1 ? `cancelled ${plural(keys.length, 'key')} of ${app}` : `cancelled ${app}/${keys[0]} at seq ${sensors.get(`${app}/${keys[0]}`)?.stoppedAt ?? '–'}`),
      (err) => { if (err?.code !== 'closed') log('error', `unsubscribe ${app} (${plural(keys.length, 'key')}) failed: ${err.message}`); });
  }
}

// resume subscribes stopped sensors again from their positions: the server
// replays what they missed while stopped, or sends a reset (shown as NOT
// recovered) when its history no longer reaches back.
function resume(list) {
  const todo = list.filter((s) => s.state === 'stopped');
  const active = [...sensors.values()].filter((s) => s.state !== 'stopped').length;
  if (active + todo.length > MAX_SENSORS) {
    $('sub-msg').textContent = `Resuming ${plural(todo.length, 'sensor')} would make ${(active + todo.length).toLocaleString('en')}: one connection holds at most ${MAX_SENSORS.toLocaleString('en')}.`;
    return;
  }
  for (const s of todo) { s.note = ''; setState(s, 'waiting'); }
  if (todo.length) subscribeSensors(todo);
  updateCounts();
}

// changeFormat resubscribes one sensor in the other format; the client
// resumes it from its position, so no value is lost or repeated.
function changeFormat(s, format) {
  if (format === s.format) return;
  s.format = format;
  markDirty(s);
  if (s.state === 'stopped') return; // takes effect on resume
  subscribeSensors([s]);
  log('info', `${s.id}: format ${format}`);
}

// changeMode resubscribes one sensor with another delivery, from its
// position as changeFormat does: a latest one then gets the newest value
// (no history replay), a stream one every value after its position.
function changeMode(s, mode) {
  if (mode === s.mode || !MODE_LABEL.has(mode)) return;
  s.mode = mode;
  markDirty(s);
  if (s.state === 'stopped') return; // takes effect on resume
  subscribeSensors([s]);
  log('info', `${s.id}: delivery ${MODE_LABEL.get(mode)}`);
}

function removeStopped() {
  for (const s of [...sensors.values()]) {
    if (s.state !== 'stopped') continue;
    visibility.unobserve(s.el.root);
    resizes.unobserve(s.el.canvas);
    visible.delete(s);
    dirty.delete(s);
    s.el.root.remove();
    sensors.delete(s.id);
    if (selected === s) select(null);
  }
  if (!selected && sensors.size) select(sensors.values().next().value);
  updateCounts();
}

// ---------- publish ----------
async function publish(e) {
  e.preventDefault();
  const out = $('pub-out'), app = $('pub-app').value.trim(), key = $('pub-key').value.trim(), apiKey = $('pub-apikey').value.trim();
  const show = (kind, text) => { out.className = `out ${kind}`; out.textContent = text; };
  if (!ID_RE.test(app) || !ID_RE.test(key)) return show('error', `App and key: ${ID_HELP}.`);
  let data;
  try { data = JSON.parse($('pub-data').value); } catch (err) { return show('error', `Data is not valid JSON: ${err.message}`); }
  const headers = { 'Content-Type': 'application/json' };
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  show('', 'sending…');
  try {
    const res = await fetch('/api/publish', { method: 'POST', headers, body: JSON.stringify({ app, key, data }) });
    let body = await res.text();
    try { body = JSON.stringify(JSON.parse(body), null, 2); } catch { /* not JSON: show as is */ }
    show(res.ok ? 'ok' : 'error', `HTTP ${res.status} ${res.statusText}\n${body}`);
  } catch (err) {
    show('error', `Request failed: ${err.message}`);
  }
}

// ---------- wiring ----------
$('sub-mode').append(...MODES.map(([v, label]) => el('option', { value: v, text: label })));
$('sub-mode').title = MODE_HELP;
const q = new URLSearchParams(location.search); // ?app=demo&keys=s001..s020&format=binary&mode=latest:1&view=table&sub=0
for (const [p, id] of [['app', 'sub-app'], ['keys', 'sub-keys'], ['format', 'sub-format'], ['mode', 'sub-mode'], ['token', 'token']]) if (q.has(p)) $(id).value = q.get(p);
const formKeys = () => [...new Set($('sub-keys').value.split(/[\s,]+/).filter(Boolean).flatMap(expand))];

$('sub-form').addEventListener('submit', (e) => { e.preventDefault(); subscribeForm($('sub-app').value.trim(), formKeys(), $('sub-format').value, $('sub-mode').value); });
$('cancel-all').addEventListener('click', () => cancel([...sensors.values()]));
$('resume-all').addEventListener('click', () => resume([...sensors.values()]));
$('clear-stopped').addEventListener('click', removeStopped);
$('conn-form').addEventListener('submit', (e) => { e.preventDefault(); connect(); });
$('disconnect').addEventListener('click', () => { client?.close(); });
$('pub-form').addEventListener('submit', publish);
for (const r of document.querySelectorAll('input[name=view]')) r.addEventListener('change', () => setView(r.value, true));
$('window').addEventListener('change', (e) => { windowMs = Number(e.target.value); for (const s of visible) s.chartDirty = true; detailDirty = true; drawCharts(Date.now(), true); });
$('detail-field').addEventListener('change', (e) => { if (selected) { selected.picked = e.target.value; selected.chartDirty = true; detailDirty = true; drawCharts(Date.now(), false); } });
matchMedia('(prefers-color-scheme: dark)').addEventListener('change', () => { readTheme(); drawCharts(Date.now(), true); });
resizes.observe($('detail-chart'));

// Once a second: rates, latencies and ages of the visible sensors, the
// totals, and every visible chart (their time axes move).
setInterval(() => {
  requestAnimationFrame(() => {
    const now = Date.now();
    for (const s of visible) renderStats(s, now);
    if (selected) fillFields();
    drawCharts(now, true);
    rateNow = totalValues - lastTotal;
    lastTotal = totalValues;
    const { live, stopped } = updateCounts();
    setText($('stats'), `${plural(sensors.size, 'sensor')} · ${live.toLocaleString('en')} live${stopped ? ` · ${stopped.toLocaleString('en')} stopped` : ''} · ${rateNow.toLocaleString('en')} values/s`);
  });
}, 1000);

const ops = startOps({ section: $('ops'), body: $('ops-body'), note: $('ops-note'), canPoll: () => connState === 'open' });
if (q.has('view')) setView(q.get('view') === 'table' ? 'table' : 'cards', true);
updateCounts();
connect();
if (q.get('sub') !== '0') subscribeForm($('sub-app').value.trim(), formKeys(), $('sub-format').value, $('sub-mode').value);
