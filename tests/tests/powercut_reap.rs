//! `lossctl powercut` returns only once the processes it killed are reaped (their pids
//! free, as a program checking its pid file needs), except for zombies of the caller's own
//! family, and reports the ones that were not.

use lossfs_tests::{first_stdout_line, spawn_python, ChildGuard, Mount};
use std::time::Duration;

/// A python3 parent (outside the mount) of a child that sits in the mount; the parent
/// prints the child's pid, then reaps it `reap` seconds after it dies (never if None).
fn parent_of_mount_user(m: &Mount, reap: Option<f64>) -> (ChildGuard, i32) {
    let script = format!(
        "import os,sys,time\n\
         pid=os.fork()\n\
         if pid==0:\n    os.chdir({mnt:?})\n    time.sleep(1000)\n    os._exit(0)\n\
         time.sleep(0.2)\n\
         print(pid,flush=True)\n\
         reap={reap}\n\
         while True:\n\
         \x20   time.sleep(reap if reap is not None else 1000)\n\
         \x20   if reap is not None:\n\
         \x20       try:\n\
         \x20           if os.waitpid(pid,os.WNOHANG)[0]==pid: break\n\
         \x20       except ChildProcessError: break\n\
         time.sleep(1000)\n",
        mnt = m.mnt.to_str().unwrap(),
        reap = reap.map_or("None".to_string(), |r| r.to_string()),
    );
    let mut g = spawn_python(&script, &[]);
    let line = first_stdout_line(&mut g, Duration::from_secs(15))
        .expect("the python parent did not print its child's pid within 15 s");
    let pid = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("python parent printed {line:?}"));
    (g, pid)
}

fn state_of(pid: i32) -> Option<char> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    text[text.rfind(')')? + 1..].trim_start().chars().next()
}

fn killed_pids(rep: &serde_json::Value, key: &str) -> Vec<i64> {
    rep[key]
        .as_array()
        .map(|a| a.iter().filter_map(|k| k["pid"].as_i64()).collect())
        .unwrap_or_default()
}

#[test]
fn powercut_returns_after_the_parent_reaped_what_it_killed() {
    let m = Mount::new(&[]);
    // The parent reaps half a second late, as a busy supervisor does.
    let (_parent, child) = parent_of_mount_user(&m, Some(0.5));
    let rep = m.powercut_json();
    assert!(
        killed_pids(&rep, "killed").contains(&(child as i64)),
        "the child in the mount was killed: {rep}"
    );
    assert_eq!(
        state_of(child),
        None,
        "pid {child} still exists when powercut returned: {rep}"
    );
    assert!(rep.get("unreaped").is_none(), "{rep}");
}

#[test]
fn powercut_reports_a_zombie_its_parent_never_reaps() {
    let m = Mount::new(&[]);
    let (parent, child) = parent_of_mount_user(&m, None);
    let rep = m.powercut_json();
    let unreaped = rep["unreaped"]
        .as_array()
        .unwrap_or_else(|| panic!("no unreaped list: {rep}"));
    let entry = unreaped
        .iter()
        .find(|u| u["pid"].as_i64() == Some(child as i64))
        .unwrap_or_else(|| panic!("pid {child} is not listed as unreaped: {rep}"));
    assert_eq!(entry["zombie"], true, "{rep}");
    assert_eq!(
        entry["parent"].as_i64(),
        Some(parent.0.id() as i64),
        "{rep}"
    );
    assert_eq!(state_of(child), Some('Z'));
}

#[test]
fn powercut_does_not_wait_for_zombies_of_its_caller() {
    let m = Mount::new(&[]);
    // This test process is the parent: it cannot reap before lossctl returns.
    let child = ChildGuard(
        std::process::Command::new("sleep")
            .arg("1000")
            .current_dir(&m.mnt)
            .spawn()
            .expect("spawn sleep"),
    );
    let pid = child.0.id() as i32;
    let rep = m.powercut_json();
    assert!(killed_pids(&rep, "killed").contains(&(pid as i64)), "{rep}");
    assert!(
        rep.get("unreaped").is_none(),
        "a zombie of lossctl's own parent is not waited for nor reported: {rep}"
    );
    assert_eq!(state_of(pid), Some('Z'), "left for this process to reap");
}
