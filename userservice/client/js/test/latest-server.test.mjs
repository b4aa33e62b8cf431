// Delivery modes (docs/PROTOCOL.md, Delivery modes) of wspush.js against a
// real wspush binary: a latest key with maxRate on a connection with
// maxBandwidth.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { Client } from "../wspush.js";
import { startServer, publish, waitFor, WebSocket } from "./server.mjs";

const clients = [];
const servers = [];
after(async () => {
  for (const c of clients) c.close();
  await Promise.all(servers.map((s) => s.kill()));
});

test("latest with maxRate 2 on a key published at 50/s: at most 2 values a second, ending with the last", { timeout: 60000 }, async () => {
  const srv = await startServer();
  servers.push(srv);
  await publish(srv, [{ app: "jsmodes", key: "hot", data: 0 }, { app: "jsmodes", key: "all", data: 0 }]);
  const c = new Client(srv.url, { WebSocket, maxBandwidth: 65536 });
  clients.push(c);
  const hot = [];
  const all = [];
  const protocol = [];
  c.on("protocol", (p) => protocol.push(p));
  const ack = await c.subscribe("jsmodes", ["hot"], { mode: "latest", maxRate: 2, onData: (p) => hot.push(p.seq) }).ready;
  assert.equal(ack.positions.hot.seq, 1);
  await c.subscribe("jsmodes", ["all"], { onData: (p) => all.push(p.seq) }).ready;
  const start = Date.now();
  let last = 0;
  let lastAll = 0;
  for (let i = 1; i <= 100; i++) {
    [last] = await publish(srv, [{ app: "jsmodes", key: "hot", data: { i } }]);
    if (i % 10 === 0) [lastAll] = await publish(srv, [{ app: "jsmodes", key: "all", data: { i } }]);
    await new Promise((r) => setTimeout(r, 20));
  }
  await waitFor("the last value", () => hot.at(-1) === last, 20000);
  const elapsed = (Date.now() - start) / 1000;
  for (let i = 1; i < hot.length; i++) assert.ok(hot[i] > hot[i - 1], `seqs ${hot}`);
  assert.ok(hot.length <= 2 + Math.floor(2 * elapsed), `${hot.length} values in ${elapsed} s at maxRate 2: ${hot}`);
  await waitFor("every value of the stream key", () => all.at(-1) === lastAll);
  assert.deepEqual(all, Array.from({ length: lastAll }, (_, i) => i + 1));
  assert.deepEqual(protocol, []);
  assert.equal(c.positions("jsmodes").hot.seq, last);
});
