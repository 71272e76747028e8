// Test helpers: a simulated Roomkit server (a `ws` WebSocketServer that
// the test drives frame by frame) and a fake clock for the client's timers.

import { once } from "node:events";
import { WebSocketServer } from "ws";

/** One client connection, as the simulated server sees it. */
export class Conn {
  constructor(ws, url) {
    this.ws = ws;
    this.url = url;
    this.room = url.searchParams.get("room");
    this.ticket = url.searchParams.get("ticket");
    /** Every message the client sent, parsed. */
    this.received = [];
    this._cursor = 0;
    this._wake = null;
    this.closed = new Promise((resolve) => ws.on("close", (code, reason) => resolve({ code, reason: String(reason) })));
    ws.on("message", (data) => {
      this.received.push(JSON.parse(String(data)));
      this._wake?.();
    });
  }

  /** Sends a frame (an object as JSON, a string as it is). */
  send(frame) {
    this.ws.send(typeof frame === "string" ? frame : JSON.stringify(frame));
  }

  /** Closes with a code. */
  close(code, reason = "") {
    this.ws.close(code, reason);
  }

  /**
   * The messages from the cursor up to and including the first that
   * matches `pred` (waiting for it); the cursor moves past it.
   */
  async until(pred) {
    for (;;) {
      for (let i = this._cursor; i < this.received.length; i++) {
        if (pred(this.received[i])) {
          const got = this.received.slice(this._cursor, i + 1);
          this._cursor = i + 1;
          return got;
        }
      }
      await new Promise((resolve) => {
        this._wake = resolve;
      });
      this._wake = null;
    }
  }

  /** The next message matching `pred` (skipping others). */
  async next(pred = () => true) {
    const got = await this.until(pred);
    return got[got.length - 1];
  }
}

/** A simulated server on a free port. */
export async function startServer() {
  const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
  await once(wss, "listening");
  const connections = [];
  let wake = null;
  wss.on("connection", (ws, req) => {
    connections.push(new Conn(ws, new URL(req.url, "http://localhost")));
    wake?.();
  });
  let taken = 0;
  return {
    url: `ws://127.0.0.1:${wss.address().port}/ws`,
    connections,
    /** The next connection that has not been handed out yet. */
    async nextConnection() {
      while (taken >= connections.length) {
        await new Promise((resolve) => {
          wake = resolve;
        });
        wake = null;
      }
      return connections[taken++];
    },
    async close() {
      for (const ws of wss.clients) ws.terminate();
      await new Promise((resolve) => wss.close(resolve));
    },
  };
}

/** Timers that run only when the test says: `tick(ms)`. */
export class FakeClock {
  constructor() {
    this.now = 0;
    this._timers = new Map();
    this._id = 0;
    this.setTimeout = (fn, ms) => {
      const id = ++this._id;
      this._timers.set(id, { id, at: this.now + Math.max(0, ms), fn });
      return id;
    };
    this.clearTimeout = (id) => {
      this._timers.delete(id);
    };
  }

  /** Timers waiting to run. */
  pending() {
    return this._timers.size;
  }

  /** When the next timer is due (Infinity if none). */
  nextAt() {
    let at = Infinity;
    for (const t of this._timers.values()) at = Math.min(at, t.at);
    return at;
  }

  /** Moves time on by `ms`, running what falls due, in order. */
  tick(ms) {
    const end = this.now + ms;
    for (;;) {
      let due = null;
      for (const t of this._timers.values()) {
        if (t.at <= end && (!due || t.at < due.at || (t.at === due.at && t.id < due.id))) due = t;
      }
      if (!due) break;
      this._timers.delete(due.id);
      this.now = due.at;
      due.fn();
    }
    this.now = end;
  }
}

/** The next `type` event of `emitter` whose first argument matches `pred` (its arguments). */
export function nextEvent(emitter, type, pred = () => true) {
  return new Promise((resolve) => {
    const listener = (...args) => {
      if (!pred(...args)) return;
      emitter.off(type, listener);
      resolve(args);
    };
    emitter.on(type, listener);
  });
}

/** Collects every `type` event's first argument. */
export function collect(emitter, type) {
  const got = [];
  emitter.on(type, (x) => got.push(x));
  return got;
}

/** A welcome frame. */
export function welcome(over = {}) {
  return {
    t: "welcome",
    uin: 101,
    role: "student",
    terminal: "web",
    epoch: 1795949906207321,
    head: 0,
    subclass: 0,
    heartbeat_ms: 20000,
    muted: false,
    self_muted: false,
    node: 1,
    ...over,
  };
}

/** A reliable push of a teacher's words. */
export function say(e, s, p, text = `m${s}`) {
  return { t: "push", c: "teacher", k: "msg", e, s, p, b: { kind: 2, from: 1, data: { text } } };
}
