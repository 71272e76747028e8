//! A Toxiproxy-style TCP proxy, run inside a lab namespace:
//!
//! ```text
//! faultlab-proxy --listen 0.0.0.0:8101 --upstream 127.0.0.1:7101 [--latency MS] [--jitter MS]
//! ```
//!
//! It prints `listening ADDR` once bound, then reads commands from its
//! standard input, one per line, and answers each with one line (`ok`,
//! `error: ...`, or the status); see `faultlab::Proxy::command`:
//! `latency up|down|both MS [JITTER]`, `bandwidth up|down|both BYTES_PER_S`, `blackhole up|down|both on|off`,
//! `reset`, `off`, `on`, `clear`, `status`. It stops at end of input.
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use faultlab::{Direction, Proxy};
use tokio::io::AsyncBufReadExt;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut listen: Option<SocketAddr> = None;
    let mut upstream: Option<SocketAddr> = None;
    let mut latency = 0;
    let mut jitter = 0;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => listen = Some(value.parse()?),
            "--upstream" => upstream = Some(value.parse()?),
            "--latency" => latency = value.parse()?,
            "--jitter" => jitter = value.parse()?,
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    let listen = listen.ok_or("--listen ADDR is needed")?;
    let upstream = upstream.ok_or("--upstream ADDR is needed")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    runtime.block_on(async move {
        let proxy = Proxy::start(listen, upstream).await?;
        proxy.latency(Direction::Both, Duration::from_millis(latency), Duration::from_millis(jitter));
        println!("listening {}", proxy.local_addr());
        std::io::stdout().flush()?;
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Some(line) = lines.next_line().await? {
            if line.trim().is_empty() {
                continue;
            }
            match proxy.command(&line) {
                Ok(answer) => println!("{answer}"),
                Err(e) => println!("error: {e}"),
            }
            std::io::stdout().flush()?;
        }
        Ok(())
    })
}
