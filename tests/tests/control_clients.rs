//! Who may use the control socket, and what several clients at once get: a client running as
//! another uid is refused with a clear message (by the socket's mode, and by the daemon's
//! SO_PEERCRED check when the mode lets it through); concurrent powercut, sync and status
//! requests are served one at a time, so every unsynced byte is either synced once or lost
//! once, never both, never twice.

use lossfs_tests::{
    lossctl_bin, num, output_text, pattern, read_all, run_bounded, writeback_cache, Mount,
    CMD_TIMEOUT,
};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};
use std::thread;

/// The uid and gid of Debian's `nobody`/`nogroup`.
const NOBODY: u32 = 65534;

/// `lossctl ARGS` run as uid/gid `nobody` (std drops the supplementary groups too).
fn lossctl_as_nobody(args: &[&str]) -> Output {
    let mut c = Command::new(lossctl_bin());
    c.args(args).uid(NOBODY).gid(NOBODY);
    run_bounded(&mut c, CMD_TIMEOUT)
}

#[test]
fn a_client_with_another_uid_is_refused() {
    // allow_other: nobody may look at the mount point, so lossctl gets as far as the socket.
    let mut m = Mount::new(&["allow_other"]);
    let mnt = m.mnt.to_str().expect("utf-8 mount path").to_string();
    let sock = m.control_socket();

    // The socket is 0600, root's: the kernel refuses the connection.
    let out = lossctl_as_nobody(&["status", &mnt]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{}", output_text(&out));
    assert!(
        err.contains("Permission denied")
            && err.contains("only root and the user running the lossfs daemon"),
        "unclear message for a refused connection:\n{}",
        output_text(&out)
    );

    // With the mode opened up, the daemon's peer-credential check still refuses, and says
    // who may.
    fs::set_permissions(&sock, fs::Permissions::from_mode(0o666)).unwrap();
    for cmd in ["status", "sync", "powercut"] {
        let out = lossctl_as_nobody(&[cmd, &mnt]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd}: {}", output_text(&out));
        assert!(
            err.contains(&format!(
                "permission denied: uid {NOBODY} may not control this lossfs (only root and uid 0)"
            )),
            "{cmd}: unclear refusal:\n{}",
            output_text(&out)
        );
    }
    fs::set_permissions(&sock, fs::Permissions::from_mode(0o600)).unwrap();

    // Nothing was done for the refused clients, and root is still served.
    let st = m.status_json();
    assert_eq!(num(&st, "powercuts"), 0, "{st}");
    assert!(m.daemon_alive(), "daemon died:\n{}", m.daemon_stderr());
}

/// Durable and unsynced content in a few files; returns the unsynced byte count.
fn dirty(m: &Mount, round: u8) -> u64 {
    let mut unsynced = 0;
    for i in 0..4u8 {
        let p = m.path(&format!("f{i}"));
        let base = pattern(round * 16 + i, 0, 8192);
        fs::write(&p, &base).unwrap();
        OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .sync_all()
            .unwrap();
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        // An overwrite of durable bytes and an append.
        f.write_all_at(&pattern(round * 16 + i + 8, 100, 1000), 100)
            .unwrap();
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(&pattern(round * 16 + i + 9, 8192, 3000))
            .unwrap();
        // With the writeback cache the overwrite reaches lossfs as its whole page (0..4096).
        unsynced += if writeback_cache() { 4096 } else { 1000 } + 3000;
    }
    unsynced
}

#[test]
fn concurrent_clients_are_served_one_at_a_time() {
    let m = Mount::new(&[]);
    let mnt = m.mnt.to_str().expect("utf-8 mount path").to_string();
    let mut cuts_total = 0;
    for round in 0..3u8 {
        let unsynced = dirty(&m, round);
        let st = m.status_json();
        assert_eq!(num(&st, "unsynced_bytes"), unsynced, "{st}");

        // Eight clients, each a mix of the three commands, all at once.
        let cmds: Vec<Vec<&str>> = (0..8)
            .map(|c| match (c + round as usize) % 3 {
                0 => vec!["powercut", "--no-kill"],
                1 => vec!["sync"],
                _ => vec!["status"],
            })
            .collect();
        let answers: Vec<(Vec<&str>, serde_json::Value)> = thread::scope(|s| {
            let hs: Vec<_> = cmds
                .iter()
                .map(|cmd| {
                    let mnt = mnt.as_str();
                    s.spawn(move || {
                        let mut args = vec![cmd[0], mnt];
                        args.extend_from_slice(&cmd[1..]);
                        args.push("--json");
                        let out = lossfs_tests::lossctl(&args);
                        assert!(out.status.success(), "{args:?}: {}", output_text(&out));
                        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
                            .unwrap_or_else(|e| panic!("{args:?}: bad JSON {e}"));
                        (cmd.clone(), v)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });

        let (mut lost, mut synced, mut losing_cuts) = (0, 0, 0);
        for (cmd, v) in &answers {
            match cmd[0] {
                "powercut" => {
                    cuts_total += 1;
                    let l = num(v, "lost_bytes");
                    lost += l;
                    losing_cuts += u64::from(l > 0);
                }
                "sync" => synced += num(v, "bytes_synced"),
                _ => {
                    // A status sees the state between two requests, never half of a cut or a
                    // sync: all the unsynced bytes or none.
                    let u = num(v, "unsynced_bytes");
                    assert!(
                        u == 0 || u == unsynced,
                        "round {round}: status saw {u}: {v}"
                    );
                }
            }
        }
        // Served one at a time: each unsynced byte was made durable once or lost once.
        assert_eq!(
            lost + synced,
            unsynced,
            "round {round}: lost {lost} + synced {synced} != unsynced {unsynced}: {answers:?}"
        );
        assert!(
            losing_cuts <= 1,
            "round {round}: several cuts lost data: {answers:?}"
        );
        for i in 0..4u8 {
            let got = read_all(&m.path(&format!("f{i}")));
            let mut want = pattern(round * 16 + i, 0, 8192);
            if lost == 0 {
                want[100..1100].copy_from_slice(&pattern(round * 16 + i + 8, 100, 1000));
                want.extend_from_slice(&pattern(round * 16 + i + 9, 8192, 3000));
            }
            assert!(
                got == want,
                "round {round}: f{i} is neither rolled back nor kept whole"
            );
        }
        let st = m.status_json();
        assert_eq!(num(&st, "unsynced_bytes"), 0, "{st}");
        assert_eq!(num(&st, "powercuts"), cuts_total, "{st}");
    }
}
