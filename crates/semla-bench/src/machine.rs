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

/// Resets this process's peak resident memory (`VmHWM`) to its current resident
/// memory (Linux: `5` written to `/proc/self/clear_refs`), so that the next
/// [`peak_resident_bytes`] is the peak of what ran in between. Returns whether
/// the reset took effect (false where the file is absent or not writable).
pub fn reset_peak_resident() -> bool {
    std::fs::write("/proc/self/clear_refs", b"5").is_ok()
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// After a reset, the peak follows what is allocated next, not the past:
    /// 64 MiB touched then freed shows in the peak of its own window only.
    #[test]
    fn peak_resets_to_the_window() {
        if !reset_peak_resident() {
            eprintln!("skipped: /proc/self/clear_refs is not writable here");
            return;
        }
        let before = peak_resident_bytes().unwrap();
        let block = vec![1u8; 64 << 20];
        std::hint::black_box(&block);
        let with_block = peak_resident_bytes().unwrap();
        drop(block);
        assert!(
            with_block >= before + (60 << 20),
            "{before} -> {with_block}"
        );
        assert!(reset_peak_resident());
        let after_reset = peak_resident_bytes().unwrap();
        assert!(
            after_reset + (60 << 20) <= with_block,
            "{with_block} -> {after_reset}"
        );
    }
}
