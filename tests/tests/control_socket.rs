//! Abuse of the control socket: malformed, oversized, half-closed and idle connections
//! get an error reply or a closed connection, never a crash or a hang.

use lossfs_tests::{lossctl, lossctl_bin, num, output_text, run_bounded, Mount, CMD_TIMEOUT};
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::time::Duration;

const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

fn connect(m: &Mount) -> UnixStream {
    let sock = m.control_socket();
    let s = UnixStream::connect(&sock).unwrap_or_else(|e| {
        panic!(
            "cannot connect to control socket {}: {e}\ndaemon stderr:\n{}",
            sock.display(),
            m.daemon_stderr()
        )
    });
    s.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(REPLY_TIMEOUT)).unwrap();
    s
}

/// What the daemon did with a request.
#[derive(Debug)]
enum Answer {
    Reply(serde_json::Value),
    Closed,
}

/// Reads one reply line, or notes a closed connection; panics on a hang or on junk.
fn read_answer(s: &mut UnixStream, what: &str) -> Answer {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.contains(&b'\n') {
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("{what}: no reply and no close within {REPLY_TIMEOUT:?} (hang)")
            }
            Err(e) => panic!("{what}: read error {e}"),
        }
    }
    if buf.is_empty() {
        return Answer::Closed;
    }
    let line = buf.split(|&c| c == b'\n').next().unwrap_or(&[]);
    let v: serde_json::Value = serde_json::from_slice(line).unwrap_or_else(|e| {
        panic!(
            "{what}: reply is not JSON ({e}): {:?}",
            String::from_utf8_lossy(line)
        )
    });
    Answer::Reply(v)
}

fn assert_error_or_closed(a: Answer, what: &str) {
    match a {
        Answer::Closed => {}
        Answer::Reply(v) => {
            assert_eq!(v["ok"], serde_json::Value::Bool(false), "{what}: {v}");
            assert!(
                v["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{what}: error reply without a message: {v}"
            );
        }
    }
}

/// Sends `data` (ignoring a write failing because the daemon already closed) and checks
/// the answer is an error or a close.
fn abuse(m: &Mount, data: &[u8], what: &str) {
    let mut s = connect(m);
    match s.write_all(data) {
        Ok(()) => {}
        Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => return,
        Err(e) => panic!("{what}: write failed: {e}"),
    }
    assert_error_or_closed(read_answer(&mut s, what), what);
}

fn assert_status_ok(m: &mut Mount, after: &str) {
    let mut s = connect(m);
    s.write_all(b"{\"v\":1,\"cmd\":\"status\"}\n").unwrap();
    match read_answer(&mut s, "status request") {
        Answer::Reply(v) => {
            assert_eq!(v["v"], 1, "{v}");
            assert_eq!(v["ok"], true, "{v}");
            assert!(v["result"].is_object(), "{v}");
        }
        Answer::Closed => panic!("valid status request after {after}: connection closed"),
    }
    assert!(
        m.daemon_alive(),
        "daemon died after {after}:\n{}",
        m.daemon_stderr()
    );
    let st = m.status_json();
    num(&st, "unsynced_bytes");
}

#[test]
fn socket_is_private() {
    let m = Mount::new(&[]);
    let meta = std::fs::metadata(m.control_socket())
        .unwrap_or_else(|e| panic!("control socket {}: {e}", m.control_socket().display()));
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "socket mode");
}

#[test]
fn malformed_requests_get_errors_and_daemon_survives() {
    let mut m = Mount::new(&[]);
    assert_status_ok(&mut m, "nothing");

    abuse(&m, b"hello, this is not json\n", "garbage line");
    assert_status_ok(&mut m, "garbage line");

    abuse(&m, b"\xff\xfe\x80\x00garbage\xc3\x28\n", "non-UTF-8 line");
    assert_status_ok(&mut m, "non-UTF-8 line");

    let mut big = vec![b'a'; 1 << 20];
    big[0] = b'"';
    big.push(b'\n');
    abuse(&m, &big, "1 MiB line");
    assert_status_ok(&mut m, "1 MiB line");

    let mut big_json = b"{\"v\":1,\"cmd\":\"status\",\"pad\":\"".to_vec();
    big_json.extend_from_slice(&vec![b'x'; 1 << 20]);
    big_json.extend_from_slice(b"\"}\n");
    {
        // Either an error (too long) or a normal answer is fine; no hang, no crash.
        let mut s = connect(&m);
        if s.write_all(&big_json).is_ok() {
            let _ = read_answer(&mut s, "1 MiB valid JSON");
        }
    }
    assert_status_ok(&mut m, "1 MiB JSON line");

    abuse(
        &m,
        b"{\"v\":1,\"cmd\":\"no-such-command\"}\n",
        "unknown cmd",
    );
    abuse(&m, b"{\"v\":99,\"cmd\":\"status\"}\n", "wrong version");
    abuse(&m, b"{\"cmd\":\"status\"}\n", "missing version");
    abuse(&m, b"[1,2,3]\n", "JSON array");
    abuse(&m, b"null\n", "JSON null");
    abuse(&m, b"{\"v\":1,\"cmd\":42}\n", "cmd not a string");
    assert_status_ok(&mut m, "bad requests");

    // A blank line may be answered with an error or skipped, but a request after it on the
    // same connection must still be served.
    {
        let mut s = connect(&m);
        s.write_all(b"\n{\"v\":1,\"cmd\":\"status\"}\n").unwrap();
        let mut served = false;
        let mut pending = Vec::new();
        let mut chunk = [0u8; 65536];
        while !served {
            match s.read(&mut chunk) {
                Ok(0) => panic!("blank line then status: connection closed before the reply"),
                Ok(n) => pending.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("blank line then status: no reply within {REPLY_TIMEOUT:?}: {e}"),
            }
            while let Some(pos) = pending.iter().position(|&c| c == b'\n') {
                let line: Vec<u8> = pending.drain(..=pos).collect();
                let v: serde_json::Value = serde_json::from_slice(&line).unwrap_or_else(|e| {
                    panic!("blank line then status: reply not JSON ({e}): {line:?}")
                });
                if v["ok"] == true {
                    served = true;
                } else {
                    assert!(v["error"].as_str().is_some(), "blank line: {v}");
                }
            }
        }
    }

    // Unknown cmd and wrong version specifically must get an error reply, not a close.
    for (req, what) in [
        (
            &b"{\"v\":1,\"cmd\":\"no-such-command\"}\n"[..],
            "unknown cmd",
        ),
        (&b"{\"v\":99,\"cmd\":\"status\"}\n"[..], "wrong version"),
    ] {
        let mut s = connect(&m);
        s.write_all(req).unwrap();
        match read_answer(&mut s, what) {
            Answer::Reply(v) => {
                assert_eq!(v["ok"], false, "{what}: {v}");
                assert!(v["error"].as_str().is_some(), "{what}: {v}");
            }
            Answer::Closed => panic!("{what}: connection closed without an error reply"),
        }
    }

    // Half-closed connections: partial request then shutdown(write), and a full one.
    {
        let mut s = connect(&m);
        s.write_all(b"{\"v\":1,\"cmd\":\"sta").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        assert_error_or_closed(
            read_answer(&mut s, "half-closed partial"),
            "half-closed partial",
        );
    }
    {
        let mut s = connect(&m);
        s.write_all(b"{\"v\":1,\"cmd\":\"status\"}\n").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        // A reply or a close, but bounded.
        let _ = read_answer(&mut s, "half-closed full request");
    }
    {
        let s = connect(&m);
        s.shutdown(Shutdown::Both).unwrap();
    }
    assert_status_ok(&mut m, "half-closed connections");
}

#[test]
fn idle_connection_does_not_block_others() {
    let mut m = Mount::new(&[]);
    let _idle = connect(&m);
    let mut partial = connect(&m);
    partial.write_all(b"{\"v\":1,").unwrap();
    // With two stalled clients holding connections, lossctl must still be served.
    assert_status_ok(&mut m, "idle connections");
    std::fs::write(m.path("f"), b"x").unwrap();
    let rep = m.powercut_nokill_json();
    assert_eq!(num(&rep, "lost_bytes"), 1, "{rep}");
}

/// The fault engine answers only root and the daemon's user, like every other command: a
/// client of another uid arms nothing, even when the socket's mode lets it connect.
#[test]
fn fault_commands_from_another_uid_are_refused() {
    use std::os::unix::process::CommandExt;
    let m = Mount::new(&["allow_other"]);
    let mnt = m.mnt.to_str().expect("utf-8").to_string();
    let sock = m.control_socket();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    for args in [
        &["arm", "powercut", &mnt, "--op", "fsync"][..],
        &["fault", "add", &mnt, "--op", "write", "--errno", "EIO"],
        &["fault", "disk-full", &mnt, "--limit", "0"],
    ] {
        let mut c = std::process::Command::new(lossctl_bin());
        c.args(args).uid(65534).gid(65534);
        let out = run_bounded(&mut c, CMD_TIMEOUT);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: {}",
            output_text(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("may not control this lossfs"),
            "{args:?}: {}",
            output_text(&out)
        );
    }
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = lossctl(&["fault", "list", &mnt, "--json"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let state: serde_json::Value = serde_json::from_slice(&out.stdout).expect("fault list JSON");
    assert!(
        state["crash_point"].is_null()
            && state["disk_full"].is_null()
            && state["faults"].as_array().is_some_and(|f| f.is_empty()),
        "a refused client changed the fault engine: {state}"
    );
}
