//! Soak: one classroom node (the quickstart server, in memory, in a child
//! process of its own) under a class of `--members` (5,000) websocket
//! clients for `--minutes` (30), with churn (`--churn` members leave and as
//! many new ones join every second), chat (`--chat-rate` lines/s, 100), the
//! teacher speaking `--teacher-rate` times a second (2, at most 10), an
//! answer card every 30 s and a red packet every minute.
//!
//! Every minute it prints the server's resident memory and open
//! descriptors (read from `/proc`), how many clients are connected, the
//! latency percentiles per class (teacher messages, chat, card opens: from
//! the send to the client reading it), the deliveries, the gaps seen in the
//! reliable sequence, resets, error frames and closes no client asked for.
//! At the end: the table again, the change of resident memory from minute 5
//! to the last, and a PNG plot (`--plot`, `soak.png` by default).
//!
//! ```text
//! cargo run --release -p examples --example soak
//! cargo run --release -p examples --example soak -- --members 5000 --minutes 30 --churn 20 --plot soak.png
//! ```
//!
//! The clients run in this process, on the same cores as the server: the
//! latencies include the clients' own work. Clients spread over loopback
//! source addresses (127.0.0.2 and up, 1,000 each) because the edge caps
//! connections per address.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use examples::classroom::{ClassroomConfig, demo_ticket, random_key, serve};
use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use room_core::{Role, Terminal};
use roomkit::ticket::KeyRing;
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;

// Counts the server child's live heap: resident memory that grows while
// the heap does not is the allocator's, not the service's.
#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const ROOM_ID: u64 = 42;
/// Clients per loopback source address (the edge allows 2,000).
const PER_SOURCE: u64 = 1_000;
/// The environment variable that hands the ticket key to the server child.
const KEY_VAR: &str = "ROOMKIT_SOAK_KEY";

#[derive(Debug, Clone)]
struct Args {
    members: usize,
    minutes: u64,
    churn: usize,
    chat_rate: u32,
    teacher_rate: u32,
    plot: String,
}

fn args() -> Result<Args, String> {
    let mut a =
        Args { members: 5_000, minutes: 30, churn: 20, chat_rate: 100, teacher_rate: 2, plot: "soak.png".into() };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |v: &str| v.parse::<u64>().map_err(|_| format!("{flag}: not a number: {v}"));
        match flag.as_str() {
            "--members" => a.members = number(&value)?.clamp(2, 15_000) as usize,
            "--minutes" => a.minutes = number(&value)?.clamp(1, 24 * 60),
            "--churn" => a.churn = number(&value)?.min(1_000) as usize,
            "--chat-rate" => a.chat_rate = number(&value)?.min(10_000) as u32,
            "--teacher-rate" => a.teacher_rate = number(&value)?.clamp(1, 10) as u32,
            "--plot" => a.plot = value,
            other => return Err(format!("unknown option {other} (see the file's header)")),
        }
    }
    Ok(a)
}

fn micros_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect()
}

/// The server child: the quickstart classroom on a free port, until its
/// parent closes its standard input.
fn serve_child() -> Result<(), Box<dyn std::error::Error>> {
    let key = std::env::var(KEY_VAR).ok().and_then(|k| unhex(&k)).ok_or("the soak's key is missing")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let config = ClassroomConfig { key, expected_learners: 5_000, ..ClassroomConfig::default() };
        let running = serve(listener, config).await?;
        println!("listening {}", running.addr);
        tokio::spawn(async {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                every.tick().await;
                let s = GLOBAL.stats();
                println!("heap {}", s.bytes_allocated.saturating_sub(s.bytes_deallocated));
            }
        });
        // The parent holds our stdin; when it goes, so do we.
        tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
                line.clear();
            }
        })
        .await?;
        Ok(())
    })
}

/// The server child, killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    /// The child's live heap in bytes, as it last said.
    heap: Arc<AtomicU64>,
}

impl Server {
    fn start(key: &[u8]) -> Result<Server, Box<dyn std::error::Error>> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--serve")
            .env(KEY_VAR, hex(key))
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout);
        let mut line = String::new();
        lines.read_line(&mut line)?;
        let addr =
            line.trim().strip_prefix("listening ").ok_or_else(|| format!("the server said {line:?}"))?.parse()?;
        let heap = Arc::new(AtomicU64::new(0));
        let said = heap.clone();
        std::thread::spawn(move || {
            for line in lines.lines().map_while(Result::ok) {
                if let Some(bytes) = line.strip_prefix("heap ").and_then(|b| b.parse().ok()) {
                    said.store(bytes, Ordering::Relaxed);
                }
            }
        });
        Ok(Server { child, addr, heap })
    }

    /// Resident memory in bytes and open descriptors, from `/proc`.
    fn usage(&self) -> (u64, usize) {
        let pid = self.child.id();
        let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .map_or(0, |kib| kib * 1024);
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
        (rss, fds)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the clients count, shared.
#[derive(Default)]
struct Counters {
    connected: AtomicU64,
    gaps: AtomicU64,
    duplicates: AtomicU64,
    resets: AtomicU64,
    errors: AtomicU64,
    unasked_closes: AtomicU64,
    connect_failures: AtomicU64,
    answers: AtomicU64,
    grabs: AtomicU64,
    paid: AtomicU64,
}

/// Latency samples of the current minute, by class, in microseconds.
#[derive(Default)]
struct Minute {
    teacher: Vec<u64>,
    chat: Vec<u64>,
    card: Vec<u64>,
}

struct Shared {
    counters: Counters,
    /// Error frames by code, over the whole run.
    errors: Mutex<HashMap<String, u64>>,
    minute: Mutex<Minute>,
    /// Card id → when the teacher sent it (microseconds).
    cards: Mutex<HashMap<u64, u64>>,
}

enum MemberCommand {
    Chat(String),
    Leave,
}

/// The number after `key` in `text` (`"s":12` → 12).
fn number_after(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let tail = &text[at..];
    let end = tail.find(|c: char| !c.is_ascii_digit()).unwrap_or(tail.len());
    tail[..end].parse().ok()
}

/// One member: joins, beats, reads, answers some cards, grabs some
/// packets, chats when told and leaves when told.
async fn member(
    server: SocketAddr,
    source: IpAddr,
    url: String,
    uin: u64,
    shared: Arc<Shared>,
    mut commands: mpsc::UnboundedReceiver<MemberCommand>,
) {
    let socket = match source {
        IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    };
    let stream = async {
        let socket = socket?;
        socket.bind(SocketAddr::new(source, 0))?;
        let stream = socket.connect(server).await?;
        stream.set_nodelay(true)?;
        Ok::<_, std::io::Error>(stream)
    };
    let ws = match stream.await {
        // Small read buffers: tungstenite zero-fills the whole buffer
        // before each read (128 KiB by default), which would make the
        // load client, not the server, the bottleneck.
        Ok(stream) => {
            let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(8 << 10);
            tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await.ok()
        }
        Err(_) => None,
    };
    let Some((ws, _)) = ws else {
        shared.counters.connect_failures.fetch_add(1, Ordering::Relaxed);
        return;
    };
    shared.counters.connected.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut stream) = ws.split();
    // Beats spread over the interval.
    let offset = Duration::from_millis(uin * 7 % 20_000);
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + offset, Duration::from_secs(20));
    let mut last_seq: Option<(u64, u64)> = None;
    let mut leaving = false;
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(WsMessage::Text(t))) => {
                    let t = t.as_str();
                    let mut reply = None;
                    observe(t, uin, &shared, &mut last_seq, &mut reply);
                    if let Some(r) = reply
                        && sink.send(WsMessage::Text(r.into())).await.is_err()
                    {
                        break;
                    }
                }
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            command = commands.recv() => match command {
                Some(MemberCommand::Chat(line)) => {
                    if sink.send(WsMessage::Text(line.into())).await.is_err() {
                        break;
                    }
                }
                Some(MemberCommand::Leave) | None => {
                    leaving = true;
                    let _ = sink.send(WsMessage::Text(r#"{"t":"leave"}"#.into())).await;
                    // The server closes with 1000; wait for it briefly.
                    let _ = tokio::time::timeout(Duration::from_secs(5), async {
                        while let Some(Ok(m)) = stream.next().await {
                            if matches!(m, WsMessage::Close(_)) {
                                break;
                            }
                        }
                    })
                    .await;
                    break;
                }
            },
            _ = beat.tick() => {
                if sink.send(WsMessage::Text(r#"{"t":"beat"}"#.into())).await.is_err() {
                    break;
                }
            }
        }
    }
    shared.counters.connected.fetch_sub(1, Ordering::Relaxed);
    if !leaving {
        shared.counters.unasked_closes.fetch_add(1, Ordering::Relaxed);
    }
}

/// Reads one frame: latencies, the reliable sequence, and what to answer.
fn observe(t: &str, uin: u64, shared: &Shared, last_seq: &mut Option<(u64, u64)>, reply: &mut Option<String>) {
    let now = micros_now();
    if t.starts_with(r#"{"t":"push""#) {
        let class = if t.contains(r#""c":"teacher""#) {
            Some(0)
        } else if t.contains(r#""c":"chat""#) {
            Some(1)
        } else {
            None
        };
        if t.contains(r#""k":"resync""#) {
            *reply = last_seq.map(|(e, c)| format!(r#"{{"t":"check","epoch":{e},"after":{c}}}"#));
            return;
        }
        if (t.contains(r#""c":"teacher""#) || t.contains(r#""c":"signal""#))
            && let (Some(e), Some(s), Some(p), Some((epoch, contiguous))) =
                (number_after(t, r#""e":"#), number_after(t, r#""s":"#), number_after(t, r#""p":"#), *last_seq)
        {
            // docs/PROTOCOL.md, Recovery: a gap is a check, a duplicate is dropped.
            if e != epoch || p > contiguous {
                shared.counters.gaps.fetch_add(1, Ordering::Relaxed);
                *reply = Some(format!(r#"{{"t":"check","epoch":{epoch},"after":{contiguous}}}"#));
                return;
            }
            if s <= contiguous {
                shared.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                return;
            }
            *last_seq = Some((epoch, s));
        }
        let mut samples = Vec::new();
        if let Some(class) = class {
            let mut rest = t;
            while let Some(i) = rest.find(r#""text":"t="#) {
                rest = &rest[i + 10..];
                if let Ok(sent) = rest[..rest.find('"').unwrap_or(0)].parse::<u64>() {
                    samples.push((class, now.saturating_sub(sent)));
                }
            }
        } else if t.contains(r#""kind":6,"#) && t.contains(r#""op":"open""#) {
            // A card: some learners answer it.
            if let Some(id) = number_after(t, r#""id":"#) {
                if let Some(sent) = shared.cards.lock().get(&id) {
                    samples.push((2, now.saturating_sub(*sent)));
                }
                if uin % 5 == id % 5 {
                    *reply = Some(format!(r#"{{"t":"card_answer","option":{}}}"#, uin % 4));
                }
            }
        } else if t.contains(r#""kind":7,"#) && t.contains(r#""op":"open""#) {
            // A packet: one learner in 25 grabs.
            if let Some(id) = number_after(t, r#""id":"#)
                && uin % 25 == id % 25
            {
                *reply = Some(format!(r#"{{"t":"packet_grab","id":{id}}}"#));
            }
        }
        if !samples.is_empty() {
            let mut minute = shared.minute.lock();
            for (class, us) in samples {
                match class {
                    0 => minute.teacher.push(us),
                    1 => minute.chat.push(us),
                    _ => minute.card.push(us),
                }
            }
        }
    } else if t.starts_with(r#"{"t":"recover""#) {
        if let (Some((epoch, contiguous)), Some(upto)) = (*last_seq, number_after(t, r#""upto":"#)) {
            *last_seq = Some((epoch, contiguous.max(upto)));
        }
    } else if t.starts_with(r#"{"t":"reset""#) {
        shared.counters.resets.fetch_add(1, Ordering::Relaxed);
        *last_seq = number_after(t, r#""e":"#).zip(number_after(t, r#""head":"#));
    } else if t.starts_with(r#"{"t":"error""#) {
        shared.counters.errors.fetch_add(1, Ordering::Relaxed);
        let code = t.split(r#""code":""#).nth(1).and_then(|rest| rest.split('"').next()).unwrap_or("?");
        *shared.errors.lock().entry(code.to_owned()).or_default() += 1;
    } else if t.starts_with(r#"{"t":"answered""#) {
        shared.counters.answers.fetch_add(1, Ordering::Relaxed);
    } else if t.starts_with(r#"{"t":"grabbed""#) {
        shared.counters.grabs.fetch_add(1, Ordering::Relaxed);
        shared.counters.paid.fetch_add(number_after(t, r#""amount":"#).unwrap_or(0), Ordering::Relaxed);
    } else if t.starts_with(r#"{"t":"welcome""#) {
        *last_seq = number_after(t, r#""epoch":"#).zip(number_after(t, r#""head":"#));
    }
}

/// One row of the table.
#[derive(Debug, Clone, Default)]
struct Row {
    minute: u64,
    rss: u64,
    heap: u64,
    fds: usize,
    connected: u64,
    joined: u64,
    left: u64,
    teacher: (usize, f64, f64),
    chat: (usize, f64, f64),
    card: (usize, f64, f64),
    gaps: u64,
    duplicates: u64,
    resets: u64,
    errors: u64,
    unasked: u64,
}

fn percentiles(v: &mut [u64]) -> (usize, f64, f64) {
    if v.is_empty() {
        return (0, 0.0, 0.0);
    }
    v.sort_unstable();
    let p = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)] as f64 / 1_000.0;
    (v.len(), p(0.5), p(0.99))
}

fn print_header() {
    println!(
        "{:>3} {:>8} {:>8} {:>5} {:>6} {:>6} {:>6} | {:>9} {:>7} {:>7} | {:>8} {:>7} {:>7} | {:>6} {:>7} {:>7} | {:>4} {:>4} {:>4} {:>5} {:>4}",
        "min",
        "RSS MiB",
        "heap MiB",
        "fds",
        "conns",
        "joins",
        "leaves",
        "teacher",
        "p50 ms",
        "p99 ms",
        "chat",
        "p50 ms",
        "p99 ms",
        "cards",
        "p50 ms",
        "p99 ms",
        "gaps",
        "dups",
        "rst",
        "errs",
        "lost"
    );
}

fn print_row(r: &Row) {
    println!(
        "{:>3} {:>8.1} {:>8.1} {:>5} {:>6} {:>6} {:>6} | {:>9} {:>7.1} {:>7.1} | {:>8} {:>7.1} {:>7.1} | {:>6} {:>7.1} {:>7.1} | {:>4} {:>4} {:>4} {:>5} {:>4}",
        r.minute,
        r.rss as f64 / (1 << 20) as f64,
        r.heap as f64 / (1 << 20) as f64,
        r.fds,
        r.connected,
        r.joined,
        r.left,
        r.teacher.0,
        r.teacher.1,
        r.teacher.2,
        r.chat.0,
        r.chat.1,
        r.chat.2,
        r.card.0,
        r.card.1,
        r.card.2,
        r.gaps,
        r.duplicates,
        r.resets,
        r.errors,
        r.unasked
    );
}

/// Two panels: memory and descriptors, and teacher and chat p99 per minute.
fn plot(path: &str, rows: &[Row]) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
    let bytes: &'static [u8] = Box::leak(std::fs::read(FONT).map_err(|e| format!("{FONT}: {e}"))?.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| format!("{FONT}: not a font"))?;
    let root = BitMapBackend::new(path, (1000, 800)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(400);
    let minutes = rows.last().map_or(1, |r| r.minute).max(1);
    let rss_max = rows.iter().map(|r| r.rss as f64 / (1 << 20) as f64).fold(1.0, f64::max) * 1.2;
    let fds_max = rows.iter().map(|r| r.fds as f64).fold(1.0, f64::max) * 1.2;
    let mut chart = ChartBuilder::on(&top)
        .caption("Server resident memory and descriptors per minute", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .right_y_label_area_size(60)
        .build_cartesian_2d(0u64..minutes, 0f64..rss_max)?
        .set_secondary_coord(0u64..minutes, 0f64..fds_max);
    chart.configure_mesh().x_desc("minute").y_desc("RSS (MiB)").draw()?;
    chart.configure_secondary_axes().y_desc("open descriptors").draw()?;
    chart
        .draw_series(LineSeries::new(
            rows.iter().map(|r| (r.minute, r.rss as f64 / (1 << 20) as f64)),
            BLUE.stroke_width(2),
        ))?
        .label("RSS (MiB)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(rows.iter().map(|r| Circle::new((r.minute, r.rss as f64 / (1 << 20) as f64), 3, BLUE.filled())))?;
    chart
        .draw_series(LineSeries::new(
            rows.iter().map(|r| (r.minute, r.heap as f64 / (1 << 20) as f64)),
            CYAN.stroke_width(2),
        ))?
        .label("live heap (MiB)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], CYAN));
    chart.draw_secondary_series(rows.iter().map(|r| Circle::new((r.minute, r.fds as f64), 3, RED.filled())))?;
    chart
        .draw_secondary_series(LineSeries::new(rows.iter().map(|r| (r.minute, r.fds as f64)), RED.stroke_width(2)))?
        .label("descriptors")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;

    let lat_max = rows.iter().flat_map(|r| [r.teacher.2, r.chat.2, r.card.2]).fold(1.0, f64::max) * 1.2;
    let mut chart = ChartBuilder::on(&bottom)
        .caption("Latency per minute, send to the client reading it", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(0u64..minutes, 0f64..lat_max)?;
    chart.configure_mesh().x_desc("minute").y_desc("ms").draw()?;
    type Series = (&'static str, RGBColor, fn(&Row) -> f64);
    let series: [Series; 4] = [
        ("teacher p50", BLUE, |r| r.teacher.1),
        ("teacher p99", RED, |r| r.teacher.2),
        ("chat p99", GREEN, |r| r.chat.2),
        ("card open p99", MAGENTA, |r| r.card.2),
    ];
    for (name, color, value) in series {
        chart.draw_series(rows.iter().map(|r| Circle::new((r.minute, value(r)), 3, color.filled())))?;
        chart
            .draw_series(LineSeries::new(rows.iter().map(|r| (r.minute, value(r))), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

struct Roster {
    /// Connected members: uin → their command channel.
    members: Vec<(u64, mpsc::UnboundedSender<MemberCommand>)>,
    next_uin: u64,
}

fn spawn_member(
    roster: &mut Roster,
    keys: &KeyRing,
    server: SocketAddr,
    shared: &Arc<Shared>,
) -> tokio::task::JoinHandle<()> {
    let uin = roster.next_uin;
    roster.next_uin += 1;
    let ticket = demo_ticket(keys, ROOM_ID, uin, Role::Student, Terminal::ALL[uin as usize % 7]);
    let url = format!("ws://{server}/ws?room={ROOM_ID}&ticket={ticket}");
    let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + ((uin / PER_SOURCE) % 250) as u8));
    let (tx, rx) = mpsc::unbounded_channel();
    roster.members.push((uin, tx));
    tokio::spawn(member(server, source, url, uin, shared.clone(), rx))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().nth(1).as_deref() == Some("--serve") {
        return serve_child();
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let a = args()?;
    let key = random_key();
    let keys = KeyRing::new("demo", key.clone())?;
    let server = Server::start(&key)?;
    tracing::info!(addr = %server.addr, pid = server.child.id(), "server child started");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let rows = runtime.block_on(drive(&a, &keys, &server))?;
    drop(server);
    println!();
    println!(
        "soak: {} members, churn {}/s, chat {} lines/s, teacher {} messages/s, {} minutes",
        a.members, a.churn, a.chat_rate, a.teacher_rate, a.minutes
    );
    print_header();
    for r in &rows {
        print_row(r);
    }
    let at = |m: u64| rows.iter().find(|r| r.minute == m).or(rows.last());
    if let (Some(five), Some(last)) = (at(5), rows.last()) {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let change = |a: u64, b: u64| (b as f64 / a.max(1) as f64 - 1.0) * 100.0;
        println!(
            "RSS at minute {}: {:.1} MiB; at minute {}: {:.1} MiB ({:+.1}%); live heap {:.1} -> {:.1} MiB ({:+.1}%)",
            five.minute,
            mib(five.rss),
            last.minute,
            mib(last.rss),
            change(five.rss, last.rss),
            mib(five.heap),
            mib(last.heap),
            change(five.heap, last.heap)
        );
    }
    match plot(&a.plot, &rows) {
        Ok(()) => println!("plot: {}", a.plot),
        Err(e) => println!("no plot: {e}"),
    }
    Ok(())
}

async fn drive(a: &Args, keys: &KeyRing, server: &Server) -> Result<Vec<Row>, Box<dyn std::error::Error>> {
    let shared = Arc::new(Shared {
        counters: Counters::default(),
        errors: Mutex::new(HashMap::new()),
        minute: Mutex::new(Minute::default()),
        cards: Mutex::new(HashMap::new()),
    });
    let addr = server.addr;
    // The teacher speaks through a connection the driver reads itself.
    let ticket = demo_ticket(keys, ROOM_ID, 1, Role::Teacher, Terminal::Pc);
    let (teacher, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws?room={ROOM_ID}&ticket={ticket}")).await?;
    let (mut teacher_tx, mut teacher_rx) = teacher.split();
    tokio::spawn(async move { while let Some(Ok(_)) = teacher_rx.next().await {} });

    let mut roster = Roster { members: Vec::with_capacity(a.members), next_uin: 1_000 };
    let started = Instant::now();
    for n in 0..a.members {
        spawn_member(&mut roster, keys, addr, &shared);
        if (n + 1) % 500 == 0 {
            // Let the joins land in steps, as a class arriving would.
            while (shared.counters.connected.load(Ordering::Relaxed)
                + shared.counters.connect_failures.load(Ordering::Relaxed)) as usize
                + 250
                < n + 1
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tracing::info!(joined = n + 1, elapsed = ?started.elapsed(), "joining");
        }
    }
    tracing::info!(
        members = a.members,
        seconds = started.elapsed().as_secs_f64(),
        failures = shared.counters.connect_failures.load(Ordering::Relaxed),
        "class in; soaking"
    );
    {
        // The join storm's samples are not the soak's.
        *shared.minute.lock() = Minute::default();
    }

    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut random = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n.max(1) as u64) as usize
    };
    let soak_start = Instant::now();
    let end = soak_start + Duration::from_secs(a.minutes * 60);
    let tick = Duration::from_millis(100);
    let mut next_tick = Instant::now();
    let mut ticks = 0u64;
    let mut chat_due = 0f64;
    let mut packets = 0u64;
    let mut next_card = 1u64;
    let mut card_closes_at: Option<Instant> = None;
    let mut rows = Vec::new();
    let (mut joined, mut left) = (0u64, 0u64);
    let mut last = (0u64, 0u64, 0u64, 0u64, 0u64);
    while Instant::now() < end {
        let now = Instant::now();
        if ticks.is_multiple_of(u64::from(10 / a.teacher_rate)) {
            teacher_tx.send(WsMessage::Text(format!(r#"{{"t":"say","text":"t={}"}}"#, micros_now()).into())).await?;
        }
        // Chat from random members.
        chat_due += f64::from(a.chat_rate) / 10.0;
        while chat_due >= 1.0 && !roster.members.is_empty() {
            chat_due -= 1.0;
            let who = random(roster.members.len());
            let _ = roster.members[who]
                .1
                .send(MemberCommand::Chat(format!(r#"{{"t":"chat","text":"t={}"}}"#, micros_now())));
        }
        if ticks.is_multiple_of(10) {
            // Churn, once a second: some leave, as many new ones come.
            for _ in 0..a.churn.min(roster.members.len()) {
                let who = random(roster.members.len());
                let (_, tx) = roster.members.swap_remove(who);
                let _ = tx.send(MemberCommand::Leave);
                left += 1;
            }
            for _ in 0..a.churn {
                spawn_member(&mut roster, keys, addr, &shared);
                joined += 1;
            }
        }
        if ticks.is_multiple_of(300) {
            // A card every 30 s, open for 20.
            shared.cards.lock().insert(next_card, micros_now());
            next_card += 1;
            teacher_tx.send(WsMessage::Text(r#"{"t":"card_open","options":4,"seconds":20}"#.into())).await?;
            card_closes_at = Some(now + Duration::from_secs(25));
        }
        if card_closes_at.is_some_and(|at| now >= at) {
            card_closes_at = None;
            teacher_tx.send(WsMessage::Text(r#"{"t":"card_close"}"#.into())).await?;
        }
        if ticks.is_multiple_of(600) {
            teacher_tx.send(WsMessage::Text(r#"{"t":"packet_send","amount":10000,"count":200}"#.into())).await?;
            packets += 1;
        }
        ticks += 1;
        if ticks.is_multiple_of(600) {
            let (rss, fds) = server.usage();
            let mut minute = std::mem::take(&mut *shared.minute.lock());
            let c = &shared.counters;
            let totals = (
                c.gaps.load(Ordering::Relaxed),
                c.duplicates.load(Ordering::Relaxed),
                c.resets.load(Ordering::Relaxed),
                c.errors.load(Ordering::Relaxed),
                c.unasked_closes.load(Ordering::Relaxed),
            );
            let row = Row {
                minute: ticks / 600,
                rss,
                heap: server.heap.load(Ordering::Relaxed),
                fds,
                connected: c.connected.load(Ordering::Relaxed),
                joined,
                left,
                teacher: percentiles(&mut minute.teacher),
                chat: percentiles(&mut minute.chat),
                card: percentiles(&mut minute.card),
                gaps: totals.0 - last.0,
                duplicates: totals.1 - last.1,
                resets: totals.2 - last.2,
                errors: totals.3 - last.3,
                unasked: totals.4 - last.4,
            };
            last = totals;
            (joined, left) = (0, 0);
            if rows.is_empty() {
                print_header();
            }
            print_row(&row);
            rows.push(row);
        }
        next_tick += tick;
        if let Some(rest) = next_tick.checked_duration_since(Instant::now()) {
            tokio::time::sleep(rest).await;
        }
    }
    let c = &shared.counters;
    println!(
        "answers taken {}; {packets} packets of 10,000: {} shares paying {} in all (over-paid: {}); connect failures {}",
        c.answers.load(Ordering::Relaxed),
        c.grabs.load(Ordering::Relaxed),
        c.paid.load(Ordering::Relaxed),
        c.paid.load(Ordering::Relaxed) > packets * 10_000,
        c.connect_failures.load(Ordering::Relaxed)
    );
    println!("error frames by code: {:?}", shared.errors.lock());
    for (_, tx) in roster.members.drain(..) {
        let _ = tx.send(MemberCommand::Leave);
    }
    Ok(rows)
}
