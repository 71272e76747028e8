//! A synchronous one-node harness for the service's tests: the shared
//! cache, the limiter and the bus are answered inline, time is virtual.
#![allow(dead_code, unreachable_pub)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use room_core::{
    BusinessId, ClusterView, ConnId, NodeChange, NodeId, NodeState, Role, RoomId, RoomKey, Terminal, Timestamp, Uin,
};
use room_push::{InMemorySharedCache, LocalGlobalLimiter, SendError};
use room_service::host::{HostAnswer, HostError, HostRequest, RoomEvent};
use room_service::peer::CloseReason;
use room_service::transport::run_cache;
use room_service::{Admission, ClientSink, Outbound, Output, RoomNode, RoomNodeConfig};
use serde_json::Value;

pub const ROOM: RoomKey = RoomKey::new(BusinessId(1), RoomId(9));

#[derive(Default)]
pub struct Sink {
    pub frames: HashMap<ConnId, Vec<Outbound>>,
    pub closed: HashMap<ConnId, CloseReason>,
    /// Writers that take nothing (a client that stopped reading).
    pub full: HashSet<ConnId>,
    /// With log delivery: what each connection was handed, in order.
    pub handed: HashMap<ConnId, Vec<Handed>>,
}

/// What a connection's writer was handed (log delivery).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handed {
    Frame,
    Follow { from: u64 },
    Direct { seq: u64 },
}

impl ClientSink for Sink {
    fn send(&mut self, conn: ConnId, frame: Outbound) -> Result<(), SendError> {
        if self.full.contains(&conn) {
            return Err(SendError::WouldBlock);
        }
        self.frames.entry(conn).or_default().push(frame);
        self.handed.entry(conn).or_default().push(Handed::Frame);
        Ok(())
    }

    fn close(&mut self, conn: ConnId, reason: CloseReason) {
        self.closed.insert(conn, reason);
    }

    fn follow(&mut self, conn: ConnId, _: RoomKey, from: u64, _: room_push::Follower) {
        self.handed.entry(conn).or_default().push(Handed::Follow { from });
    }

    fn direct(&mut self, conn: ConnId, entry: &room_push::LogEntry) {
        let seq = entry.sequence().map_or(0, |(_, seq)| seq);
        self.handed.entry(conn).or_default().push(Handed::Direct { seq });
    }
}

pub struct One {
    pub node: RoomNode,
    pub cache: InMemorySharedCache,
    pub limiter: LocalGlobalLimiter,
    pub sink: Sink,
    pub now: Timestamp,
    /// Answers to host requests, by id.
    pub host_answers: HashMap<u64, Result<HostAnswer, HostError>>,
    /// Events the node told, in order.
    pub events: Vec<RoomEvent>,
}

impl One {
    pub fn new(configure: impl FnOnce(&mut RoomNodeConfig)) -> One {
        let mut config = RoomNodeConfig::new(NodeId(1));
        config.router = room_core::RouterConfig::new().with_slot_bits(10).expect("valid");
        configure(&mut config);
        let mut node = RoomNode::new(config).expect("valid config");
        let mut view = ClusterView::new();
        view.apply(NodeChange::Joined { node: NodeId(1), weight: 100 }).expect("joins");
        view.apply(NodeChange::StateChanged { node: NodeId(1), state: NodeState::Up }).expect("up");
        let now = Timestamp::from_millis(1_000_000);
        node.set_view(now, &view);
        let mut one = One {
            node,
            cache: InMemorySharedCache::default(),
            limiter: LocalGlobalLimiter::new(1 << 16),
            sink: Sink::default(),
            now,
            host_answers: HashMap::new(),
            events: Vec::new(),
        };
        one.pump();
        one
    }

    /// Carries out everything the node asks, until it asks for nothing.
    pub fn pump(&mut self) {
        self.pump_flushing(true);
    }

    /// [`pump`](Self::pump), handing nothing to the sink (the turn goes
    /// on until a flush).
    pub fn pump_unflushed(&mut self) {
        self.pump_flushing(false);
    }

    fn pump_flushing(&mut self, between: bool) {
        loop {
            if between {
                self.node.flush(self.now, &mut self.sink);
            }
            let mut any = false;
            while let Some(output) = self.node.poll_output() {
                any = true;
                match output {
                    Output::Publish(env) => self.node.handle_envelope(self.now, env),
                    Output::Cache { id, op } => {
                        let answer = futures::executor::block_on(run_cache(&self.cache, op));
                        self.node.handle_cache(self.now, id, answer);
                    }
                    Output::Limit { id, key, quota, cost } => {
                        let answer = self.limiter.check_now(&key, quota, self.now, cost);
                        self.node.handle_limit(self.now, id, answer);
                    }
                    Output::Interest { .. } => {}
                    Output::Host { id, answer } => {
                        self.host_answers.insert(id, answer);
                    }
                    Output::Event(event) => self.events.push(event),
                    other => panic!("a single node asks for nothing else: {other:?}"),
                }
            }
            if !any {
                break;
            }
        }
    }

    /// Lets `d` pass, running every timer on the way.
    pub fn advance(&mut self, d: Duration) {
        self.advance_flushing(d, true);
    }

    /// [`advance`](Self::advance), handing nothing to the sink.
    pub fn advance_unflushed(&mut self, d: Duration) {
        self.advance_flushing(d, false);
    }

    fn advance_flushing(&mut self, d: Duration, between: bool) {
        let end = self.now.saturating_add(d);
        while let Some(at) = self.node.poll_timeout().filter(|at| *at <= end) {
            self.now = self.now.max(at);
            self.node.handle_timeout(self.now);
            self.pump_flushing(between);
        }
        self.now = end;
        self.node.handle_timeout(self.now);
        self.pump_flushing(between);
    }

    /// Connects `uin` (a teacher on a PC, others on the web).
    pub fn connect(&mut self, uin: u64, role: Role) -> ConnId {
        let terminal = if role == Role::Teacher { Terminal::Pc } else { Terminal::Web };
        self.connect_on(uin, role, terminal)
    }

    /// A host's request, answered before this returns (one node answers
    /// inline).
    pub fn host(&mut self, request: HostRequest) -> Result<HostAnswer, HostError> {
        let id = self.node.host(self.now, request)?;
        self.pump();
        self.advance(Duration::from_millis(60));
        self.host_answers.remove(&id).expect("a host request is answered within 60 ms on one node")
    }

    /// Connects `uin` on `terminal`.
    pub fn connect_on(&mut self, uin: u64, role: Role, terminal: Terminal) -> ConnId {
        let conn = self.node.connect(self.now, Admission::new(ROOM, Uin(uin), role, terminal)).expect("enters");
        self.pump();
        self.advance(Duration::from_millis(60));
        conn
    }

    /// One text frame from a client.
    pub fn send(&mut self, conn: ConnId, text: &str) {
        let _ = self.node.handle_text(self.now, conn, text);
        self.pump();
    }

    /// Every frame `conn` got since the last call, as JSON (push frames
    /// rendered).
    pub fn take(&mut self, conn: ConnId) -> Vec<Value> {
        self.sink
            .frames
            .remove(&conn)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|f| serde_json::from_slice(&f.into_text()).ok())
            .collect()
    }
}

pub fn pushed(frames: &[Value], kind: u64) -> Vec<Value> {
    let mut out = Vec::new();
    for f in frames.iter().filter(|f| f["t"] == "push") {
        let items = match &f["b"] {
            Value::Array(a) => a.clone(),
            b => vec![b.clone()],
        };
        out.extend(items.into_iter().filter(|m| m["kind"] == kind).map(|m| m["data"].clone()));
    }
    out
}

pub fn codes(frames: &[Value]) -> Vec<String> {
    frames.iter().filter(|f| f["t"] == "error").filter_map(|f| f["code"].as_str().map(String::from)).collect()
}
