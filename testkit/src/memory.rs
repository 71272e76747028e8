//! The process's own memory, for tests that check it stays bounded.

/// The process's resident memory in MiB, from `/proc/self/status` (Linux);
/// `None` where that cannot be read, so a test can say it checked nothing
/// rather than pass on a zero.
#[must_use]
pub fn resident_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn a_megabyte_held_shows_in_the_resident_memory() {
        let before = resident_mib().expect("linux has /proc");
        let held: Vec<u8> = vec![1; 64 << 20];
        let after = resident_mib().expect("linux has /proc");
        assert!(after - before >= 32.0, "{before} → {after} MiB");
        drop(held);
    }
}
