//! The fault lab's class: N websocket members of one room spread over the
//! nodes, run in the lab's client namespace.
//!
//! ```text
//! faultlab-client --nodes 10.213.1.1:7101,10.213.1.2:7102,10.213.1.3:7103 --members 3000 [--room 42] [--ramp 300]
//! ```
//!
//! Member 1 is the teacher; the others are students, member i on node
//! i mod 3. Each fetches a ticket from its node's demo `/ticket` endpoint
//! (every node of a cluster shares the key, so it is good on any node),
//! enters, beats as the welcome says, acks every 5 s and follows the
//! recovery rules of service/PROTOCOL.md. A member that hears nothing from
//! its node for 12 s (not even an ack's answer), or whose socket closes
//! without a goodbye, reconnects to the next node and checks from where it
//! was. Students answer every card and grab every packet.
//!
//! Standard input, one command a line: `say N` (teacher messages per
//! second), `card` (open a 4-option card for 120 s), `card_close`,
//! `packet AMOUNT COUNT`, `stop` (or end of input): print the summary and
//! exit. Every second a status line goes to standard output, and the
//! summary is the last line; both are JSON objects with a `t` field.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

/// Nothing heard from the node for this long: it is unreachable.
const SILENCE: Duration = Duration::from_secs(12);
const ACK_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
struct Args {
    nodes: Vec<String>,
    members: usize,
    room: u64,
    ramp: u64,
}

/// What the teacher is told to do.
#[derive(Debug, Clone, Default)]
struct Control {
    say_rate: u32,
    /// Bumped for each card to open.
    cards: u64,
    card_closes: u64,
    /// Bumped for each packet (amount, count).
    packets: Vec<(u64, u64)>,
    stop: bool,
}

/// One member's record, shared with the summary.
#[derive(Debug, Default)]
struct Record {
    uin: u64,
    node: Option<usize>,
    connected: bool,
    entered: bool,
    welcomes: u64,
    reconnects: u64,
    /// Teacher messages delivered (bit n: message n).
    seen: Vec<u64>,
    /// Where each teacher message was delivered: n -> (epoch, seq, by check).
    at: HashMap<u64, (u64, u64, bool)>,
    duplicates: u64,
    recovered: u64,
    resets: u64,
    checks: u64,
    closes: BTreeMap<u16, u64>,
    silences: u64,
    connect_failures: u64,
    /// (packet, amount) taken.
    grabbed: Vec<(u64, u64)>,
    answered: u64,
    errors: BTreeMap<String, u64>,
}

impl Record {
    fn see(&mut self, n: u64) -> bool {
        let (w, b) = ((n / 64) as usize, n % 64);
        if self.seen.len() <= w {
            self.seen.resize(w + 1, 0);
        }
        let new = self.seen[w] & (1 << b) == 0;
        self.seen[w] |= 1 << b;
        new
    }
}

#[derive(Debug, Default)]
struct Shared {
    records: Vec<Mutex<Record>>,
    /// (epoch, seq) -> the body's hash, as first seen by any member.
    numbers: Mutex<HashMap<(u64, u64), u64>>,
    double_numbered: AtomicU64,
    /// Samples: (epoch, seq) with the two bodies.
    double_samples: Mutex<Vec<Value>>,
    /// Samples of one message delivered twice to a member.
    duplicate_samples: Mutex<Vec<Value>>,
    said: AtomicU64,
    /// uins the roster said left, with when (s since start).
    left: Mutex<Vec<(u64, f64)>>,
    packets: Mutex<BTreeMap<u64, (u64, u64)>>,
    cards: Mutex<Vec<u64>>,
    stopping: AtomicBool,
}

fn args() -> Result<Args, String> {
    let mut a = Args { nodes: Vec::new(), members: 3000, room: 42, ramp: 300 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<u64>().map_err(|_| format!("{flag}: a number expected"));
        match flag.as_str() {
            "--nodes" => a.nodes = value.split(',').map(str::to_owned).collect(),
            "--members" => a.members = num(&value)? as usize,
            "--room" => a.room = num(&value)?,
            "--ramp" => a.ramp = num(&value)?.max(1),
            other => return Err(format!("unknown option {other} (see the file's header)")),
        }
    }
    if a.nodes.is_empty() {
        return Err("--nodes A,B,C is needed".into());
    }
    Ok(a)
}

fn hash(s: &str) -> u64 {
    // FNV-1a: stable, enough to tell two bodies apart.
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// A minimal HTTP GET (the demo ticket endpoint).
async fn get(addr: &str, path: &str) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await??;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut body)).await??;
    Ok(body)
}

async fn ticket(a: &Args, uin: u64, role: &str, first: usize) -> String {
    let mut node = first;
    loop {
        let path = format!("/ticket?room={}&uin={uin}&role={role}", a.room);
        if let Ok(body) = get(&a.nodes[node], &path).await
            && let Some(i) = body.find("\"ticket\":\"")
        {
            let rest = &body[i + 10..];
            return rest[..rest.find('"').unwrap_or(0)].to_owned();
        }
        node = (node + 1) % a.nodes.len();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The reliable sequence as one member follows it.
#[derive(Debug, Default)]
struct Seq {
    epoch: u64,
    contiguous: u64,
    checking: Option<Instant>,
}

struct Member {
    index: usize,
    teacher: bool,
    shared: Arc<Shared>,
    seq: Seq,
    /// Requests not answered yet (sent again after a reconnect).
    awaiting: Vec<String>,
    out: Vec<String>,
    heartbeat: Duration,
    rng: faultlab::Rng,
}

impl Member {
    fn record(&self) -> std::sync::MutexGuard<'_, Record> {
        self.shared.records[self.index].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check(&mut self) {
        if self.seq.checking.is_some_and(|t| t.elapsed() < Duration::from_millis(500)) {
            return;
        }
        self.seq.checking = Some(Instant::now());
        self.record().checks += 1;
        self.out.push(format!(r#"{{"t":"check","epoch":{},"after":{}}}"#, self.seq.epoch, self.seq.contiguous));
    }

    fn request(&mut self, text: String) {
        self.out.push(text.clone());
        self.awaiting.push(text);
    }

    /// A reliable message delivered (by push or by check).
    fn deliver(&mut self, e: u64, s: u64, body: &Value, recovered: bool) {
        let h = hash(&body.to_string());
        {
            let mut numbers = self.shared.numbers.lock().unwrap_or_else(|e| e.into_inner());
            let first = *numbers.entry((e, s)).or_insert(h);
            if first != h {
                self.shared.double_numbered.fetch_add(1, Ordering::Relaxed);
                let mut samples = self.shared.double_samples.lock().unwrap_or_else(|e| e.into_inner());
                if samples.len() < 20 {
                    samples.push(json!({"uin": self.index + 1, "e": e, "s": s, "body": body, "recovered": recovered}));
                }
            }
        }
        let data = &body["data"];
        match body["kind"].as_u64() {
            Some(2) => {
                if let Some(n) = data["text"].as_str().and_then(|t| t.strip_prefix('m')).and_then(|n| n.parse().ok()) {
                    let mut r = self.record();
                    if !r.see(n) {
                        r.duplicates += 1;
                        let mut samples = self.shared.duplicate_samples.lock().unwrap_or_else(|e| e.into_inner());
                        if samples.len() < 20 {
                            samples.push(json!({"uin": r.uin, "text": n, "first": r.at.get(&n),
                                "again": (e, s, recovered), "welcomes": r.welcomes, "node": r.node}));
                        }
                    } else {
                        r.at.insert(n, (e, s, recovered));
                    }
                    if recovered {
                        r.recovered += 1;
                    }
                }
            }
            Some(6) if data["op"] == "open" && !self.teacher => {
                let options = data["options"].as_u64().unwrap_or(2).max(1);
                let option = self.rng.below(options);
                self.request(format!(r#"{{"t":"card_answer","option":{option}}}"#));
            }
            Some(7) if data["op"] == "open" => {
                if let (Some(id), Some(amount), Some(count)) =
                    (data["id"].as_u64(), data["amount"].as_u64(), data["count"].as_u64())
                {
                    if self.teacher {
                        self.shared.packets.lock().unwrap_or_else(|e| e.into_inner()).insert(id, (amount, count));
                    } else {
                        self.request(format!(r#"{{"t":"packet_grab","id":{id}}}"#));
                    }
                }
            }
            Some(8) if self.teacher => {
                if let Some(left) = data["left"].as_array() {
                    let at = START.get().map_or(0.0, |t| t.elapsed().as_secs_f64());
                    let mut l = self.shared.left.lock().unwrap_or_else(|e| e.into_inner());
                    l.extend(left.iter().filter_map(Value::as_u64).map(|u| (u, at)));
                }
            }
            _ => {}
        }
    }

    fn on_frame(&mut self, f: &Value) {
        match f["t"].as_str() {
            Some("push") => {
                if !matches!(f["c"].as_str(), Some("signal" | "teacher")) {
                    return;
                }
                if f["k"] == "resync" {
                    self.check();
                    return;
                }
                let (e, s, p) =
                    (f["e"].as_u64().unwrap_or(0), f["s"].as_u64().unwrap_or(0), f["p"].as_u64().unwrap_or(0));
                if e != self.seq.epoch || p > self.seq.contiguous {
                    self.check();
                } else if s > self.seq.contiguous {
                    self.deliver(e, s, &f["b"], false);
                    self.seq.contiguous = s;
                }
            }
            Some("welcome") => {
                let (e, head) = (f["epoch"].as_u64().unwrap_or(0), f["head"].as_u64().unwrap_or(0));
                self.heartbeat = Duration::from_millis(f["heartbeat_ms"].as_u64().unwrap_or(20_000).max(1_000));
                let again = {
                    let mut r = self.record();
                    r.welcomes += 1;
                    r.entered = true;
                    r.node = f["node"].as_u64().map(|n| n as usize);
                    r.welcomes > 1
                };
                if again && e == self.seq.epoch {
                    self.seq.checking = None;
                    self.check();
                } else {
                    if again {
                        self.record().resets += 1;
                    }
                    self.seq = Seq { epoch: e, contiguous: head, checking: None };
                }
                let awaiting = self.awaiting.clone();
                self.out.extend(awaiting);
            }
            Some("ack") if f["r"] == "behind" && f["last"].as_u64().is_some_and(|l| l > self.seq.contiguous) => {
                self.check();
            }
            Some("ack") if f["r"] == "reset" => self.reset(f["e"].as_u64(), f["head"].as_u64()),
            Some("recover") => {
                self.seq.checking = None;
                let e = f["e"].as_u64().unwrap_or(self.seq.epoch);
                for frame in f["frames"].as_array().into_iter().flatten() {
                    let s = frame["s"].as_u64().unwrap_or(0);
                    if s > self.seq.contiguous {
                        self.deliver(e, s, &frame["b"], true);
                        self.seq.contiguous = s;
                    }
                }
                self.seq.contiguous = self.seq.contiguous.max(f["upto"].as_u64().unwrap_or(0));
            }
            Some("reset") => self.reset(f["e"].as_u64(), f["head"].as_u64()),
            Some("answered") => {
                self.awaiting.retain(|r| !r.contains("card_answer"));
                self.record().answered += 1;
            }
            Some("grabbed") => {
                self.awaiting.retain(|r| !r.contains("packet_grab"));
                if let (Some(id), Some(amount)) = (f["id"].as_u64(), f["amount"].as_u64()) {
                    let mut r = self.record();
                    if !r.grabbed.iter().any(|(p, _)| *p == id) {
                        r.grabbed.push((id, amount));
                    }
                }
            }
            Some("error") => {
                let code = f["code"].as_str().unwrap_or("").to_owned();
                if !matches!(code.as_str(), "unavailable" | "not_entered" | "rate_limited") {
                    self.awaiting.retain(|r| !(r.contains("card_answer") || r.contains("packet_grab")));
                }
                *self.record().errors.entry(code).or_default() += 1;
            }
            _ => {}
        }
    }

    fn reset(&mut self, e: Option<u64>, head: Option<u64>) {
        self.seq = Seq { epoch: e.unwrap_or(0), contiguous: head.unwrap_or(0), checking: None };
        self.record().resets += 1;
    }
}

static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Why a session ended.
enum End {
    /// Closed with a code (4003 and the like), or the socket ended.
    Closed(Option<u16>),
    /// Nothing heard for [`SILENCE`].
    Silent,
    /// The run is over.
    Stop,
}

async fn member(a: Arc<Args>, shared: Arc<Shared>, index: usize, mut control: watch::Receiver<Control>) {
    let uin = index as u64 + 1;
    let teacher = index == 0;
    let mut node = index % a.nodes.len();
    let role = if teacher { "teacher" } else { "student" };
    let ticket = ticket(&a, uin, role, node).await;
    let mut m = Member {
        index,
        teacher,
        shared: shared.clone(),
        seq: Seq::default(),
        awaiting: Vec::new(),
        out: Vec::new(),
        heartbeat: Duration::from_secs(20),
        rng: faultlab::Rng::new(uin.wrapping_mul(0x9E37_79B9)),
    };
    let mut seen_control = control.borrow().clone();
    loop {
        if shared.stopping.load(Ordering::Relaxed) {
            return;
        }
        let url = format!("ws://{}/ws?room={}&ticket={ticket}", a.nodes[node], a.room);
        let ws = tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(url)).await;
        let Ok(Ok((ws, _))) = ws else {
            m.record().connect_failures += 1;
            node = (node + 1) % a.nodes.len();
            tokio::time::sleep(Duration::from_millis(500 + m.rng.below(1000))).await;
            continue;
        };
        m.record().connected = true;
        let (mut tx, mut rx) = ws.split();
        let mut last_heard = Instant::now();
        // Phases spread so that 3,000 members do not beat in step.
        let mut next_beat = Instant::now() + Duration::from_millis(m.rng.below(5_000));
        let mut next_ack = Instant::now() + Duration::from_millis(m.rng.below(ACK_EVERY.as_millis() as u64));
        let mut next_say = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(if teacher { 20 } else { 500 }));
        let end = loop {
            tokio::select! {
                frame = rx.next() => match frame {
                    Some(Ok(Message::Text(t))) => {
                        last_heard = Instant::now();
                        if let Ok(f) = serde_json::from_str::<Value>(&t) {
                            m.on_frame(&f);
                        }
                    }
                    Some(Ok(Message::Close(c))) => break End::Closed(c.map(|c| u16::from(c.code))),
                    Some(Ok(_)) => last_heard = Instant::now(),
                    Some(Err(_)) | None => break End::Closed(None),
                },
                _ = tick.tick() => {
                    let now = Instant::now();
                    if shared.stopping.load(Ordering::Relaxed) {
                        break End::Stop;
                    }
                    if now - last_heard > SILENCE {
                        break End::Silent;
                    }
                    let entered = m.record().entered;
                    if entered && now >= next_beat {
                        next_beat = now + m.heartbeat.mul_f64(0.8);
                        m.out.push(r#"{"t":"beat"}"#.into());
                    }
                    if entered && now >= next_ack {
                        next_ack = now + ACK_EVERY;
                        m.out.push(format!(r#"{{"t":"ack","epoch":{},"seq":{}}}"#, m.seq.epoch, m.seq.contiguous));
                    }
                    if teacher && entered {
                        let c = control.borrow_and_update().clone();
                        if c.cards > seen_control.cards {
                            m.out.push(r#"{"t":"card_open","options":4,"seconds":120}"#.into());
                            shared.cards.lock().unwrap_or_else(|e| e.into_inner()).push(c.cards);
                        }
                        if c.card_closes > seen_control.card_closes {
                            m.out.push(r#"{"t":"card_close"}"#.into());
                        }
                        for &(amount, count) in c.packets.iter().skip(seen_control.packets.len()) {
                            m.out.push(format!(r#"{{"t":"packet_send","amount":{amount},"count":{count}}}"#));
                        }
                        if c.say_rate > 0 && now >= next_say {
                            next_say = now.max(next_say) + Duration::from_secs(1) / c.say_rate;
                            let n = shared.said.fetch_add(1, Ordering::Relaxed) + 1;
                            m.out.push(format!(r#"{{"t":"say","text":"m{n}"}}"#));
                        }
                        seen_control = c;
                    }
                }
            }
            if !m.out.is_empty() {
                let mut failed = false;
                for text in m.out.drain(..) {
                    if tx.feed(Message::text(text)).await.is_err() {
                        failed = true;
                        break;
                    }
                }
                // A node that does not read: the flush would wait forever.
                let flushed = tokio::time::timeout(Duration::from_secs(2), tx.flush()).await;
                if failed || !matches!(flushed, Ok(Ok(()))) && now_silent(last_heard) {
                    break End::Silent;
                }
            }
        };
        {
            let mut r = m.record();
            r.connected = false;
            r.entered = false;
            match end {
                End::Closed(code) => *r.closes.entry(code.unwrap_or(0)).or_default() += 1,
                End::Silent => r.silences += 1,
                End::Stop => {}
            }
        }
        if matches!(end, End::Stop) {
            let _ = tokio::time::timeout(Duration::from_secs(1), tx.close()).await;
            return;
        }
        // Closed by the service with a code that says not to come back.
        if let End::Closed(Some(code)) = end
            && matches!(code, 1000 | 4001 | 4002 | 4005 | 4006)
        {
            return;
        }
        m.record().reconnects += 1;
        if matches!(end, End::Silent) {
            node = (node + 1) % a.nodes.len();
        }
        tokio::time::sleep(Duration::from_millis(200 + m.rng.below(800))).await;
        let _ = &mut control;
    }
}

fn now_silent(last_heard: Instant) -> bool {
    last_heard.elapsed() > SILENCE
}

fn status(shared: &Shared, started: Instant) -> Value {
    let (mut connected, mut entered, mut reconnects, mut silences) = (0, 0, 0, 0);
    let mut closes: BTreeMap<u16, u64> = BTreeMap::new();
    let mut on_node: BTreeMap<usize, u64> = BTreeMap::new();
    for r in &shared.records {
        let r = r.lock().unwrap_or_else(|e| e.into_inner());
        connected += u64::from(r.connected);
        entered += u64::from(r.entered);
        reconnects += r.reconnects;
        silences += r.silences;
        for (c, n) in &r.closes {
            *closes.entry(*c).or_default() += n;
        }
        if r.entered
            && let Some(n) = r.node
        {
            *on_node.entry(n).or_default() += 1;
        }
    }
    json!({
        "t": "status",
        "at": started.elapsed().as_secs_f64(),
        "connected": connected,
        "entered": entered,
        "on_node": on_node,
        "reconnects": reconnects,
        "silences": silences,
        "closes": closes,
        "said": shared.said.load(Ordering::Relaxed),
        "left": shared.left.lock().unwrap_or_else(|e| e.into_inner()).len(),
        "double_numbered": shared.double_numbered.load(Ordering::Relaxed),
    })
}

fn summary(shared: &Shared, started: Instant) -> Value {
    // Every teacher message some member saw: each member should have all.
    let mut union: Vec<u64> = Vec::new();
    for r in &shared.records {
        let r = r.lock().unwrap_or_else(|e| e.into_inner());
        if union.len() < r.seen.len() {
            union.resize(r.seen.len(), 0);
        }
        for (u, s) in union.iter_mut().zip(&r.seen) {
            *u |= s;
        }
    }
    let delivered: u64 = union.iter().map(|w| u64::from(w.count_ones())).sum();
    let (mut missing, mut members_missing, mut duplicates, mut recovered, mut resets, mut checks) = (0, 0, 0, 0, 0, 0);
    let mut answered = 0;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut taken: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut worst: Vec<Value> = Vec::new();
    let mut connect_failures = 0;
    for r in &shared.records {
        let r = r.lock().unwrap_or_else(|e| e.into_inner());
        let have = |w: usize| r.seen.get(w).copied().unwrap_or(0);
        let miss: u64 = union.iter().enumerate().map(|(w, u)| u64::from((u & !have(w)).count_ones())).sum();
        missing += miss;
        if miss > 0 {
            members_missing += 1;
            if worst.len() < 10 {
                worst.push(json!({"uin": r.uin, "missing": miss, "node": r.node, "resets": r.resets, "reconnects": r.reconnects}));
            }
        }
        duplicates += r.duplicates;
        recovered += r.recovered;
        resets += r.resets;
        checks += r.checks;
        answered += r.answered;
        connect_failures += r.connect_failures;
        for (k, v) in &r.errors {
            *errors.entry(k.clone()).or_default() += v;
        }
        for (p, amount) in &r.grabbed {
            let t = taken.entry(*p).or_default();
            t.0 += amount;
            t.1 += 1;
        }
    }
    let packets: Vec<Value> = shared
        .packets
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(id, (amount, count))| {
            let (sum, shares) = taken.get(id).copied().unwrap_or_default();
            json!({"id": id, "amount": amount, "count": count, "taken": sum, "shares": shares,
                   "over_paid": sum > *amount || shares > *count})
        })
        .collect();
    let left = shared.left.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut s = status(shared, started);
    s["t"] = json!("summary");
    s["members"] = json!(shared.records.len());
    s["delivered_union"] = json!(delivered);
    s["missing"] = json!(missing);
    s["members_missing"] = json!(members_missing);
    s["worst"] = json!(worst);
    s["duplicates"] = json!(duplicates);
    s["recovered"] = json!(recovered);
    s["resets"] = json!(resets);
    s["checks"] = json!(checks);
    s["answered"] = json!(answered);
    s["cards"] = json!(shared.cards.lock().unwrap_or_else(|e| e.into_inner()).len());
    s["packets"] = json!(packets);
    s["double_samples"] = json!(*shared.double_samples.lock().unwrap_or_else(|e| e.into_inner()));
    s["duplicate_samples"] = json!(*shared.duplicate_samples.lock().unwrap_or_else(|e| e.into_inner()));
    s["left_uins"] = json!(left.iter().take(50).collect::<Vec<_>>());
    s["errors"] = json!(errors);
    s["connect_failures"] = json!(connect_failures);
    s
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = Arc::new(args()?);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let started = *START.get_or_init(Instant::now);
        let shared = Arc::new(Shared {
            records: (0..a.members).map(|i| Mutex::new(Record { uin: i as u64 + 1, ..Record::default() })).collect(),
            ..Shared::default()
        });
        let (control_tx, control) = watch::channel(Control::default());
        let mut tasks = Vec::with_capacity(a.members);
        let ramp = Duration::from_secs(1) / a.ramp as u32;
        let spawner = {
            let (a, shared) = (a.clone(), shared.clone());
            tokio::spawn(async move {
                for i in 0..a.members {
                    if shared.stopping.load(Ordering::Relaxed) {
                        break;
                    }
                    tasks.push(tokio::spawn(member(a.clone(), shared.clone(), i, control.clone())));
                    tokio::time::sleep(ramp).await;
                }
                tasks
            })
        };
        let printer = {
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(1));
                while !shared.stopping.load(Ordering::Relaxed) {
                    every.tick().await;
                    println!("{}", status(&shared, started));
                    let _ = std::io::stdout().flush();
                }
            })
        };
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        loop {
            let line = tokio::select! {
                l = lines.next_line() => l.ok().flatten(),
                _ = tokio::signal::ctrl_c() => None,
            };
            let Some(line) = line else { break };
            let w: Vec<&str> = line.split_whitespace().collect();
            let num = |i: usize| w.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            match w.first().copied() {
                Some("say") => control_tx.send_modify(|c| c.say_rate = num(1) as u32),
                Some("card") => control_tx.send_modify(|c| c.cards += 1),
                Some("card_close") => control_tx.send_modify(|c| c.card_closes += 1),
                Some("packet") => control_tx.send_modify(|c| c.packets.push((num(1), num(2)))),
                Some("stop") => break,
                _ => eprintln!("unknown command: {line}"),
            }
        }
        control_tx.send_modify(|c| c.stop = true);
        shared.stopping.store(true, Ordering::Relaxed);
        if let Ok(tasks) = spawner.await {
            let _ = tokio::time::timeout(Duration::from_secs(5), futures::future::join_all(tasks)).await;
        }
        printer.abort();
        println!("{}", summary(&shared, started));
        let _ = std::io::stdout().flush();
        Ok(())
    })
}
