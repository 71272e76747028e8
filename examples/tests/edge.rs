//! The example servers' HTTP edge under hostile clients: headers that never
//! finish, too many sockets from one address, frames too large.

use std::sync::Arc;
use std::time::Duration;

use examples::classroom::demo_ticket;
use examples::edge::{Limits, serve_with};
use futures::{SinkExt, StreamExt};
use room_core::{Role, Terminal};
use roomkit::service::{RoomService, ServiceConfig};
use roomkit::ticket::KeyRing;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

fn keys() -> KeyRing {
    KeyRing::new("edge", b"edge-test-key-0123456789".to_vec()).expect("valid")
}

async fn server(limits: Limits) -> (std::net::SocketAddr, RoomService) {
    let service = RoomService::start(ServiceConfig::new(keys())).await.expect("starts");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = serve_with(listener, service.clone(), Arc::new(keys()), None, limits).expect("serves");
    (addr, service)
}

/// Whether the server closed `s` (a read returns end of stream or an
/// error), waiting at most `within`.
async fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(within, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_let_go() {
    let mut limits = Limits::default();
    limits.header_timeout = Duration::from_millis(200);
    let (addr, _service) = server(limits).await;
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(addr).await.expect("connects");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.expect("writes");
        slow.push(s);
    }
    for s in &mut slow {
        assert!(closed_by_server(s, Duration::from_secs(10)).await, "a dribbling client was held");
    }
    // A client that sends its request is answered meanwhile.
    let mut s = TcpStream::connect(addr).await.expect("connects");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.expect("writes");
    let mut reply = String::new();
    s.read_to_string(&mut reply).await.expect("reads");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_gets_at_most_its_share_of_connections() {
    let mut limits = Limits::default();
    limits.per_ip = 5;
    limits.header_timeout = Duration::from_secs(30);
    let (addr, _service) = server(limits).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(TcpStream::connect(addr).await.expect("connects"));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = TcpStream::connect(addr).await.expect("the kernel accepts");
    assert!(closed_by_server(&mut extra, Duration::from_secs(10)).await, "the sixth connection was kept");
    for s in &mut held {
        assert!(!closed_by_server(s, Duration::from_millis(100)).await, "one of the first five was closed");
    }
    // A place freed is a place taken.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut again = TcpStream::connect(addr).await.expect("connects");
    assert!(!closed_by_server(&mut again, Duration::from_millis(200)).await, "the freed place was not given");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_frames_get_an_answer_or_a_close_code() {
    let (addr, _service) = server(Limits::default()).await;
    let ticket = demo_ticket(&keys(), 7, 100, Role::Student, Terminal::Web);
    let url = format!("ws://{addr}/ws?room=7&ticket={ticket}");
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.expect("connects");
    let welcome = ws.next().await.expect("a frame").expect("ok");
    assert!(welcome.to_text().expect("text").contains("\"welcome\""), "{welcome}");
    // Over the service's 4 KiB: an error frame, and the socket stays.
    let big = format!(r#"{{"t":"chat","text":"{}"}}"#, "x".repeat(10_000));
    ws.send(Message::Text(big.into())).await.expect("sends");
    let mut answer = String::new();
    while let Some(Ok(frame)) = ws.next().await {
        if let Ok(text) = frame.to_text()
            && text.contains("\"error\"")
        {
            answer = text.to_owned();
            break;
        }
    }
    assert!(answer.contains("\"too_large\""), "{answer}");
    ws.send(Message::Text(r#"{"t":"beat"}"#.into())).await.expect("still open");
    // Over the edge's 64 KiB: closed with 1009.
    let huge = "x".repeat(100_000);
    let _ = ws.send(Message::Text(huge.into())).await;
    let mut code = None;
    while let Some(Ok(frame)) = ws.next().await {
        if let Message::Close(Some(c)) = frame {
            code = Some(u16::from(c.code));
            break;
        }
    }
    assert_eq!(code, Some(1009));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_without_a_room_or_ticket_is_refused_in_the_protocol() {
    let (addr, _service) = server(Limits::default()).await;
    let ticket = demo_ticket(&keys(), 7, 100, Role::Student, Terminal::Web);
    for query in
        ["", "?room=7", &format!("?ticket={ticket}"), &format!("?room=seven&ticket={ticket}"), "?room=7&ticket=forged"]
    {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws{query}")).await.expect("upgrades");
        let first = ws.next().await.expect("a frame").expect("ok");
        let text = first.to_text().expect("text").to_owned();
        assert!(text.contains("\"entry_refused\""), "{query}: {text}");
        let mut code = None;
        while let Some(Ok(frame)) = ws.next().await {
            if let Message::Close(Some(c)) = frame {
                code = Some(u16::from(c.code));
            }
        }
        assert_eq!(code, Some(4001), "{query}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_by_the_server() {
    let mut config = ServiceConfig::new(keys());
    config.node.slow_client_lag = Duration::from_secs(2);
    config.outbound = 8;
    let service = RoomService::start(config).await.expect("starts");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = serve_with(listener, service.clone(), Arc::new(keys()), None, Limits::default()).expect("serves");
    let url = |uin: u64, role: Role| {
        format!("ws://{addr}/ws?room=7&ticket={}", demo_ticket(&keys(), 7, uin, role, Terminal::Web))
    };
    let (mut teacher, _) = tokio_tungstenite::connect_async(url(1, Role::Teacher)).await.expect("teacher");
    // A student whose socket takes little and who stops reading after the
    // welcome.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("small buffer");
    let stream = socket.connect(addr).await.expect("connects");
    let (mut sleeper, _) = tokio_tungstenite::client_async(url(100, Role::Student), stream).await.expect("upgrade");
    let welcome = sleeper.next().await.expect("a frame").expect("ok");
    let welcome: serde_json::Value = serde_json::from_str(welcome.to_text().expect("text")).expect("JSON");
    let epoch = welcome["epoch"].as_u64().expect("an epoch");
    assert_eq!(service.stats().connections, 2);

    let started = std::time::Instant::now();
    let mut let_go = false;
    while started.elapsed() < Duration::from_secs(30) {
        let text = format!(r#"{{"t":"say","text":"{}"}}"#, "x".repeat(450));
        teacher.send(Message::Text(text.into())).await.expect("says");
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(1), teacher.next()).await {}
        // Everything from the start, as often as its budget allows: the
        // answers fill the socket.
        let check = format!(r#"{{"t":"check","epoch":{epoch},"after":0}}"#);
        let _ = tokio::time::timeout(Duration::from_millis(10), sleeper.send(Message::Text(check.into()))).await;
        tokio::time::sleep(Duration::from_millis(70)).await;
        if service.stats().connections == 1 {
            let_go = true;
            break;
        }
    }
    assert!(let_go, "the service let the sleeper go after its lag");
    // And the edge closed its socket: what was buffered, then the end.
    assert!(closed_by_server(sleeper.get_mut(), Duration::from_secs(10)).await, "the socket was held open");
    println!(
        "a client that stopped reading was let go and its socket closed {:?} after the first message",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_count_against_the_total_cap_and_uin_0_gets_no_ticket() {
    let mut limits = Limits::default();
    limits.total = 5;
    let (addr, service) = server(limits).await;
    let url = |uin: u64| {
        format!("ws://{addr}/ws?room=7&ticket={}", demo_ticket(&keys(), 7, uin, Role::Student, Terminal::Web))
    };
    let mut sockets = Vec::new();
    for uin in 100..105 {
        let (ws, _) = tokio_tungstenite::connect_async(url(uin)).await.expect("within the cap");
        sockets.push(ws);
    }
    // Upgraded sockets keep their places: a sixth connection is closed at once.
    let mut sixth = TcpStream::connect(addr).await.expect("the kernel accepts");
    assert!(closed_by_server(&mut sixth, Duration::from_secs(5)).await, "a sixth connection was served");
    // A socket that ends gives its place back.
    let mut gone = sockets.pop().expect("a socket");
    gone.close(None).await.expect("closes");
    drop(gone);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while service.stats().connections > 4 {
        assert!(std::time::Instant::now() < deadline, "the closed socket kept its connection");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The freed place serves the demo's ticket desk, which will not issue uin 0
    // (the sender of the room's own messages).
    let mut s = TcpStream::connect(addr).await.expect("connects");
    s.write_all(b"GET /ticket?room=7&uin=0&role=student HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("asks");
    let mut reply = String::new();
    s.read_to_string(&mut reply).await.expect("reads");
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains("uin 0 is reserved"), "{reply}");
}
