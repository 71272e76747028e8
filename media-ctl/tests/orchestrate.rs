//! The orchestration state machine: the commands a class produces, retries
//! with the same id and backoff, idempotent callbacks, and typed refusals.

use std::collections::BTreeMap;

use proptest::prelude::*;
use room_core::Timestamp;
use room_media_ctl::layout::Template;
use room_media_ctl::orchestrate::{
    Action, BackendEvent, Command, CommandId, CommandKind, CommandState, HostEvent, OrchestrateError, Orchestrator,
    OrchestratorConfig, SessionEvent, StreamKind,
};

fn t(ms: u64) -> Timestamp {
    Timestamp::from_millis(1_000_000 + ms)
}

fn drain(o: &mut Orchestrator) -> (Vec<Command>, Vec<SessionEvent>) {
    let (mut cmds, mut events) = (Vec::new(), Vec::new());
    while let Some(a) = o.poll_action() {
        match a {
            Action::Command(c) => cmds.push(c),
            Action::Event(e) => events.push(e),
            _ => {}
        }
    }
    (cmds, events)
}

fn config() -> OrchestratorConfig {
    OrchestratorConfig { relay_targets: vec!["rtmp://cdn.example/live".into()], ..OrchestratorConfig::default() }
}

#[test]
fn a_class_from_start_to_playback() {
    let mut o = Orchestrator::new(config());
    assert_eq!(
        o.handle_host(t(0), HostEvent::StreamUp { stream: "t".into(), kind: StreamKind::TeacherCamera }),
        Err(OrchestrateError::NotRunning)
    );
    o.handle_host(t(0), HostEvent::ClassStarted).expect("starts");
    o.handle_host(t(0), HostEvent::StreamUp { stream: "t".into(), kind: StreamKind::TeacherCamera }).expect("up");
    o.handle_host(t(10), HostEvent::StreamUp { stream: "s".into(), kind: StreamKind::Slides }).expect("up");
    let (cmds, events) = drain(&mut o);
    let kinds: Vec<&CommandKind> = cmds.iter().map(|c| &c.kind).collect();
    assert!(matches!(kinds[0], CommandKind::StartRelay { .. }));
    assert!(matches!(kinds[1], CommandKind::StartRecording { .. }));
    assert!(matches!(kinds[2], CommandKind::Mix { template: Template::Single { .. }, .. }));
    assert!(matches!(kinds[5], CommandKind::Mix { template: Template::PictureInPicture { .. }, .. }));
    assert_eq!(events.len(), 2);
    assert_eq!(
        o.handle_host(t(10), HostEvent::StreamUp { stream: "s".into(), kind: StreamKind::Slides }),
        Err(OrchestrateError::AlreadyUp("s".into()))
    );
    for c in &cmds {
        o.handle_backend(t(20), BackendEvent::Accepted(c.id)).expect("known");
        o.handle_backend(t(20), BackendEvent::Succeeded(c.id)).expect("known");
        o.handle_backend(t(21), BackendEvent::Succeeded(c.id)).expect("a repeat changes nothing");
        assert_eq!(o.command(c.id), Some(&CommandState::Done));
    }
    o.handle_host(t(30), HostEvent::ClassEnded).expect("ends");
    let (cmds, events) = drain(&mut o);
    assert!(events.is_empty(), "not ready before the recordings stop");
    let stops: Vec<CommandId> =
        cmds.iter().filter(|c| matches!(c.kind, CommandKind::StopRecording { .. })).map(|c| c.id).collect();
    assert_eq!(stops.len(), 2);
    o.handle_backend(t(40), BackendEvent::Succeeded(stops[0])).expect("known");
    assert!(drain(&mut o).1.is_empty());
    o.handle_backend(t(41), BackendEvent::Succeeded(stops[1])).expect("known");
    let (cmds, events) = drain(&mut o);
    assert_eq!(events, vec![SessionEvent::ReadyForPlayback]);
    assert!(matches!(cmds[0].kind, CommandKind::Transcode));
    assert_eq!(
        o.handle_backend(t(50), BackendEvent::Accepted(CommandId(999))),
        Err(OrchestrateError::UnknownCommand(CommandId(999)))
    );
}

#[test]
fn unacknowledged_commands_are_retried_with_the_same_id_then_given_up() {
    let mut o = Orchestrator::new(OrchestratorConfig::default());
    o.handle_host(t(0), HostEvent::ClassStarted).expect("starts");
    o.handle_host(t(0), HostEvent::StreamUp { stream: "t".into(), kind: StreamKind::TeacherCamera }).expect("up");
    let (cmds, _) = drain(&mut o);
    let rec = cmds.iter().find(|c| matches!(c.kind, CommandKind::StartRecording { .. })).expect("recording").clone();
    let mut sends = vec![(0u64, rec.attempt)];
    while let Some(at) = o.poll_timeout() {
        let now = at.as_millis() - 1_000_000;
        o.handle_timeout(at);
        for c in drain(&mut o).0 {
            if c.id == rec.id {
                assert_eq!(c.kind, rec.kind);
                sends.push((now, c.attempt));
            }
        }
        if now > 3_600_000 {
            break;
        }
    }
    // Six attempts: ack timeout 10 s, then backoff 1, 2, 4, 8, 16 s.
    let attempts: Vec<u32> = sends.iter().map(|s| s.1).collect();
    assert_eq!(attempts, vec![1, 2, 3, 4, 5, 6]);
    let times: Vec<u64> = sends.iter().map(|s| s.0).collect();
    assert_eq!(times, vec![0, 11_000, 23_000, 37_000, 55_000, 81_000]);
    assert!(matches!(o.command(rec.id), Some(CommandState::Failed { .. })));
}

proptest! {
    /// Whatever the backend answers, and however often: every command ends
    /// done or failed once time runs on, attempts never exceed the limit,
    /// and a resend is always the same command.
    #[test]
    fn every_command_settles(answers in proptest::collection::vec((0u8..5, 0usize..8, 0u64..20_000), 0..80)) {
        let mut o = Orchestrator::new(config());
        o.handle_host(t(0), HostEvent::ClassStarted).expect("starts");
        o.handle_host(t(0), HostEvent::StreamUp { stream: "t".into(), kind: StreamKind::TeacherCamera }).expect("up");
        o.handle_host(t(0), HostEvent::StreamUp { stream: "s".into(), kind: StreamKind::Slides }).expect("up");
        let mut seen: BTreeMap<CommandId, CommandKind> = BTreeMap::new();
        let mut now = 0;
        let check = |o: &mut Orchestrator, seen: &mut BTreeMap<CommandId, CommandKind>| -> Result<(), TestCaseError> {
            for c in drain(o).0 {
                prop_assert!(c.attempt <= OrchestratorConfig::default().max_attempts);
                if let Some(k) = seen.get(&c.id) {
                    prop_assert_eq!(k, &c.kind);
                } else {
                    seen.insert(c.id, c.kind);
                }
            }
            Ok(())
        };
        check(&mut o, &mut seen)?;
        for (what, which, dt) in answers {
            now += dt;
            o.handle_timeout(t(now));
            check(&mut o, &mut seen)?;
            let Some(id) = seen.keys().nth(which % seen.len().max(1)).copied() else { continue };
            let event = match what {
                0 => BackendEvent::Accepted(id),
                1 | 2 => BackendEvent::Succeeded(id),
                3 => BackendEvent::Failed { id, reason: "busy".into(), retry: true },
                _ => BackendEvent::Failed { id, reason: "bad input".into(), retry: false },
            };
            o.handle_backend(t(now), event).expect("known id");
            check(&mut o, &mut seen)?;
        }
        o.handle_host(t(now), HostEvent::ClassEnded).expect("ends");
        check(&mut o, &mut seen)?;
        // Let time run out: everything still requested is retried to the end.
        for _ in 0..200 {
            let Some(at) = o.poll_timeout() else { break };
            o.handle_timeout(at);
            check(&mut o, &mut seen)?;
        }
        for (_, _, state) in o.commands() {
            prop_assert!(!matches!(state, CommandState::Requested { .. }), "left requested: {:?}", state);
        }
    }
}
