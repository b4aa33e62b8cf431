// The JS client across a server crash (SIGKILL, then a restart on the same
// port): with a Redis store it resumes every value exactly once
// (recovered:true); with the embedded store the new process has new epochs,
// and the client surfaces a reset and goes on (docs/PROTOCOL.md, The client
// rule; Example: resuming across a node crash).

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { Client } from "../wspush.js";
import { startServer, publish, waitFor, redisAvailable, redisDeletePrefix, stateRecorder, WebSocket } from "./server.mjs";

const clients = [];
const servers = [];
after(async () => {
  for (const c of clients) c.close();
  await Promise.all(servers.map((s) => s.kill()));
});

async function server(args, opts) {
  const s = await startServer(args, opts);
  servers.push(s);
  return s;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// publishAll publishes 1..n to app/key one after the other (each request
// after the previous answer: docs/PROTOCOL.md, Delivery guarantees, 1),
// retrying through the outage. Every item has an idempotency id, so that a
// retry of a request the dead server had sequenced is not a second value.
async function publishAll(target, app, key, n, { every = 15, deadline }) {
  for (let i = 1; i <= n; i++) {
    for (;;) {
      try {
        await publish(target(), [{ app, key, id: `v${i}`, data: i }]);
        break;
      } catch (err) {
        if (Date.now() > deadline) throw new Error(`publish ${i}: still failing: ${err.message}`);
        await sleep(50);
      }
    }
    await sleep(every);
  }
}

test("Redis store: SIGKILL mid-stream and restart: every value exactly once, recovered", { timeout: 60000 }, async (t) => {
  if (!(await redisAvailable())) {
    if (process.env.WSPUSH_REQUIRE_SERVICES === "1") throw new Error("Redis is not reachable on 127.0.0.1:6379");
    t.skip("Redis is not reachable on 127.0.0.1:6379");
    return;
  }
  const prefix = `jsclient-test-${process.pid}-${Date.now()}`;
  const args = (node) => ["--redis-url", "redis://127.0.0.1:6379", "--redis-prefix", prefix, "--node-id", node];
  let srv = await server(args("js-a"));
  const addr = srv.addr;

  const c = new Client(srv.url, { WebSocket, minBackoff: 50, maxBackoff: 500 });
  clients.push(c);
  // Stop the client and the node before deleting their keys, so that
  // nothing writes them again.
  t.after(async () => {
    c.close();
    await srv.kill();
    await redisDeletePrefix(prefix);
  });
  const states = stateRecorder(c);
  const got = [];
  const acks = [];
  const resets = [];
  const errors = [];
  c.on("error", (e) => errors.push(e));
  const first = await c.subscribe("jsresume", ["k"], {
    onData: (p) => got.push(p),
    onAck: (a) => acks.push(a),
    onReset: (r) => resets.push(r),
  }).ready;
  const epoch = first.positions.k.epoch;

  const n = 80;
  const deadline = Date.now() + 40000;
  const publishing = publishAll(() => srv, "jsresume", "k", n, { deadline });
  await waitFor("values before the crash", () => got.length >= 20);
  await srv.kill("SIGKILL");
  const atCrash = got.length;
  await waitFor("the client to notice", () => c.state === "reconnecting");
  await sleep(300); // the only node is down: the publisher retries meanwhile
  srv = await server(args("js-b"), { addr });
  await publishing;
  await waitFor("every value", () => got.length >= n, 20000);
  await sleep(200); // a duplicate would arrive now

  assert.ok(atCrash < n, "the crash came mid-stream");
  assert.deepEqual(got.map((p) => p.data), Array.from({ length: n }, (_, i) => i + 1));
  assert.deepEqual(got.map((p) => p.seq), Array.from({ length: n }, (_, i) => i + 1));
  assert.ok(got.every((p) => p.epoch === epoch));
  assert.deepEqual(resets, []);
  const resumed = acks.filter((a) => a.resumed);
  assert.ok(resumed.length >= 1, "a resubscribe after the restart");
  assert.ok(resumed.every((a) => a.recovered === true), JSON.stringify(resumed));
  assert.deepEqual(c.positions("jsresume"), { k: { seq: n, epoch } });
  assert.ok(states.some((s) => s.state === "reconnecting"));
  assert.equal(c.state, "open");
  assert.deepEqual(errors, []);
});

test("embedded store: SIGKILL and restart: reset (epoch), then the new epoch's values", { timeout: 60000 }, async () => {
  let srv = await server([]);
  const addr = srv.addr;
  const c = new Client(srv.url, { WebSocket, minBackoff: 50, maxBackoff: 500 });
  clients.push(c);
  const got = [];
  const acks = [];
  const resets = [];
  const errors = [];
  c.on("error", (e) => errors.push(e));
  const first = await c.subscribe("jsembedded", ["k"], {
    format: "binary",
    onData: (p) => got.push(p),
    onAck: (a) => acks.push(a),
    onReset: (r) => resets.push(r),
  }).ready;
  const oldEpoch = first.positions.k.epoch;
  await publish(srv, [1, 2, 3, 4, 5].map((i) => ({ app: "jsembedded", key: "k", data: i })));
  await waitFor("the first values", () => got.length === 5);

  await srv.kill("SIGKILL");
  await waitFor("the client to notice", () => c.state === "reconnecting");
  srv = await server([], { addr });
  await waitFor("the resubscribe", () => acks.some((a) => a.resumed));
  await waitFor("the reset", () => resets.length === 1);
  const ack = acks.find((a) => a.resumed);
  assert.equal(ack.recovered, false);
  const reset = resets[0];
  assert.equal(reset.reason, "epoch");
  assert.notEqual(reset.epoch, oldEpoch);
  assert.equal(reset.seq, 0);

  await publish(srv, [10, 20, 30].map((d) => ({ app: "jsembedded", key: "k", data: d })));
  await waitFor("the new epoch's values", () => got.length === 8);
  assert.deepEqual(got.slice(5).map((p) => [p.seq, p.data, p.epoch]),
    [[1, 10, reset.epoch], [2, 20, reset.epoch], [3, 30, reset.epoch]]);
  assert.deepEqual(c.positions("jsembedded"), { k: { seq: 3, epoch: reset.epoch } });
  assert.deepEqual(errors, []);
});

test("a frozen server (SIGSTOP): no pong, the client gives the connection up and resumes", { timeout: 60000 }, async () => {
  const srv = await server([]);
  const c = new Client(srv.url, { WebSocket, minBackoff: 50, maxBackoff: 300, pingInterval: 300, replyTimeout: 500 });
  clients.push(c);
  const states = stateRecorder(c);
  const got = [];
  const acks = [];
  await c.subscribe("jsfrozen", ["k"], { onData: (p) => got.push(p.data), onAck: (a) => acks.push(a) }).ready;
  await publish(srv, [{ app: "jsfrozen", key: "k", data: 1 }]);
  await waitFor("the first value", () => got.length === 1);

  srv.signal("SIGSTOP");
  try {
    await waitFor("the client to give up the silent connection", () => c.state === "reconnecting", 5000);
    assert.match(states.find((s) => s.state === "reconnecting").reason, /no reply/);
  } finally {
    srv.signal("SIGCONT");
  }
  await waitFor("open again", () => c.state === "open" && acks.length >= 2, 10000);
  assert.ok(acks.slice(1).every((a) => a.resumed && a.recovered === true), JSON.stringify(acks));
  await publish(srv, [{ app: "jsfrozen", key: "k", data: 2 }]);
  await waitFor("the next value", () => got.length === 2);
  assert.deepEqual(got, [1, 2]);
});
