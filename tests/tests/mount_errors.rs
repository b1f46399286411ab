//! `lossfs` refuses bad mounts with a clear message and a non-zero exit.

use lossfs_tests::{
    cache_args, check_preconditions, is_mounted, lossfs_bin, read_all, unique_tmp_dir, unmount_all,
    wait_bounded, Mount,
};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `lossfs -f` that is expected to fail; if it mounts anyway, Drop unmounts and kills it.
struct Attempt {
    child: Option<Child>,
    mnt: PathBuf,
    stderr: PathBuf,
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            if matches!(c.try_wait(), Ok(None)) {
                unmount_all(&self.mnt);
                lossfs_tests::kill_child(c);
            }
        }
    }
}

/// Runs `lossfs BACKING MNT -f` expecting it to exit non-zero within 10 s; returns stderr.
fn expect_failure(scratch: &Path, backing: &Path, mnt: &Path, what: &str) -> String {
    expect_failure_with(scratch, backing, mnt, &[], what)
}

/// [`expect_failure`] with more arguments (`-o ...`).
fn expect_failure_with(
    scratch: &Path,
    backing: &Path,
    mnt: &Path,
    args: &[&str],
    what: &str,
) -> String {
    let stderr = scratch.join("attempt.stderr");
    let errf = File::create(&stderr).unwrap();
    let child = Command::new(lossfs_bin())
        .arg(backing)
        .arg(mnt)
        .args(cache_args())
        .arg("-f")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(errf))
        .spawn()
        .expect("spawn lossfs");
    let mut a = Attempt {
        child: Some(child),
        mnt: mnt.to_path_buf(),
        stderr,
    };
    let st = wait_bounded(a.child.as_mut().unwrap(), Duration::from_secs(10));
    let err = String::from_utf8_lossy(&read_all(&a.stderr)).into_owned();
    match st {
        None => {
            panic!("{what}: lossfs still running after 10 s instead of failing; stderr:\n{err}")
        }
        Some(st) => assert!(
            !st.success(),
            "{what}: lossfs exited successfully; stderr:\n{err}"
        ),
    }
    assert!(!err.trim().is_empty(), "{what}: no error message");
    err
}

struct Scratch(PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        if !is_mounted(&self.0.join("m")) && !is_mounted(&self.0.join("b/m")) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

#[test]
fn missing_backing() {
    check_preconditions();
    let s = Scratch(unique_tmp_dir("me"));
    let backing = s.0.join("nope");
    let mnt = s.0.join("m");
    fs::create_dir(&mnt).unwrap();
    let err = expect_failure(&s.0, &backing, &mnt, "missing backing");
    assert!(
        err.contains(backing.to_str().unwrap()),
        "should name the backing dir:\n{err}"
    );
}

#[test]
fn missing_mountpoint() {
    check_preconditions();
    let s = Scratch(unique_tmp_dir("me"));
    let backing = s.0.join("b");
    fs::create_dir(&backing).unwrap();
    let mnt = s.0.join("nope");
    let err = expect_failure(&s.0, &backing, &mnt, "missing mount point");
    assert!(
        err.contains(mnt.to_str().unwrap()),
        "should name the mount point:\n{err}"
    );
}

fn mentions_nesting(err: &str) -> bool {
    let e = err.to_lowercase();
    [
        "inside", "within", "recurs", "nested", "contain", "beneath", "under",
    ]
    .iter()
    .any(|w| e.contains(w))
}

#[test]
fn mountpoint_inside_backing() {
    check_preconditions();
    let s = Scratch(unique_tmp_dir("me"));
    let backing = s.0.join("b");
    let mnt = backing.join("m");
    fs::create_dir_all(&mnt).unwrap();
    let err = expect_failure(&s.0, &backing, &mnt, "mount point inside backing");
    assert!(mentions_nesting(&err), "should explain the nesting:\n{err}");
}

#[test]
fn backing_inside_mountpoint() {
    check_preconditions();
    let s = Scratch(unique_tmp_dir("me"));
    let mnt = s.0.join("m");
    let backing = mnt.join("b");
    fs::create_dir_all(&backing).unwrap();
    let err = expect_failure(&s.0, &backing, &mnt, "backing inside mount point");
    assert!(mentions_nesting(&err), "should explain the nesting:\n{err}");
}

#[test]
fn backing_is_a_file() {
    check_preconditions();
    let s = Scratch(unique_tmp_dir("me"));
    let backing = s.0.join("file");
    fs::write(&backing, b"x").unwrap();
    let mnt = s.0.join("m");
    fs::create_dir(&mnt).unwrap();
    let err = expect_failure(&s.0, &backing, &mnt, "backing is a regular file");
    assert!(
        err.contains(backing.to_str().unwrap()),
        "should name the backing:\n{err}"
    );
}

#[test]
fn same_backing_twice_is_refused() {
    let m = Mount::new(&[]);
    fs::write(m.path("f"), b"first").unwrap();
    let mnt2 = m.root.join("mnt2");
    fs::create_dir(&mnt2).unwrap();
    let err = expect_failure(
        &m.root,
        &m.backing,
        &mnt2,
        "second mount of the same backing",
    );
    assert!(!is_mounted(&mnt2), "second mount left something mounted");
    assert!(
        err.to_lowercase().contains("already") || err.contains(m.backing.to_str().unwrap()),
        "should say the backing is already in use:\n{err}"
    );
    // The first mount is unharmed.
    assert_eq!(read_all(&m.path("f")), b"first");
    m.status_json();
}

#[test]
fn same_mountpoint_twice_is_refused() {
    let m = Mount::new(&[]);
    let backing2 = m.root.join("backing2");
    fs::create_dir(&backing2).unwrap();
    let err = expect_failure(
        &m.root,
        &backing2,
        &m.mnt,
        "second mount on the same mount point",
    );
    assert!(
        err.to_lowercase().contains("already") || err.contains(m.mnt.to_str().unwrap()),
        "should say the mount point is already mounted:\n{err}"
    );
    assert_eq!(
        lossfs_tests::mount_fstypes(&m.mnt).len(),
        1,
        "mount point must carry exactly the first mount"
    );
    m.status_json();
}

/// `sync_cpu=N` naming a CPU the daemon may not run on fails the mount before anything is
/// mounted, naming the option, the CPU and the CPUs allowed.
#[test]
fn a_sync_cpu_the_daemon_may_not_use_is_refused() {
    check_preconditions();
    let s = Scratch(unique_tmp_dir("me"));
    let (backing, mnt) = (s.0.join("b"), s.0.join("m"));
    fs::create_dir(&backing).unwrap();
    fs::create_dir(&mnt).unwrap();
    let err = expect_failure_with(
        &s.0,
        &backing,
        &mnt,
        &["-o", "sync_cpu=1023"],
        "sync_cpu=1023",
    );
    assert!(
        err.contains("sync_cpu=1023") && err.contains("CPU 1023") && err.contains("allowed"),
        "the error names the option, the CPU and the CPUs allowed: {err}"
    );
    assert!(
        !is_mounted(&mnt),
        "a refused mount left {} mounted",
        mnt.display()
    );
    assert!(
        fs::read_dir(&backing).unwrap().next().is_none(),
        "a refused mount must not have touched the backing dir (no state dir, no recovery)"
    );
}

/// Every mount has the kernel check permissions; an option that would turn that off fails
/// the mount with a message saying so, before anything is mounted.
#[test]
fn turning_permission_checks_off_is_refused() {
    check_preconditions();
    let s = Scratch(unique_tmp_dir("me"));
    let (backing, mnt) = (s.0.join("b"), s.0.join("m"));
    fs::create_dir(&backing).unwrap();
    fs::create_dir(&mnt).unwrap();
    for off in ["nodefault_permissions", "default_permissions=0"] {
        let opts = format!("allow_other,{off}");
        let err = expect_failure_with(&s.0, &backing, &mnt, &["-o", &opts], off);
        assert!(
            err.contains(off) && err.contains("cannot be turned off"),
            "the error names the option and says why: {err}"
        );
        assert!(
            !is_mounted(&mnt),
            "-o {opts} left {} mounted",
            mnt.display()
        );
    }
}
