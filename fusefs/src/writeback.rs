//! `-o writeback=SECONDS`: unsynced data older than SECONDS becomes durable on its own, as
//! Linux's flusher writes back an inode whose `dirtied_when` is older than
//! `dirty_expire_centisecs` (30 s by default).  Owns the policy (when a file is due) and the
//! background thread that applies it; the journal does the bookkeeping
//! ([`Journal::writeback_expired`]).

use crate::journal::Journal;
use parking_lot::{Condvar, Mutex};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The thread wakes this often at most, like the kernel's flusher (dirty_writeback_centisecs
/// is 5 s; one second keeps the model within a second of the window).
pub const TICK: Duration = Duration::from_secs(1);

/// A file first dirtied at `dirtied_at` is due at `now` once `expire` has fully passed.
pub fn expired(dirtied_at: Instant, now: Instant, expire: Duration) -> bool {
    now.checked_duration_since(dirtied_at)
        .is_some_and(|age| age >= expire)
}

struct Shared {
    stop: Mutex<bool>,
    wake: Condvar,
}

/// The running writeback thread; [`Writeback::stop`] ends it and waits for it.
pub struct Writeback {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Writeback {
    /// Starts the thread: every [`TICK`] it makes durable the files dirtied more than
    /// `expire` ago.
    pub fn start(journal: Arc<Journal>, expire: Duration) -> std::io::Result<Writeback> {
        let shared = Arc::new(Shared {
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("lossfs-writeback".into())
            .spawn(move || loop {
                {
                    let mut stop = s.stop.lock();
                    if !*stop {
                        s.wake
                            .wait_for(&mut stop, TICK.min(expire.max(Duration::from_millis(10))));
                    }
                    if *stop {
                        return;
                    }
                }
                let now = Instant::now();
                let n = journal.writeback_expired(|t| expired(t, now, expire));
                if n > 0 {
                    tracing::debug!(files = n, "writeback: made old unsynced data durable");
                }
            })?;
        Ok(Writeback {
            shared,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it (at most one journal pass).
    pub fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        *self.shared.stop.lock() = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Writeback {
    fn drop(&mut self) {
        self.stop_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_only_once_the_whole_window_has_passed() {
        let t0 = Instant::now();
        let w = Duration::from_secs(30);
        assert!(!expired(t0, t0, w));
        assert!(!expired(t0, t0 + Duration::from_millis(29_999), w));
        assert!(expired(t0, t0 + w, w));
        assert!(expired(t0, t0 + Duration::from_secs(100), w));
        // A clock reading before the dirtying (another thread's older `now`) is not due.
        assert!(!expired(t0 + Duration::from_secs(5), t0, w));
    }
}
