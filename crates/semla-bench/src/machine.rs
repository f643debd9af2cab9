//! What timings are read next to: the machine's load and this process's memory.

/// The 1-minute load average of the machine (`/proc/loadavg`), if readable: timings on a
/// shared machine are only meaningful next to it.
pub fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Resident memory of this process in bytes (`VmRSS` of `/proc/self/status`), if readable.
pub fn resident_bytes() -> Option<u64> {
    status_bytes("VmRSS:")
}

/// The peak resident memory of this process so far in bytes (`VmHWM`), if readable.
pub fn peak_resident_bytes() -> Option<u64> {
    status_bytes("VmHWM:")
}

fn status_bytes(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Wall time per phase of a study, in order.
#[derive(Debug)]
pub struct Phases {
    phase_start: std::time::Instant,
    list: Vec<(String, f64)>,
}

impl Default for Phases {
    fn default() -> Self {
        Self::new()
    }
}

impl Phases {
    /// Starts timing the first phase.
    pub fn new() -> Self {
        Self {
            phase_start: std::time::Instant::now(),
            list: Vec::new(),
        }
    }

    /// Ends the current phase as `name` and starts the next.
    pub fn end(&mut self, name: &str) {
        self.list
            .push((name.to_string(), self.phase_start.elapsed().as_secs_f64()));
        self.phase_start = std::time::Instant::now();
    }

    /// Appends phases timed elsewhere (they end now) and starts the next.
    pub fn extend(&mut self, phases: &[(String, f64)]) {
        self.list.extend(phases.iter().cloned());
        self.phase_start = std::time::Instant::now();
    }

    /// `(name, seconds)` of every ended phase.
    pub fn list(&self) -> &[(String, f64)] {
        &self.list
    }
}
