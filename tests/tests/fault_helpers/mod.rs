//! Helpers shared by the crash point and fault injection tests: `lossctl` calls that must
//! succeed, python3 children, and waiting for a crash-point cut to finish.

#![allow(dead_code)]

use lossfs_tests::{output_text, wait_bounded, ChildGuard, Mount};
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::thread;
use std::time::{Duration, Instant};

/// `lossctl ARGS... MNT --json` (the mount point after the subcommand words), asserting
/// success; the parsed answer.
pub fn ctl(m: &Mount, words: &[&str], flags: &[&str]) -> serde_json::Value {
    let mnt = m.mnt.to_str().expect("utf-8 mount path");
    let mut args: Vec<&str> = words.to_vec();
    args.push(mnt);
    args.extend_from_slice(flags);
    args.push("--json");
    let out = m.lossctl(&args);
    assert!(
        out.status.success(),
        "lossctl {args:?} failed: {}",
        output_text(&out)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("lossctl {args:?}: bad JSON ({e}): {}", output_text(&out)))
}

/// Waits (bounded) for the child to end; returns the signal that killed it (None if it
/// exited) and its stdout.
pub fn finish(g: &mut ChildGuard, what: &str) -> (Option<i32>, String) {
    let st = wait_bounded(&mut g.0, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("{what} still running after 60 s"));
    let mut out = String::new();
    if let Some(mut o) = g.0.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    let mut err = String::new();
    if let Some(mut e) = g.0.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    if st.signal().is_none() && !st.success() {
        panic!("{what} failed ({st:?}): stdout {out:?} stderr {err:?}");
    }
    (st.signal(), out)
}

/// Waits (bounded) until the last crash-point cut is over; its `last_cut` status.
pub fn wait_cut_done(m: &Mount) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = m.status_json();
        let last = &st["faults"]["last_cut"];
        if last["done"] == serde_json::Value::Bool(true) {
            return last.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the crash-point cut did not finish within 60 s: {st}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// The raw errno of an I/O result that must have failed.
pub fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("error without errno: {e}")),
    }
}
