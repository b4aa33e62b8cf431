// A small RFC 6455 client with the browser's WebSocket interface (the part
// wspush.js uses), for running the tests on Node 18 and 20 without a flag:
// they have no global WebSocket, and the tests take no dependencies. It is
// test code, not a general-purpose client: ws:// only, no extensions.

import { request } from "node:http";
import { randomBytes, createHash } from "node:crypto";

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

export class TestWebSocket {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSING = 2;
  static CLOSED = 3;

  readyState = 0;
  binaryType = "blob";
  onopen = null;
  onmessage = null;
  onerror = null;
  onclose = null;

  #socket = null;
  #buf = Buffer.alloc(0);
  #fragments = [];
  #fragOpcode = 0;
  #closeCode = 1006;
  #closeReason = "";
  #closeSent = false;
  #closedFired = false;

  constructor(url) {
    const u = new URL(url);
    if (u.protocol !== "ws:") throw new SyntaxError(`TestWebSocket: ws:// only, not ${u.protocol}`);
    const key = randomBytes(16).toString("base64");
    const req = request({
      host: u.hostname.replace(/^\[|\]$/g, ""),
      port: u.port || 80,
      path: u.pathname + u.search,
      headers: { Connection: "Upgrade", Upgrade: "websocket", "Sec-WebSocket-Key": key, "Sec-WebSocket-Version": "13" },
    });
    req.setTimeout(10000, () => req.destroy(new Error("handshake timeout")));
    req.on("upgrade", (res, socket, head) => {
      const want = createHash("sha1").update(key + GUID).digest("base64");
      if (res.headers["sec-websocket-accept"] !== want) {
        socket.destroy();
        this.#fail();
        return;
      }
      req.setTimeout(0);
      this.#socket = socket;
      socket.setNoDelay(true);
      socket.on("data", (d) => this.#feed(d));
      socket.on("close", () => this.#fireClose());
      socket.on("error", () => {});
      this.readyState = 1;
      this.onopen?.({ type: "open" });
      if (head.length > 0) this.#feed(head);
    });
    req.on("response", (res) => {
      res.resume();
      this.#fail();
    });
    req.on("error", () => this.#fail());
    req.end();
  }

  send(data) {
    // As in browsers: an error before the handshake, nothing once closing.
    if (this.readyState === 0) throw new Error("TestWebSocket: not open yet");
    if (this.readyState !== 1) return;
    if (typeof data === "string") this.#write(1, Buffer.from(data, "utf8"));
    else this.#write(2, Buffer.from(data instanceof ArrayBuffer ? new Uint8Array(data) : data));
  }

  close(code = 1000, reason = "") {
    if (this.readyState >= 2) return;
    if (this.readyState === 0) {
      this.readyState = 3;
      return;
    }
    this.readyState = 2;
    this.#sendClose(code, reason);
    // The server answers and closes the TCP connection; do not wait forever.
    setTimeout(() => this.#socket?.destroy(), 2000).unref();
  }

  #fail() {
    if (this.readyState === 3 && this.#closedFired) return;
    this.onerror?.({ type: "error" });
    this.#fireClose();
  }

  #fireClose() {
    if (this.#closedFired) return;
    this.#closedFired = true;
    this.readyState = 3;
    this.onclose?.({ type: "close", code: this.#closeCode, reason: this.#closeReason, wasClean: this.#closeCode !== 1006 });
  }

  #sendClose(code, reason) {
    if (this.#closeSent) return;
    this.#closeSent = true;
    const r = Buffer.from(reason, "utf8");
    const p = Buffer.alloc(2 + r.length);
    p.writeUInt16BE(code, 0);
    r.copy(p, 2);
    this.#write(8, p);
  }

  #write(opcode, payload) {
    const mask = randomBytes(4);
    let header;
    if (payload.length < 126) {
      header = Buffer.from([0x80 | opcode, 0x80 | payload.length]);
    } else if (payload.length < 65536) {
      header = Buffer.alloc(4);
      header[0] = 0x80 | opcode;
      header[1] = 0x80 | 126;
      header.writeUInt16BE(payload.length, 2);
    } else {
      header = Buffer.alloc(10);
      header[0] = 0x80 | opcode;
      header[1] = 0x80 | 127;
      header.writeBigUInt64BE(BigInt(payload.length), 2);
    }
    const masked = Buffer.alloc(payload.length);
    for (let i = 0; i < payload.length; i++) masked[i] = payload[i] ^ mask[i & 3];
    this.#socket?.write(Buffer.concat([header, mask, masked]));
  }

  #feed(chunk) {
    this.#buf = this.#buf.length ? Buffer.concat([this.#buf, chunk]) : chunk;
    for (;;) {
      const b = this.#buf;
      if (b.length < 2) return;
      const fin = (b[0] & 0x80) !== 0;
      const opcode = b[0] & 0x0f;
      let len = b[1] & 0x7f;
      let off = 2;
      if (b[1] & 0x80) {
        // A server must not mask (RFC 6455, 5.1).
        this.#closeCode = 1002;
        this.#socket.destroy();
        return;
      }
      if (len === 126) {
        if (b.length < 4) return;
        len = b.readUInt16BE(2);
        off = 4;
      } else if (len === 127) {
        if (b.length < 10) return;
        len = Number(b.readBigUInt64BE(2));
        off = 10;
      }
      if (b.length < off + len) return;
      const payload = b.subarray(off, off + len);
      this.#buf = b.subarray(off + len);
      this.#frame(fin, opcode, Buffer.from(payload));
    }
  }

  #frame(fin, opcode, payload) {
    switch (opcode) {
      case 0x9:
        if (this.readyState === 1) this.#write(0xa, payload);
        return;
      case 0xa:
        return;
      case 0x8:
        this.#closeCode = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
        this.#closeReason = payload.length > 2 ? payload.subarray(2).toString("utf8") : "";
        if (this.readyState === 1) this.readyState = 2;
        this.#sendClose(payload.length >= 2 ? this.#closeCode : 1000, "");
        this.#socket.end();
        return;
    }
    if (opcode !== 0) {
      this.#fragOpcode = opcode;
      this.#fragments = [];
    }
    this.#fragments.push(payload);
    if (!fin) return;
    const whole = Buffer.concat(this.#fragments);
    this.#fragments = [];
    if (this.readyState !== 1) return;
    let data;
    if (this.#fragOpcode === 1) data = whole.toString("utf8");
    else data = whole.buffer.slice(whole.byteOffset, whole.byteOffset + whole.byteLength);
    this.onmessage?.({ type: "message", data });
  }
}
