//! `roomkit::websocket::serve` on real sockets: what the service queued
//! before letting a connection go still reaches a client whose socket was
//! full at that moment (a kick's bye and close frame), once it reads again.
#![cfg(feature = "websocket")]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use room_core::{BusinessId, Role, RoomId, RoomKey, Terminal, Uin};
use room_push::{Class, Kind, Target};
use roomkit::service::{RoomService, ServiceConfig};
use roomkit::ticket::{JoinTicket, KeyRing};
use roomkit::websocket::SocketOptions;
use tungstenite::protocol::{Role as WsRole, WebSocket};

const SAID: usize = 400;
const ROOM: RoomKey = RoomKey::new(BusinessId(7), RoomId(11));

fn keys() -> KeyRing {
    KeyRing::new("k1", b"socket-test-key-0123".to_vec()).expect("valid")
}

fn ticket(uin: u64, role: Role) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() + 600;
    keys().issue(&JoinTicket { room: ROOM, uin: Uin(uin), role, terminal: Terminal::Web, expires_at: exp })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_reaches_a_client_whose_socket_was_full() {
    let service = RoomService::start(ServiceConfig::new(keys())).await.expect("starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let _teacher = service.connect(ROOM, &ticket(1, Role::Teacher)).expect("teacher");

    // The student's socket takes little, and it reads nothing for a while.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("small buffer");
    let client = socket.connect(addr).await.expect("connect");
    let (server_side, _) = listener.accept().await.expect("accept");
    let svc = service.clone();
    let served = tokio::spawn(async move {
        let t = ticket(100, Role::Student);
        roomkit::websocket::serve(&svc, server_side, &[], ROOM, &t, &SocketOptions::default()).await
    });
    let client = client.into_std().expect("std");
    client.set_nonblocking(false).expect("blocking");
    client.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");

    // The student is in the room (its welcome read) before the teacher
    // talks: a message published before the join is not the student's.
    let mut ws = tokio::task::spawn_blocking(move || {
        let mut ws = WebSocket::from_raw_socket(client, WsRole::Client, None);
        let first = ws.read().expect("the welcome");
        assert!(first.to_text().expect("text").starts_with(r#"{"t":"welcome""#), "first frame: {first:?}");
        ws
    })
    .await
    .expect("welcome reader");

    // The teacher talks until the student's socket is full and frames wait
    // in the service for it.
    // (Through the host's API: 15 KB a message, within the room's quota;
    // 6 MB in all, more than the kernel buffers of a loopback socket.)
    for i in 0..SAID {
        let body = format!(r#"{{"n":{i},"text":"{}"}}"#, "x".repeat(15_000));
        service.publish(ROOM, Target::room(), Class::Teacher, Kind(300), Bytes::from(body)).await.expect("published");
        tokio::time::sleep(Duration::from_millis(12)).await;
    }
    let member = ROOM.member(Uin(100));
    assert!(service.kick(member, "disruptive", None).await.expect("kick"), "the student was present");

    // The student reads again: every message, the bye, then close 4005.
    let read = tokio::task::spawn_blocking(move || {
        let (mut said, mut bye, mut close) = (Vec::new(), false, None);
        loop {
            match ws.read() {
                Ok(tungstenite::Message::Text(t)) => {
                    if let Some(at) = t.as_str().find(r#""n":"#) {
                        let digits: String = t.as_str()[at + 4..].chars().take_while(char::is_ascii_digit).collect();
                        said.push(digits.parse::<usize>().expect("a message number"));
                    }
                    bye |= t.as_str().contains(r#""t":"bye""#);
                }
                Ok(tungstenite::Message::Close(frame)) => {
                    close = frame.map(|f| u16::from(f.code));
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        (said, bye, close)
    })
    .await
    .expect("reader");
    let (said, bye, close) = read;
    let expected: Vec<usize> = (0..SAID).collect();
    assert_eq!(said, expected, "every teacher message arrived, in order");
    assert!(bye, "the bye frame arrived");
    assert_eq!(close, Some(4005), "the close frame with the kick's code arrived");
    let ended = served.await.expect("served");
    println!("served ended: {ended:?}");
}
