//! Which FUSE worker thread reads the next request from /dev/fuse.
//!
//! With several threads blocked in `read(/dev/fuse)`, the kernel hands each request to the
//! thread that has waited longest.  A program that issues one request at a time (write,
//! fdatasync, write, ...) then meets a different, cold thread for every request, woken on
//! whichever CPU it last ran on, and pays for it in latency: lossfs with 8 threads lost to
//! single-threaded bindfs on the `wal` benchmark, and matched it with one thread.  One
//! thread is not an option either, because a slow fsync must not stall everybody else.
//!
//! So the threads take turns: at most one of them (the *reader*) goes back to
//! `read(/dev/fuse)`; the others park here after replying.  The reader serves each request
//! itself and then reads the next one, so a serial program keeps meeting the same warm
//! thread, as with one thread: a write and the fdatasync after it run on one thread.  A
//! request that turns out slow (an fsync waiting for the disk, a read from a cold disk, an
//! open of a FIFO, a request frozen by a power cut) is caught by the *standby*, one parked
//! thread that looks every [`STALL_TICK`] while requests flow and takes over the reading
//! when a request has been running for a whole tick and no other has started: a slow
//! operation holds up the others for one tick at most.  When nothing happens for
//! [`IDLE_TICKS`] ticks the standby sleeps until the next request, so an idle mount costs
//! no wake-ups.  (Handing the reading over at the start of every fsync was measured too:
//! the extra wake-up per fsync cost more than it saved.)
//!
//! The gate only sees threads that have served a request through it; fuser starts all
//! threads in `read` and ends each of them when `read` reports the connection gone.  A
//! thread that leaves while it is the reader (the mount went away) opens the gate for
//! good, so parked threads go back to `read`, see the end as well, and fuser can join them.

use parking_lot::{Condvar, Mutex};
use std::cell::RefCell;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How long a request may hold the reading alone before the standby takes over.
pub const STALL_TICK: Duration = Duration::from_millis(1);

/// Ticks without any request after which the standby stops looking until the next one.
pub const IDLE_TICKS: u32 = 50;

#[derive(Default)]
struct State {
    /// Threads that left this gate for `read(/dev/fuse)` and have not come back.
    readers: usize,
    /// Threads parked on `followers`.
    parked: usize,
    /// A thread waits on `standby`.
    standby: bool,
    /// ... and waits without a timeout (idle mount).
    standby_asleep: bool,
    /// Requests in progress.
    running: usize,
    /// Requests started, ever: the standby's measure of progress.
    started: u64,
    /// The mount is gone: nobody parks any more.
    closing: bool,
    /// Standby take-overs (stalled requests), for tests.
    takeovers: u64,
}

struct Shared {
    state: Mutex<State>,
    followers: Condvar,
    standby: Condvar,
    tick: Duration,
}

/// The turn-taking of one mount's FUSE threads.
#[derive(Clone)]
pub struct ReadGate {
    shared: Arc<Shared>,
}

/// What a FUSE thread remembers of the gate between requests.
#[derive(Default)]
struct Seat {
    gate: Option<Weak<Shared>>,
    /// This thread is the reader (it left the gate for `read`).
    reader: bool,
}

impl Drop for Seat {
    fn drop(&mut self) {
        // A reader only leaves fuser's loop when the connection is gone (or on DESTROY):
        // nobody will be handed another request, so nobody may stay parked.
        if self.reader {
            if let Some(shared) = self.gate.as_ref().and_then(Weak::upgrade) {
                shared.close();
            }
        }
    }
}

thread_local! {
    static SEAT: RefCell<Seat> = RefCell::new(Seat::default());
}

/// One request's pass through the gate; dropping it (after the reply is sent) decides
/// whether this thread reads next or parks.
pub struct Turn<'a> {
    shared: &'a Arc<Shared>,
}

impl ReadGate {
    pub fn new() -> Self {
        Self::with_tick(STALL_TICK)
    }

    /// A gate whose standby looks every `tick` (tests use a longer one).
    pub fn with_tick(tick: Duration) -> Self {
        ReadGate {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                followers: Condvar::new(),
                standby: Condvar::new(),
                tick,
            }),
        }
    }

    /// Called by a FUSE thread when a request arrives, before serving it.
    pub fn enter(&self) -> Turn<'_> {
        let shared = &self.shared;
        let was_reader = SEAT.with(|s| {
            let mut s = s.borrow_mut();
            let mine = s
                .gate
                .as_ref()
                .is_some_and(|g| std::ptr::eq(g.as_ptr(), Arc::as_ptr(shared)));
            if !mine {
                s.gate = Some(Arc::downgrade(shared));
                s.reader = false;
            }
            std::mem::replace(&mut s.reader, false)
        });
        let mut st = shared.state.lock();
        if was_reader {
            st.readers -= 1;
        }
        st.started += 1;
        st.running += 1;
        if st.standby_asleep {
            st.standby_asleep = false;
            shared.standby.notify_one();
        }
        Turn { shared }
    }

    /// Whether the gate has been opened for good (the mount is gone).
    pub fn is_closing(&self) -> bool {
        self.shared.state.lock().closing
    }

    /// How often the standby took over from a stalled request.
    pub fn takeovers(&self) -> u64 {
        self.shared.state.lock().takeovers
    }

    /// Opens the gate for good, as when the reader sees the mount go.
    pub fn close(&self) {
        self.shared.close();
    }
}

impl Default for ReadGate {
    fn default() -> Self {
        Self::new()
    }
}

impl Shared {
    fn close(&self) {
        let mut st = self.state.lock();
        st.closing = true;
        self.followers.notify_all();
        self.standby.notify_all();
    }

    /// This thread becomes the reader.
    fn take_reading(st: &mut State) {
        st.readers += 1;
        SEAT.with(|s| s.borrow_mut().reader = true);
    }

    /// After the reply: read next if nobody else does, else park until needed.
    fn leave(&self) {
        let mut st = self.state.lock();
        st.running -= 1;
        if st.closing {
            return;
        }
        if st.readers == 0 {
            Self::take_reading(&mut st);
            return;
        }
        st.parked += 1;
        loop {
            if st.closing {
                st.parked -= 1;
                return;
            }
            if !st.standby {
                st.parked -= 1;
                self.stand_by(st);
                return;
            }
            self.followers.wait(&mut st);
        }
    }

    /// The standby's watch: take over the reading when a request has held it for a whole
    /// tick while no other request started.
    fn stand_by(&self, mut st: parking_lot::MutexGuard<'_, State>) {
        st.standby = true;
        let mut seen = st.started;
        let mut idle = 0;
        // Whether a whole tick has passed since `seen` was taken.
        let mut ticked = false;
        loop {
            if st.closing {
                st.standby = false;
                return;
            }
            let stalled = ticked && st.running > 0 && st.started == seen;
            if st.readers == 0 && stalled {
                st.takeovers += 1;
                st.standby = false;
                Self::take_reading(&mut st);
                // Someone else watches from now on.
                if st.parked > 0 {
                    self.followers.notify_one();
                }
                return;
            }
            if st.started == seen {
                idle += 1;
            } else {
                idle = 0;
                seen = st.started;
            }
            if idle >= IDLE_TICKS && st.running == 0 {
                st.standby_asleep = true;
                while st.standby_asleep && !st.closing {
                    self.standby.wait(&mut st);
                }
                st.standby_asleep = false;
                idle = 0;
                seen = st.started;
                ticked = false;
            } else {
                ticked = self.standby.wait_for(&mut st, self.tick).timed_out();
            }
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.shared.leave();
    }
}

#[cfg(test)]
#[path = "readgate_tests.rs"]
mod tests;
