// wspush.js: the wspush client for browsers and Node 18+ (ES module, no
// dependencies). It connects to a wspush server's /ws endpoint, subscribes
// to keys, and keeps every key's position so that a reconnect resumes with
// no gap and no duplicate, or says what was lost (a reset).
//
// docs/PROTOCOL.md is the specification; comments cite its sections.
// Types: wspush.d.ts beside this file (served at /client.d.ts).

const NAME = /^[A-Za-z0-9_-]{1,64}$/;

// Bounds of maxRate (values/s per key) and maxBandwidth (bytes/s), as the
// server checks them (docs/PROTOCOL.md, Delivery modes).
const MAX_RATE = 1000;
const MIN_BANDWIDTH = 1024;
const MAX_BANDWIDTH = 1e9;

// Close codes after which reconnecting would fail the same way
// (docs/PROTOCOL.md, Close codes): the client goes to "closed".
const FATAL_CLOSE = new Set([1002, 1007, 1008, 1009, 4001]);
const TOKEN_EXPIRED = 4003;
// Error codes worth retrying after a delay (docs/PROTOCOL.md, Error codes).
const RETRYABLE = new Set(["unavailable", "internal"]);

const DEFAULTS = {
  minBackoff: 250,
  maxBackoff: 10000,
  pingInterval: 20000,
  replyTimeout: 10000,
  // Below the server's defaults (20/s, burst 50): replies and network
  // jitter must never make our commands arrive faster than the server's
  // bucket allows (docs/PROTOCOL.md, Commands).
  commandRate: 15,
  commandBurst: 40,
  maxKeysPerCommand: 100,
  maxSubscriptions: 1000,
  autoConnect: true,
};

// A connection that stayed open this long resets the backoff.
const STABLE_MS = 5000;

export class WspushError extends Error {
  constructor(code, message, id) {
    super(message);
    this.name = "WspushError";
    this.code = code;
    if (id !== undefined) this.id = id;
  }
}

/**
 * tokenExpiry returns the exp claim of a JWT in milliseconds, or undefined.
 * The client reads it only to refresh in time; the server checks the token.
 */
export function tokenExpiry(token) {
  if (typeof token !== "string") return undefined;
  const parts = token.split(".");
  if (parts.length !== 3) return undefined;
  try {
    const claims = JSON.parse(new TextDecoder().decode(base64Decode(parts[1])));
    return typeof claims.exp === "number" && isFinite(claims.exp) ? claims.exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

/**
 * decodeBinaryFrame decodes a binary data frame, version 1
 * (docs/PROTOCOL.md, Binary frames). It throws WspushError "protocol" on an
 * unknown version, unknown flags or a truncated frame.
 */
export function decodeBinaryFrame(buf) {
  const b = buf instanceof Uint8Array ? buf : new Uint8Array(buf);
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const fail = (why) => { throw new WspushError("protocol", "binary frame: " + why); };
  if (b.length < 1) fail("empty");
  if (b[0] !== 1) fail(`unknown version ${b[0]}`);
  if (b.length < 4) fail("truncated header");
  const flags = b[1];
  if (flags & ~1) fail(`unknown flags 0x${flags.toString(16)}`);
  let off = 2;
  const appLen = v.getUint16(off);
  off += 2;
  if (b.length < off + appLen + 2) fail("truncated app");
  const app = utf8.decode(b.subarray(off, off + appLen));
  off += appLen;
  const keyLen = v.getUint16(off);
  off += 2;
  if (b.length < off + keyLen + 16) fail("truncated key, seq or ts");
  const key = utf8.decode(b.subarray(off, off + keyLen));
  off += keyLen;
  const seq = Number(v.getBigUint64(off));
  const ts = Number(v.getBigInt64(off + 8));
  off += 16;
  return { app, key, seq, ts, json: (flags & 1) === 1, payload: b.subarray(off) };
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

function base64Decode(s) {
  // Accepts base64 and base64url, padded or not.
  s = s.replace(/-/g, "+").replace(/_/g, "/");
  while (s.length % 4) s += "=";
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

// reportLater rethrows an exception of a user callback outside of the
// client's own code, as EventTarget does: the client's state stays intact
// and the bug stays visible.
function reportLater(err) {
  if (typeof globalThis.reportError === "function") globalThis.reportError(err);
  else setTimeout(() => { throw err; }, 0);
}

/**
 * Subscription is what subscribe returns: its ready promise settles when
 * the server acknowledged every key (or refused them).
 */
class Subscription {
  #client;
  #waiting;
  #positions = {};
  #recovered = undefined;
  #settled = false;
  #resolve;
  #reject;

  constructor(client, app, keys) {
    this.#client = client;
    this.app = app;
    this.keys = keys;
    this.#waiting = new Set(keys);
    this.ready = new Promise((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    // A caller that never awaits ready must not get an unhandled rejection.
    this.ready.catch(() => {});
  }

  unsubscribe() {
    return this.#client.unsubscribe(this.app, this.keys);
  }

  // acked is called once per key when its subscribe is acknowledged.
  acked(key, position, recovered) {
    if (this.#settled || !this.#waiting.delete(key)) return;
    this.#positions[key] = position;
    if (recovered !== undefined) this.#recovered = (this.#recovered ?? true) && recovered;
    if (this.#waiting.size === 0) {
      this.#settled = true;
      const ack = { app: this.app, keys: this.keys, positions: this.#positions, resumed: false };
      if (this.#recovered !== undefined) ack.recovered = this.#recovered;
      this.#resolve(ack);
    }
  }

  fail(err) {
    if (this.#settled) return;
    this.#settled = true;
    this.#reject(err);
  }
}

/**
 * Client is one logical connection to wspush: it reconnects on its own and
 * resubscribes every key from its position (docs/PROTOCOL.md, The client
 * rule).
 */
export class Client {
  #url;
  #opts;
  #WS;
  #ws = null;
  #state = "closed";
  #closedForGood = false;
  #listeners = new Map();
  // app -> key -> key state: position (seq, epoch, fresh), format,
  // callbacks, the id of the subscribe awaiting its ack, and the
  // subscriptions waiting for that ack (created in subscribe)
  #subs = new Map();
  #nsubs = 0;
  #nextId = 1;
  // id -> pending command (subscribe, unsubscribe, ping, refresh) sent on this connection
  #pending = new Map();
  // commands not yet sent, in order; paced by a token bucket
  #queue = [];
  #tokens = 0;
  #tokensAt = 0;
  #pumpTimer = null;
  #pumpScheduled = false;
  #attempt = 0;
  #reconnectTimer = null;
  #stableTimer = null;
  #openTimer = null;
  #heartbeat = null;
  #lastRecv = 0;
  #pingSentAt = 0;
  #refreshTimer = null;
  #token = undefined;
  #connectSeq = 0;
  #retryTimers = new Set();
  // the WebSocket is open, and the server answered on it
  #live = false;
  #confirmed = false;

  constructor(url, options = {}) {
    this.#opts = { ...DEFAULTS, ...options };
    if (url === undefined || url === null || url === "") {
      if (typeof location === "undefined") {
        throw new WspushError("client", "wspush: a URL (ws://host:port/ws) is required outside a browser");
      }
      url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
    }
    this.#url = String(url);
    this.#WS = this.#opts.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WS !== "function") {
      throw new WspushError("client",
        "wspush: no WebSocket: pass the WebSocket option (for example the ws package), or run Node 22+ (Node 20: --experimental-websocket)");
    }
    const o = this.#opts;
    if (!(o.minBackoff > 0) || !(o.maxBackoff >= o.minBackoff)) {
      throw new WspushError("client", "wspush: need 0 < minBackoff <= maxBackoff");
    }
    if (!(o.commandRate > 0) || !(o.commandBurst >= 1)) {
      throw new WspushError("client", "wspush: need commandRate > 0 and commandBurst >= 1");
    }
    if (!(o.maxKeysPerCommand >= 1)) throw new WspushError("client", "wspush: need maxKeysPerCommand >= 1");
    if (o.maxBandwidth !== undefined && o.maxBandwidth !== null && o.maxBandwidth !== 0 &&
        !(Number.isInteger(o.maxBandwidth) && o.maxBandwidth >= MIN_BANDWIDTH && o.maxBandwidth <= MAX_BANDWIDTH)) {
      throw new WspushError("client",
        `wspush: maxBandwidth ${JSON.stringify(o.maxBandwidth)}: want an integer from ${MIN_BANDWIDTH} to ${MAX_BANDWIDTH} (bytes/s)`);
    }
    // After the caller's synchronous code, so that listeners added right
    // after construction see "connecting".
    if (o.autoConnect) {
      this.#state = "connecting";
      queueMicrotask(() => { if (!this.#closedForGood) this.#start(); });
    }
  }

  get state() {
    return this.#state;
  }

  on(event, fn) {
    let set = this.#listeners.get(event);
    if (!set) this.#listeners.set(event, (set = new Set()));
    set.add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    this.#listeners.get(event)?.delete(fn);
  }

  #emit(event, value) {
    const set = this.#listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(value);
      } catch (err) {
        reportLater(err);
      }
    }
  }

  #call(fn, value) {
    if (!fn) return;
    try {
      fn(value);
    } catch (err) {
      reportLater(err);
    }
  }

  #setState(state, extra = {}) {
    this.#state = state;
    this.#emit("state", { state, ...extra });
  }

  connect() {
    if (this.#ws || this.#reconnectTimer || this.#state !== "closed") return;
    this.#start();
  }

  #start() {
    this.#closedForGood = false;
    this.#attempt = 0;
    this.#setState("connecting");
    this.#open();
  }

  close() {
    if (this.#closedForGood && this.#state === "closed") return;
    this.#shutdown(1000, "closed by client");
  }

  // #shutdown ends the client for good: no reconnect, every subscription
  // dropped and its ready rejected.
  #shutdown(code, reason) {
    this.#closedForGood = true;
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = null;
    const ws = this.#ws;
    this.#dropConnection();
    discard(ws, 1000, "closed by client");
    const err = new WspushError("closed", `wspush: connection closed (${code}${reason ? " " + reason : ""})`);
    for (const keys of this.#subs.values()) {
      for (const st of keys.values()) for (const w of st.waiters) w.fail(err);
    }
    this.#subs.clear();
    this.#nsubs = 0;
    this.#setState("closed", { code, reason });
  }

  async #currentToken() {
    if (this.#opts.getToken) return await this.#opts.getToken();
    return this.#opts.token;
  }

  async #open() {
    const seq = ++this.#connectSeq;
    let token;
    try {
      token = await this.#currentToken();
    } catch (err) {
      if (seq !== this.#connectSeq || this.#closedForGood) return;
      this.#emit("error", new WspushError("client", "wspush: getToken failed: " + (err?.message ?? err)));
      this.#scheduleReconnect(1006, "getToken failed");
      return;
    }
    if (seq !== this.#connectSeq || this.#closedForGood) return;
    this.#token = token;
    let ws;
    try {
      let url = this.#url;
      const bw = this.#opts.maxBandwidth;
      if (token || bw) {
        const u = new URL(url);
        if (token) u.searchParams.set("token", token);
        // docs/PROTOCOL.md, Delivery modes: max_bandwidth.
        if (bw) u.searchParams.set("max_bandwidth", String(bw));
        url = u.toString();
      }
      ws = new this.#WS(url);
    } catch (err) {
      // A malformed URL: retrying cannot help.
      this.#emit("error", new WspushError("client", "wspush: " + (err?.message ?? err)));
      this.#shutdown(1006, "bad URL");
      return;
    }
    ws.binaryType = "arraybuffer";
    this.#ws = ws;
    let opened = false;
    // A connection that neither answers its first ping nor fails in time
    // is given up.
    this.#openTimer = setTimeout(() => {
      if (this.#ws === ws) this.#abandon(`no WebSocket handshake and first reply in ${this.#opts.replyTimeout} ms`);
    }, this.#opts.replyTimeout);
    ws.onopen = () => {
      if (this.#ws !== ws) return;
      opened = true;
      this.#onOpen();
    };
    ws.onmessage = (ev) => {
      if (this.#ws !== ws) return;
      this.#lastRecv = Date.now();
      this.#pingSentAt = 0;
      if (!this.#confirmed) this.#onConfirmed();
      this.#onMessage(ev.data);
    };
    ws.onerror = () => {
      // A close event follows with the code, except in Node 20's
      // WebSocket when the handshake fails: then there is none.
      setTimeout(() => {
        if (this.#ws === ws) this.#onClose(1006, opened ? "" : "connection failed");
      }, opened ? 1000 : 50);
    };
    ws.onclose = (ev) => {
      if (this.#ws !== ws) return;
      this.#onClose(ev.code || 1006, ev.reason || "");
    };
  }

  // #onOpen runs when the WebSocket handshake is done. A server that
  // refuses the token completes the handshake and closes at once
  // (docs/PROTOCOL.md, Connecting), so the state becomes "open" only at the
  // first reply: the pong of a ping sent now.
  #onOpen() {
    const now = Date.now();
    this.#live = true;
    this.#lastRecv = now;
    this.#pingSentAt = 0;
    this.#tokens = this.#opts.commandBurst;
    this.#tokensAt = now;
    this.#enqueue({ op: "ping" }, true);
    // Resubscribe everything, per app, format and mode, from the positions
    // (docs/PROTOCOL.md, The client rule, 4); a latest key keeps its mode
    // and maxRate (Delivery modes).
    for (const [app, keys] of this.#subs) {
      const groups = new Map();
      for (const st of keys.values()) {
        st.pendingId = 0;
        const g = kindOf(st) + (st.hasPos ? "+" : "-");
        let list = groups.get(g);
        if (!list) groups.set(g, (list = []));
        list.push(st);
      }
      for (const list of groups.values()) this.#enqueueSubscribe(app, list[0].format, list, list[0].hasPos);
    }
  }

  #onConfirmed() {
    this.#confirmed = true;
    clearTimeout(this.#openTimer);
    this.#openTimer = null;
    this.#setState("open");
    this.#stableTimer = setTimeout(() => { this.#attempt = 0; }, STABLE_MS);
    this.#startHeartbeat();
    this.#scheduleRefresh();
  }

  // #dropConnection forgets the current socket and everything tied to it.
  #dropConnection() {
    const ws = this.#ws;
    this.#ws = null;
    this.#live = false;
    this.#confirmed = false;
    this.#connectSeq++;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    }
    clearTimeout(this.#openTimer);
    clearTimeout(this.#stableTimer);
    clearInterval(this.#heartbeat);
    clearTimeout(this.#refreshTimer);
    clearTimeout(this.#pumpTimer);
    this.#openTimer = this.#stableTimer = this.#heartbeat = this.#refreshTimer = this.#pumpTimer = null;
    for (const t of this.#retryTimers) clearTimeout(t);
    this.#retryTimers.clear();
    const cmds = [...this.#queue, ...this.#pending.values()];
    this.#queue = [];
    this.#pending.clear();
    for (const cmd of cmds) {
      // The server dropped this connection's subscriptions: an unsubscribe
      // is done; subscribes are sent again on the next connection.
      if (cmd.op === "unsubscribe") cmd.done();
    }
    for (const keys of this.#subs.values()) {
      for (const st of keys.values()) st.pendingId = 0;
    }
  }

  #onClose(code, reason) {
    this.#dropConnection();
    if (this.#closedForGood) return;
    if (FATAL_CLOSE.has(code)) {
      this.#shutdown(code, reason);
      return;
    }
    if (code === TOKEN_EXPIRED && !this.#opts.getToken) {
      // The same token would be refused: only a callback can get a new one.
      this.#shutdown(code, reason || "token expired");
      return;
    }
    this.#scheduleReconnect(code, reason);
  }

  #scheduleReconnect(code, reason) {
    const o = this.#opts;
    // Exponential backoff with full jitter.
    const cap = Math.min(o.maxBackoff, o.minBackoff * 2 ** Math.min(this.#attempt, 30));
    const delay = Math.round(Math.random() * cap);
    this.#attempt++;
    this.#setState("reconnecting", { code, reason, delay, attempt: this.#attempt });
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = null;
      if (!this.#closedForGood) this.#open();
    }, delay);
  }

  // #abandon gives up a socket that stopped answering: a dead peer may
  // never complete a close handshake, so the client does not wait for it.
  #abandon(reason) {
    const ws = this.#ws;
    this.#dropConnection();
    discard(ws, 4000, reason);
    this.#scheduleReconnect(1006, reason);
  }

  #startHeartbeat() {
    const o = this.#opts;
    if (!(o.pingInterval > 0)) return;
    const tick = Math.max(100, Math.min(1000, o.pingInterval / 4, o.replyTimeout / 4));
    this.#heartbeat = setInterval(() => {
      const now = Date.now();
      if (this.#pingSentAt && now - this.#pingSentAt > o.replyTimeout) {
        this.#abandon(`no reply from the server in ${o.replyTimeout} ms`);
        return;
      }
      if (!this.#pingSentAt && now - this.#lastRecv >= o.pingInterval) {
        this.#pingSentAt = now;
        this.#enqueue({ op: "ping" }, true);
      }
    }, tick);
  }

  // Token expiry and refresh (docs/PROTOCOL.md): refresh ahead of exp by
  // a minute, or by a tenth of the remaining lifetime when that is shorter.
  #scheduleRefresh() {
    clearTimeout(this.#refreshTimer);
    this.#refreshTimer = null;
    if (!this.#opts.getToken) return;
    const exp = tokenExpiry(this.#token);
    if (exp === undefined) return;
    const left = exp - Date.now();
    const lead = Math.min(60000, Math.max(1000, left / 10));
    this.#refreshTimer = setTimeout(() => this.#refresh(), Math.max(0, left - lead));
  }

  async #refresh() {
    this.#refreshTimer = null;
    const seq = this.#connectSeq;
    let token;
    try {
      token = await this.#opts.getToken();
    } catch (err) {
      if (seq !== this.#connectSeq) return;
      this.#emit("error", new WspushError("client", "wspush: getToken failed for refresh: " + (err?.message ?? err)));
      this.#retryRefresh();
      return;
    }
    if (seq !== this.#connectSeq || !this.#ws) return;
    this.#enqueue({ op: "refresh", token, done: () => {
      this.#token = token;
      this.#scheduleRefresh();
    }, failed: () => this.#retryRefresh() }, true);
  }

  #retryRefresh() {
    const exp = tokenExpiry(this.#token);
    if (exp === undefined || !this.#ws) return;
    const left = exp - Date.now();
    if (left <= 0) return; // the server closes with 4003; the reconnect gets a new token
    this.#refreshTimer = setTimeout(() => this.#refresh(), Math.min(5000, left / 2));
  }

  subscribe(app, keys, options = {}) {
    checkName("app", app);
    if (!Array.isArray(keys) || keys.length === 0) {
      throw new WspushError("bad_request", "wspush: subscribe needs at least one key");
    }
    keys = [...new Set(keys)];
    for (const k of keys) checkName("key", k);
    const format = options.format ?? "json";
    if (format !== "json" && format !== "binary") {
      throw new WspushError("bad_request", `wspush: format ${JSON.stringify(format)}: want "json" or "binary"`);
    }
    // docs/PROTOCOL.md, Delivery modes.
    const mode = options.mode ?? "stream";
    if (mode !== "stream" && mode !== "latest") {
      throw new WspushError("bad_request", `wspush: mode ${JSON.stringify(mode)}: want "stream" or "latest"`);
    }
    const maxRate = options.maxRate ?? 0;
    if (maxRate !== 0) {
      if (mode !== "latest") throw new WspushError("bad_request", `wspush: maxRate needs mode "latest"`);
      if (typeof maxRate !== "number" || !(maxRate > 0 && maxRate <= MAX_RATE)) {
        throw new WspushError("bad_request", `wspush: maxRate ${JSON.stringify(maxRate)}: want 0 < maxRate <= ${MAX_RATE} (values/s)`);
      }
    }
    const since = options.since ?? {};
    for (const [k, p] of Object.entries(since)) {
      if (!p || typeof p.seq !== "number" || p.seq < 0 || typeof p.epoch !== "string") {
        throw new WspushError("bad_request", `wspush: since for ${k}: want {seq, epoch}`);
      }
    }
    if (this.#closedForGood) throw new WspushError("closed", "wspush: the client is closed");
    let appKeys = this.#subs.get(app);
    const added = keys.filter((k) => !appKeys?.has(k)).length;
    if (this.#nsubs + added > this.#opts.maxSubscriptions) {
      throw new WspushError("limit",
        `wspush: ${this.#nsubs + added} keys on this connection: the server allows ${this.#opts.maxSubscriptions}`);
    }
    if (!appKeys) this.#subs.set(app, (appKeys = new Map()));
    this.#nsubs += added;
    const sub = new Subscription(this, app, keys);
    const list = [];
    for (const key of keys) {
      let st = appKeys.get(key);
      if (!st) {
        st = {
          app, key, seq: 0, epoch: "", hasPos: false, fresh: false,
          pendingId: 0, sentSince: null, userSince: null, waiters: new Set(),
        };
        appKeys.set(key, st);
      }
      st.format = format;
      st.mode = mode;
      st.maxRate = maxRate;
      st.onData = options.onData;
      st.onReset = options.onReset;
      st.onAck = options.onAck;
      if (since[key]) st.userSince = { seq: since[key].seq, epoch: since[key].epoch };
      st.waiters.add(sub);
      list.push(st);
    }
    if (this.#live) this.#enqueueSubscribe(app, format, list, false);
    return sub;
  }

  async unsubscribe(app, keys) {
    const appKeys = this.#subs.get(app);
    if (!appKeys) return;
    const gone = [];
    for (const k of new Set(keys)) {
      const st = appKeys.get(k);
      if (!st) continue;
      appKeys.delete(k);
      this.#nsubs--;
      const err = new WspushError("closed", `wspush: ${app}/${k} was unsubscribed before its ack`);
      for (const w of st.waiters) w.fail(err);
      gone.push(k);
    }
    if (appKeys.size === 0) this.#subs.delete(app);
    if (gone.length === 0 || !this.#live) return;
    const max = this.#opts.maxKeysPerCommand;
    const waits = [];
    let i = 0;
    // Keys join the last queued unsubscribe of the app while it has room,
    // so that many small calls (a "cancel" per key) cost few commands.
    const tail = this.#queue[this.#queue.length - 1];
    if (tail && tail.op === "unsubscribe" && tail.app === app && tail.keys.length < max) {
      const take = gone.slice(0, max - tail.keys.length);
      tail.keys.push(...take);
      i = take.length;
      waits.push(new Promise((resolve, reject) => tail.waiters.push({ resolve, reject })));
    }
    for (; i < gone.length; i += max) {
      const cmd = unsubscribeCommand(app, gone.slice(i, i + max));
      waits.push(new Promise((resolve, reject) => cmd.waiters.push({ resolve, reject })));
      this.#enqueue(cmd);
    }
    await Promise.all(waits);
  }

  positions(app) {
    const out = {};
    const appKeys = this.#subs.get(app);
    if (!appKeys) return out;
    for (const st of appKeys.values()) {
      if (st.hasPos) out[st.key] = { seq: st.seq, epoch: st.epoch };
    }
    return out;
  }

  // #enqueueSubscribe sends subscribe commands for the key states in list,
  // at most maxKeysPerCommand keys each.
  // The keys of list share their format, mode and maxRate.
  #enqueueSubscribe(app, format, list, resumed, retries = 0) {
    const max = this.#opts.maxKeysPerCommand;
    const { mode, maxRate } = list[0];
    let i = 0;
    // Keys join the last queued subscribe of the same kind while it has
    // room: a subscribe per key in a loop costs a few commands, not one
    // per key (docs/PROTOCOL.md, Commands: the rate limit).
    const tail = this.#queue[this.#queue.length - 1];
    if (tail && tail.op === "subscribe" && tail.app === app && tail.format === format &&
        tail.mode === mode && tail.maxRate === maxRate && tail.resumed === resumed && tail.keys.length < max) {
      for (; i < list.length && tail.keys.length < max; i++) {
        const st = list[i];
        if (!tail.keys.includes(st.key)) tail.keys.push(st.key);
        st.pendingId = tail.id;
      }
    }
    for (; i < list.length; i += max) {
      const chunk = list.slice(i, i + max);
      const cmd = { op: "subscribe", app, format, mode, maxRate, keys: chunk.map((st) => st.key), resumed, retries };
      this.#enqueue(cmd);
      for (const st of chunk) st.pendingId = cmd.id;
    }
  }

  #enqueue(cmd, front = false) {
    cmd.id = this.#nextId++;
    if (front) this.#queue.unshift(cmd);
    else this.#queue.push(cmd);
    // Sent after the caller's synchronous code, so that a loop of small
    // calls merges into few commands.
    if (!this.#pumpScheduled) {
      this.#pumpScheduled = true;
      queueMicrotask(() => {
        this.#pumpScheduled = false;
        this.#pump();
      });
    }
  }

  // #pump sends queued commands as the token bucket allows.
  #pump() {
    if (this.#pumpTimer || !this.#live) return;
    const o = this.#opts;
    while (this.#queue.length > 0) {
      const now = Date.now();
      this.#tokens = Math.min(o.commandBurst, this.#tokens + ((now - this.#tokensAt) * o.commandRate) / 1000);
      this.#tokensAt = now;
      if (this.#tokens < 1) {
        const wait = Math.ceil(((1 - this.#tokens) * 1000) / o.commandRate);
        this.#pumpTimer = setTimeout(() => {
          this.#pumpTimer = null;
          this.#pump();
        }, wait);
        return;
      }
      this.#tokens -= 1;
      this.#send(this.#queue.shift());
    }
  }

  #send(cmd) {
    const msg = { op: cmd.op, id: cmd.id };
    switch (cmd.op) {
      case "subscribe": {
        const appKeys = this.#subs.get(cmd.app);
        // Keys unsubscribed or subscribed again since this was queued are
        // left out.
        const keys = cmd.keys.filter((k) => appKeys?.get(k)?.pendingId === cmd.id);
        if (keys.length === 0) {
          // Nothing left to send: give the token back.
          this.#tokens += 1;
          return;
        }
        cmd.keys = keys;
        msg.app = cmd.app;
        msg.keys = keys;
        msg.format = cmd.format;
        const since = {};
        let any = false;
        for (const k of keys) {
          const st = appKeys.get(k);
          // The client rule, 4: resume with the full position, except a
          // key still fresh (or never acknowledged), which gets the latest
          // value again. A caller's since wins over both.
          let s = null;
          if (st.userSince) s = st.userSince;
          else if (st.hasPos && !st.fresh) s = { seq: st.seq, epoch: st.epoch };
          st.sentSince = s;
          if (s) {
            since[k] = st.legacy && !st.userSince ? s.seq : s;
            any = true;
          }
        }
        if (any) msg.since = since;
        // A stream subscribe carries no mode: the same command as before
        // modes existed (docs/PROTOCOL.md, Delivery modes).
        if (cmd.mode === "latest") {
          msg.mode = "latest";
          if (cmd.maxRate) msg.max_rate = cmd.maxRate;
        }
        break;
      }
      case "unsubscribe":
        msg.app = cmd.app;
        msg.keys = cmd.keys;
        break;
      case "refresh":
        msg.token = cmd.token;
        break;
    }
    this.#pending.set(cmd.id, cmd);
    // Closing: the close event follows; it settles what is pending, and the
    // next connection sends what it needs again.
    if (this.#ws.readyState !== 1) return;
    try {
      this.#ws.send(JSON.stringify(msg));
    } catch (err) {
      this.#abandon("send failed: " + (err?.message ?? err));
    }
  }

  #onMessage(data) {
    if (typeof data !== "string") {
      this.#onBinary(data);
      return;
    }
    let m;
    try {
      m = JSON.parse(data);
    } catch {
      this.#emit("error", new WspushError("protocol", "wspush: a server message that is not JSON"));
      return;
    }
    switch (m.op) {
      case "data":
        if (m.data !== undefined) this.#onData(m.app, m.key, m.seq, m.ts, true, m.data, undefined);
        else this.#onData(m.app, m.key, m.seq, m.ts, false, undefined, m.b64 === undefined ? new Uint8Array(0) : base64Decode(m.b64));
        break;
      case "reset":
        this.#onReset(m);
        break;
      case "ack":
        this.#onAck(m);
        break;
      case "error":
        this.#onError(m);
        break;
      case "pong":
        this.#pending.delete(m.id);
        break;
      default:
        this.#emit("error", new WspushError("protocol", `wspush: unknown server message op ${JSON.stringify(m.op)}`));
    }
  }

  #onBinary(data) {
    let f;
    try {
      f = decodeBinaryFrame(data instanceof ArrayBuffer || data instanceof Uint8Array ? data : new Uint8Array(data));
    } catch (err) {
      // docs/PROTOCOL.md, Binary frames: reject what we cannot read. The
      // key's next value then shows the gap, and the client resumes.
      this.#emit("error", err instanceof WspushError ? err : new WspushError("protocol", "wspush: binary frame: " + err.message));
      return;
    }
    if (f.json) {
      let value;
      try {
        value = JSON.parse(utf8.decode(f.payload));
      } catch {
        this.#emit("error", new WspushError("protocol", `wspush: binary frame of ${f.app}/${f.key} seq ${f.seq}: JSON flag on a payload that is not JSON`));
        return;
      }
      this.#onData(f.app, f.key, f.seq, f.ts, true, value, undefined);
    } else {
      this.#onData(f.app, f.key, f.seq, f.ts, false, undefined, f.payload);
    }
  }

  // The client rule, 3 (docs/PROTOCOL.md).
  #onData(app, key, seq, ts, json, data, bytes) {
    const st = this.#subs.get(app)?.get(key);
    // A key unsubscribed, or subscribed again and waiting for that ack:
    // what comes before the ack is replayed after it.
    if (!st || st.pendingId !== 0 || !st.hasPos) return;
    const accept = seq === st.seq + 1 || (st.fresh && (seq === st.seq || st.legacy));
    if (!accept && st.mode === "latest") {
      // docs/PROTOCOL.md, Delivery modes: a latest key's seq may jump (the
      // values between were skipped on purpose); an older or the same seq
      // is ignored. Neither is a fault: no resume.
      if (!(seq > st.seq)) return;
    } else if (!accept) {
      const expected = st.seq + 1;
      this.#emit("protocol", { app, key, seq, expected, epoch: st.epoch });
      this.#emit("error", new WspushError("protocol",
        `wspush: ${app}/${key}: seq ${seq} where ${expected} was expected (epoch ${st.epoch})`));
      if (seq > expected) {
        // A gap: resume the key from its position on this connection; the
        // server replays what is missing or sends a reset.
        st.fresh = false;
        this.#enqueueSubscribe(app, st.format, [st], true);
      }
      return;
    }
    st.fresh = false;
    st.seq = seq;
    const p = { app, key, seq, epoch: st.epoch, ts, json };
    if (json) p.data = data;
    else p.bytes = bytes;
    this.#call(st.onData, p);
  }

  // The client rule, 2.
  #onReset(m) {
    const st = this.#subs.get(m.app)?.get(m.key);
    if (!st || st.pendingId !== 0) return;
    st.seq = m.seq;
    st.epoch = m.epoch;
    st.fresh = false;
    st.hasPos = true;
    this.#call(st.onReset, { app: m.app, key: m.key, seq: m.seq, epoch: m.epoch, reason: m.reason });
  }

  // The client rule, 1.
  #onAck(m) {
    const cmd = this.#pending.get(m.id);
    if (!cmd) return;
    this.#pending.delete(m.id);
    if (cmd.op !== "subscribe") {
      cmd.done?.();
      return;
    }
    const appKeys = this.#subs.get(cmd.app);
    const positions = m.positions ?? {};
    const byCallback = new Map();
    for (const k of cmd.keys) {
      const st = appKeys?.get(k);
      if (!st || st.pendingId !== cmd.id) continue;
      st.pendingId = 0;
      const p = positions[k];
      st.legacy = !p;
      if (st.sentSince) {
        st.seq = st.sentSince.seq;
        // A server without positions gives no epoch: keep ours.
        st.epoch = p ? p.epoch : st.sentSince.epoch;
        st.fresh = false;
      } else if (p) {
        st.seq = p.seq;
        st.epoch = p.epoch;
        st.fresh = true;
      } else {
        // A server older than positions (docs/PROTOCOL.md, The client
        // rule): the first data sets the position, and the key resumes
        // with the bare since form.
        st.seq = 0;
        st.epoch = "";
        st.fresh = true;
      }
      st.hasPos = true;
      st.userSince = null;
      st.sentSince = null;
      const pos = { seq: st.seq, epoch: st.epoch };
      const ackPos = p ?? pos;
      for (const w of st.waiters) w.acked(k, ackPos, m.recovered);
      st.waiters.clear();
      if (st.onAck) {
        let group = byCallback.get(st.onAck);
        if (!group) byCallback.set(st.onAck, (group = { keys: [], positions: {} }));
        group.keys.push(k);
        group.positions[k] = ackPos;
      }
    }
    for (const [fn, g] of byCallback) {
      const a = { app: cmd.app, keys: g.keys, positions: g.positions, resumed: cmd.resumed };
      if (m.recovered !== undefined) a.recovered = m.recovered;
      this.#call(fn, a);
    }
  }

  #onError(m) {
    const cmd = this.#pending.get(m.id);
    const err = new WspushError(m.code ?? "internal", `wspush: ${m.message ?? m.code}`, m.id);
    this.#emit("error", err);
    if (!cmd) return;
    this.#pending.delete(m.id);
    if (cmd.op !== "subscribe") {
      cmd.failed?.(err);
      return;
    }
    // docs/PROTOCOL.md, Error codes: a failed subscribe subscribed
    // nothing. A transient failure is retried; any other drops the keys.
    const appKeys = this.#subs.get(cmd.app);
    const retry = [];
    for (const k of cmd.keys) {
      const st = appKeys?.get(k);
      if (!st || st.pendingId !== cmd.id) continue;
      st.pendingId = 0;
      if (RETRYABLE.has(err.code)) {
        retry.push(st);
        continue;
      }
      appKeys.delete(k);
      this.#nsubs--;
      for (const w of st.waiters) w.fail(err);
    }
    if (appKeys && appKeys.size === 0) this.#subs.delete(cmd.app);
    if (retry.length > 0) this.#retrySubscribe(cmd, retry);
  }

  // #retrySubscribe sends cmd's keys in list again after a backoff, those
  // of them still subscribed and not subscribed again meanwhile.
  #retrySubscribe(cmd, list) {
    const o = this.#opts;
    const cap = Math.min(o.maxBackoff, o.minBackoff * 2 ** Math.min(cmd.retries, 30));
    const t = setTimeout(() => {
      this.#retryTimers.delete(t);
      const appKeys = this.#subs.get(cmd.app);
      const still = list.filter((st) => appKeys?.get(st.key) === st && st.pendingId === 0 &&
        st.format === cmd.format && st.mode === cmd.mode && st.maxRate === cmd.maxRate);
      if (still.length > 0 && this.#live) this.#enqueueSubscribe(cmd.app, cmd.format, still, cmd.resumed, cmd.retries + 1);
    }, Math.max(o.minBackoff, Math.round(Math.random() * cap)));
    this.#retryTimers.add(t);
  }
}

// discard closes a socket the client no longer listens to. One still
// connecting is closed once open: closing it during the handshake makes
// browsers log an error.
function discard(ws, code, reason) {
  if (!ws) return;
  const close = () => {
    try {
      ws.close(code, reason.slice(0, 100));
    } catch {
      // already closing
    }
  };
  if (ws.readyState === 0) ws.onopen = close;
  else close();
}

function unsubscribeCommand(app, keys) {
  const cmd = {
    op: "unsubscribe", app, keys, waiters: [],
    done: () => { for (const w of cmd.waiters) w.resolve(); },
    failed: (err) => { for (const w of cmd.waiters) w.reject(err); },
  };
  return cmd;
}

// kindOf is what keys must share to go in one subscribe command.
function kindOf(st) {
  return `${st.format}/${st.mode}/${st.maxRate}`;
}

function checkName(what, v) {
  if (typeof v !== "string" || !NAME.test(v)) {
    throw new WspushError("bad_request", `wspush: ${what} ${JSON.stringify(v)}: want 1-64 characters of [A-Za-z0-9_-]`);
  }
}
