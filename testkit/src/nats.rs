//! A `nats-server` with JetStream of a test's own: a free port, a temporary
//! store directory that outlives restarts (so streams survive a restart,
//! as on a real deployment), killed when dropped. No test touches a
//! machine's shared instance.

use std::io::{self, Read};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::redis::free_port;

/// A running (or stopped, until [`NatsServer::restart`]) `nats-server -js`.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

/// The server greets every client with an `INFO` line.
fn greets(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut hello = [0u8; 4];
    s.read_exact(&mut hello).is_ok() && &hello == b"INFO"
}

/// The nats-server binary: `NATS_SERVER` if set, else `nats-server` on the
/// path (Debian installs it in /usr/sbin, which is not always on it).
fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER") {
        return p.into();
    }
    let sbin = PathBuf::from("/usr/sbin/nats-server");
    if sbin.exists() { sbin } else { PathBuf::from("nats-server") }
}

impl NatsServer {
    /// Starts one on a free port and waits until it greets clients (10 s at
    /// most).
    pub fn start() -> io::Result<NatsServer> {
        let mut server = NatsServer { child: None, port: free_port()?, dir: tempfile::tempdir()? };
        server.restart()?;
        Ok(server)
    }

    /// Starts it again (after [`stop`](Self::stop)) on the same port, with
    /// the same store.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        let child = Command::new(binary())
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !greets(self.port) {
            if Instant::now() >= deadline {
                self.stop();
                return Err(io::Error::new(io::ErrorKind::TimedOut, "nats-server did not start"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills it (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
