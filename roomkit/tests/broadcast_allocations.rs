//! A teacher's message reaches a class over real sockets with no
//! allocation per recipient: the body is encoded once and shared, each
//! socket's header is rendered into a per-thread buffer, and the frames go
//! out in vectored writes. Counted with a counting allocator, everything
//! (service, fan-out, socket writers) on this one thread.
#![cfg(feature = "websocket")]

use std::io::{ErrorKind, Read};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use room_core::{BusinessId, Role, RoomId, RoomKey, Terminal, Uin};
use roomkit::service::{RoomService, ServiceConfig};
use roomkit::ticket::{JoinTicket, KeyRing};
use roomkit::websocket::SocketOptions;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const ROOM: RoomKey = RoomKey::new(BusinessId(7), RoomId(9));
const STUDENTS: usize = 400;

fn keys() -> KeyRing {
    KeyRing::new("k1", b"allocation-test-key".to_vec()).expect("valid")
}

fn ticket(uin: u64, role: Role) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() + 600;
    keys().issue(&JoinTicket { room: ROOM, uin: Uin(uin), role, terminal: Terminal::Web, expires_at: exp })
}

/// A student's end: a plain socket read into a buffer sized up front, so
/// the reading allocates nothing either.
struct Student {
    socket: std::net::TcpStream,
    received: Vec<u8>,
}

impl Student {
    /// Reads what arrived; whether `needle` has been seen.
    fn read_until(&mut self, needle: &[u8]) -> bool {
        let mut chunk = [0u8; 4096];
        loop {
            match self.socket.read(&mut chunk) {
                Ok(0) => panic!("the server closed a student's socket"),
                Ok(n) => {
                    assert!(self.received.len() + n <= self.received.capacity(), "a student got more than expected");
                    self.received.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("read: {e}"),
            }
        }
        self.received.windows(needle.len()).any(|w| w == needle)
    }
}

/// Runs the service until every student has read `needle`.
async fn until_everyone_read(students: &mut [Student], needle: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut done = vec![false; students.len()];
    while done.iter().any(|d| !d) {
        assert!(Instant::now() < deadline, "not every student got {:?}", String::from_utf8_lossy(needle));
        tokio::time::sleep(Duration::from_millis(5)).await;
        for (s, d) in students.iter_mut().zip(done.iter_mut()) {
            if !*d {
                *d = s.read_until(needle);
            }
        }
    }
}

#[test]
fn a_broadcast_allocates_nothing_per_recipient() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let service = RoomService::start(ServiceConfig::new(keys())).await.expect("starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        // The teacher speaks through the service directly; the class
        // listens over sockets served by roomkit::websocket (the upgrade
        // handshake is the host's and is skipped here).
        let mut teacher = service.connect(ROOM, &ticket(1, Role::Teacher)).expect("teacher enters");
        let mut students = Vec::with_capacity(STUDENTS);
        for i in 0..STUDENTS {
            let socket = std::net::TcpStream::connect(addr).expect("connect");
            socket.set_nonblocking(true).expect("nonblocking");
            let (server_side, _) = listener.accept().await.expect("accept");
            let svc = service.clone();
            let t = ticket(100 + i as u64, Role::Student);
            tokio::spawn(async move {
                let options = SocketOptions::default();
                roomkit::websocket::serve(&svc, server_side, &[], ROOM, &t, &options).await
            });
            students.push(Student { socket, received: Vec::with_capacity(1 << 20) });
        }
        until_everyone_read(&mut students, b"\"t\":\"welcome\"").await;
        // Warm up: the first message fills each connection's queue once.
        service.handle_text(teacher.id, r#"{"t":"say","text":"warm-up"}"#).expect("say");
        until_everyone_read(&mut students, b"warm-up").await;
        while teacher.outbound.try_recv().is_ok() {}

        let region = Region::new(GLOBAL);
        service.handle_text(teacher.id, r#"{"t":"say","text":"measured"}"#).expect("say");
        until_everyone_read(&mut students, b"measured").await;
        let stats = region.change();
        println!(
            "one teacher message to {STUDENTS} students over sockets: {} allocations, {} reallocations, {} bytes",
            stats.allocations, stats.reallocations, stats.bytes_allocated
        );
        // One allocation per recipient would be 400 or more.
        assert!(
            stats.allocations + stats.reallocations < STUDENTS / 4,
            "{} allocations and {} reallocations for {STUDENTS} recipients",
            stats.allocations,
            stats.reallocations
        );
        // Each student got the message exactly once, as a push frame.
        for s in &students {
            let hits = s.received.windows(8).filter(|w| w == b"measured").count();
            assert_eq!(hits, 1);
        }
        drop(teacher);
    });
}
