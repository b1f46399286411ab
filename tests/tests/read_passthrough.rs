//! `-o passthrough=ro`: opens for reading only are read by the kernel straight from the
//! backing file.  Each test proves which way reads go with a read fault rule armed after the
//! open: a passthrough read never reaches the daemon, so the rule neither fires nor counts.

mod fault_helpers;

use fault_helpers::ctl;
use lossfs_tests::{lossfs_bin, num, pattern, read_all, wait_bounded, ChildGuard, Mount};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// Passthrough needs the write-through cache mode (the kernel refuses it beside its
/// writeback cache), so these tests name it and keep it in a `LOSSFS_TEST_CACHE=writeback` run.
const OPTS: &[&str] = &["passthrough=ro", "cache=writethrough"];

/// A read fault rule failing every read with EIO; returns nothing, checked by `ctl`.
fn fail_reads(m: &Mount) {
    ctl(m, &["fault", "add"], &["--op", "read", "--errno", "EIO"]);
}

/// How many reads the (single) read rule has seen.
fn reads_seen(m: &Mount) -> u64 {
    let st = ctl(m, &["fault", "list"], &[]);
    num(&st["faults"][0], "matched")
}

fn clear_faults(m: &Mount) {
    ctl(m, &["fault", "clear"], &[]);
}

/// Creates `rel` through the mount with `data` and makes it durable.
fn durable_file(m: &Mount, rel: &str, data: &[u8]) {
    let f = File::create(m.path(rel)).unwrap();
    f.write_all_at(data, 0).unwrap();
    f.sync_all().unwrap();
}

fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.expect_err("expected an error")
        .raw_os_error()
        .expect("an OS error")
}

#[test]
fn reads_of_a_read_only_open_bypass_the_daemon_and_return_the_right_bytes() {
    let m = Mount::new(OPTS);
    let data = pattern(1, 0, 3 << 20);
    durable_file(&m, "f", &data);

    let f = File::open(m.path("f")).unwrap();
    fail_reads(&m);
    let mut got = vec![0u8; data.len()];
    f.read_exact_at(&mut got, 0).unwrap();
    assert!(got == data, "passthrough read returned other bytes");
    assert_eq!(
        reads_seen(&m),
        0,
        "a read of the passthrough handle reached the daemon"
    );

    // Opened while a read rule is armed: no passthrough, the rule sees its reads.
    let g = File::open(m.path("f")).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(errno_of(g.read_at(&mut buf, 0)), libc::EIO);
    assert!(reads_seen(&m) >= 1);
    // The first handle still reads past the daemon.
    f.read_exact_at(&mut buf, 4096).unwrap();
    assert_eq!(&buf[..], &data[4096..4096 + 16]);
    drop((f, g));
    clear_faults(&m);
}

#[test]
fn a_writer_opened_among_passthrough_readers_is_journalled_and_rolled_back() {
    let m = Mount::new(OPTS);
    let old = pattern(2, 0, 64 << 10);
    durable_file(&m, "f", &old);

    let r = File::open(m.path("f")).unwrap();
    // The kernel refuses a cached open of an inode in passthrough mode (EIO); lossfs
    // answers the writer with direct io instead.
    let w = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("f"))
        .unwrap();
    let new = pattern(3, 0, 8192);
    w.write_all_at(&new, 4096).unwrap();

    // The writer's own reads reach the daemon; the reader's do not, and see the new bytes.
    fail_reads(&m);
    let mut got = vec![0u8; new.len()];
    r.read_exact_at(&mut got, 4096).unwrap();
    assert!(
        got == new,
        "the passthrough reader does not see the writer's bytes"
    );
    assert_eq!(reads_seen(&m), 0);
    let mut one = [0u8; 1];
    assert_eq!(errno_of(w.read_at(&mut one, 0)), libc::EIO);
    clear_faults(&m);

    // A second reader while the writer is open: still passthrough (the inode is).
    let r2 = File::open(m.path("f")).unwrap();
    fail_reads(&m);
    r2.read_exact_at(&mut got, 4096).unwrap();
    assert!(got == new);
    assert_eq!(reads_seen(&m), 0);
    clear_faults(&m);

    let st = m.status_json();
    assert_eq!(num(&st, "unsynced_bytes"), new.len() as u64, "{st}");
    drop((r, r2, w));
    let rep = m.powercut_json();
    assert_eq!(num(&rep, "lost_bytes"), new.len() as u64, "{rep}");
    assert!(
        read_all(&m.path("f")) == old,
        "the cut did not restore the durable bytes"
    );
}

#[test]
fn a_reader_opened_while_a_writer_is_open_reads_through_the_daemon() {
    let m = Mount::new(OPTS);
    durable_file(&m, "f", &pattern(4, 0, 8 << 20));
    let w = OpenOptions::new().write(true).open(m.path("f")).unwrap();
    let new = pattern(5, 0, 4096);
    w.write_all_at(&new, 0).unwrap();

    let r = File::open(m.path("f")).unwrap();
    let mut got = vec![0u8; 4096];
    r.read_exact_at(&mut got, 0).unwrap();
    assert!(
        got == new,
        "the reader does not see the writer's unsynced bytes"
    );
    // A cached handle (the writer's is open): its reads reach the daemon and the rule
    // (far past what readahead may have cached after the first read).
    fail_reads(&m);
    assert_eq!(errno_of(r.read_at(&mut got, 6 << 20)), libc::EIO);
    clear_faults(&m);
    drop((r, w));

    // Once the writer is gone, a new reader is passed through again.  Its RELEASE may
    // reach the daemon after close(2) returns, so the first open after it may still be a
    // cached one; a reader opened after a round trip that follows the release is not.
    let _ = m.status_json();
    let r = File::open(m.path("f")).unwrap();
    fail_reads(&m);
    r.read_exact_at(&mut got, 0).unwrap();
    assert!(got == new);
    assert_eq!(reads_seen(&m), 0);
    drop(r);
    clear_faults(&m);
}

#[test]
fn readers_and_writers_opening_and_closing_at_once_never_meet_a_mode_conflict() {
    // The kernel forgets a closed handle before its RELEASE reaches the daemon; opens that
    // race with those releases must still be answered in a mode the kernel accepts (a
    // wrong one fails the open with EIO).
    let m = Mount::new(OPTS);
    let block = pattern(11, 0, 4096);
    durable_file(&m, "f", &block.repeat(4));
    let path = m.path("f");
    let workers: Vec<_> = (0..4)
        .map(|i| {
            let path = path.clone();
            let block = block.clone();
            thread::spawn(move || {
                for n in 0..300u64 {
                    if i % 2 == 0 {
                        let f = File::open(&path).map_err(|e| format!("reader open {n}: {e}"))?;
                        let mut got = vec![0u8; 4096];
                        f.read_exact_at(&mut got, (n % 4) * 4096)
                            .map_err(|e| format!("reader read {n}: {e}"))?;
                        if got != block {
                            return Err(format!("reader {n}: other bytes"));
                        }
                    } else {
                        let f = OpenOptions::new()
                            .read(true)
                            .write(true)
                            .open(&path)
                            .map_err(|e| format!("writer open {n}: {e}"))?;
                        f.write_all_at(&block, (n % 4) * 4096)
                            .map_err(|e| format!("writer write {n}: {e}"))?;
                    }
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker panicked").unwrap();
    }
    let st = m.status_json();
    assert_eq!(num(&st, "unsynced_bytes"), 4 * 4096, "{st}");
}

#[test]
fn mmap_of_a_passthrough_file_maps_the_backing_file() {
    let m = Mount::new(OPTS);
    let data = pattern(6, 0, 1 << 20);
    durable_file(&m, "f", &data);
    let f = File::open(m.path("f")).unwrap();
    fail_reads(&m);
    // SAFETY: a fresh read-only shared mapping of an open file, unmapped below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            data.len(),
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(
        p,
        libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the mapping is data.len() readable bytes until munmap.
    let mapped = unsafe { std::slice::from_raw_parts(p as *const u8, data.len()) };
    let same = mapped == &data[..];
    // SAFETY: p came from the mmap above, with this length.
    unsafe { libc::munmap(p, data.len()) };
    assert!(same, "the mapping shows other bytes than the file");
    assert_eq!(
        reads_seen(&m),
        0,
        "page faults of the mapping reached the daemon"
    );
    drop(f);
    clear_faults(&m);
}

/// A python3 child that opens `path` for reading, says "ready", and on each line of stdin
/// reads `len` bytes at 0 and prints them as hex (or the errno).
struct Reader {
    child: ChildGuard,
    lines: mpsc::Receiver<String>,
}

impl Reader {
    fn start(path: &std::path::Path, len: usize) -> Reader {
        let script = r#"
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
print("ready", flush=True)
for _ in sys.stdin:
    try:
        print(os.pread(fd, int(sys.argv[2]), 0).hex(), flush=True)
    except OSError as e:
        print("errno", e.errno, flush=True)
"#;
        let mut child = ChildGuard(
            Command::new(lossfs_tests::PYTHON)
                .arg("-c")
                .arg(script)
                .arg(path)
                .arg(len.to_string())
                .current_dir("/")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn python3"),
        );
        let out = child.0.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let r = Reader { child, lines };
        assert_eq!(r.line(), "ready");
        r
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(15))
            .expect("no answer from the python3 reader within 15 s")
    }

    fn read(&mut self) -> String {
        let stdin = self.child.0.stdin.as_mut().expect("piped stdin");
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
        self.line()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn a_cut_kills_passthrough_readers_and_later_reads_see_the_rolled_back_bytes() {
    let m = Mount::new(OPTS);
    let old = pattern(7, 0, 8192);
    durable_file(&m, "f", &old);
    let new = pattern(8, 0, 8192);
    {
        let w = OpenOptions::new().write(true).open(m.path("f")).unwrap();
        w.write_all_at(&new, 0).unwrap();
    }
    let _ = m.status_json(); // the writer's RELEASE is in before the reader opens

    let mut reader = Reader::start(&m.path("f"), new.len());
    fail_reads(&m);
    assert_eq!(reader.read(), hex(&new), "the passthrough reader's view");
    assert_eq!(reads_seen(&m), 0, "the reader's reads reached the daemon");
    clear_faults(&m);

    let rep = m.powercut_json();
    let pid = reader.child.0.id();
    let killed = rep["killed"].as_array().expect("killed list");
    assert!(
        killed.iter().any(|k| k["pid"].as_u64() == Some(pid as u64)),
        "the passthrough reader {pid} was not killed: {rep}"
    );
    let st = wait_bounded(&mut reader.child.0, Duration::from_secs(10))
        .expect("the reader still runs 10 s after the cut");
    assert_eq!(st.signal(), Some(libc::SIGKILL));
    assert_eq!(num(&rep, "lost_bytes"), new.len() as u64, "{rep}");

    let mut again = Reader::start(&m.path("f"), old.len());
    fail_reads(&m);
    assert_eq!(again.read(), hex(&old), "a new reader after the cut");
    assert_eq!(reads_seen(&m), 0);
    clear_faults(&m);
    drop(again);
}

#[test]
fn after_a_no_kill_cut_an_old_passthrough_handle_reads_the_rolled_back_bytes() {
    let m = Mount::new(OPTS);
    let old = pattern(9, 0, 4096);
    durable_file(&m, "f", &old);
    let new = pattern(10, 0, 4096);
    {
        let w = OpenOptions::new().write(true).open(m.path("f")).unwrap();
        w.write_all_at(&new, 0).unwrap();
    }
    let _ = m.status_json();
    let r = File::open(m.path("f")).unwrap();
    let mut got = vec![0u8; 4096];
    r.read_exact_at(&mut got, 0).unwrap();
    assert!(got == new);
    let rep = m.powercut_nokill_json();
    assert_eq!(num(&rep, "lost_bytes"), 4096, "{rep}");
    // The daemon cannot revoke it (a handle it serves answers EIO after a cut): it reads on,
    // from BACKING, which now holds the durable bytes.
    r.read_exact_at(&mut got, 0).unwrap();
    assert!(
        got == old,
        "the old passthrough handle reads other bytes than BACKING's"
    );
}

#[test]
fn passthrough_with_the_writeback_cache_or_a_bad_value_is_refused() {
    let dir = lossfs_tests::unique_tmp_dir("ptref");
    let (b, mnt) = (dir.join("b"), dir.join("m"));
    fs::create_dir_all(&b).unwrap();
    fs::create_dir_all(&mnt).unwrap();
    for (opts, want) in [
        (
            "passthrough=ro,cache=writeback",
            "mount options passthrough=ro and cache=writeback cannot be combined",
        ),
        (
            "passthrough=rw",
            "mount option passthrough=rw: must be off or ro",
        ),
    ] {
        let mut child = Command::new(lossfs_bin())
            .arg(&b)
            .arg(&mnt)
            .args(["-f", "-o", opts])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lossfs");
        let st = wait_bounded(&mut child, Duration::from_secs(10));
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        if st.is_none() {
            let _ = child.kill();
            let _ = child.wait();
            lossfs_tests::unmount_all(&mnt);
            panic!("-o {opts}: lossfs still runs after 10 s; stderr: {err}");
        }
        assert!(!st.unwrap().success(), "-o {opts} was accepted");
        assert!(err.contains(want), "-o {opts}: {err}");
        assert!(!lossfs_tests::is_mounted(&mnt));
    }
    let _ = fs::remove_dir_all(&dir);
}
