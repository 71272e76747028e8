// The recovery rules alone (docs/PROTOCOL.md, "Recovery"), as Rust's
// ReliableReceiver has them.

import test from "node:test";
import assert from "node:assert/strict";
import { ReliableReceiver, isFinalClose, FINAL_CLOSE_CODES } from "../../roomkit.js";

const E = 1795949906207321;
const frame = (s, p, over = {}) => ({ c: "signal", k: "msg", e: E, s, p, ...over });

test("in-order frames are delivered and move contiguous", () => {
  const rx = new ReliableReceiver(E, 0);
  assert.equal(rx.onFrame(frame(1, 0)), "deliver");
  assert.equal(rx.onFrame(frame(2, 1)), "deliver");
  assert.equal(rx.contiguous, 2);
});

test("a frame whose prev is past contiguous is a gap: check, and nothing moves", () => {
  const rx = new ReliableReceiver(E, 5);
  assert.equal(rx.onFrame(frame(9, 8)), "check");
  assert.equal(rx.contiguous, 5);
  // prev may skip numbers that were not for this connection.
  assert.equal(rx.onFrame(frame(9, 5)), "deliver");
  assert.equal(rx.contiguous, 9);
});

test("after a welcome, what its head covers is not owed, and the next frame may name a prev below it", () => {
  // The welcome said head 10. A node whose push layer had not yet seen
  // the room's latest numbers may send a frame numbered at the entry
  // (covered by the head), then one whose prev is below the head.
  const rx = new ReliableReceiver(E, 10);
  assert.equal(rx.onFrame(frame(9, 0)), "duplicate");
  assert.equal(rx.onFrame(frame(12, 7)), "deliver");
  assert.equal(rx.contiguous, 12);
  assert.equal(rx.onFrame(frame(14, 13)), "check");
});

test("duplicates, other epochs, resyncs and unsequenced classes", () => {
  const rx = new ReliableReceiver(E, 5);
  assert.equal(rx.onFrame(frame(5, 4)), "duplicate");
  assert.equal(rx.onFrame(frame(3, 2)), "duplicate");
  assert.equal(rx.onFrame(frame(6, 5, { e: E + 1 })), "check");
  assert.equal(rx.onFrame({ c: "signal", k: "resync", e: E, s: 0, p: 0 }), "check");
  assert.equal(rx.onFrame({ c: "chat", k: "batch", e: 0, s: 0, p: 0 }), "unsequenced");
  assert.equal(rx.onFrame({ c: "reaction", k: "reactions", e: 0, s: 0, p: 0 }), "unsequenced");
  assert.equal(rx.contiguous, 5);
});

test("a recover delivers what is after contiguous, in order, then takes upto", () => {
  const rx = new ReliableReceiver(E, 2);
  const got = rx.onRecover({ e: E, upto: 9, frames: [frame(5, 4), frame(2, 1), frame(3, 2), frame(4, 3)] });
  assert.deepEqual(
    got.map((f) => f.s),
    [3, 4, 5],
  );
  assert.equal(rx.contiguous, 9);
  // An answer from another epoch delivers nothing.
  assert.deepEqual(rx.onRecover({ e: E + 1, upto: 20, frames: [frame(10, 9, { e: E + 1 })] }), []);
  assert.equal(rx.contiguous, 9);
});

test("a reset continues from head in e; a late copy is ignored", () => {
  const rx = new ReliableReceiver(E, 7);
  assert.equal(rx.onReset({ e: E, head: 7 }), false);
  assert.equal(rx.onReset({ e: E, head: 3 }), false);
  assert.equal(rx.contiguous, 7);
  assert.equal(rx.onReset({ e: E + 1, head: 2 }), true);
  assert.equal(rx.epoch, E + 1);
  assert.equal(rx.contiguous, 2);
});

test("ack replies: behind past contiguous or reset ask for a check", () => {
  const rx = new ReliableReceiver(E, 7);
  assert.equal(rx.onAckReply({ r: "ok" }), false);
  assert.equal(rx.onAckReply({ r: "behind", last: 7 }), false);
  assert.equal(rx.onAckReply({ r: "behind", last: 8 }), true);
  assert.equal(rx.onAckReply({ r: "reset", e: E + 1, head: 0 }), true);
});

test("the close codes that mean do not reconnect", () => {
  assert.deepEqual([...FINAL_CLOSE_CODES].sort(), [1000, 4001, 4002, 4005, 4006]);
  for (const code of [1000, 4001, 4002, 4005, 4006]) assert.equal(isFinalClose(code), true, `${code}`);
  for (const code of [1001, 1005, 1006, 1009, 1011, 4003, 4004]) assert.equal(isFinalClose(code), false, `${code}`);
});
