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
    // A seeded cut: one host seed, and per mount a seed derived from it and the mount point,
    // so two mounts holding the same files under the same names (replicas) keep different
    // blocks, and each replays alone from its own seed.
    let blocks = 64usize;
    let old: Vec<u8> = vec![b'o'; blocks * 4096];
    let new: Vec<u8> = vec![b'n'; blocks * 4096];
    let overwrite = |m: &Mount| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(m.path("blocks"))
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &new, 0).unwrap();
    };
    for m in [&a, &b] {
        std::fs::write(m.path("blocks"), &old).unwrap();
        std::fs::File::open(m.path("blocks"))
            .unwrap()
            .sync_all()
            .unwrap();
        overwrite(m);
    }
    let reports = cut_all(&["--no-kill", "--keep", "random", "--seed", "7"]);
    let seed_of = |m: &Mount| -> u64 {
        let mp = m.mnt.display().to_string();
        let r = reports
            .as_array()
            .expect("a JSON array")
            .iter()
            .find(|r| r["mountpoint"] == mp.as_str())
            .unwrap_or_else(|| panic!("no report for {mp}: {reports}"));
        assert_eq!(r["host_seed"], 7, "{r}");
        r["seed"].as_u64().unwrap_or_else(|| panic!("no seed: {r}"))
    };
    let (seed_a, seed_b) = (seed_of(&a), seed_of(&b));
    assert_ne!(
        seed_a, seed_b,
        "each mount draws from its own seed: {reports}"
    );
    let kept_a = std::fs::read(a.path("blocks")).unwrap();
    let kept_b = std::fs::read(b.path("blocks")).unwrap();
    for k in [&kept_a, &kept_b] {
        assert!(
            k.contains(&b'o') && k.contains(&b'n'),
            "a random subset kept"
        );
    }
    assert_ne!(kept_a, kept_b, "two mounts, two crash states");
    // The same command replays both; one mount's seed replays that mount alone.
    overwrite(&a);
    overwrite(&b);
    cut_all(&["--no-kill", "--keep", "random", "--seed", "7"]);
    assert_eq!(std::fs::read(a.path("blocks")).unwrap(), kept_a);
    assert_eq!(std::fs::read(b.path("blocks")).unwrap(), kept_b);
    overwrite(&b);
    let out = run_bounded(
        Command::new(lossctl_bin())
            .arg("powercut")
            .arg(&b.mnt)
            .args(["--no-kill", "--keep", "random", "--seed"])
            .arg(seed_b.to_string()),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(std::fs::read(b.path("blocks")).unwrap(), kept_b);

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
