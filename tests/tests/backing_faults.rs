//! Faults of the backing store under a running mount: a full disk (ENOSPC reaches the
//! program, nothing is silently dropped, a change whose pre-image cannot be saved is refused,
//! and a power cut afterwards restores exactly the durable state), errors of the backing
//! syscalls passed on with the same errno (EPERM from immutable and append-only files, EROFS
//! from a read-only backing, EIO from a shut-down ext4), the daemon's file-descriptor limit,
//! and BACKING renamed or removed under the mount.

use lossfs_tests::{
    num, output_text, pattern, read_all, run_bounded, writeback_cache, Mount, MountSetup,
    CMD_TIMEOUT,
};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Runs a command that must succeed, bounded.
fn sh(args: &[&str]) {
    let out = run_bounded(Command::new(args[0]).args(&args[1..]), CMD_TIMEOUT);
    assert!(out.status.success(), "{args:?}: {}", output_text(&out));
}

/// Unmounts with `fusermount3 -u` and waits for the daemon to exit without crashing.  Retried
/// a few times: a process forked by a test running in parallel holds copies of this test's
/// fds until it execs, which keeps the mount busy for a moment.
fn unmount_cleanly(m: &mut Mount) -> std::process::ExitStatus {
    for _ in 0..20 {
        if lossfs_tests::fusermount_u(&m.mnt, false) {
            return m.wait_daemon_exit(Duration::from_secs(30));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("fusermount3 -u {} kept failing", m.mnt.display());
}

/// A setup that mounts a tmpfs of `size` (mount(8) syntax) on the backing directory.
fn tmpfs_backing(size: &str) -> MountSetup {
    let opts = format!("size={size},mode=755");
    MountSetup {
        prepare_backing: Some(Box::new(move |b: &Path| {
            sh(&[
                "mount",
                "-t",
                "tmpfs",
                "-o",
                &opts,
                "lossfs-test",
                b.to_str().unwrap(),
            ])
        })),
        ..MountSetup::default()
    }
}

fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error()
        .unwrap_or_else(|| panic!("not an OS error: {e}"))
}

fn fsync_path(p: &Path) {
    OpenOptions::new()
        .write(true)
        .open(p)
        .and_then(|f| f.sync_all())
        .unwrap_or_else(|e| panic!("fsync {}: {e}", p.display()));
}

/// Writes `chunk`-sized pieces to `f` until a write fails; returns the bytes the program was
/// told were written and the error.
fn fill(f: &mut File, chunk: usize) -> (u64, io::Error) {
    let data = vec![0x5au8; chunk];
    let mut done = 0u64;
    loop {
        match f.write(&data) {
            Ok(0) => panic!("write returned 0 after {done} bytes"),
            Ok(n) => done += n as u64,
            Err(e) => return (done, e),
        }
        assert!(done < 1 << 30, "no ENOSPC after 1 GiB on a small tmpfs");
    }
}

/// Backing disk full: the program gets ENOSPC and keeps every byte it was told was written;
/// an overwrite or a shrinking truncate of durable data, whose old bytes lossfs cannot save,
/// is refused with ENOSPC and changes nothing; a power cut then restores exactly the
/// durable state.
#[test]
fn a_full_backing_disk_refuses_and_a_cut_restores_the_durable_state() {
    // Write-through only: with the writeback cache write(2) fills the page cache and the
    // backing disk's ENOSPC meets the kernel's writeback, which the program learns of at
    // fsync or close, not from the write(2) this test checks.
    let m = Mount::new_with(&["cache=writethrough"], tmpfs_backing("8m"));
    assert!(
        m.backing_path(".lossfs/journal").is_file(),
        "the state dir must be on the small tmpfs too"
    );
    let durable = pattern(1, 0, 1 << 20);
    fs::write(m.path("durable"), &durable).unwrap();
    fsync_path(&m.path("durable"));

    let mut f = File::create(m.path("fill")).unwrap();
    let (written, e) = fill(&mut f, 64 << 10);
    assert_eq!(errno_of(&e), libc::ENOSPC, "filling the disk: {e}");
    // Smaller writes into the last free bytes, until not even one byte fits.
    let (more, e) = fill(&mut f, 512);
    assert_eq!(errno_of(&e), libc::ENOSPC, "{e}");
    let written = written + more;
    drop(f);
    assert_eq!(fs::metadata(m.path("fill")).unwrap().len(), written);
    assert_eq!(fs::metadata(m.backing_path("fill")).unwrap().len(), written);

    // Changes that need a pre-image are refused, and leave the file as it was.
    let g = OpenOptions::new()
        .write(true)
        .open(m.path("durable"))
        .unwrap();
    let e = g.write_at(&[0xffu8; 4096], 8192).unwrap_err();
    assert_eq!(errno_of(&e), libc::ENOSPC, "overwrite of durable data: {e}");
    let e = g.set_len(4096).unwrap_err();
    assert_eq!(errno_of(&e), libc::ENOSPC, "truncate of durable data: {e}");
    drop(g);
    assert!(
        read_all(&m.path("durable")) == durable,
        "a refused change changed the file"
    );
    let st = m.status_json();
    assert_eq!(num(&st, "unsynced_bytes"), written, "{st}");

    // The cut gives back the durable state exactly: the unsynced file is empty again, the
    // durable one whole, and the report counts every unsynced byte.
    let r = m.powercut_nokill_json();
    assert_eq!(num(&r, "lost_bytes"), written, "{r}");
    assert_eq!(fs::metadata(m.path("fill")).unwrap().len(), 0);
    assert!(
        read_all(&m.path("durable")) == durable,
        "durable data changed by the cut"
    );
    // With space again, the refused overwrite now works.
    let g = OpenOptions::new()
        .write(true)
        .open(m.path("durable"))
        .unwrap();
    g.write_at(&[0xffu8; 4096], 8192).unwrap();
    let st = m.status_json();
    assert_eq!(num(&st, "unsynced_bytes"), 4096, "{st}");
}

/// Unmounts (lazily) a file system a test mounted, even when the test fails.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = run_bounded(
            Command::new("umount").arg("-l").arg(&self.0),
            Duration::from_secs(10),
        );
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The disk of the state dir full (BACKING has room): a write whose journal records cannot
/// be written gets ENOSPC, the errno the OS gave the journal, not EIO; so do overwrites of
/// durable and of unsynced bytes, whose pre-images cannot be saved.  Every byte the program
/// was told was written is there, and a power cut gives back exactly the durable state.
#[test]
fn a_full_state_dir_gives_enospc_and_loses_nothing() {
    let state = lossfs_tests::unique_tmp_dir("full_state");
    sh(&[
        "mount",
        "-t",
        "tmpfs",
        "-o",
        "size=1m,mode=700",
        "lossfs-test",
        state.to_str().unwrap(),
    ]);
    let _unmount = Unmount(state.clone());
    let state_opt = format!("state_dir={}", state.join("s").display());
    // Write-through only: with the writeback cache the journal's ENOSPC meets the
    // kernel's page writeback, not the write(2) this test checks (the program gets it at
    // fsync or close).
    let mut m = Mount::new(&[&state_opt, "cache=writethrough"]);
    let durable = pattern(3, 0, 64 << 10);
    fs::write(m.path("durable"), &durable).unwrap();
    fsync_path(&m.path("durable"));
    // An unsynced file whose epoch is open before the disk fills.
    let mut f = File::create(m.path("log")).unwrap();
    f.write_all(&pattern(4, 0, 4096)).unwrap();
    let mut acked = 4096u64;

    let mut filler = File::create(state.join("filler")).unwrap();
    let (_, e) = fill(&mut filler, 4096);
    assert_eq!(errno_of(&e), libc::ENOSPC, "filling the state dir: {e}");
    let (_, e) = fill(&mut filler, 1);
    assert_eq!(errno_of(&e), libc::ENOSPC, "{e}");

    // Small appends need no pre-image: they go on until the journal must write out its
    // buffered operation records, and that write fails.
    let e = loop {
        let piece = pattern(4, acked, 100);
        match f.write(&piece) {
            Ok(n) => {
                assert_eq!(n, piece.len(), "short append");
                acked += n as u64;
            }
            Err(e) => break e,
        }
        assert!(acked < 64 << 20, "no error after {acked} bytes of appends");
    };
    assert_eq!(
        errno_of(&e),
        libc::ENOSPC,
        "append with the journal's disk full: {e}"
    );
    let stderr = m.daemon_stderr();
    assert!(
        stderr.contains("request failed") && stderr.contains("No space left on device"),
        "the failed write is not logged with its errno:\n{stderr}"
    );
    // Creating "log" began with a lookup that found nothing: normal traffic, logged at
    // debug level only, so not at the default level.
    assert!(
        !stderr
            .lines()
            .any(|l| l.contains("request failed") && l.contains("No such file or directory")),
        "an ENOENT is logged at the default level:\n{stderr}"
    );
    // Overwrites, of unsynced and of durable bytes, need a pre-image that cannot be saved.
    let e = f.write_at(&[0xee; 100], 0).unwrap_err();
    assert_eq!(
        errno_of(&e),
        libc::ENOSPC,
        "overwrite of unsynced bytes: {e}"
    );
    drop(f);
    let g = OpenOptions::new()
        .write(true)
        .open(m.path("durable"))
        .unwrap();
    let e = g.write_at(&[0xff; 4096], 8192).unwrap_err();
    assert_eq!(
        errno_of(&e),
        libc::ENOSPC,
        "overwrite of durable bytes: {e}"
    );
    drop(g);

    // Nothing acknowledged is missing, nothing refused was applied.
    assert!(read_all(&m.path("log")) == pattern(4, 0, acked as usize));
    assert!(read_all(&m.path("durable")) == durable);
    let st = m.status_json();
    assert_eq!(num(&st, "unsynced_bytes"), acked, "{st}");
    // The cut needs no room on the state dir's disk.
    let r = m.powercut_nokill_json();
    assert_eq!(num(&r, "lost_bytes"), acked, "{r}");
    assert_eq!(fs::metadata(m.path("log")).unwrap().len(), 0);
    assert!(read_all(&m.path("durable")) == durable);

    // With room again, the refused overwrite works.
    drop(filler);
    fs::remove_file(state.join("filler")).unwrap();
    let g = OpenOptions::new()
        .write(true)
        .open(m.path("durable"))
        .unwrap();
    g.write_at(&[0xff; 4096], 8192).unwrap();
    drop(g);
    assert!(m.daemon_alive(), "daemon died:\n{}", m.daemon_stderr());
    assert!(unmount_cleanly(&mut m).success(), "{}", m.daemon_stderr());
}

/// Removes the immutable/append-only flags again even when the test fails, so the
/// directory can be deleted.
struct Unchattr(Vec<PathBuf>);

impl Drop for Unchattr {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = run_bounded(
                Command::new("chattr").arg("-ia").arg(p),
                Duration::from_secs(10),
            );
        }
    }
}

/// The errno an operation gives on the backing directory itself, and through the mount.
fn same_errno(m: &Mount, what: &str, op: impl Fn(&Path) -> io::Result<()>) -> i32 {
    let native = op(&m.backing).expect_err(&format!("{what}: succeeded on the backing dir"));
    let through = op(&m.mnt).expect_err(&format!("{what}: succeeded through lossfs"));
    assert_eq!(
        errno_of(&through),
        errno_of(&native),
        "{what}: lossfs answered {through}, the backing file system {native}"
    );
    errno_of(&through)
}

/// EPERM of immutable and append-only files (chattr +i / +a on the ext4 under /tmp) reaches
/// the program as on the backing file system.
#[test]
fn eperm_of_immutable_and_append_only_files_is_passed_on() {
    let m = Mount::new(&[]);
    fs::write(m.path("imm"), b"immutable").unwrap();
    fs::write(m.path("app"), b"append").unwrap();
    fs::create_dir(m.path("immdir")).unwrap();
    let _undo = Unchattr(vec![
        m.backing_path("imm"),
        m.backing_path("app"),
        m.backing_path("immdir"),
    ]);
    let out = run_bounded(
        Command::new("chattr")
            .arg("+i")
            .arg(m.backing_path("imm"))
            .arg(m.backing_path("immdir")),
        CMD_TIMEOUT,
    );
    assert!(
        out.status.success(),
        "chattr +i on {} (the backing file system must support it): {}",
        m.backing.display(),
        output_text(&out)
    );
    sh(&["chattr", "+a", m.backing_path("app").to_str().unwrap()]);

    let eperm = |what: &str, op: &dyn Fn(&Path) -> io::Result<()>| {
        assert_eq!(same_errno(&m, what, op), libc::EPERM, "{what}");
    };
    eperm("open immutable for writing", &|d| {
        OpenOptions::new().write(true).open(d.join("imm")).map(drop)
    });
    eperm("truncate immutable", &|d| {
        OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(d.join("imm"))
            .map(drop)
    });
    eperm("unlink immutable", &|d| fs::remove_file(d.join("imm")));
    eperm("rename immutable", &|d| {
        fs::rename(d.join("imm"), d.join("imm2"))
    });
    eperm("chmod immutable", &|d| {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(d.join("imm"), fs::Permissions::from_mode(0o600))
    });
    eperm("link immutable", &|d| {
        fs::hard_link(d.join("imm"), d.join("imm3"))
    });
    eperm("create in immutable dir", &|d| {
        fs::write(d.join("immdir/x"), b"x")
    });
    eperm("mkdir in immutable dir", &|d| {
        fs::create_dir(d.join("immdir/x"))
    });
    eperm("open append-only without O_APPEND", &|d| {
        OpenOptions::new().write(true).open(d.join("app")).map(drop)
    });
    eperm("unlink append-only", &|d| fs::remove_file(d.join("app")));
    // What append-only allows still works, and is journaled like any append.
    OpenOptions::new()
        .append(true)
        .open(m.path("app"))
        .unwrap()
        .write_all(b"+more")
        .unwrap();
    assert_eq!(read_all(&m.path("app")), b"append+more");
    assert_eq!(read_all(&m.path("imm")), b"immutable");
}

/// EROFS: the tmpfs under BACKING remounted read-only while lossfs runs.  The state dir is
/// elsewhere here: a mount with a file open for writing (the journal) cannot be made
/// read-only.
#[test]
fn erofs_of_a_read_only_backing_is_passed_on() {
    let state = lossfs_tests::unique_tmp_dir("erofs_state");
    let state_opt = format!("state_dir={}", state.join("s").display());
    let mut m = Mount::new_with(&[&state_opt], tmpfs_backing("8m"));
    fs::write(m.path("f"), b"data").unwrap();
    fs::create_dir(m.path("d")).unwrap();
    fsync_path(&m.path("f"));
    let backing = m.backing.to_str().unwrap().to_string();
    // The daemon closes a backing file when the kernel sends RELEASE, a moment after the
    // program's close: until then the file is open for writing and the remount is refused.
    let mut tries = 0;
    loop {
        let out = run_bounded(
            Command::new("mount").args(["-o", "remount,ro", &backing]),
            CMD_TIMEOUT,
        );
        if out.status.success() {
            break;
        }
        tries += 1;
        assert!(tries < 40, "remount,ro {backing}: {}", output_text(&out));
        std::thread::sleep(Duration::from_millis(250));
    }

    let erofs = |what: &str, op: &dyn Fn(&Path) -> io::Result<()>| {
        assert_eq!(same_errno(&m, what, op), libc::EROFS, "{what}");
    };
    erofs("create", &|d| fs::write(d.join("new"), b"x"));
    erofs("open for writing", &|d| {
        OpenOptions::new().write(true).open(d.join("f")).map(drop)
    });
    erofs("mkdir", &|d| fs::create_dir(d.join("d2")));
    erofs("unlink", &|d| fs::remove_file(d.join("f")));
    erofs("rmdir", &|d| fs::remove_dir(d.join("d")));
    erofs("rename", &|d| fs::rename(d.join("f"), d.join("g")));
    erofs("symlink", &|d| std::os::unix::fs::symlink("f", d.join("l")));
    erofs("chmod", &|d| {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(d.join("f"), fs::Permissions::from_mode(0o600))
    });
    // Reads still work, and so does the control socket.
    assert_eq!(read_all(&m.path("f")), b"data");
    assert_eq!(num(&m.status_json(), "unsynced_bytes"), 0);

    sh(&["mount", "-o", "remount,rw", &backing]);
    fs::write(m.path("new"), b"x").unwrap();
    assert!(m.daemon_alive(), "daemon died:\n{}", m.daemon_stderr());
    assert!(unmount_cleanly(&mut m).success(), "{}", m.daemon_stderr());
    let _ = fs::remove_dir_all(&state);
}

/// `EXT4_IOC_SHUTDOWN` (`_IOR('X', 125, __u32)`): every later operation on that ext4 fails
/// with EIO, as after a disk error.
const EXT4_IOC_SHUTDOWN: libc::c_ulong = 0x8004_587d;
/// Shut down without flushing the journal: the device "died".
const EXT4_GOING_FLAGS_NOLOGFLUSH: u32 = 2;

/// EIO: BACKING is an ext4 on a loop device, shut down (`EXT4_IOC_SHUTDOWN`) under the
/// running mount.  Reads, writes, fsync and creates give the program EIO; the daemon stays
/// up, a power cut reports what it could not restore, and the unmount finishes.
#[test]
fn eio_of_a_failed_backing_disk_is_passed_on() {
    assert!(
        Path::new("/dev/loop-control").exists(),
        "this test needs loop devices (/dev/loop-control) to put an ext4 under BACKING; \
         run the container with --privileged or --device /dev/loop-control and /dev/loopN"
    );
    let image_dir = lossfs_tests::unique_tmp_dir("eio_img");
    let image = image_dir.join("ext4.img");
    File::create(&image).unwrap().set_len(64 << 20).unwrap();
    let img = image.to_str().unwrap().to_string();
    sh(&["mkfs.ext4", "-q", "-F", &img]);
    let setup = MountSetup {
        prepare_backing: Some(Box::new(move |b: &Path| {
            sh(&["mount", "-o", "loop", &img, b.to_str().unwrap()])
        })),
        ..MountSetup::default()
    };
    // Write-through only: with the writeback cache a write(2) succeeds into the page
    // cache; the backing disk's EIO meets the writeback and reaches the program at fsync
    // or close, not at the write(2) this test checks.
    let mut m = Mount::new_with(&["cache=writethrough"], setup);
    fs::write(m.path("durable"), pattern(2, 0, 64 << 10)).unwrap();
    fsync_path(&m.path("durable"));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("durable"))
        .unwrap();
    f.write_all_at(&pattern(3, 0, 4096), 0).unwrap();

    // Shut the backing ext4 down through a directory fd on it (never through the mount).
    let dir = File::open(&m.backing).unwrap();
    let flags = EXT4_GOING_FLAGS_NOLOGFLUSH;
    // SAFETY: valid fd of the loop-mounted ext4 and a pointer to a u32, as the ioctl expects.
    let rc = unsafe { libc::ioctl(dir.as_raw_fd(), EXT4_IOC_SHUTDOWN, &flags) };
    assert_eq!(rc, 0, "EXT4_IOC_SHUTDOWN: {}", io::Error::last_os_error());
    drop(dir);

    let eio = |what: &str, r: io::Result<()>| match r {
        Ok(()) => panic!("{what}: succeeded on a shut-down disk"),
        Err(e) => assert_eq!(errno_of(&e), libc::EIO, "{what}: {e}"),
    };
    eio("write", f.write_all_at(b"x", 100_000));
    eio("fsync", f.sync_all());
    eio("create", fs::write(m.path("new"), b"x"));
    eio("mkdir", fs::create_dir(m.path("newdir")));
    eio("read", fs::read(m.path("durable")).map(drop));
    drop(f);
    assert!(m.daemon_alive(), "daemon died:\n{}", m.daemon_stderr());

    // A power cut cannot restore a dead disk: it must say so, not hang or crash.
    let out = m.lossctl(&["powercut", m.mnt.to_str().unwrap(), "--no-kill", "--json"]);
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "powercut on a dead disk: {}",
        output_text(&out)
    );
    if out.status.success() {
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let files = r["files"].as_array().expect("files");
        assert!(
            files.iter().any(|f| f["error"].is_string()),
            "a cut on a dead disk reported no error: {r}"
        );
    }
    assert!(m.daemon_alive(), "daemon died:\n{}", m.daemon_stderr());
    unmount_cleanly(&mut m);
    drop(m);
    let _ = fs::remove_dir_all(&image_dir);
}

/// Soft and hard RLIMIT_NOFILE of a process, from /proc/PID/limits.
fn nofile_of(pid: u32) -> (u64, u64) {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no Max open files in /proc/{pid}/limits:\n{limits}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[3].parse().unwrap(), f[4].parse().unwrap())
}

/// The daemon raises its soft fd limit to the hard one at start; when even that is used up,
/// programs get EMFILE/ENFILE on open, the daemon stays up, and once files are closed
/// everything works again.
#[test]
fn the_fd_limit_gives_emfile_and_the_daemon_survives() {
    const HARD: u64 = 200;
    let setup = MountSetup {
        nofile: Some((40, HARD)),
        ..MountSetup::default()
    };
    let mut m = Mount::new_with(&[], setup);
    let pid = m.daemon_pid().expect("daemon pid");
    assert_eq!(
        nofile_of(pid),
        (HARD, HARD),
        "soft limit not raised to the hard one"
    );

    for i in 0..400 {
        fs::write(m.backing_path(&format!("f{i:03}")), format!("file {i}")).unwrap();
    }
    let mut open = Vec::new();
    let mut refused = None;
    for i in 0..400 {
        match File::open(m.path(&format!("f{i:03}"))) {
            Ok(f) => open.push(f),
            Err(e) => {
                refused = Some((i, e));
                break;
            }
        }
    }
    let (at, e) = refused.expect("400 files open through a daemon limited to 200 fds");
    assert!(
        matches!(errno_of(&e), libc::EMFILE | libc::ENFILE),
        "open #{at} at the daemon's fd limit: {e} (want EMFILE or ENFILE)"
    );
    assert!(m.daemon_alive(), "daemon died:\n{}", m.daemon_stderr());
    // Still at the limit: more opens fail the same way, nothing hangs.
    let e = File::open(m.path("f399")).unwrap_err();
    assert!(matches!(errno_of(&e), libc::EMFILE | libc::ENFILE), "{e}");

    drop(open);
    // Looking files up holds no fd for long: the daemon's cache of O_PATH fds is bounded by
    // half its fd limit, so 400 lookups under a limit of 200 all work.
    for i in 0..400 {
        fs::metadata(m.path(&format!("f{i:03}")))
            .unwrap_or_else(|e| panic!("stat f{i:03} under the fd limit: {e}"));
    }
    // Released handles give their fds back (release may arrive a moment after close): a
    // few dozen files open at once work again.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut files = Vec::new();
    for i in 0..40 {
        loop {
            match fs::read_to_string(m.path(&format!("f{i:03}"))) {
                Ok(s) => {
                    assert_eq!(s, format!("file {i}"));
                    break;
                }
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("f{i:03} after closing everything: {e}"),
            }
        }
        files.push(File::open(m.path(&format!("f{i:03}"))).unwrap());
    }
    drop(files);
    assert_eq!(num(&m.status_json(), "unsynced_bytes"), 0);
    assert!(m.daemon_alive(), "daemon died:\n{}", m.daemon_stderr());
    assert!(unmount_cleanly(&mut m).success(), "{}", m.daemon_stderr());
}

/// BACKING renamed under a running mount: every file is reached by fd or handle, never by
/// path, so the mount keeps working, and unmounts cleanly.
#[test]
fn backing_renamed_under_the_mount_keeps_working() {
    let mut m = Mount::new(&[]);
    fs::write(m.path("a"), b"before").unwrap();
    fsync_path(&m.path("a"));
    let moved = m.root.join("backing_moved");
    fs::rename(&m.backing, &moved).unwrap();

    assert_eq!(read_all(&m.path("a")), b"before");
    fs::write(m.path("b"), b"after").unwrap();
    assert_eq!(read_all(&moved.join("b")), b"after");
    let f = OpenOptions::new().write(true).open(m.path("a")).unwrap();
    f.write_all_at(b"X", 0).unwrap();
    drop(f);
    let r = m.powercut_nokill_json();
    // With the writeback cache "a"'s page is written back whole: its 6 bytes count.
    let lost = if writeback_cache() { 6 + 5 } else { 1 + 5 };
    assert_eq!(num(&r, "lost_bytes"), lost, "{r}");
    assert_eq!(read_all(&moved.join("a")), b"before");
    assert!(m.daemon_alive(), "daemon died:\n{}", m.daemon_stderr());
    assert!(unmount_cleanly(&mut m).success(), "{}", m.daemon_stderr());
    // Put it back so the harness cleans up as usual.
    fs::rename(&moved, &m.backing).unwrap();
}

/// BACKING removed (rm -rf, state dir included) under a running mount: operations get
/// errors, not a crash or a hang; status, sync and a power cut answer; the unmount finishes
/// without a crash.
#[test]
fn backing_removed_under_the_mount_gives_errors_and_unmounts() {
    let mut m = Mount::new(&[]);
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/a"), b"data").unwrap();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("d/a"))
        .unwrap();
    f.write_all_at(b"more", 4).unwrap();
    fs::remove_dir_all(&m.backing).unwrap();

    let e = fs::write(m.path("new"), b"x").unwrap_err();
    assert_eq!(
        errno_of(&e),
        libc::ENOENT,
        "create in a removed BACKING: {e}"
    );
    let e = fs::create_dir(m.path("d2")).unwrap_err();
    assert_eq!(
        errno_of(&e),
        libc::ENOENT,
        "mkdir in a removed BACKING: {e}"
    );
    let e = fs::metadata(m.path("d/never_there")).unwrap_err();
    assert_eq!(
        errno_of(&e),
        libc::ENOENT,
        "lookup in a removed BACKING: {e}"
    );
    let e = fs::write(m.path("d/new"), b"x").unwrap_err();
    assert_eq!(
        errno_of(&e),
        libc::ENOENT,
        "create in a removed subdirectory: {e}"
    );
    assert_eq!(fs::read_dir(&m.mnt).unwrap().count(), 0);
    // A file still open works on, as an unlinked file does.
    f.write_all_at(b"!", 8).unwrap();
    drop(f);

    let mnt = m.mnt.to_str().unwrap().to_string();
    for cmd in [&["status"][..], &["sync"], &["powercut", "--no-kill"]] {
        let mut args = vec![cmd[0], mnt.as_str()];
        args.extend_from_slice(&cmd[1..]);
        let out = m.lossctl(&args);
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "{args:?} with BACKING removed: {}",
            output_text(&out)
        );
        assert!(
            m.daemon_alive(),
            "{args:?}: daemon died:\n{}",
            m.daemon_stderr()
        );
    }
    unmount_cleanly(&mut m);
}
