// The client against the real classroom server (examples/classroom): built
// with cargo once, run on a free port, killed after. Set
// ROOMKIT_CLASSROOM_BIN to a built binary to skip the build.

import test, { before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";
import path from "node:path";
import WebSocket from "ws";
import { RoomkitClient, RoomkitError } from "../../roomkit.js";
import { nextEvent } from "../helpers.js";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PACKAGE = path.resolve(HERE, "../..");
const WORKSPACE = path.resolve(PACKAGE, "../..");
const GUARD = { timeout: 60_000 }; // only against hanging

/** The classroom binary: ROOMKIT_CLASSROOM_BIN, or what cargo builds. */
function classroomBinary() {
  if (process.env.ROOMKIT_CLASSROOM_BIN) return process.env.ROOMKIT_CLASSROOM_BIN;
  const built = spawnSync(
    "cargo",
    ["build", "-p", "examples", "--example", "classroom", "--message-format=json-render-diagnostics"],
    { cwd: WORKSPACE, encoding: "utf8", stdio: ["ignore", "pipe", "inherit"], maxBuffer: 512 * 1024 * 1024 },
  );
  assert.equal(built.status, 0, "cargo build -p examples --example classroom failed");
  for (const line of built.stdout.split("\n")) {
    if (!line.startsWith("{")) continue;
    const msg = JSON.parse(line);
    if (msg.reason === "compiler-artifact" && msg.target?.name === "classroom" && msg.executable) return msg.executable;
  }
  throw new Error("cargo did not say where the classroom binary is");
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

let server = null;
let addr = "";
// The host API (docs/HOST_API.md) is on, for kicks and room closes.
const API_KEY = `integration-${process.pid}-${Date.now()}-key`;

before(
  async () => {
    const bin = classroomBinary();
    const port = await freePort();
    addr = `127.0.0.1:${port}`;
    server = spawn(bin, [], {
      env: { ...process.env, ROOMKIT_ADDR: addr, RUST_LOG: "warn", ROOMKIT_API_KEY: API_KEY },
      stdio: ["ignore", "inherit", "inherit"],
    });
    const exited = new Promise((resolve) => server.once("exit", (code) => resolve(code)));
    // Wait until it answers (the test's guard bounds the wait).
    for (;;) {
      const gone = await Promise.race([exited, new Promise((r) => setTimeout(() => r(undefined), 100))]);
      if (gone !== undefined) throw new Error(`the classroom server exited (${gone})`);
      try {
        const r = await fetch(`http://${addr}/healthz`);
        if (r.ok) break;
      } catch {
        // not listening yet
      }
    }
  },
  { timeout: 30 * 60_000 },
);

after(() => {
  server?.kill("SIGTERM");
});

/** A ticket from the demo backend. */
async function ticket(room, uin, role) {
  const r = await fetch(`http://${addr}/ticket?room=${room}&uin=${uin}&role=${role}&terminal=web`);
  assert.equal(r.status, 200);
  const body = await r.json();
  assert.equal(typeof body.ticket, "string");
  return body.ticket;
}

/** A client of `room` as `uin` (`gate`: while set, getTicket waits for it). */
function member(room, uin, role, extra = {}) {
  const holder = { gate: null, tickets: 0 };
  const client = new RoomkitClient({
    url: `http://${addr}/ws`,
    room,
    WebSocket,
    getTicket: async () => {
      if (holder.gate) await holder.gate;
      holder.tickets += 1;
      return ticket(room, uin, role);
    },
    reconnect: { initialDelayMs: 50, maxDelayMs: 1000 },
    ...extra,
  });
  holder.client = client;
  return holder;
}

let nextRoom = 7000 + (process.pid % 1000) * 10;

test("the server serves the SDK at /roomkit.js as it is in clients/js", GUARD, async () => {
  const r = await fetch(`http://${addr}/roomkit.js`);
  assert.equal(r.status, 200);
  assert.match(r.headers.get("content-type") ?? "", /^text\/javascript/);
  assert.equal(await r.text(), readFileSync(path.join(PACKAGE, "roomkit.js"), "utf8"));
  const page = await (await fetch(`http://${addr}/`)).text();
  assert.match(page, /from "\/roomkit\.js"/, "the classroom page uses the SDK");
});

test("a teacher and a student: words, a card and its answer, a reconnect that recovers, and a leave", GUARD, async (t) => {
  const room = nextRoom++;
  const { client: teacher } = member(room, 1, "teacher");
  const studentHolder = member(room, 101, "student");
  const student = studentHolder.client;
  t.after(() => {
    teacher.close();
    student.close();
  });

  const tw = await teacher.connect();
  assert.equal(tw.role, "teacher");
  assert.equal(tw.uin, 1);
  const inRoster = nextEvent(teacher, "roster", (r) => r.student === 1 && r.teacher === 1);
  const sw = await student.connect();
  assert.equal(sw.role, "student");
  assert.equal(sw.epoch, tw.epoch);
  const [roster] = await inRoster;
  assert.deepEqual(roster.list?.map((m) => m.uin).sort((a, b) => a - b), [1, 101]);

  // The teacher says something; the student hears it, in sequence.
  const heard = nextEvent(student, "say", (d) => d.text === "open your books at page 3");
  assert.equal(teacher.say("open your books at page 3"), true);
  const [, m] = await heard;
  assert.equal(m.from, 1);
  assert.equal(m.class, "teacher");
  assert.equal(m.recovered, false);
  assert.equal(student.contiguous, m.seq);

  // A card: opened by the teacher, answered by the student, tallied, closed.
  const opened = nextEvent(student, "card", (d) => d.op === "open");
  teacher.cardOpen({ options: 4, correct: 2 });
  const [card] = await opened;
  assert.equal(card.options, 4);
  const tallied = nextEvent(teacher, "card", (d) => d.op === "tally" && d.tally[2] === 1);
  assert.equal(await student.cardAnswer(2), 2);
  assert.equal(await student.cardAnswer(2), 2, "a repeat is answered as the first");
  await tallied;
  await assert.rejects(student.cardAnswer(1), (e) => e instanceof RoomkitError && e.code === "refused");
  const result = nextEvent(student, "card", (d) => d.op === "result");
  teacher.cardClose();
  const [res] = await result;
  assert.deepEqual([res.id, res.correct, res.answered, res.right], [card.id, 2, 1, 1]);

  // Chat, reads, and refusals as error events.
  const chatted = nextEvent(teacher, "chat", (d) => d.text === "done!");
  student.chat("done!");
  assert.equal((await chatted)[1].from, 101);
  const page = await teacher.members({ limit: 10 });
  assert.deepEqual(page.rows.map((r) => r.uin).sort((a, b) => a - b), [1, 101]);
  const state = await student.state();
  assert.equal(state.card, null);
  const refused = nextEvent(student, "error", (e) => e.code === "not_allowed");
  student.cardOpen({ options: 3 });
  assert.equal((await refused)[0].local, false);
  const unknown = nextEvent(teacher, "error", (e) => e.code === "unknown_kind");
  teacher.custom(300, { x: 1 });
  await unknown;

  // The student's network drops; the teacher speaks meanwhile; the student
  // comes back (fresh ticket) and recovers it with a check.
  let open;
  studentHolder.gate = new Promise((resolve) => {
    open = resolve;
  });
  const down = nextEvent(student, "disconnected");
  student.reconnect();
  assert.equal((await down)[0].reconnect, true);
  teacher.say("while you were away");
  await teacher.state(); // the room has taken the words by the time this is answered
  const recovered = nextEvent(student, "say", (d) => d.text === "while you were away");
  const back = nextEvent(student, "connected");
  const ticketsBefore = studentHolder.tickets;
  studentHolder.gate = null;
  open();
  assert.equal((await back)[0].resumed, true);
  const [, rm] = await recovered;
  assert.equal(rm.recovered, true, "it came in a recover answer");
  assert.equal(studentHolder.tickets, ticketsBefore + 1);
  assert.equal(student.contiguous, rm.seq);

  // Leave: closed with 1000, no reconnect, and the teacher sees the student go.
  const gone = nextEvent(teacher, "roster", (r) => r.student === 0);
  const closed = await student.leave();
  assert.equal(closed.code, 1000);
  assert.equal(closed.left, true);
  assert.equal(student.status, "closed");
  const [after] = await gone;
  assert.deepEqual(after.left, [101]);
  await teacher.leave();
});

test("a second connection of the same member replaces the first, which does not reconnect", GUARD, async (t) => {
  const room = nextRoom++;
  const { client: first } = member(room, 201, "student");
  const { client: second } = member(room, 201, "student");
  t.after(() => {
    first.close();
    second.close();
  });
  await first.connect();
  const closed = nextEvent(first, "closed");
  const reconnecting = [];
  first.on("reconnecting", (r) => reconnecting.push(r));
  await second.connect();
  const [info] = await closed;
  assert.equal(info.code, 4002);
  assert.equal(first.status, "closed");
  assert.deepEqual(reconnecting, []);
  // The second stays: it can still be answered.
  const state = await second.state();
  assert.deepEqual(state.hands, []);
  assert.equal(second.status, "connected");
  await second.leave();
});

/** A host API call on `room` (the demo's business id is 1). */
async function host(room, route, body) {
  const r = await fetch(`http://${addr}/api/v1/businesses/1/rooms/${room}${route}`, {
    method: "POST",
    headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  assert.equal(r.status, 200, await r.clone().text());
  return r.json();
}

test("the host's own messages, a kick with its reason, a banned entry, and a room closed", GUARD, async (t) => {
  const room = nextRoom++;
  const { client: teacher } = member(room, 1, "teacher");
  const { client: kicked } = member(room, 301, "student");
  const { client: stays } = member(room, 302, "student");
  t.after(() => {
    for (const c of [teacher, kicked, stays]) c.close();
  });
  await teacher.connect();
  await kicked.connect();
  await stays.connect();

  // A notice the host publishes reaches clients as a custom kind, numbered.
  const notice = nextEvent(stays, "custom", (data, m) => m.kind === 300);
  await host(room, "/messages", { kind: 300, class: "teacher", data: { text: "class starts in 1 minute" } });
  const [data, m] = await notice;
  assert.deepEqual(data, { text: "class starts in 1 minute" });
  assert.equal(m.from, 0);
  assert.equal(stays.contiguous, m.seq);

  // Kicked with a reason (and banned a while): bye, 4005, no reconnect.
  const reconnecting = [];
  kicked.on("reconnecting", (r) => reconnecting.push(r));
  const kickedClosed = nextEvent(kicked, "closed");
  await host(room, "/members/301/kick", { reason: "disruptive", ban_seconds: 60 });
  const [k] = await kickedClosed;
  assert.equal(k.code, 4005);
  assert.deepEqual(k.bye, { code: 4005, reason: "disruptive" });
  assert.deepEqual(reconnecting, []);
  // Coming back while banned is refused (4001), and that is final too.
  await assert.rejects(kicked.connect(), (e) => e instanceof RoomkitError && e.code === "gone");
  assert.equal(kicked.status, "closed");
  const refusal = kicked._closedInfo;
  assert.equal(refusal.code, 4001);
  assert.equal(refusal.error?.code, "banned");
  assert.deepEqual(reconnecting, []);

  // The room closes: everyone gets the reason and 4006.
  const closedT = nextEvent(teacher, "closed");
  const closedS = nextEvent(stays, "closed");
  await host(room, "/close", { reason: "class is over" });
  for (const [c] of [await closedT, await closedS]) {
    assert.equal(c.code, 4006);
    assert.deepEqual(c.bye, { code: 4006, reason: "class is over" });
  }
  assert.equal(teacher.status, "closed");
  assert.equal(stays.status, "closed");
});
