//! The governor's switching, and connectors by terminal.

mod support;

use std::time::Duration;

use room_core::{Role, Terminal, Timestamp, Uin};
use room_push::{
    ByTerminal, ConnSpec, Connector, Frame, Gate, GateConfig, Governor, GovernorConfig, Kind, Level, Load, Message,
    NodeConfig, PushNode, SendError, Thresholds,
};
use support::*;

fn config() -> GovernorConfig {
    GovernorConfig {
        thresholds: [
            Thresholds { queued_frames: 100, limiter_rejections: 10 },
            Thresholds { queued_frames: 1_000, limiter_rejections: 100 },
            Thresholds { queued_frames: 10_000, limiter_rejections: 1_000 },
        ],
        cooldown: Duration::from_secs(30),
    }
}

fn at(s: u64) -> Timestamp {
    Timestamp::from_millis(s * 1_000)
}

fn load(queued: u64, rejections: u64) -> Load {
    Load { queued_frames: queued, limiter_rejections: rejections }
}

#[test]
fn steps_up_at_once_and_down_one_level_per_cooldown() {
    let mut g = Governor::new(config());
    assert_eq!(g.observe(at(0), load(50, 0)), None);
    assert_eq!(g.observe(at(1), load(20_000, 0)), Some(Level::SignalOnly));
    // Calm: one level down per full cooldown, no flapping in between.
    assert_eq!(g.observe(at(2), load(0, 0)), None);
    assert_eq!(g.observe(at(31), load(0, 0)), None);
    assert_eq!(g.observe(at(32), load(0, 0)), Some(Level::DropLargeRoomChat));
    assert_eq!(g.observe(at(40), load(0, 0)), None);
    // A spike during the cooldown restarts it.
    assert_eq!(g.observe(at(50), load(2_000, 0)), None);
    assert_eq!(g.observe(at(75), load(0, 0)), None);
    assert_eq!(g.observe(at(100), load(0, 0)), None);
    assert_eq!(g.observe(at(105), load(0, 0)), Some(Level::MergeHarder));
    assert_eq!(g.observe(at(140), load(0, 0)), Some(Level::Normal));
    // Rejections alone also count.
    assert_eq!(g.observe(at(141), load(0, 150)), Some(Level::DropLargeRoomChat));
}

#[test]
fn a_pinned_level_overrides_samples() {
    let mut g = Governor::new(config());
    assert_eq!(g.pin(Some(Level::MergeHarder)), Some(Level::MergeHarder));
    assert_eq!(g.observe(at(1), load(50_000, 0)), None);
    assert_eq!(g.level(), Level::MergeHarder);
    assert_eq!(g.pin(None), None, "unpinning keeps the level until samples move it");
    assert_eq!(g.observe(at(2), load(50_000, 0)), Some(Level::SignalOnly));
}

#[test]
fn level_codes_round_trip() {
    for l in Level::ALL {
        assert_eq!(Level::from_code(l.code()), Some(l));
    }
    assert_eq!(Level::from_code(9), None);
}

#[derive(Default)]
struct Named(Vec<Terminal>);

impl Connector for Named {
    fn send(&mut self, frame: &Frame<'_>) -> Result<(), SendError> {
        self.0.push(frame.terminal);
        Ok(())
    }
}

#[test]
fn frames_go_to_the_connector_of_their_terminal() {
    let now = Timestamp::from_millis(1_000);
    let mut gate = Gate::new(GateConfig::default());
    gate.open_room(now, ROOM).expect("opens");
    let mut node = PushNode::new(NodeConfig::default());
    for (n, t) in [Terminal::Web, Terminal::Ios, Terminal::Android, Terminal::Pc].into_iter().enumerate() {
        node.connect(ConnSpec::new(ROOM, Uin(n as u64), Role::Student, t)).expect("connects");
    }
    let env = gate.publish(now, Message::new(ROOM, room_push::Class::Signal, Kind(1), vec![1])).expect("ok");
    node.handle_envelope(now, &env).expect("handled");
    let mut by = ByTerminal::new(Named::default());
    by.set(Terminal::Ios, Named::default());
    by.set(Terminal::Android, Named::default());
    assert_eq!(node.flush(now, &mut by), 4);
    let mut fallback = by.fallback().0.clone();
    fallback.sort();
    assert_eq!(fallback, vec![Terminal::Web, Terminal::Pc]);
    assert_eq!(by.get(Terminal::Ios).map(|c| c.0.clone()), Some(vec![Terminal::Ios]));
    assert_eq!(by.get(Terminal::Android).map(|c| c.0.clone()), Some(vec![Terminal::Android]));
    assert!(by.get(Terminal::Web).is_none());
}
