//! A peer of Roomkit's classroom server for the benchmark of issue 17: the
//! same class on socketioxide (a Socket.IO server for axum and tokio),
//! written the way its documentation shows, with 100 ms chat batching.
//!
//! * A client connects to the default namespace with the auth
//!   `{"uin":U,"role":"teacher"|"student","subclass":K}` and joins the
//!   rooms `all`, `staff` (teachers) or `sub-<K>` (students).
//! * `say` from a teacher, `{"text":...}`, is emitted to `all` as
//!   `say` `{"uin":U,"text":...}`.
//! * `chat` from a student, `{"text":...}`, is appended to its sub-class's
//!   buffer; every 100 ms one `chat` batch `{"sub":K,"lines":[{"uin","text"},..]}`
//!   per non-empty sub-class goes to `sub-<K>` and `staff`.
//!
//! Run: `cargo run --release -- --port 3001` (prints `listening on ...`).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::serve::ListenerExt;
use serde::{Deserialize, Serialize};
use socketioxide::SocketIo;
use socketioxide::extract::{Data, SocketRef};

/// What a client says when it connects.
#[derive(Debug, Deserialize)]
struct Auth {
    uin: u64,
    role: String,
    #[serde(default)]
    subclass: u32,
}

/// A `say` or `chat` from a client.
#[derive(Debug, Deserialize)]
struct Text {
    text: String,
}

/// A line as the room sees it.
#[derive(Debug, Clone, Serialize)]
struct Line {
    uin: u64,
    text: String,
}

/// One sub-class's chat of one window.
#[derive(Debug, Serialize)]
struct Batch {
    sub: u32,
    lines: Vec<Line>,
}

/// Chat waiting for the next window, by sub-class.
type Pending = Arc<Mutex<HashMap<u32, Vec<Line>>>>;

/// Emits that failed for some recipients (their buffers full or closed).
static FAILED: AtomicU64 = AtomicU64::new(0);

fn count_failure(result: Result<(), socketioxide::BroadcastError>) {
    if let Err(e) = result {
        let n = match e {
            socketioxide::BroadcastError::Socket(v) => v.len() as u64,
            _ => 1,
        };
        FAILED.fetch_add(n, Ordering::Relaxed);
    }
}

fn on_connect(s: SocketRef, Data(auth): Data<Auth>, io: SocketIo, pending: Pending) {
    let uin = auth.uin;
    if auth.role == "teacher" {
        s.join(["all", "staff"]);
        s.on("say", async move |Data(msg): Data<Text>| {
            count_failure(io.to("all").emit("say", &Line { uin, text: msg.text }).await);
        });
    } else {
        let sub = auth.subclass;
        s.join(["all".to_owned(), format!("sub-{sub}")]);
        s.on("chat", async move |Data(msg): Data<Text>| {
            let line = Line { uin, text: msg.text };
            pending.lock().unwrap_or_else(PoisonError::into_inner).entry(sub).or_default().push(line);
        });
    }
}

/// Every 100 ms, one batch per sub-class that chatted.
async fn flush_chat(io: SocketIo, pending: Pending) {
    let mut every = tokio::time::interval(Duration::from_millis(100));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let window = std::mem::take(&mut *pending.lock().unwrap_or_else(PoisonError::into_inner));
        for (sub, lines) in window {
            if lines.is_empty() {
                continue;
            }
            let rooms = [format!("sub-{sub}"), "staff".to_owned()];
            count_failure(io.to(rooms).emit("chat", &Batch { sub, lines }).await);
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut port = 3001u16;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--port" => port = args.next().ok_or("--port needs a value")?.parse()?,
            other => return Err(format!("unknown option {other} (use --port P)").into()),
        }
    }
    let (layer, io) = SocketIo::new_layer();
    let pending: Pending = Arc::default();
    {
        let pending = pending.clone();
        io.ns("/", async move |s: SocketRef, auth: Data<Auth>, io: SocketIo| on_connect(s, auth, io, pending));
    }
    tokio::spawn(flush_chat(io.clone(), pending));
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(10));
        let mut reported = 0;
        loop {
            every.tick().await;
            let failed = FAILED.load(Ordering::Relaxed);
            if failed != reported {
                reported = failed;
                eprintln!("{} sockets; {failed} emits failed so far (full or closed buffers)", io.sockets().len());
            }
        }
    });
    let app = axum::Router::new().layer(layer);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on {}", listener.local_addr()?);
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}
