//! Benchmarks: SemLA on real CamVid domains ([`camvid`]), the speed of the
//! per-image paths and of a large library ([`speed`]), and the tables and bar
//! charts they are reported with ([`table`], [`chart`]).

pub mod camvid;
pub mod chart;
pub mod speed;
pub mod table;

/// The 1-minute load average of the machine (`/proc/loadavg`), if readable: timings on a
/// shared machine are only meaningful next to it.
pub fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Resident memory of this process in bytes (`VmRSS` of `/proc/self/status`), if readable.
pub fn resident_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
