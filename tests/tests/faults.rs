//! Fault injection on a mount: exact errnos reach the program, nth/count, delays on the
//! delayed request's thread only (ended by `fault clear` and by a power cut), disk-full
//! mode, fsync error semantics (`fsync_error=drop|retry`) and fsync lies.

mod fault_helpers;

use fault_helpers::{ctl, errno_of, finish};
use lossfs_tests::{num, output_text, read_all, spawn_python, Mount};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

#[test]
fn injected_errno_reaches_the_program_on_the_nth_match_only() {
    // Write-through only: with the writeback cache a write rule meets the kernel's page
    // writeback, not write(2), and its error reaches the program at fsync or close as EIO
    // (cache_writeback.rs checks that; docs/fault-model.md, "The writeback cache").
    let m = Mount::new(&["cache=writethrough"]);
    let st = ctl(
        &m,
        &["fault", "add"],
        &[
            "--op",
            "write",
            "--path",
            "data/*.log",
            "--errno",
            "ENOSPC",
            "--nth",
            "2",
            "--count",
            "1",
        ],
    );
    assert_eq!(st["faults"][0]["id"], 1, "{st}");
    fs::create_dir(m.path("data")).unwrap();
    let mut f = File::create(m.path("data/a.log")).unwrap();
    f.write_all(b"one").unwrap();
    assert_eq!(errno_of(f.write(b"two")), libc::ENOSPC);
    f.write_all(b"three").unwrap();
    // Another path does not match.
    let mut other = File::create(m.path("data/a.txt")).unwrap();
    other.write_all(b"x").unwrap();
    other.write_all(b"y").unwrap();
    drop(f);
    assert_eq!(read_all(&m.path("data/a.log")), b"onethree");

    let st = ctl(&m, &["fault", "list"], &[]);
    let rule = &st["faults"][0];
    assert_eq!((num(rule, "matched"), num(rule, "fired")), (3, 1), "{st}");
    let text = output_text(&m.lossctl(&["fault", "list", m.mnt.to_str().unwrap()]));
    assert!(
        text.contains(
            "fault 1: write on \"data/*.log\": errno ENOSPC, from the 2nd match, at most 1 times (matched 3, fired 1)"
        ),
        "{text}"
    );

    // Every listed errno is exact; open, unlink, mkdir and rename fail as told.
    for (op, errno, name) in [
        ("open", libc::EACCES, "EACCES"),
        ("unlink", libc::EROFS, "EROFS"),
        ("mkdir", libc::EDQUOT, "EDQUOT"),
        ("rename", libc::EPERM, "EPERM"),
    ] {
        ctl(
            &m,
            &["fault", "add"],
            &["--op", op, "--errno", name, "--count", "1"],
        );
        let got = match op {
            "open" => errno_of(File::open(m.path("data/a.txt"))),
            "unlink" => errno_of(fs::remove_file(m.path("data/a.txt"))),
            "mkdir" => errno_of(fs::create_dir(m.path("d2"))),
            _ => errno_of(fs::rename(m.path("data/a.txt"), m.path("data/b.txt"))),
        };
        assert_eq!(got, errno, "{op} must fail with {name}");
    }
    // Each rule fired once: the operations work again.
    assert_eq!(read_all(&m.path("data/a.txt")), b"xy");
    fs::create_dir(m.path("d2")).unwrap();
    let st = ctl(&m, &["fault", "clear"], &["1"]);
    assert!(
        st["faults"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["id"] != 1),
        "{st}"
    );
    let st = ctl(&m, &["fault", "clear"], &[]);
    assert_eq!(st["faults"], serde_json::json!([]), "{st}");
}

#[test]
fn bad_fault_rules_are_refused_with_reasons() {
    let m = Mount::new(&[]);
    let mnt = m.mnt.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut a = vec!["fault", "add", mnt];
        a.extend_from_slice(args);
        m.lossctl(&a)
    };
    let out = run(&["--op", "write", "--errno", "EWHAT"]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(output_text(&out).contains("unknown or unsupported errno \"EWHAT\""));
    let out = run(&["--op", "write", "--lie"]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(output_text(&out).contains("lie applies to fsync"));
    let out = run(&["--op", "write"]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    let out = run(&["--op", "write", "--errno", "EIO", "--probability", "0.5"]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    let out = run(&["--op", "write", "--delay", "5"]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(output_text(&out).contains("give a unit"));
    let out = m.lossctl(&["fault", "clear", mnt, "77"]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(output_text(&out).contains("no fault with id 77"));
    // A seeded probability rule is accepted and listed with its seed.
    let st = ctl(
        &m,
        &["fault", "add"],
        &[
            "--op",
            "read",
            "--errno",
            "EIO",
            "--probability",
            "0.25",
            "--seed",
            "42",
        ],
    );
    assert_eq!(st["faults"][0]["spec"]["seed"], 42, "{st}");
}

#[test]
fn a_delay_holds_only_its_own_request_and_ends_at_fault_clear() {
    let m = Mount::new(&[]);
    fs::write(m.path("slow"), b"s").unwrap();
    fs::write(m.path("other"), b"other data").unwrap();

    // Lower bound of an injected delay.
    ctl(
        &m,
        &["fault", "add"],
        &[
            "--op", "fsync", "--path", "slow", "--delay", "300ms", "--count", "1",
        ],
    );
    let f = OpenOptions::new().write(true).open(m.path("slow")).unwrap();
    let t0 = Instant::now();
    f.sync_all().unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t0.elapsed()
    );

    // A long delay: other operations go on meanwhile, and `fault clear` ends it.
    ctl(
        &m,
        &["fault", "add"],
        &["--op", "fsync", "--path", "slow", "--delay", "10m"],
    );
    let done = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let d2 = done.clone();
    thread::spawn(move || {
        let r = f.sync_all();
        d2.store(true, Ordering::SeqCst);
        let _ = tx.send(r.map_err(|e| e.to_string()));
    });
    // Wait until the fsync is inside its delay (the rule counted it).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = ctl(&m, &["fault", "list"], &[]);
        if st["faults"][0]["fired"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the fsync never reached the rule: {st}"
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(read_all(&m.path("other")), b"other data");
    fs::write(m.path("third"), b"3").unwrap();
    assert!(
        !done.load(Ordering::SeqCst),
        "the delayed fsync returned before the clear"
    );
    ctl(&m, &["fault", "clear"], &[]);
    let r = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("fault clear must end the delay");
    assert_eq!(r, Ok(()), "a cleared delay lets the fsync go on");
}

#[test]
fn a_power_cut_ends_a_delay_and_kills_the_delayed_program() {
    let m = Mount::new(&[]);
    ctl(&m, &["fault", "add"], &["--op", "fsync", "--delay", "10m"]);
    let script = r#"
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
os.write(fd, b"unsynced")
print("ready", flush=True)
os.fsync(fd)
print("synced", flush=True)
"#;
    let path = m.path("f");
    let mut child = spawn_python(script, &[path.to_str().unwrap()]);
    let mut out = BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    let deadline = Instant::now() + Duration::from_secs(20);
    while ctl(&m, &["fault", "list"], &[])["faults"][0]["fired"] != 1 {
        assert!(
            Instant::now() < deadline,
            "the fsync never reached the delay"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let rep = m.powercut_json();
    assert_eq!(num(&rep, "lost_bytes"), 8, "{rep}");
    child.0.stdout = Some(out.into_inner());
    let (signal, rest) = finish(&mut child, "the delayed writer");
    assert_eq!(signal, Some(libc::SIGKILL));
    assert_eq!(
        rest, "",
        "the delayed fsync must never return to the program"
    );
    assert_eq!(read_all(&path), b"");
}

#[test]
fn disk_full_refuses_writes_and_creates_with_enospc() {
    // Write-through only: with the writeback cache write(2) fills the page cache and the
    // limit is met by the kernel's writeback, whose ENOSPC the program gets at fsync or
    // close, not at write(2) (docs/fault-model.md, "The writeback cache").
    let m = Mount::new(&["cache=writethrough"]);
    let st = ctl(&m, &["fault", "disk-full"], &["--limit", "64K"]);
    assert_eq!(num(&st["disk_full"], "limit"), 65536, "{st}");
    assert_eq!(num(&st["disk_full"], "used"), 0, "{st}");
    let mut f = File::create(m.path("big")).unwrap();
    let chunk = vec![7u8; 4096];
    let mut written = 0;
    let errno = loop {
        match f.write(&chunk) {
            Ok(n) => {
                assert_eq!(n, 4096);
                written += n;
                assert!(written <= 65536, "wrote past the limit");
            }
            Err(e) => break e.raw_os_error().expect("an errno"),
        }
    };
    assert_eq!(errno, libc::ENOSPC);
    assert!(
        written >= 32768,
        "only {written} bytes fit under a 64 KiB limit"
    );
    assert_eq!(errno_of(File::create(m.path("new"))), libc::ENOSPC);
    assert_eq!(errno_of(fs::create_dir(m.path("dir"))), libc::ENOSPC);
    let st = m.status_json();
    assert!(
        num(&st["faults"]["disk_full"], "used") >= written as u64,
        "{st}"
    );
    // Freeing space makes room again.
    drop(f);
    fs::remove_file(m.path("big")).unwrap();
    let st = ctl(&m, &["fault", "list"], &[]);
    assert_eq!(num(&st["disk_full"], "used"), 0, "{st}");
    fs::write(m.path("small"), b"fits").unwrap();
    let st = ctl(&m, &["fault", "disk-full"], &["--clear"]);
    assert!(st["disk_full"].is_null(), "{st}");
    fs::write(m.path("large"), vec![1u8; 256 * 1024]).unwrap();
}

/// Writes a durable record, then an unsynced one, then fsyncs (the fault makes that fsync
/// fail with EIO once), then fsyncs again.
fn fsync_error_run(opts: &[&str]) -> (Mount, Vec<u8>) {
    let m = Mount::new(opts);
    let path = m.path("f");
    let mut f = File::create(&path).unwrap();
    f.write_all(b"durable;").unwrap();
    f.sync_all().unwrap();
    ctl(
        &m,
        &["fault", "add"],
        &[
            "--op", "fsync", "--path", "f", "--errno", "EIO", "--count", "1",
        ],
    );
    f.write_all(b"unsynced;").unwrap();
    assert_eq!(errno_of(f.sync_all()), libc::EIO);
    let backing_after_error = read_all(&m.backing_path("f"));
    f.sync_all().expect("the fsync after a failed one succeeds");
    drop(f);
    m.powercut_json();
    (m, backing_after_error)
}

#[test]
fn fsync_eio_drops_the_unsynced_data_by_default() {
    let (m, after_error) = fsync_error_run(&[]);
    assert_eq!(
        after_error, b"durable;",
        "the failed fsync drops the data at once"
    );
    assert_eq!(read_all(&m.path("f")), b"durable;");
    let st = m.status_json();
    assert_eq!(st["faults"]["fsync_error"], "drop", "{st}");
}

#[test]
fn fsync_eio_keeps_the_data_for_a_retry_with_fsync_error_retry() {
    let (m, after_error) = fsync_error_run(&["fsync_error=retry"]);
    assert_eq!(after_error, b"durable;unsynced;");
    assert_eq!(
        read_all(&m.path("f")),
        b"durable;unsynced;",
        "the retried fsync made the data durable"
    );
    assert_eq!(m.status_json()["faults"]["fsync_error"], "retry");
}

#[test]
fn a_lying_fsync_loses_its_data_at_the_cut() {
    let m = Mount::new(&[]);
    fs::write(m.path("kept"), b"kept").unwrap();
    m.sync();
    let st = ctl(&m, &["fault", "add"], &["--op", "fsync", "--lie"]);
    assert_eq!(st["faults"][0]["spec"]["lie"], true, "{st}");
    ctl(&m, &["fault", "add"], &["--op", "fdatasync", "--lie"]);
    let mut f = File::create(m.path("wal")).unwrap();
    f.write_all(b"acknowledged").unwrap();
    f.sync_all().unwrap();
    f.sync_data().unwrap();
    drop(f);
    let st = m.status_json();
    assert_eq!(
        num(&st, "unsynced_bytes"),
        12,
        "the lie made nothing durable: {st}"
    );
    let rep = m.powercut_json();
    assert_eq!(num(&rep, "lost_bytes"), 12, "{rep}");
    assert_eq!(read_all(&m.path("wal")), b"");
    assert_eq!(read_all(&m.path("kept")), b"kept");
}
