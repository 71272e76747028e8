//! Memory stays bounded under clients that take without giving: readers
//! that never read while asking for everything again, and sockets that
//! never finish their handshake. Prints the process's resident memory
//! (server and clients share the process).

use std::sync::Arc;
use std::time::{Duration, Instant};

use examples::classroom::demo_ticket;
use examples::edge::{Limits, serve_with};
use futures::{SinkExt, StreamExt};
use room_core::{Role, Terminal};
use roomkit::service::{RoomService, ServiceConfig};
use roomkit::ticket::KeyRing;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

fn keys() -> KeyRing {
    KeyRing::new("bounds", b"bounds-test-key-0123456789".to_vec()).expect("valid")
}

/// The process's resident memory, in MiB.
fn rss_mib() -> f64 {
    room_testkit::resident_mib().expect("this test reads /proc/self/status (Linux)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_that_never_read_and_sockets_that_never_finish_are_let_go() {
    let mut config = ServiceConfig::new(keys());
    config.node.slow_client_lag = Duration::from_secs(3);
    let service = RoomService::start(config).await.expect("starts");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut limits = Limits::default();
    limits.header_timeout = Duration::from_secs(2);
    limits.per_ip = 10_000;
    let addr = serve_with(listener, service.clone(), Arc::new(keys()), None, limits).expect("serves");
    let url = |uin: u64, role: Role| {
        format!("ws://{addr}/ws?room=7&ticket={}", demo_ticket(&keys(), 7, uin, role, Terminal::Web))
    };
    let start = rss_mib();

    // The teacher talks; 20 students ask for everything from 0 and never read.
    let (mut teacher, _) = tokio_tungstenite::connect_async(url(1, Role::Teacher)).await.expect("teacher");
    let mut sleepers = Vec::new();
    let mut epoch = 0;
    for uin in 100..120 {
        let (mut ws, _) = tokio_tungstenite::connect_async(url(uin, Role::Student)).await.expect("student");
        // The welcome is the last frame these clients read.
        let welcome = ws.next().await.expect("a frame").expect("ok");
        let welcome: serde_json::Value = serde_json::from_str(welcome.to_text().expect("text")).expect("JSON");
        epoch = welcome["epoch"].as_u64().expect("an epoch");
        sleepers.push(ws);
    }
    let mut peak = start;
    let t = Instant::now();
    let mut said = 0;
    while t.elapsed() < Duration::from_secs(8) {
        let text = format!(r#"{{"t":"say","text":"{}"}}"#, "x".repeat(400));
        teacher.send(Message::Text(text.into())).await.expect("says");
        said += 1;
        // Everything from the start, again and again (as often as their
        // budget lets them), read by nobody.
        let check = format!(r#"{{"t":"check","epoch":{epoch},"after":0}}"#);
        for s in &mut sleepers {
            let _ = s.send(Message::Text(check.clone().into())).await;
        }
        // The teacher reads (it is a good client).
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(1), teacher.next()).await {}
        peak = peak.max(rss_mib());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "20 readers that never read, asking for everything twice a second, {said} teacher messages in 8 s: \
         resident {start:.1} MiB at the start, {peak:.1} MiB at most"
    );
    // What they are sent waits in bounded places (the kernel's socket
    // buffers, then each connection's channel and lanes); a writer that
    // takes nothing for `slow_client_lag` is closed (tested on the node in
    // room-service's classroom_rules).
    drop(sleepers);

    // 3,000 sockets that never finish their handshake.
    let before = rss_mib();
    let mut dribblers = Vec::new();
    for _ in 0..3_000 {
        let Ok(mut s) = TcpStream::connect(addr).await else { break };
        let _ = s.write_all(b"GET /ws?room=7 HTTP/1.1\r\nHost: x\r\n").await;
        dribblers.push(s);
    }
    let held = rss_mib();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut closed = 0;
    for s in &mut dribblers {
        let mut buf = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(20), tokio::io::AsyncReadExt::read(s, &mut buf)).await
        {
            closed += 1;
        }
    }
    drop(dribblers);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = rss_mib();
    println!(
        "{} sockets that never finished their headers: resident {before:.1} MiB before, {held:.1} MiB holding them, \
         {after:.1} MiB after; {closed} closed by the server",
        3_000
    );
    assert_eq!(closed, 3_000, "every dribbling socket was closed by the server");
    assert!(peak - start < 64.0 && held - before < 64.0, "memory grew without bound");
}
