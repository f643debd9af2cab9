//! Running Rust work from Python: without the GIL, interruptible with Ctrl-C,
//! and safe after `fork`.
//!
//! - [`run`] moves the work to a worker thread and waits with the GIL
//!   released, waking every [`SIGNAL_POLL`] to let Python handle signals: a
//!   Ctrl-C raises `KeyboardInterrupt` at once (the worker finishes its
//!   current call in the background and its result is dropped).
//! - The work runs inside a thread pool owned by this process. candle's matrix
//!   products use rayon; rayon's global pool does not survive `fork` (the child
//!   has its data but none of its threads, and the first parallel product would
//!   wait forever). A PyTorch DataLoader forks its workers, so the pool is
//!   keyed by process id and a forked child builds its own.
//! - candle's element-wise ops run on a second, persistent pool of its own
//!   (`candle_core::utils::barrier_pool`) that cannot be rebuilt in a child.
//!   The package's `__init__.py` has it made without workers (element-wise
//!   ops on the calling thread; the products and semla's fused kernels still
//!   use every core) unless the user sets `CANDLE_NUM_THREADS`; then a child
//!   forked after its parent computed gets a clear error instead of a hang.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::prelude::*;

use crate::errors::{Failure, Kind, Outcome};

/// How often a waiting call lets Python run its signal handlers.
pub const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// The pool of the process that built it.
struct ProcessPool {
    pid: u32,
    pool: Arc<rayon::ThreadPool>,
}

static POOL: Mutex<Option<ProcessPool>> = Mutex::new(None);

/// The process that last computed (0: none yet).
static COMPUTED_IN: AtomicU32 = AtomicU32::new(0);

/// Fails in a child forked after its parent computed while candle's
/// element-wise pool has workers (their threads are not in the child).
fn check_fork() -> Outcome<()> {
    let pid = std::process::id();
    let workers = candle_core::utils::barrier_pool().n_workers();
    let previous = COMPUTED_IN.load(Ordering::Relaxed);
    if workers > 0 && previous != 0 && previous != pid {
        return Err(Failure::new(
            Kind::Semla,
            format!(
                "this process was forked from one that had already computed with CANDLE_NUM_THREADS set \
                 ({} threads): candle's element-wise thread pool does not survive fork. Leave \
                 CANDLE_NUM_THREADS unset, or start workers with multiprocessing's \"spawn\" method",
                workers + 1
            ),
        ));
    }
    COMPUTED_IN.store(pid, Ordering::Relaxed);
    Ok(())
}

/// This process's pool (built on first use, and again in a forked child).
fn pool() -> Outcome<Arc<rayon::ThreadPool>> {
    let pid = std::process::id();
    // A poisoned lock only means a thread panicked while holding it: the
    // `Option` inside is still whole.
    let mut slot = POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(current) = slot.as_ref()
        && current.pid == pid
    {
        return Ok(Arc::clone(&current.pool));
    }
    if let Some(inherited) = slot.take() {
        // The parent's pool: its threads do not exist here, and dropping it
        // would signal them. It is left as it is.
        std::mem::forget(inherited);
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("semla-{i}"))
        .build()
        .map_err(|e| Failure::new(Kind::Semla, format!("cannot start threads: {e}")))?;
    let pool = Arc::new(pool);
    *slot = Some(ProcessPool {
        pid,
        pool: Arc::clone(&pool),
    });
    Ok(pool)
}

/// Runs `work` on a worker thread in this process's pool with the GIL released,
/// and returns its result; raises `KeyboardInterrupt` (or whatever a signal
/// handler raises) as soon as Python reports a signal.
pub fn run<T, F>(py: Python<'_>, work: F) -> PyResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> Outcome<T> + Send + 'static,
{
    check_fork()?;
    let pool = pool()?;
    let (sender, mut receiver) = channel();
    std::thread::Builder::new()
        .name("semla-call".into())
        .spawn(move || {
            let result = pool.install(work);
            // The caller may have gone (interrupted): nobody to tell.
            let _ = sender.send(result);
        })
        .map_err(|e| Failure::new(Kind::Semla, format!("cannot start a thread: {e}")))?;
    loop {
        // Moved in as `&mut`: the receiver is `Send` but not `Sync`.
        let waiting = &mut receiver;
        match py.detach(move || waiting.recv_timeout(SIGNAL_POLL)) {
            Ok(result) => return Ok(result?),
            Err(RecvTimeoutError::Timeout) => py.check_signals()?,
            Err(RecvTimeoutError::Disconnected) => {
                return Err(Failure::new(
                    Kind::Semla,
                    "internal error: the computation stopped without a result (a bug in semla; please report it)",
                )
                .into());
            }
        }
    }
}
