// A small program against the package's types (`npm run typecheck`): it is
// compiled with `tsc --noEmit`, never run.

import WebSocket from "ws";
import {
  CloseCode,
  Kind,
  RoomkitClient,
  RoomkitError,
  isFinalClose,
  type CardData,
  type ClosedEvent,
  type Message,
  type RoomState,
  type Welcome,
} from "@roomkit/client";

// Node: the `ws` package as the WebSocket, a ticket per (re)connect.
const client = new RoomkitClient({
  url: "ws://127.0.0.1:8080/ws",
  room: 42,
  WebSocket,
  getTicket: async ({ attempt }) => {
    const r = await fetch(`http://127.0.0.1:8080/ticket?room=42&uin=101&role=student&attempt=${attempt}`);
    return ((await r.json()) as { ticket: string }).ticket;
  },
  reconnect: { initialDelayMs: 250, maxDelayMs: 5000 },
});

// A browser: the native WebSocket, a fixed ticket, no reconnects.
const inPage = new RoomkitClient({ url: "/ws", room: "42", ticket: "t", WebSocket: globalThis.WebSocket, reconnect: false });
inPage.close();

client
  .on("welcome", (w: Welcome) => console.log(w.uin, w.role, w.heartbeat_ms))
  .on("say", (data, m) => console.log(data.text, m.seq, m.recovered))
  .on("chat", ({ text }, m) => console.log(m.from, text))
  .on("card", (card: CardData) => {
    if (card.op === "open") console.log(card.options, card.seconds);
    else if (card.op === "result") console.log(card.correct, card.right);
  })
  .on("packet", (p) => (p.op === "state" ? p.taken : p.amount))
  .on("roster", (r) => r.list?.map((m) => `${m.uin} (${m.role})`))
  .on("roomState", (s: RoomState, m) => console.log(s.hands, s.card?.id, m === null))
  .on("custom", (data: unknown, m: Message) => console.log(m.kind, data))
  .on("reactions", ({ flowers, likes }) => flowers + likes)
  .on("error", (e) => console.log(e.code, e.message, e.local, e.retry_after_ms))
  .on("bye", ({ code, reason }) => console.log(code, reason))
  .on("reconnecting", ({ attempt, delayMs }) => console.log(attempt, delayMs))
  .on("closed", (c: ClosedEvent) => console.log(c.code, c.bye?.reason, isFinalClose(c.code), c.code === CloseCode.REPLACED))
  .on("status", (now, before) => console.log(before, "->", now))
  .on("push", (frame, recovered) => console.log(frame.c, frame.k, recovered))
  .on("ack", (a) => (a.r === "behind" ? a.last : 0));

async function main(): Promise<void> {
  const welcome = await client.connect();
  console.log(welcome.epoch, client.contiguous, client.status);
  client.chat("hello");
  client.react("flower", 2);
  client.raiseHand();
  client.custom(300, { x: 10, y: 20 });
  client.custom(301, { hint: "psst" }, 7);
  try {
    const option: number = await client.cardAnswer(0);
    const { amount } = await client.packetGrab(1);
    const page = await client.members({ limit: 50 });
    const state = await client.state();
    console.log(option, amount, page.next, state.flowers, Kind.CARD);
  } catch (e) {
    if (e instanceof RoomkitError) console.log(e.code, e.retryAfterMs);
  }
  const closed = await client.leave();
  console.log(closed.left);
}

void main();
