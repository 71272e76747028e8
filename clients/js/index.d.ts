// Type definitions for @roomkit/client 0.1.0: the classroom websocket
// protocol of docs/PROTOCOL.md. Numbers are JavaScript numbers: epochs are
// microseconds since 1970 (about 1.8e15), well inside Number's safe range.

// ---- the protocol's values ---------------------------------------------------

/** A member's role. */
export type Role = "teacher" | "assistant" | "student" | "observer";

/** A push class: `signal` and `teacher` are reliable (sequenced and recovered). */
export type PushClass = "signal" | "teacher" | "chat" | "reaction";

/** A push frame's kind. */
export type PushKind = "msg" | "batch" | "reactions" | "resync";

/** The codes of the server's error frames. */
export type ErrorCode =
  | "malformed"
  | "too_large"
  | "text_too_long"
  | "not_allowed"
  | "refused"
  | "rate_limited"
  | "muted"
  | "bad_recovery"
  | "not_entered"
  | "gone"
  | "unavailable"
  | "entry_refused"
  | "banned"
  | "unknown_kind"
  | "vetoed"
  | "revoked";

/**
 * Codes of errors the client itself reports (`local: true`): a frame it
 * could not take, a frame type it does not know, a ticket it could not get,
 * a socket it could not open.
 */
export type LocalErrorCode = "bad_frame" | "unknown_frame" | "ticket_failed" | "socket_failed";

/** Message kinds of pushed bodies. */
export declare const Kind: {
  readonly CHAT: 1;
  readonly SAY: 2;
  readonly HAND: 3;
  readonly FLOWER: 4;
  readonly LIKE: 5;
  readonly CARD: 6;
  readonly PACKET: 7;
  readonly ROSTER: 8;
  readonly MUTED: 9;
  readonly STATE: 10;
  /** The first of the host's own kinds. */
  readonly HOST_FIRST: 256;
  /** The last of the host's own kinds. */
  readonly HOST_LAST: 65279;
  readonly MUTE_ALL: 65280;
  readonly LEVEL: 65281;
  readonly SUBCLASS: 65282;
};

/** The websocket close codes of the protocol. */
export declare const CloseCode: {
  /** The client said `leave` (final). */
  readonly LEFT: 1000;
  /** A websocket message over 64 KiB (reconnects). */
  readonly TOO_BIG: 1009;
  /** The entry was refused (final; a new ticket may help). */
  readonly REFUSED: 4001;
  /** The same member opened the room again on the same terminal (final). */
  readonly REPLACED: 4002;
  /** Heartbeats stopped (reconnects). */
  readonly TIMED_OUT: 4003;
  /** Too slow to keep up (reconnects). */
  readonly SLOW: 4004;
  /** The host removed the member (final; a `bye` comes first). */
  readonly KICKED: 4005;
  /** The host closed the room (final; a `bye` comes first). */
  readonly ROOM_CLOSED: 4006;
};

/** Close codes after which the client does not reconnect: 1000, 4001, 4002, 4005, 4006. */
export declare const FINAL_CLOSE_CODES: readonly number[];

/** Whether a close with `code` means "do not reconnect". */
export declare function isFinalClose(code: number): boolean;

// ---- server frames ------------------------------------------------------------

/** The first frame of a connection that entered. */
export interface Welcome {
  t: "welcome";
  uin: number;
  role: Role;
  terminal: string;
  /** The room's reliable sequence epoch (never 0). */
  epoch: number;
  /** Where the reliable sequence starts for this connection. */
  head: number;
  /** The learner's sub-class (`null` for staff). */
  subclass: number | null;
  /** How often the client beats (it does so itself). */
  heartbeat_ms: number;
  /** The room's mute-all. */
  muted: boolean;
  /** This member's own mute. */
  self_muted: boolean;
  /** The node the client is on. */
  node: number;
}

/** A pushed message body: `{kind, from, data}`. */
export interface Body<D = unknown> {
  kind: number;
  /** The sender's uin; 0 for the room's and the host's own messages. */
  from: number;
  data: D;
}

/** A push frame as it came. */
export interface PushFrame {
  t: "push";
  c: PushClass;
  k: PushKind;
  /** Epoch, sequence number and the previous number sent to this connection (0 for chat and reactions). */
  e: number;
  s: number;
  p: number;
  /** A body (`msg`), an array of bodies (`batch`), totals by kind (`reactions`), or null (`resync`). */
  b: Body | Body[] | Record<string, number> | null;
}

/** The `recover` frame (the answer to a check); its frames are then delivered. */
export interface RecoverFrame {
  e: number;
  upto: number;
  frames: PushFrame[];
}

/** The `reset` frame: continue from `head` in `e`. */
export interface ResetFrame {
  e: number;
  head: number;
}

/** The answer to an ack. */
export type AckReply = { r: "ok" } | { r: "behind"; last: number } | { r: "reset"; e: number; head: number };

/** An `error` event: a server error frame (`local: false`) or the client's own (`local: true`). */
export interface ErrorEvent {
  code: ErrorCode | LocalErrorCode | (string & {});
  message: string;
  /** For `rate_limited`: when the request would be taken. */
  retry_after_ms?: number;
  /** Whether the client raised it (a bad frame, say) rather than the server. */
  local: boolean;
  /** The frame's text, for `bad_frame` and `unknown_frame`. */
  frame?: string;
}

/** The `bye` frame: the host's reason; the close with `code` follows. */
export interface Bye {
  code: number;
  reason: string;
}

/** The `answered` reply. */
export interface Answered {
  option: number;
}

/** The `grabbed` reply. */
export interface Grabbed {
  id: number;
  amount: number;
}

/** One row of a `members` page. */
export interface MemberRow {
  uin: number;
  role: Role;
  terminals: string[];
}

/** A `members` page. */
export interface MembersPage {
  rows: MemberRow[];
  /** The cursor of the next page, or null. */
  next: string | null;
}

// ---- data of pushed kinds --------------------------------------------------------

/** Kind 1 (chat) and 2 (teacher says). */
export interface TextData {
  text: string;
}

/** Kind 3: raised hands. */
export interface HandData {
  op: "raise" | "lower" | "invite" | "dismiss";
  uin: number;
  /** The queue, oldest first (at most 50). */
  queue: number[];
}

/** Kind 6: an answer card. */
export type CardData =
  | { op: "open"; id: number; options: number; seconds: number | null }
  | { op: "tally"; id: number; tally: number[] }
  | { op: "result"; id: number; tally: number[]; correct: number | null; answered: number; right: number };

/** Kind 7: a red packet. */
export type PacketData =
  | { op: "open"; id: number; amount: number; count: number }
  | { op: "state"; id: number; total: number; count: number; grabbed: number; taken: number };

/** One member in a roster. */
export interface RosterEntry {
  uin: number;
  role: Role;
}

/** Kind 8: the member sidebar. */
export interface RosterData {
  total: number;
  teacher: number;
  assistant: number;
  student: number;
  observer: number;
  /** Everyone, for rooms of up to 200. */
  list?: RosterEntry[];
  /** Who came in since the previous roster. */
  joined: RosterEntry[];
  /** Who left since the previous roster. */
  left: number[];
  /** More changed than a roster carries: page `members` again. */
  more: boolean;
}

/** Kind 9 (this member's own mute) and 65280 (the room's mute-all). */
export interface OnData {
  on: boolean;
}

/** Kind 65281: the room's degradation level (0 normal .. 3 signal only). */
export interface LevelData {
  level: number;
}

/** Kind 65282: this learner moved to another sub-class. */
export interface SubclassData {
  uin: number;
  subclass: number | null;
}

/** What is open in the room: the `state` frame's data and kind 10. */
export interface RoomState {
  /** The queue for staff; a learner's own uin if its hand is up. */
  hands: number[];
  card: Extract<CardData, { op: "open" }> | null;
  /** This member's answer on the open card. */
  answer?: number;
  packets: Extract<PacketData, { op: "state" }>[];
  /** `[packet, units]` this member took. */
  grabbed?: [number, number][];
  muted: boolean;
  self_muted?: boolean;
  flowers: number;
  likes: number;
}

/** Reaction totals of the room. */
export interface Reactions {
  flowers: number;
  likes: number;
  /** Totals by reaction kind, as sent. */
  totals: Record<string, number>;
}

/** One delivered message (a push body with where it came from). */
export interface Message<D = unknown> extends Body<D> {
  class: PushClass;
  /** The frame's epoch and sequence number (0 for chat). */
  epoch: number;
  seq: number;
  /** Whether it came in a `recover` answer rather than live. */
  recovered: boolean;
}

// ---- client events ------------------------------------------------------------

/** Where the client is. */
export type Status = "idle" | "connecting" | "connected" | "reconnecting" | "closed";

/** The `connected` event: the client entered (again). */
export interface ConnectedEvent {
  welcome: Welcome;
  /** Whether this is a reconnect (what was missed is being recovered). */
  resumed: boolean;
}

/** The `disconnected` event: a socket closed. */
export interface DisconnectedEvent {
  code: number;
  reason: string;
  /** Whether the client will reconnect. */
  reconnect: boolean;
  bye: Bye | null;
}

/** The `reconnecting` event: the client waits `delayMs`, then connects with a fresh ticket. */
export interface ReconnectingEvent {
  /** 1 for the first attempt after a working connection. */
  attempt: number;
  delayMs: number;
  /** The close code that ended the previous socket (0 when there was none: no ticket, say). */
  code: number;
  reason: string;
}

/** The `closed` event: closed for good (no more reconnects). */
export interface ClosedEvent {
  code: number;
  reason: string;
  /** The host's words, when it removed the member (4005) or closed the room (4006). */
  bye: Bye | null;
  /** The refusal, when the entry was refused (`entry_refused`, `banned`, `revoked`). */
  error: { code: string; message: string } | null;
  /** Whether the client said `leave`. */
  left: boolean;
}

/** The `reload` event: reliable messages were lost (a reset, or a new epoch after a reconnect). */
export interface ReloadEvent {
  reason: "reset" | "epoch";
  epoch: number;
  head: number;
  previous: { e: number; head: number } | null;
}

/** The `checking` event: the client asked for what it missed. */
export interface CheckingEvent {
  epoch: number;
  after: number;
}

/** Every event, with its listener's arguments. */
export interface ClientEvents {
  // One per server frame.
  /** The welcome (the client entered). */
  welcome: [welcome: Welcome];
  /** A push frame delivered (live, or from a recover answer), in order. */
  push: [frame: PushFrame, recovered: boolean];
  /** A `recover` answer (its messages follow as push/message events). */
  recover: [frame: RecoverFrame];
  /** A `reset` answer (a `reload` follows unless it was a late copy). */
  reset: [frame: ResetFrame];
  /** The answer to an ack. */
  ack: [reply: AckReply];
  /** A server error frame, or the client's own (`local`). */
  error: [error: ErrorEvent];
  /** The host's goodbye (the close follows). */
  bye: [bye: Bye];
  /** The `state` frame. */
  state: [data: RoomState];
  /** The `answered` reply. */
  answered: [reply: Answered];
  /** The `grabbed` reply. */
  grabbed: [reply: Grabbed];
  /** The `members` reply. */
  members: [page: MembersPage];
  /** Every frame as parsed, before the client handles it. */
  frame: [frame: { t: string; [field: string]: unknown }];

  // Per pushed body.
  /** Every delivered body (each line of a chat batch too). */
  message: [message: Message];
  /** Kind 1. */
  chat: [data: TextData, message: Message<TextData>];
  /** Kind 2: the teacher says. */
  say: [data: TextData, message: Message<TextData>];
  /** Kind 3. */
  hand: [data: HandData, message: Message<HandData>];
  /** Kind 6. */
  card: [data: CardData, message: Message<CardData>];
  /** Kind 7. */
  packet: [data: PacketData, message: Message<PacketData>];
  /** Kind 8. */
  roster: [data: RosterData, message: Message<RosterData>];
  /** Kind 9: this member's own mute. */
  muted: [data: OnData, message: Message<OnData>];
  /** The `state` frame (message null) and kind 10 (a room restored by a new owner). */
  roomState: [data: RoomState, message: Message<RoomState> | null];
  /** Kind 65280: the room's mute-all. */
  muteAll: [data: OnData, message: Message<OnData>];
  /** Kind 65281. */
  level: [data: LevelData, message: Message<LevelData>];
  /** Kind 65282. */
  subclass: [data: SubclassData, message: Message<SubclassData>];
  /** The host's own kinds (256..=65279). */
  custom: [data: unknown, message: Message];
  /** The room's reaction totals. */
  reactions: [reactions: Reactions];

  // The connection.
  /** The status changed. */
  status: [status: Status, previous: Status];
  /** A socket opened (the welcome is still to come). */
  open: [];
  /** The client entered: after the first welcome and after each reconnect. */
  connected: [event: ConnectedEvent];
  /** A socket closed. */
  disconnected: [event: DisconnectedEvent];
  /** The client will connect again after `delayMs`. */
  reconnecting: [event: ReconnectingEvent];
  /** Closed for good. */
  closed: [event: ClosedEvent];
  /** Messages were lost for good: reload what the page shows (the client has asked for `state` already). */
  reload: [event: ReloadEvent];
  /** The client sent a check. */
  checking: [event: CheckingEvent];
}

// ---- the client ----------------------------------------------------------------

/** What `getTicket` is told. */
export interface TicketRequest {
  /** The reconnect attempt (0 for the first connection). */
  attempt: number;
  /** Whether the client entered before (this is a reconnect). */
  reconnect: boolean;
}

/** Reconnect policy: delay = min(maxDelayMs, initialDelayMs × factor^(attempt−1)) × (1 − jitter × random()). */
export interface ReconnectOptions {
  /** The first delay (500 ms). */
  initialDelayMs?: number;
  /** The largest delay (10 000 ms). */
  maxDelayMs?: number;
  /** Growth per attempt (2). */
  factor?: number;
  /** The share of a delay taken off at random, 0..1 (0.5). */
  jitter?: number;
  /** Attempts in a row before giving up; 0 never gives up (0). */
  maxAttempts?: number;
}

/** The constructor a WebSocket implementation provides (the browser's, or the `ws` package's). */
export interface WebSocketConstructor {
  new (url: string): WebSocketLike;
}

/** What the client uses of a WebSocket. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: any) => any) | null;
  onmessage: ((ev: { data: any }) => any) | null;
  onclose: ((ev: { code: number; reason: string }) => any) | null;
  onerror: ((ev: any) => any) | null;
}

/** Timers (tests pass a fake clock). */
export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: any): void;
}

export interface ClientOptions {
  /**
   * The websocket endpoint: `ws://host/ws`, `wss://…`, `http(s)://…` (made
   * ws(s)), or relative (`/ws`) in a page. The client adds `room` and
   * `ticket` to its query.
   */
  url: string | URL;
  /** The room (added to the URL as `room`). */
  room?: number | string;
  /** A ticket, used for every connection. */
  ticket?: string;
  /** Gets a fresh ticket for each connection and reconnection (preferred over `ticket`). */
  getTicket?: (request: TicketRequest) => string | Promise<string>;
  /** The WebSocket implementation; the global one by default (Node 20 has none: pass `ws`). */
  WebSocket?: WebSocketConstructor | (new (url: string) => any);
  /** Reconnect policy, or false to never reconnect. */
  reconnect?: ReconnectOptions | false;
  /** How often to ack the last contiguous number (5000 ms). */
  ackIntervalMs?: number;
  /** How long a check may go unanswered before it is sent again (3000 ms). */
  checkTimeoutMs?: number;
  /** How long a request may wait for its reply once sent; 0 for ever (15 000 ms). */
  requestTimeoutMs?: number;
  /** How long `leave()` waits for the server's close before closing itself (2000 ms). */
  leaveTimeoutMs?: number;
  /** The heartbeat when a welcome does not say (20 000 ms). */
  heartbeatMs?: number;
  /** Ask for `state` after a reset or an epoch change (true). */
  autoState?: boolean;
  /** Where errors thrown by listeners go (console.error). */
  onListenerError?: (error: unknown, type: string) => void;
  /** Timers (for tests). */
  timers?: Timers;
  /** Randomness for the jitter (Math.random). */
  random?: () => number;
}

/** Why a request failed: an error frame pinned on it, `timeout`, or `gone` (closed for good). */
export declare class RoomkitError extends Error {
  constructor(code: string, message: string, retryAfterMs?: number);
  readonly name: "RoomkitError";
  code: ErrorCode | "timeout" | (string & {});
  retryAfterMs?: number;
}

/** A minimal typed event emitter. */
export declare class Emitter<Events extends { [K in keyof Events]: unknown[] }> {
  /** Adds a listener. */
  on<K extends keyof Events & string>(type: K, listener: (...args: Events[K]) => void): this;
  /** Adds a listener called once. */
  once<K extends keyof Events & string>(type: K, listener: (...args: Events[K]) => void): this;
  /** Removes a listener, or all of a type when none is given. */
  off<K extends keyof Events & string>(type: K, listener?: (...args: Events[K]) => void): this;
  /** How many listeners a type has. */
  listenerCount<K extends keyof Events & string>(type: K): number;
}

/** The recovery rules alone, as Rust's `ReliableReceiver` has them. */
export declare class ReliableReceiver {
  constructor(epoch: number, contiguous: number);
  epoch: number;
  contiguous: number;
  onFrame(frame: { c: string; k: string; e: number; s: number; p: number }): "deliver" | "duplicate" | "check" | "unsequenced";
  onAckReply(reply: { r: string; last?: number }): boolean;
  onRecover<F extends { c: string; e: number; s: number }>(recover: { e: number; upto: number; frames: F[] }): F[];
  onReset(reset: { e: number; head: number }): boolean;
}

/**
 * A member's connection to a room: enters with a ticket, keeps the reliable
 * sequence (acks, checks, recovery, resets), beats, reconnects with backoff
 * and jitter (never after 1000, 4001, 4002, 4005, 4006), and turns every
 * server frame into events.
 */
export declare class RoomkitClient extends Emitter<ClientEvents> {
  constructor(options: ClientOptions);

  /** Where the client is. */
  readonly status: Status;
  /** Whether the current socket has its welcome. */
  readonly connected: boolean;
  /** The latest welcome. */
  readonly welcome: Welcome | null;
  readonly uin: number | null;
  readonly role: Role | null;
  /** The reliable sequence's epoch (0 before the first welcome). */
  readonly epoch: number;
  /** The last contiguous reliable number delivered. */
  readonly contiguous: number;

  /** Connects; resolves with the welcome, rejects (`gone`) if closed for good first. */
  connect(): Promise<Welcome>;
  /** Drops the socket as a network failure would and reconnects after the backoff. */
  reconnect(): void;
  /** Sends `leave` and closes without reconnecting. */
  leave(): Promise<ClosedEvent>;
  /** Closes without `leave` (the member's place is kept until the heartbeat timeout). */
  close(reason?: string): ClosedEvent;

  /** Sends any client message as it is; false if not sent (before the welcome, or disconnected). */
  send(message: { t: string; [field: string]: unknown }): boolean;
  /** A chat line. */
  chat(text: string): boolean;
  /** A teacher message (staff). */
  say(text: string): boolean;
  /** A raised-hand operation. */
  hand(op: "raise" | "lower" | "invite" | "dismiss", uin?: number): boolean;
  raiseHand(): boolean;
  lowerHand(): boolean;
  inviteHand(uin: number): boolean;
  dismissHand(uin: number): boolean;
  /** Flowers or likes (n 1..=99). */
  react(kind: "flower" | "like", n?: number): boolean;
  /** Opens an answer card (staff). */
  cardOpen(card: { options: number; correct?: number | null; seconds?: number | null }): boolean;
  /** Answers the open card; resolves with the option taken. Sent again after a reconnect if unanswered. */
  cardAnswer(option: number): Promise<number>;
  /** Closes the open card (staff). */
  cardClose(): boolean;
  /** Sends a red packet (teacher). */
  packetSend(amount: number, count: number): boolean;
  /** Grabs a share; resolves with what was taken. Sent again after a reconnect if unanswered. */
  packetGrab(id: number): Promise<Grabbed>;
  /** The room's mute-all (staff). */
  muteAll(on: boolean): boolean;
  /** One user's mute (staff). */
  mute(uin: number, on: boolean): boolean;
  /** A page of the member list. */
  members(page?: { limit?: number; after?: string | null }): Promise<MembersPage>;
  /** What is open in the room now. */
  state(): Promise<RoomState>;
  /** A message of one of the host's own kinds (256..=65279); `to` for kinds sent to one member. */
  custom(kind: number, data: unknown, to?: number): boolean;
  /** Asks for what was missed now (the client does this itself when needed). */
  check(): boolean;
}
