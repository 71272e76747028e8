//! A small Toxiproxy-style TCP proxy: it listens, forwards every
//! connection to one upstream, and applies toxics on the way.
//!
//! Toxics, per direction (`up`: client to upstream, `down`: upstream to
//! client): latency with jitter (each chunk is held for latency ± jitter,
//! order kept) and a bandwidth cap. Beside them: reset (close every open
//! connection now, with a TCP reset) and a switch (off: open connections
//! are reset and new ones are refused by closing them at once).
//!
//! The `faultlab-proxy` binary runs one proxy and reads commands from its
//! standard input, one per line, answering `ok` or `error: ...` on its
//! standard output:
//!
//! ```text
//! latency up|down|both MS [JITTER_MS]
//! bandwidth up|down|both BYTES_PER_S      (0: no cap)
//! blackhole up|down|both on|off           (data thrown away, connection kept)
//! reset                                   (close open connections now)
//! off | on                                (the switch)
//! clear                                   (no toxics, switch on)
//! status                                  (one line: toxics and counters)
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// The toxics of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Toxics {
    /// Added delay.
    pub latency: Duration,
    /// The delay varies uniformly in latency ± jitter.
    pub jitter: Duration,
    /// A cap in bytes per second (0: none).
    pub bandwidth: u64,
    /// Data is read and thrown away: the connection stays up, nothing
    /// gets through (one direction of an asymmetric partition).
    pub blackhole: bool,
}

/// What the proxy does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Client to upstream.
    pub up: Toxics,
    /// Upstream to client.
    pub down: Toxics,
    /// Off: no traffic at all.
    pub enabled: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { up: Toxics::default(), down: Toxics::default(), enabled: true }
    }
}

/// Which direction a command is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to upstream.
    Up,
    /// Upstream to client.
    Down,
    /// Both.
    Both,
}

/// A handle on a running proxy (cheap to clone).
#[derive(Debug, Clone)]
pub struct Proxy {
    settings: Arc<watch::Sender<Settings>>,
    resets: Arc<watch::Sender<u64>>,
    counters: Arc<Counters>,
    local: SocketAddr,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    reset: AtomicU64,
    open: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

impl Proxy {
    /// Listens on `listen` and forwards to `upstream`; needs a tokio runtime.
    pub async fn start(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(listen).await?;
        let local = listener.local_addr()?;
        let proxy = Proxy {
            settings: Arc::new(watch::channel(Settings::default()).0),
            resets: Arc::new(watch::channel(0).0),
            counters: Arc::default(),
            local,
        };
        let p = proxy.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                if !p.settings.borrow().enabled {
                    p.counters.refused.fetch_add(1, Ordering::Relaxed);
                    reset(client);
                    continue;
                }
                p.counters.accepted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(p.clone().serve(client, upstream));
            }
        });
        Ok(proxy)
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The current settings.
    pub fn settings(&self) -> Settings {
        *self.settings.borrow()
    }

    /// Sets the toxics of `dir` with `f`.
    pub fn set(&self, dir: Direction, f: impl Fn(&mut Toxics)) {
        self.settings.send_modify(|s| {
            if matches!(dir, Direction::Up | Direction::Both) {
                f(&mut s.up);
            }
            if matches!(dir, Direction::Down | Direction::Both) {
                f(&mut s.down);
            }
        });
    }

    /// Latency ± jitter on `dir`.
    pub fn latency(&self, dir: Direction, latency: Duration, jitter: Duration) {
        self.set(dir, |t| {
            t.latency = latency;
            t.jitter = jitter.min(latency);
        });
    }

    /// A bandwidth cap on `dir` (0: none).
    pub fn bandwidth(&self, dir: Direction, bytes_per_s: u64) {
        self.set(dir, |t| t.bandwidth = bytes_per_s);
    }

    /// Closes every open connection now, with a TCP reset.
    pub fn reset(&self) {
        self.resets.send_modify(|n| *n += 1);
    }

    /// The switch: off resets open connections and refuses new ones.
    pub fn enable(&self, on: bool) {
        self.settings.send_modify(|s| s.enabled = on);
        if !on {
            self.reset();
        }
    }

    /// No toxics, switch on.
    pub fn clear(&self) {
        self.settings.send_replace(Settings::default());
    }

    /// One line: settings and counters.
    pub fn status(&self) -> String {
        let s = self.settings();
        let c = &self.counters;
        format!(
            "enabled={} up={:?}/{:?}/{}/{} down={:?}/{:?}/{}/{} accepted={} refused={} reset={} open={} bytes_up={} bytes_down={}",
            s.enabled,
            s.up.latency,
            s.up.jitter,
            s.up.bandwidth,
            s.up.blackhole,
            s.down.latency,
            s.down.jitter,
            s.down.bandwidth,
            s.down.blackhole,
            c.accepted.load(Ordering::Relaxed),
            c.refused.load(Ordering::Relaxed),
            c.reset.load(Ordering::Relaxed),
            c.open.load(Ordering::Relaxed),
            c.bytes_up.load(Ordering::Relaxed),
            c.bytes_down.load(Ordering::Relaxed),
        )
    }

    /// Applies one command line (see the module's docs); returns the answer.
    pub fn command(&self, line: &str) -> Result<String, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let dir = |w: Option<&&str>| match w.copied() {
            Some("up") => Ok(Direction::Up),
            Some("down") => Ok(Direction::Down),
            Some("both") => Ok(Direction::Both),
            other => Err(format!("direction up|down|both expected, got {other:?}")),
        };
        let num = |w: Option<&&str>| -> Result<u64, String> {
            w.map_or(Ok(0), |w| w.parse().map_err(|_| format!("a number expected, got {w:?}")))
        };
        match words.first().copied() {
            Some("latency") => {
                let d = dir(words.get(1))?;
                let ms = Duration::from_millis(num(words.get(2))?);
                self.latency(d, ms, Duration::from_millis(num(words.get(3))?));
            }
            Some("bandwidth") => {
                let d = dir(words.get(1))?;
                let b = num(words.get(2))?;
                self.bandwidth(d, b);
            }
            Some("blackhole") => {
                let d = dir(words.get(1))?;
                let on = matches!(words.get(2).copied(), Some("on"));
                self.set(d, |t| t.blackhole = on);
            }
            Some("reset") => self.reset(),
            Some("off") => self.enable(false),
            Some("on") => self.enable(true),
            Some("clear") => self.clear(),
            Some("status") => return Ok(self.status()),
            other => return Err(format!("unknown command {other:?}")),
        }
        Ok("ok".into())
    }

    async fn serve(self, client: TcpStream, upstream: SocketAddr) {
        let mut resets = self.resets.subscribe();
        resets.mark_unchanged();
        let server = tokio::select! {
            s = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(upstream)) => s,
            _ = resets.changed() => { reset(client); return; }
        };
        let Ok(Ok(server)) = server else {
            reset(client);
            return;
        };
        let mut client = client;
        let mut server = server;
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        self.counters.open.fetch_add(1, Ordering::Relaxed);
        let was_reset = {
            let (cr, cw) = client.split();
            let (sr, sw) = server.split();
            let up = pump(cr, sw, self.settings.subscribe(), true, self.counters.clone());
            let down = pump(sr, cw, self.settings.subscribe(), false, self.counters.clone());
            tokio::select! {
                _ = async { tokio::join!(up, down) } => false,
                _ = resets.changed() => true,
            }
        };
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
        if was_reset {
            self.counters.reset.fetch_add(1, Ordering::Relaxed);
            reset(client);
            reset(server);
        }
    }
}

/// Closes `s` with a TCP reset (a zero linger, then close).
fn reset(s: TcpStream) {
    let _ = s.set_zero_linger();
    drop(s);
}

/// Reads from `r`, holds each chunk for the direction's latency (± jitter)
/// and paces it to the bandwidth cap, writes it to `w`; ends at end of
/// stream or on an error either side.
async fn pump(
    mut r: impl tokio::io::AsyncRead + Unpin,
    mut w: impl tokio::io::AsyncWrite + Unpin,
    settings: watch::Receiver<Settings>,
    up: bool,
    counters: Arc<Counters>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(1024);
    let rng = Arc::new(Mutex::new(crate::Rng::seeded()));
    let s2 = settings.clone();
    let reader = async move {
        let mut last_due = Instant::now();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let t = if up { s2.borrow().up } else { s2.borrow().down };
            if t.blackhole {
                continue;
            }
            let mut delay = t.latency;
            if !t.jitter.is_zero() {
                let j = t.jitter.as_micros() as u64;
                let r = rng.lock().map(|mut g| g.below(2 * j + 1)).unwrap_or(j);
                delay = (delay + Duration::from_micros(r)).saturating_sub(t.jitter);
            }
            // Order is kept, as TCP would.
            let due = (Instant::now() + delay).max(last_due);
            last_due = due;
            if tx.send((due, buf[..n].to_vec())).await.is_err() {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if w.write_all(&chunk).await.is_err() {
                return;
            }
            let c = if up { &counters.bytes_up } else { &counters.bytes_down };
            c.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            let t = if up { settings.borrow().up } else { settings.borrow().down };
            if t.bandwidth > 0 {
                tokio::time::sleep(Duration::from_secs_f64(chunk.len() as f64 / t.bandwidth as f64)).await;
            }
        }
        let _ = w.shutdown().await;
    };
    tokio::join!(reader, writer);
}
