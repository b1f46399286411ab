//! Keeps the thread that serves a program fsyncing alone on one CPU: the CPU that takes the
//! backing disk's completion interrupts.
//!
//! A write+fdatasync loop spends most of each cycle waiting for the disk.  When the I/O
//! completes, the interrupt (and the filesystem's completion work) runs on one CPU and wakes
//! the FUSE thread waiting in fdatasync.  Left to itself the scheduler often wakes that
//! thread on another, idle CPU, and on a virtual machine waking an idle CPU costs tens of
//! microseconds each time (measured: `wal` loses about a quarter when the thread is kept on
//! the wrong CPU, and gains 10-25 % over no pinning on the right one; docs/BENCHMARKS.md).
//! So a thread serving a request that [`crate::readgate`] counts as one program's fsync
//! stretch ([`crate::readgate::Turn::solo`]) is pinned to the completion CPU, and it gets
//! its old mask back with the first request it serves outside such a stretch: a thread that
//! parked pinned moves back as soon as it works for anybody else.
//!
//! A pinned thread cannot leave its CPU, so a CPU busy with other work would make it wait
//! for every time slice (measured: a busy loop on the completion CPU takes `wal` from 1.0x
//! to 0.2x bindfs).  Every [`CHECK_EVERY`] pinned requests the thread reads how long it
//! waited to run (`/proc/thread-self/schedstat`, the scheduler's own count); above
//! [`MAX_WAIT`] per time slice (a few µs when the CPU is free, ~200 µs behind a busy loop)
//! nobody is pinned for a back-off that starts at one second and doubles while the CPU
//! stays busy.
//!
//! The CPU can change while the mount lives: with `sync_cpu=auto` a thread of its own
//! ([`follow`]) looks the completion CPU up again every [`FOLLOW_EVERY`] (interrupts move:
//! irqbalance, CPU hotplug, an administrator) and [`CpuPin::retarget`]s; a thread pinned to
//! the old CPU moves with its next pinned request.  The request path only reads an atomic.

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Weak;
use std::time::{Duration, Instant};

/// Pinned requests between two looks at the thread's run-queue wait.
pub const CHECK_EVERY: u32 = 32;
/// Mean wait for the CPU per time slice above which the pinned CPU counts as busy.
pub const MAX_WAIT: Duration = Duration::from_micros(50);
/// The first back-off; it doubles, up to [`MAX_BACKOFF`], while the CPU stays busy.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(16);
/// How often `sync_cpu=auto` looks for the completion CPU again (irqbalance's own period).
pub const FOLLOW_EVERY: Duration = Duration::from_secs(10);

/// `target` when there is no CPU to pin to.
const NO_CPU: usize = usize::MAX;

/// The per-thread scheduler statistics file.
const SCHEDSTAT: &str = "/proc/thread-self/schedstat";

thread_local! {
    /// The CPU this thread is pinned to now, if any: affinity is per thread, and only a
    /// change costs a system call.
    static PINNED: Cell<Option<usize>> = const { Cell::new(None) };
    /// This thread's watch on its run-queue wait while pinned.
    static WATCH: RefCell<Option<Watch>> = const { RefCell::new(None) };
}

/// What the scheduler counted for one thread: time waited on a run queue and time slices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedStat {
    pub wait_ns: u64,
    pub slices: u64,
}

impl SchedStat {
    /// Parses a `schedstat` line: run time (ns), wait time (ns), time slices.
    pub fn parse(text: &str) -> Option<SchedStat> {
        let mut it = text
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse::<u64>().ok());
        Some(SchedStat {
            wait_ns: it.next()??,
            slices: it.next()??,
        })
    }

    /// Whether the thread waited more than [`MAX_WAIT`] per slice since `before`.
    pub fn busy_since(&self, before: &SchedStat) -> bool {
        let slices = self.slices.saturating_sub(before.slices);
        let wait = self.wait_ns.saturating_sub(before.wait_ns);
        slices > 0 && wait / slices > MAX_WAIT.as_nanos() as u64
    }
}

/// One pinned thread's look at its own schedstat.
struct Watch {
    file: File,
    last: SchedStat,
    requests: u32,
}

impl Watch {
    fn open() -> io::Result<Watch> {
        let file = File::open(SCHEDSTAT)?;
        let last = read_stat(&file)?;
        Ok(Watch {
            file,
            last,
            requests: 0,
        })
    }
}

fn read_stat(file: &File) -> io::Result<SchedStat> {
    let mut buf = [0u8; 128];
    let n = file.read_at(&mut buf, 0)?;
    std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(SchedStat::parse)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable schedstat"))
}

/// The pinning of one mount's FUSE threads.
pub struct CpuPin {
    /// The CPU to pin to now ([`NO_CPU`]: none, e.g. `auto` found no single one).
    target: AtomicUsize,
    /// The mask the daemon started with (taskset, cgroup cpusets), restored on unpinning.
    home: CpuSet,
    /// Set after a failed sched_setaffinity (a CPU taken offline): stop trying.
    broken: AtomicBool,
    /// No pinning before this many ms after `start` (the CPU was found busy), and the next
    /// back-off in ms.
    start: Instant,
    backoff_until_ms: AtomicU64,
    next_backoff_ms: AtomicU64,
}

impl CpuPin {
    /// Pinning to `cpu`; fails if the daemon may not run there, or if the kernel keeps no
    /// per-thread scheduler statistics (without them a busy CPU would go unnoticed).  Call
    /// before the FUSE threads start: they inherit the mask read here.
    pub fn new(cpu: usize) -> io::Result<CpuPin> {
        let pin = CpuPin::without_target()?;
        pin.check_allowed(cpu)?;
        pin.target.store(cpu, Ordering::Relaxed);
        Ok(pin)
    }

    /// Pinning that starts with no CPU to pin to, until [`CpuPin::retarget`] names one; fails
    /// as [`CpuPin::new`] does without schedstat.
    pub fn without_target() -> io::Result<CpuPin> {
        Watch::open().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot watch for a busy CPU ({SCHEDSTAT}: {e})"),
            )
        })?;
        let home = sched_getaffinity(Pid::from_raw(0))?;
        Ok(CpuPin {
            target: AtomicUsize::new(NO_CPU),
            home,
            broken: AtomicBool::new(false),
            start: Instant::now(),
            backoff_until_ms: AtomicU64::new(0),
            next_backoff_ms: AtomicU64::new(FIRST_BACKOFF.as_millis() as u64),
        })
    }

    fn check_allowed(&self, cpu: usize) -> io::Result<()> {
        if !self.home.is_set(cpu).unwrap_or(false) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "CPU {cpu} is not one lossfs may run on (allowed: {})",
                    cpu_list(&self.home)
                ),
            ));
        }
        Ok(())
    }

    /// The CPU pinned threads go to now.
    pub fn target(&self) -> Option<usize> {
        match self.target.load(Ordering::Relaxed) {
            NO_CPU => None,
            cpu => Some(cpu),
        }
    }

    /// Pins to `cpu` from now on (`None`: nobody); threads pinned elsewhere move with their
    /// next pinned request.  A CPU the daemon may not run on means nobody, and is the error.
    pub fn retarget(&self, cpu: Option<usize>) -> io::Result<()> {
        let checked = cpu.map(|c| self.check_allowed(c)).transpose();
        let cpu = match checked {
            Ok(_) => cpu,
            Err(_) => None,
        };
        self.target.store(cpu.unwrap_or(NO_CPU), Ordering::Relaxed);
        checked.map(|_| ())
    }

    /// Pins the calling thread (`true`) or gives it its old mask back (`false`); does
    /// nothing if it is already so, but a pinned thread now and then checks that its CPU
    /// is not busy.
    pub fn set(&self, pin: bool) {
        let want = if pin && !self.backing_off() {
            self.target()
        } else {
            None
        };
        if PINNED.get() == want {
            if want.is_some() && self.busy() {
                self.back_off();
                self.move_to(None);
            }
            return;
        }
        // Once broken, threads still pinned must yet be able to move back.
        if want.is_some() && self.broken.load(Ordering::Relaxed) {
            return;
        }
        self.move_to(want);
    }

    /// Whether the CPU was found busy lately.
    pub fn backing_off(&self) -> bool {
        let until = self.backoff_until_ms.load(Ordering::Relaxed);
        until != 0 && (self.start.elapsed().as_millis() as u64) < until
    }

    /// Nobody pinned for the next back-off, which doubles for the time after.
    fn back_off(&self) {
        let ms = self.next_backoff_ms.load(Ordering::Relaxed);
        self.next_backoff_ms.store(
            (ms * 2).min(MAX_BACKOFF.as_millis() as u64),
            Ordering::Relaxed,
        );
        let now = self.start.elapsed().as_millis() as u64;
        self.backoff_until_ms.store(now + ms, Ordering::Relaxed);
        let cpu = PINNED.get().or(self.target());
        tracing::info!(
            cpu,
            "CPU {} is busy (the fsync thread waited over {:?} per time slice): not pinning for {ms} ms",
            cpu.map_or_else(|| "?".to_string(), |c| c.to_string()),
            MAX_WAIT
        );
    }

    /// Every [`CHECK_EVERY`] calls on a pinned thread: whether it waited too long for its
    /// CPU since the last look.  A clean look resets the back-off.
    fn busy(&self) -> bool {
        let verdict = WATCH.with_borrow_mut(|w| {
            let w = w.as_mut()?;
            w.requests += 1;
            if w.requests < CHECK_EVERY {
                return None;
            }
            w.requests = 0;
            let now = read_stat(&w.file).ok()?;
            let busy = now.busy_since(&w.last);
            w.last = now;
            Some(busy)
        });
        if verdict == Some(false) {
            self.next_backoff_ms
                .store(FIRST_BACKOFF.as_millis() as u64, Ordering::Relaxed);
        }
        verdict == Some(true)
    }

    /// Pins the calling thread to `cpu`, or gives it the daemon's mask back (`None`).
    fn move_to(&self, cpu: Option<usize>) {
        let mut result = match cpu {
            Some(cpu) => {
                let mut one = CpuSet::new();
                one.set(cpu)
                    .and_then(|()| sched_setaffinity(Pid::from_raw(0), &one))
            }
            None => sched_setaffinity(Pid::from_raw(0), &self.home),
        };
        if result.is_err() && cpu.is_none() {
            // A cpuset that shrank since the start can refuse the old mask; every CPU (of
            // which the kernel keeps the cpuset's part) still unpins.
            result = sched_setaffinity(Pid::from_raw(0), &every_cpu());
        }
        match result {
            Ok(()) => {
                PINNED.set(cpu);
                if cpu.is_some() {
                    // Counted from now: the wait before pinning was on other CPUs.
                    WATCH.with_borrow_mut(|w| match w {
                        Some(w) => {
                            if let Ok(now) = read_stat(&w.file) {
                                w.last = now;
                                w.requests = 0;
                            }
                        }
                        None => *w = Watch::open().ok(),
                    });
                }
            }
            Err(e) => {
                if !self.broken.swap(true, Ordering::Relaxed) {
                    tracing::warn!(cpu, error = %e, "cannot move the fsync thread; not pinning any more");
                }
            }
        }
    }
}

/// Keeps `pin` on the CPU that `look` finds, looking every `every` from a thread of its own
/// until `pin` is dropped.  `look` answers the CPU when it changed since its last answer
/// (`Some(None)`: there is none any more), `None` when nothing changed.  Each change is
/// logged at level warn, like the first choice: the user asked for `auto` and should see
/// where it puts the threads without raising the log level, and it changes rarely.
pub fn follow(
    pin: Weak<CpuPin>,
    every: Duration,
    mut look: impl FnMut() -> Option<Option<usize>> + Send + 'static,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("lossfs-sync-cpu".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            let Some(pin) = pin.upgrade() else {
                return;
            };
            if let Some(found) = look() {
                let before = pin.target();
                match (pin.retarget(found), found) {
                    (Ok(()), Some(cpu)) => tracing::warn!(
                        cpu,
                        "sync_cpu=auto: the backing disk's completion interrupt moved to CPU \
                         {cpu} (was {}); a program fsyncing alone is now served there",
                        before.map_or_else(|| "none".to_string(), |c| c.to_string())
                    ),
                    (Ok(()), None) => tracing::warn!(
                        "sync_cpu=auto: the backing disk's completion interrupt no longer goes \
                         to one CPU; not pinning until it does"
                    ),
                    (Err(e), _) => {
                        tracing::warn!("sync_cpu=auto: {e}; not pinning until that changes")
                    }
                }
            }
        })
}

fn every_cpu() -> CpuSet {
    let mut set = CpuSet::new();
    for c in 0..CpuSet::count() {
        let _ = set.set(c);
    }
    set
}

/// A CPU mask as a list ("0,1,3"), for messages.
fn cpu_list(set: &CpuSet) -> String {
    (0..CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current() -> CpuSet {
        sched_getaffinity(Pid::from_raw(0)).unwrap()
    }

    fn allowed() -> Vec<usize> {
        let set = current();
        (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap())
            .collect()
    }

    /// Runs `check` on a thread of its own (the test harness's threads keep their masks),
    /// pinned to its last allowed CPU; `check` gets the pin, that CPU and the old mask.
    fn pinned_thread(check: impl FnOnce(&CpuPin, usize, Vec<usize>) + Send + 'static) {
        std::thread::spawn(|| {
            let home = allowed();
            let cpu = *home.last().unwrap();
            let pin = CpuPin::new(cpu).unwrap();
            pin.set(true);
            assert_eq!(allowed(), vec![cpu]);
            check(&pin, cpu, home);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn pins_the_calling_thread_and_gives_its_mask_back() {
        pinned_thread(|pin, cpu, home| {
            // Repeated: no change, no error.
            pin.set(true);
            assert_eq!(allowed(), vec![cpu]);
            pin.set(false);
            assert_eq!(allowed(), home);
            std::thread::scope(|sc| {
                sc.spawn(|| {
                    pin.set(true);
                    assert_eq!(allowed(), vec![cpu]);
                })
                .join()
                .unwrap();
            });
            assert_eq!(allowed(), home, "only the calling thread moves");
        });
    }

    #[test]
    fn a_new_target_moves_pinned_threads_with_their_next_pinned_request() {
        pinned_thread(|pin, cpu, home| {
            let first = home[0];
            pin.retarget(Some(first)).unwrap();
            assert_eq!(allowed(), vec![cpu], "nothing moves before a request");
            pin.set(true);
            assert_eq!(allowed(), vec![first]);
            // No CPU any more: a pinned request runs with the daemon's mask.
            pin.retarget(None).unwrap();
            assert_eq!(pin.target(), None);
            pin.set(true);
            assert_eq!(allowed(), home);
            // A CPU the daemon may not use counts as none, and says why.
            let outside = (0..CpuSet::count()).find(|c| !home.contains(c)).unwrap();
            pin.retarget(Some(cpu)).unwrap();
            let e = pin.retarget(Some(outside)).unwrap_err();
            assert!(e.to_string().contains(&format!("CPU {outside}")), "{e}");
            assert_eq!(pin.target(), None);
            pin.set(true);
            assert_eq!(allowed(), home);
        });
        // A pin made without a CPU pins nobody until it gets one.
        std::thread::spawn(|| {
            let home = allowed();
            let pin = CpuPin::without_target().unwrap();
            pin.set(true);
            assert_eq!(allowed(), home);
            pin.retarget(Some(home[0])).unwrap();
            pin.set(true);
            assert_eq!(allowed(), vec![home[0]]);
            pin.set(false);
            assert_eq!(allowed(), home);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn follow_retargets_from_its_thread_and_ends_with_the_pin() {
        let home = allowed();
        let pin = std::sync::Arc::new(CpuPin::without_target().unwrap());
        let answers = std::sync::Arc::new(parking_lot::Mutex::new(vec![Some(Some(home[0])), None]));
        let feed = answers.clone();
        let looker = follow(
            std::sync::Arc::downgrade(&pin),
            Duration::from_millis(1),
            move || {
                let mut a = feed.lock();
                if a.is_empty() {
                    None
                } else {
                    a.remove(0)
                }
            },
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while pin.target().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(pin.target(), Some(home[0]));
        answers.lock().push(Some(None));
        while pin.target().is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(pin.target(), None);
        drop(pin);
        // The thread notices the pin is gone at its next look.
        looker.join().unwrap();
    }

    #[test]
    fn schedstat_lines_parse_and_busy_means_long_waits_per_slice() {
        let s = |wait_ns, slices| SchedStat { wait_ns, slices };
        assert_eq!(SchedStat::parse("977226 0 1\n"), Some(s(0, 1)));
        assert_eq!(SchedStat::parse("5 7 9"), Some(s(7, 9)));
        assert_eq!(SchedStat::parse("5 7"), None);
        assert_eq!(SchedStat::parse("5 x 9"), None);
        assert_eq!(SchedStat::parse(""), None);
        // 10 slices: 2 ms of waiting is 200 µs each (behind a busy loop), 30 µs is 3 each.
        assert!(s(2_000_000 + 5, 110).busy_since(&s(5, 100)));
        assert!(!s(30_000 + 5, 110).busy_since(&s(5, 100)));
        assert!(
            !s(2_000_000, 100).busy_since(&s(0, 100)),
            "no slice, no verdict"
        );
        assert!(!s(0, 0).busy_since(&s(5, 5)), "counters never go back");
    }

    #[test]
    fn a_busy_cpu_stops_pinning_for_a_doubling_back_off() {
        pinned_thread(|pin, cpu, home| {
            pin.back_off();
            assert!(pin.backing_off());
            pin.set(true);
            assert_eq!(
                allowed(),
                home,
                "a pinned thread moves back while backing off"
            );
            assert_eq!(
                pin.next_backoff_ms.load(Ordering::Relaxed),
                2 * FIRST_BACKOFF.as_millis() as u64
            );
            pin.back_off();
            assert_eq!(
                pin.next_backoff_ms.load(Ordering::Relaxed),
                4 * FIRST_BACKOFF.as_millis() as u64
            );
            for _ in 0..10 {
                pin.back_off();
            }
            assert_eq!(
                pin.next_backoff_ms.load(Ordering::Relaxed),
                MAX_BACKOFF.as_millis() as u64
            );
            // Once the back-off has passed, pinning resumes.
            let now = pin.start.elapsed().as_millis() as u64;
            pin.backoff_until_ms.store(now, Ordering::Relaxed);
            assert!(!pin.backing_off());
            pin.set(true);
            assert_eq!(allowed(), vec![cpu]);
            pin.set(false);
        });
    }

    #[test]
    fn a_cpu_outside_the_mask_is_refused_with_the_allowed_list() {
        let home = allowed();
        let outside = (0..CpuSet::count()).find(|c| !home.contains(c)).unwrap();
        let e = CpuPin::new(outside).err().expect("must be refused");
        let msg = e.to_string();
        assert!(msg.contains(&format!("CPU {outside}")), "{msg}");
        assert!(
            msg.contains(
                &home
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            "{msg}"
        );
    }
}
