// A scripted WebSocket server for the client-rule tests: each connection
// hands its commands to the test, which answers with exactly the frames it
// wants, including ones a correct wspush never sends (a duplicate, a gap,
// an unknown binary version). Test code: no extensions, no fragmentation.

import { createServer } from "node:http";
import { createHash } from "node:crypto";

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

class Conn {
  #socket;
  #buf = Buffer.alloc(0);
  #waiters = [];
  commands = [];
  closed;

  constructor(socket) {
    this.#socket = socket;
    this.closed = new Promise((resolve) => socket.once("close", resolve));
    socket.on("data", (d) => this.#feed(d));
    socket.on("error", () => {});
  }

  /** next resolves with the next command (parsed JSON), or rejects after timeout ms. */
  next(timeout = 5000) {
    if (this.commands.length > 0) return Promise.resolve(this.commands.shift());
    return new Promise((resolve, reject) => {
      const w = { resolve, timer: setTimeout(() => {
        this.#waiters.splice(this.#waiters.indexOf(w), 1);
        reject(new Error(`no command within ${timeout} ms`));
      }, timeout) };
      this.#waiters.push(w);
    });
  }

  /** next command with this op, skipping others (pings). */
  async nextOp(op, timeout = 5000) {
    for (;;) {
      const c = await this.next(timeout);
      if (c.op === op) return c;
      if (c.op === "ping") this.send({ op: "pong", id: c.id });
    }
  }

  send(msg) {
    this.#frame(1, Buffer.from(JSON.stringify(msg)));
  }

  sendBinary(bytes) {
    this.#frame(2, Buffer.from(bytes));
  }

  close(code, reason = "") {
    const r = Buffer.from(reason);
    const p = Buffer.alloc(2 + r.length);
    p.writeUInt16BE(code, 0);
    r.copy(p, 2);
    this.#frame(8, p);
    this.#socket.end();
  }

  #frame(opcode, payload) {
    let header;
    if (payload.length < 126) header = Buffer.from([0x80 | opcode, payload.length]);
    else {
      header = Buffer.alloc(4);
      header[0] = 0x80 | opcode;
      header[1] = 126;
      header.writeUInt16BE(payload.length, 2);
    }
    this.#socket.write(Buffer.concat([header, payload]));
  }

  #feed(d) {
    this.#buf = Buffer.concat([this.#buf, d]);
    for (;;) {
      const b = this.#buf;
      if (b.length < 2) return;
      const opcode = b[0] & 0x0f;
      let len = b[1] & 0x7f;
      let off = 2;
      if (len === 126) {
        if (b.length < 4) return;
        len = b.readUInt16BE(2);
        off = 4;
      } else if (len === 127) {
        if (b.length < 10) return;
        len = Number(b.readBigUInt64BE(2));
        off = 10;
      }
      if (b.length < off + 4 + len) return;
      const mask = b.subarray(off, off + 4);
      const payload = Buffer.alloc(len);
      for (let i = 0; i < len; i++) payload[i] = b[off + 4 + i] ^ mask[i & 3];
      this.#buf = b.subarray(off + 4 + len);
      if (opcode === 8) {
        this.#socket.end();
        return;
      }
      if (opcode !== 1) continue;
      const cmd = JSON.parse(payload.toString("utf8"));
      const w = this.#waiters.shift();
      if (w) {
        clearTimeout(w.timer);
        w.resolve(cmd);
      } else this.commands.push(cmd);
    }
  }
}

/** scriptedServer listens on 127.0.0.1:0; conns() yields each new connection. */
export async function scriptedServer() {
  const pending = [];
  const waiters = [];
  const sockets = new Set();
  const server = createServer((req, res) => res.writeHead(404).end());
  server.on("upgrade", (req, socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
    const accept = createHash("sha1").update(req.headers["sec-websocket-key"] + GUID).digest("base64");
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
    const c = new Conn(socket);
    c.url = req.url;
    const w = waiters.shift();
    if (w) {
      clearTimeout(w.timer);
      w.resolve(c);
    } else pending.push(c);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  return {
    url: `ws://127.0.0.1:${port}/ws`,
    /** accept resolves with the next connection. */
    accept(timeout = 5000) {
      if (pending.length > 0) return Promise.resolve(pending.shift());
      return new Promise((resolve, reject) => {
        const w = { resolve, timer: setTimeout(() => reject(new Error(`no connection within ${timeout} ms`)), timeout) };
        waiters.push(w);
      });
    },
    /** connections not yet accepted by the test. */
    get unaccepted() {
      return pending.length;
    },
    close() {
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}
