// The client rule (docs/PROTOCOL.md, The client rule) and the close-code
// table (Close codes) against a scripted server that sends exactly what
// each case needs, including what a correct server never sends.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { Client } from "../wspush.js";
import { waitFor, WebSocket } from "./server.mjs";
import { scriptedServer } from "./scripted.mjs";

const closers = [];
after(async () => {
  for (const f of closers.reverse()) await f();
});

async function setup(opts = {}) {
  const srv = await scriptedServer();
  const c = new Client(srv.url, { WebSocket, minBackoff: 10, maxBackoff: 20, ...opts });
  closers.push(() => srv.close(), () => c.close());
  const rec = { data: [], resets: [], protocol: [], errors: [], states: [], acks: [] };
  c.on("protocol", (p) => rec.protocol.push(p));
  c.on("error", (e) => rec.errors.push(e));
  c.on("state", (e) => rec.states.push(e));
  return { srv, c, rec };
}

const data = (key, seq, d) => ({ op: "data", app: "app", key, seq, ts: 1000 + seq, data: d ?? seq });

function binaryFrame(version, key, seq) {
  const k = Buffer.from(key);
  const a = Buffer.from("app");
  const b = Buffer.alloc(2 + 2 + a.length + 2 + k.length + 16 + 1);
  let off = 0;
  b[off++] = version;
  b[off++] = 1;
  b.writeUInt16BE(a.length, off);
  off += 2;
  a.copy(b, off);
  off += a.length;
  b.writeUInt16BE(k.length, off);
  off += 2;
  k.copy(b, off);
  off += k.length;
  b.writeBigUInt64BE(BigInt(seq), off);
  b.writeBigInt64BE(0n, off + 8);
  b[off + 16] = 0x31; // "1"
  return b;
}

test("the client rule: fresh, duplicate, gap, data before an ack, reset, unknown binary version, reconnect", { timeout: 30000 }, async () => {
  const { srv, c, rec } = await setup();
  const sub = c.subscribe("app", ["k", "f"], {
    onData: (p) => rec.data.push([p.key, p.seq, p.epoch, p.data]),
    onReset: (r) => rec.resets.push(r),
    onAck: (a) => rec.acks.push(a),
  });
  const conn = await srv.accept();
  const s1 = await conn.nextOp("subscribe");
  assert.deepEqual(s1, { op: "subscribe", id: s1.id, app: "app", keys: ["k", "f"], format: "json" });
  conn.send({ op: "ack", id: s1.id, positions: { k: { seq: 5, epoch: "E" }, f: { seq: 0, epoch: "G" } } });
  const ack = await sub.ready;
  assert.deepEqual(ack.positions, { k: { seq: 5, epoch: "E" }, f: { seq: 0, epoch: "G" } });

  conn.send(data("k", 5)); // 1. fresh: the latest value the ack announced
  conn.send(data("k", 6));
  conn.send(data("k", 6)); // a duplicate: dropped, reported
  conn.send(data("k", 9)); // a gap: reported, and k resumes from (6, E)
  const s2 = await conn.nextOp("subscribe");
  assert.deepEqual(s2.keys, ["k"]);
  assert.deepEqual(s2.since, { k: { seq: 6, epoch: "E" } });
  conn.send(data("k", 7)); // before the ack: replayed after it, so dropped now
  conn.send({ op: "ack", id: s2.id, recovered: true, positions: { k: { seq: 9, epoch: "E" } } });
  for (const n of [7, 8, 9]) conn.send(data("k", n));
  // 2. a reset sets the position
  conn.send({ op: "reset", app: "app", key: "k", seq: 20, epoch: "F", reason: "gap" });
  conn.send(data("k", 21));
  // a binary frame of an unknown version is rejected
  conn.sendBinary(binaryFrame(2, "k", 22));
  await waitFor("seq 21", () => rec.data.some((d) => d[1] === 21));
  await waitFor("the binary frame's error", () => rec.errors.some((e) => /unknown version 2/.test(e.message)));

  assert.deepEqual(rec.data, [
    ["k", 5, "E", 5], ["k", 6, "E", 6], ["k", 7, "E", 7], ["k", 8, "E", 8], ["k", 9, "E", 9], ["k", 21, "F", 21],
  ]);
  assert.deepEqual(rec.protocol.map((p) => [p.seq, p.expected]), [[6, 7], [9, 7]]);
  assert.deepEqual(rec.resets, [{ app: "app", key: "k", seq: 20, epoch: "F", reason: "gap" }]);
  assert.deepEqual(c.positions("app"), { k: { seq: 21, epoch: "F" }, f: { seq: 0, epoch: "G" } });

  // 4. reconnect: k resumes from its full position; f, still fresh, asks
  // for the latest value again.
  conn.close(1011, "internal error");
  const conn2 = await srv.accept();
  const s3 = await conn2.nextOp("subscribe");
  assert.deepEqual([...s3.keys].sort(), ["f", "k"]);
  assert.deepEqual(s3.since, { k: { seq: 21, epoch: "F" } });
  conn2.send({ op: "ack", id: s3.id, recovered: true, positions: { k: { seq: 21, epoch: "F" }, f: { seq: 1, epoch: "G" } } });
  conn2.send(data("f", 1));
  conn2.send(data("k", 22));
  await waitFor("the values after the reconnect", () => rec.data.length === 8);
  assert.deepEqual(rec.data.slice(6), [["f", 1, "G", 1], ["k", 22, "F", 22]]);
  assert.equal(rec.acks.at(-1).resumed, true);
  assert.equal(rec.acks.at(-1).recovered, true);
  assert.deepEqual(rec.states.map((s) => s.state), ["connecting", "open", "reconnecting", "open"]);
  assert.equal(rec.states[2].code, 1011);
});

test("since: the client's position, with the epoch of the ack (docs/PROTOCOL.md, The client rule, 1)", { timeout: 30000 }, async () => {
  const { srv, c, rec } = await setup();
  const sub = c.subscribe("app", ["k"], {
    since: { k: { seq: 3, epoch: "E" } },
    onData: (p) => rec.data.push([p.seq, p.epoch]),
  });
  const conn = await srv.accept();
  const s = await conn.nextOp("subscribe");
  assert.deepEqual(s.since, { k: { seq: 3, epoch: "E" } });
  conn.send({ op: "ack", id: s.id, recovered: true, positions: { k: { seq: 5, epoch: "E2" } } });
  assert.equal((await sub.ready).recovered, true);
  conn.send(data("k", 4));
  conn.send(data("k", 5));
  await waitFor("two values", () => rec.data.length === 2);
  assert.deepEqual(rec.data, [[4, "E2"], [5, "E2"]]);
});

test("an error reply: ready rejects and the keys are not subscribed; unavailable is retried", { timeout: 30000 }, async () => {
  const { srv, c, rec } = await setup();
  const bad = c.subscribe("app", ["k"]);
  const conn = await srv.accept();
  const s1 = await conn.nextOp("subscribe");
  conn.send({ op: "error", id: s1.id, code: "forbidden", message: "app \"app\" is not allowed by the token" });
  await assert.rejects(bad.ready, (e) => e.code === "forbidden" && e.id === s1.id);
  assert.deepEqual(c.positions("app"), {});

  const retried = c.subscribe("app", ["r"]);
  const s2 = await conn.nextOp("subscribe");
  conn.send({ op: "error", id: s2.id, code: "unavailable", message: "store unreachable" });
  const s3 = await conn.nextOp("subscribe");
  assert.deepEqual(s3.keys, ["r"]);
  conn.send({ op: "ack", id: s3.id, positions: { r: { seq: 0, epoch: "E" } } });
  assert.deepEqual((await retried.ready).positions, { r: { seq: 0, epoch: "E" } });
  assert.deepEqual(rec.errors.map((e) => e.code), ["forbidden", "unavailable"]);
});

for (const [code, reconnects] of [
  [1000, true], [1001, true], [1011, true], [4008, true],
  [1002, false], [1007, false], [1008, false], [1009, false], [4001, false], [4003, false],
]) {
  test(`close ${code}: ${reconnects ? "reconnect" : "closed, no reconnect"}`, { timeout: 30000 }, async () => {
    const { srv, c, rec } = await setup({ token: "t1" });
    c.subscribe("app", ["k"]);
    const conn = await srv.accept();
    const s = await conn.nextOp("subscribe");
    conn.send({ op: "ack", id: s.id, positions: { k: { seq: 0, epoch: "E" } } });
    await waitFor("open", () => c.state === "open");
    conn.close(code, "scripted");
    if (reconnects) {
      const again = await srv.accept();
      const s2 = await again.nextOp("subscribe");
      assert.deepEqual(s2.keys, ["k"]);
      assert.equal(rec.states.find((e) => e.state === "reconnecting").code, code);
    } else {
      await waitFor("closed", () => c.state === "closed");
      // With a 10 ms backoff a loop would show within this wait.
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(srv.unaccepted, 0);
      assert.deepEqual(rec.states.map((e) => [e.state, e.code]), [["connecting", undefined], ["open", undefined], ["closed", code]]);
    }
  });
}

test("close 4003 with getToken: reconnect with a new token", { timeout: 30000 }, async () => {
  let n = 0;
  const { srv, c } = await setup({ getToken: async () => `tok${++n}` });
  c.subscribe("app", ["k"]);
  const conn = await srv.accept();
  assert.match(conn.url, /[?&]token=tok1(&|$)/);
  const s = await conn.nextOp("subscribe");
  conn.send({ op: "ack", id: s.id, positions: { k: { seq: 0, epoch: "E" } } });
  await waitFor("open", () => c.state === "open");
  conn.close(4003, "token expired");
  const again = await srv.accept();
  assert.match(again.url, /[?&]token=tok2(&|$)/);
  await again.nextOp("subscribe");
});

test("an old server (ack without positions): the first value sets the position, resume uses the bare form", { timeout: 30000 }, async () => {
  const { srv, c, rec } = await setup();
  c.subscribe("app", ["k"], { onData: (p) => rec.data.push(p.seq) });
  const conn = await srv.accept();
  const s = await conn.nextOp("subscribe");
  conn.send({ op: "ack", id: s.id });
  conn.send(data("k", 41));
  conn.send(data("k", 42));
  await waitFor("two values", () => rec.data.length === 2);
  conn.close(1001, "going away");
  const again = await srv.accept();
  const s2 = await again.nextOp("subscribe");
  assert.deepEqual(s2.since, { k: 42 });
  assert.deepEqual(rec.protocol, []);
});
