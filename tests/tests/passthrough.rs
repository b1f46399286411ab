//! Passthrough basics through a lossfs mount: hard links, PATH_MAX paths relative to a
//! directory fd, a slow fsync not stalling other operations, rename flavours, readdir,
//! symlinks, xattrs, statfs, and the hidden state directory.

use lossfs_tests::{cpath, cstr, last_err, pattern, read_all, renameat2, Mount};
use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

#[test]
fn hard_links_share_attributes_immediately() {
    let m = Mount::new(&[]);
    let a = m.path("a");
    let b = m.path("b");
    fs::write(&a, b"linked").unwrap();
    fs::hard_link(&a, &b).unwrap();
    let (ma, mb) = (fs::metadata(&a).unwrap(), fs::metadata(&b).unwrap());
    assert_eq!(ma.ino(), mb.ino());
    assert_eq!(ma.nlink(), 2);
    assert_eq!(mb.nlink(), 2);
    for mode in [0o640, 0o600, 0o755, 0o444] {
        fs::set_permissions(&a, fs::Permissions::from_mode(mode)).unwrap();
        assert_eq!(
            fs::metadata(&b).unwrap().mode() & 0o7777,
            mode,
            "chmod via a, stat b"
        );
        fs::set_permissions(&b, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            fs::metadata(&a).unwrap().mode() & 0o7777,
            0o644,
            "chmod via b, stat a"
        );
    }
    // Data written through one name is read through the other at once.
    OpenOptions::new()
        .append(true)
        .open(&a)
        .unwrap()
        .write_all(b"+more")
        .unwrap();
    assert_eq!(read_all(&b), b"linked+more");
    assert_eq!(fs::metadata(&b).unwrap().len(), 11);
    fs::remove_file(&a).unwrap();
    assert_eq!(fs::metadata(&b).unwrap().nlink(), 1);
    assert_eq!(read_all(&b), b"linked+more");
}

fn openat(dirfd: i32, name: &CString, flags: i32, mode: libc::c_uint) -> OwnedFd {
    // SAFETY: name is NUL-terminated; the result is checked.
    let fd = unsafe { libc::openat(dirfd, name.as_ptr(), flags | libc::O_CLOEXEC, mode) };
    assert!(
        fd >= 0,
        "openat of a {}-byte relative path: {}",
        name.as_bytes().len(),
        last_err()
    );
    // SAFETY: fd is a fresh descriptor we own.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[test]
fn path_max_relative_to_a_directory_fd() {
    let m = Mount::new(&[]);
    fs::create_dir(m.path("top")).unwrap();
    let top = openat(
        libc::AT_FDCWD,
        &cpath(&m.path("top")),
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    );
    // Components of 250 bytes; the final relative path is exactly PATH_MAX - 1 bytes.
    let comp = "d".repeat(250);
    let total = libc::PATH_MAX as usize - 1;
    let ndirs = (total - 1) / (comp.len() + 1);
    let file_len = total - ndirs * (comp.len() + 1);
    assert!((1..=255).contains(&file_len));
    let file_name = "f".repeat(file_len);
    let mut cur = openat(
        top.as_raw_fd(),
        &cstr("."),
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    );
    let c = cstr(&comp);
    for _ in 0..ndirs {
        // SAFETY: c is NUL-terminated; cur is a directory fd.
        let rc = unsafe { libc::mkdirat(cur.as_raw_fd(), c.as_ptr(), 0o755) };
        assert_eq!(rc, 0, "mkdirat: {}", last_err());
        cur = openat(cur.as_raw_fd(), &c, libc::O_RDONLY | libc::O_DIRECTORY, 0);
    }
    let mut rel = String::new();
    for _ in 0..ndirs {
        rel.push_str(&comp);
        rel.push('/');
    }
    rel.push_str(&file_name);
    assert_eq!(rel.len(), total);
    let crel = cstr(&rel);
    let data = pattern(30, 0, 5000);
    {
        let fd = openat(
            top.as_raw_fd(),
            &crel,
            libc::O_CREAT | libc::O_WRONLY | libc::O_EXCL,
            0o644,
        );
        let mut f = fs::File::from(fd);
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
    }
    // SAFETY: zeroed stat is a valid out-buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: crel is NUL-terminated, st is a valid out-pointer.
    let rc = unsafe { libc::fstatat(top.as_raw_fd(), crel.as_ptr(), &mut st, 0) };
    assert_eq!(rc, 0, "fstatat: {}", last_err());
    assert_eq!(st.st_size, 5000);
    let fd = openat(top.as_raw_fd(), &crel, libc::O_RDONLY, 0);
    let mut back = Vec::new();
    std::io::Read::read_to_end(&mut fs::File::from(fd), &mut back).unwrap();
    assert_eq!(back, data);
    // Survives a cut (it was fsynced), and reading it back works after the cut too.
    m.powercut_nokill_json();
    let fd = openat(top.as_raw_fd(), &crel, libc::O_RDONLY, 0);
    let mut back = Vec::new();
    std::io::Read::read_to_end(&mut fs::File::from(fd), &mut back).unwrap();
    assert_eq!(back, data);
    // One byte more is ENAMETOOLONG from the kernel, not a crash of the daemon.
    let too_long = cstr(format!("{rel}x"));
    // SAFETY: too_long is NUL-terminated.
    let fd = unsafe { libc::openat(top.as_raw_fd(), too_long.as_ptr(), libc::O_RDONLY) };
    assert_eq!(fd, -1);
    assert_eq!(last_err().raw_os_error(), Some(libc::ENAMETOOLONG));
    m.status_json();
}

#[test]
fn slow_fsync_does_not_stall_other_operations() {
    let m = Mount::new(&[]);
    let small = m.path("small");
    fs::write(&small, b"small file").unwrap();
    let big = m.path("big");
    let mut f = fs::File::create(&big).unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    for _ in 0..200 {
        f.write_all(&chunk).unwrap();
    }
    let (tx, rx) = mpsc::channel();
    let fsyncer = thread::spawn(move || {
        tx.send(()).unwrap();
        let t0 = Instant::now();
        f.sync_all().unwrap();
        let d = t0.elapsed();
        (t0, d)
    });
    rx.recv_timeout(Duration::from_secs(10)).unwrap();
    thread::sleep(Duration::from_millis(5));
    // Other operations, timed one by one, while the fsync runs.
    let mut worst = Duration::ZERO;
    let mut ops_done_at = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        let md = fs::metadata(&small).unwrap();
        assert_eq!(md.len(), 10);
        assert_eq!(read_all(&small), b"small file");
        if i % 5 == 0 {
            fs::read_dir(&m.mnt).unwrap().for_each(drop);
        }
        worst = worst.max(t.elapsed());
        ops_done_at.push(Instant::now());
    }
    let (t0, fsync_time) = fsyncer.join().unwrap();
    let fsync_end = t0 + fsync_time;
    let first_done_before_fsync = ops_done_at[0] < fsync_end;
    // Either the other operations overtook the fsync, or the fsync was fast and each
    // stat+read took at most half the fsync time plus a generous 500 ms of slack.
    assert!(
        first_done_before_fsync || worst <= fsync_time / 2 + Duration::from_millis(500),
        "stat/read of another file took {worst:?} while a {fsync_time:?} fsync ran: \
         one slow fsync stalls the whole file system"
    );
}

#[test]
fn rename_readdir_symlink_xattr_statfs() {
    let m = Mount::new(&[]);
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/one"), b"1").unwrap();
    fs::write(m.path("d/two"), b"22").unwrap();
    fs::rename(m.path("d/one"), m.path("d/uno")).unwrap();
    assert!(!m.path("d/one").exists());
    assert_eq!(read_all(&m.path("d/uno")), b"1");
    // rename over an existing file
    fs::rename(m.path("d/uno"), m.path("d/two")).unwrap();
    assert_eq!(read_all(&m.path("d/two")), b"1");
    fs::write(m.path("d/three"), b"333").unwrap();
    // RENAME_NOREPLACE and RENAME_EXCHANGE
    let (two, three) = (m.path("d/two"), m.path("d/three"));
    assert_eq!(
        renameat2(&two, &three, libc::RENAME_NOREPLACE),
        Err(libc::EEXIST),
        "RENAME_NOREPLACE over an existing file"
    );
    renameat2(&two, &three, libc::RENAME_EXCHANGE)
        .unwrap_or_else(|e| panic!("RENAME_EXCHANGE: errno {e}"));
    assert_eq!(read_all(&m.path("d/two")), b"333");
    assert_eq!(read_all(&m.path("d/three")), b"1");
    // directory rename
    fs::rename(m.path("d"), m.path("e")).unwrap();
    assert_eq!(read_all(&m.path("e/two")), b"333");

    // readdir
    let mut names: Vec<String> = fs::read_dir(m.path("e"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["three", "two"]);
    for i in 0..300 {
        fs::write(m.path(&format!("e/n{i:03}")), b"").unwrap();
    }
    assert_eq!(fs::read_dir(m.path("e")).unwrap().count(), 302);

    // The state directory is not visible in the mount.
    let root: Vec<String> = fs::read_dir(&m.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(root, ["e"], "mount root lists {root:?}");
    assert_eq!(
        fs::metadata(m.path(".lossfs")).unwrap_err().raw_os_error(),
        Some(libc::ENOENT)
    );

    // symlink / readlink
    std::os::unix::fs::symlink("e/two", m.path("ln")).unwrap();
    assert_eq!(fs::read_link(m.path("ln")).unwrap().to_str(), Some("e/two"));
    assert_eq!(read_all(&m.path("ln")), b"333");
    assert!(fs::symlink_metadata(m.path("ln"))
        .unwrap()
        .file_type()
        .is_symlink());
    std::os::unix::fs::symlink("/etc/passwd", m.path("abs")).unwrap();
    assert_eq!(
        fs::read_link(m.path("abs")).unwrap().to_str(),
        Some("/etc/passwd")
    );
    // The link target is not resolved inside the backing dir.
    assert_eq!(
        fs::read_link(m.backing_path("abs")).unwrap().to_str(),
        Some("/etc/passwd")
    );

    // xattrs
    let p = cpath(&m.path("e/two"));
    let name = cstr("user.lossfs_test");
    let val = b"value\0with nul";
    // SAFETY: valid pointers and lengths.
    let rc =
        unsafe { libc::setxattr(p.as_ptr(), name.as_ptr(), val.as_ptr().cast(), val.len(), 0) };
    assert_eq!(rc, 0, "setxattr: {}", last_err());
    let mut buf = [0u8; 64];
    // SAFETY: valid pointers and lengths.
    let n = unsafe {
        libc::getxattr(
            p.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(n, val.len() as isize, "getxattr: {}", last_err());
    assert_eq!(&buf[..val.len()], val);
    // SAFETY: size query with a null buffer.
    let n = unsafe { libc::getxattr(p.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    assert_eq!(n, val.len() as isize);
    let mut list = [0u8; 256];
    // SAFETY: valid pointers and lengths.
    let n = unsafe { libc::listxattr(p.as_ptr(), list.as_mut_ptr().cast(), list.len()) };
    assert!(n > 0, "listxattr: {}", last_err());
    assert!(
        list[..n as usize]
            .split(|&c| c == 0)
            .any(|s| s == b"user.lossfs_test"),
        "listxattr misses the attribute"
    );
    // SAFETY: valid NUL-terminated strings.
    let rc = unsafe { libc::removexattr(p.as_ptr(), name.as_ptr()) };
    assert_eq!(rc, 0, "removexattr: {}", last_err());
    // SAFETY: valid pointers and lengths.
    let n = unsafe {
        libc::getxattr(
            p.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(n, -1);
    assert_eq!(last_err().raw_os_error(), Some(libc::ENODATA));

    // statfs matches the backing file system
    // SAFETY: zeroed statvfs is a valid out-buffer.
    let mut a: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: zeroed statvfs is a valid out-buffer.
    let mut b: libc::statvfs = unsafe { std::mem::zeroed() };
    let (cm, cb) = (cpath(&m.mnt), cpath(&m.backing));
    // SAFETY: valid path and out-pointer.
    let rc = unsafe { libc::statvfs(cm.as_ptr(), &mut a) };
    assert_eq!(rc, 0, "statvfs: {}", last_err());
    // SAFETY: valid path and out-pointer.
    let rc = unsafe { libc::statvfs(cb.as_ptr(), &mut b) };
    assert_eq!(rc, 0);
    assert!(a.f_blocks > 0);
    assert_eq!(
        a.f_blocks as u128 * a.f_frsize as u128,
        b.f_blocks as u128 * b.f_frsize as u128,
        "total size differs from the backing file system"
    );
    assert!(a.f_namemax >= 255, "f_namemax {}", a.f_namemax);

    // rmdir / unlink
    fs::remove_file(m.path("ln")).unwrap();
    for i in 0..300 {
        fs::remove_file(m.path(&format!("e/n{i:03}"))).unwrap();
    }
    fs::create_dir(m.path("empty")).unwrap();
    fs::remove_dir(m.path("empty")).unwrap();
    assert!(!m.backing_path("empty").exists());
    assert_eq!(
        fs::remove_dir(m.path("e")).unwrap_err().raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
}

#[test]
fn no_escape_through_dotdot_or_symlinks() {
    let m = Mount::new(&[]);
    // A symlink in the backing dir pointing outside must be followed by the kernel as a
    // link (relative to the caller), never by the daemon into the host.
    std::os::unix::fs::symlink("../../..", m.backing_path("up")).unwrap();
    assert!(fs::symlink_metadata(m.path("up"))
        .unwrap()
        .file_type()
        .is_symlink());
    // ".." of the mount root is the parent of the mount point, not of the backing dir.
    let parent = fs::canonicalize(m.path("..")).unwrap();
    assert_eq!(parent, m.root);
    // Creating through the symlink resolves in the caller's view.
    fs::create_dir(m.path("sub")).unwrap();
    std::os::unix::fs::symlink("..", m.path("sub/back")).unwrap();
    fs::write(m.path("sub/back/x"), b"x").unwrap();
    assert_eq!(read_all(&m.backing_path("x")), b"x");
}

/// `utimensat(AT_SYMLINK_NOFOLLOW)` sets the times of the link itself and leaves its target
/// alone (pjdfstest utimensat::follow_symlink).
#[test]
fn utimensat_nofollow_sets_the_times_of_a_symlink() {
    let m = Mount::new(&[]);
    fs::write(m.path("target"), b"t").unwrap();
    std::os::unix::fs::symlink("target", m.path("ln")).unwrap();
    let target_before = fs::metadata(m.path("target")).unwrap();
    let ts = [
        libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 111,
        },
        libc::timespec {
            tv_sec: 1_100_000_000,
            tv_nsec: 222,
        },
    ];
    let ln = cpath(&m.path("ln"));
    // SAFETY: valid C string and two timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            ln.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0, "utimensat(NOFOLLOW) of a symlink: {}", last_err());
    for md in [
        fs::symlink_metadata(m.path("ln")).unwrap(),
        fs::symlink_metadata(m.backing_path("ln")).unwrap(),
    ] {
        assert_eq!((md.atime(), md.atime_nsec()), (1_000_000_000, 111));
        assert_eq!((md.mtime(), md.mtime_nsec()), (1_100_000_000, 222));
    }
    let target_after = fs::metadata(m.path("target")).unwrap();
    assert_eq!(
        (target_after.mtime(), target_after.mtime_nsec()),
        (target_before.mtime(), target_before.mtime_nsec()),
        "the link's target was touched"
    );
}

/// Mode bits of `path` after `sh -c SCRIPT` (with `$f` = path) runs as `uid` on a root-owned
/// file of mode 06777 with one byte in it.
fn set_id_bits_after(path: &std::path::Path, uid: u32, script: &str) -> u32 {
    fs::write(path, b"x").unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o6777)).unwrap();
    assert_eq!(fs::metadata(path).unwrap().mode() & 0o7777, 0o6777);
    let out = lossfs_tests::run_bounded(
        std::process::Command::new("sh")
            .args(["-c", script])
            .env("f", path)
            .uid(uid)
            .gid(uid),
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "{script} as uid {uid} on {}: {}",
        path.display(),
        lossfs_tests::output_text(&out)
    );
    fs::metadata(path).unwrap().mode() & 0o7777
}

/// A write or truncate by a process without CAP_FSETID clears the set-user-ID bit (and the
/// set-group-ID bit of a group-executable file), as on the local filesystem; root's keep
/// them.  (With FUSE_HANDLE_KILLPRIV_V2 the kernel leaves this to lossfs.)
#[test]
fn unprivileged_writes_and_truncates_clear_set_id_bits() {
    let m = Mount::new(&["allow_other"]);
    let native = lossfs_tests::unique_tmp_dir("setid");
    let nobody = 65534;
    let cases = [
        ("append", nobody, r#"printf y >> "$f""#),
        ("truncate", nobody, r#"truncate -s 5 "$f""#),
        ("open O_TRUNC", nobody, r#": > "$f""#),
        ("truncate as root", 0, r#"truncate -s 5 "$f""#),
    ];
    for (what, uid, script) in cases {
        let want = set_id_bits_after(&native.join("f"), uid, script);
        let got = set_id_bits_after(&m.path("f"), uid, script);
        assert_eq!(
            got, want,
            "{what}: lossfs {got:o}, local filesystem {want:o}"
        );
        let expect = if uid == 0 { 0o6777 } else { 0o777 };
        assert_eq!(
            want, expect,
            "{what} on the local filesystem (the reference itself)"
        );
    }
    let _ = fs::remove_dir_all(&native);
}
