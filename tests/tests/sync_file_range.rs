//! `-o sync_file_range=volatile|stable`: what a power cut keeps of an overwrite after
//! sync_file_range(2).  By default (volatile) nothing; with `stable` the data of the
//! overwritten pages of a write-and-wait call's range, never appends, other pages, other
//! flag sets; and a replay after a killed daemon keeps what was committed.  The calls are
//! made by this test process on files of the mount; the daemon sees them through tracefs.
//! A daemon that cannot reach tracefs refuses the mount.

use lossfs_tests::{
    first_stdout_line, is_mounted, lossfs_bin, num, output_text, pattern, read_all, report_file,
    run_bounded, spawn_python, sync_file_range, unique_tmp_dir, Mount,
};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const PAGE: u64 = 4096;
const WRITE_AND_WAIT: u32 = libc::SYNC_FILE_RANGE_WAIT_BEFORE
    | libc::SYNC_FILE_RANGE_WRITE
    | libc::SYNC_FILE_RANGE_WAIT_AFTER;
/// How long the daemon may take to see a call and commit it.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);
const STABLE: &str = "sync_file_range=stable";

/// A file of `len` durable bytes (fsynced), open for writing.
fn durable_file(m: &Mount, name: &str, len: usize) -> (File, Vec<u8>) {
    let durable = pattern(1, 0, len);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.path(name))
        .unwrap();
    f.write_all_at(&durable, 0).unwrap();
    f.sync_all().unwrap();
    (f, durable)
}

/// The file's unsynced ranges in `lossctl status` (none when it is not listed).
fn unsynced(m: &Mount, name: &str) -> Vec<(u64, u64)> {
    let st = m.status_json();
    report_file(&st, name)
        .and_then(|f| f["unsynced"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|r| (num(r, "start"), num(r, "end")))
        .collect()
}

/// Waits (bounded) until `lossctl status` shows the file's unsynced ranges as `want`: the
/// daemon has seen the call and committed its pages.  With the writeback cache, pages
/// outside the call's range reach lossfs when the kernel writes them back, which may be
/// later: there the ranges listed must lie within `want`.
fn wait_unsynced(m: &Mount, name: &str, want: &[(u64, u64)]) {
    let deadline = Instant::now() + COMMIT_TIMEOUT;
    loop {
        let have = unsynced(m, name);
        let within = have
            .iter()
            .all(|h| want.iter().any(|w| w.0 <= h.0 && h.1 <= w.1));
        if have == want || (lossfs_tests::writeback_cache() && within) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: unsynced ranges {have:?}, expected {want:?} within {COMMIT_TIMEOUT:?} \
             (the sync_file_range was not committed); daemon stderr:\n{}",
            m.daemon_stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `content` with `[off, off+len)` replaced by `new`'s bytes there.
fn patched(content: &[u8], new: &[u8], off: u64, len: u64) -> Vec<u8> {
    let mut out = content.to_vec();
    let (s, e) = (off as usize, (off + len) as usize);
    out[s..e].copy_from_slice(&new[s..e]);
    out
}

/// The tracefs instances of daemon `pid`.
fn instances_of(pid: u32) -> Vec<String> {
    let prefix = format!("lossfs-sfr-{pid}-");
    fs::read_dir(Path::new(lossfs::sfrtrace::TRACEFS).join("instances"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn by_default_an_overwrite_is_rolled_back_after_sync_file_range() {
    let m = Mount::new(&[]);
    assert_eq!(m.status_json()["sync_file_range"], "volatile");
    let (f, durable) = durable_file(&m, "f", 4 * PAGE as usize);
    f.write_all_at(&pattern(2, 0, 4 * PAGE as usize), 0)
        .unwrap();
    sync_file_range(&f, 0, 0, WRITE_AND_WAIT);
    drop(f);
    let rep = m.powercut_json();
    assert_eq!(num(&rep, "lost_bytes"), 4 * PAGE, "{rep}");
    assert_eq!(read_all(&m.path("f")), durable);
}

#[test]
fn stable_keeps_the_pages_in_the_range_and_rolls_back_the_others() {
    let mut m = Mount::new(&[STABLE]);
    assert_eq!(m.status_json()["sync_file_range"], "stable");
    let pid = m.daemon_pid().expect("daemon pid");
    assert_eq!(
        instances_of(pid).len(),
        1,
        "one tracefs instance while mounted"
    );
    let (f, durable) = durable_file(&m, "f", 4 * PAGE as usize);
    let new = pattern(2, 0, 4 * PAGE as usize);
    f.write_all_at(&new, 0).unwrap();
    // Touches pages 1 and 2, neither whole: the kernel writes whole pages.
    sync_file_range(&f, PAGE + 10, PAGE, WRITE_AND_WAIT);
    wait_unsynced(&m, "f", &[(0, PAGE), (3 * PAGE, 4 * PAGE)]);
    drop(f);
    let rep = m.powercut_json();
    let file = report_file(&rep, "f").unwrap_or_else(|| panic!("no f in {rep}"));
    assert_eq!(num(file, "lost_bytes"), 2 * PAGE, "{rep}");
    let want = patched(&durable, &new, PAGE, 2 * PAGE);
    assert_eq!(read_all(&m.path("f")), want);
    assert_eq!(read_all(&m.backing_path("f")), want);
    m.unmount();
    assert_eq!(
        instances_of(pid),
        Vec::<String>::new(),
        "instance left after unmount"
    );
}

#[test]
fn stable_leaves_an_append_past_the_durable_size_unsynced() {
    let m = Mount::new(&[STABLE]);
    let (f, durable) = durable_file(&m, "f", 10_000);
    // Overwrites 9000..10000 and appends 10000..14000.
    let new = pattern(3, 0, 14_000);
    f.write_all_at(&new[9000..], 9000).unwrap();
    sync_file_range(&f, 0, 0, WRITE_AND_WAIT);
    wait_unsynced(&m, "f", &[(10_000, 14_000)]);
    drop(f);
    let rep = m.powercut_json();
    let file = report_file(&rep, "f").unwrap_or_else(|| panic!("no f in {rep}"));
    assert_eq!(num(file, "size_after"), 10_000, "{rep}");
    assert_eq!(read_all(&m.path("f")), patched(&durable, &new, 9000, 1000));
}

#[test]
fn stable_commits_nothing_for_calls_that_do_not_wait_after_writing() {
    let m = Mount::new(&[STABLE]);
    let (f, durable) = durable_file(&m, "f", 3 * PAGE as usize);
    let new = pattern(4, 0, 3 * PAGE as usize);
    f.write_all_at(&new, 0).unwrap();
    sync_file_range(&f, 0, PAGE, libc::SYNC_FILE_RANGE_WRITE);
    sync_file_range(
        &f,
        2 * PAGE,
        PAGE,
        libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE,
    );
    // A write-and-wait call after them: once it is committed, the daemon has seen the
    // two before it (events are handled in order).
    sync_file_range(&f, PAGE, PAGE, WRITE_AND_WAIT);
    wait_unsynced(&m, "f", &[(0, PAGE), (2 * PAGE, 3 * PAGE)]);
    drop(f);
    m.powercut_json();
    assert_eq!(read_all(&m.path("f")), patched(&durable, &new, PAGE, PAGE));
}

#[test]
fn stable_commits_survive_a_killed_daemon_and_its_stale_instance_goes() {
    let mut m = Mount::new(&[STABLE]);
    let (f, durable) = durable_file(&m, "f", 3 * PAGE as usize);
    let new = pattern(5, 0, 3 * PAGE as usize);
    f.write_all_at(&new, 0).unwrap();
    sync_file_range(&f, PAGE, PAGE, WRITE_AND_WAIT);
    wait_unsynced(&m, "f", &[(0, PAGE), (2 * PAGE, 3 * PAGE)]);
    drop(f);
    let old = m.daemon_pid().expect("daemon pid");
    m.kill_daemon();
    assert_eq!(
        instances_of(old).len(),
        1,
        "the killed daemon's instance stays"
    );
    if lossfs_tests::is_mounted(&m.mnt) {
        m.lazy_unmount();
    }
    m.remount();
    assert!(
        m.daemon_stderr().contains("unclean journal"),
        "no replay:\n{}",
        m.daemon_stderr()
    );
    assert_eq!(read_all(&m.path("f")), patched(&durable, &new, PAGE, PAGE));
    assert_eq!(
        instances_of(old),
        Vec::<String>::new(),
        "the next start removes a dead daemon's instance"
    );
}

#[test]
fn a_cut_right_after_the_call_kills_the_caller_and_keeps_its_commit() {
    let m = Mount::new(&[STABLE]);
    let (f, durable) = durable_file(&m, "f", 2 * PAGE as usize);
    drop(f);
    // The caller stays in the mount until the cut kills it; the cut is asked for as soon as
    // the call (flags 6: WRITE|WAIT_AFTER) returned, without waiting for the daemon to show
    // the commit.
    let script = format!(
        "import ctypes,os,time\nc=ctypes.CDLL(None,use_errno=True)\n\
         c.sync_file_range.argtypes=[ctypes.c_int,ctypes.c_longlong,ctypes.c_longlong,ctypes.c_uint]\n\
         fd=os.open({:?},os.O_RDWR)\nos.pwrite(fd,b'Z'*{},0)\n\
         assert c.sync_file_range(fd,{},{},6)==0\n\
         print('ready',flush=True)\ntime.sleep(1000)\n",
        m.path("f").to_str().unwrap(),
        2 * PAGE,
        PAGE,
        PAGE
    );
    let mut caller = spawn_python(&script, &[]);
    let line = first_stdout_line(&mut caller, Duration::from_secs(15));
    assert_eq!(
        line.as_deref().map(str::trim),
        Some("ready"),
        "python3 caller"
    );
    let rep = m.powercut_json();
    assert!(
        rep["killed"].as_array().is_some_and(|k| k
            .iter()
            .any(|p| p["pid"].as_u64() == Some(caller.0.id() as u64))),
        "the caller was not killed: {rep}"
    );
    assert!(rep.get("warnings").is_none(), "{rep}");
    let mut want = durable.clone();
    want[PAGE as usize..2 * PAGE as usize].fill(b'Z');
    assert_eq!(read_all(&m.path("f")), want);
}

#[test]
fn stable_is_refused_with_the_reason_when_tracefs_is_out_of_reach() {
    lossfs_tests::check_preconditions();
    // As user nobody, tracefs is neither readable nor mountable.
    let root = unique_tmp_dir("sfr_refused");
    let (backing, mnt) = (root.join("backing"), root.join("mnt"));
    for d in [&root, &backing, &mnt] {
        fs::create_dir_all(d).unwrap();
        fs::set_permissions(d, fs::Permissions::from_mode(0o777)).unwrap();
    }
    let out = run_bounded(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(lossfs_bin())
            .arg(&backing)
            .arg(&mnt)
            .args(["-o", STABLE, "-f"]),
        Duration::from_secs(30),
    );
    let text = output_text(&out);
    let mounted = is_mounted(&mnt);
    if mounted {
        lossfs_tests::unmount_all(&mnt);
    }
    assert!(!mounted, "mounted as nobody with {STABLE}:\n{text}");
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("sync_file_range=stable") && text.contains("root"),
        "the refusal names the option and the fix:\n{text}"
    );
    assert_eq!(
        fs::read_dir(&backing).unwrap().count(),
        0,
        "BACKING was touched"
    );
    let _ = fs::remove_dir_all(&root);
}
