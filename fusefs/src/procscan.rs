//! Finding and killing the processes that use a mount, for the power cut.
//!
//! This runs inside the daemon while the mount is frozen, so it must never make a syscall
//! that enters the mount: a `stat` or `open` under the mount point would wait for a reply
//! from the very daemon that is waiting for us.  Everything here is read from `/proc` and
//! compared by number or by string: an open file by the `mnt_id:` of `/proc/PID/fdinfo/N`,
//! the working directory, root and executable by the text of their `/proc/PID/*` links, a
//! mapping by the device column of `/proc/PID/maps`.  None of these calls reaches the file
//! system the file lives on.

use crate::report::{KilledProcess, Unreaped};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// The mount whose users are looked for, as `/proc/self/mountinfo` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountTarget {
    /// Mount id (first field of mountinfo), as `mnt_id:` in fdinfo reports it.
    pub mount_id: u64,
    /// `st_dev` of every file on the mount, split as mountinfo's third field.
    pub major: u32,
    pub minor: u32,
    /// Mount point as the kernel prints it in links under `/proc` (no trailing slash).
    pub mount_point: PathBuf,
}

/// How long one read of `/proc/PID/maps` may take before the scan gives up on that process.
/// The read takes the target's mmap lock, which a thread faulting on the frozen mount can
/// hold for as long as the freeze lasts; a power cut must not hang on it.
const MAPS_READ_TIMEOUT: Duration = Duration::from_millis(500);

/// Pids whose maps read has stalled and has not returned yet.  The stalled reader thread is
/// left behind (nothing can cancel a blocked read), so later scans skip the pid instead of
/// stacking one more stuck thread on it each time.
static MAPS_STALLED: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// One process found using the mount, with what identifies it across pid reuse.
#[derive(Clone, Debug)]
struct Found {
    pid: i32,
    start_time: Option<u64>,
    reasons: Vec<&'static str>,
}

/// Every process (other than this one) that has a file, directory, executable or mapping on
/// the mount.  Zombies hold nothing and are not listed.  Sorted by pid.
pub fn processes_using(target: &MountTarget) -> Vec<KilledProcess> {
    scan(target)
        .into_iter()
        .map(|f| KilledProcess {
            pid: f.pid,
            comm: comm_of(f.pid),
            reasons: f.reasons.iter().map(|r| r.to_string()).collect(),
        })
        .collect()
}

/// Sends SIGKILL once to every process using the mount, without waiting for them to die
/// (a crash point: the process that triggered it cannot die before its request is
/// answered); returns the pids signalled.
pub fn signal_users(target: &MountTarget) -> Vec<KilledProcess> {
    scan(target)
        .into_iter()
        .filter(|f| kill(Pid::from_raw(f.pid), Signal::SIGKILL).is_ok())
        .map(|f| KilledProcess {
            pid: f.pid,
            comm: comm_of(f.pid),
            reasons: f.reasons.iter().map(|r| r.to_string()).collect(),
        })
        .collect()
}

/// SIGKILL every process using the mount, rescanning until a scan finds none left alive
/// (processes can fork meanwhile) or `timeout` passes; waits until each killed pid is gone
/// or a zombie (state Z in /proc/PID/stat): a zombie holds no files, so the cut can go on
/// (its parent reaps it meanwhile: see [`wait_reaped`]).  Returns all killed.
///
/// Err lists the processes still alive at the deadline (typically stuck in an uninterruptible
/// wait, for example on a FUSE request the daemon has read but not answered).
pub fn kill_users(target: &MountTarget, timeout: Duration) -> Result<Vec<KilledProcess>, String> {
    let deadline = Instant::now() + timeout;
    let mut killed: BTreeMap<i32, KilledProcess> = BTreeMap::new();
    let mut kill_errors: BTreeMap<i32, Errno> = BTreeMap::new();
    loop {
        let found = scan(target);
        if found.is_empty() {
            return Ok(killed.into_values().collect());
        }
        if Instant::now() >= deadline {
            return Err(still_alive_message(target, timeout, &found, &kill_errors));
        }
        for f in &found {
            match kill(Pid::from_raw(f.pid), Signal::SIGKILL) {
                // ESRCH: it exited on its own between the scan and the kill.
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => {
                    tracing::warn!(pid = f.pid, error = %e, "cannot SIGKILL a process using the mount");
                    kill_errors.insert(f.pid, e);
                }
            }
            let entry = killed.entry(f.pid).or_insert_with(|| KilledProcess {
                pid: f.pid,
                comm: comm_of(f.pid),
                reasons: Vec::new(),
            });
            for r in &f.reasons {
                if !entry.reasons.iter().any(|have| have == r) {
                    entry.reasons.push(r.to_string());
                }
            }
        }
        wait_dead(&found, deadline);
    }
}

/// A killed process, told apart from a later one that reuses its pid by its start time.
#[derive(Clone, Debug)]
pub struct Victim {
    pid: i32,
    start_time: Option<u64>,
}

/// The identities of the processes a cut killed, read now: call it as soon as they are
/// killed (a pid is only reused after its process has been reaped and the pid space wrapped).
pub fn victims(killed: &[KilledProcess]) -> Vec<Victim> {
    killed
        .iter()
        .filter_map(|k| {
            let stat = proc_stat(&proc_dir(k.pid))?;
            Some(Victim {
                pid: k.pid,
                start_time: stat.start_time,
            })
        })
        .collect()
}

/// Waits until every victim is gone, at most `timeout`: reaped by its parent, not merely
/// dead, because a zombie still owns its pid (`kill(pid, 0)` succeeds, so a program that
/// guards its data with a pid file refuses to start again while it lasts).  A zombie whose
/// parent is in `spared_parents` is left as it is: that parent waits for the very cut that
/// waits here, and reaps it after.  Returns the victims not gone at the deadline.
pub fn wait_reaped(victims: &[Victim], spared_parents: &[i32], timeout: Duration) -> Vec<Unreaped> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        let left: Vec<Unreaped> = victims
            .iter()
            .filter_map(|v| not_gone(v, spared_parents))
            .collect();
        let now = Instant::now();
        if left.is_empty() || now >= deadline {
            return left;
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// What is left of a victim, or None once it is gone (or a zombie of a spared parent).
fn not_gone(v: &Victim, spared_parents: &[i32]) -> Option<Unreaped> {
    let stat = proc_stat(&proc_dir(v.pid))?;
    if v.start_time.is_some() && stat.start_time != v.start_time {
        return None;
    }
    let zombie = is_dead_state(stat.state);
    let parent = stat.ppid.unwrap_or(0);
    if zombie && spared_parents.contains(&parent) {
        return None;
    }
    Some(Unreaped {
        pid: v.pid,
        comm: comm_of(v.pid),
        zombie,
        parent,
    })
}

/// The parents a cut requested by process `requester` must not wait for: the requester
/// itself and its parent (a harness that runs `lossctl powercut` and waits for it), but
/// never pid 1, whose job is to reap.
pub fn spared_parents(requester: Option<i32>) -> Vec<i32> {
    let Some(pid) = requester.filter(|&p| p > 0) else {
        return Vec::new();
    };
    let mut spared = vec![pid];
    if let Some(ppid) = proc_stat(&proc_dir(pid)).and_then(|s| s.ppid) {
        spared.push(ppid);
    }
    spared.retain(|&p| p > 1);
    spared
}

fn still_alive_message(
    target: &MountTarget,
    timeout: Duration,
    found: &[Found],
    kill_errors: &BTreeMap<i32, Errno>,
) -> String {
    let list: Vec<String> = found
        .iter()
        .map(|f| {
            let state = proc_stat(&proc_dir(f.pid))
                .map(|s| s.state.to_string())
                .unwrap_or_else(|| "?".into());
            let mut s = format!("{} ({}, state {state})", f.pid, comm_of(f.pid));
            if let Some(e) = kill_errors.get(&f.pid) {
                s.push_str(&format!(" kill failed: {e}"));
            }
            s
        })
        .collect();
    format!(
        "processes using {} still alive {:?} after SIGKILL: {}",
        target.mount_point.display(),
        timeout,
        list.join(", ")
    )
}

/// Polls until every process in `procs` is gone or a zombie, or the deadline passes.
fn wait_dead(procs: &[Found], deadline: Instant) {
    let mut pause = Duration::from_millis(1);
    loop {
        if procs.iter().all(|p| !is_alive(p.pid, p.start_time)) {
            return;
        }
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Alive means: the pid exists, is the same process (same start time, so not a reused pid),
/// and at least one of its threads is not a zombie.
fn is_alive(pid: i32, start_time: Option<u64>) -> bool {
    let dir = proc_dir(pid);
    let Some(stat) = proc_stat(&dir) else {
        return false;
    };
    if start_time.is_some() && stat.start_time != start_time {
        return false;
    }
    live_task_dir(&dir, &stat).is_some()
}

fn proc_dir(pid: i32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}"))
}

fn comm_of(pid: i32) -> String {
    fs::read_to_string(proc_dir(pid).join("comm"))
        .map(|s| s.trim_end_matches('\n').to_string())
        .unwrap_or_default()
}

/// The fields of `/proc/PID/stat` we need.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    state: char,
    ppid: Option<i32>,
    start_time: Option<u64>,
}

fn proc_stat(dir: &Path) -> Option<Stat> {
    parse_stat(&fs::read_to_string(dir.join("stat")).ok()?)
}

/// `comm` may hold spaces and parentheses, so fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next().and_then(|f| f.parse().ok());
    // starttime is field 22 of stat; ppid is field 4, so 18 more fields on.
    let start_time = fields.nth(17).and_then(|f| f.parse().ok());
    Some(Stat {
        state,
        ppid,
        start_time,
    })
}

fn is_dead_state(state: char) -> bool {
    matches!(state, 'Z' | 'X' | 'x')
}

/// A `/proc` directory through which the process's fd table, executable and memory map can
/// be read.  That is the process's own directory unless its main thread has exited (a zombie
/// leader) while other threads run on: the leader then shows no files, a live thread does.
/// None when every thread is dead.
fn live_task_dir(dir: &Path, stat: &Stat) -> Option<PathBuf> {
    if !is_dead_state(stat.state) {
        return Some(dir.to_path_buf());
    }
    let tasks = fs::read_dir(dir.join("task")).ok()?;
    tasks.flatten().map(|t| t.path()).find(|t| {
        proc_stat(t)
            .map(|s| !is_dead_state(s.state))
            .unwrap_or(false)
    })
}

fn list_pids() -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        tracing::warn!("cannot list /proc: no processes can be found using the mount");
        return Vec::new();
    };
    let mut pids: Vec<i32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids
}

/// True when `path` is the mount point or below it.  Compared by components, so `/mnt/ab`
/// is not under `/mnt/a`; a deleted directory under the mount (`/mnt/a/d (deleted)`) still is.
fn path_within(path: &Path, mount_point: &Path) -> bool {
    path.starts_with(mount_point)
}

fn link_within(link: &Path, mount_point: &Path) -> bool {
    fs::read_link(link)
        .map(|p| path_within(&p, mount_point))
        .unwrap_or(false)
}

/// The `mnt_id:` value of an fdinfo file.
fn parse_fdinfo_mnt_id(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .and_then(|v| v.trim().parse().ok())
}

fn fd_on_mount(task_dir: &Path, mount_ids: &HashSet<u64>) -> bool {
    let Ok(fds) = fs::read_dir(task_dir.join("fdinfo")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        fs::read_to_string(fd.path())
            .ok()
            .and_then(|t| parse_fdinfo_mnt_id(&t))
            .is_some_and(|id| mount_ids.contains(&id))
    })
}

/// The device column ("fe:01", hex) of one `/proc/PID/maps` line, for mappings of a file.
fn parse_maps_dev(line: &str) -> Option<(u32, u32)> {
    let mut fields = line.split_ascii_whitespace();
    let dev = fields.nth(3)?;
    let inode: u64 = fields.next()?.parse().ok()?;
    if inode == 0 {
        return None;
    }
    let (maj, min) = dev.split_once(':')?;
    Some((
        u32::from_str_radix(maj, 16).ok()?,
        u32::from_str_radix(min, 16).ok()?,
    ))
}

fn maps_on_device(task_dir: &Path, dev: (u32, u32)) -> bool {
    let Ok(file) = fs::File::open(task_dir.join("maps")) else {
        return false;
    };
    BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .any(|l| parse_maps_dev(&l) == Some(dev))
}

/// Which of `candidates` map a file of device `dev`.  The reads run on a helper thread so a
/// stalled one (see [`MAPS_READ_TIMEOUT`]) costs the scan that one process, not the cut.
fn mapped_pids(candidates: Vec<(i32, PathBuf)>, dev: (u32, u32)) -> HashSet<i32> {
    let mut hits = HashSet::new();
    let mut rest: Vec<(i32, PathBuf)> = {
        let stalled = MAPS_STALLED.lock();
        candidates
            .into_iter()
            .filter(|(pid, _)| !stalled.contains(pid))
            .collect()
    };
    while !rest.is_empty() {
        let (tx, rx) = mpsc::channel::<(usize, bool)>();
        let batch = rest.clone();
        let spawned = thread::Builder::new()
            .name("procscan-maps".into())
            .spawn(move || {
                for (i, (pid, dir)) in batch.iter().enumerate() {
                    let hit = maps_on_device(dir, dev);
                    MAPS_STALLED.lock().remove(pid);
                    if tx.send((i, hit)).is_err() {
                        // The scan gave up on this thread after a stall; its answers are late.
                        return;
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot spawn the maps reader; reading maps inline");
            hits.extend(
                rest.iter()
                    .filter(|(_, dir)| maps_on_device(dir, dev))
                    .map(|(pid, _)| *pid),
            );
            return hits;
        }
        let mut next = 0;
        let mut stalled_at = None;
        while next < rest.len() {
            match rx.recv_timeout(MAPS_READ_TIMEOUT) {
                Ok((i, hit)) => {
                    if hit {
                        hits.insert(rest[i].0);
                    }
                    next = i + 1;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    stalled_at = Some(next);
                    break;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    tracing::warn!("maps reader thread ended early");
                    next = rest.len();
                }
            }
        }
        match stalled_at {
            Some(i) => {
                let pid = rest[i].0;
                tracing::warn!(
                    pid,
                    "reading /proc/PID/maps stalled; not checking its mappings"
                );
                MAPS_STALLED.lock().insert(pid);
                rest.drain(..=i);
            }
            None => rest.clear(),
        }
    }
    hits
}

/// The mount ids under which the mount's files can show up in fdinfo: the target's own, and
/// those of every other mount of the same file system (bind mounts, and copies in other mount
/// namespaces such as a container's), all of which share its device number.
fn mount_ids(target: &MountTarget, pids: &[i32]) -> HashSet<u64> {
    let mut ids = HashSet::from([target.mount_id]);
    let dev = format!("{}:{}", target.major, target.minor);
    let mut namespaces_seen = HashSet::new();
    let mut add_from = |mountinfo: &Path| {
        let Ok(text) = fs::read_to_string(mountinfo) else {
            return;
        };
        for line in text.lines() {
            let mut fields = line.split(' ');
            let (Some(id), Some(_parent), Some(d)) = (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if d == dev {
                if let Ok(id) = id.parse() {
                    ids.insert(id);
                }
            }
        }
    };
    if let Ok(ns) = fs::read_link("/proc/self/ns/mnt") {
        namespaces_seen.insert(ns);
    }
    add_from(Path::new("/proc/self/mountinfo"));
    for &pid in pids {
        let dir = proc_dir(pid);
        if let Ok(ns) = fs::read_link(dir.join("ns/mnt")) {
            if namespaces_seen.insert(ns) {
                add_from(&dir.join("mountinfo"));
            }
        }
    }
    ids
}

/// One pass over /proc.
fn scan(target: &MountTarget) -> Vec<Found> {
    let me = std::process::id() as i32;
    let pids: Vec<i32> = list_pids().into_iter().filter(|&p| p != me).collect();
    let ids = mount_ids(target, &pids);
    let mp = target.mount_point.as_path();
    let mut found: Vec<Found> = Vec::new();
    let mut maps_candidates = Vec::new();
    for pid in pids {
        let dir = proc_dir(pid);
        let Some(stat) = proc_stat(&dir) else {
            continue;
        };
        let Some(live) = live_task_dir(&dir, &stat) else {
            continue;
        };
        let mut reasons = Vec::new();
        if fd_on_mount(&live, &ids) {
            reasons.push("fd");
        }
        // Threads may each have their own working directory and root (CLONE_FS is optional).
        let tasks: Vec<PathBuf> = fs::read_dir(dir.join("task"))
            .map(|t| t.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        let any_task = |name: &str| {
            link_within(&live.join(name), mp)
                || tasks.iter().any(|t| link_within(&t.join(name), mp))
        };
        if any_task("cwd") {
            reasons.push("cwd");
        }
        if any_task("root") {
            reasons.push("root");
        }
        if link_within(&live.join("exe"), mp) {
            reasons.push("exe");
        }
        maps_candidates.push((pid, live));
        found.push(Found {
            pid,
            start_time: stat.start_time,
            reasons,
        });
    }
    let mapped = mapped_pids(maps_candidates, (target.major, target.minor));
    found.retain_mut(|f| {
        if mapped.contains(&f.pid) {
            f.reasons.push("mmap");
        }
        !f.reasons.is_empty()
    });
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;

    /// The tests that spawn processes and scan run one at a time: a child forked while
    /// another test holds a file of its tmpfs open would briefly hold it too.
    static SERIAL: Mutex<()> = Mutex::new(());

    /// A fresh empty directory to mount on.  Kept, not tempfile's to remove: the tests
    /// unmount first and then remove it with `remove_dir`, which never descends into a
    /// mount that failed to go away.
    fn mount_point(tag: &str) -> PathBuf {
        crate::testdir::require_root("it mounts a file system to scan");
        tempfile::Builder::new()
            .prefix(&format!("lossfs-procscan-{tag}-"))
            .tempdir()
            .unwrap()
            .keep()
    }

    /// A tmpfs mounted on a fresh directory, unmounted and removed on drop.
    struct Tmpfs {
        dir: PathBuf,
    }

    impl Tmpfs {
        fn new(tag: &str) -> Tmpfs {
            let dir = mount_point(tag);
            if let Err(e) = nix::mount::mount(
                Some("tmpfs"),
                &dir,
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                Some("size=16m"),
            ) {
                let _ = fs::remove_dir(&dir);
                panic!(
                    "mount -t tmpfs on {} failed: {e} (these tests need root)",
                    dir.display()
                );
            }
            Tmpfs { dir }
        }

        fn target(&self) -> MountTarget {
            let dev = fs::metadata(&self.dir).unwrap().dev();
            let (major, minor) = (libc::major(dev), libc::minor(dev));
            let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
            let mp = self.dir.to_str().unwrap();
            let mount_id = info
                .lines()
                .find_map(|l| {
                    let f: Vec<&str> = l.split(' ').collect();
                    (f[4] == mp).then(|| f[0].parse().unwrap())
                })
                .unwrap();
            MountTarget {
                mount_id,
                major,
                minor,
                mount_point: self.dir.clone(),
            }
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH);
            let _ = fs::remove_dir(&self.dir);
        }
    }

    /// Kills and reaps on drop, so a failed assertion leaves no sleeper behind.
    struct Reaped(Child);

    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Spawns a child that prints one line once it is set up, and waits for that line.
    fn spawn_ready(cmd: &mut Command) -> Reaped {
        let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut buf = [0u8; 6];
        out.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ready\n");
        Reaped(child)
    }

    fn sh(script: &str, arg: &Path) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c").arg(script).arg("sh").arg(arg);
        c
    }

    fn fd_child(file: &Path) -> Reaped {
        spawn_ready(&mut sh("exec 3<\"$1\"; echo ready; exec sleep 60", file))
    }

    fn cwd_child(dir: &Path) -> Reaped {
        let mut c = sh("echo ready; exec sleep 60", Path::new("-"));
        c.current_dir(dir);
        spawn_ready(&mut c)
    }

    /// Maps the file and closes its fd, so the mapping is the only thing on the mount.
    fn mmap_child(file: &Path) -> Reaped {
        let script = "import ctypes, os, sys, time\n\
            libc = ctypes.CDLL(None, use_errno=True)\n\
            libc.mmap.restype = ctypes.c_void_p\n\
            libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]\n\
            fd = os.open(sys.argv[1], os.O_RDONLY)\n\
            addr = libc.mmap(None, 4096, 1, 1, fd, 0)\n\
            assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()\n\
            os.close(fd)\n\
            print('ready', flush=True)\n\
            time.sleep(60)\n";
        spawn_ready(Command::new("python3").arg("-c").arg(script).arg(file))
    }

    fn reasons_of(found: &[KilledProcess], pid: u32) -> Option<Vec<String>> {
        found
            .iter()
            .find(|k| k.pid == pid as i32)
            .map(|k| k.reasons.clone())
    }

    #[test]
    fn finds_fd_cwd_mmap_and_exe_users_but_not_others() {
        let _serial = SERIAL.lock();
        let m = Tmpfs::new("find");
        let file = m.dir.join("data");
        fs::write(&file, vec![7u8; 8192]).unwrap();
        fs::create_dir(m.dir.join("sub")).unwrap();
        let sleep_copy = m.dir.join("mysleep");
        fs::copy("/bin/sleep", &sleep_copy).unwrap();
        let target = m.target();

        let fd = fd_child(&file);
        let cwd = cwd_child(&m.dir.join("sub"));
        let mapped = mmap_child(&file);
        let exe = Reaped(
            Command::new(&sleep_copy)
                .arg("60")
                .current_dir("/")
                .spawn()
                .unwrap(),
        );
        let unrelated = cwd_child(Path::new("/"));

        // The exec of the copied binary may still be in progress when spawn returns.
        let deadline = Instant::now() + Duration::from_secs(5);
        let found = loop {
            let found = processes_using(&target);
            if reasons_of(&found, exe.0.id()).is_some_and(|r| r.len() == 2)
                || Instant::now() > deadline
            {
                break found;
            }
            thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(
            reasons_of(&found, fd.0.id()),
            Some(vec!["fd".to_string()]),
            "{found:?}"
        );
        assert_eq!(
            reasons_of(&found, cwd.0.id()),
            Some(vec!["cwd".to_string()]),
            "{found:?}"
        );
        assert_eq!(
            reasons_of(&found, mapped.0.id()),
            Some(vec!["mmap".to_string()]),
            "{found:?}"
        );
        assert_eq!(
            reasons_of(&found, exe.0.id()),
            Some(vec!["exe".to_string(), "mmap".to_string()]),
            "{found:?}"
        );
        assert_eq!(reasons_of(&found, unrelated.0.id()), None, "{found:?}");
        let fd_entry = found.iter().find(|k| k.pid == fd.0.id() as i32).unwrap();
        assert_eq!(fd_entry.comm, "sleep");
        assert_eq!(
            found.len(),
            4,
            "only our four children use a fresh tmpfs: {found:?}"
        );
    }

    #[test]
    fn own_process_is_never_listed() {
        let _serial = SERIAL.lock();
        let m = Tmpfs::new("self");
        let file = m.dir.join("mine");
        fs::write(&file, b"x").unwrap();
        let target = m.target();
        let held = fs::File::open(&file).unwrap();
        let me = std::process::id();
        // Sanity: our own fdinfo does show the tmpfs, so the skip is what keeps us out.
        let ids = HashSet::from([target.mount_id]);
        assert!(fd_on_mount(&proc_dir(me as i32), &ids));
        let found = processes_using(&target);
        assert_eq!(reasons_of(&found, me), None, "{found:?}");
        let killed = kill_users(&target, Duration::from_secs(5)).unwrap();
        assert!(killed.iter().all(|k| k.pid != me as i32), "{killed:?}");
        drop(held);
    }

    #[test]
    fn kill_users_kills_every_user_and_treats_zombies_as_gone() {
        let _serial = SERIAL.lock();
        let m = Tmpfs::new("kill");
        let file = m.dir.join("data");
        fs::write(&file, vec![1u8; 4096]).unwrap();
        let target = m.target();
        let mut fd = fd_child(&file);
        let mut cwd = cwd_child(&m.dir);
        let mut mapped = mmap_child(&file);
        let mut unrelated = cwd_child(Path::new("/"));

        // The children are not reaped until after kill_users returns: it must take their
        // zombies as dead rather than wait for the deadline.
        let started = Instant::now();
        let killed = kill_users(&target, Duration::from_secs(10)).unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let mut pids: Vec<i32> = killed.iter().map(|k| k.pid).collect();
        pids.sort_unstable();
        let mut want = vec![fd.0.id() as i32, cwd.0.id() as i32, mapped.0.id() as i32];
        want.sort_unstable();
        assert_eq!(pids, want, "{killed:?}");
        for child in [&mut fd, &mut cwd, &mut mapped] {
            let status = child.0.wait().unwrap();
            assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
        }
        assert!(
            unrelated.0.try_wait().unwrap().is_none(),
            "the unrelated child must survive"
        );
        assert!(processes_using(&target).is_empty());
        // Nothing left: a second call kills nothing.
        assert_eq!(kill_users(&target, Duration::from_secs(5)).unwrap(), vec![]);
    }

    #[test]
    fn kill_users_reports_processes_it_cannot_kill_by_the_deadline() {
        let _serial = SERIAL.lock();
        let m = Tmpfs::new("stuck");
        let target = m.target();
        // A process stopped by SIGSTOP still dies of SIGKILL, so simulate an unkillable one
        // with a deadline of zero: the first scan finds it and the deadline has passed.
        let child = cwd_child(&m.dir);
        let err = kill_users(&target, Duration::ZERO).unwrap_err();
        assert!(err.contains(&child.0.id().to_string()), "{err}");
        assert!(err.contains("still alive"), "{err}");
        assert!(is_alive(child.0.id() as i32, None));
    }

    /// A one-directory FUSE file system that can be frozen: while frozen, every request
    /// blocks in the daemon without an answer, as lossfs's requests do during a power cut.
    struct Freezable {
        frozen: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    }

    impl Freezable {
        fn wait_thawed(&self) {
            let (lock, cv) = &*self.frozen;
            let mut frozen = lock.lock().unwrap();
            while *frozen {
                frozen = cv.wait(frozen).unwrap();
            }
        }
    }

    impl fuser::Filesystem for Freezable {
        fn getattr(
            &self,
            _req: &fuser::Request,
            ino: fuser::INodeNo,
            _fh: Option<fuser::FileHandle>,
            reply: fuser::ReplyAttr,
        ) {
            self.wait_thawed();
            if ino != fuser::INodeNo::ROOT {
                return reply.error(fuser::Errno::ENOENT);
            }
            let t = std::time::UNIX_EPOCH;
            let attr = fuser::FileAttr {
                ino,
                size: 0,
                blocks: 0,
                atime: t,
                mtime: t,
                ctime: t,
                crtime: t,
                kind: fuser::FileType::Directory,
                perm: 0o755,
                nlink: 2,
                uid: 0,
                gid: 0,
                rdev: 0,
                blksize: 4096,
                flags: 0,
            };
            // A zero TTL sends every stat to the daemon, so a frozen daemon blocks it.
            reply.attr(&Duration::ZERO, &attr);
        }

        fn opendir(
            &self,
            _req: &fuser::Request,
            _ino: fuser::INodeNo,
            _flags: fuser::OpenFlags,
            reply: fuser::ReplyOpen,
        ) {
            self.wait_thawed();
            reply.opened(fuser::FileHandle(0), fuser::FopenFlags::empty());
        }
    }

    fn set_frozen(frozen: &(std::sync::Mutex<bool>, std::sync::Condvar), value: bool) {
        *frozen.0.lock().unwrap() = value;
        frozen.1.notify_all();
    }

    /// Mount id and device of the mount on `dir`, read from mountinfo rather than by stat,
    /// which would enter the mount.
    fn target_from_mountinfo(dir: &Path) -> MountTarget {
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mp = dir.to_str().unwrap();
        let line = info
            .lines()
            .rfind(|l| l.split(' ').nth(4) == Some(mp))
            .unwrap_or_else(|| panic!("{mp} not in mountinfo"));
        let f: Vec<&str> = line.split(' ').collect();
        let (major, minor) = f[2].split_once(':').unwrap();
        MountTarget {
            mount_id: f[0].parse().unwrap(),
            major: major.parse().unwrap(),
            minor: minor.parse().unwrap(),
            mount_point: dir.to_path_buf(),
        }
    }

    #[test]
    fn scanning_and_killing_never_enter_a_frozen_fuse_mount() {
        let _serial = SERIAL.lock();
        let dir = mount_point("fuse");
        let frozen = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let mut config = fuser::Config::default();
        config.mount_options = vec![fuser::MountOption::FSName("procscan-test".into())];
        config.n_threads = Some(4);
        let session = fuser::spawn_mount(
            Freezable {
                frozen: frozen.clone(),
            },
            &dir,
            &config,
        )
        .unwrap_or_else(|e| panic!("FUSE mount on {} failed: {e}", dir.display()));
        let target = target_from_mountinfo(&dir);

        // A holder (fd and cwd on the mount), and a shell that keeps stat-ing the mount so
        // that after the freeze one of its `stat` children is stuck in a FUSE request.
        let holder = spawn_ready(&mut sh(
            "cd \"$1\" && exec 3<\"$1\" && echo ready && exec sleep 60",
            &dir,
        ));
        let statter = spawn_ready(&mut sh(
            "cd \"$1\" && echo ready && while :; do stat . >/dev/null; done",
            &dir,
        ));
        set_frozen(&frozen, true);
        thread::sleep(Duration::from_millis(300));

        let (tx, rx) = mpsc::channel();
        let scan_target = target.clone();
        thread::spawn(move || {
            let found = processes_using(&scan_target);
            let killed = kill_users(&scan_target, Duration::from_secs(1));
            let _ = tx.send((found, killed));
        });
        let answer = rx.recv_timeout(Duration::from_secs(20));
        // Thaw before asserting, so a failure does not leave processes stuck on the mount.
        set_frozen(&frozen, false);
        let (found, killed) = answer.expect("the scan hung on the frozen mount");

        assert_eq!(
            reasons_of(&found, holder.0.id()),
            Some(vec!["fd".to_string(), "cwd".to_string()]),
            "{found:?}"
        );
        assert!(reasons_of(&found, statter.0.id()).is_some(), "{found:?}");
        // The stuck `stat` cannot die until its request is answered: kill_users says so.
        let err = killed.expect_err("a process stuck in a FUSE request cannot be dead yet");
        assert!(err.contains("still alive") && err.contains("stat"), "{err}");

        // Once thawed, everything dies and nothing is left on the mount.
        let killed = kill_users(&target, Duration::from_secs(10)).unwrap();
        assert!(killed.iter().all(|k| k.pid != std::process::id() as i32));
        assert!(processes_using(&target).is_empty());
        drop(holder);
        drop(statter);
        session.umount_and_join().unwrap();
        let _ = fs::remove_dir(&dir);
    }

    #[test]
    fn stat_parsing_survives_odd_comm() {
        let line =
            "4242 (a) b (c) Z 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 0 0";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                state: 'Z',
                ppid: Some(1),
                start_time: Some(987654)
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        let own = proc_stat(&proc_dir(std::process::id() as i32)).unwrap();
        assert!(own.start_time.is_some());
        assert!(!is_dead_state(own.state));
    }

    #[test]
    fn fdinfo_and_maps_fields_parse() {
        assert_eq!(
            parse_fdinfo_mnt_id("pos:\t0\nflags:\t0100000\nmnt_id:\t1234\nino:\t3\n"),
            Some(1234)
        );
        assert_eq!(parse_fdinfo_mnt_id("pos:\t0\n"), None);
        assert_eq!(
            parse_maps_dev(
                "55906adfb000-55906adfd000 r--p 00000000 fe:1a0 247282    /usr/bin/head"
            ),
            Some((0xfe, 0x1a0))
        );
        assert_eq!(
            parse_maps_dev("7ffd1000-7ffd2000 rw-p 00000000 00:00 0                  [stack]"),
            None
        );
    }

    #[test]
    fn paths_match_by_component() {
        let mp = Path::new("/mnt/a");
        assert!(path_within(Path::new("/mnt/a"), mp));
        assert!(path_within(Path::new("/mnt/a/b/c"), mp));
        assert!(path_within(Path::new("/mnt/a/d (deleted)"), mp));
        assert!(!path_within(Path::new("/mnt/ab"), mp));
        assert!(!path_within(Path::new("/mnt"), mp));
        assert!(!path_within(Path::new("/"), mp));
    }
}
