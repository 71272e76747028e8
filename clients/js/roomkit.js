// @roomkit/client: Roomkit's JavaScript client for the classroom websocket
// protocol (docs/PROTOCOL.md). One ES module, no dependencies, no build
// step: it runs as it is in browsers (native WebSocket) and in Node 20 (pass
// a WebSocket implementation such as the `ws` package).
//
// Licensed under MIT OR Apache-2.0.

/**
 * Message kinds of pushed bodies (`b.kind`).
 * Kinds from {@link Kind.HOST_FIRST} to {@link Kind.HOST_LAST} are the host's own.
 * @readonly
 */
export const Kind = Object.freeze({
  CHAT: 1,
  SAY: 2,
  HAND: 3,
  FLOWER: 4,
  LIKE: 5,
  CARD: 6,
  PACKET: 7,
  ROSTER: 8,
  MUTED: 9,
  STATE: 10,
  HOST_FIRST: 256,
  HOST_LAST: 65279,
  MUTE_ALL: 65280,
  LEVEL: 65281,
  SUBCLASS: 65282,
});

/**
 * The websocket close codes of the protocol.
 * @readonly
 */
export const CloseCode = Object.freeze({
  /** The client said `leave`. */
  LEFT: 1000,
  /** A websocket message over 64 KiB. */
  TOO_BIG: 1009,
  /** The entry was refused (a new ticket may help). */
  REFUSED: 4001,
  /** The same member opened the room again on the same terminal. */
  REPLACED: 4002,
  /** Heartbeats stopped. */
  TIMED_OUT: 4003,
  /** Too slow to keep up. */
  SLOW: 4004,
  /** The host removed the member from the class. */
  KICKED: 4005,
  /** The host closed the room. */
  ROOM_CLOSED: 4006,
});

/**
 * Close codes after which the client does not reconnect (docs/PROTOCOL.md:
 * left, entry refused, replaced, kicked, room closed).
 * @type {readonly number[]}
 */
export const FINAL_CLOSE_CODES = Object.freeze([1000, 4001, 4002, 4005, 4006]);

/**
 * Whether a close with `code` means "do not reconnect".
 * @param {number} code
 * @returns {boolean}
 */
export function isFinalClose(code) {
  return FINAL_CLOSE_CODES.includes(code);
}

/** The reliable (sequenced, recovered) push classes. */
const RELIABLE = new Set(["signal", "teacher"]);
const CLASSES = new Set(["signal", "teacher", "chat", "reaction"]);
const PUSH_KINDS = new Set(["msg", "batch", "reactions", "resync"]);

/**
 * Why a request failed: a server `error` frame attributed to it, a timeout
 * (`timeout`), or a connection closed for good (`gone`).
 */
export class RoomkitError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {number} [retryAfterMs]
   */
  constructor(code, message, retryAfterMs) {
    super(message);
    this.name = "RoomkitError";
    /** @type {string} */
    this.code = code;
    if (retryAfterMs !== undefined) {
      /** @type {number | undefined} */
      this.retryAfterMs = retryAfterMs;
    }
  }
}

/**
 * A small event emitter: `on`, `once`, `off`. A listener that throws does
 * not stop the others nor the client (it is reported to `onListenerError`).
 */
export class Emitter {
  constructor() {
    /** @type {Map<string, Function[]>} */
    this._listeners = new Map();
    /** @type {(error: unknown, type: string) => void} */
    this._onListenerError = (error, type) => {
      console.error(`roomkit: a "${type}" listener threw`, error);
    };
  }

  /**
   * Adds a listener.
   * @param {string} type
   * @param {Function} listener
   * @returns {this}
   */
  on(type, listener) {
    if (typeof listener !== "function") throw new TypeError("a listener must be a function");
    const list = this._listeners.get(type);
    if (list) list.push(listener);
    else this._listeners.set(type, [listener]);
    return this;
  }

  /**
   * Adds a listener called once.
   * @param {string} type
   * @param {Function} listener
   * @returns {this}
   */
  once(type, listener) {
    if (typeof listener !== "function") throw new TypeError("a listener must be a function");
    const wrapper = (/** @type {any[]} */ ...args) => {
      this.off(type, wrapper);
      return listener.apply(this, args);
    };
    wrapper.listener = listener;
    return this.on(type, wrapper);
  }

  /**
   * Removes a listener, or every listener of `type` when none is given.
   * @param {string} type
   * @param {Function} [listener]
   * @returns {this}
   */
  off(type, listener) {
    const list = this._listeners.get(type);
    if (!list) return this;
    if (!listener) {
      this._listeners.delete(type);
      return this;
    }
    const i = list.findIndex((l) => l === listener || /** @type {any} */ (l).listener === listener);
    if (i >= 0) list.splice(i, 1);
    if (list.length === 0) this._listeners.delete(type);
    return this;
  }

  /**
   * How many listeners `type` has.
   * @param {string} type
   * @returns {number}
   */
  listenerCount(type) {
    return this._listeners.get(type)?.length ?? 0;
  }

  /**
   * Calls the listeners of `type` (internal; returns whether there were any).
   * @param {string} type
   * @param {...any} args
   * @returns {boolean}
   */
  emit(type, ...args) {
    const list = this._listeners.get(type);
    if (!list) return false;
    for (const listener of [...list]) {
      try {
        listener.apply(this, args);
      } catch (error) {
        try {
          this._onListenerError(error, type);
        } catch {
          // A reporter that throws is not the client's problem either.
        }
      }
    }
    return true;
  }
}

/** @param {unknown} x */
const isCount = (x) => typeof x === "number" && Number.isSafeInteger(x) && x >= 0;
/** @param {unknown} x */
const isObject = (x) => x !== null && typeof x === "object" && !Array.isArray(x);

/**
 * The protocol's recovery rules for reliable classes (docs/PROTOCOL.md,
 * "Recovery"), without I/O: the same rules as Rust's
 * `roomkit::push::ReliableReceiver`. The client keeps one across reconnects.
 */
export class ReliableReceiver {
  /**
   * @param {number} epoch the welcome's `epoch`
   * @param {number} contiguous the welcome's `head`
   */
  constructor(epoch, contiguous) {
    /** The room's sequence epoch. */
    this.epoch = epoch;
    /** The last contiguous sequence number delivered. */
    this.contiguous = contiguous;
  }

  /**
   * Classifies a push frame: `deliver` (and `contiguous` moves to its `s`),
   * `duplicate`, `check` (something was missed: drop it and send a check),
   * or `unsequenced` (chat and reactions: deliver as it is).
   * @param {{c: string, k: string, e: number, s: number, p: number}} frame
   * @returns {"deliver" | "duplicate" | "check" | "unsequenced"}
   */
  onFrame(frame) {
    if (frame.k === "resync") return "check";
    if (!RELIABLE.has(frame.c)) return "unsequenced";
    if (frame.e !== this.epoch) return "check";
    if (frame.s <= this.contiguous) return "duplicate";
    if (frame.p > this.contiguous) return "check";
    this.contiguous = frame.s;
    return "deliver";
  }

  /**
   * Takes the answer to an ack: whether to send a check (`behind` with
   * `last` past `contiguous`, or `reset`).
   * @param {{r: string, last?: number}} reply
   * @returns {boolean}
   */
  onAckReply(reply) {
    if (reply.r === "behind") return typeof reply.last === "number" && reply.last > this.contiguous;
    return reply.r === "reset";
  }

  /**
   * Takes a `recover` answer: returns the frames to deliver, in order (those
   * after `contiguous`), and moves `contiguous` to `max(contiguous, upto)`.
   * An answer from another epoch delivers nothing.
   * @template {{c: string, e: number, s: number}} F
   * @param {{e: number, upto: number, frames: F[]}} recover
   * @returns {F[]}
   */
  onRecover(recover) {
    if (recover.e !== this.epoch) return [];
    const frames = recover.frames.filter((f) => RELIABLE.has(f.c) && f.e === this.epoch).sort((a, b) => a.s - b.s);
    const delivered = [];
    for (const f of frames) {
      if (f.s > this.contiguous) {
        delivered.push(f);
        this.contiguous = f.s;
      }
    }
    this.contiguous = Math.max(this.contiguous, recover.upto);
    return delivered;
  }

  /**
   * Takes a `reset`: continue from `head` in `e`. Returns false for a late
   * copy of an answer already moved past (same epoch, `head` not ahead).
   * @param {{e: number, head: number}} reset
   * @returns {boolean} whether the client must reload what it shows
   */
  onReset(reset) {
    if (reset.e === this.epoch && reset.head <= this.contiguous) return false;
    this.epoch = reset.e;
    this.contiguous = reset.head;
    return true;
  }
}

// Error codes a request of each `t` may draw (docs/PROTOCOL.md): used to
// tell which request an error frame (which carries no request id) is for.
const GENERAL = ["malformed", "too_large", "not_allowed", "rate_limited", "unavailable", "not_entered", "gone"];
/** @type {Record<string, Set<string>>} */
const DRAWS = {
  chat: new Set([...GENERAL, "muted", "text_too_long"]),
  say: new Set([...GENERAL, "text_too_long"]),
  hand: new Set([...GENERAL, "refused"]),
  react: new Set([...GENERAL, "refused"]),
  card_open: new Set([...GENERAL, "refused"]),
  card_close: new Set([...GENERAL, "refused"]),
  card_answer: new Set([...GENERAL, "refused"]),
  packet_send: new Set([...GENERAL, "refused"]),
  packet_grab: new Set([...GENERAL, "refused"]),
  mute_all: new Set([...GENERAL, "refused"]),
  mute: new Set([...GENERAL, "refused"]),
  custom: new Set([...GENERAL, "refused", "unknown_kind", "vetoed"]),
  members: new Set(GENERAL),
  state: new Set(GENERAL),
};
const ENTRY_ERRORS = new Set(["entry_refused", "banned", "revoked"]);

const DEFAULTS = {
  ackIntervalMs: 5000,
  checkTimeoutMs: 3000,
  requestTimeoutMs: 15000,
  leaveTimeoutMs: 2000,
  heartbeatMs: 20000,
  autoState: true,
};
const RECONNECT_DEFAULTS = { initialDelayMs: 500, maxDelayMs: 10000, factor: 2, jitter: 0.5, maxAttempts: 0 };

/**
 * A member's connection to a Roomkit room: enters with a ticket, keeps the
 * reliable sequence (acks, checks, recovery, resets), beats, reconnects
 * with backoff, and turns every server frame into events.
 *
 * @example
 * const client = new RoomkitClient({
 *   url: "/ws", room: 42,
 *   getTicket: async () => (await (await fetch("/ticket?room=42&uin=7&role=student")).json()).ticket,
 * });
 * client.on("say", ({ text }) => console.log("teacher:", text));
 * await client.connect();
 */
export class RoomkitClient extends Emitter {
  /**
   * @param {import("./index.d.ts").ClientOptions} options
   */
  constructor(options) {
    super();
    if (!isObject(options)) throw new TypeError("RoomkitClient needs options");
    if (typeof options.url !== "string" && !(options.url instanceof URL)) {
      throw new TypeError("options.url: the websocket endpoint, e.g. ws://host/ws or /ws");
    }
    if (typeof options.getTicket !== "function" && typeof options.ticket !== "string") {
      throw new TypeError("options.ticket or options.getTicket is needed");
    }
    try {
      new URL(String(options.url), pageUrl());
    } catch {
      throw new TypeError(`options.url: not a URL here: ${String(options.url)} (relative URLs need a page)`);
    }
    const WebSocketImpl = options.WebSocket ?? globalThis.WebSocket;
    if (typeof WebSocketImpl !== "function") {
      throw new TypeError("no WebSocket here: pass one as options.WebSocket (in Node 20: the `ws` package)");
    }
    /** @private */ this._WebSocket = WebSocketImpl;
    /** @private */ this._opts = { ...DEFAULTS, ...stripUndefined(options) };
    /** @private */ this._reconnect =
      options.reconnect === false ? null : { ...RECONNECT_DEFAULTS, ...stripUndefined(options.reconnect ?? {}) };
    /** @private */ this._timers = options.timers ?? {
      setTimeout: (/** @type {() => void} */ fn, /** @type {number} */ ms) => setTimeout(fn, ms),
      clearTimeout: (/** @type {any} */ handle) => clearTimeout(handle),
    };
    /** @private */ this._random = options.random ?? Math.random;
    if (options.onListenerError) this._onListenerError = options.onListenerError;

    /** @private @type {import("./index.d.ts").Status} */ this._status = "idle";
    /** @private @type {any} */ this._ws = null;
    /** @private */ this._gen = 0; // bumped per attempt: late events of older sockets are ignored
    /** @private */ this._entered = false; // the current socket has its welcome
    /** @private @type {ReliableReceiver | null} */ this._rx = null;
    /** @private @type {any} */ this._welcome = null;
    /** @private */ this._attempt = 0;
    /** @private */ this._final = false;
    /** @private */ this._left = false;
    /** @private @type {any} */ this._reconnectTimer = null;
    /** @private @type {{stop(): void} | null} */ this._beat = null;
    /** @private @type {{stop(): void} | null} */ this._ack = null;
    /** @private */ this._checking = false;
    /** @private */ this._checkAgain = false;
    /** @private @type {any} */ this._checkTimer = null;
    /** @private @type {{e: number, s: number} | null} */ this._missed = null;
    /** @private @type {any[]} */ this._pending = [];
    /** @private @type {{t: string, n: number, at: number}[]} */ this._loose = [];
    /** @private */ this._sent = 0;
    /** @private @type {{code: number, reason: string} | null} */ this._bye = null;
    /** @private @type {{code: string, message: string} | null} */ this._entryError = null;
    /** @private @type {{resolve: Function, reject: Function}[]} */ this._waiters = [];
    /** @private @type {{resolve: Function, timer: any}[]} */ this._leaving = [];
    /** @private @type {any} */ this._closedInfo = null;
  }

  // ---- state -------------------------------------------------------------

  /** Where the client is: `idle`, `connecting`, `connected`, `reconnecting` or `closed`. */
  get status() {
    return this._status;
  }

  /** Whether the client has entered (its current socket had its welcome). */
  get connected() {
    return this._entered;
  }

  /** The latest welcome (null before the first). */
  get welcome() {
    return this._welcome;
  }

  /** This member's uin (from the welcome; null before it). */
  get uin() {
    return this._welcome ? this._welcome.uin : null;
  }

  /** This member's role (from the welcome; null before it). */
  get role() {
    return this._welcome ? this._welcome.role : null;
  }

  /** The reliable sequence's epoch (0 before the first welcome). */
  get epoch() {
    return this._rx ? this._rx.epoch : 0;
  }

  /** The last contiguous reliable sequence number delivered (0 before the first welcome). */
  get contiguous() {
    return this._rx ? this._rx.contiguous : 0;
  }

  // ---- lifecycle ---------------------------------------------------------

  /**
   * Connects (or, after a final close, connects again). Resolves with the
   * welcome once the client has entered; rejects if the client closes for
   * good first (an entry refused, say). Reconnects happen on their own.
   * @returns {Promise<import("./index.d.ts").Welcome>}
   */
  connect() {
    const p = new Promise((resolve, reject) => {
      if (this._entered && this._welcome) return resolve(this._welcome);
      this._waiters.push({ resolve, reject });
    });
    p.catch(() => {});
    if (this._status === "idle" || this._status === "closed") {
      this._final = false;
      this._left = false;
      this._attempt = 0;
      this._closedInfo = null;
      this._open();
    }
    return p;
  }

  /**
   * Drops the current connection as a network failure would (the member's
   * place is kept until the heartbeat timeout) and reconnects after the
   * usual backoff, with a fresh ticket; what was missed is recovered.
   */
  reconnect() {
    if (this._status === "idle" || this._status === "closed") {
      this.connect();
      return;
    }
    const ws = this._ws;
    if (!ws) return; // already waiting to reconnect, or fetching a ticket
    this._detach(ws);
    this._onClose(ws, 1006, "dropped by the client");
  }

  /**
   * Says goodbye: sends `{"t":"leave"}` (the member leaves now; the server
   * closes with 1000) and never reconnects. Resolves once closed.
   * @returns {Promise<import("./index.d.ts").ClosedEvent>}
   */
  leave() {
    if (this._status === "closed" && this._closedInfo) return Promise.resolve(this._closedInfo);
    this._final = true;
    this._left = true;
    this._cancelReconnect();
    const ws = this._ws;
    if (!this._entered || !ws || ws.readyState !== 1) {
      return Promise.resolve(this._closeNow(1000, "left"));
    }
    this._send({ t: "leave" });
    return new Promise((resolve) => {
      const timer = this._timers.setTimeout(() => {
        // The server did not close in time: close from here.
        if (this._ws === ws) this._closeNow(1000, "left");
      }, this._opts.leaveTimeoutMs);
      this._leaving.push({ resolve, timer });
    });
  }

  /**
   * Closes without `leave` and without reconnecting: the member's place is
   * kept until the heartbeat timeout (as for a dropped network). Use
   * {@link RoomkitClient#leave} when the member is really going.
   * @param {string} [reason]
   * @returns {import("./index.d.ts").ClosedEvent}
   */
  close(reason = "closed by the client") {
    if (this._status === "closed" && this._closedInfo) return this._closedInfo;
    this._final = true;
    this._cancelReconnect();
    return this._closeNow(1000, reason);
  }

  // ---- sending -----------------------------------------------------------

  /**
   * Sends any client message as it is (an escape hatch). Returns whether it
   * went out (false before the welcome or while disconnected).
   * @param {{t: string, [field: string]: unknown}} message
   * @returns {boolean}
   */
  send(message) {
    if (!isObject(message) || typeof message.t !== "string") throw new TypeError("a message is an object with a `t`");
    return this._act(message);
  }

  /** A chat line (to the sender's sub-class and the staff). @param {string} text */
  chat(text) {
    return this._act({ t: "chat", text: String(text) });
  }

  /** A teacher message to the room (reliable; teachers and assistants). @param {string} text */
  say(text) {
    return this._act({ t: "say", text: String(text) });
  }

  /**
   * A raised-hand operation: `raise`/`lower` (learners), `invite`/`dismiss` (staff, with a uin).
   * @param {"raise" | "lower" | "invite" | "dismiss"} op
   * @param {number} [uin]
   */
  hand(op, uin) {
    return this._act(uin === undefined ? { t: "hand", op } : { t: "hand", op, uin });
  }

  /** Raises this learner's hand. */
  raiseHand() {
    return this.hand("raise");
  }

  /** Lowers this learner's hand. */
  lowerHand() {
    return this.hand("lower");
  }

  /** Invites a raised hand to speak (staff). @param {number} uin */
  inviteHand(uin) {
    return this.hand("invite", uin);
  }

  /** Dismisses a raised hand (staff). @param {number} uin */
  dismissHand(uin) {
    return this.hand("dismiss", uin);
  }

  /**
   * Flowers or likes (`n` 1..=99, default 1).
   * @param {"flower" | "like"} kind
   * @param {number} [n]
   */
  react(kind, n) {
    return this._act(n === undefined ? { t: "react", kind } : { t: "react", kind, n });
  }

  /**
   * Opens an answer card (staff): `options` 2..=26, optional `correct` (0 = A) and `seconds`.
   * @param {{options: number, correct?: number | null, seconds?: number | null}} card
   */
  cardOpen(card) {
    const { options, correct, seconds } = card;
    return this._act(stripUndefined({ t: "card_open", options, correct, seconds }));
  }

  /**
   * Answers the open card (learners; 0 = A). Resolves with the option taken
   * (the `answered` reply); an unanswered answer is sent again after a
   * reconnect (the server answers a repeat as it did the first).
   * @param {number} option
   * @returns {Promise<number>}
   */
  cardAnswer(option) {
    return this._request("card_answer", { t: "card_answer", option }).then((f) => f.option);
  }

  /** Closes the open card (staff); the result goes to everyone. */
  cardClose() {
    return this._act({ t: "card_close" });
  }

  /**
   * Sends a red packet (teacher): `amount` units split into `count` shares.
   * @param {number} amount
   * @param {number} count
   */
  packetSend(amount, count) {
    return this._act({ t: "packet_send", amount, count });
  }

  /**
   * Grabs a share of a red packet (learners). Resolves with the `grabbed`
   * reply (`{id, amount}`); sent again after a reconnect if unanswered.
   * @param {number} id
   * @returns {Promise<import("./index.d.ts").Grabbed>}
   */
  packetGrab(id) {
    return this._request("packet_grab", { t: "packet_grab", id }).then(({ id: got, amount }) => ({ id: got, amount }));
  }

  /** Switches the room's mute-all (staff). @param {boolean} on */
  muteAll(on) {
    return this._act({ t: "mute_all", on: Boolean(on) });
  }

  /** Mutes or unmutes one user's chat (staff). @param {number} uin @param {boolean} on */
  mute(uin, on) {
    return this._act({ t: "mute", uin, on: Boolean(on) });
  }

  /**
   * A page of the member list (`limit` ≤ 100, `after`: the previous page's `next`).
   * @param {{limit?: number, after?: string | null}} [page]
   * @returns {Promise<import("./index.d.ts").MembersPage>}
   */
  members(page = {}) {
    const msg = stripUndefined({ t: "members", limit: page.limit, after: page.after ?? undefined });
    return this._request("members", msg).then(({ rows, next }) => ({ rows, next }));
  }

  /**
   * What is open in the room now (hands, card, packets, mute, reactions).
   * @returns {Promise<import("./index.d.ts").RoomState>}
   */
  state() {
    return this._request("state", { t: "state" }).then((f) => f.data);
  }

  /**
   * A message of one of the host's own kinds (256..=65279), to the audience
   * the host registered it with; `to` names the member for kinds sent to one.
   * @param {number} kind
   * @param {unknown} data any JSON
   * @param {number} [to]
   */
  custom(kind, data, to) {
    if (!Number.isInteger(kind)) throw new TypeError("a custom kind is an integer");
    const msg = to === undefined ? { t: "custom", kind, data: data ?? null } : { t: "custom", kind, data: data ?? null, to };
    return this._act(msg);
  }

  /** Asks for the reliable messages after the last contiguous one (the client does this itself when needed). */
  check() {
    if (!this._entered) return false;
    this._check();
    return true;
  }

  // ---- internals: the socket -------------------------------------------

  /** @private */
  _setStatus(/** @type {import("./index.d.ts").Status} */ status) {
    if (this._status === status) return;
    const previous = this._status;
    this._status = status;
    this.emit("status", status, previous);
  }

  /** @private */
  async _open() {
    const gen = ++this._gen;
    this._setStatus("connecting");
    let ticket;
    try {
      ticket = this._opts.getTicket
        ? await this._opts.getTicket({ attempt: this._attempt, reconnect: this._rx !== null })
        : this._opts.ticket;
    } catch (e) {
      if (gen !== this._gen || this._final) return;
      this._localError("ticket_failed", `getTicket failed: ${errorText(e)}`);
      return this._retry(0, "no ticket");
    }
    if (gen !== this._gen || this._final) return;
    if (typeof ticket !== "string" || ticket === "") {
      this._localError("ticket_failed", "getTicket gave no ticket (a non-empty string)");
      return this._retry(0, "no ticket");
    }
    let ws;
    try {
      ws = new this._WebSocket(this._socketUrl(ticket));
    } catch (e) {
      this._localError("socket_failed", `cannot open the websocket: ${errorText(e)}`);
      return this._retry(0, "no socket");
    }
    this._ws = ws;
    this._entered = false;
    this._bye = null;
    ws.onopen = () => {
      if (this._ws === ws) this.emit("open");
    };
    ws.onmessage = (/** @type {{data: unknown}} */ ev) => {
      if (this._ws === ws) this._onData(ev.data);
    };
    ws.onerror = () => {
      // The close event follows with the code.
    };
    ws.onclose = (/** @type {{code?: number, reason?: string}} */ ev) => {
      if (this._ws === ws) this._onClose(ws, ev.code ?? 1006, String(ev.reason ?? ""));
    };
  }

  /** @private */
  _socketUrl(/** @type {string} */ ticket) {
    const url = new URL(String(this._opts.url), pageUrl());
    if (url.protocol === "http:") url.protocol = "ws:";
    else if (url.protocol === "https:") url.protocol = "wss:";
    if (this._opts.room !== undefined && this._opts.room !== null) url.searchParams.set("room", String(this._opts.room));
    url.searchParams.set("ticket", ticket);
    return url.toString();
  }

  /** @private Stops listening to a socket and closes it. */
  _detach(/** @type {any} */ ws) {
    ws.onopen = null;
    ws.onmessage = null;
    ws.onclose = null;
    ws.onerror = () => {};
    try {
      ws.close(1000);
    } catch {
      // Closing a socket that never opened may throw in some implementations.
    }
  }

  /** @private Ends the current socket (if any) for good, from this side. */
  _closeNow(/** @type {number} */ code, /** @type {string} */ reason) {
    const ws = this._ws;
    if (ws) {
      this._detach(ws);
      this._ws = null;
    }
    this._gen++;
    this._stopConnection();
    if (ws) this.emit("disconnected", { code, reason, reconnect: false, bye: this._bye });
    return this._finish(code, reason);
  }

  /** @private */
  _onClose(/** @type {any} */ ws, /** @type {number} */ code, /** @type {string} */ reason) {
    if (this._ws === ws) this._ws = null;
    const bye = this._bye;
    this._stopConnection();
    const final = this._final || isFinalClose(code) || this._reconnect === null;
    this.emit("disconnected", { code, reason, reconnect: !final, bye });
    if (final) {
      this._final = true;
      this._finish(code, reason, bye);
    } else {
      this._retry(code, reason);
    }
  }

  /** @private The timers and per-socket recovery state of a connection that ended. */
  _stopConnection() {
    this._entered = false;
    this._beat?.stop();
    this._ack?.stop();
    this._beat = this._ack = null;
    if (this._checkTimer !== null) this._timers.clearTimeout(this._checkTimer);
    this._checkTimer = null;
    this._checking = false;
    this._checkAgain = false;
    this._missed = null;
    this._loose = [];
    for (const req of this._pending) this._unsend(req);
  }

  /** @private Waits, then connects again (or gives up after maxAttempts). */
  _retry(/** @type {number} */ code, /** @type {string} */ reason) {
    const policy = this._reconnect;
    if (this._final) return;
    if (!policy || (policy.maxAttempts > 0 && this._attempt >= policy.maxAttempts)) {
      this._final = true;
      this._finish(code, reason || "gave up reconnecting", null);
      return;
    }
    this._attempt += 1;
    const base = Math.min(policy.maxDelayMs, policy.initialDelayMs * policy.factor ** (this._attempt - 1));
    const jitter = Math.min(1, Math.max(0, policy.jitter));
    const delayMs = Math.max(0, Math.round(base * (1 - jitter * this._random())));
    this._setStatus("reconnecting");
    this.emit("reconnecting", { attempt: this._attempt, delayMs, code, reason });
    this._reconnectTimer = this._timers.setTimeout(() => {
      this._reconnectTimer = null;
      if (!this._final) this._open();
    }, delayMs);
  }

  /** @private */
  _cancelReconnect() {
    if (this._reconnectTimer !== null) this._timers.clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
  }

  /** @private Closed for good: settles everything and says so. */
  _finish(/** @type {number} */ code, /** @type {string} */ reason, /** @type {any} */ bye = this._bye) {
    this._cancelReconnect();
    this._bye = null;
    const info = { code, reason, bye: bye ?? null, error: this._entryError, left: this._left };
    this._entryError = null;
    this._closedInfo = info;
    const gone = new RoomkitError("gone", `the connection closed (${code}${reason ? `: ${reason}` : ""})`);
    for (const req of this._pending.splice(0)) {
      if (req.timer !== null) this._timers.clearTimeout(req.timer);
      req.reject(gone);
    }
    for (const w of this._waiters.splice(0)) w.reject(gone);
    this._setStatus("closed");
    this.emit("closed", info);
    for (const l of this._leaving.splice(0)) {
      this._timers.clearTimeout(l.timer);
      l.resolve(info);
    }
    return info;
  }

  /** @private */
  _send(/** @type {object} */ message) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1) return false;
    try {
      ws.send(JSON.stringify(message));
      return true;
    } catch {
      return false;
    }
  }

  /**
   * @private A message with no direct reply: sent only once entered.
   * @param {{t: string, [field: string]: unknown}} message
   */
  _act(message) {
    if (!this._entered) return false;
    if (!this._send(message)) return false;
    const draws = DRAWS[message.t];
    if (draws) {
      this._loose.push({ t: message.t, n: ++this._sent, at: Date.now() });
      if (this._loose.length > 64) this._loose.shift();
    }
    return true;
  }

  /** @private A message with a direct reply: queued until entered, sent again after a reconnect. */
  _request(/** @type {string} */ type, /** @type {object} */ message) {
    /** @type {any} */
    const req = { type, message, resolve: null, reject: null, timer: null, sent: false, n: 0 };
    const p = new Promise((resolve, reject) => {
      req.resolve = resolve;
      req.reject = reject;
    });
    p.catch(() => {});
    if (this._status === "closed") {
      req.reject(new RoomkitError("gone", "the client is closed"));
      return p;
    }
    this._pending.push(req);
    if (this._entered) this._sendRequest(req);
    return p;
  }

  /** @private */
  _sendRequest(/** @type {any} */ req) {
    this._unsend(req);
    if (!this._send(req.message)) return;
    req.sent = true;
    req.n = ++this._sent;
    const ms = this._opts.requestTimeoutMs;
    if (ms > 0) {
      req.timer = this._timers.setTimeout(() => {
        req.timer = null;
        this._settle(req, false, new RoomkitError("timeout", `no answer to ${req.type} in ${ms} ms`));
      }, ms);
    }
  }

  /** @private */
  _unsend(/** @type {any} */ req) {
    if (req.timer !== null) this._timers.clearTimeout(req.timer);
    req.timer = null;
    req.sent = false;
  }

  /** @private */
  _settle(/** @type {any} */ req, /** @type {boolean} */ ok, /** @type {any} */ value) {
    const i = this._pending.indexOf(req);
    if (i < 0) return;
    this._pending.splice(i, 1);
    if (req.timer !== null) this._timers.clearTimeout(req.timer);
    req.timer = null;
    if (ok) {
      // Replies come in order on a connection: what was sent before this
      // request has had its answer, or had none.
      this._loose = this._loose.filter((l) => l.n > req.n);
      req.resolve(value);
    } else {
      req.reject(value);
    }
  }

  /** @private The first sent request of `type` (matching `pick`, if any does). */
  _resolveFirst(/** @type {string} */ type, /** @type {any} */ frame, /** @type {(r: any) => boolean} */ pick = () => true) {
    const sent = this._pending.filter((r) => r.type === type && r.sent);
    const req = sent.find(pick) ?? sent[0];
    if (req) this._settle(req, true, frame);
  }

  /** @private */
  _every(/** @type {number} */ ms, /** @type {() => void} */ fn) {
    /** @type {any} */
    let handle = null;
    let stopped = false;
    const tick = () => {
      if (stopped) return;
      handle = this._timers.setTimeout(() => {
        if (stopped) return;
        fn();
        tick();
      }, ms);
    };
    tick();
    return {
      stop: () => {
        stopped = true;
        if (handle !== null) this._timers.clearTimeout(handle);
      },
    };
  }

  /**
   * @private
   * @param {string} code
   * @param {string} message
   * @param {unknown} [frame]
   */
  _localError(code, message, frame) {
    /** @type {any} */
    const err = { code, message, local: true };
    if (frame !== undefined) err.frame = frame;
    this.emit("error", err);
  }

  // ---- internals: frames -------------------------------------------------

  /** @private */
  _onData(/** @type {unknown} */ data) {
    if (typeof data !== "string") {
      this._localError("bad_frame", "a binary frame (the protocol sends text frames)");
      return;
    }
    let frame;
    try {
      frame = JSON.parse(data);
    } catch (e) {
      this._localError("bad_frame", `not JSON: ${errorText(e)}`, data);
      return;
    }
    if (!isObject(frame) || typeof frame.t !== "string") {
      this._localError("bad_frame", "not a frame (an object with a string `t`)", data);
      return;
    }
    this.emit("frame", frame);
    try {
      this._onFrame(frame);
    } catch (e) {
      this._localError("bad_frame", `a ${frame.t} frame the client could not take: ${errorText(e)}`, data);
    }
  }

  /** @private */
  _bad(/** @type {any} */ frame, /** @type {string} */ why) {
    this._localError("bad_frame", `a ${frame.t} frame ${why}`, JSON.stringify(frame));
  }

  /** @private */
  _onFrame(/** @type {any} */ f) {
    const entered = this._entered;
    switch (f.t) {
      case "welcome":
        return this._onWelcome(f);
      case "error":
        return this._onError(f);
      case "bye":
        if (!isCount(f.code) || typeof f.reason !== "string") return this._bad(f, "without a code and a reason");
        this._bye = { code: f.code, reason: f.reason };
        this.emit("bye", { code: f.code, reason: f.reason });
        return;
      default:
        break;
    }
    if (!["push", "recover", "reset", "ack", "state", "answered", "grabbed", "members"].includes(f.t)) {
      return this._localError("unknown_frame", `an unknown frame type "${f.t}"`, JSON.stringify(f));
    }
    if (!entered || !this._rx) return this._bad(f, "before the welcome");
    switch (f.t) {
      case "push":
        return this._onPush(f);
      case "recover":
        return this._onRecover(f);
      case "reset":
        if (!isCount(f.e) || !isCount(f.head)) return this._bad(f, "without e and head");
        this.emit("reset", { e: f.e, head: f.head });
        this._answered(() => this._rx?.onReset(f) ?? false);
        return;
      case "ack":
        return this._onAck(f);
      case "state":
        if (!isObject(f.data)) return this._bad(f, "without data");
        this.emit("state", f.data);
        this.emit("roomState", f.data, null);
        for (const req of this._pending.filter((r) => r.type === "state" && r.sent)) this._settle(req, true, f);
        return;
      case "answered":
        if (!isCount(f.option)) return this._bad(f, "without an option");
        this.emit("answered", { option: f.option });
        return this._resolveFirst("card_answer", f, (r) => r.message.option === f.option);
      case "grabbed":
        if (!isCount(f.id) || !isCount(f.amount)) return this._bad(f, "without id and amount");
        this.emit("grabbed", { id: f.id, amount: f.amount });
        return this._resolveFirst("packet_grab", f, (r) => r.message.id === f.id);
      case "members":
        if (!Array.isArray(f.rows) || !(f.next === null || f.next === undefined || typeof f.next === "string")) {
          return this._bad(f, "without rows and next");
        }
        this.emit("members", { rows: f.rows, next: f.next ?? null });
        return this._resolveFirst("members", { rows: f.rows, next: f.next ?? null });
    }
  }

  /** @private */
  _onWelcome(/** @type {any} */ f) {
    if (this._entered) return this._bad(f, "after the welcome");
    if (!isCount(f.uin) || !isCount(f.epoch) || !isCount(f.head) || typeof f.role !== "string") {
      return this._bad(f, "without uin, role, epoch and head");
    }
    const heartbeatMs = isCount(f.heartbeat_ms) && f.heartbeat_ms > 0 ? f.heartbeat_ms : this._opts.heartbeatMs;
    const resumed = this._rx !== null;
    const before = this._rx ? { e: this._rx.epoch, head: this._rx.contiguous } : undefined;
    let reload = false;
    if (!this._rx) {
      this._rx = new ReliableReceiver(f.epoch, f.head);
    } else if (this._rx.epoch !== f.epoch) {
      // The room's sequence restarted while away: what was missed is gone.
      this._rx.epoch = f.epoch;
      this._rx.contiguous = f.head;
      reload = true;
    }
    this._entered = true;
    this._welcome = f;
    this._attempt = 0;
    this._entryError = null;
    this._beat = this._every(heartbeatMs, () => this._send({ t: "beat" }));
    this._ack = this._every(this._opts.ackIntervalMs, () => {
      if (this._rx) this._send({ t: "ack", epoch: this._rx.epoch, seq: this._rx.contiguous });
    });
    this._setStatus("connected");
    this.emit("welcome", f);
    this.emit("connected", { welcome: f, resumed });
    if (!this._entered) return; // a listener closed the client
    // Back in the same epoch: recover from the last contiguous number what
    // was sent while away.
    if (resumed && !reload && f.head > this._rx.contiguous) this._check();
    if (reload) this._reload("epoch", f.epoch, f.head, before);
    // Requests that had no answer go again (a repeat is answered as the first).
    for (const req of [...this._pending]) this._sendRequest(req);
    for (const w of this._waiters.splice(0)) w.resolve(f);
  }

  /** @private */
  _onError(/** @type {any} */ f) {
    if (typeof f.code !== "string") return this._bad(f, "without a code");
    /** @type {any} */
    const err = { code: f.code, message: typeof f.message === "string" ? f.message : "", local: false };
    if (isCount(f.retry_after_ms)) err.retry_after_ms = f.retry_after_ms;
    if (ENTRY_ERRORS.has(f.code)) this._entryError = { code: f.code, message: err.message };
    this.emit("error", err);
    this._attribute(err);
  }

  /**
   * @private Errors carry no request id: one rejects the oldest pending
   * request that could have drawn it, unless a message without a reply
   * sent meanwhile could have drawn it too (then it is only an event).
   */
  _attribute(/** @type {any} */ err) {
    const req = this._pending.find((r) => r.sent && DRAWS[r.type]?.has(err.code));
    if (!req) return;
    const now = Date.now();
    const window = Math.max(this._opts.requestTimeoutMs, 1000);
    this._loose = this._loose.filter((l) => now - l.at < window);
    if (this._loose.some((l) => DRAWS[l.t]?.has(err.code))) return;
    this._settle(req, false, new RoomkitError(err.code, err.message, err.retry_after_ms));
  }

  /** @private */
  _onPush(/** @type {any} */ f) {
    const why = pushProblem(f);
    if (why) return this._bad(f, why);
    const rx = /** @type {ReliableReceiver} */ (this._rx);
    const verdict = rx.onFrame(f);
    if (verdict === "check") {
      if (f.k === "resync") {
        if (this._checking) this._checkAgain = true;
      } else if (!this._missed || f.e !== this._missed.e || f.s > this._missed.s) this._missed = { e: f.e, s: f.s };
      this._check();
      return;
    }
    if (verdict === "duplicate") return;
    this._deliver(f, false);
  }

  /** @private */
  _onRecover(/** @type {any} */ f) {
    if (!isCount(f.e) || !isCount(f.upto) || !Array.isArray(f.frames)) return this._bad(f, "without e, upto and frames");
    /** @type {any[]} */
    const frames = [];
    for (const frame of f.frames) {
      const why = isObject(frame) ? pushProblem(frame) : "is not an object";
      if (why) this._localError("bad_frame", `a recovered frame ${why}`, JSON.stringify(frame));
      else frames.push(frame);
    }
    this.emit("recover", { e: f.e, upto: f.upto, frames });
    this._answered(() => {
      const rx = /** @type {ReliableReceiver} */ (this._rx);
      for (const frame of rx.onRecover({ e: f.e, upto: f.upto, frames })) this._deliver(frame, true);
      return false;
    });
  }

  /**
   * @private A check's answer: applies it, then checks again if frames
   * dropped meanwhile are still not covered (or a resync came).
   */
  _answered(/** @type {() => boolean} */ apply) {
    const rx = /** @type {ReliableReceiver} */ (this._rx);
    const before = { e: rx.epoch, head: rx.contiguous };
    this._checking = false;
    if (this._checkTimer !== null) this._timers.clearTimeout(this._checkTimer);
    this._checkTimer = null;
    const reload = apply();
    const missed = this._missed;
    const again = this._checkAgain || (missed !== null && (missed.e !== rx.epoch || missed.s > rx.contiguous));
    this._missed = null;
    this._checkAgain = false;
    if (reload) this._reload("reset", rx.epoch, rx.contiguous, before);
    if (again && this._entered) this._check();
  }

  /** @private */
  _onAck(/** @type {any} */ f) {
    if (!["ok", "behind", "reset"].includes(f.r)) return this._bad(f, "with an unknown r");
    /** @type {any} */
    const ack = { r: f.r };
    if (f.r === "behind") {
      if (!isCount(f.last)) return this._bad(f, "behind without last");
      ack.last = f.last;
    }
    if (f.r === "reset") {
      if (!isCount(f.e) || !isCount(f.head)) return this._bad(f, "reset without e and head");
      ack.e = f.e;
      ack.head = f.head;
    }
    this.emit("ack", ack);
    const rx = /** @type {ReliableReceiver} */ (this._rx);
    if (rx.onAckReply(ack)) {
      if (ack.r === "behind" && (!this._missed || this._missed.e !== rx.epoch || ack.last > this._missed.s)) {
        this._missed = { e: rx.epoch, s: ack.last };
      }
      this._check();
    }
  }

  /** @private Sends a check from the last contiguous number (one at a time). */
  _check() {
    const rx = this._rx;
    if (!rx || !this._entered) return;
    if (this._checking) {
      this._checkAgain = this._checkAgain || this._missed === null;
      return;
    }
    this._checking = true;
    this._send({ t: "check", epoch: rx.epoch, after: rx.contiguous });
    this.emit("checking", { epoch: rx.epoch, after: rx.contiguous });
    this._checkTimer = this._timers.setTimeout(() => {
      // No answer (a refused check, say): ask again.
      this._checkTimer = null;
      this._checking = false;
      this._check();
    }, this._opts.checkTimeoutMs);
  }

  /** @private The reliable messages were lost: the page must reload what it shows. */
  _reload(
    /** @type {"reset" | "epoch"} */ reason,
    /** @type {number} */ epoch,
    /** @type {number} */ head,
    /** @type {{e: number, head: number} | undefined} */ before,
  ) {
    this.emit("reload", { reason, epoch, head, previous: before ?? null });
    if (this._opts.autoState && this._entered) this._send({ t: "state" });
  }

  /** @private */
  _deliver(/** @type {any} */ f, /** @type {boolean} */ recovered) {
    this.emit("push", f, recovered);
    if (f.k === "msg") this._message(f.b, f, recovered);
    else if (f.k === "batch") for (const body of f.b) this._message(body, f, recovered);
    else if (f.k === "reactions") {
      const totals = f.b;
      const n = (/** @type {unknown} */ x) => (typeof x === "number" ? x : 0);
      this.emit("reactions", { flowers: n(totals[Kind.FLOWER]), likes: n(totals[Kind.LIKE]), totals });
    }
  }

  /** @private */
  _message(/** @type {any} */ b, /** @type {any} */ f, /** @type {boolean} */ recovered) {
    /** @type {import("./index.d.ts").Message} */
    const m = { kind: b.kind, from: b.from, data: b.data, class: f.c, epoch: f.e, seq: f.s, recovered };
    this.emit("message", m);
    const event = KIND_EVENTS[b.kind];
    if (event) this.emit(event, b.data, m);
    else if (b.kind >= Kind.HOST_FIRST && b.kind <= Kind.HOST_LAST) this.emit("custom", b.data, m);
  }
}

/** @type {Record<number, string>} */
const KIND_EVENTS = {
  [Kind.CHAT]: "chat",
  [Kind.SAY]: "say",
  [Kind.HAND]: "hand",
  [Kind.CARD]: "card",
  [Kind.PACKET]: "packet",
  [Kind.ROSTER]: "roster",
  [Kind.MUTED]: "muted",
  [Kind.STATE]: "roomState",
  [Kind.MUTE_ALL]: "muteAll",
  [Kind.LEVEL]: "level",
  [Kind.SUBCLASS]: "subclass",
};

/**
 * What is wrong with a push frame, or null.
 * @param {any} f
 * @returns {string | null}
 */
function pushProblem(f) {
  if (!CLASSES.has(f.c)) return "with an unknown class c";
  if (!PUSH_KINDS.has(f.k)) return "with an unknown kind k";
  if (!isCount(f.e) || !isCount(f.s) || !isCount(f.p)) return "without e, s and p";
  if (RELIABLE.has(f.c) && f.k !== "resync" && (f.s === 0 || f.p >= f.s)) return "with a bad sequence (s, p)";
  const body = (/** @type {any} */ b) => isObject(b) && isCount(b.kind) && isCount(b.from) && "data" in b;
  if (f.k === "msg" && !body(f.b)) return "without a body {kind, from, data}";
  if (f.k === "batch" && !(Array.isArray(f.b) && f.b.every(body))) return "without a batch of bodies";
  if (f.k === "reactions" && !isObject(f.b)) return "without reaction totals";
  return null;
}

/**
 * The page's address, against which relative URLs resolve (none in Node).
 * @returns {string | undefined}
 */
function pageUrl() {
  const loc = /** @type {any} */ (globalThis).location;
  return loc && typeof loc.href === "string" ? loc.href : undefined;
}

/** @param {Record<string, any>} o */
function stripUndefined(o) {
  /** @type {Record<string, any>} */
  const out = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) out[k] = v;
  return /** @type {any} */ (out);
}

/** @param {unknown} e */
function errorText(e) {
  return e instanceof Error ? e.message : String(e);
}
