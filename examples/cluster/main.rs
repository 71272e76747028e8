//! Three Roomkit nodes as separate processes on loopback, over NATS
//! (JetStream) and Redis.
//!
//! ```text
//! cargo run --release -p examples --example cluster
//! cargo run --release -p examples --example cluster -- --nats nats://127.0.0.1:4222 --redis redis://127.0.0.1:6379
//! ```
//!
//! Without `--nats` / `--redis`, the example starts its own `nats-server -js`
//! and `redis-server` on free ports (temporary directories, removed at exit).
//! It then starts `--nodes` (3) node processes, each serving websockets on
//! `--base-port` + i (7101, 7102, 7103), waits until every node sees the
//! others in the registry, and prints the load generator's command. With
//! `--loadgen N` it runs the load generator itself (N clients, spread over
//! the nodes, for `--seconds`, with `--chat-rate` lines/s, 100 by default)
//! and stops; otherwise it runs until Ctrl-C.
//!
//! `--per-ip N` bounds each node's connections from one client address
//! (2,000 by default, the edge's `Limits`); a fault lab whose clients all
//! come from one address raises it.
//!
//! With `ROOMKIT_API_KEY` set, every node also serves the host API for a
//! business backend under `/api/v1` behind that bearer key
//! (docs/HOST_API.md); unset, the API is off.
//!
//! Every node serves its metrics for Prometheus at `GET /metrics`
//! (docs/METRICS.md), without authentication: keep those ports on a
//! private network.
//!
//! Each node is roomkit's room service (the one the quickstart runs in
//! memory) over NATS and Redis: an access and push node, the heartbeat
//! owner of the sessions the router gives it, a member-list replica, and
//! the owner of the rooms the router gives it (see `examples::cluster`).
#![forbid(unsafe_code)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use examples::classroom::random_key;
use examples::cluster::{ClusterConfig, ClusterNode};
use examples::edge::{EdgeOptions, serve_with_options};
use room_core::NodeId;
use roomkit::ticket::KeyRing;

#[derive(Debug, Clone)]
struct Args {
    nodes: u64,
    base_port: u16,
    nats: Option<String>,
    redis: Option<String>,
    key: Option<String>,
    node: Option<u64>,
    loadgen: Option<usize>,
    seconds: u64,
    chat_rate: u32,
    per_ip: Option<usize>,
}

fn args() -> Args {
    let mut a = Args {
        nodes: 3,
        base_port: 7101,
        nats: None,
        redis: None,
        key: None,
        node: None,
        loadgen: None,
        seconds: 20,
        chat_rate: 100,
        per_ip: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--nodes" => a.nodes = value().parse().expect("--nodes N"),
            "--base-port" => a.base_port = value().parse().expect("--base-port P"),
            "--nats" => a.nats = Some(value()),
            "--redis" => a.redis = Some(value()),
            "--key" => a.key = Some(value()),
            "--node" => a.node = Some(value().parse().expect("--node N")),
            "--loadgen" => a.loadgen = Some(value().parse().expect("--loadgen N")),
            "--seconds" => a.seconds = value().parse().expect("--seconds N"),
            "--chat-rate" => a.chat_rate = value().parse().expect("--chat-rate N"),
            "--per-ip" => a.per_ip = Some(value().parse().expect("--per-ip N")),
            other => panic!("unknown option {other} (see the file's header)"),
        }
    }
    a
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2).filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()).collect()
}

/// One node process.
async fn run_node(a: &Args, id: u64) -> Result<(), Box<dyn std::error::Error>> {
    let nats = a.nats.clone().ok_or("--node needs --nats")?;
    let redis = a.redis.clone().ok_or("--node needs --redis")?;
    let keys = KeyRing::new("cluster", unhex(a.key.as_deref().ok_or("--node needs --key")?))?;
    let port = a.base_port + (id - 1) as u16;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let mut config = ClusterConfig::new(NodeId(id), &nats, &redis, keys.clone());
    config.addr = format!("127.0.0.1:{port}");
    let node = ClusterNode::start(config).await?;
    // Each node process serves the host API when the parent's environment
    // has a key (children inherit it): any node answers for any room.
    let mut options = EdgeOptions::default();
    options.api_key = std::env::var("ROOMKIT_API_KEY").ok().filter(|k| !k.is_empty());
    if let Some(per_ip) = a.per_ip {
        options.limits.per_ip = per_ip;
    }
    let api_on = options.api_key.is_some();
    serve_with_options(listener, node.service.clone(), Arc::new(keys), None, options)?;
    tracing::info!(node = id, %port, host_api = api_on, "serving");
    let mut every = tokio::time::interval(Duration::from_secs(5));
    // The engines' health and the service's counters, for `GET /metrics`.
    let mut sample = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = sample.tick() => node.record_metrics(),
            _ = every.tick() => {
                let s = node.service.stats();
                tracing::info!(
                    node = id,
                    view = ?node.service.view(),
                    connections = s.connections,
                    sessions = s.sessions,
                    rooms = s.rooms,
                    refilled = s.refilled,
                    redis_up = node.redis_up(),
                    "status"
                );
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// Kills the node processes when the parent ends.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn healthz(port: u16) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    body.find('{').map(|i| body[i..].to_owned())
}

async fn run_cluster(a: &Args) -> Result<(), Box<dyn std::error::Error>> {
    // Engines: the given ones, or our own.
    let own_nats = match &a.nats {
        Some(_) => None,
        None => Some(room_testkit::nats::NatsServer::start().map_err(|e| format!("cannot start nats-server: {e}"))?),
    };
    let own_redis = match &a.redis {
        Some(_) => None,
        None => {
            Some(room_testkit::redis::RedisServer::start(None).map_err(|e| format!("cannot start redis-server: {e}"))?)
        }
    };
    let nats = a.nats.clone().or_else(|| own_nats.as_ref().map(|n| n.url())).unwrap_or_default();
    let redis = a.redis.clone().or_else(|| own_redis.as_ref().map(|r| r.url())).unwrap_or_default();
    tracing::info!(%nats, %redis, "engines");
    let key = hex(&random_key());
    let exe = std::env::current_exe()?;
    let mut children = Children(Vec::new());
    for id in 1..=a.nodes {
        let child = Command::new(&exe)
            .args(["--node", &id.to_string(), "--nats", &nats, "--redis", &redis, "--key", &key])
            .args(["--base-port", &a.base_port.to_string()])
            .args(a.per_ip.map(|n| ["--per-ip".to_owned(), n.to_string()]).into_iter().flatten())
            .stdin(Stdio::null())
            .spawn()?;
        children.0.push(child);
    }
    let started = Instant::now();
    let ports: Vec<u16> = (0..a.nodes as u16).map(|i| a.base_port + i).collect();
    loop {
        let mut whole = 0;
        for &p in &ports {
            let whole_view = serde_json::json!((1..=a.nodes).collect::<Vec<u64>>());
            if let Some(h) = healthz(p).await
                && serde_json::from_str::<serde_json::Value>(&h).is_ok_and(|v| v["view"] == whole_view)
            {
                whole += 1;
            }
        }
        if whole == ports.len() {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err("the nodes did not form a cluster within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let servers = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
    println!("{} nodes up in {:.1} s: {servers}", a.nodes, started.elapsed().as_secs_f64());
    let loadgen = |n: usize| {
        format!(
            "cargo run --release -p examples --example loadgen -- --ws {n} --seconds {} --chat-rate {} --server {servers}",
            a.seconds, a.chat_rate
        )
    };
    match a.loadgen {
        Some(n) => {
            // The load generator is another example: run it as its own process.
            let status = Command::new("sh").args(["-c", &loadgen(n)]).status()?;
            for &p in &ports {
                println!("node on {p}: {}", healthz(p).await.unwrap_or_default());
            }
            if !status.success() {
                return Err("the load generator failed".into());
            }
        }
        None => {
            println!("load it with:\n  {}", loadgen(3_000));
            println!("Ctrl-C stops the nodes.");
            tokio::signal::ctrl_c().await?;
        }
    }
    drop(children);
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let a = args();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        match a.node {
            Some(id) => run_node(&a, id).await,
            None => run_cluster(&a).await,
        }
    })
}
