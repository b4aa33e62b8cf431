// Helpers of the JS client's tests: a real wspush binary on a loopback port,
// publishing over its HTTP API, Redis clean-up, and bounded waits.
//
// The binary is WSPUSH_BIN (scripts/test.sh builds it); without it, the
// helpers build ./cmd/wspush into a temporary directory once.

import { spawn, execFile } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createConnection } from "node:net";
import { promisify } from "node:util";
import { TestWebSocket } from "./websocket.mjs";

/**
 * WebSocket is the constructor the tests give the client: the global one
 * (Node 22, or Node 20 with --experimental-websocket), else TestWebSocket
 * (Node 18, 20). WSPUSH_TEST_WEBSOCKET=test forces TestWebSocket.
 */
export const WebSocket =
  process.env.WSPUSH_TEST_WEBSOCKET === "test" || typeof globalThis.WebSocket !== "function"
    ? TestWebSocket
    : globalThis.WebSocket;

const run = promisify(execFile);
const repoRoot = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "..");

let built;

// wspushBin returns the path of the wspush binary to test.
export async function wspushBin() {
  if (process.env.WSPUSH_BIN) return process.env.WSPUSH_BIN;
  if (!built) {
    built = (async () => {
      const dir = mkdtempSync(join(tmpdir(), "wspush-jstest-"));
      process.on("exit", () => rmSync(dir, { recursive: true, force: true }));
      const bin = join(dir, "wspush");
      await run("go", ["build", "-o", bin, "./cmd/wspush"], { cwd: repoRoot, timeout: 300000 });
      return bin;
    })();
  }
  return built;
}

const children = new Set();
process.on("exit", () => {
  for (const c of children) c.kill("SIGKILL");
});

/**
 * startServer runs wspush with args on addr (default 127.0.0.1:0) and
 * resolves once it logs "wspush listening", with its address.
 */
export async function startServer(args = [], { addr = "127.0.0.1:0", timeout = 20000 } = {}) {
  const bin = await wspushBin();
  const proc = spawn(bin, ["--addr", addr, "--log-level", "info", ...args], { stdio: ["ignore", "pipe", "pipe"] });
  children.add(proc);
  const exited = new Promise((resolve) => proc.once("exit", (code, signal) => {
    children.delete(proc);
    resolve({ code, signal });
  }));
  let log = "";
  const listening = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`wspush did not start in ${timeout} ms:\n${log}`)), timeout);
    const onData = (chunk) => {
      log += chunk;
      if (log.length > 1 << 20) log = log.slice(-(1 << 19));
      const m = /msg="wspush listening" addr=(\S+)/.exec(log);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    };
    proc.stdout.setEncoding("utf8").on("data", onData);
    proc.stderr.setEncoding("utf8").on("data", onData);
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`wspush exited (${code ?? signal}) before listening:\n${log}`));
    });
  });
  const address = await listening;
  return {
    addr: address,
    port: Number(address.slice(address.lastIndexOf(":") + 1)),
    url: `ws://${address}/ws`,
    http: `http://${address}`,
    log: () => log,
    exited,
    // signal sends sig (SIGSTOP, SIGCONT) without waiting.
    signal(sig) {
      proc.kill(sig);
    },
    // kill sends signal and waits for the process to end.
    async kill(signal = "SIGKILL") {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      return exited;
    },
  };
}

/** publish POSTs items to /api/publish and returns the seqs. */
export async function publish(srv, items) {
  const body = Array.isArray(items) ? { items } : items;
  const res = await fetch(`${srv.http}/api/publish`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(5000),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`publish: HTTP ${res.status}: ${text}`);
  return JSON.parse(text).seqs;
}

/** waitFor polls cond every 10 ms until it is truthy, or fails after timeout ms. */
export async function waitFor(what, cond, timeout = 10000) {
  const end = Date.now() + timeout;
  for (;;) {
    const v = cond();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** redisAvailable reports whether Redis answers on 127.0.0.1:6379. */
export function redisAvailable() {
  return new Promise((resolve) => {
    const s = createConnection({ host: "127.0.0.1", port: 6379 });
    const done = (ok) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(1000, () => done(false));
    s.once("error", () => done(false));
    s.once("connect", () => s.write("PING\r\n"));
    s.once("data", (d) => done(String(d).startsWith("+PONG")));
  });
}

/** redisDeletePrefix deletes every Redis key under prefix (the test's own). */
export async function redisDeletePrefix(prefix) {
  const { stdout } = await run("redis-cli", ["-h", "127.0.0.1", "-p", "6379", "--scan", "--pattern", `${prefix}:*`], { timeout: 10000 });
  const keys = stdout.split("\n").filter(Boolean);
  for (let i = 0; i < keys.length; i += 500) {
    await run("redis-cli", ["-h", "127.0.0.1", "-p", "6379", "DEL", ...keys.slice(i, i + 500)], { timeout: 10000 });
  }
}

/** hs256 signs a JWT with secret (the server's --jwt-secret). */
export async function hs256(claims, secret) {
  const { createHmac } = await import("node:crypto");
  const enc = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const head = enc({ alg: "HS256", typ: "JWT" }) + "." + enc(claims);
  return head + "." + createHmac("sha256", secret).update(head).digest("base64url");
}

/** recorder returns a client "state" listener that keeps the states in order. */
export function stateRecorder(client) {
  const states = [];
  client.on("state", (e) => states.push(e));
  return states;
}
