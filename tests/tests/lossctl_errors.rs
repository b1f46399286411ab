//! `lossctl` exit codes and messages on paths that are not lossfs mounts.

use lossfs_tests::{check_preconditions, lossctl, output_text, unique_tmp_dir};

#[test]
fn not_a_lossfs_mount_exits_3() {
    check_preconditions();
    for args in [
        vec!["status", "/tmp"],
        vec!["status", "/tmp", "--json"],
        vec!["sync", "/tmp"],
        vec!["powercut", "/tmp", "--no-kill"],
    ] {
        let out = lossctl(&args);
        assert_eq!(
            out.status.code(),
            Some(3),
            "lossctl {args:?}:\n{}",
            output_text(&out)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("/tmp") || err.to_lowercase().contains("lossfs"),
            "lossctl {args:?} should say /tmp is not a lossfs mount:\n{}",
            output_text(&out)
        );
    }
}

#[test]
fn plain_directory_exits_3() {
    check_preconditions();
    let d = unique_tmp_dir("ctl");
    let out = lossctl(&["status", d.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&d);
    assert_eq!(out.status.code(), Some(3), "{}", output_text(&out));
    assert!(!out.stderr.is_empty(), "no message: {}", output_text(&out));
}

#[test]
fn missing_path_exits_3() {
    check_preconditions();
    let p = "/tmp/lossfs_t_definitely_missing_path/x";
    for cmd in ["status", "sync", "powercut"] {
        let out = lossctl(&[cmd, p]);
        assert_eq!(
            out.status.code(),
            Some(3),
            "lossctl {cmd} {p}:\n{}",
            output_text(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(p),
            "message should name the missing path:\n{}",
            output_text(&out)
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    check_preconditions();
    for args in [vec!["frobnicate"], vec!["status", "--no-such-flag", "/tmp"]] {
        let out = lossctl(&args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "lossctl {args:?}:\n{}",
            output_text(&out)
        );
        assert!(
            !out.stderr.is_empty(),
            "no usage message:\n{}",
            output_text(&out)
        );
    }
}
