// wspush dashboard: plain ES module, no dependencies. Protocol: see docs/PROTOCOL.md.
const $ = (id) => document.getElementById(id);
const ID_RE = /^[A-Za-z0-9_-]{1,64}$/;
const ID_HELP = 'use 1–64 characters of A–Z a–z 0–9 _ -';
const SPARK_N = 60, LOG_N = 50, KEYS_PER_CMD = 100, PING_EVERY = 25000;
const CLOSE_MEANING = {
  1000: 'normal closure', 1001: 'going away (server shutting down)', 1005: 'no status code',
  1006: 'abnormal closure (no close frame: server unreachable, or handshake refused, e.g. bad token)',
  1008: 'policy violation (rate limit or abuse)', 1009: 'message too large', 1011: 'internal server error',
  4001: 'unauthorized (check the token)', 4008: 'too slow (outgoing queue overflowed)',
};
const RESET_MEANING = { // docs/PROTOCOL.md, Reset
  epoch: 'the server lost this key\'s stream and started a new epoch',
  gap: 'values were published that the server can no longer deliver',
};

const subs = new Map();    // "app/key" -> subscription state
const pending = new Map(); // command id -> command sent (to match ack/error/pong)
let ws = null, nextId = 1, retry = 0, retryTimer = 0, manualClose = false;
let totalMsgs = 0, lastTotal = 0;

// ---------- small helpers ----------
function el(tag, props = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  e.append(...kids);
  return e;
}
const pad = (n, w = 2) => String(n).padStart(w, '0');
function fmtTime(ms) {
  const d = new Date(ms), t = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  return d.toDateString() === new Date().toDateString() ? t : `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${t}`;
}
function fmtAge(ms) {
  const a = Math.abs(ms), s = ms < 0 ? '−' : '';
  if (a < 10000) return `${s}${(a / 1000).toFixed(1)} s`;
  if (a < 120000) return `${s}${Math.round(a / 1000)} s`;
  if (a < 7200000) return `${s}${Math.round(a / 60000)} min`;
  return `${s}${Math.round(a / 3600000)} h`;
}
const short = (keys) => (keys.length > 6 ? `${keys.slice(0, 6).join(' ')} …+${keys.length - 6}` : keys.join(' '));
const hex = (b) => Array.from(b, (x) => pad(x.toString(16))).join(' ');

function log(level, text) {
  const list = $('log');
  list.prepend(el('li', { class: level }, el('time', {}, fmtTime(Date.now())), ' ', text));
  while (list.children.length > LOG_N) list.lastChild.remove();
}
function setConn(state, text) {
  const c = $('conn');
  c.className = `pill ${state}`;
  c.textContent = text;
}

// ---------- connection ----------
function connect() {
  clearTimeout(retryTimer);
  manualClose = false;
  if (ws) { const old = ws; ws = null; old.close(1000, 'reconnect'); }
  const token = $('token').value.trim();
  const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws${token ? `?token=${encodeURIComponent(token)}` : ''}`;
  setConn('connecting', retry ? `connecting… (attempt ${retry + 1})` : 'connecting…');
  const sock = new WebSocket(url);
  sock.binaryType = 'arraybuffer';
  ws = sock;
  sock.onopen = () => {
    if (ws !== sock) return;
    retry = 0;
    setConn('open', 'open');
    log('ok', `connected to ${url.replace(/token=[^&]*/, 'token=…')}`);
    resumeAll();
  };
  sock.onmessage = (ev) => { if (ws === sock) onMessage(ev.data); };
  sock.onclose = (ev) => {
    if (ws !== sock) return; // replaced by a newer socket
    ws = null;
    pending.clear();
    for (const s of subs.values()) if (!s.failed) { s.state = 'waiting'; markDirty(s); }
    const meaning = CLOSE_MEANING[ev.code];
    const text = `closed ${ev.code}${ev.reason ? ` “${ev.reason}”` : ''}${meaning ? ` — ${meaning}` : ''}`;
    log(ev.code === 1000 || ev.code === 1001 ? 'warn' : 'error', text);
    if (manualClose) return setConn('closed', `${text} (press Connect)`);
    if (ev.code === 4001) return setConn('closed', `${text}; fix it and press Connect`);
    const delay = Math.min(30000, 500 * 2 ** retry) * (0.5 + Math.random() / 2);
    retry++;
    setConn('closed', `${text} — reconnecting in ${(delay / 1000).toFixed(1)} s`);
    retryTimer = setTimeout(connect, delay);
  };
}

function send(op, fields = {}, meta = {}) {
  if (!ws || ws.readyState !== WebSocket.OPEN) return false;
  const cmd = { op, id: nextId++, ...fields };
  pending.set(cmd.id, { ...cmd, ...meta, t0: performance.now() });
  ws.send(JSON.stringify(cmd));
  return true;
}

// Each subscription keeps its position s.pos = {seq, epoch} (docs/PROTOCOL.md,
// Tracking positions): set by the ack and by resets, advanced by data. epoch is
// null when the server is older than positions (its acks have none); such a
// key is resumed with a bare seq.
const sinceOf = (s) => (s.pos.epoch ? { seq: s.pos.seq, epoch: s.pos.epoch } : s.pos.seq);
// resumable: the key has a position to resume from. A fresh key (no data since
// its ack) subscribes anew instead, so that it still gets the latest value.
const resumable = (s) => s.pos && !s.fresh && (s.pos.epoch || s.pos.seq > 0);

// Subscribes a list of subscriptions of one app and format. Keys with a
// position are resumed with since, so nothing published meanwhile is missed.
function sendSubscribe(list) {
  const { app, format } = list[0];
  const chunks = (arr) => Array.from({ length: Math.ceil(arr.length / KEYS_PER_CMD) }, (_, i) => arr.slice(i * KEYS_PER_CMD, (i + 1) * KEYS_PER_CMD));
  for (const c of chunks(list.filter((s) => !resumable(s)))) send('subscribe', { app, keys: c.map((s) => s.key), format });
  for (const c of chunks(list.filter(resumable))) {
    send('subscribe', { app, keys: c.map((s) => s.key), format, since: Object.fromEntries(c.map((s) => [s.key, sinceOf(s)])) });
  }
}
function resumeAll() {
  const groups = new Map();
  for (const s of subs.values()) {
    if (s.failed) continue;
    const g = `${s.app}\n${s.format}`;
    if (!groups.has(g)) groups.set(g, []);
    groups.get(g).push(s);
  }
  for (const list of groups.values()) sendSubscribe(list);
}

// ---------- incoming ----------
function decodeBinary(buf) {
  const v = new DataView(buf), td = new TextDecoder();
  if (v.getUint8(0) !== 1) throw new Error(`unknown binary frame version ${v.getUint8(0)}`);
  const flags = v.getUint8(1);
  let o = 2;
  const str = () => { const n = v.getUint16(o); const s = td.decode(new Uint8Array(buf, o + 2, n)); o += 2 + n; return s; };
  const app = str(), key = str();
  const seq = Number(v.getBigUint64(o)), ts = Number(v.getBigInt64(o + 8));
  const payload = new Uint8Array(buf, o + 16);
  return { app, key, seq, ts, value: flags & 1 ? JSON.parse(td.decode(payload)) : payload, binary: true };
}
const b64bytes = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));

function onMessage(data) {
  let m;
  try {
    if (typeof data !== 'string') return onData(decodeBinary(data));
    m = JSON.parse(data);
  } catch (err) {
    return log('error', `undecodable ${typeof data === 'string' ? 'text' : 'binary'} frame: ${err.message}`);
  }
  const p = pending.get(m.id);
  if (m.op !== 'data') pending.delete(m.id);
  const about = p ? ` ${p.op}${p.keys ? ` ${p.app} [${short(p.keys)}]` : ''}` : '';
  switch (m.op) {
    case 'data':
      return onData({ app: m.app, key: m.key, seq: m.seq, ts: m.ts, value: 'b64' in m ? b64bytes(m.b64) : m.data });
    case 'ack': {
      const rec = 'recovered' in m ? ` recovered:${m.recovered}` : '';
      log(m.recovered === false ? 'warn' : 'ok', `ack #${m.id}${about}${p?.since ? ' (resume)' : ''}${rec}`);
      if (p?.op !== 'subscribe') return;
      for (const k of p.keys) {
        const s = subs.get(`${p.app}/${k}`);
        if (s) onAck(s, m, p.since?.[k]);
      }
      return;
    }
    case 'reset':
      return onReset(m);
    case 'pong': {
      const rtt = p ? `${(performance.now() - p.t0).toFixed(1)} ms` : '?';
      $('stats').dataset.rtt = `RTT ${rtt}`;
      if (!p?.auto) log('ok', `pong #${m.id} in ${rtt}`);
      return;
    }
    case 'error':
      log('error', `error${m.id ? ` #${m.id}` : ''} ${m.code}: ${m.message}${about ? ` (reply to${about})` : ''}`);
      if (p?.op === 'subscribe') {
        for (const k of p.keys) {
          const s = subs.get(`${p.app}/${k}`);
          if (s) { s.failed = true; s.state = `error: ${m.code}`; markDirty(s); }
        }
      }
      return;
    default:
      log('warn', `unknown message op “${m.op}”`);
  }
}

const fmtPos = (pos) => (pos ? `seq ${pos.seq}${pos.epoch ? ` epoch ${pos.epoch}` : ''}` : 'none');

// onAck applies a subscribe ack to one of its keys (since: what the request
// asked to resume from, if anything).
function onAck(s, m, since) {
  const at = m.positions?.[s.key]; // absent from a server older than positions
  if (since === undefined) {
    // The latest value follows, with seq == position (or position + 1 if a
    // live value got there first).
    s.pos = at ? { seq: at.seq, epoch: at.epoch } : null;
    s.state = 'live';
  } else {
    // The position stays where we resume from; the ack tells its epoch when
    // the bare form was sent. A key that cannot resume gets a reset next.
    if (at) s.pos = { seq: s.pos?.seq ?? 0, epoch: at.epoch };
    s.state = m.recovered === false ? (at ? 'resumed' : 'resumed · NOT recovered') : 'resumed · recovered';
  }
  s.fresh = since === undefined;
  // A server without positions sends no reset: after a resume it may jump.
  s.legacyJump = at || since === undefined ? ''
    : m.recovered === false ? 'history did not reach back (recovered:false)' : 'a server without positions cannot say why';
  markDirty(s);
}

// onReset: the server says where the key's stream continues; what lies
// between our position and it will never come (docs/PROTOCOL.md, Reset).
function onReset(m) {
  const id = `${m.app}/${m.key}`, s = subs.get(id);
  if (!s) return;
  const was = s.pos;
  s.pos = { seq: m.seq, epoch: m.epoch };
  s.fresh = false;
  s.legacyJump = '';
  s.resets++;
  s.state = `reset · ${m.reason}`;
  log('warn', `RESET ${id} (${m.reason}: ${RESET_MEANING[m.reason] ?? 'unknown reason'}): position ${fmtPos(was)} → ${fmtPos(s.pos)}; values in between are lost`);
  markDirty(s);
}

function onData(d) {
  totalMsgs++;
  const id = `${d.app}/${d.key}`, s = subs.get(id);
  if (!s) return; // late value for a cancelled key
  const pos = s.pos, fresh = s.fresh, jump = s.legacyJump;
  s.fresh = false;
  s.legacyJump = '';
  // docs/PROTOCOL.md, Tracking positions: seq == position + 1, or, first after
  // an ack without since, the latest value (== position). Without a position
  // (an old server) anything goes, and so does its first value after a resume.
  if (!pos || d.seq === pos.seq + 1 || (fresh && d.seq === pos.seq)) {
    // in order
  } else if (jump) {
    log('info', `${id}: seq ${pos.seq} → ${d.seq} after the resume: ${jump}; following it`);
  } else if (d.seq <= pos.seq) {
    log('warn', `${id}: seq ${d.seq} already seen (position ${fmtPos(pos)}), ignored`);
    return;
  } else {
    s.gaps++;
    log('error', `GAP ${id}: seq ${pos.seq} → ${d.seq}, ${d.seq - pos.seq - 1} missed without a reset — should never happen`);
  }
  s.pos = { seq: d.seq, epoch: pos?.epoch ?? null };
  Object.assign(s, { lastSeq: d.seq, ts: d.ts, value: d.value, binary: !!d.binary });
  s.count++;
  track(s, d.value);
  markDirty(s);
}
// Keeps the last SPARK_N values of each numeric field (up to 8). The sparkline
// shows the field the user picked, else the first numeric field that varies.
function track(s, v) {
  const obj = v && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Uint8Array);
  const nums = typeof v === 'number' ? [['value', v]] : obj ? Object.entries(v).filter(([, x]) => typeof x === 'number').slice(0, 8) : [];
  for (const [k, x] of nums) {
    const h = (s.hist[k] ??= []);
    h.push(x);
    if (h.length > SPARK_N) h.shift();
  }
  if (!s.picked && nums.length) s.field = nums.find(([k]) => new Set(s.hist[k]).size > 1)?.[0] ?? nums[0][0];
}

// ---------- rendering ----------
const dirty = new Set();
let raf = 0;
function markDirty(s) {
  dirty.add(s);
  if (!raf) raf = requestAnimationFrame(() => { raf = 0; for (const x of dirty) render(x); dirty.clear(); });
}

const NS = 'http://www.w3.org/2000/svg';
function makeCard(s) {
  const c = {};
  const svg = document.createElementNS(NS, 'svg');
  svg.setAttribute('viewBox', '0 0 120 32');
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('role', 'img');
  c.line = document.createElementNS(NS, 'polyline');
  svg.append(c.line);
  c.svg = svg;
  c.root = el('article', { class: 'card', 'aria-label': `${s.app}/${s.key}` },
    el('header', {},
      el('h3', { title: `${s.app}/${s.key}` }, s.key, ' ', el('small', { class: 'muted' }, s.app)),
      el('button', { type: 'button', class: 'cancel', 'aria-label': `Cancel ${s.app}/${s.key}`, onclick: () => unsubscribe(s) }, 'Cancel')),
    el('div', { class: 'badges' }, el('span', { class: 'badge' }, s.format), c.state = el('span', { class: 'badge state' })),
    c.value = el('div', { class: 'value' }, el('span', { class: 'muted' }, 'waiting for a value…')),
    el('div', { class: 'spark' }, svg, c.range = el('span', { class: 'muted small' })),
    el('p', { class: 'meta small' },
      'seq ', c.seq = el('b', {}, '–'), c.epoch = el('span', {}), ' · ', c.time = el('time', {}, '–'),
      ' · age ', c.age = el('span', {}, '–'), ' · ', c.count = el('span', {}, '0 values'),
      c.resets = el('span', { class: 'reset' }), c.gaps = el('span', { class: 'gap' })));
  return c;
}

function renderValue(s, box, v) {
  const show = (x) => (typeof x === 'string' ? x : JSON.stringify(x, null, 2));
  if (v instanceof Uint8Array) {
    box.replaceChildren(el('code', {}, `${v.length} bytes: ${hex(v.subarray(0, 24))}${v.length > 24 ? ' …' : ''}`));
  } else if (v && typeof v === 'object' && !Array.isArray(v)) {
    const pick = (k) => () => { s.field = k; s.picked = true; markDirty(s); }; // chart another field
    box.replaceChildren(el('dl', {}, ...Object.entries(v).flatMap(([k, x]) => [
      el('dt', {}, typeof x === 'number' ? el('button', { type: 'button', class: 'field', 'aria-pressed': String(k === s.field), title: 'Show in sparkline', onclick: pick(k) }, k) : k),
      el('dd', {}, show(x))])));
  } else {
    box.replaceChildren(el('pre', {}, JSON.stringify(v, null, 2)));
  }
}

function render(s) {
  const c = s.card;
  c.state.textContent = s.state;
  c.state.dataset.kind = s.failed || s.state.includes('NOT') ? 'bad'
    : s.state === 'waiting' || s.state === 'pending' ? 'wait' : s.state.startsWith('reset') ? 'warn' : 'ok';
  c.root.classList.toggle('stale', s.state === 'waiting');
  c.epoch.textContent = s.pos?.epoch ? ` · epoch ${s.pos.epoch}` : '';
  c.resets.textContent = s.resets ? ` · ${s.resets} reset${s.resets > 1 ? 's' : ''}` : '';
  if (!s.count) return;
  renderValue(s, c.value, s.value);
  c.seq.textContent = s.lastSeq;
  c.time.textContent = fmtTime(s.ts);
  c.time.setAttribute('datetime', new Date(s.ts).toISOString());
  c.count.textContent = `${s.count} value${s.count === 1 ? '' : 's'}`;
  c.gaps.textContent = s.gaps ? ` · ${s.gaps} gap${s.gaps > 1 ? 's' : ''}!` : '';
  const v = s.hist[s.field] ?? [];
  if (v.length) {
    const min = Math.min(...v), max = Math.max(...v), step = 120 / (SPARK_N - 1);
    c.line.setAttribute('points', v.map((y, i) => `${(120 - (v.length - 1 - i) * step).toFixed(1)},${(max === min ? 16 : 30 - ((y - min) / (max - min)) * 28).toFixed(1)}`).join(' '));
    c.range.textContent = `${s.field ?? 'value'} ${min}–${max}`;
    c.svg.setAttribute('aria-label', `${s.field ?? 'value'}, last ${v.length} values, from ${min} to ${max}, latest ${v[v.length - 1]}`);
  }
  c.root.animate?.([{ boxShadow: '0 0 0 2px #3b82f6aa' }, { boxShadow: '0 0 0 2px #3b82f600' }], { duration: 700 });
}

function updateCount() {
  $('sub-count').textContent = subs.size ? `(${subs.size})` : '';
  $('empty').hidden = subs.size > 0;
}

// ---------- subscribe / unsubscribe ----------
function expand(tok) { // "s001..s010" -> s001 s002 … s010
  const m = /^([A-Za-z_-]*)(\d+)\.\.\1?(\d+)$/.exec(tok);
  if (!m) return [tok];
  const out = [];
  for (let i = +m[2]; i <= +m[3] && out.length < 1000; i++) out.push(m[1] + pad(i, m[2].length));
  return out;
}

function subscribe(app, keys, format) {
  const msg = $('sub-msg');
  msg.textContent = '';
  if (!ID_RE.test(app)) return (msg.textContent = `App ID “${app}” is invalid: ${ID_HELP}.`);
  if (!keys.length) return (msg.textContent = 'Enter at least one sensor ID.');
  const bad = keys.filter((k) => !ID_RE.test(k));
  if (bad.length) return (msg.textContent = `Invalid sensor ID${bad.length > 1 ? 's' : ''} ${bad.map((k) => `“${k}”`).join(', ')}: ${ID_HELP}.`);
  const todo = [];
  let skipped = 0;
  for (const key of keys) {
    let s = subs.get(`${app}/${key}`);
    if (s && !s.failed) { skipped++; continue; }
    if (!s) {
      s = { app, key, format, pos: null, fresh: false, lastSeq: 0, ts: 0, count: 0, gaps: 0, resets: 0, hist: {}, state: 'pending' };
      s.card = makeCard(s);
      $('cards').append(s.card.root);
      subs.set(`${app}/${key}`, s);
    }
    Object.assign(s, { failed: false, format, state: 'pending' });
    todo.push(s);
    markDirty(s);
  }
  if (skipped) msg.textContent = `${skipped} key${skipped > 1 ? 's were' : ' was'} already subscribed.`;
  if (todo.length && ws?.readyState === WebSocket.OPEN) sendSubscribe(todo);
  updateCount();
}

function unsubscribe(s) {
  subs.delete(`${s.app}/${s.key}`);
  dirty.delete(s);
  s.card.root.remove();
  if (!s.failed) send('unsubscribe', { app: s.app, keys: [s.key] });
  log('info', `cancel ${s.app}/${s.key} after ${s.count} values (position ${fmtPos(s.pos)})`);
  updateCount();
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
const q = new URLSearchParams(location.search); // ?app=demo&keys=s001..s020&format=binary
for (const [p, id] of [['app', 'sub-app'], ['keys', 'sub-keys'], ['format', 'sub-format']]) if (q.has(p)) $(id).value = q.get(p);
const formKeys = () => [...new Set($('sub-keys').value.split(/[\s,]+/).filter(Boolean).flatMap(expand))];

$('sub-form').addEventListener('submit', (e) => { e.preventDefault(); subscribe($('sub-app').value.trim(), formKeys(), $('sub-format').value); });
$('cancel-all').addEventListener('click', () => { for (const s of [...subs.values()]) unsubscribe(s); });
$('conn-form').addEventListener('submit', (e) => { e.preventDefault(); retry = 0; connect(); });
$('disconnect').addEventListener('click', () => {
  clearTimeout(retryTimer);
  manualClose = true;
  if (ws) ws.close(1000, 'closed by user');
  else setConn('closed', 'closed (press Connect)');
});
$('ping').addEventListener('click', () => { if (!send('ping')) log('warn', 'not connected'); });
$('pub-form').addEventListener('submit', publish);

setInterval(() => { if (ws?.readyState === WebSocket.OPEN) send('ping', {}, { auto: true }); }, PING_EVERY);
setInterval(() => {
  const now = Date.now();
  for (const s of subs.values()) if (s.ts) s.card.age.textContent = fmtAge(now - s.ts);
  const st = $('stats');
  st.textContent = `${subs.size} keys · ${totalMsgs} values · ${totalMsgs - lastTotal}/s${st.dataset.rtt ? ` · ${st.dataset.rtt}` : ''}`;
  lastTotal = totalMsgs;
}, 1000);

updateCount();
connect();
if (q.get('sub') !== '0') subscribe($('sub-app').value.trim(), formKeys(), $('sub-format').value);
