//! The journal side of `-o writeback` (policy and thread: [`crate::writeback`], which
//! passes its policy in, so that the journal does not depend on it).

use super::Journal;
use std::time::Instant;

impl Journal {
    /// `-o writeback`: makes durable every file whose first unsynced change is `due` (asked
    /// with the time of that change).  The journal side of an fsync; the backing file is not
    /// fsynced: the model only needs the cut to keep it.  Waits for a file's guard like any writer,
    /// never holds the map lock while doing so.  Returns how many files were written back.
    pub fn writeback_expired(&self, due: impl Fn(Instant) -> bool) -> usize {
        let mut done = 0;
        for (key, slot) in self.slots() {
            let is_due = {
                let st = slot.state.lock();
                st.tracked.as_ref().is_some_and(|t| due(t.dirtied_at))
            };
            if !is_due {
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
                .is_some_and(|t| due(t.dirtied_at));
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
