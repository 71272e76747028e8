//! Network namespaces joined by a bridge, and nftables faults inside them.

use std::fmt;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Every namespace a lab makes starts with this; [`Lab::sweep`] removes
/// stale ones (those whose creating process is gone).
pub const PREFIX: &str = "flab";

/// The table each host's faults live in (inside the host's namespace).
const TABLE: &str = "faultlab";

static LABS: AtomicU32 = AtomicU32::new(0);

/// Why the lab cannot run here.
#[derive(Debug)]
#[non_exhaustive]
pub enum LabError {
    /// The lab needs root (network namespaces, nftables).
    NotRoot,
    /// A tool is missing (`ip` from iproute2, `nft` from nftables).
    MissingTool(&'static str),
    /// A command failed.
    Command {
        /// What ran.
        command: String,
        /// What it said.
        stderr: String,
    },
    /// A command could not be started.
    Io(io::Error),
}

impl fmt::Display for LabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LabError::NotRoot => write!(f, "the fault lab needs root (network namespaces, nftables)"),
            LabError::MissingTool(t) => {
                write!(f, "`{t}` not found (apt-get install -y iproute2 nftables)")
            }
            LabError::Command { command, stderr } => write!(f, "`{command}` failed: {}", stderr.trim()),
            LabError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for LabError {}

impl From<io::Error> for LabError {
    fn from(e: io::Error) -> Self {
        LabError::Io(e)
    }
}

/// Whether the lab can run on this machine: root, `ip` and `nft`. Tests
/// call it first and skip with its message when it fails.
pub fn check() -> Result<(), LabError> {
    let uid = Command::new("id").arg("-u").output()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err(LabError::NotRoot);
    }
    for tool in ["ip", "nft"] {
        if !on_path(tool) {
            return Err(LabError::MissingTool(tool));
        }
    }
    Ok(())
}

/// Installs iproute2 and nftables with apt-get when `ip` or `nft` is
/// missing (idempotent; needs root and a Debian-like system).
pub fn install_tools() -> Result<(), LabError> {
    if on_path("ip") && on_path("nft") {
        return Ok(());
    }
    let out = Command::new("apt-get")
        .args(["install", "-y", "iproute2", "nftables"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()?;
    if !out.status.success() {
        return Err(LabError::Command {
            command: "apt-get install -y iproute2 nftables".into(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}

fn on_path(tool: &str) -> bool {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':').chain(["/usr/sbin", "/sbin"]).any(|dir| Path::new(dir).join(tool).is_file())
}

fn run(cmd: &mut Command) -> Result<Output, LabError> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        return Err(LabError::Command {
            command: format!("{cmd:?}"),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(out)
}

fn ip(args: &[&str]) -> Result<Output, LabError> {
    run(Command::new("ip").args(args))
}

/// Which way a fault applies, seen from the host it is set on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Packets the host receives.
    Inbound,
    /// Packets the host sends.
    Outbound,
    /// Both.
    Both,
}

/// One host of a lab: a network namespace with one interface on the bridge.
#[derive(Debug, Clone)]
pub struct Host {
    /// The name the test gave it.
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Its address on the lab's bridge.
    pub ip: Ipv4Addr,
}

/// A process running inside a host's namespace; killed when dropped.
#[derive(Debug)]
pub struct Proc {
    /// The child (`ip netns exec` execs the program itself, so this is
    /// the program's process).
    pub child: Child,
    /// A label for messages.
    pub label: String,
}

impl Proc {
    /// Kills the process and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends one line to its standard input (spawned with a piped stdin).
    pub fn send_line(&mut self, line: &str) -> io::Result<()> {
        let stdin = self.child.stdin.as_mut().ok_or_else(|| io::Error::other("stdin not piped"))?;
        stdin.write_all(line.as_bytes())?;
        stdin.write_all(b"\n")?;
        stdin.flush()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A set of hosts, each in its own network namespace, joined by veth pairs
/// to a bridge that lives in a namespace of its own. Addresses are in
/// `10.213.x.0/24`. Everything is removed on drop (processes still running
/// in the namespaces are killed first).
///
/// Faults are nftables rules in the table `faultlab` of a host's namespace:
/// nothing outside the lab's namespaces is ever touched.
#[derive(Debug)]
pub struct Lab {
    run: String,
    bridge: String,
    subnet: u8,
    hosts: Vec<Host>,
}

impl Lab {
    /// Creates hosts named `names` (short names: `n1`, `nats`, `client`),
    /// after sweeping stale namespaces of earlier runs.
    pub fn new(names: &[&str]) -> Result<Lab, LabError> {
        check()?;
        Lab::sweep();
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        let run = format!("{PREFIX}{}x{n}", std::process::id());
        let subnet = 1 + (n % 250) as u8;
        let bridge = format!("{run}-br");
        let mut lab = Lab { run, bridge: bridge.clone(), subnet, hosts: Vec::new() };
        // From here on, a failure drops `lab`, which removes what exists.
        ip(&["netns", "add", &bridge])?;
        ip(&["-n", &bridge, "link", "set", "lo", "up"])?;
        ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &bridge, "link", "set", "br0", "up"])?;
        for (i, name) in names.iter().enumerate() {
            let netns = format!("{}-{name}", lab.run);
            ip(&["netns", "add", &netns])?;
            let host = Host { name: (*name).to_owned(), netns, ip: Ipv4Addr::new(10, 213, subnet, 1 + i as u8) };
            lab.hosts.push(host.clone());
            let port = format!("p{i}");
            ip(&[
                "link",
                "add",
                "eth0",
                "netns",
                &host.netns,
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                &bridge,
            ])?;
            ip(&["-n", &bridge, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &bridge, "link", "set", &port, "up"])?;
            ip(&["-n", &host.netns, "link", "set", "lo", "up"])?;
            ip(&["-n", &host.netns, "addr", "add", &format!("{}/24", host.ip), "dev", "eth0"])?;
            ip(&["-n", &host.netns, "link", "set", "eth0", "up"])?;
            lab.nft(
                &host.netns,
                &format!(
                    "add table inet {TABLE}\n\
                 add chain inet {TABLE} input {{ type filter hook input priority 0; policy accept; }}\n\
                 add chain inet {TABLE} output {{ type filter hook output priority 0; policy accept; }}\n"
                ),
            )?;
        }
        Ok(lab)
    }

    /// Removes namespaces named with [`PREFIX`] whose creating process is
    /// no longer running (left by a test that was killed).
    pub fn sweep() {
        let Ok(out) = ip(&["netns", "list"]) else { return };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(name) = line.split_whitespace().next() else { continue };
            let Some(rest) = name.strip_prefix(PREFIX) else { continue };
            let Some(pid) = rest.split('x').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                remove_netns(name);
            }
        }
    }

    /// The host named `name`.
    ///
    /// # Panics
    /// If the lab has no such host.
    pub fn host(&self, name: &str) -> &Host {
        self.hosts.iter().find(|h| h.name == name).unwrap_or_else(|| panic!("no host {name} in the lab"))
    }

    /// Every host, in creation order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The third byte of the lab's `10.213.x.0/24`.
    pub fn subnet(&self) -> u8 {
        self.subnet
    }

    /// A command that runs `program` inside `host`'s namespace.
    pub fn command(&self, host: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host(host).netns]).arg(program);
        cmd
    }

    /// Runs `args` (program first) in `host`'s namespace and returns its
    /// standard output; fails when it exits non-zero.
    pub fn exec(&self, host: &str, args: &[&str]) -> Result<String, LabError> {
        let (program, rest) = args.split_first().ok_or_else(|| io::Error::other("empty command"))?;
        let out = run(self.command(host, program).args(rest))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts `cmd` (made with [`Lab::command`]) as a long-running process;
    /// it is killed when the returned [`Proc`] drops, and in any case when
    /// the lab drops.
    pub fn spawn(&self, label: &str, mut cmd: Command) -> Result<Proc, LabError> {
        let child = cmd.spawn()?;
        Ok(Proc { child, label: label.to_owned() })
    }

    fn nft(&self, netns: &str, script: &str) -> Result<(), LabError> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        child.stdin.take().ok_or_else(|| io::Error::other("no stdin"))?.write_all(script.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(LabError::Command {
                command: format!("nft -f - in {netns}: {script}"),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(())
    }

    fn rules(&self, host: &str, peers: &[&str], dir: Dir, verdict: &str) -> Result<(), LabError> {
        let netns = &self.host(host).netns;
        let mut script = String::new();
        for peer in peers {
            let peer = self.host(peer).ip;
            if matches!(dir, Dir::Inbound | Dir::Both) {
                script.push_str(&format!("add rule inet {TABLE} input ip saddr {peer} {verdict}\n"));
            }
            if matches!(dir, Dir::Outbound | Dir::Both) {
                script.push_str(&format!("add rule inet {TABLE} output ip daddr {peer} {verdict}\n"));
            }
        }
        self.nft(netns, &script)
    }

    /// Drops every packet between `host` and each of `peers`, in `dir`
    /// (seen from `host`). `Dir::Both` is a full partition;
    /// `Dir::Outbound` makes an asymmetric one: the peers no longer hear
    /// `host`, `host` still hears them.
    pub fn block(&self, host: &str, peers: &[&str], dir: Dir) -> Result<(), LabError> {
        self.rules(host, peers, dir, "drop")
    }

    /// Drops `percent` % of the packets between `host` and each of `peers`
    /// at random, in `dir` (`numgen random mod 100 < percent drop`).
    pub fn loss(&self, host: &str, peers: &[&str], dir: Dir, percent: u8) -> Result<(), LabError> {
        self.rules(host, peers, dir, &format!("numgen random mod 100 < {percent} drop"))
    }

    /// Removes every fault set on `host`.
    pub fn heal(&self, host: &str) -> Result<(), LabError> {
        let netns = &self.host(host).netns;
        self.nft(netns, &format!("flush chain inet {TABLE} input\nflush chain inet {TABLE} output\n"))
    }

    /// Removes every fault on every host.
    pub fn heal_all(&self) -> Result<(), LabError> {
        for h in &self.hosts {
            self.heal(&h.name)?;
        }
        Ok(())
    }

    /// Makes a service that listens on `127.0.0.1:port` inside `host`
    /// reachable from the other hosts at the host's address, same port
    /// (a DNAT to loopback, with `route_localnet` on in that namespace
    /// only). Faults do not remove it.
    pub fn expose(&self, host: &str, port: u16) -> Result<(), LabError> {
        let netns = self.host(host).netns.clone();
        for iface in ["all", "eth0"] {
            run(Command::new("ip")
                .args(["netns", "exec", &netns, "sysctl", "-qw"])
                .arg(format!("net.ipv4.conf.{iface}.route_localnet=1")))?;
        }
        self.nft(
            &netns,
            &format!(
                "add table ip {TABLE}_nat\n\
             add chain ip {TABLE}_nat prerouting {{ type nat hook prerouting priority -100; policy accept; }}\n\
             add rule ip {TABLE}_nat prerouting iifname eth0 tcp dport {port} dnat to 127.0.0.1:{port}\n"
            ),
        )
    }

    /// The rules now set on `host` (for logs).
    pub fn faults(&self, host: &str) -> Result<String, LabError> {
        self.exec(host, &["nft", "list", "table", "inet", TABLE])
    }
}

fn remove_netns(name: &str) {
    // Processes left in the namespace first: deleting a namespace does not
    // end them.
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).stderr(Stdio::null()).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).stderr(Stdio::null()).status();
        }
    }
    let _ = Command::new("ip").args(["netns", "del", name]).stderr(Stdio::null()).status();
}

impl Drop for Lab {
    fn drop(&mut self) {
        for h in &self.hosts {
            remove_netns(&h.netns);
        }
        // The bridge namespace last: deleting it removes the veth ends and
        // the bridge.
        remove_netns(&self.bridge);
    }
}
