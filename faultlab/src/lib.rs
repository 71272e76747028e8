//! A fault lab for Roomkit: hosts in network namespaces joined by a bridge,
//! real network faults between them, and a Toxiproxy-style proxy.
//!
//! * [`Lab`]: one network namespace per host (three nodes, NATS, Redis, a
//!   client, or whatever a test asks for), each with one veth pair onto a
//!   bridge that lives in a namespace of its own; addresses in
//!   `10.213.x.0/24`. Faults are nftables rules inside a host's namespace:
//!   full, partial and asymmetric partitions ([`Lab::block`]), random loss
//!   ([`Lab::loss`], `numgen random mod 100 < p drop`), [`Lab::heal`].
//!   Everything is removed on drop; stale namespaces of killed runs are
//!   swept when a lab starts.
//! * [`Proxy`] (and the `faultlab-proxy` binary): delay, jitter, bandwidth
//!   caps, connection resets and a switch on TCP links, since the kernel
//!   this runs on has no netem qdisc.
//! * `faultlab-probe`: a small TCP/UDP tool the infrastructure tests run
//!   inside namespaces (echo, connect, round trips, datagram counts).
//!
//! Nothing here ever targets an address outside the namespaces a lab made.
#![forbid(unsafe_code)]

mod lab;
mod proxy;

pub use lab::{Dir, Host, Lab, LabError, PREFIX, Proc, check, install_tools};
pub use proxy::{Direction, Proxy, Settings, Toxics};

/// A small xorshift generator (jitter, client choices): no dependency, not
/// for secrets.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded with `seed` (0 is replaced by a constant).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed })
    }

    /// Seeded from the clock and the process id.
    pub fn seeded() -> Rng {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        Rng::new(t ^ (u64::from(std::process::id()) << 32))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}
