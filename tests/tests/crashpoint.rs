//! Crash points: `lossctl arm powercut` cuts the power exactly at the Nth matching
//! operation, before or after it is applied, and the program never sees its answer.

mod fault_helpers;

use fault_helpers::{ctl, finish, wait_cut_done};
use lossfs_tests::{cache_args, num, output_text, read_all, spawn_python, writeback_cache, Mount};
use std::fs;

/// Appends 16-byte records to a WAL, fsyncing each, and says so after every fsync.
const WAL_WRITER: &str = r#"
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
for i in range(10):
    os.write(fd, b"record-%02d......\n" % i)
    os.fsync(fd)
    print("synced", i, flush=True)
print("done", flush=True)
"#;

const REC: usize = 16;

fn records(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| format!("record-{i:02}......\n").into_bytes())
        .collect()
}

fn wal_crash(when: &str) -> (Mount, serde_json::Value, String) {
    let m = Mount::new(&[]);
    let st = ctl(
        &m,
        &["arm", "powercut"],
        &["--op", "fsync", "--path", "wal", "--nth", "3", when],
    );
    assert_eq!(st["crash_point"]["fired"], false, "{st}");
    assert_eq!(st["crash_point"]["spec"]["nth"], 3, "{st}");
    let text = m.lossctl(&["status", m.mnt.to_str().unwrap()]);
    let text = output_text(&text);
    assert!(
        text.contains(&format!(
            "crash point: power cut {} the 3rd fsync on \"wal\" (armed",
            when.trim_start_matches("--")
        )),
        "{text}"
    );

    let wal = m.path("wal");
    let mut child = spawn_python(WAL_WRITER, &[wal.to_str().unwrap()]);
    let (signal, out) = finish(&mut child, "the WAL writer");
    assert_eq!(
        signal,
        Some(libc::SIGKILL),
        "the crash point must kill the writer; it printed {out:?}"
    );
    let last = wait_cut_done(&m);
    (m, last, out)
}

#[test]
fn crash_right_after_the_third_fsync_of_the_wal() {
    let (m, last, out) = wal_crash("--after");
    // The third fsync was applied, but its answer never reached the program.
    assert_eq!(
        out, "synced 0\nsynced 1\n",
        "the writer saw the 3rd fsync return"
    );
    assert_eq!(read_all(&m.path("wal")), records(3));
    assert_eq!(last["op"], "fsync", "{last}");
    assert_eq!(last["when"], "after", "{last}");
    assert_eq!(last["path"], "wal", "{last}");
    let rep = &last["report"];
    assert_eq!(
        num(rep, "lost_bytes"),
        0,
        "nothing unsynced was left: {rep}"
    );
    assert!(
        rep["killed"].as_array().is_some_and(|k| !k.is_empty()),
        "the cut reports the writer killed: {rep}"
    );
    let st = m.status_json();
    assert_eq!(st["faults"]["crash_point"]["fired"], true, "{st}");
    assert_eq!(num(&st, "powercuts"), 1, "{st}");
    let text = output_text(&m.lossctl(&["status", m.mnt.to_str().unwrap()]));
    assert!(text.contains("(fired, 3 matched so far)"), "{text}");
    assert!(
        text.contains("last crash-point cut: at after fsync on \"wal\": power cut on"),
        "{text}"
    );
    // The mount works on: a new program can append.
    fs::write(m.path("after"), b"x").unwrap();
    assert_eq!(read_all(&m.path("after")), b"x");
}

#[test]
fn crash_right_before_the_third_fsync_loses_its_record() {
    let (m, last, out) = wal_crash("--before");
    assert_eq!(out, "synced 0\nsynced 1\n");
    assert_eq!(read_all(&m.path("wal")), records(2));
    let rep = &last["report"];
    // With the writeback cache the kernel writes the record's whole page back, from the
    // start of the file: the unchanged bytes before the record count as rewritten, and
    // their rewrite as lost (the content is the durable one either way).
    let lost = if writeback_cache() { 3 * REC } else { REC };
    assert_eq!(
        num(rep, "lost_bytes"),
        lost as u64,
        "the 3rd record was written but never synced: {rep}"
    );
}

/// Writes a new version to a temp file, fsyncs it, renames it over `current`.
const REPLACER: &str = r#"
import os, sys
d = sys.argv[1]
fd = os.open(os.path.join(d, "current.tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, b"new version")
os.fsync(fd)
os.close(fd)
os.rename(os.path.join(d, "current.tmp"), os.path.join(d, "current"))
print("renamed", flush=True)
"#;

fn rename_crash(when: &str) -> Mount {
    let m = Mount::new(&[]);
    fs::write(m.path("current"), b"old version").unwrap();
    m.sync();
    ctl(
        &m,
        &["arm", "powercut"],
        &["--op", "rename", "--path", "current", when],
    );
    let mut child = spawn_python(REPLACER, &[m.mnt.to_str().unwrap()]);
    let (signal, out) = finish(&mut child, "the replacer");
    assert_eq!(signal, Some(libc::SIGKILL), "printed {out:?}");
    assert_eq!(out, "", "the replacer must not see the rename return");
    let last = wait_cut_done(&m);
    assert_eq!(last["op"], "rename", "{last}");
    m
}

#[test]
fn crash_before_a_rename_keeps_the_old_file() {
    let m = rename_crash("--before");
    assert_eq!(read_all(&m.path("current")), b"old version");
    // The temp file was fsynced (and names are durable at once in this model).
    assert_eq!(read_all(&m.path("current.tmp")), b"new version");
}

#[test]
fn crash_after_a_rename_has_the_new_file() {
    let m = rename_crash("--after");
    assert_eq!(read_all(&m.path("current")), b"new version");
    assert!(!m.path("current.tmp").exists());
}

#[test]
fn disarm_and_bad_crash_points() {
    let m = Mount::new(&[]);
    let mnt = m.mnt.to_str().unwrap();
    ctl(&m, &["arm", "powercut"], &["--op", "write"]);
    let st = ctl(&m, &["disarm"], &[]);
    assert!(st["crash_point"].is_null(), "{st}");
    // Disarmed: writes go through and nothing is killed.
    fs::write(m.path("f"), b"data").unwrap();
    assert_eq!(num(&m.status_json(), "powercuts"), 0);

    let out = m.lossctl(&["arm", "powercut", mnt, "--op", "fsink"]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(output_text(&out).contains("unknown operation \"fsink\""));
    let out = m.lossctl(&["arm", "powercut", mnt, "--op", "write", "--path", "a[b"]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("unclosed"),
        "{}",
        output_text(&out)
    );
    let out = m.lossctl(&[
        "arm", "powercut", mnt, "--op", "write", "--before", "--after",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
}

/// `lossfs run` counts a crash-point cut as a power cut: its program's death ends the run
/// with 137 and the power-cut message, not as an ordinary SIGKILL.
#[test]
fn lossfs_run_tells_a_crash_point_cut_from_other_deaths() {
    use lossfs_tests::{check_preconditions, is_lossfs_mounted, lossfs_bin, unique_tmp_dir};
    use lossfs_tests::{wait_bounded, ChildGuard};
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    check_preconditions();
    let root = unique_tmp_dir("cprun");
    let (backing, mnt) = (root.join("backing"), root.join("mnt"));
    fs::create_dir(&backing).unwrap();
    fs::create_dir(&mnt).unwrap();
    let stderr_path = root.join("run.stderr");
    let prog = format!(
        "cd {m} && while [ ! -e go ]; do sleep 0.05; done; printf x > f && sync f; exec sleep 300",
        m = mnt.display()
    );
    let mut run = ChildGuard(
        Command::new(lossfs_bin())
            .args(["run", "--backing"])
            .arg(&backing)
            .arg("--mount")
            .arg(&mnt)
            .args(cache_args())
            .args(["--", "sh", "-c", &prog])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("spawn lossfs run"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !is_lossfs_mounted(&mnt) {
        assert!(Instant::now() < deadline, "lossfs run did not mount");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mnt_s = mnt.to_str().unwrap();
    let out = lossfs_tests::lossctl(&[
        "arm", "powercut", mnt_s, "--op", "fsync", "--path", "f", "--after",
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    fs::write(mnt.join("go"), b"").unwrap();
    let st = wait_bounded(&mut run.0, Duration::from_secs(60)).expect("lossfs run ended");
    let err = fs::read_to_string(&stderr_path).unwrap_or_default();
    assert_eq!(st.code(), Some(137), "{st:?}: {err}");
    assert_eq!(st.signal(), None);
    assert!(err.contains("was killed by a power cut"), "{err}");
    assert!(!is_lossfs_mounted(&mnt), "the run unmounts at its end");
    assert_eq!(
        fs::read(backing.join("f")).unwrap(),
        b"x",
        "the fsync was applied"
    );
    let _ = fs::remove_dir_all(&root);
}
