// Delivery modes (docs/PROTOCOL.md, Delivery modes) in the JS client,
// against the scripted server: the subscribe's mode and max_rate, the
// client rule of a latest key, the resume, and maxBandwidth in the URL.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { Client, WspushError } from "../wspush.js";
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
  const rec = { data: [], resets: [], protocol: [], errors: [], acks: [] };
  c.on("protocol", (p) => rec.protocol.push(p));
  c.on("error", (e) => rec.errors.push(e));
  return { srv, c, rec };
}

const data = (key, seq) => ({ op: "data", app: "app", key, seq, ts: 1000 + seq, data: seq });

test("latest: the subscribe carries mode and max_rate; jumps are accepted, old seqs ignored, no resume", { timeout: 30000 }, async () => {
  const { srv, c, rec } = await setup();
  const sub = c.subscribe("app", ["k"], {
    mode: "latest", maxRate: 2,
    onData: (p) => rec.data.push([p.key, p.seq, p.epoch]),
    onReset: (r) => rec.resets.push(r),
  });
  const conn = await srv.accept();
  const s1 = await conn.nextOp("subscribe");
  assert.deepEqual(s1, { op: "subscribe", id: s1.id, app: "app", keys: ["k"], format: "json", mode: "latest", max_rate: 2 });
  conn.send({ op: "ack", id: s1.id, mode: "latest", max_rate: 2, positions: { k: { seq: 5, epoch: "E" } } });
  await sub.ready;
  conn.send(data("k", 3)); // below the announced position: ignored
  conn.send(data("k", 5)); // fresh: the latest value the ack announced
  conn.send(data("k", 9)); // a jump: 6..8 skipped on purpose
  conn.send(data("k", 7)); // older: ignored
  conn.send(data("k", 9)); // the same: ignored
  conn.send(data("k", 10));
  conn.send(data("k", 400)); // a long jump
  conn.send({ op: "reset", app: "app", key: "k", seq: 2, epoch: "F", reason: "epoch" });
  conn.send(data("k", 2)); // at the reset's position: ignored
  conn.send(data("k", 6));
  await waitFor("seq 6 of epoch F", () => rec.data.some((d) => d[2] === "F"));
  assert.deepEqual(rec.data, [["k", 5, "E"], ["k", 9, "E"], ["k", 10, "E"], ["k", 400, "E"], ["k", 6, "F"]]);
  assert.equal(rec.resets.length, 1);
  assert.deepEqual(rec.protocol, []);
  assert.deepEqual(rec.errors, []);
  assert.deepEqual(c.positions("app"), { k: { seq: 6, epoch: "F" } });

  // Nothing was sent on a jump: the next command is the subscribe below,
  // a stream one, byte for byte as before modes.
  c.subscribe("app", ["s"]);
  const s2 = await conn.nextOp("subscribe");
  assert.deepEqual(s2, { op: "subscribe", id: s2.id, app: "app", keys: ["s"], format: "json" });
  assert.equal(srv.unaccepted, 0);
});

test("latest: a reconnect resumes with mode, max_rate and since; stream keys without them", { timeout: 30000 }, async () => {
  const { srv, c, rec } = await setup();
  c.subscribe("app", ["k"], { mode: "latest", maxRate: 0.5, format: "binary", onData: (p) => rec.data.push(p.seq) });
  c.subscribe("app", ["s"], { onData: (p) => rec.data.push(p.seq) });
  const conn = await srv.accept();
  const first = [await conn.nextOp("subscribe"), await conn.nextOp("subscribe")];
  const byKey = Object.fromEntries(first.map((s) => [s.keys[0], s]));
  assert.deepEqual(byKey.k, { op: "subscribe", id: byKey.k.id, app: "app", keys: ["k"], format: "binary", mode: "latest", max_rate: 0.5 });
  assert.deepEqual(byKey.s, { op: "subscribe", id: byKey.s.id, app: "app", keys: ["s"], format: "json" });
  conn.send({ op: "ack", id: byKey.k.id, mode: "latest", max_rate: 0.5, positions: { k: { seq: 1, epoch: "E" } } });
  conn.send({ op: "ack", id: byKey.s.id, positions: { s: { seq: 1, epoch: "E" } } });
  conn.send(data("k", 30));
  conn.send(data("s", 2));
  await waitFor("two values", () => rec.data.length === 2);
  conn.close(1001, "going away");

  const conn2 = await srv.accept();
  const again = [await conn2.nextOp("subscribe"), await conn2.nextOp("subscribe")];
  const byKey2 = Object.fromEntries(again.map((s) => [s.keys[0], s]));
  assert.deepEqual(byKey2.k, {
    op: "subscribe", id: byKey2.k.id, app: "app", keys: ["k"], format: "binary",
    since: { k: { seq: 30, epoch: "E" } }, mode: "latest", max_rate: 0.5,
  });
  assert.deepEqual(byKey2.s, { op: "subscribe", id: byKey2.s.id, app: "app", keys: ["s"], format: "json", since: { s: { seq: 2, epoch: "E" } } });
});

test("latest: keys of different modes go in different commands; subscribing a key again changes its mode", { timeout: 30000 }, async () => {
  const { srv, c } = await setup();
  const conn = await srv.accept();
  const ping = await conn.next();
  assert.equal(ping.op, "ping");
  conn.send({ op: "pong", id: ping.id });
  await waitFor("open", () => c.state === "open");
  // Same tick, live: a key joins the queued command only of its own kind.
  c.subscribe("app", ["a", "b"], { mode: "latest" });
  c.subscribe("app", ["c"], { mode: "latest", maxRate: 3 });
  c.subscribe("app", ["d"], { mode: "latest" });
  c.subscribe("app", ["e"]);
  const cmds = [];
  for (let i = 0; i < 4; i++) cmds.push(await conn.nextOp("subscribe"));
  assert.deepEqual(cmds.map((s) => [s.keys, s.mode, s.max_rate]), [
    [["a", "b"], "latest", undefined], [["c"], "latest", 3], [["d"], "latest", undefined], [["e"], undefined, undefined],
  ]);
  for (const s of cmds) {
    conn.send({ op: "ack", id: s.id, positions: Object.fromEntries(s.keys.map((k) => [k, { seq: 4, epoch: "E" }])) });
  }
  // Back to stream: the resubscribe has since and no mode.
  c.subscribe("app", ["c"]);
  const s5 = await conn.nextOp("subscribe");
  assert.deepEqual(s5, { op: "subscribe", id: s5.id, app: "app", keys: ["c"], format: "json" });
  conn.send({ op: "ack", id: s5.id, positions: { c: { seq: 4, epoch: "E" } } });
  conn.send(data("c", 4));
  await waitFor("c's position", () => c.positions("app").c?.seq === 4);
  conn.close(1011, "scripted");
  // The reconnect groups the keys by kind: a, b and d in one command, the
  // stream keys in another.
  const conn2 = await srv.accept();
  const again = [await conn2.nextOp("subscribe"), await conn2.nextOp("subscribe")];
  assert.deepEqual(again.map((s) => [s.keys, s.mode, s.max_rate, s.since]), [
    [["a", "b", "d"], "latest", undefined, undefined], [["c", "e"], undefined, undefined, { c: { seq: 4, epoch: "E" } }],
  ]);
});

test("latest: bad mode and maxRate are refused by subscribe", { timeout: 30000 }, async () => {
  const { c } = await setup({ autoConnect: false });
  const bad = [
    { mode: "newest" },
    { maxRate: 2 },
    { mode: "stream", maxRate: 2 },
    { mode: "latest", maxRate: -1 },
    { mode: "latest", maxRate: 1000.5 },
    { mode: "latest", maxRate: NaN },
    { mode: "latest", maxRate: "2" },
  ];
  for (const o of bad) {
    assert.throws(() => c.subscribe("app", ["k"], o), (e) => e instanceof WspushError && e.code === "bad_request", JSON.stringify(o));
  }
  assert.deepEqual(c.positions("app"), {});
  for (const o of [{ mode: "latest", maxRate: 1000 }, { mode: "latest", maxRate: 0.001 }, { mode: "stream" }, { mode: "latest" }]) {
    c.subscribe("app", ["k"], o);
  }
});

test("maxBandwidth: the max_bandwidth query parameter, with the token; bad values throw", { timeout: 30000 }, async () => {
  const { srv } = await setup({ maxBandwidth: 65536, token: "t1" });
  const conn = await srv.accept();
  const u = new URL(conn.url, "http://x");
  assert.equal(u.pathname, "/ws");
  assert.equal(u.searchParams.get("max_bandwidth"), "65536");
  assert.equal(u.searchParams.get("token"), "t1");

  const { srv: srv2 } = await setup({ maxBandwidth: 1024 });
  assert.match((await srv2.accept()).url, /^\/ws\?max_bandwidth=1024$/);
  const { srv: srv3 } = await setup();
  assert.equal((await srv3.accept()).url, "/ws");

  for (const bw of [1023, 1e9 + 1, 65536.5, "65536", -1]) {
    assert.throws(() => new Client("ws://127.0.0.1:1/ws", { WebSocket, maxBandwidth: bw, autoConnect: false }),
      (e) => e instanceof WspushError && e.code === "client", String(bw));
  }
});
