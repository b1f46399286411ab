//! `sync_cpu=`: the FUSE thread serving one program's write+fsync loop runs on the chosen
//! CPU while the loop lasts and gets its CPU mask back afterwards; `sync_cpu=off`, the
//! default, pins nothing; `auto` says at the default log level what it chose, and pins
//! there; a busy CPU is given up.  (A CPU the daemon may not use: mount_errors.rs.)

use lossfs_tests::Mount;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// `Cpus_allowed_list` of every thread of process `pid`.
fn thread_masks(pid: u32) -> Vec<String> {
    let mut masks = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return masks;
    };
    for t in tasks.flatten() {
        let Ok(status) = fs::read_to_string(t.path().join("status")) else {
            continue; // the thread ended meanwhile
        };
        if let Some(l) = status.lines().find(|l| l.starts_with("Cpus_allowed_list:")) {
            masks.push(l["Cpus_allowed_list:".len()..].trim().to_string());
        }
    }
    masks
}

/// The CPUs this test may use, as listed by the kernel ("0-1", "0,2").
fn own_mask() -> String {
    let status = fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list in /proc/self/status")
        .trim()
        .to_string()
}

/// The highest CPU this process may use; the test needs two to tell a pinned thread apart.
fn last_cpu() -> usize {
    let n = thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        n >= 2,
        "this test needs at least 2 CPUs to tell a pinned thread from an unpinned one (have {n})"
    );
    // SAFETY: an all-zero cpu_set_t is valid, and the kernel fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer and size.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    assert_eq!(
        rc,
        0,
        "sched_getaffinity: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: reading bits of an initialised set.
    (0..1024)
        .rev()
        .find(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .expect("some CPU")
}

/// Writes 4 KiB and fdatasyncs in a loop on a thread until `stop` is set.
fn fsync_loop(m: &Mount, stop: Arc<AtomicBool>) -> thread::JoinHandle<u64> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(m.path("wal"))
        .expect("create wal");
    thread::spawn(move || {
        let block = [7u8; 4096];
        let mut n = 0u64;
        // Bounded even if the test thread dies before setting `stop`.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            f.write_all_at(&block, n * 4096).expect("write wal");
            f.sync_data().expect("fdatasync wal");
            n += 1;
        }
        n
    })
}

/// Polls the daemon's threads for up to `limit` until `found` holds for their masks.
fn poll_masks(pid: u32, limit: Duration, found: impl Fn(&[String]) -> bool) -> (bool, Vec<String>) {
    let deadline = Instant::now() + limit;
    loop {
        let masks = thread_masks(pid);
        if found(&masks) {
            return (true, masks);
        }
        if Instant::now() > deadline {
            return (false, masks);
        }
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn the_thread_serving_an_fsync_loop_is_pinned_and_unpinned_after() {
    let cpu = last_cpu().to_string();
    let home = own_mask();
    assert_ne!(home, cpu, "the test's own mask must be wider than one CPU");
    let m = Mount::new(&[&format!("sync_cpu={cpu}")]);
    let pid = m.daemon_pid().expect("daemon pid");
    let (idle_pinned, masks) = poll_masks(pid, Duration::ZERO, |ms| ms.contains(&cpu));
    assert!(
        !idle_pinned,
        "no fsync yet, but a thread is pinned: {masks:?}"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let writer = fsync_loop(&m, stop.clone());
    let (pinned, masks) = poll_masks(pid, Duration::from_secs(10), |ms| ms.contains(&cpu));
    stop.store(true, Ordering::SeqCst);
    let cycles = writer.join().expect("writer thread");
    assert!(
        pinned,
        "during {cycles} write+fdatasync cycles no daemon thread was pinned to CPU {cpu}: {masks:?}"
    );
    // Once the loop is over, the pinned thread's next request (from this other process'
    // opens, which always reach the daemon) gives it its mask back.
    fs::write(m.path("probe"), b"x").expect("write probe");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut masks = thread_masks(pid);
    while masks.contains(&cpu) && Instant::now() < deadline {
        for _ in 0..20 {
            drop(File::open(m.path("probe")).expect("open probe"));
        }
        thread::sleep(Duration::from_millis(5));
        masks = thread_masks(pid);
    }
    assert!(
        masks.iter().all(|x| *x == home),
        "after the loop every thread has the daemon's mask {home} again: {masks:?}"
    );
}

#[test]
fn sync_cpu_off_pins_nothing() {
    off_pins_nothing(&["sync_cpu=off"]);
}

#[test]
fn the_default_pins_nothing() {
    off_pins_nothing(&[]);
}

fn off_pins_nothing(opts: &[&str]) {
    let cpu = last_cpu().to_string();
    let home = own_mask();
    let m = Mount::new(opts);
    let pid = m.daemon_pid().expect("daemon pid");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = fsync_loop(&m, stop.clone());
    // The same watch that sees the pinning in the test above within milliseconds.
    let (changed, masks) = poll_masks(pid, Duration::from_secs(2), |ms| {
        ms.iter().any(|x| *x != home)
    });
    stop.store(true, Ordering::SeqCst);
    let cycles = writer.join().expect("writer thread");
    assert!(cycles > 0, "the loop made no progress");
    assert!(
        !changed,
        "-o {opts:?}, yet a thread's mask changed during {cycles} cycles (CPU {cpu}?): {masks:?}"
    );
}

/// `auto` logs its choice at the default level (warn): the CPU that takes the backing
/// disk's completion interrupts as this machine's sysfs says (looked up here with the same
/// module), or that there is none; and with a CPU it pins the loop there.
#[test]
fn auto_says_what_it_chose_and_pins_there() {
    let m = Mount::new(&["sync_cpu=auto"]);
    let dev = std::os::unix::fs::MetadataExt::dev(&fs::metadata(&m.backing).expect("stat"));
    let expected = lossfs::irqcpu::completion_cpu(dev);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !m.daemon_stderr().contains("sync_cpu=auto:") && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let log = m.daemon_stderr();
    let line = log
        .lines()
        .find(|l| l.contains("sync_cpu=auto:"))
        .unwrap_or_else(|| panic!("no sync_cpu=auto line at the default log level:\n{log}"));
    assert!(line.contains("WARN"), "not at level warn: {line}");
    match expected {
        Some(cpu) => {
            assert!(
                line.contains(&format!("served on CPU {cpu},")),
                "sysfs names CPU {cpu}: {line}"
            );
            assert_ne!(
                own_mask(),
                cpu.to_string(),
                "the test's own mask must be wider than one CPU to see a pinned thread"
            );
            let pid = m.daemon_pid().expect("daemon pid");
            let stop = Arc::new(AtomicBool::new(false));
            let writer = fsync_loop(&m, stop.clone());
            let cpu_s = cpu.to_string();
            let (pinned, masks) =
                poll_masks(pid, Duration::from_secs(10), |ms| ms.contains(&cpu_s));
            stop.store(true, Ordering::SeqCst);
            let cycles = writer.join().expect("writer thread");
            assert!(
                pinned,
                "auto chose CPU {cpu}, yet during {cycles} cycles no thread went there: {masks:?}"
            );
        }
        None => assert!(
            line.contains("not pinning"),
            "sysfs names no CPU for device {dev:#x}: {line}"
        ),
    }
}

/// Spins on `cpu` until `stop` (bounded): another program keeping that CPU busy.
fn busy_loop(cpu: usize, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        // SAFETY: an all-zero cpu_set_t is valid; CPU_SET and sched_setaffinity get a valid
        // set and its size.
        let rc = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set)
        };
        assert_eq!(
            rc,
            0,
            "pinning the busy loop: {}",
            std::io::Error::last_os_error()
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            std::hint::spin_loop();
        }
    })
}

/// Per thread of `pid`: time slices so far and CPU mask.
fn thread_slices(pid: u32) -> Vec<(String, u64, String)> {
    let mut out = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let stat = fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
        let status = fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let slices = stat.split_whitespace().nth(2).and_then(|s| s.parse().ok());
        let mask = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .map(|m| m.trim().to_string());
        if let (Some(slices), Some(mask)) = (slices, mask) {
            out.push((t.file_name().to_string_lossy().into_owned(), slices, mask));
        }
    }
    out
}

#[test]
fn a_busy_cpu_is_given_up() {
    let cpu = last_cpu();
    let home = own_mask();
    let m = Mount::new(&[&format!("sync_cpu={cpu}"), "log=info"]);
    let pid = m.daemon_pid().expect("daemon pid");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = fsync_loop(&m, stop.clone());
    let cpu_s = cpu.to_string();
    let (pinned, masks) = poll_masks(pid, Duration::from_secs(10), |ms| ms.contains(&cpu_s));
    assert!(pinned, "the loop was never pinned to CPU {cpu}: {masks:?}");

    let busy_stop = Arc::new(AtomicBool::new(false));
    let busy = busy_loop(cpu, busy_stop.clone());
    // The daemon notices, and the thread serving the loop (the one whose time slices go
    // up) runs with the daemon's own mask again.  Pinning is retried after each back-off,
    // so look until one sample falls inside a back-off.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut noticed = false;
    let mut freed = None;
    while Instant::now() < deadline && freed.is_none() {
        noticed = noticed || m.daemon_stderr().contains("is busy");
        let before = thread_slices(pid);
        thread::sleep(Duration::from_millis(100));
        let after = thread_slices(pid);
        let busiest = after
            .iter()
            .filter_map(|(tid, n, mask)| {
                let old = before.iter().find(|b| b.0 == *tid)?.1;
                Some((n - old, mask.clone()))
            })
            .max();
        if let Some((delta, mask)) = busiest {
            if noticed && delta > 0 && mask == home {
                freed = Some(delta);
            }
        }
    }
    busy_stop.store(true, Ordering::Relaxed);
    busy.join().expect("busy loop");
    stop.store(true, Ordering::SeqCst);
    let cycles = writer.join().expect("writer thread");
    assert!(
        noticed,
        "after {cycles} cycles the daemon never said CPU {cpu} is busy; stderr:\n{}",
        m.daemon_stderr()
    );
    assert!(
        freed.is_some(),
        "the thread serving the loop stayed pinned to busy CPU {cpu}: {:?}",
        thread_slices(pid)
    );
}
