//! The fault engine: crash points (`lossctl arm powercut`), injected errors, delays and
//! fsync lies (`lossctl fault add`), and the disk-full mode.  [`Faults`] holds the state and
//! makes the decisions; [`hook`] is the one call every FUSE operation goes through;
//! [`crate::faultspec`] is the user-facing data (with its path patterns), [`rules`] the
//! matching (drawing from the seeded [`crate::prng`]), [`diskfull`] the byte accounting.
//!
//! When nothing is armed an operation pays one atomic load: no path is computed, no lock
//! taken.
//!
//! A crash point cuts the power from the FUSE thread that met it, in this order: release
//! the power-cut gate; SIGKILL every process using the mount and the caller (signals only,
//! no waiting: the caller cannot die before its request is answered); answer the request
//! EIO (the caller never sees it: it dies on its way back to user space); the rest of the
//! cut (waiting for the deaths, syncfs, rollback, new epoch, invalidation) runs on a thread
//! of its own, because syncfs and invalidation need the FUSE workers free.  From the kill
//! until the cut is over, operations of the killed processes are answered EIO without
//! being applied, so nothing they do after the crash point becomes durable.

pub mod diskfull;
pub mod hook;
pub mod record;
pub mod rules;

use crate::error::{Context as _, FsResult};
use crate::faultspec::{CrashSpec, FaultSpec, Op, When};
use crate::report::{DiskFullStatus, FaultsStatus, LastCut};
use crate::report::{KilledProcess, PowercutReport};
use parking_lot::{Condvar, Mutex};
use rules::{CrashPoint, Decision, Rule, RuleSet};
use std::ffi::{OsStr, OsString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// What the fault engine needs from the daemon to cut the power.
pub trait Cutter: Send + Sync {
    /// Sends SIGKILL to every process using the mount, without waiting.
    fn kill_users_now(&self) -> Vec<KilledProcess>;
    /// Counts a power cut as begun, before anything is killed (`lossfs run` tells a
    /// power-cut death of its program from others by this count).
    fn begin_cut(&self);
    /// The whole power cut sequence (kill and wait, syncfs, rollback, new epoch,
    /// invalidation) of a cut counted by [`Cutter::begin_cut`]; counts it ended.  Never
    /// called on a FUSE thread.
    fn powercut_begun(&self) -> FsResult<PowercutReport>;
    /// Counts a cut begun with [`Cutter::begin_cut`] as ended without running it.
    fn abandon_begun_cut(&self);
    /// Drops the kernel's cached pages and attributes of one inode.  Never called on a
    /// FUSE thread.
    fn invalidate(&self, nodeid: u64);
    /// Drops the kernel's cached name `name` in directory `parent`.  Never called on a
    /// FUSE thread.
    fn invalidate_entry(&self, parent: u64, name: &OsStr);
}

/// What an fsync that failed with a writeback error (EIO, ENOSPC, EDQUOT) does to the
/// file's unsynced data (`-o fsync_error=drop|retry`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FsyncError {
    /// Linux: the data is gone (rolled back at once); the next fsync succeeds.
    #[default]
    Drop,
    /// The data stays unsynced; a later fsync can make it durable.
    Retry,
}

impl FsyncError {
    pub fn name(self) -> &'static str {
        match self {
            FsyncError::Drop => "drop",
            FsyncError::Retry => "retry",
        }
    }
}

/// Why delays were cut short: counters bumped by each event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct DelayEpoch {
    /// Power cut: the delayed request is abandoned (EIO), as a request in flight when the
    /// machine dies never completes.
    aborted: u64,
    /// `fault clear` or unmount: the delay is lifted, the request goes on.
    cleared: u64,
}

/// How an injected delay ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slept {
    Elapsed,
    Cleared,
    Aborted,
}

/// How long a killed process's request may wait for the kill pass to finish.
const KILL_PASS_WAIT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum CutPhase {
    #[default]
    Idle,
    /// A crash point fired; the kill pass is running.
    Killing,
    /// These processes were sent SIGKILL; the rest of the cut is running.
    Killed(Vec<i32>),
}

#[derive(Debug, Default)]
struct DiskFull {
    limit: u64,
    used: u64,
}

#[derive(Default)]
struct State {
    set: RuleSet,
    next_id: u64,
    disk_full: Option<DiskFull>,
    cut: CutPhase,
    last_cut: Option<LastCut>,
    cutter: Option<Weak<dyn Cutter>>,
    /// The ordered operation record of `lossfs explore`'s recording run.
    recorder: Option<record::Recorder>,
}

/// The fault engine of one mount.
#[derive(Default)]
pub struct Faults {
    /// True when any rule, crash point, disk-full limit or cut in progress may act: the
    /// only thing an operation looks at otherwise.
    active: AtomicBool,
    state: Mutex<State>,
    cut_changed: Condvar,
    /// Bumped to end every injected delay now.
    delay_epoch: Mutex<DelayEpoch>,
    delay_wake: Condvar,
    shutting_down: AtomicBool,
    fsync_error: Mutex<FsyncError>,
    /// The backing directory's path, as `/proc/self/fd` shows it: the prefix removed from
    /// inode paths, read once.
    backing_root: std::sync::OnceLock<Vec<u8>>,
}

impl Faults {
    pub fn new() -> Faults {
        Faults::default()
    }

    /// The cheap check every operation makes.
    #[inline]
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    fn refresh(&self, st: &State) {
        let on = st.set.is_armed()
            || st.disk_full.is_some()
            || st.cut != CutPhase::Idle
            || st.recorder.is_some();
        self.active.store(on, Ordering::Release);
    }

    pub fn set_cutter(&self, cutter: Weak<dyn Cutter>) {
        self.state.lock().cutter = Some(cutter);
    }

    /// Records every change and durability operation to `path` from now on (see
    /// [`record`]).
    pub fn record_to(&self, path: &std::path::Path) -> std::io::Result<()> {
        let r = record::Recorder::create(path)?;
        let mut st = self.state.lock();
        st.recorder = Some(r);
        self.refresh(&st);
        Ok(())
    }

    /// Whether operations are being recorded (their paths are then needed).
    pub fn recording(&self) -> bool {
        self.state.lock().recorder.is_some()
    }

    pub fn set_fsync_error(&self, mode: FsyncError) {
        *self.fsync_error.lock() = mode;
    }

    pub fn fsync_error(&self) -> FsyncError {
        *self.fsync_error.lock()
    }

    // ---- control ----

    /// Arms a crash point, replacing any armed before.
    pub fn arm(&self, spec: CrashSpec) -> Result<FaultsStatus, String> {
        let cp = CrashPoint::new(spec)?;
        let mut st = self.state.lock();
        st.set.crash = Some(cp);
        self.refresh(&st);
        Ok(self.status_of(&st))
    }

    pub fn disarm(&self) -> FaultsStatus {
        let mut st = self.state.lock();
        st.set.crash = None;
        self.refresh(&st);
        self.status_of(&st)
    }

    pub fn add(&self, spec: FaultSpec) -> Result<FaultsStatus, String> {
        let mut st = self.state.lock();
        st.next_id += 1;
        let rule = Rule::new(st.next_id, spec)?;
        st.set.rules.push(rule);
        self.refresh(&st);
        Ok(self.status_of(&st))
    }

    /// Removes one rule, or all with `None`; pending delays end at once.
    pub fn clear(&self, id: Option<u64>) -> Result<FaultsStatus, String> {
        let status = {
            let mut st = self.state.lock();
            match id {
                None => st.set.rules.clear(),
                Some(id) => {
                    let before = st.set.rules.len();
                    st.set.rules.retain(|r| r.id != id);
                    if st.set.rules.len() == before {
                        return Err(format!("no fault with id {id}"));
                    }
                }
            }
            self.refresh(&st);
            self.status_of(&st)
        };
        self.wake_delays(false);
        Ok(status)
    }

    /// Disk-full mode with `used` bytes counted now; `None` ends it.
    pub fn set_disk_full(&self, limit_used: Option<(u64, u64)>) -> FaultsStatus {
        let mut st = self.state.lock();
        st.disk_full = limit_used.map(|(limit, used)| DiskFull { limit, used });
        self.refresh(&st);
        self.status_of(&st)
    }

    pub fn status(&self) -> FaultsStatus {
        self.status_of(&self.state.lock())
    }

    fn status_of(&self, st: &State) -> FaultsStatus {
        FaultsStatus {
            crash_point: st.set.crash.as_ref().map(CrashPoint::status),
            faults: st.set.rules.iter().map(Rule::status).collect(),
            disk_full: st.disk_full.as_ref().map(|d| DiskFullStatus {
                limit: d.limit,
                used: d.used,
            }),
            last_cut: st.last_cut.clone(),
            fsync_error: self.fsync_error().name().into(),
        }
    }

    // ---- decisions ----

    /// Whether a fault rule or an armed crash point names `op`: kernel read passthrough is
    /// not granted while one names reads, since those reads would never reach the engine.
    pub fn watches(&self, op: Op) -> bool {
        self.active() && self.state.lock().set.names(op)
    }

    pub fn wants_path(&self, op: Op) -> bool {
        self.state.lock().set.wants_path(op)
    }

    /// What the armed rules do to this operation.  `rec` is what the operation record
    /// needs when one is kept (offset and length, O_SYNC write): it is written here, under
    /// the lock that numbers operations for the rules, so both number them alike.
    pub fn decide(
        &self,
        op: Op,
        paths: &[&str],
        rec: Option<(Option<(u64, u64)>, bool)>,
    ) -> Decision {
        let mut st = self.state.lock();
        if let (Some(r), Some((span, sync))) = (st.recorder.as_mut(), rec) {
            r.record(op, paths, span, sync);
        }
        if st.cut != CutPhase::Idle {
            // One cut at a time: a crash point met during a cut does not count.
            let crash = st.set.crash.take();
            let d = st.set.decide(op, paths);
            st.set.crash = crash;
            return d;
        }
        let d = st.set.decide(op, paths);
        if d.crash.is_some() {
            self.refresh(&st);
        }
        d
    }

    // ---- disk full ----

    pub fn disk_full_on(&self) -> bool {
        self.state.lock().disk_full.is_some()
    }

    /// Whether `adding` more bytes stays within the limit (true when the mode is off).
    pub fn room_for(&self, adding: u64) -> bool {
        match &self.state.lock().disk_full {
            Some(d) => d.used.saturating_add(adding) <= d.limit,
            None => true,
        }
    }

    /// Applies a measured change of allocated bytes.
    pub fn account(&self, delta: i64) {
        if let Some(d) = &mut self.state.lock().disk_full {
            d.used = d.used.saturating_add_signed(delta);
        }
    }

    // ---- delays ----

    /// Sleeps `d` on the calling thread only, ending early at a power cut (aborted), a
    /// fault clear or an unmount (cleared).
    pub fn sleep(&self, d: Duration) -> Slept {
        if self.shutting_down.load(Ordering::Acquire) {
            return Slept::Cleared;
        }
        let deadline = Instant::now() + d;
        let mut epoch = self.delay_epoch.lock();
        let start = *epoch;
        loop {
            if epoch.aborted != start.aborted {
                return Slept::Aborted;
            }
            if epoch.cleared != start.cleared {
                return Slept::Cleared;
            }
            if self.delay_wake.wait_until(&mut epoch, deadline).timed_out() {
                return Slept::Elapsed;
            }
        }
    }

    fn wake_delays(&self, abort: bool) {
        let mut e = self.delay_epoch.lock();
        if abort {
            e.aborted += 1;
        } else {
            e.cleared += 1;
        }
        self.delay_wake.notify_all();
    }

    /// A power cut: every delayed request is abandoned with EIO.
    pub fn abort_delays(&self) {
        self.wake_delays(true);
    }

    /// The mount is going away (a clean unmount, which writes everything back): every
    /// delayed request goes on now, and no new one is delayed.
    pub fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.wake_delays(false);
    }

    // ---- crash point cuts ----

    fn cutter(&self) -> Option<Arc<dyn Cutter>> {
        self.state.lock().cutter.as_ref().and_then(Weak::upgrade)
    }

    /// Starts the cut of a crash point from the FUSE thread that met it (holding no gate):
    /// kills the users and the caller now, runs the rest on a thread of its own.  Returns
    /// once the kill signals are sent; the caller then answers EIO.
    /// `entries` are the names the operation changed (for a cut after it): the kernel
    /// thinks the operation failed, so its cached names are dropped after the cut.
    pub fn start_cut(
        self: &Arc<Self>,
        caller_pid: u32,
        op: Op,
        when: When,
        path: Option<String>,
        entries: Vec<(u64, OsString)>,
    ) {
        let Some(cutter) = self.cutter() else {
            tracing::error!("crash point fired but the daemon is gone: no power cut");
            return;
        };
        {
            let mut st = self.state.lock();
            st.cut = CutPhase::Killing;
            st.last_cut = Some(LastCut {
                op,
                when,
                path: path.clone(),
                done: false,
                report: None,
                error: None,
            });
            self.refresh(&st);
        }
        cutter.begin_cut();
        let mut killed = cutter.kill_users_now();
        if let Some(tgid) = tgid_of(caller_pid) {
            if tgid != std::process::id() as i32 && !killed.iter().any(|k| k.pid == tgid) {
                let comm = std::fs::read_to_string(format!("/proc/{tgid}/comm"))
                    .map(|s| s.trim_end().to_string())
                    .unwrap_or_default();
                // SAFETY: kill(2) has no memory effects; a wrong pid at worst gets ESRCH.
                unsafe { libc::kill(tgid, libc::SIGKILL) };
                killed.push(KilledProcess {
                    pid: tgid,
                    comm,
                    reasons: vec!["crash point".into()],
                });
            }
        }
        let pids: Vec<i32> = killed.iter().map(|k| k.pid).collect();
        tracing::warn!(
            op = op.name(),
            ?path,
            ?pids,
            "crash point: power cut {}",
            match when {
                When::Before => "before the operation",
                When::After => "after the operation",
            }
        );
        {
            let mut st = self.state.lock();
            st.cut = CutPhase::Killed(pids);
            self.cut_changed.notify_all();
        }
        self.abort_delays();
        let me = Arc::clone(self);
        let for_thread = Arc::clone(&cutter);
        let spawned = std::thread::Builder::new()
            .name("lossfs-crashpoint".into())
            .spawn(move || {
                let cutter = for_thread;
                let r = cutter.powercut_begun().map(|mut rep| {
                    // The kill pass already killed them; the cut found them dead.
                    for k in killed {
                        if !rep.killed.iter().any(|have| have.pid == k.pid) {
                            rep.killed.push(k);
                        }
                    }
                    rep
                });
                for (parent, name) in &entries {
                    cutter.invalidate_entry(*parent, name);
                }
                me.finish_cut(r);
            });
        if let Err(e) = spawned {
            cutter.abandon_begun_cut();
            self.finish_cut(Err(e).ctx("starting the power cut thread"));
        }
    }

    fn finish_cut(&self, r: FsResult<PowercutReport>) {
        let mut st = self.state.lock();
        if let Some(c) = &mut st.last_cut {
            c.done = true;
            match r {
                Ok(rep) => c.report = Some(rep),
                Err(e) => {
                    tracing::error!(errno = e.errno, "crash point power cut failed: {e}");
                    c.error = Some(e.to_string());
                }
            }
        }
        st.cut = CutPhase::Idle;
        self.refresh(&st);
        self.cut_changed.notify_all();
    }

    /// During a crash-point cut: false if the caller was killed by it (its request must
    /// not be applied).  Waits while the kill pass runs, which never enters the mount.
    pub fn caller_survives_cut(&self, caller_pid: u32) -> bool {
        let deadline = Instant::now() + KILL_PASS_WAIT;
        let mut st = self.state.lock();
        loop {
            match &st.cut {
                CutPhase::Idle => return true,
                // The kernel's own requests (writeback) carry no process.
                CutPhase::Killed(_) if caller_pid == 0 => return true,
                CutPhase::Killed(pids) => {
                    let Some(tgid) = tgid_of(caller_pid) else {
                        // Gone already: nobody will read the answer.
                        return false;
                    };
                    return !pids.contains(&tgid);
                }
                CutPhase::Killing => {
                    if self.cut_changed.wait_until(&mut st, deadline).timed_out() {
                        return true;
                    }
                }
            }
        }
    }

    /// Invalidates an inode's kernel caches from a thread of its own (never on a FUSE
    /// thread, where it can deadlock).
    pub fn invalidate_later(&self, nodeid: u64) {
        let Some(cutter) = self.cutter() else {
            return;
        };
        let _ = std::thread::Builder::new()
            .name("lossfs-inval".into())
            .spawn(move || cutter.invalidate(nodeid));
    }
}

/// The process (thread group) of a thread id, from /proc; `None` for 0 or a gone thread.
fn tgid_of(tid: u32) -> Option<i32> {
    if tid == 0 {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests;
