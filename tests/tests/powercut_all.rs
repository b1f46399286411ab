//! `lossctl powercut --all` cuts every lossfs mount on the host at once.  This file holds a
//! single test: cargo runs test binaries one after another, so while it runs no other test's
//! mount exists (it refuses to run if some other lossfs mount is up, rather than cut it).

use lossfs_tests::*;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn powercut_all_cuts_every_mount_and_kills_their_users() {
    check_preconditions();
    let others = lossfs::mountinfo::lossfs_mounts().expect("read mountinfo");
    assert!(
        others.is_empty(),
        "refusing to run: other lossfs mounts are up and --all would cut them: {:?}",
        others.iter().map(|m| &m.mount_point).collect::<Vec<_>>()
    );
    let a = Mount::new(&[]);
    let mut b = Mount::new(&[]);
    let mut users = Vec::new();
    for m in [&a, &b] {
        std::fs::write(m.path("synced"), b"kept").unwrap();
        let f = std::fs::OpenOptions::new()
            .append(true)
            .open(m.path("synced"))
            .unwrap();
        f.sync_all().unwrap();
        std::fs::write(m.path("unsynced"), b"gone").unwrap();
        // A program holding a file on the mount.
        let holder = std::fs::File::open(m.path("synced")).unwrap();
        users.push(ChildGuard(
            Command::new("sleep")
                .arg("600")
                .stdin(Stdio::from(holder))
                .spawn()
                .unwrap(),
        ));
    }
    let reports = cut_all(&[]);
    let reports = reports.as_array().expect("a JSON array");
    assert_eq!(reports.len(), 2, "one report per mount: {reports:?}");
    for m in [&a, &b] {
        let mp = m.mnt.display().to_string();
        let r = reports
            .iter()
            .find(|r| r["mountpoint"] == mp.as_str())
            .unwrap_or_else(|| panic!("no report for {mp}: {reports:?}"));
        assert_eq!(r["lost_bytes"], 4, "{r}");
        assert_eq!(r["killed"].as_array().map(|k| k.len()), Some(1), "{r}");
        assert_eq!(std::fs::read(m.path("synced")).unwrap(), b"kept");
        assert_eq!(std::fs::read(m.path("unsynced")).unwrap(), b"");
    }
    for u in users.iter_mut() {
        let status = wait_bounded(&mut u.0, Duration::from_secs(10)).expect("user reaped");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "killed by the cut");
    }
    // --keep goes to every mount, with one seed.
    for m in [&a, &b] {
        std::fs::write(m.path("unsynced"), b"maybe").unwrap();
    }
    let reports = cut_all(&["--no-kill", "--keep", "all"]);
    for r in reports.as_array().expect("a JSON array") {
        assert_eq!(r["keep"], "all", "{r}");
        assert_eq!(r["lost_bytes"], 0, "{r}");
    }
    for m in [&a, &b] {
        assert_eq!(std::fs::read(m.path("unsynced")).unwrap(), b"maybe");
    }
    let reports = cut_all(&["--no-kill", "--keep", "prefix"]);
    let seeds: Vec<&serde_json::Value> = reports
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|r| &r["seed"])
        .collect();
    assert_eq!(seeds.len(), 2);
    assert!(
        seeds[0].is_u64() && seeds[0] == seeds[1],
        "one seed: {reports}"
    );

    // A mount whose daemon is gone is reported too, in the JSON, and fails the command.
    b.kill_daemon();
    let out = run_bounded(
        Command::new(lossctl_bin()).args(["powercut", "--all", "--no-kill", "--json"]),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(3), "{}", output_text(&out));
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", output_text(&out)));
    let reports = reports.as_array().expect("a JSON array");
    assert_eq!(reports.len(), 2, "one entry per mount: {reports:?}");
    let entry = |m: &Mount| {
        let mp = m.mnt.display().to_string();
        reports
            .iter()
            .find(|r| r["mountpoint"] == mp.as_str())
            .unwrap_or_else(|| panic!("no entry for {mp}: {reports:?}"))
            .clone()
    };
    assert_eq!(entry(&a)["lost_bytes"], 0, "{reports:?}");
    let dead = entry(&b);
    assert_eq!(dead["exit_code"], 3, "{dead}");
    assert!(
        dead["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot connect")),
        "{dead}"
    );
}

/// `lossctl powercut --all ARGS --json`, asserting success; the parsed array of reports.
fn cut_all(args: &[&str]) -> serde_json::Value {
    let out = run_bounded(
        Command::new(lossctl_bin())
            .args(["powercut", "--all"])
            .args(args)
            .arg("--json"),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "powercut --all {args:?}: {}",
        output_text(&out)
    );
    serde_json::from_slice(&out.stdout).expect("--all --json prints a JSON array")
}
