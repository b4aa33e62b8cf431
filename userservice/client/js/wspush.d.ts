// TypeScript declarations for wspush.js, the wspush browser and Node client.
// The protocol it implements is docs/PROTOCOL.md; section names below refer to it.

/** A stream position (docs/PROTOCOL.md, Positions). Epochs are compared for equality only. */
export interface Position {
  seq: number;
  epoch: string;
}

/** Positions of an app's keys, by key. */
export type Positions = Record<string, Position>;

/** Connection states, in the order a connection usually goes through them. */
export type State = "connecting" | "open" | "reconnecting" | "closed";

export interface StateEvent {
  state: State;
  /** The WebSocket close code that caused this state, when there was one (1006 when the socket broke). */
  code?: number;
  /** The close reason the server gave, or the client's own reason (for example "closed by client"). */
  reason?: string;
  /** Milliseconds until the next attempt, in state "reconnecting". */
  delay?: number;
  /** Consecutive failed attempts so far, in state "reconnecting". */
  attempt?: number;
}

/** A publication (docs/PROTOCOL.md, Data and Binary frames). */
export interface Publication {
  app: string;
  key: string;
  seq: number;
  /** The epoch of the client's position for the key (a data message carries none). */
  epoch: string;
  /** Unix milliseconds. */
  ts: number;
  /** True when the payload is JSON; then `data` holds it parsed. */
  json: boolean;
  /** The parsed JSON payload, when `json` is true. */
  data?: unknown;
  /** The raw payload bytes, when `json` is false. */
  bytes?: Uint8Array;
}

/** A reset (docs/PROTOCOL.md, Reset): values were lost; the position is now (seq, epoch). */
export interface Reset {
  app: string;
  key: string;
  seq: number;
  epoch: string;
  /** "epoch" or "gap". */
  reason: string;
}

/** A subscribe acknowledgement, delivered on the first subscribe and on every resubscribe after a reconnect. */
export interface Ack {
  app: string;
  /** The keys acknowledged (one command carries at most 100 keys; `ready` merges them all). */
  keys: string[];
  /** positions from the ack: the latest position of each key on the serving node. */
  positions: Positions;
  /** Present when the command resumed at least one key with `since`: false means some key got a reset. */
  recovered?: boolean;
  /** True when the client resubscribed on its own: after a reconnect, or to resume a key after a gap. */
  resumed: boolean;
}

/** An error reply of the server, or an error of the client. */
export declare class WspushError extends Error {
  /**
   * A server error code (docs/PROTOCOL.md, Error codes: bad_request, unauthorized, forbidden, limit,
   * unavailable, internal; `id` is then the command's), or the client's own: "bad_request" (an
   * invalid app, key, format, mode, maxRate or since, thrown by subscribe), "limit" (more than maxSubscriptions
   * keys, thrown by subscribe), "protocol" (a server message that breaks the protocol), "closed"
   * (the client was closed, or the keys unsubscribed, before an ack), "client" (a bad option such
   * as maxBandwidth, thrown by the constructor; a failed getToken).
   * Subscribes refused with "unavailable" or "internal" are retried with backoff; `ready` waits.
   */
  code: string;
  /** The id of the command the server's error answers, when there is one. */
  id?: number;
  constructor(code: string, message: string, id?: number);
}

export interface ClientOptions {
  /** A JWT, sent as ?token=. */
  token?: string;
  /**
   * Called on every connect and before the token's `exp` to refresh it (docs/PROTOCOL.md,
   * Token expiry and refresh). Takes precedence over `token`.
   */
  getToken?: () => string | Promise<string>;
  /** Smallest reconnect delay in ms (default 250). Delays grow exponentially with full jitter. */
  minBackoff?: number;
  /** Largest reconnect delay in ms (default 10000). */
  maxBackoff?: number;
  /** A WebSocket constructor (for Node < 22: the `ws` package, or run Node 20 with --experimental-websocket). */
  WebSocket?: any;
  /** Ping interval in ms to detect a dead server sooner (default 20000; 0 disables). */
  pingInterval?: number;
  /** How long to wait for a pong or an ack before the connection is considered dead, in ms (default 10000). */
  replyTimeout?: number;
  /** Commands per second the client allows itself (default 15; the server allows 20, burst 50). */
  commandRate?: number;
  /** Command burst the client allows itself (default 40). */
  commandBurst?: number;
  /** Keys per subscribe or unsubscribe command (default 100, the server's limit). */
  maxKeysPerCommand?: number;
  /** Keys the client subscribes at most on one connection (default 1000, the server's limit). */
  maxSubscriptions?: number;
  /** Connect on construction (default true); otherwise call connect(). */
  autoConnect?: boolean;
  /**
   * Bytes of values per second the server writes to this connection at most (an integer from 1024
   * to 1e9; default: no limit), sent as the `max_bandwidth` query parameter of the URL
   * (docs/PROTOCOL.md, Delivery modes). Keys in mode "latest" then skip values rather than fall
   * behind; "stream" keys wait in the server's queue, whose limit (close 4008, then a resume)
   * still applies. The constructor throws WspushError "client" for another value.
   */
  maxBandwidth?: number;
}

/** How many of a key's values a subscription gets (docs/PROTOCOL.md, Delivery modes). */
export type Mode = "stream" | "latest";

export interface SubscribeOptions {
  /** "json" (default) or "binary" (docs/PROTOCOL.md, Binary frames). */
  format?: "json" | "binary";
  /** Resume from these positions (full form only) instead of starting from the latest value. */
  since?: Positions;
  /**
   * "stream" (default): every value, in order, exactly once. "latest": the newest value of each
   * key; values in between may be skipped (by maxRate, or when the connection is slow), and a
   * `seq` that jumps by k means k-1 values were skipped. For a latest key the client accepts any
   * seq above its position and ignores an older one (no "protocol" event, no resume). Resets,
   * epochs and resumes work as for "stream", but a resume brings the newest value only; every
   * resubscribe keeps the key's mode and maxRate.
   */
  mode?: Mode;
  /**
   * With mode "latest" only: at most this many values per second per key (0 < maxRate <= 1000,
   * fractions allowed, e.g. 0.5; default: no limit), always the newest; a value that comes sooner
   * waits and is sent when the interval ends, so the newest value is never more than 1/maxRate late.
   */
  maxRate?: number;
  onData?: (p: Publication) => void;
  onReset?: (r: Reset) => void;
  onAck?: (a: Ack) => void;
}

export interface Subscription {
  readonly app: string;
  readonly keys: string[];
  /**
   * Resolves once every command of this subscribe is acknowledged (a subscribe of more than 100 keys
   * takes several), with their acks merged: all positions, `recovered` false if any was false.
   * Rejects with a WspushError on an error reply, or when the client is closed first.
   */
  readonly ready: Promise<Ack>;
  /** Unsubscribes this subscription's keys. */
  unsubscribe(): Promise<void>;
}

export type EventMap = {
  state: StateEvent;
  error: WspushError;
  /** A data message that broke the client rule (docs/PROTOCOL.md, The client rule, 3); never for a "latest" key's jump. */
  protocol: { app: string; key: string; seq: number; expected: number; epoch: string };
};

export declare class Client {
  /**
   * url: ws://host/ws (or wss://). In a browser it defaults to the page's origin + "/ws".
   */
  constructor(url?: string, options?: ClientOptions);
  /** The current state. */
  readonly state: State;
  /** Starts connecting when autoConnect was false, or after close(). */
  connect(): void;
  on<K extends keyof EventMap>(event: K, fn: (e: EventMap[K]) => void): () => void;
  off<K extends keyof EventMap>(event: K, fn: (e: EventMap[K]) => void): void;
  /**
   * Subscribes keys of app. Keys already subscribed change their callbacks, format, mode and
   * maxRate, and keep their position (the server receives a resubscribe with since). Throws
   * WspushError "bad_request" for an invalid option (a maxRate without mode "latest", or out of
   * 0 < maxRate <= 1000), "limit" when the connection would exceed maxSubscriptions keys.
   */
  subscribe(app: string, keys: string[], options?: SubscribeOptions): Subscription;
  /** Unsubscribes keys, in commands of at most maxKeysPerCommand keys, paced under the command rate. */
  unsubscribe(app: string, keys: string[]): Promise<void>;
  /** Current positions of the subscribed keys of app. */
  positions(app: string): Positions;
  /**
   * Closes the connection for good (state "closed"); subscriptions are dropped and pending `ready`
   * promises reject with code "closed". The same happens when the server closes with a code after
   * which reconnecting cannot help (1002, 1007, 1008, 1009, 4001, and 4003 without getToken).
   */
  close(): void;
}

/** Decodes a binary data frame (version 1); throws WspushError "protocol" on an unknown version or a short frame. */
export declare function decodeBinaryFrame(buf: ArrayBuffer | Uint8Array): {
  app: string;
  key: string;
  seq: number;
  ts: number;
  json: boolean;
  payload: Uint8Array;
};

/** The `exp` claim of a JWT in ms since the epoch, or undefined when it has none or cannot be read. */
export declare function tokenExpiry(token: string): number | undefined;
