//! The journal side of `-o writeback` (policy and thread: [`crate::writeback`]).

use super::Journal;
use std::time::{Duration, Instant};

impl Journal {
    /// `-o writeback`: makes durable every file whose first unsynced change is older than
    /// `expire` at `now` (the journal side of an fsync; the backing file is not fsynced:
    /// the model only needs the cut to keep it).  Waits for a file's guard like any writer,
    /// never holds the map lock while doing so.  Returns how many files were written back.
    pub fn writeback_expired(&self, now: Instant, expire: Duration) -> usize {
        let mut done = 0;
        for (key, slot) in self.slots() {
            let due = {
                let st = slot.state.lock();
                st.tracked
                    .as_ref()
                    .is_some_and(|t| crate::writeback::expired(t.dirtied_at, now, expire))
            };
            if !due {
                continue;
            }
            let mut guard = self.acquire(key, slot);
            // Checked again under the guard: an fsync may have come first.
            let still = guard
                .slot
                .state
                .lock()
                .tracked
                .as_ref()
                .is_some_and(|t| crate::writeback::expired(t.dirtied_at, now, expire));
            if !still {
                continue;
            }
            match guard.mark_durable() {
                Ok(()) => done += 1,
                Err(e) => {
                    tracing::warn!(ino = key.ino, error = %e, "writeback: file not made durable")
                }
            }
        }
        done
    }
}
