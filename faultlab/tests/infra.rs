//! The lab's own infrastructure, tested for real: partitions block TCP,
//! asymmetric rules block one direction, random loss drops about the asked
//! share, the proxy delays, caps and resets. Bounds are generous: these
//! assert behaviour, not timing.
//!
//! ```text
//! sudo cargo test -p faultlab --test infra -- --ignored
//! ```

use std::io::{BufRead, BufReader};
use std::process::{ChildStdout, Stdio};
use std::time::Duration;

use faultlab::{Dir, Lab, Proc};

const PROBE: &str = env!("CARGO_BIN_EXE_faultlab-probe");
const PROXY: &str = env!("CARGO_BIN_EXE_faultlab-proxy");

fn lab(names: &[&str]) -> Option<Lab> {
    if let Err(e) = faultlab::check() {
        eprintln!("skipped: {e}");
        return None;
    }
    Some(Lab::new(names).expect("the lab starts"))
}

/// A long-running probe (or proxy) with its output lines.
struct Running {
    proc: Proc,
    out: BufReader<ChildStdout>,
}

impl Running {
    fn start(lab: &Lab, host: &str, program: &str, args: &[&str]) -> Running {
        let mut cmd = lab.command(host, program);
        cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut proc = lab.spawn(program, cmd).expect("spawns");
        let out = BufReader::new(proc.child.stdout.take().expect("piped"));
        let mut r = Running { proc, out };
        let first = r.line();
        assert!(first.starts_with("listening"), "{program} {args:?}: {first}");
        r
    }

    fn line(&mut self) -> String {
        let mut s = String::new();
        self.out.read_line(&mut s).expect("reads");
        s.trim().to_owned()
    }

    fn command(&mut self, line: &str) -> String {
        self.proc.send_line(line).expect("writes");
        self.line()
    }
}

fn probe(lab: &Lab, host: &str, args: &[&str]) -> String {
    let mut cmd = lab.command(host, PROBE);
    let out = cmd.args(args).stdin(Stdio::null()).output().expect("the probe runs");
    assert!(out.status.success(), "probe {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn addr(lab: &Lab, host: &str, port: u16) -> String {
    format!("{}:{port}", lab.host(host).ip)
}

#[test]
#[ignore = "needs root, ip, nft"]
fn a_partition_blocks_tcp_and_heals() {
    let Some(lab) = lab(&["a", "b", "c"]) else { return };
    let _echo = Running::start(&lab, "b", PROBE, &["echo", "0.0.0.0:9000"]);
    let b = addr(&lab, "b", 9000);
    assert!(probe(&lab, "a", &["connect", &b, "2000"]).starts_with("ok"));
    // Partition b from a only (partial): a cannot connect, c still can.
    lab.block("b", &["a"], Dir::Both).unwrap();
    let blocked = probe(&lab, "a", &["connect", &b, "1000"]);
    assert_eq!(blocked, "fail timeout", "{}", lab.faults("b").unwrap());
    assert!(probe(&lab, "c", &["connect", &b, "2000"]).starts_with("ok"));
    lab.heal("b").unwrap();
    assert!(probe(&lab, "a", &["connect", &b, "2000"]).starts_with("ok"));
    println!("partition: blocked = {blocked}, healed: ok");
}

#[test]
#[ignore = "needs root, ip, nft"]
fn a_loopback_service_is_exposed_and_survives_heal() {
    let Some(lab) = lab(&["a", "b"]) else { return };
    let _echo = Running::start(&lab, "b", PROBE, &["echo", "127.0.0.1:9000"]);
    let b = addr(&lab, "b", 9000);
    assert!(probe(&lab, "a", &["connect", &b, "1000"]).starts_with("fail"));
    lab.expose("b", 9000).unwrap();
    assert!(probe(&lab, "a", &["rtt", &b, "3"]).starts_with("rtt"));
    lab.block("b", &["a"], Dir::Both).unwrap();
    lab.heal("b").unwrap();
    assert!(probe(&lab, "a", &["rtt", &b, "3"]).starts_with("rtt"));
}

#[test]
#[ignore = "needs root, ip, nft"]
fn an_asymmetric_rule_blocks_one_direction() {
    let Some(lab) = lab(&["a", "b"]) else { return };
    // a's outbound to b dropped: b does not hear a, a still hears b.
    lab.block("a", &["b"], Dir::Outbound).unwrap();
    let mut at_b = Running::start(&lab, "b", PROBE, &["udp-recv", "0.0.0.0:9001", "2"]);
    let mut at_a = Running::start(&lab, "a", PROBE, &["udp-recv", "0.0.0.0:9001", "2"]);
    probe(&lab, "a", &["udp-send", &addr(&lab, "b", 9001), "200"]);
    probe(&lab, "b", &["udp-send", &addr(&lab, "a", 9001), "200"]);
    let (b_heard, a_heard) = (at_b.line(), at_a.line());
    println!("asymmetric: b heard a: {b_heard}; a heard b: {a_heard}");
    assert_eq!(b_heard, "received 0");
    assert_eq!(a_heard, "received 200");
}

#[test]
#[ignore = "needs root, ip, nft"]
fn random_loss_drops_about_the_asked_share() {
    let Some(lab) = lab(&["a", "b"]) else { return };
    const N: u64 = 4000;
    let count = |lab: &Lab| {
        let mut at_b = Running::start(lab, "b", PROBE, &["udp-recv", "0.0.0.0:9002", "3"]);
        probe(lab, "a", &["udp-send", &addr(lab, "b", 9002), &N.to_string()]);
        let line = at_b.line();
        line.strip_prefix("received ").and_then(|n| n.parse::<u64>().ok()).unwrap_or_else(|| panic!("{line}"))
    };
    let clean = count(&lab);
    lab.loss("b", &["a"], Dir::Inbound, 5).unwrap();
    let lossy = count(&lab);
    let share = 1.0 - lossy as f64 / N as f64;
    println!("loss: clean {clean}/{N}, at 5%: {lossy}/{N} ({:.1}% dropped)", share * 100.0);
    assert!(clean >= N * 995 / 1000, "{clean} of {N} without loss");
    // 5% of 4000 is 200 (sd 14): 2%..9% is far outside chance.
    assert!((0.02..0.09).contains(&share), "{share}");
}

#[test]
#[ignore = "needs root, ip, nft"]
fn the_proxy_delays_caps_and_resets() {
    let Some(lab) = lab(&["client", "server"]) else { return };
    let _echo = Running::start(&lab, "server", PROBE, &["echo", "127.0.0.1:9000"]);
    // The proxy in the server's namespace, in front of a loopback-only
    // service: the way the lab exposes the nodes.
    let mut proxy =
        Running::start(&lab, "server", PROXY, &["--listen", "0.0.0.0:8000", "--upstream", "127.0.0.1:9000"]);
    let p = addr(&lab, "server", 8000);
    let median = |lab: &Lab| {
        let line = probe(lab, "client", &["rtt", &p, "20"]);
        let v: Vec<f64> = line.split_whitespace().skip(1).map(|x| x.parse().unwrap()).collect();
        (v[0], v[1], v[2])
    };
    let clean = median(&lab);
    assert_eq!(proxy.command("latency down 100"), "ok");
    let down = median(&lab);
    assert_eq!(proxy.command("latency both 100 50"), "ok");
    let both = median(&lab);
    println!("proxy rtt ms (min, median, max): clean {clean:?}, 100 down {down:?}, 100±50 both {both:?}");
    assert!(clean.1 < 50.0, "{clean:?}");
    assert!(down.1 >= 90.0 && down.1 < 1000.0, "{down:?}");
    assert!(both.1 >= 150.0 && both.1 < 1500.0, "{both:?}");
    assert!(both.2 - both.0 >= 20.0, "jitter shows: {both:?}");

    assert_eq!(proxy.command("clear"), "ok");
    assert_eq!(proxy.command("bandwidth up 100000"), "ok");
    let line = probe(&lab, "client", &["blast", &p, "200000"]);
    let secs: f64 = line.strip_prefix("blast ").unwrap().parse().unwrap();
    println!("proxy: 200 kB at 100 kB/s in {secs:.2} s");
    assert!((1.5..30.0).contains(&secs), "{secs}");
    assert_eq!(proxy.command("clear"), "ok");

    // Reset: an open connection is closed at once.
    let mut cmd = lab.command("client", PROBE);
    cmd.args(["hold", &p, "10"]).stdin(Stdio::null()).stdout(Stdio::piped());
    let mut hold = lab.spawn("hold", cmd).unwrap();
    let mut out = BufReader::new(hold.child.stdout.take().unwrap());
    let mut l = String::new();
    out.read_line(&mut l).unwrap();
    assert_eq!(l.trim(), "connected");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(proxy.command("reset"), "ok");
    l.clear();
    out.read_line(&mut l).unwrap();
    println!("proxy reset: {}", l.trim());
    assert!(l.starts_with("closed") && l.contains("ConnectionReset"), "{l}");

    // The switch: off refuses, on lets through again.
    assert_eq!(proxy.command("off"), "ok");
    let refused = probe(&lab, "client", &["hold", &p, "3"]);
    assert!(refused.contains("closed") || refused.starts_with("refused"), "{refused}");
    assert_eq!(proxy.command("on"), "ok");
    assert!(probe(&lab, "client", &["rtt", &p, "3"]).starts_with("rtt"));
    println!("proxy: {}", proxy.command("status"));
}

#[test]
#[ignore = "needs root, ip, nft"]
fn the_lab_removes_its_namespaces_and_sweeps_stale_ones() {
    if faultlab::check().is_err() {
        return;
    }
    // A namespace of a run whose process is gone: the next lab sweeps it.
    let stale = format!("{}999999999x0-stale", faultlab::PREFIX);
    let added = std::process::Command::new("ip").args(["netns", "add", &stale]).status().unwrap();
    assert!(added.success());
    let Some(lab) = lab(&["x"]) else { return };
    let ns = lab.host("x").netns.clone();
    let list = || {
        String::from_utf8_lossy(&std::process::Command::new("ip").args(["netns", "list"]).output().unwrap().stdout)
            .into_owned()
    };
    assert!(list().contains(&ns));
    assert!(!list().contains(&stale), "swept");
    drop(lab);
    assert!(!list().contains(&ns));
}
