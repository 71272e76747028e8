//! Load generator: a large class against the room service.
//!
//! In process (default): `--members N` join through the service API, beat
//! every 20 s, chat at `--chat-rate` lines/s and the teacher speaks at
//! `--teacher-rate` messages/s and opens an answer card every 5 s; prints the
//! join rate, fan-out latency percentiles per class, what was shed and the
//! memory per member.
//!
//! Over loopback websockets (`--ws N`): N clients connect to the classroom
//! server (started in this process, or `--server HOST:PORT`) and the same
//! traffic runs through real sockets. `--server A,B,C` spreads the clients
//! over several servers: the nodes of `examples/cluster`.
//!
//! ```text
//! cargo run --release -p examples --example loadgen -- --members 60000 --seconds 30
//! cargo run --release -p examples --example loadgen -- --ws 5000 --seconds 30
//! cargo run --release -p examples --example loadgen -- --ws 3000 --server 127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103
//! ```
//!
//! A class larger than one process's descriptors (60,000 members over
//! the nodes of a cluster) is several processes: one speaks (`--ws N`),
//! the others only listen (`--ws N --listen --first K`, clients K+1...,
//! their own members; they count every teacher message they see, until
//! `--seconds` or, with `--until FILE`, until FILE exists: the speaker is
//! done); `examples/cluster/big-class.sh` runs it.
//!
//! `--shards N` runs the service (in process, or the server this process
//! starts) as N nodes of the process, each under its own lock.
//!
//! `--protocol socketio` (with `--ws N --server HOST:PORT`) drives a
//! Socket.IO server with the same workload instead (`socketio.rs`; the
//! peers of issue 17 in `peers/`). `--server-pid PID` reports the server
//! process's CPU time over the measured window and its memory.
#![forbid(unsafe_code)]

mod socketio;

use std::alloc::System;
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use examples::classroom::{ClassroomConfig, DEMO_BID, demo_ticket, random_key, serve};
use futures::{SinkExt, StreamExt};
use room_core::{Role, RoomId, RoomKey, Terminal};
use roomkit::service::{Connection, RoomService, ServiceConfig};
use roomkit::ticket::KeyRing;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const ROOM_ID: u64 = 42;
/// Clients that chat in websocket mode, spread over the class (each may
/// send 5 lines a second).
const CHATTERS: usize = 400;

#[derive(Debug, Clone)]
struct Args {
    members: usize,
    seconds: u64,
    chat_rate: u32,
    teacher_rate: u32,
    ws: Option<usize>,
    server: Option<String>,
    protocol: Protocol,
    server_pid: Option<u32>,
    /// Websocket mode: the clients only listen (no teacher, no chat); a
    /// class bigger than one process's descriptors is several processes.
    listen: bool,
    /// Websocket mode: the first client's number (uin - 1), so that
    /// several processes fill one class without sharing members.
    first: u64,
    /// Websocket mode: the window also ends once this file exists.
    until: Option<std::path::PathBuf>,
    /// Nodes of the service's process (in process, or the server this
    /// process starts): `ServiceConfig::shards`.
    shards: usize,
}

/// What the websocket mode's clients speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// Roomkit's classroom protocol (docs/PROTOCOL.md).
    Roomkit,
    /// Socket.IO (Engine.IO v4 over a websocket).
    SocketIo,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Roomkit => "roomkit",
            Protocol::SocketIo => "socketio",
        }
    }
}

fn args() -> Args {
    let mut a = Args {
        members: 60_000,
        seconds: 20,
        chat_rate: 1_000,
        teacher_rate: 10,
        ws: None,
        server: None,
        protocol: Protocol::Roomkit,
        server_pid: None,
        listen: false,
        first: 0,
        until: None,
        shards: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--members" => a.members = value().parse().expect("--members N"),
            "--seconds" => a.seconds = value().parse().expect("--seconds N"),
            "--chat-rate" => a.chat_rate = value().parse().expect("--chat-rate N"),
            "--teacher-rate" => a.teacher_rate = value().parse().expect("--teacher-rate N"),
            "--ws" => a.ws = Some(value().parse().expect("--ws N")),
            "--server" => a.server = Some(value()),
            "--protocol" => {
                a.protocol = match value().as_str() {
                    "roomkit" => Protocol::Roomkit,
                    "socketio" => Protocol::SocketIo,
                    other => panic!("--protocol roomkit|socketio, not {other}"),
                }
            }
            "--server-pid" => a.server_pid = Some(value().parse().expect("--server-pid PID")),
            "--listen" => a.listen = true,
            "--first" => a.first = value().parse().expect("--first N"),
            "--until" => a.until = Some(value().into()),
            "--shards" => a.shards = value().parse::<usize>().expect("--shards N").max(1),
            other => panic!("unknown option {other} (see the file's header)"),
        }
    }
    a
}

fn micros_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// The `q` quantile of `sorted` (microseconds, not empty), in milliseconds.
fn quantile_ms(sorted: &[u64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)] as f64 / 1_000.0
}

/// Latencies per class, in microseconds.
#[derive(Default)]
struct Latencies {
    by_class: HashMap<&'static str, Vec<u64>>,
    /// Per teacher message (by its send time): when its last recipient
    /// read it. Kept only in process (`track_last`): with sockets the load
    /// client shares the server's cores, and a map update per delivery
    /// would slow what it measures.
    teacher_last: HashMap<u64, u64>,
    track_last: bool,
}

impl Latencies {
    /// Reads the send times embedded in a frame (`"text":"t=<micros>"`, or a
    /// card's open time) and records how long they took to arrive.
    fn observe(&mut self, frame: &str, cards: &HashMap<u64, u64>) {
        let now = micros_now();
        let class = if frame.contains("\"c\":\"teacher\"") {
            "teacher"
        } else if frame.contains("\"c\":\"chat\"") {
            "chat"
        } else {
            "signal"
        };
        let mut rest = frame;
        while let Some(i) = rest.find("\"text\":\"t=") {
            rest = &rest[i + 10..];
            let end = rest.find('"').unwrap_or(0);
            if let Ok(sent) = rest[..end].parse::<u64>() {
                self.by_class.entry(class).or_default().push(now.saturating_sub(sent));
                if self.track_last && class == "teacher" {
                    let last = self.teacher_last.entry(sent).or_default();
                    *last = (*last).max(now.saturating_sub(sent));
                }
            }
        }
        if class == "signal"
            && let Some(i) = frame.find("\"op\":\"open\",\"id\":")
        {
            let tail = &frame[i + 17..];
            let end = tail.find(|c: char| !c.is_ascii_digit()).unwrap_or(0);
            if let Some(sent) = tail[..end].parse::<u64>().ok().and_then(|id| cards.get(&id)) {
                self.by_class.entry("signal").or_default().push(now.saturating_sub(*sent));
            }
        }
    }

    /// The `q` quantile of a class's latencies, in milliseconds.
    fn percentile(&mut self, class: &str, q: f64) -> Option<f64> {
        let v = self.by_class.get_mut(class).filter(|v| !v.is_empty())?;
        v.sort_unstable();
        Some(quantile_ms(v, q))
    }

    fn report(&mut self) {
        let mut last: Vec<u64> = self.teacher_last.values().copied().collect();
        if !last.is_empty() {
            last.sort_unstable();
            let p = |q: f64| quantile_ms(&last, q);
            println!(
                "  teacher message to the last member reading it (bounds publish to the last queue): \
                 {} messages  p50 {:>8.2} ms  p99 {:>8.2} ms",
                last.len(),
                p(0.5),
                p(0.99)
            );
        }
        for class in ["signal", "teacher", "chat"] {
            let Some(v) = self.by_class.get_mut(class) else {
                println!("  {class:8} no samples");
                continue;
            };
            v.sort_unstable();
            let p = |q: f64| quantile_ms(v, q);
            println!(
                "  {class:8} deliveries {:>10}  p50 {:>8.2} ms  p99 {:>8.2} ms  max {:>8.2} ms",
                v.len(),
                p(0.5),
                p(0.99),
                v[v.len() - 1] as f64 / 1_000.0
            );
        }
    }
}

fn net_bytes(region: &Region<'_, System>) -> f64 {
    let s = region.change();
    s.bytes_allocated as f64 - s.bytes_deallocated as f64
}

fn in_process(a: &Args) -> Result<(), Box<dyn std::error::Error>> {
    // One node runs on one thread; shards get a thread each.
    let runtime = if a.shards > 1 {
        tokio::runtime::Builder::new_multi_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    };
    let fanout = fanout_probe::install();
    runtime.block_on(async {
        let keys = KeyRing::new("load", random_key())?;
        let mut config = ServiceConfig::new(keys.clone());
        config.node.expected_learners = a.members;
        config.shards = a.shards;
        let service = RoomService::start(config).await?;
        let room = RoomKey::new(DEMO_BID, RoomId(ROOM_ID));
        let tickets: Vec<String> = (0..a.members as u64)
            .map(|n| {
                let role = if n == 0 { Role::Teacher } else { Role::Student };
                demo_ticket(&keys, ROOM_ID, n + 1, role, Terminal::ALL[n as usize % 7])
            })
            .collect();
        tracing::info!(members = a.members, "joining");
        let region = Region::new(GLOBAL);
        let started = Instant::now();
        let mut conns: Vec<Connection> = Vec::with_capacity(a.members);
        for (i, t) in tickets.iter().enumerate() {
            conns.push(service.connect(room, t)?);
            if (i + 1) % 10_000 == 0 {
                tracing::info!(joined = i + 1, elapsed = ?started.elapsed(), "joining");
            }
        }
        let join_time = started.elapsed();
        let bytes = net_bytes(&region);
        println!(
            "joined {} members in {:.2} s: {:.0} joins/s; {:.0} B per member (service, lists, push, outbound queues)",
            a.members,
            join_time.as_secs_f64(),
            a.members as f64 / join_time.as_secs_f64(),
            bytes / a.members as f64
        );
        // Settle the join storm's sidebars before measuring.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for c in &mut conns {
            while c.outbound.try_recv().is_ok() {}
        }
        println!(
            "after the welcomes, settled: {:.0} B per member",
            net_bytes(&region) / a.members as f64
        );

        let cards: std::sync::Arc<parking_lot_free::CardTimes> = Default::default();
        let teacher = conns[0].id;
        let ids: Vec<roomkit::push::ConnId> = conns.iter().map(|c| c.id).collect();
        // Clients read on their own thread, as sockets would.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (stop, cards) = (stop.clone(), cards.clone());
            std::thread::spawn(move || {
                let mut lat = Latencies { track_last: true, ..Latencies::default() };
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut idle = true;
                    let known = cards.snapshot();
                    for c in &mut conns {
                        while let Ok(frame) = c.outbound.try_recv() {
                            idle = false;
                            let text = frame.into_text();
                            lat.observe(std::str::from_utf8(&text).unwrap_or(""), &known);
                        }
                    }
                    if idle {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                lat
            })
        };
        let mut publish: HashMap<&'static str, Vec<u64>> = HashMap::new();
        let mut next_card = 1u64;
        let step = Duration::from_millis(10);
        let end = Instant::now() + Duration::from_secs(a.seconds);
        let mut tick = 0u64;
        let (mut chat_sent, mut chat_refused) = (0u64, 0u64);
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut next_progress = Instant::now() + Duration::from_secs(1);
        let mut timed = |class: &'static str, f: &mut dyn FnMut()| {
            let t = Instant::now();
            f();
            publish.entry(class).or_default().push(t.elapsed().as_micros() as u64);
        };
        while Instant::now() < end {
            let t0 = Instant::now();
            // Chat from random students.
            for _ in 0..(a.chat_rate / 100).max(1) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let who = 1 + (rng % (a.members.max(2) as u64 - 1)) as usize;
                let text = format!(r#"{{"t":"chat","text":"t={}"}}"#, micros_now());
                match service.handle_text(ids[who], &text) {
                    Ok(()) => chat_sent += 1,
                    Err(_) => chat_refused += 1,
                }
            }
            if a.teacher_rate > 0 && tick.is_multiple_of((100 / u64::from(a.teacher_rate.min(100))).max(1)) {
                let say = format!(r#"{{"t":"say","text":"t={}"}}"#, micros_now());
                timed("teacher", &mut || {
                    let _ = service.handle_text(teacher, &say);
                });
            }
            if tick.is_multiple_of(500) {
                let _ = service.handle_text(teacher, r#"{"t":"card_close"}"#);
                cards.insert(next_card, micros_now());
                timed("signal", &mut || {
                    let _ = service.handle_text(teacher, r#"{"t":"card_open","options":4}"#);
                });
                next_card += 1;
            }
            // Heartbeats, spread over the 20 s interval.
            let per_tick = (a.members / 2_000).max(1);
            for k in 0..per_tick {
                let i = ((tick as usize * per_tick) + k) % a.members;
                let _ = service.handle_text(ids[i], r#"{"t":"beat"}"#);
            }
            if Instant::now() >= next_progress {
                next_progress += Duration::from_secs(1);
                let s = service.stats();
                tracing::info!(
                    sessions = s.sessions,
                    frames_sent = s.push.frames_sent,
                    chat_shed = s.push.chat_shed,
                    chat_refused,
                    "running"
                );
            }
            tick += 1;
            if let Some(rest) = step.checked_sub(t0.elapsed()) {
                tokio::time::sleep(rest).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut lat = reader.join().expect("reader");
        let s = service.stats();
        println!("after {} s: {} chat lines accepted, {} refused by limits", a.seconds, chat_sent, chat_refused);
        println!(
            "push: {} frames sent, {} chat frames shed, {} chat lines sampled out, {} resyncs",
            s.push.frames_sent, s.push.chat_shed, s.push.chat_sampled_out, s.push.resyncs
        );
        println!("the sender's call (parse, quota, forwarding to the room's owner; numbering and fan-out follow):");
        let mut publish_lat = Latencies { by_class: publish, ..Latencies::default() };
        publish_lat.report();
        if let Some(samples) = &fanout {
            for class in ["teacher", "signal"] {
                let v = samples.sorted_micros(class);
                if v.is_empty() {
                    continue;
                }
                let p = |q: f64| quantile_ms(&v, q);
                println!(
                    "  {class} message off the bus to the room's log, readable by every member's writer (publish to the last queue): {} messages  p50 {:8.2} ms  p99 {:8.2} ms  max {:8.2} ms",
                    v.len(),
                    p(0.5),
                    p(0.99),
                    p(1.0)
                );
            }
        }
        println!("publish to the client reading it (chat includes its merge window):");
        lat.report();
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}

/// The service's fan-out times (its `roomkit_fanout_seconds` histogram),
/// caught by a recorder of this process's own: the time from taking a
/// teacher message off the bus to its frame in the last member's queue.
mod fanout_probe {
    use std::sync::{Arc, Mutex};

    use metrics::{Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit};

    /// Samples in seconds, by the `class` label.
    #[derive(Default)]
    pub(crate) struct Samples(Mutex<Vec<(&'static str, f64)>>);

    struct Class(&'static str, Arc<Samples>);

    impl HistogramFn for Class {
        fn record(&self, value: f64) {
            self.1.0.lock().expect("not poisoned").push((self.0, value));
        }
    }

    struct Probe(Arc<Samples>);

    impl Recorder for Probe {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
            Counter::noop()
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            if key.name() != "roomkit_fanout_seconds" {
                return Histogram::noop();
            }
            let class = match key.labels().find(|l| l.key() == "class").map(|l| l.value()) {
                Some("teacher") => "teacher",
                Some("signal") => "signal",
                _ => return Histogram::noop(),
            };
            Histogram::from_arc(Arc::new(Class(class, self.0.clone())))
        }
    }

    /// Installs the probe as the process's recorder (once, before the
    /// service starts).
    pub(crate) fn install() -> Option<Arc<Samples>> {
        let samples = Arc::new(Samples::default());
        metrics::set_global_recorder(Probe(samples.clone())).ok()?;
        Some(samples)
    }

    impl Samples {
        /// The samples of `class`, in microseconds, sorted.
        pub(crate) fn sorted_micros(&self, class: &str) -> Vec<u64> {
            let mut v: Vec<u64> = self
                .0
                .lock()
                .expect("not poisoned")
                .iter()
                .filter(|(c, _)| *c == class)
                .map(|(_, s)| (s * 1e6) as u64)
                .collect();
            v.sort_unstable();
            v
        }
    }
}

/// Card open times, shared between the sender and the reader thread.
mod parking_lot_free {
    use std::collections::HashMap;
    use std::sync::Mutex;

    #[derive(Default)]
    pub(crate) struct CardTimes(Mutex<HashMap<u64, u64>>);

    impl CardTimes {
        pub(crate) fn insert(&self, id: u64, at: u64) {
            self.0.lock().expect("not poisoned").insert(id, at);
        }
        pub(crate) fn snapshot(&self) -> HashMap<u64, u64> {
            self.0.lock().expect("not poisoned").clone()
        }
    }
}

fn over_websockets(a: &Args, clients: usize) -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let (bases, keys): (Vec<String>, _) = match &a.server {
            Some(addrs) => (addrs.split(',').map(str::to_owned).collect(), None),
            None if a.protocol != Protocol::Roomkit => return Err("--protocol socketio needs --server".into()),
            None => {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let config =
                    ClassroomConfig { expected_learners: clients, shards: a.shards, ..ClassroomConfig::default() };
                let running = serve(listener, config).await?;
                (vec![running.addr.to_string()], Some(running.keys))
            }
        };
        match a.protocol {
            Protocol::Roomkit => drive(a, clients, &Roomkit { bases, keys }).await,
            Protocol::SocketIo => drive(a, clients, &socketio::SocketIo { bases }).await,
        }
    })
}

/// A websocket of the websocket mode's clients.
type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Clients per source address over loopback: servers cap connections per
/// address (the classroom edge at 2,000), so client `n` comes from
/// 127.0.0.1 + `n / 1000`.
const CLIENTS_PER_SOURCE: u64 = 1_000;

/// Opens a websocket to `ws://{base}{path}` for client `n`.
async fn dial(base: &str, path: &str, n: u64) -> Result<Ws, Box<dyn std::error::Error>> {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    let addr = tokio::net::lookup_host(base).await?.next().ok_or_else(|| format!("{base}: no address"))?;
    let socket = match addr.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => {
            let socket = tokio::net::TcpSocket::new_v4()?;
            let source = Ipv4Addr::from(u32::from(Ipv4Addr::LOCALHOST) + (n / CLIENTS_PER_SOURCE) as u32);
            socket.bind(SocketAddr::new(source.into(), 0))?;
            socket
        }
        IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    // tungstenite zero-fills its whole read buffer before each read (128
    // KiB by default): with thousands of sockets in one client, that
    // memset took half of the client's CPU and so set the pace of every
    // server's measurement; with 8 KiB, still 7% of it. What a read here
    // brings is a few frames, a KiB or two; a larger frame takes two reads.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4 << 10);
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(format!("ws://{base}{path}"), stream, Some(config)).await?;
    Ok(ws)
}

/// What the websocket mode's clients speak: how one enters the class and
/// how the workload's frames are spelled. The workload, the clients' loop
/// and the measurement are the same for every server ([`drive`]).
trait Dialect: 'static {
    /// The client's heartbeat frame, sent every 20 s, if the protocol has
    /// one at this level.
    const BEAT: Option<&'static str>;
    /// Opens client `n`'s socket (0 is the teacher) and enters the class;
    /// `sender`: the teacher's second connection, the one it speaks through.
    async fn enter(&self, n: u64, sender: bool) -> Result<Ws, Box<dyn std::error::Error>>;
    /// A chat line carrying its send time.
    fn chat(micros: u64) -> String;
    /// A teacher message carrying its send time.
    fn say(micros: u64) -> String;
    /// What a text frame from the server is.
    fn read(frame: &str) -> Frame;
}

/// Searchers built once: a client reads tens of thousands of frames a
/// second, and `str::find` builds its searcher on every call.
static TEACHER_CLASS: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(br#""c":"teacher""#));
/// Where a workload message's send time follows (`"text":"t=<micros>"`).
static SEND_TIME: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(br#""text":"t="#));

/// A text frame from the server.
enum Frame {
    /// Workload traffic of this class (`"teacher"` or `"chat"`): its send
    /// times (`"text":"t=<micros>"`) are measured.
    Class(&'static str),
    /// A frame the client answers at once with this one (a ping's pong).
    Reply(&'static str),
    /// Anything else.
    Other,
}

/// Roomkit's classroom protocol (docs/PROTOCOL.md).
struct Roomkit {
    bases: Vec<String>,
    keys: Option<std::sync::Arc<KeyRing>>,
}

impl Dialect for Roomkit {
    const BEAT: Option<&'static str> = Some(r#"{"t":"beat"}"#);

    async fn enter(&self, n: u64, sender: bool) -> Result<Ws, Box<dyn std::error::Error>> {
        let base = &self.bases[n as usize % self.bases.len()];
        let role = if n == 0 { "teacher" } else { "student" };
        let ticket = match (&self.keys, sender) {
            (Some(k), false) => demo_ticket(k, ROOM_ID, n + 1, role.parse()?, Terminal::Web),
            (Some(k), true) => demo_ticket(k, ROOM_ID, 1, Role::Teacher, Terminal::Pc),
            (None, false) => http_ticket(base, &format!("/ticket?room={ROOM_ID}&uin={}&role={role}", n + 1)).await?,
            (None, true) => {
                http_ticket(base, &format!("/ticket?room={ROOM_ID}&uin=1&role=teacher&terminal=pc")).await?
            }
        };
        dial(base, &format!("/ws?room={ROOM_ID}&ticket={ticket}"), n).await
    }

    fn chat(micros: u64) -> String {
        format!(r#"{{"t":"chat","text":"t={micros}"}}"#)
    }

    fn say(micros: u64) -> String {
        format!(r#"{{"t":"say","text":"t={micros}"}}"#)
    }

    fn read(frame: &str) -> Frame {
        Frame::Class(if TEACHER_CLASS.find(frame.as_bytes()).is_some() { "teacher" } else { "chat" })
    }
}

/// A minimal HTTP GET for the demo ticket endpoint.
async fn http_ticket(base: &str, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(base).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {base}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    let start = body.find("\"ticket\":\"").map(|i| i + 10).unwrap_or(0);
    let end = body[start..].find('"').map(|i| start + i).unwrap_or(start);
    Ok(body[start..end].to_owned())
}

/// A send time a client read: its class, the client, the time and how long
/// it took to arrive (microseconds).
struct Sample {
    class: &'static str,
    client: u32,
    sent: u64,
    micros: u64,
}

/// One client: reads what the server sends (measuring the send times in
/// it), sends the chat lines the main loop hands it, and beats.
async fn client<D: Dialect>(
    n: u32,
    ws: Ws,
    tx: tokio::sync::mpsc::UnboundedSender<Sample>,
    mut say_rx: tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (mut sink, mut stream) = ws.split();
    let mut beat = tokio::time::interval(Duration::from_secs(20));
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(WsMessage::Text(t))) => match D::read(t.as_str()) {
                    Frame::Class(class) => {
                        let mut rest = t.as_str();
                        while let Some(i) = SEND_TIME.find(rest.as_bytes()) {
                            rest = &rest[i + SEND_TIME.needle().len()..];
                            if let Ok(sent) = rest[..rest.find('"').unwrap_or(0)].parse::<u64>() {
                                let micros = micros_now().saturating_sub(sent);
                                let _ = tx.send(Sample { class, client: n, sent, micros });
                            }
                        }
                    }
                    Frame::Reply(answer) => {
                        if sink.send(WsMessage::Text(answer.into())).await.is_err() {
                            break;
                        }
                    }
                    Frame::Other => {}
                },
                Some(Ok(_)) => {}
                _ => break,
            },
            Some(line) = say_rx.recv() => {
                if sink.send(WsMessage::Text(line.into())).await.is_err() {
                    break;
                }
            }
            _ = beat.tick(), if D::BEAT.is_some() => {
                if sink.send(WsMessage::Text(D::BEAT.unwrap_or_default().into())).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// Which teacher messages each client got.
#[derive(Default)]
struct TeacherLedger {
    /// Send times of the teacher messages, in order.
    sent: Vec<u64>,
    /// Listening only: messages are known from their first receipt (in
    /// `sent` in the order they came).
    learn: bool,
    learnt: HashMap<u64, usize>,
    /// By client, by message: received.
    seen: Vec<Vec<bool>>,
    unique: u64,
    duplicates: u64,
}

impl TeacherLedger {
    fn record(&mut self, s: &Sample) {
        let i = if self.learn {
            *self.learnt.entry(s.sent).or_insert_with(|| {
                self.sent.push(s.sent);
                self.sent.len() - 1
            })
        } else {
            let Ok(i) = self.sent.binary_search(&s.sent) else { return };
            i
        };
        let client = s.client as usize;
        if self.seen.len() <= client {
            self.seen.resize_with(client + 1, Vec::new);
        }
        let seen = &mut self.seen[client];
        if seen.len() <= i {
            seen.resize(i + 1, false);
        }
        if seen[i] {
            self.duplicates += 1;
        } else {
            seen[i] = true;
            self.unique += 1;
        }
    }

    /// Adds a sample to the latencies and, for the teacher's, to the ledger.
    fn take(&mut self, lat: &mut Latencies, s: Sample) {
        if s.class == "teacher" {
            self.record(&s);
        }
        lat.by_class.entry(s.class).or_default().push(s.micros);
    }

    fn lost(&self, clients: usize) -> u64 {
        (self.sent.len() as u64 * clients as u64).saturating_sub(self.unique)
    }
}

/// CPU and memory of the server's process, from /proc.
#[derive(Debug, Clone, Copy)]
struct ProcSample {
    /// utime + stime, in clock ticks.
    ticks: u64,
    /// stime alone (the kernel's share: socket writes and reads).
    system_ticks: u64,
    /// Write and read system calls so far (`/proc/<pid>/io`; 0 where it
    /// cannot be read): how many writes a fan-out costs. The kernel counts
    /// read(2), write(2) and their vectored forms there, not send(2) or
    /// recv(2) (what Rust's std uses on sockets).
    write_calls: u64,
    read_calls: u64,
    rss_kib: u64,
    hwm_kib: u64,
}

impl ProcSample {
    /// [`read`](Self::read), or `None` with a warning (the server gone, say).
    fn read_or_warn(pid: u32) -> Option<ProcSample> {
        ProcSample::read(pid).map_err(|e| tracing::warn!(pid, error = %e, "cannot read the server's /proc")).ok()
    }

    fn read(pid: u32) -> std::io::Result<ProcSample> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // The fields after the command's closing parenthesis: state is
        // field 3, utime 14 and stime 15.
        let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
        let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        };
        let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
        let calls =
            |key: &str| io.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
        Ok(ProcSample {
            ticks: field(11) + field(12),
            system_ticks: field(12),
            write_calls: calls("syscw:"),
            read_calls: calls("syscr:"),
            rss_kib: kib("VmRSS:").unwrap_or(0),
            hwm_kib: kib("VmHWM:").unwrap_or(0),
        })
    }
}

/// Clock ticks a second (`getconf CLK_TCK`; 100 if that fails).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// Reads what reached the teacher's sending connection (not measured),
/// answering what needs an answer, and beats on it every 10 s (`beat`:
/// when it last did): an entry of tens of thousands can outlast the
/// server's heartbeat timeout.
async fn drain_sender<D: Dialect>(teacher: &mut Ws, beat: &mut Instant) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(frame) = D::BEAT
        && beat.elapsed() >= Duration::from_secs(10)
    {
        *beat = Instant::now();
        teacher.send(WsMessage::Text(frame.into())).await?;
    }
    while let Some(Some(Ok(msg))) = futures::FutureExt::now_or_never(teacher.next()) {
        if let WsMessage::Text(t) = msg
            && let Frame::Reply(answer) = D::read(t.as_str())
        {
            teacher.send(WsMessage::Text(answer.into())).await?;
        }
    }
    Ok(())
}

/// Connects `clients` clients (client 0 is the teacher, who speaks through
/// a second connection), runs the workload for `a.seconds` and reports.
async fn drive<D: Dialect>(a: &Args, clients: usize, dialect: &D) -> Result<(), Box<dyn std::error::Error>> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Sample>();
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut teacher_sink = None;
    let mut sender_beat = Instant::now();
    let mut chatters: Vec<tokio::sync::mpsc::UnboundedSender<String>> = Vec::new();
    // Students spread over the class also chat, on the main loop's command:
    // every sub-class has its chatters.
    let stride = ((clients as u64).saturating_sub(1) / CHATTERS as u64).max(1);
    for n in 0..clients as u64 {
        let ws = dialect.enter(a.first + n, false).await?;
        let (say_tx, say_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        if !a.listen && n > 0 && (n - 1) % stride == 0 && chatters.len() < CHATTERS {
            chatters.push(say_tx);
        }
        tasks.push(tokio::spawn(client::<D>(n as u32, ws, tx.clone(), say_rx)));
        if n == 0 && !a.listen && a.first == 0 {
            // The teacher speaks through its own second connection.
            teacher_sink = Some(dialect.enter(0, true).await?);
        }
        if let Some(teacher) = teacher_sink.as_mut() {
            // Read while the others enter: a connection that reads nothing
            // for the server's slow-client lag is closed.
            drain_sender::<D>(teacher, &mut sender_beat).await?;
        }
        if (n + 1) % 1_000 == 0 {
            tracing::info!(connected = n + 1, elapsed = ?started.elapsed(), "connecting");
        }
    }
    let join_time = started.elapsed();
    println!(
        "{clients} websocket clients connected in {:.2} s ({:.0}/s)",
        join_time.as_secs_f64(),
        clients as f64 / join_time.as_secs_f64()
    );
    // Listening only, nobody speaks from here.
    let mut teacher = teacher_sink;
    let mut lat = Latencies::default();
    let mut ledger = TeacherLedger { learn: teacher.is_none(), ..TeacherLedger::default() };
    let server_before = a.server_pid.and_then(ProcSample::read_or_warn);
    let window = Instant::now();
    let end = Instant::now() + Duration::from_secs(a.seconds);
    let period = Duration::from_millis(1_000 / u64::from(a.teacher_rate.clamp(1, 1_000)));
    let mut next = Instant::now();
    let mut next_progress = Instant::now() + Duration::from_secs(1);
    let chat_period = Duration::from_micros(1_000_000 / u64::from(a.chat_rate.max(1)));
    let mut next_chat = Instant::now();
    let mut chat_sent = 0u64;
    while Instant::now() < end {
        while a.chat_rate > 0 && !chatters.is_empty() && Instant::now() >= next_chat {
            next_chat += chat_period;
            let who = chat_sent as usize % chatters.len();
            let _ = chatters[who].send(D::chat(micros_now()));
            chat_sent += 1;
        }
        if let Some(teacher) = teacher.as_mut() {
            if Instant::now() >= next {
                next += period;
                let now = micros_now();
                ledger.sent.push(now);
                teacher.send(WsMessage::Text(D::say(now).into())).await?;
            }
            drain_sender::<D>(teacher, &mut sender_beat).await?;
        }
        while let Ok(s) = rx.try_recv() {
            ledger.take(&mut lat, s);
        }
        if Instant::now() >= next_progress {
            next_progress += Duration::from_secs(1);
            let got = lat.by_class.get("teacher").map_or(0, Vec::len);
            tracing::info!(teacher_deliveries = got, "running");
            if a.until.as_deref().is_some_and(std::path::Path::exists) {
                tracing::info!("told to stop listening");
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let window = window.elapsed();
    let server_after = a.server_pid.and_then(ProcSample::read_or_warn);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Wait up to 10 s more for teacher messages still on their way (the
    // teacher's connection keeps answering pings meanwhile).
    let drain_end = Instant::now() + Duration::from_secs(10);
    loop {
        while let Ok(s) = rx.try_recv() {
            ledger.take(&mut lat, s);
        }
        if (!ledger.learn && ledger.lost(clients) == 0) || Instant::now() >= drain_end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(teacher) = teacher.as_mut() {
            drain_sender::<D>(teacher, &mut sender_beat).await?;
        }
    }
    let alive = tasks.iter().filter(|t| !t.is_finished()).count();
    println!("after {} s: {alive} of {clients} clients still connected; {chat_sent} chat lines sent", a.seconds);
    println!("fan-out latency, send to receipt by the client over loopback websockets:");
    lat.report();
    let lost = ledger.lost(clients);
    println!(
        "teacher messages: {} {}, {} of {} deliveries, {lost} lost, {} duplicates",
        ledger.sent.len(),
        if ledger.learn { "seen (sent by another process)" } else { "sent" },
        ledger.unique,
        ledger.sent.len() * clients,
        ledger.duplicates
    );
    let mut summary = format!(
        "summary protocol={} clients={clients} teacher_sent={} teacher_deliveries={} teacher_lost={lost}",
        a.protocol.name(),
        ledger.sent.len(),
        ledger.unique
    );
    for (class, name) in [("teacher", "teacher"), ("chat", "chat")] {
        let mut p = |q| lat.percentile(class, q).map_or("-".to_owned(), |ms| format!("{ms:.2}"));
        summary += &format!(" {name}_p50_ms={} {name}_p99_ms={}", p(0.5), p(0.99));
    }
    if let (Some(pid), Some(before), Some(after)) = (a.server_pid, server_before, server_after) {
        let cpu = after.ticks.saturating_sub(before.ticks) as f64 / clock_ticks();
        let system = after.system_ticks.saturating_sub(before.system_ticks) as f64 / clock_ticks();
        let writes = after.write_calls.saturating_sub(before.write_calls);
        let reads = after.read_calls.saturating_sub(before.read_calls);
        let mib = |kib: u64| kib as f64 / 1024.0;
        println!(
            "server CPU s in the window: {cpu:.2} s over {:.2} s ({:.2} cores; {system:.2} s in the kernel), pid {pid}",
            window.as_secs_f64(),
            cpu / window.as_secs_f64()
        );
        println!(
            "server system calls in the window: {writes} writes ({:.0} a second per client), {reads} reads \
             (read, write and their vectored forms; send(2) and recv(2) are not counted)",
            writes as f64 / window.as_secs_f64() / clients.max(1) as f64
        );
        println!(
            "server RSS: {:.1} MiB at the window's start, {:.1} MiB at its end, peak {:.1} MiB (VmHWM)",
            mib(before.rss_kib),
            mib(after.rss_kib),
            mib(after.hwm_kib)
        );
        summary += &format!(
            " server_cpu_s={cpu:.2} server_sys_s={system:.2} server_writes={writes} server_reads={reads} server_rss_mib={:.1} server_hwm_mib={:.1}",
            mib(after.rss_kib),
            mib(after.hwm_kib)
        );
    }
    println!("{summary}");
    for t in tasks {
        t.abort();
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let a = args();
    match a.ws {
        Some(n) => over_websockets(&a, n),
        None if a.protocol != Protocol::Roomkit => Err("--protocol socketio needs --ws N --server HOST:PORT".into()),
        None => in_process(&a),
    }
}
