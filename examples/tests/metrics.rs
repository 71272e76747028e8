//! `GET /metrics` on the classroom server: a teacher and a student on
//! websockets exchange a teacher message and chat, and the scrape that
//! follows is valid Prometheus text with every family described, the two
//! connections, the messages of both classes in and out, the room in its
//! size bucket, and the driver's latency histograms. The other routes still
//! answer beside it.
//!
//! The test binary runs one server: the recorder is the process's.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use examples::classroom::{ClassroomConfig, demo_ticket, serve};
use futures::{SinkExt, StreamExt};
use room_core::{Role, Terminal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

const ROOM: u64 = 77;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// A client in the room: connected and welcomed.
async fn enter(addr: SocketAddr, ticket: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?room={ROOM}&ticket={ticket}"))
        .await
        .expect("connects");
    let first = next_text(&mut ws).await;
    assert!(first.contains("\"welcome\""), "{first}");
    ws
}

/// The next text frame (10 s at most: a bound on a hang, not a measure).
async fn next_text(ws: &mut Ws) -> String {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("the socket is open")
            .expect("a frame");
        if let Message::Text(text) = frame {
            return text.as_str().to_owned();
        }
    }
}

/// Reads until a frame containing every one of `needles` comes.
async fn wait_for(ws: &mut Ws, needles: &[&str]) -> String {
    loop {
        let text = next_text(ws).await;
        if needles.iter().all(|n| text.contains(n)) {
            return text;
        }
    }
}

/// `GET path` on a fresh connection: the status, the headers (names in
/// lower case) and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, Vec<(String, String)>, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connects");
    let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("writes");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("an answer within 10 s")
        .expect("reads");
    let raw = String::from_utf8(raw).expect("UTF-8");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("a status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect::<Vec<_>>();
    assert!(!headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked")), "a scrape is sent whole");
    (status, headers, body.to_owned())
}

/// One sample of a scrape.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A scrape parsed: its samples, and the families it has `# HELP` and
/// `# TYPE` lines for (with their types).
#[derive(Debug, Default)]
struct Scrape {
    samples: Vec<Sample>,
    help: BTreeSet<String>,
    types: BTreeMap<String, String>,
}

impl Scrape {
    /// Parses the Prometheus text format; panics on a line that is not a
    /// comment, a blank line or `name{labels} value [timestamp]`.
    fn parse(text: &str) -> Scrape {
        let mut scrape = Scrape::default();
        for line in text.lines() {
            if line.trim().is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or_else(|| panic!("HELP without text: {line}"));
                assert!(is_name(name) && !help.trim().is_empty(), "bad HELP line: {line}");
                scrape.help.insert(name.to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("TYPE without a type: {line}"));
                assert!(is_name(name), "bad TYPE line: {line}");
                assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "bad type: {line}");
                scrape.types.insert(name.to_owned(), kind.to_owned());
            } else if line.starts_with('#') {
                continue;
            } else {
                scrape.samples.push(parse_sample(line).unwrap_or_else(|| panic!("not a sample line: {line:?}")));
            }
        }
        scrape
    }

    /// The samples named `name` whose labels include `labels`.
    fn find<'a>(&'a self, name: &'a str, labels: &'a [(&'a str, &'a str)]) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The sum of those samples' values, `None` if there is none.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = self.find(name, labels).peekable();
        found.peek()?;
        Some(found.map(|s| s.value).sum())
    }

    /// The family a sample belongs to (a histogram's series share one).
    fn family(&self, name: &str) -> String {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix)
                && self.types.get(base).is_some_and(|t| t == "histogram" || t == "summary")
            {
                return base.to_owned();
            }
        }
        name.to_owned()
    }
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

/// `name{label="value",...} value [timestamp]`.
fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    if !is_name(name) {
        return None;
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = inner.split_once("=\"")?;
            if !is_name(key) {
                return None;
            }
            // The value runs to the first quote not escaped.
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next()? {
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c @ ('\\' | '"') => value.push(c),
                        _ => return None,
                    },
                    (i, '"') => break i,
                    (_, c) => value.push(c),
                }
            };
            labels.insert(key.to_owned(), value);
            inner = &after[end + 1..];
            inner = inner.strip_prefix(',').unwrap_or(inner);
        }
    }
    let mut fields = rest.strip_prefix(' ')?.split(' ');
    let value = parse_value(fields.next()?)?;
    if let Some(timestamp) = fields.next() {
        timestamp.parse::<i64>().ok()?;
    }
    if fields.next().is_some() {
        return None;
    }
    Some(Sample { name: name.to_owned(), labels, value })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_after_a_short_class_tells_what_happened() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
    let running = serve(listener, ClassroomConfig::default()).await.expect("serves");
    let addr = running.addr;

    let mut teacher = enter(addr, &demo_ticket(&running.keys, ROOM, 1, Role::Teacher, Terminal::Pc)).await;
    let mut student = enter(addr, &demo_ticket(&running.keys, ROOM, 2, Role::Student, Terminal::Web)).await;
    for page in 1..=3 {
        let say = format!(r#"{{"t":"say","text":"page {page}"}}"#);
        teacher.send(Message::Text(say.into())).await.expect("sends");
        wait_for(&mut student, &["\"push\"", "\"c\":\"teacher\"", &format!("page {page}")]).await;
    }
    student.send(Message::Text(r#"{"t":"chat","text":"a question"}"#.into())).await.expect("sends");
    wait_for(&mut teacher, &["\"push\"", "\"c\":\"chat\"", "a question"]).await;

    let (status, headers, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    let content_type = headers.iter().find(|(n, _)| n == "content-type").map(|(_, v)| v.as_str());
    assert!(content_type.is_some_and(|t| t.starts_with("text/plain")), "{headers:?}");
    let scrape = Scrape::parse(&body);

    // Every roomkit family in the scrape is described and typed.
    let families: BTreeSet<String> =
        scrape.samples.iter().filter(|s| s.name.starts_with("roomkit_")).map(|s| scrape.family(&s.name)).collect();
    assert!(families.len() > 20, "{families:?}");
    for family in &families {
        assert!(scrape.help.contains(family), "no HELP for {family}");
        assert!(scrape.types.contains_key(family), "no TYPE for {family}");
    }
    for described in roomkit::service::telemetry::METRICS {
        if families.contains(described.name) {
            let want = format!("{:?}", described.kind).to_lowercase();
            assert_eq!(scrape.types[described.name], want, "{}", described.name);
        }
    }

    // What the node holds.
    assert_eq!(scrape.sum("roomkit_connections", &[]), Some(2.0), "{body}");
    assert_eq!(scrape.sum("roomkit_sessions", &[]), Some(2.0), "{body}");
    assert_eq!(scrape.sum("roomkit_rooms", &[]), Some(1.0), "{body}");
    assert_eq!(scrape.sum("roomkit_rooms_by_size", &[("size", "1-10")]), Some(1.0), "{body}");
    assert_eq!(scrape.sum("roomkit_room_members", &[("size", "1-10")]), Some(2.0), "{body}");
    assert_eq!(scrape.sum("roomkit_rooms_by_size", &[("size", ">10000")]), Some(0.0), "{body}");
    assert_eq!(scrape.find("roomkit_connections", &[]).next().map(|s| s.labels.contains_key("node")), Some(true));

    // Messages in and out, by class.
    for class in ["teacher", "chat"] {
        for name in ["roomkit_messages_in_total", "roomkit_messages_out_total", "roomkit_bus_published_total"] {
            let n = scrape.sum(name, &[("class", class)]).unwrap_or(0.0);
            assert!(n > 0.0, "{name}{{class={class}}} is {n}: {body}");
        }
    }
    let teacher_in = scrape.sum("roomkit_messages_in_total", &[("class", "teacher")]).unwrap_or(0.0);
    assert!(teacher_in >= 3.0, "three teacher messages, {teacher_in} counted");
    assert_eq!(scrape.sum("roomkit_entries_total", &[]), Some(2.0), "{body}");
    assert_eq!(scrape.sum("roomkit_refused_frames_total", &[]), Some(0.0), "{body}");

    // The driver's histograms: buckets, sum and count, consistent.
    for (name, labels) in [
        ("roomkit_turn_seconds", &[][..]),
        ("roomkit_cache_op_seconds", &[("op", "append")][..]),
        ("roomkit_fanout_seconds", &[("class", "teacher")][..]),
    ] {
        assert_eq!(scrape.types.get(name).map(String::as_str), Some("histogram"), "{name}");
        let count = scrape.sum(&format!("{name}_count"), labels).unwrap_or_else(|| panic!("no {name}_count"));
        let sum = scrape.sum(&format!("{name}_sum"), labels).unwrap_or_else(|| panic!("no {name}_sum"));
        assert!(count > 0.0 && sum >= 0.0, "{name}: count {count}, sum {sum}");
        let bucket = format!("{name}_bucket");
        let buckets: Vec<&Sample> = scrape.find(&bucket, labels).collect();
        assert!(buckets.len() > 1, "{name} has no buckets");
        let mut cumulative: Vec<(f64, f64)> =
            buckets.iter().map(|b| (parse_value(&b.labels["le"]).expect("a bound"), b.value)).collect();
        cumulative.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(cumulative.windows(2).all(|w| w[0].1 <= w[1].1), "{name}: buckets not cumulative");
        assert_eq!(cumulative.last().map(|b| (b.0, b.1)), Some((f64::INFINITY, count)), "{name}: +Inf is the count");
    }

    // The other routes still answer.
    let (status, _, health) = get(addr, "/healthz").await;
    assert_eq!(status, 200, "{health}");
    assert!(health.contains("\"connections\":2"), "{health}");
    let (status, _, page) = get(addr, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("<html") || page.contains("<!doctype") || page.contains("<!DOCTYPE"));
    let (status, _, _) = get(addr, "/ticket?room=77&uin=5&role=student").await;
    assert_eq!(status, 200);
}

/// Every metric the service and the engines record is in docs/METRICS.md
/// (with its type), and the Grafana dashboard queries only those.
#[test]
fn the_docs_and_the_dashboard_name_every_metric() {
    let docs = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/");
    let text = std::fs::read_to_string(format!("{docs}METRICS.md")).expect("docs/METRICS.md");
    let mut known = BTreeSet::new();
    for metric in roomkit::service::telemetry::METRICS {
        let kind = format!("{:?}", metric.kind).to_lowercase();
        let row = format!("| `{}` | {kind} |", metric.name);
        assert!(text.contains(&row), "docs/METRICS.md has no row {row}");
        known.insert(metric.name.to_owned());
    }
    for (name, kind) in examples::metrics::ENGINE_METRICS
        .iter()
        .map(|(n, _)| (n, "counter"))
        .chain(examples::metrics::ENGINE_GAUGES.iter().map(|(n, _)| (n, "gauge")))
    {
        let row = format!("| `{name}` | {kind} |");
        assert!(text.contains(&row), "docs/METRICS.md has no row {row}");
        known.insert((*name).to_owned());
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{docs}grafana-roomkit.json")).expect("docs/grafana-roomkit.json"),
    )
    .expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut queried = 0;
    for target in panels.iter().filter_map(|p| p["targets"].as_array()).flatten() {
        let expr = target["expr"].as_str().expect("an expression");
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("roomkit_") {
                let family = word.strip_suffix("_bucket").unwrap_or(word);
                assert!(known.contains(family), "the dashboard queries {word}, which nothing records");
                queried += 1;
            }
        }
    }
    assert!(queried > 10, "{queried}");
}
