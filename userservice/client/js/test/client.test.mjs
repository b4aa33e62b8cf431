// End-to-end tests of wspush.js against a real wspush binary (embedded
// store), and unit tests of its decoders. Run from the repository root:
//   node --test userservice/client/js/test/*.test.mjs
// (scripts/test.sh does, with WSPUSH_BIN set to a fresh build).

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { Client, WspushError, decodeBinaryFrame, tokenExpiry } from "../wspush.js";
import { startServer, publish, waitFor, hs256, stateRecorder, WebSocket } from "./server.mjs";

const clients = [];
const servers = [];
after(async () => {
  for (const c of clients) c.close();
  await Promise.all(servers.map((s) => s.kill()));
});

async function server(args) {
  const s = await startServer(args);
  servers.push(s);
  return s;
}

function client(url, opts) {
  const c = new Client(url, { WebSocket, ...opts });
  clients.push(c);
  return c;
}

// frame builds a binary data frame (docs/PROTOCOL.md, Binary frames).
function frame({ version = 1, flags = 0, app = "a", key = "k", seq = 1n, ts = 0n, payload = new Uint8Array() }) {
  const te = new TextEncoder();
  const a = te.encode(app);
  const k = te.encode(key);
  const b = new Uint8Array(2 + 2 + a.length + 2 + k.length + 16 + payload.length);
  const v = new DataView(b.buffer);
  let off = 0;
  b[off++] = version;
  b[off++] = flags;
  v.setUint16(off, a.length);
  off += 2;
  b.set(a, off);
  off += a.length;
  v.setUint16(off, k.length);
  off += 2;
  b.set(k, off);
  off += k.length;
  v.setBigUint64(off, seq);
  v.setBigInt64(off + 8, ts);
  off += 16;
  b.set(payload, off);
  return b;
}

test("decodeBinaryFrame reads version 1 and rejects what it does not know", () => {
  const payload = new TextEncoder().encode('{"t":1}');
  const f = decodeBinaryFrame(frame({ flags: 1, app: "plant-7", key: "001", seq: 42n, ts: 1763812345123n, payload }));
  assert.deepEqual({ ...f, payload: [...f.payload] },
    { app: "plant-7", key: "001", seq: 42, ts: 1763812345123, json: true, payload: [...payload] });
  // From an ArrayBuffer too, and a Uint8Array that is a view into a larger buffer.
  const whole = frame({ seq: 7n, payload: new Uint8Array([0, 1, 2]) });
  assert.equal(decodeBinaryFrame(whole.buffer).seq, 7);
  const padded = new Uint8Array(whole.length + 5);
  padded.set(whole, 5);
  assert.deepEqual([...decodeBinaryFrame(padded.subarray(5)).payload], [0, 1, 2]);

  const bad = [
    [frame({ version: 2 }), /unknown version 2/],
    [frame({ version: 0 }), /unknown version 0/],
    [frame({ flags: 2 }), /unknown flags/],
    [new Uint8Array(), /empty/],
    [frame({}).subarray(0, 10), /truncated/],
    [frame({ app: "x" }).subarray(0, 5), /truncated/],
  ];
  for (const [b, re] of bad) {
    assert.throws(() => decodeBinaryFrame(b), (e) => e instanceof WspushError && e.code === "protocol" && re.test(e.message));
  }
});

test("tokenExpiry reads exp from the JWT payload", async () => {
  const t = await hs256({ sub: "u", exp: 2000000000 }, "s");
  assert.equal(tokenExpiry(t), 2000000000 * 1000);
  assert.equal(tokenExpiry(await hs256({ sub: "u" }, "s")), undefined);
  assert.equal(tokenExpiry("not a jwt"), undefined);
  assert.equal(tokenExpiry("a.%%%.c"), undefined);
});

test("subscribe receives HTTP-published values in order, JSON and bytes", { timeout: 30000 }, async () => {
  const srv = await server();
  const c = client(srv.url);
  const states = stateRecorder(c);
  const got = { k1: [], k2: [] };
  const sub = c.subscribe("jsorder", ["k1", "k2"], { onData: (p) => got[p.key].push(p) });
  const ack = await sub.ready;
  assert.deepEqual(Object.keys(ack.positions).sort(), ["k1", "k2"]);
  assert.equal(ack.positions.k1.seq, 0);
  assert.equal(ack.recovered, undefined);

  const n = 50;
  const items = [];
  for (let i = 1; i <= n; i++) {
    items.push({ app: "jsorder", key: "k1", data: { i } });
    items.push({ app: "jsorder", key: "k2", b64: Buffer.from([i, 255 - i]).toString("base64") });
  }
  await publish(srv, items);
  await waitFor("every value", () => got.k1.length === n && got.k2.length === n);
  for (let i = 1; i <= n; i++) {
    assert.equal(got.k1[i - 1].seq, i);
    assert.equal(got.k1[i - 1].json, true);
    assert.deepEqual(got.k1[i - 1].data, { i });
    assert.equal(got.k1[i - 1].epoch, ack.positions.k1.epoch);
    assert.equal(got.k2[i - 1].json, false);
    assert.deepEqual([...got.k2[i - 1].bytes], [i, 255 - i]);
  }
  assert.deepEqual(c.positions("jsorder"), {
    k1: { seq: n, epoch: ack.positions.k1.epoch },
    k2: { seq: n, epoch: ack.positions.k2.epoch },
  });
  assert.deepEqual(states.map((s) => s.state), ["connecting", "open"]);
});

test("a key subscribed after values exist gets the latest value first", { timeout: 30000 }, async () => {
  const srv = await server();
  await publish(srv, [1, 2, 3].map((i) => ({ app: "jslatest", key: "k", data: i })));
  const c = client(srv.url);
  const got = [];
  const sub = c.subscribe("jslatest", ["k"], { onData: (p) => got.push(p.data) });
  assert.equal((await sub.ready).positions.k.seq, 3);
  await waitFor("the latest value", () => got.length === 1);
  await publish(srv, [{ app: "jslatest", key: "k", data: 4 }]);
  await waitFor("the next value", () => got.length === 2);
  assert.deepEqual(got, [3, 4]);
});

test("binary format decodes JSON and bytes, and a key switches format keeping its position", { timeout: 30000 }, async () => {
  const srv = await server();
  const c = client(srv.url);
  const got = [];
  const errors = [];
  c.on("error", (e) => errors.push(e));
  const onData = (p) => got.push(p);
  await c.subscribe("jsbin", ["k"], { format: "binary", onData }).ready;
  await publish(srv, [
    { app: "jsbin", key: "k", data: { v: "é" } },
    { app: "jsbin", key: "k", b64: Buffer.from([0, 1, 2, 250]).toString("base64") },
  ]);
  await waitFor("two binary values", () => got.length === 2);
  assert.deepEqual(got[0].data, { v: "é" });
  assert.equal(got[0].json, true);
  assert.equal(got[1].json, false);
  assert.deepEqual([...got[1].bytes], [0, 1, 2, 250]);

  // Switch to JSON: the key resumes from seq 2, so nothing is repeated.
  const again = await c.subscribe("jsbin", ["k"], { format: "json", onData }).ready;
  assert.equal(again.recovered, true);
  await publish(srv, [{ app: "jsbin", key: "k", data: 3 }]);
  await waitFor("the value after the switch", () => got.length === 3);
  assert.deepEqual(got.map((p) => p.seq), [1, 2, 3]);
  assert.equal(got[2].data, 3);
  assert.deepEqual(errors, []);
});

test("1,000 keys: subscribe and unsubscribe in loops are paced under the server's limits", { timeout: 60000 }, async () => {
  const srv = await server();
  const c = client(srv.url);
  const states = stateRecorder(c);
  const errors = [];
  c.on("error", (e) => errors.push(e));
  const keys = Array.from({ length: 1000 }, (_, i) => "s" + String(i).padStart(4, "0"));
  // One call per key, as a dashboard adding sensors does.
  const subs = keys.map((k) => c.subscribe("jsmany", [k]));
  await Promise.all(subs.map((s) => s.ready));
  assert.equal(Object.keys(c.positions("jsmany")).length, 1000);
  assert.throws(() => c.subscribe("jsmany", ["one-more"]), (e) => e.code === "limit" && /1001 keys/.test(e.message));

  // And in one call per key to unsubscribe, then the rest in one call.
  const first = keys.slice(0, 500).map((k) => c.unsubscribe("jsmany", [k]));
  await Promise.all(first);
  await c.unsubscribe("jsmany", keys.slice(500));
  assert.deepEqual(c.positions("jsmany"), {});

  // Again, all at once.
  await c.subscribe("jsmany", keys).ready;
  await c.unsubscribe("jsmany", keys);

  // One call per event-loop turn: the first ones go out as single commands
  // until the client's own bucket is empty, the rest merge into few. Sent
  // unpaced, 200 commands at once would be closed with 1008 (burst 50).
  const paced = keys.slice(0, 200);
  const readies = [];
  for (const k of paced) {
    readies.push(c.subscribe("jsmany", [k]).ready);
    await new Promise((r) => setImmediate(r));
  }
  await Promise.all(readies);
  const gone = [];
  for (const k of paced) {
    gone.push(c.unsubscribe("jsmany", [k]));
    await new Promise((r) => setImmediate(r));
  }
  await Promise.all(gone);

  // The connection is still the first one.
  const got = [];
  await c.subscribe("jsmany", ["after"], { onData: (p) => got.push(p.data) }).ready;
  await publish(srv, [{ app: "jsmany", key: "after", data: "alive" }]);
  await waitFor("a value on the same connection", () => got.length === 1);
  assert.deepEqual(states.map((s) => s.state), ["connecting", "open"]);
  assert.deepEqual(errors, []);
  assert.doesNotMatch(srv.log(), /rate|1008/);
});

test("a bad token: close 4001, state closed, no reconnect loop", { timeout: 30000 }, async () => {
  const srv = await server(["--jwt-secret", "jstest-secret"]);
  const c = client(srv.url, { token: "not-a-jwt", minBackoff: 10, maxBackoff: 20 });
  const states = stateRecorder(c);
  const sub = c.subscribe("jsauth", ["k"]);
  await assert.rejects(sub.ready, (e) => e.code === "closed" && /4001/.test(e.message));
  await waitFor("closed", () => states.some((s) => s.state === "closed"));
  // With a 10 ms backoff a loop would show within this wait.
  await new Promise((r) => setTimeout(r, 500));
  // The server completes the upgrade, then closes (docs/PROTOCOL.md,
  // Connecting): the client is "open" only once the server answered.
  assert.deepEqual(states.map((s) => s.state), ["connecting", "closed"]);
  assert.equal(states[1].code, 4001);
  assert.equal(c.state, "closed");
});

test("getToken refreshes before exp: the connection outlives its first token", { timeout: 30000 }, async () => {
  const secret = "jstest-refresh";
  const srv = await server(["--jwt-secret", secret, "--ping-interval", "500ms"]);
  let issued = 0;
  const c = client(srv.url, {
    getToken: async () => {
      issued++;
      return hs256({ sub: "refresher", exp: Math.floor(Date.now() / 1000) + 3 }, secret);
    },
  });
  const states = stateRecorder(c);
  const got = [];
  await c.subscribe("jsrefresh", ["k"], { onData: (p) => got.push(p.data) }).ready;
  // Two token lifetimes: without refresh the server closes with 4003.
  await new Promise((r) => setTimeout(r, 6500));
  await publish(srv, [{ app: "jsrefresh", key: "k", data: 1 }]);
  await waitFor("a value after the first token expired", () => got.length === 1);
  assert.ok(issued >= 3, `getToken called ${issued} times`);
  assert.deepEqual(states.map((s) => s.state), ["connecting", "open"]);
});

test("a static token that expires: close 4003 and closed, without a loop", { timeout: 30000 }, async () => {
  const secret = "jstest-expiry";
  const srv = await server(["--jwt-secret", secret, "--ping-interval", "500ms"]);
  const token = await hs256({ sub: "static", exp: Math.floor(Date.now() / 1000) + 2 }, secret);
  const c = client(srv.url, { token, minBackoff: 10, maxBackoff: 20 });
  const states = stateRecorder(c);
  await c.subscribe("jsexpiry", ["k"]).ready;
  await waitFor("closed", () => c.state === "closed", 10000);
  assert.deepEqual(states.map((s) => s.state), ["connecting", "open", "closed"]);
  assert.equal(states[2].code, 4003);
});
