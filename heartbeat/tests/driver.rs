//! The tokio driver on tokio's paused clock: real timers, no real waiting.
#![cfg(feature = "tokio")]

use std::time::Duration;

use room_core::{ExitReason, MemberChange, MemberKey, NodeId, Terminal, Timestamp};
use room_heartbeat::driver::spawn_server;
use room_heartbeat::{ConnId, HeartbeatServer, JoinOutcome, ProbeAnswer, ServerConfig, ServerOutput};
use tokio::sync::mpsc;
use tokio::time::Instant;

fn single_server() -> HeartbeatServer {
    let me = NodeId(1);
    HeartbeatServer::new(Timestamp::ZERO, me, &[(me, 100)], &[], ServerConfig::default()).unwrap()
}

fn member() -> MemberKey {
    "7/100/42".parse().unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_silent_member_is_probed_after_its_timeout_and_exits_on_the_answer() {
    let (tx, mut outputs) = mpsc::channel(64);
    let (handle, task) = spawn_server(single_server(), tx, 64);
    let started = Instant::now();
    let joined = handle.join(member(), Terminal::Web, ConnId(5)).await.unwrap().unwrap();
    assert_eq!(joined.outcome, JoinOutcome::Entered);
    assert!(matches!(outputs.recv().await, Some(ServerOutput::Event(e)) if e.change == MemberChange::Entered));

    let probe = match outputs.recv().await {
        Some(ServerOutput::Probe(p)) => p,
        other => panic!("expected a probe, got {other:?}"),
    };
    assert_eq!(probe.suspect.conn, ConnId(5));
    let silent = started.elapsed();
    assert!(silent >= Duration::from_secs(60) && silent <= Duration::from_secs(62), "probed after {silent:?}");

    handle.probe_answer(probe.id, ProbeAnswer::Gone).await.unwrap().unwrap();
    match outputs.recv().await {
        Some(ServerOutput::Event(e)) => {
            assert_eq!(e.member, member());
            assert_eq!(e.change, MemberChange::Exited(ExitReason::TimedOut));
        }
        other => panic!("expected the exit, got {other:?}"),
    }
    drop(handle);
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_beating_member_is_never_probed() {
    let (tx, mut outputs) = mpsc::channel(64);
    let (handle, task) = spawn_server(single_server(), tx, 64);
    let mut hint = handle.join(member(), Terminal::Ios, ConnId(9)).await.unwrap().unwrap().hint;
    assert!(matches!(outputs.recv().await, Some(ServerOutput::Event(_))));
    for _ in 0..9 {
        tokio::time::sleep(Duration::from_secs(20)).await;
        hint = handle.beat(member(), Terminal::Ios, ConnId(9), hint).await.unwrap().unwrap().hint;
    }
    // Three minutes of beats: nothing came out.
    assert!(outputs.try_recv().is_err());
    assert_eq!(handle.leave(member(), Terminal::Ios, ConnId(9)).await.unwrap(), room_heartbeat::LeaveOutcome::Exited);
    assert!(
        matches!(outputs.recv().await, Some(ServerOutput::Event(e)) if e.change == MemberChange::Exited(ExitReason::Left))
    );
    drop(handle);
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_proxy_routes_around_a_silent_server() {
    use room_heartbeat::{DetectorConfig, Proxy, driver::spawn_proxy};
    let servers = [(NodeId(1), 100), (NodeId(2), 100)];
    let proxy = Proxy::new(
        Timestamp::ZERO,
        &servers,
        room_core::RouterConfig::new().with_slot_bits(10).unwrap(),
        DetectorConfig::default(),
    )
    .unwrap();
    let (handle, task) = spawn_proxy(proxy, 16);
    // Find a member that server 2 owns while both are up.
    let mut owned_by_2 = None;
    for uin in 0..1_000u64 {
        let m: MemberKey = format!("1/1/{uin}").parse().unwrap();
        if handle.route(m).await.unwrap() == Ok(NodeId(2)) {
            owned_by_2 = Some(m);
            break;
        }
    }
    let m = owned_by_2.expect("server 2 owns some member");
    // Server 1 keeps beating; server 2 falls silent.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        handle.server_heartbeat(NodeId(1)).await.unwrap();
    }
    assert_eq!(handle.route(m).await.unwrap(), Ok(NodeId(1)), "routed around the silent server");
    // Server 2 comes back: its members return to it.
    handle.server_heartbeat(NodeId(2)).await.unwrap();
    assert_eq!(handle.route(m).await.unwrap(), Ok(NodeId(2)));
    drop(handle);
    task.await.unwrap();
}

/// Says every connection is gone, after a delay; the first call hangs past
/// the reverse check's answer timeout, so it must be retried.
struct SlowGateway {
    calls: std::sync::atomic::AtomicU32,
}

#[async_trait::async_trait]
impl room_heartbeat::driver::PresenceProbe for SlowGateway {
    async fn is_alive(&self, _suspect: &room_heartbeat::Suspect) -> ProbeAnswer {
        let call = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let delay = if call == 0 { Duration::from_secs(30) } else { Duration::from_millis(50) };
        tokio::time::sleep(delay).await;
        ProbeAnswer::Gone
    }
}

#[tokio::test(start_paused = true)]
async fn a_presence_probe_answers_the_reverse_check_even_when_it_hangs_once() {
    use room_heartbeat::driver::spawn_server_with_probe;
    let gateway = std::sync::Arc::new(SlowGateway { calls: Default::default() });
    let (tx, mut outputs) = mpsc::channel(64);
    let (handle, task) = spawn_server_with_probe(single_server(), tx, 64, gateway.clone());
    let started = Instant::now();
    handle.join(member(), Terminal::Web, ConnId(3)).await.unwrap().unwrap();
    assert!(matches!(outputs.recv().await, Some(ServerOutput::Event(e)) if e.change == MemberChange::Entered));
    // No probe reaches the output channel; the exit does, once the second
    // (prompt) probe answered.
    match outputs.recv().await {
        Some(ServerOutput::Event(e)) => assert_eq!(e.change, MemberChange::Exited(ExitReason::TimedOut)),
        other => panic!("expected the exit, got {other:?}"),
    }
    assert_eq!(gateway.calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    let took = started.elapsed();
    // 60 s timeout, a 2 s answer timeout, 0.5 s backoff, 50 ms answer.
    assert!(took >= Duration::from_millis(62_500) && took <= Duration::from_secs(64), "exit after {took:?}");
    drop(handle);
    task.await.unwrap();
}

#[test]
fn bad_server_lists_are_refused_with_the_real_reason() {
    use room_core::RouterError;
    use room_heartbeat::ServerError;
    let me = NodeId(1);
    let err = |servers: &[(NodeId, u32)]| {
        HeartbeatServer::new(Timestamp::ZERO, me, servers, &[], ServerConfig::default()).unwrap_err()
    };
    assert_eq!(err(&[(me, 0)]), ServerError::Router(RouterError::ZeroWeight(me)));
    assert_eq!(err(&[(me, 100), (me, 100)]), ServerError::Router(RouterError::DuplicateNode(me)));
    assert_eq!(err(&[(NodeId(2), 100)]), ServerError::NotAServer(me));
}
