//! A small network probe the fault lab's tests run inside namespaces.
//!
//! ```text
//! faultlab-probe echo ADDR                 TCP echo server (prints `listening ADDR`)
//! faultlab-probe connect ADDR TIMEOUT_MS   prints `ok MS` or `fail REASON`
//! faultlab-probe rtt ADDR N                N round trips through an echo server: `rtt MIN MEDIAN MAX` (ms)
//! faultlab-probe blast ADDR BYTES          sends BYTES to an echo server, reads them back: `blast SECONDS`
//! faultlab-probe hold ADDR SECONDS         connects and waits: `closed MS KIND`, `held` or `refused KIND`
//! faultlab-probe udp-recv ADDR SECONDS     counts datagrams: `received N`
//! faultlab-probe udp-send ADDR N           sends N datagrams, paced: `sent N`
//! faultlab-probe get ADDR PATH [HEADER]    an HTTP GET (2 s timeout): the body, or `fail REASON`
//! ```
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

type Res = Result<(), Box<dyn std::error::Error>>;

fn main() -> Res {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().ok_or_else(|| format!("argument {i} missing (see the file's header)"));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let addr: SocketAddr = arg(1)?.parse()?;
        match arg(0)?.as_str() {
            "echo" => echo(addr).await,
            "connect" => connect(addr, arg(2)?.parse()?).await,
            "rtt" => rtt(addr, arg(2)?.parse()?).await,
            "blast" => blast(addr, arg(2)?.parse()?).await,
            "hold" => hold(addr, arg(2)?.parse()?).await,
            "udp-recv" => udp_recv(addr, arg(2)?.parse()?).await,
            "udp-send" => udp_send(addr, arg(2)?.parse()?).await,
            "get" => http_get(addr, &arg(2)?, args.get(3).map(String::as_str)).await,
            other => Err(format!("unknown command {other}").into()),
        }
    })
}

async fn echo(addr: SocketAddr) -> Res {
    let listener = TcpListener::bind(addr).await?;
    println!("listening {}", listener.local_addr()?);
    loop {
        let (mut s, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = s.set_nodelay(true);
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        });
    }
}

async fn connect(addr: SocketAddr, timeout_ms: u64) -> Res {
    let t = Instant::now();
    match tokio::time::timeout(Duration::from_millis(timeout_ms), TcpStream::connect(addr)).await {
        Ok(Ok(_)) => println!("ok {}", t.elapsed().as_millis()),
        Ok(Err(e)) => println!("fail {e}"),
        Err(_) => println!("fail timeout"),
    }
    Ok(())
}

async fn rtt(addr: SocketAddr, n: usize) -> Res {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let mut times = Vec::with_capacity(n);
    let mut buf = [0u8; 16];
    for i in 0..n {
        let t = Instant::now();
        s.write_all(&[i as u8; 16]).await?;
        s.read_exact(&mut buf).await?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    let (min, med, max) = (times[0], times[times.len() / 2], times[times.len() - 1]);
    println!("rtt {min:.1} {med:.1} {max:.1}");
    Ok(())
}

async fn blast(addr: SocketAddr, bytes: usize) -> Res {
    let s = TcpStream::connect(addr).await?;
    let t = Instant::now();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![7u8; 4096];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            w.write_all(&chunk[..n]).await?;
            left -= n;
        }
        w.shutdown().await?;
        Ok::<_, std::io::Error>(())
    });
    let mut got = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        got += n;
    }
    writer.await??;
    if got != bytes {
        return Err(format!("sent {bytes} bytes, got {got} back").into());
    }
    println!("blast {:.2}", t.elapsed().as_secs_f64());
    Ok(())
}

async fn hold(addr: SocketAddr, seconds: u64) -> Res {
    let mut s = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => {
            println!("refused {:?}", e.kind());
            return Ok(());
        }
    };
    println!("connected");
    let t = Instant::now();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(seconds), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) => return "eof".to_owned(),
                Ok(_) => {}
                Err(e) => return format!("{:?}", e.kind()),
            }
        }
    })
    .await;
    match read {
        Ok(kind) => println!("closed {} {kind}", t.elapsed().as_millis()),
        Err(_) => println!("held"),
    }
    Ok(())
}

async fn udp_recv(addr: SocketAddr, seconds: u64) -> Res {
    let s = UdpSocket::bind(addr).await?;
    println!("listening {}", s.local_addr()?);
    let mut n = 0u64;
    let mut buf = [0u8; 1500];
    let _ = tokio::time::timeout(Duration::from_secs(seconds), async {
        while s.recv(&mut buf).await.is_ok() {
            n += 1;
        }
    })
    .await;
    println!("received {n}");
    Ok(())
}

async fn udp_send(addr: SocketAddr, n: u64) -> Res {
    let s = UdpSocket::bind("0.0.0.0:0").await?;
    for i in 0..n {
        // Errors (a dropped packet on the way out) count as sent: the
        // receiver counts what arrived.
        let _ = s.send_to(&i.to_be_bytes(), addr).await;
        if i % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    println!("sent {n}");
    Ok(())
}

async fn http_get(addr: SocketAddr, path: &str, header: Option<&str>) -> Res {
    let fetch = async {
        let mut s = TcpStream::connect(addr).await?;
        let extra = header.map(|h| format!("{h}\r\n")).unwrap_or_default();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n").as_bytes())
            .await?;
        let mut body = String::new();
        s.read_to_string(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    match tokio::time::timeout(Duration::from_secs(2), fetch).await {
        Ok(Ok(body)) => println!("{}", body.split_once("\r\n\r\n").map_or("", |(_, b)| b)),
        Ok(Err(e)) => println!("fail {e}"),
        Err(_) => println!("fail timeout"),
    }
    Ok(())
}
