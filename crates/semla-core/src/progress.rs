//! Progress reporting without a terminal dependency: libraries report stages
//! and counts, the binary draws them (indicatif bars or log lines on stderr).

/// Receives the progress of long operations.
pub trait Progress {
    /// A new stage with `total` steps begins (`label` says what it does).
    fn begin(&mut self, label: &str, total: u64);
    /// `done` steps of the current stage are finished.
    fn set(&mut self, done: u64);
    /// Updates the message of the current stage (a loss, a score).
    fn message(&mut self, _text: &str) {}
    /// The current stage is finished.
    fn end(&mut self);
    /// A training stage finished step `step` with loss `loss`.
    fn training_step(&mut self, step: usize, loss: f32) {
        self.set(step as u64);
        self.message(&format!("loss {loss:.3}"));
    }
    /// A line of text to show the user without breaking the bars.
    fn note(&mut self, _text: &str) {}
}

/// Reports nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn begin(&mut self, _label: &str, _total: u64) {}
    fn set(&mut self, _done: u64) {}
    fn end(&mut self) {}
}
