//! Helpers shared by room-push's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;

use bytes::Bytes;
use room_core::Timestamp;
use room_core::{BusinessId, Role, RoomId, RoomKey, Terminal, Uin};
use room_push::{ConnId, Connector, Frame, FrameHeader, Gate, GateConfig, Quota, SendError};

pub const ROOM: RoomKey = RoomKey::new(BusinessId(7), RoomId(1001));

/// Every frame each connection received, in order.
#[derive(Debug, Default)]
pub struct Recorder {
    pub frames: BTreeMap<ConnId, Vec<(FrameHeader, Bytes)>>,
}

impl Connector for Recorder {
    fn send(&mut self, frame: &Frame<'_>) -> Result<(), SendError> {
        self.frames.entry(frame.conn).or_default().push((frame.header, frame.body.clone()));
        Ok(())
    }
}

pub fn role_of(n: u8) -> Role {
    match n % 5 {
        0 => Role::Teacher,
        1 => Role::Assistant,
        2 => Role::Student,
        3 => Role::Observer,
        _ => Role::Custom(room_core::CustomRole::new(n % 60).expect("in range")),
    }
}

pub fn terminal_of(n: u8) -> Terminal {
    Terminal::ALL[usize::from(n) % Terminal::ALL.len()]
}

pub fn uin(n: u64) -> Uin {
    Uin(n)
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}

/// The payloads of a BinaryCodec message or chat batch body.
pub fn payloads(kind: room_push::FrameKind, body: &[u8]) -> Vec<Vec<u8>> {
    let line = |b: &[u8]| -> (Vec<u8>, usize) {
        let len = le_u32(&b[10..]) as usize;
        (b[14..14 + len].to_vec(), 14 + len)
    };
    match kind {
        room_push::FrameKind::ChatBatch => {
            let n = le_u32(body) as usize;
            let mut at = 4;
            let mut out = Vec::new();
            for _ in 0..n {
                let (p, used) = line(&body[at..]);
                out.push(p);
                at += used;
            }
            out
        }
        room_push::FrameKind::Message => vec![line(body).0],
        _ => Vec::new(),
    }
}

/// A message id carried as a 4-byte payload.
pub fn id_of(payload: &[u8]) -> u32 {
    le_u32(payload)
}

/// A quota no test traffic reaches.
pub fn generous() -> Quota {
    Quota::per_second(1_000_000).and_then(|q| q.with_burst(1_000_000)).expect("valid")
}

/// A gate with ROOM open and limits out of the way (tests of other things).
pub fn unlimited_gate(now: Timestamp) -> Gate {
    let mut config = GateConfig::default();
    config.room_chat_quota = generous();
    config.room_reliable_quota = generous();
    config.user_quota = generous();
    let mut gate = Gate::new(config);
    gate.open_room(now, ROOM).expect("room opens");
    gate
}
