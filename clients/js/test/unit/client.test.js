// The client against a simulated server: a `ws` WebSocketServer in the
// test plays the room service, frame by frame. The client's timers run on
// a fake clock, so cadences are counted, never timed.

import test from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { RoomkitClient, RoomkitError, Kind } from "../../roomkit.js";
import { startServer, FakeClock, nextEvent, collect, welcome, say } from "../helpers.js";

const E = 1795949906207321;
const GUARD = { timeout: 20_000 }; // only against hanging

async function setup(t, options = {}) {
  const server = await startServer();
  const clock = new FakeClock();
  const tickets = [];
  const listenerErrors = [];
  const client = new RoomkitClient({
    url: server.url.replace("ws://", "http://"), // http(s) URLs become ws(s)
    room: 42,
    WebSocket,
    timers: clock,
    random: () => 0,
    getTicket: async () => {
      const ticket = `ticket ${tickets.length + 1}/+&`;
      tickets.push(ticket);
      return ticket;
    },
    onListenerError: (error, type) => listenerErrors.push({ error, type }),
    ...options,
  });
  t.after(async () => {
    client.close();
    await server.close();
  });
  return { server, clock, client, tickets, listenerErrors };
}

/** Connects and sends the welcome; returns the server's side of the connection. */
async function enter(ctx, over = {}) {
  const entered = ctx.client.connect();
  const conn = await ctx.server.nextConnection();
  conn.send(welcome(over));
  await entered;
  return conn;
}

/** What the client sent up to a marker chat line (sent now, after the rest). */
async function sentBefore(client, conn, mark) {
  assert.equal(client.chat(mark), true);
  const got = await conn.until((m) => m.t === "chat" && m.text === mark);
  return got.slice(0, -1);
}

test("welcome: the client enters with its ticket and reports the welcome", GUARD, async (t) => {
  const ctx = await setup(t);
  const statuses = collect(ctx.client, "status");
  const connected = nextEvent(ctx.client, "connected");
  const roomState = nextEvent(ctx.client, "roomState");
  const entered = ctx.client.connect();
  const conn = await ctx.server.nextConnection();
  assert.equal(conn.url.pathname, "/ws");
  assert.equal(conn.room, "42");
  assert.equal(conn.ticket, "ticket 1/+&");
  assert.equal(ctx.client.status, "connecting");
  assert.equal(ctx.client.chat("too early"), false, "nothing is sent before the welcome");
  conn.send(welcome({ epoch: E, head: 7 }));
  conn.send({ t: "state", data: { hands: [], card: { op: "open", id: 3, options: 4, seconds: 25 }, answer: 2, packets: [], muted: false, flowers: 1, likes: 2 } });
  const w = await entered;
  assert.equal(w.uin, 101);
  assert.equal(w.role, "student");
  const [{ resumed }] = await connected;
  assert.equal(resumed, false);
  assert.equal(ctx.client.status, "connected");
  assert.equal(ctx.client.epoch, E);
  assert.equal(ctx.client.contiguous, 7);
  assert.equal(ctx.client.uin, 101);
  const [state] = await roomState;
  assert.equal(state.card.id, 3);
  assert.equal(state.answer, 2);
  assert.deepEqual(statuses, ["connecting", "connected"]);
  assert.deepEqual(await sentBefore(ctx.client, conn, "hi"), [], "the client sent nothing before its first message");
});

test("acks go every ackIntervalMs with the last contiguous number, beats every heartbeat_ms", GUARD, async (t) => {
  const ctx = await setup(t, { ackIntervalMs: 5000 });
  const entered = ctx.client.connect();
  const conn = await ctx.server.nextConnection();
  ctx.clock.tick(60_000); // no beats or acks before the welcome
  conn.send(welcome({ epoch: E, head: 3, heartbeat_ms: 12_000 }));
  await entered;
  assert.deepEqual(await sentBefore(ctx.client, conn, "entered"), []);

  conn.send(say(E, 4, 3));
  await nextEvent(ctx.client, "say");
  ctx.clock.tick(4999);
  assert.deepEqual(await sentBefore(ctx.client, conn, "4999"), [], "no ack before the interval");
  ctx.clock.tick(1);
  assert.deepEqual(await sentBefore(ctx.client, conn, "5000"), [{ t: "ack", epoch: E, seq: 4 }]);
  ctx.clock.tick(5000);
  assert.deepEqual(await sentBefore(ctx.client, conn, "10000"), [{ t: "ack", epoch: E, seq: 4 }]);
  ctx.clock.tick(2000);
  assert.deepEqual(await sentBefore(ctx.client, conn, "12000"), [{ t: "beat" }]);
  conn.send(say(E, 9, 4));
  await nextEvent(ctx.client, "say");
  ctx.clock.tick(12_999); // 15000, 20000 (acks), 24000 (beat)
  assert.deepEqual(await sentBefore(ctx.client, conn, "24999"), [
    { t: "ack", epoch: E, seq: 9 },
    { t: "ack", epoch: E, seq: 9 },
    { t: "beat" },
  ]);

  // An ack answered `behind` with a later number: check from contiguous.
  conn.send({ t: "ack", r: "behind", last: 11 });
  assert.deepEqual(await conn.next((m) => m.t === "check"), { t: "check", epoch: E, after: 9 });
  conn.send({ t: "recover", e: E, upto: 11, frames: [say(E, 11, 9)] });
  const [text] = await nextEvent(ctx.client, "say");
  assert.equal(text.text, "m11");
  assert.equal(ctx.client.contiguous, 11);
  // `ok` and `behind` with nothing new ask for nothing.
  conn.send({ t: "ack", r: "ok" });
  conn.send({ t: "ack", r: "behind", last: 11 });
  const acks = collect(ctx.client, "ack");
  conn.send(say(E, 12, 11));
  await nextEvent(ctx.client, "say");
  assert.equal(acks.length, 2);
  assert.deepEqual(await sentBefore(ctx.client, conn, "no check"), []);
});

test("a gap sends one check; the recover fills it in order; frames dropped meanwhile are asked for again", GUARD, async (t) => {
  const ctx = await setup(t);
  const conn = await enter(ctx, { epoch: E, head: 0 });
  const said = [];
  ctx.client.on("say", (data, m) => said.push([data.text, m.seq, m.recovered]));
  const checks = collect(ctx.client, "checking");

  conn.send(say(E, 1, 0)); // a fresh room: p 0, delivered without a check
  conn.send(say(E, 4, 3)); // 2 and 3 were lost
  assert.deepEqual(await conn.next((m) => m.t === "check"), { t: "check", epoch: E, after: 1 });
  conn.send(say(E, 5, 4)); // dropped too; no second check while one is out
  conn.send(say(E, 4, 3));
  assert.deepEqual(await sentBefore(ctx.client, conn, "one check"), []);
  assert.equal(ctx.client.contiguous, 1);

  // The answer stops at 4 (as a capped answer would): 5 is asked for again.
  conn.send({ t: "recover", e: E, upto: 4, frames: [say(E, 2, 1), say(E, 3, 2), say(E, 4, 3)] });
  assert.deepEqual(await conn.next((m) => m.t === "check"), { t: "check", epoch: E, after: 4 });
  conn.send({ t: "recover", e: E, upto: 5, frames: [say(E, 4, 3), say(E, 5, 4)] });
  conn.send(say(E, 5, 4)); // a duplicate
  conn.send(say(E, 7, 5)); // 6 was not for this connection: prev says so
  await nextEvent(ctx.client, "say", (d) => d.text === "m7");
  assert.deepEqual(said, [
    ["m1", 1, false],
    ["m2", 2, true],
    ["m3", 3, true],
    ["m4", 4, true],
    ["m5", 5, true],
    ["m7", 7, false],
  ]);
  assert.equal(ctx.client.contiguous, 7);
  assert.equal(checks.length, 2);

  // A resync asks for a check at once.
  conn.send({ t: "push", c: "signal", k: "resync", e: E, s: 0, p: 0, b: null });
  assert.deepEqual(await conn.next((m) => m.t === "check"), { t: "check", epoch: E, after: 7 });
  conn.send({ t: "recover", e: E, upto: 7, frames: [] });

  // A check with no answer (refused, say) is sent again after checkTimeoutMs.
  conn.send(say(E, 10, 9));
  assert.deepEqual(await conn.next((m) => m.t === "check"), { t: "check", epoch: E, after: 7 });
  conn.send({ t: "error", code: "rate_limited", message: "rate limited: retry after 300 ms", retry_after_ms: 300 });
  await nextEvent(ctx.client, "error");
  ctx.clock.tick(3000);
  assert.deepEqual(await conn.next((m) => m.t === "check"), { t: "check", epoch: E, after: 7 });
});

test("an epoch change: check, then the reset moves the client to the new epoch and state is fetched again", GUARD, async (t) => {
  const ctx = await setup(t);
  const conn = await enter(ctx, { epoch: E, head: 10 });
  const reloads = collect(ctx.client, "reload");
  const said = [];
  ctx.client.on("say", (d) => said.push(d.text));

  conn.send(say(E + 1, 1, 0)); // another epoch: the room's sequence restarted
  assert.deepEqual(await conn.next((m) => m.t === "check"), { t: "check", epoch: E, after: 10 });
  conn.send({ t: "reset", e: E + 1, head: 0 });
  // The client reloads (state), then asks for what it dropped in the new epoch.
  assert.deepEqual(await conn.next(), { t: "state" });
  assert.deepEqual(await conn.next((m) => m.t === "check"), { t: "check", epoch: E + 1, after: 0 });
  assert.equal(ctx.client.epoch, E + 1);
  assert.deepEqual(reloads, [{ reason: "reset", epoch: E + 1, head: 0, previous: { e: E, head: 10 } }]);
  conn.send({ t: "recover", e: E + 1, upto: 1, frames: [say(E + 1, 1, 0)] });
  conn.send(say(E + 1, 2, 1));
  await nextEvent(ctx.client, "say", (d) => d.text === "m2");
  assert.deepEqual(said, ["m1", "m2"]);

  // A late copy of a reset already moved past changes nothing.
  conn.send({ t: "reset", e: E + 1, head: 1 });
  await nextEvent(ctx.client, "reset");
  assert.equal(ctx.client.contiguous, 2);
  assert.equal(reloads.length, 1);

  // An ack answered `reset`: check, and the reset that answers it applies.
  conn.send({ t: "ack", r: "reset", e: E + 2, head: 40 });
  assert.deepEqual(await conn.next((m) => m.t === "check"), { t: "check", epoch: E + 1, after: 2 });
  conn.send({ t: "reset", e: E + 2, head: 40 });
  assert.deepEqual(await conn.next(), { t: "state" });
  assert.equal(ctx.client.epoch, E + 2);
  assert.equal(ctx.client.contiguous, 40);
  assert.equal(reloads.length, 2);
});

test("reconnect: backoff grows to its cap, each attempt gets a fresh ticket, and the client resumes with a check", GUARD, async (t) => {
  const ctx = await setup(t, { reconnect: { initialDelayMs: 500, maxDelayMs: 4000, factor: 2, jitter: 0.5 } });
  const conn1 = await enter(ctx, { epoch: E, head: 5 });
  conn1.send(say(E, 6, 5));
  await nextEvent(ctx.client, "say");
  const answer = ctx.client.cardAnswer(2); // sent, but its answer is lost with the socket
  await conn1.next((m) => m.t === "card_answer");
  const disconnects = collect(ctx.client, "disconnected");
  const delays = [];
  ctx.client.on("reconnecting", (r) => delays.push([r.attempt, r.delayMs, r.code]));

  conn1.close(4003, "heartbeats stopped");
  await nextEvent(ctx.client, "reconnecting");
  assert.equal(ctx.client.status, "reconnecting");
  // Attempts that fail before their welcome back off further each time.
  for (let i = 0; i < 4; i++) {
    ctx.clock.tick(ctx.clock.nextAt() - ctx.clock.now);
    const conn = await ctx.server.nextConnection();
    const next = nextEvent(ctx.client, "reconnecting");
    conn.close(4004, "too slow");
    await next;
  }
  assert.deepEqual(delays, [
    [1, 500, 4003],
    [2, 1000, 4004],
    [3, 2000, 4004],
    [4, 4000, 4004],
    [5, 4000, 4004],
  ]);
  assert.deepEqual(
    disconnects.map((d) => d.reconnect),
    [true, true, true, true, true],
  );

  ctx.clock.tick(4000);
  const conn = await ctx.server.nextConnection();
  assert.equal(conn.ticket, "ticket 6/+&", "every attempt asked for a fresh ticket");
  assert.deepEqual(ctx.tickets.length, 6);
  const resumed = nextEvent(ctx.client, "connected");
  conn.send(welcome({ epoch: E, head: 9 })); // 7..9 were sent while away
  assert.equal((await resumed)[0].resumed, true);
  // Recovery from the last contiguous number, then the unanswered answer again.
  assert.deepEqual(await conn.next(), { t: "check", epoch: E, after: 6 });
  assert.deepEqual(await conn.next(), { t: "card_answer", option: 2 });
  conn.send({ t: "recover", e: E, upto: 9, frames: [say(E, 7, 6), say(E, 9, 7)] });
  conn.send({ t: "answered", option: 2 });
  assert.equal(await answer, 2);
  assert.equal(ctx.client.contiguous, 9);

  // A working connection starts the backoff again; jitter shortens a delay
  // by at most its share.
  ctx.client._random = () => 1;
  conn.close(4003);
  const [again] = await nextEvent(ctx.client, "reconnecting");
  assert.deepEqual([again.attempt, again.delayMs], [1, 250]);
});

test("reconnect() drops the socket as a network failure would and comes back", GUARD, async (t) => {
  const ctx = await setup(t);
  const conn1 = await enter(ctx, { epoch: E, head: 3 });
  const down = nextEvent(ctx.client, "disconnected");
  ctx.client.reconnect();
  const [d] = await down;
  assert.equal(d.reconnect, true);
  await conn1.closed;
  ctx.clock.tick(500);
  const conn2 = await ctx.server.nextConnection();
  conn2.send(welcome({ epoch: E, head: 3 }));
  await nextEvent(ctx.client, "connected");
  assert.deepEqual(await sentBefore(ctx.client, conn2, "back"), [], "nothing to recover: no check");
});

for (const [code, reason, bye] of [
  [4002, "replaced by a newer connection", null],
  [4005, "removed", "disruptive"],
  [4006, "the room closed", "class is over"],
  [4001, "entry refused", null],
  [1000, "goodbye", null],
]) {
  test(`no reconnect after close code ${code}`, GUARD, async (t) => {
    const ctx = await setup(t);
    const conn = await enter(ctx, { epoch: E, head: 0 });
    const pending = ctx.client.state();
    await conn.next((m) => m.t === "state");
    const reconnecting = collect(ctx.client, "reconnecting");
    const closed = nextEvent(ctx.client, "closed");
    if (bye) conn.send({ t: "bye", code, reason: bye });
    conn.close(code, reason);
    const [info] = await closed;
    assert.equal(info.code, code);
    assert.equal(info.reason, reason);
    assert.deepEqual(info.bye, bye ? { code, reason: bye } : null);
    assert.equal(ctx.client.status, "closed");
    await assert.rejects(pending, (e) => e instanceof RoomkitError && e.code === "gone");
    assert.equal(ctx.clock.pending(), 0, "no timer left: nothing will reconnect");
    ctx.clock.tick(3_600_000);
    assert.deepEqual(reconnecting, []);
    assert.equal(ctx.tickets.length, 1);
    assert.equal(ctx.server.connections.length, 1);
    assert.equal(ctx.client.chat("anyone?"), false);
  });
}

test("a refused entry (error, then 4001) is final and rejects connect()", GUARD, async (t) => {
  const ctx = await setup(t);
  const entered = ctx.client.connect();
  const conn = await ctx.server.nextConnection();
  conn.send({ t: "error", code: "revoked", message: "this ticket was revoked" });
  conn.close(4001, "entry refused");
  await assert.rejects(entered, (e) => e.code === "gone");
  assert.equal(ctx.client.status, "closed");
  assert.deepEqual(ctx.client._closedInfo.error, { code: "revoked", message: "this ticket was revoked" });
  assert.equal(ctx.clock.pending(), 0);
});

test("a failing getTicket is an error event and a retry with backoff", GUARD, async (t) => {
  let calls = 0;
  const ctx = await setup(t, {
    getTicket: async () => {
      calls += 1;
      if (calls === 1) throw new Error("backend down");
      return "good";
    },
  });
  const errors = collect(ctx.client, "error");
  ctx.client.connect();
  const [r] = await nextEvent(ctx.client, "reconnecting");
  assert.equal(r.delayMs, 500);
  assert.equal(errors[0].code, "ticket_failed");
  assert.equal(errors[0].local, true);
  ctx.clock.tick(500);
  const conn = await ctx.server.nextConnection();
  assert.equal(conn.ticket, "good");
});

test("custom kinds: sent as {t:custom}, received as custom events in the reliable sequence", GUARD, async (t) => {
  const ctx = await setup(t);
  const conn = await enter(ctx, { epoch: E, head: 13, role: "teacher", uin: 1 });
  assert.equal(ctx.client.custom(300, { x: 10, y: 20, pen: "red" }), true);
  assert.equal(ctx.client.custom(301, { hint: "look at page 3" }, 101), true);
  assert.deepEqual(await conn.next(), { t: "custom", kind: 300, data: { x: 10, y: 20, pen: "red" } });
  assert.deepEqual(await conn.next(), { t: "custom", kind: 301, data: { hint: "look at page 3" }, to: 101 });

  const got = [];
  ctx.client.on("custom", (data, m) => got.push([m.kind, m.from, m.seq, data]));
  conn.send({ t: "push", c: "signal", k: "msg", e: E, s: 14, p: 13, b: { kind: 300, from: 1, data: { x: 10 } } });
  conn.send({ t: "push", c: "teacher", k: "msg", e: E, s: 16, p: 15, b: { kind: 301, from: 0, data: "gap" } });
  await conn.next((m) => m.t === "check");
  conn.send({ t: "recover", e: E, upto: 16, frames: [{ t: "push", c: "teacher", k: "msg", e: E, s: 15, p: 14, b: { kind: 65279, from: 0, data: null } }, { t: "push", c: "teacher", k: "msg", e: E, s: 16, p: 15, b: { kind: 301, from: 0, data: "gap" } }] });
  await nextEvent(ctx.client, "custom", (d) => d === "gap");
  assert.deepEqual(got, [
    [300, 1, 14, { x: 10 }],
    [65279, 0, 15, null],
    [301, 0, 16, "gap"],
  ]);

  // An unregistered kind comes back as an error event.
  ctx.client.custom(999, {});
  conn.send({ t: "error", code: "unknown_kind", message: "kind 999 is not registered (registered: 300, 301)" });
  const [err] = await nextEvent(ctx.client, "error");
  assert.deepEqual(err, { code: "unknown_kind", message: "kind 999 is not registered (registered: 300, 301)", local: false });
});

test("bad frames from the server are error events; the client carries on", GUARD, async (t) => {
  const ctx = await setup(t);
  const conn = await enter(ctx, { epoch: E, head: 0 });
  const errors = collect(ctx.client, "error");
  conn.send("this is not json");
  conn.send("[1,2,3]");
  conn.send("null");
  conn.send({ t: 7 });
  conn.send({ t: "no_such_frame" });
  conn.send({ t: "push", c: "teacher" });
  conn.send({ t: "push", c: "teacher", k: "msg", e: E, s: 1, p: 0 }); // no body
  conn.send({ t: "push", c: "teacher", k: "msg", e: E, s: "1", p: 0, b: { kind: 2, from: 1, data: {} } });
  conn.send({ t: "push", c: "loud", k: "msg", e: E, s: 1, p: 0, b: { kind: 2, from: 1, data: {} } });
  conn.send({ t: "push", c: "chat", k: "batch", e: 0, s: 0, p: 0, b: { not: "an array" } });
  conn.send({ t: "recover", e: E, upto: 1 });
  conn.send({ t: "recover", e: E, upto: 0, frames: [42] });
  conn.send({ t: "ack", r: "maybe" });
  conn.send({ t: "answered" });
  conn.send({ t: "state" });
  conn.send({ t: "welcome", uin: 1 });
  conn.ws.send(Buffer.from([1, 2, 3]), { binary: true });
  conn.send(say(E, 1, 0, "still here"));
  const [data] = await nextEvent(ctx.client, "say");
  assert.equal(data.text, "still here");
  assert.equal(ctx.client.contiguous, 1, "no bad frame moved the sequence");
  assert.equal(ctx.client.status, "connected");
  assert.equal(errors.length, 17);
  assert.ok(errors.every((e) => e.local === true && (e.code === "bad_frame" || e.code === "unknown_frame")), JSON.stringify(errors));
  assert.equal(errors.filter((e) => e.code === "unknown_frame").length, 1);
});

test("a listener that throws does not stop the client or the other listeners", GUARD, async (t) => {
  const ctx = await setup(t);
  const conn = await enter(ctx, { epoch: E, head: 0 });
  const seen = [];
  ctx.client.on("say", () => {
    throw new Error("app bug");
  });
  ctx.client.on("say", (d) => seen.push(d.text));
  conn.send(say(E, 1, 0));
  conn.send(say(E, 2, 1));
  await nextEvent(ctx.client, "say", (d) => d.text === "m2");
  assert.deepEqual(seen, ["m1", "m2"]);
  assert.equal(ctx.listenerErrors.length, 2);
  assert.equal(ctx.listenerErrors[0].type, "say");
  assert.equal(ctx.client.contiguous, 2);
});

test("pushed bodies: batches, reactions and every kind's event", GUARD, async (t) => {
  const ctx = await setup(t);
  const conn = await enter(ctx, { epoch: E, head: 0 });
  const messages = collect(ctx.client, "message");
  const events = [];
  for (const type of ["chat", "say", "hand", "card", "packet", "roster", "muted", "roomState", "muteAll", "level", "subclass"]) {
    ctx.client.on(type, (data, m) => events.push([type, m.kind, data]));
  }
  const reactions = collect(ctx.client, "reactions");
  const body = (kind, data, from = 0) => ({ kind, from, data });
  const sig = (s, b) => ({ t: "push", c: "signal", k: "msg", e: E, s, p: s - 1, b });
  conn.send({ t: "push", c: "chat", k: "batch", e: 0, s: 0, p: 0, b: [body(1, { text: "a" }, 101), body(1, { text: "b" }, 102)] });
  conn.send({ t: "push", c: "reaction", k: "reactions", e: 0, s: 0, p: 0, b: { 4: 12, 5: 40 } });
  conn.send(sig(1, body(3, { op: "raise", uin: 101, queue: [101] })));
  conn.send(sig(2, body(6, { op: "open", id: 3, options: 4, seconds: 25 })));
  conn.send(sig(3, body(7, { op: "open", id: 1, amount: 100, count: 5 })));
  conn.send(sig(4, body(8, { total: 2, teacher: 1, assistant: 0, student: 1, observer: 0, joined: [], left: [], more: false })));
  conn.send(sig(5, body(9, { on: true })));
  conn.send(sig(6, body(10, { hands: [], card: null, packets: [], muted: false, flowers: 0, likes: 0 })));
  conn.send(sig(7, body(65280, { on: true })));
  conn.send(sig(8, body(65281, { level: 2 })));
  conn.send(sig(9, body(65282, { uin: 101, subclass: 3 })));
  conn.send(say(E, 10, 9, "done"));
  await nextEvent(ctx.client, "say");
  assert.deepEqual(
    events.map(([type, kind]) => [type, kind]),
    [
      ["chat", Kind.CHAT],
      ["chat", Kind.CHAT],
      ["hand", Kind.HAND],
      ["card", Kind.CARD],
      ["packet", Kind.PACKET],
      ["roster", Kind.ROSTER],
      ["muted", Kind.MUTED],
      ["roomState", Kind.STATE],
      ["muteAll", Kind.MUTE_ALL],
      ["level", Kind.LEVEL],
      ["subclass", Kind.SUBCLASS],
      ["say", Kind.SAY],
    ],
  );
  assert.deepEqual(events[1], ["chat", 1, { text: "b" }]);
  assert.equal(messages.length, 12);
  assert.equal(messages[0].from, 101);
  assert.equal(messages[0].class, "chat");
  assert.deepEqual(reactions, [{ flowers: 12, likes: 40, totals: { 4: 12, 5: 40 } }]);
});

test("requests get their direct replies; an error is pinned on a request only when it must be its", GUARD, async (t) => {
  const ctx = await setup(t);
  const conn = await enter(ctx, { epoch: E, head: 0 });

  const answer = ctx.client.cardAnswer(1);
  const grab = ctx.client.packetGrab(5);
  const page = ctx.client.members({ limit: 2 });
  const state = ctx.client.state();
  assert.deepEqual(await conn.next(), { t: "card_answer", option: 1 });
  assert.deepEqual(await conn.next(), { t: "packet_grab", id: 5 });
  assert.deepEqual(await conn.next(), { t: "members", limit: 2 });
  assert.deepEqual(await conn.next(), { t: "state" });
  conn.send({ t: "answered", option: 1 });
  conn.send({ t: "grabbed", id: 5, amount: 17 });
  conn.send({ t: "members", rows: [{ uin: 1, role: "teacher", terminals: ["web"] }], next: "00ff" });
  conn.send({ t: "state", data: { hands: [], card: null, packets: [], muted: true, flowers: 0, likes: 0 } });
  assert.equal(await answer, 1);
  assert.deepEqual(await grab, { id: 5, amount: 17 });
  assert.deepEqual(await page, { rows: [{ uin: 1, role: "teacher", terminals: ["web"] }], next: "00ff" });
  assert.equal((await state).muted, true);

  // A refusal no message without a reply could have drawn: the request's.
  const late = ctx.client.cardAnswer(3);
  await conn.next((m) => m.t === "card_answer");
  conn.send({ t: "error", code: "refused", message: "the card is closed" });
  await assert.rejects(late, (e) => e instanceof RoomkitError && e.code === "refused" && e.message === "the card is closed");

  // A chat sent just before could have drawn a rate limit too: the error is
  // only an event, and the request still gets its own answer.
  ctx.client.chat("hello");
  const grab2 = ctx.client.packetGrab(6);
  await conn.next((m) => m.t === "packet_grab");
  conn.send({ t: "error", code: "rate_limited", message: "rate limited: retry after 100 ms", retry_after_ms: 100 });
  const [err] = await nextEvent(ctx.client, "error");
  assert.equal(err.retry_after_ms, 100);
  conn.send({ t: "grabbed", id: 6, amount: 3 });
  assert.deepEqual(await grab2, { id: 6, amount: 3 });

  // No answer at all: the request times out (on the fake clock).
  const lost = ctx.client.state();
  await conn.next((m) => m.t === "state");
  ctx.clock.tick(15_000);
  await assert.rejects(lost, (e) => e.code === "timeout");
});

test("send helpers put every client message on the wire as the protocol spells it", GUARD, async (t) => {
  const ctx = await setup(t);
  const conn = await enter(ctx, { epoch: E, head: 0, role: "teacher", uin: 1 });
  const c = ctx.client;
  c.chat("hi");
  c.say("page 3");
  c.raiseHand();
  c.lowerHand();
  c.inviteHand(101);
  c.dismissHand(101);
  c.react("flower");
  c.react("like", 3);
  c.cardOpen({ options: 4 });
  c.cardOpen({ options: 4, correct: 1, seconds: 30 });
  c.cardClose();
  c.packetSend(100, 5);
  c.muteAll(true);
  c.mute(101, false);
  c.send({ t: "beat" });
  c.check();
  assert.deepEqual(await sentBefore(c, conn, "end"), [
    { t: "chat", text: "hi" },
    { t: "say", text: "page 3" },
    { t: "hand", op: "raise" },
    { t: "hand", op: "lower" },
    { t: "hand", op: "invite", uin: 101 },
    { t: "hand", op: "dismiss", uin: 101 },
    { t: "react", kind: "flower" },
    { t: "react", kind: "like", n: 3 },
    { t: "card_open", options: 4 },
    { t: "card_open", options: 4, correct: 1, seconds: 30 },
    { t: "card_close" },
    { t: "packet_send", amount: 100, count: 5 },
    { t: "mute_all", on: true },
    { t: "mute", uin: 101, on: false },
    { t: "beat" },
    { t: "check", epoch: E, after: 0 },
  ]);
});

test("leave() sends leave, closes on the server's 1000 and never reconnects", GUARD, async (t) => {
  const ctx = await setup(t);
  const conn = await enter(ctx, { epoch: E, head: 0 });
  const left = ctx.client.leave();
  assert.deepEqual(await conn.next(), { t: "leave" });
  conn.close(1000, "goodbye");
  const info = await left;
  assert.equal(info.code, 1000);
  assert.equal(info.left, true);
  assert.equal(ctx.client.status, "closed");
  assert.equal(ctx.clock.pending(), 0);
});

test("leave() closes from the client when the server does not", GUARD, async (t) => {
  const ctx = await setup(t);
  const conn = await enter(ctx, { epoch: E, head: 0 });
  const left = ctx.client.leave();
  assert.deepEqual(await conn.next(), { t: "leave" });
  const down = nextEvent(ctx.client, "disconnected");
  ctx.clock.tick(2000);
  const info = await left;
  assert.equal(info.code, 1000);
  assert.equal(info.left, true);
  assert.equal((await down)[0].reconnect, false);
  await conn.closed;
  assert.equal(ctx.clock.pending(), 0);
  assert.equal(ctx.server.connections.length, 1);
});

test("a new epoch in the welcome after a reconnect reloads instead of checking", GUARD, async (t) => {
  const ctx = await setup(t);
  const conn1 = await enter(ctx, { epoch: E, head: 5 });
  const reloads = collect(ctx.client, "reload");
  conn1.close(4003);
  await nextEvent(ctx.client, "reconnecting");
  ctx.clock.tick(500);
  const conn2 = await ctx.server.nextConnection();
  conn2.send(welcome({ epoch: E + 9, head: 2 }));
  assert.deepEqual(await conn2.next(), { t: "state" });
  assert.deepEqual(reloads, [{ reason: "epoch", epoch: E + 9, head: 2, previous: { e: E, head: 5 } }]);
  assert.equal(ctx.client.contiguous, 2);
  assert.deepEqual(await sentBefore(ctx.client, conn2, "x"), []);
});

test("the emitter: once, off, and off for a whole type", GUARD, async (t) => {
  const ctx = await setup(t);
  const conn = await enter(ctx, { epoch: E, head: 0 });
  const a = [];
  const b = [];
  const fa = (d) => a.push(d.text);
  ctx.client.on("say", fa);
  ctx.client.once("say", (d) => b.push(d.text));
  conn.send(say(E, 1, 0));
  await nextEvent(ctx.client, "say");
  ctx.client.off("say", fa);
  conn.send(say(E, 2, 1));
  await nextEvent(ctx.client, "say");
  assert.deepEqual(a, ["m1"]);
  assert.deepEqual(b, ["m1"]);
  ctx.client.off("say");
  assert.equal(ctx.client.listenerCount("say"), 0);
});

test("options are checked; Node 20 needs a WebSocket implementation passed in", () => {
  assert.throws(() => new RoomkitClient({ room: 1, ticket: "t", WebSocket }), TypeError);
  assert.throws(() => new RoomkitClient({ url: "ws://x/ws", WebSocket }), TypeError);
  assert.throws(() => new RoomkitClient({ url: "/ws", ticket: "t", WebSocket }), /relative URLs need a page/);
  if (typeof globalThis.WebSocket !== "function") {
    assert.throws(() => new RoomkitClient({ url: "ws://x/ws", ticket: "t" }), /WebSocket/);
  }
  const c = new RoomkitClient({ url: "ws://x/ws", ticket: "t", WebSocket });
  assert.equal(c.status, "idle");
  assert.equal(c.epoch, 0);
});
