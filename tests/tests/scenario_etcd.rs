//! Scenario: a single-node etcd 3.4 with its data directory on a lossfs mount. N
//! acknowledged puts, a power cut, a restart on the same mount, and a count of the keys
//! that are still there. `--unsafe-no-fsync` loses acknowledged puts; the default keeps
//! them all.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::process::Command;
use std::time::Duration;

use lossfs_tests::scenario::{
    free_port, lost_bytes, powercut, require_program, Server, Verdict, CLIENT_TIMEOUT,
    READY_TIMEOUT,
};
use lossfs_tests::{output_text, run_bounded, Mount};

/// Acknowledged puts per scenario.
const N: u64 = 300;

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// One put through etcd's v3 JSON gateway (`POST /v3/kv/put`), which answers once the
/// put is committed by raft and applied. Ok if etcd acknowledged it.
fn put(port: u16, key: &str, value: &str) -> Result<(), String> {
    let body = format!(
        "{{\"key\":\"{}\",\"value\":\"{}\"}}",
        base64(key.as_bytes()),
        base64(value.as_bytes())
    );
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let req = format!(
        "POST /v3/kv/put HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("send put {key}: {e}"))?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .map_err(|e| format!("read put {key} reply: {e}"))?;
    if resp.starts_with("HTTP/1.1 200") && resp.contains("\"revision\"") {
        Ok(())
    } else {
        Err(format!("put {key}: {resp}"))
    }
}

struct Etcd {
    client: u16,
    peer: u16,
}

fn start_etcd(m: &Mount, e: &Etcd, unsafe_no_fsync: bool) -> Server {
    let bin = require_program("etcd", "etcd-server");
    let client = format!("http://127.0.0.1:{}", e.client);
    let peer = format!("http://127.0.0.1:{}", e.peer);
    let mut cmd = Command::new(bin);
    cmd.current_dir(&m.root)
        .args(["--name", "s1", "--data-dir"])
        .arg(m.path("etcd"))
        .args(["--listen-client-urls", &client])
        .args(["--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("s1={peer}")])
        .args(["--initial-cluster-state", "new"]);
    if unsafe_no_fsync {
        cmd.arg("--unsafe-no-fsync");
    }
    let mut s = Server::spawn("etcd", &mut cmd, &m.root.join("etcd.log"));
    s.wait_ready("healthy", READY_TIMEOUT, || {
        let o = etcdctl(e.client, &["endpoint", "health"]);
        if o.status.success() {
            Ok(())
        } else {
            Err(output_text(&o))
        }
    });
    s
}

fn etcdctl(port: u16, args: &[&str]) -> std::process::Output {
    let mut c = Command::new(require_program("etcdctl", "etcd-client"));
    c.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=127.0.0.1:{port}"))
        .args(["--dial-timeout=2s", "--command-timeout=10s"])
        .args(args);
    run_bounded(&mut c, CLIENT_TIMEOUT)
}

fn scenario(unsafe_no_fsync: bool) -> Verdict {
    require_program("etcdctl", "etcd-client");
    let m = Mount::new(&[]);
    let e = Etcd {
        client: free_port(),
        peer: free_port(),
    };
    let mut server = start_etcd(&m, &e, unsafe_no_fsync);
    // The freshly bootstrapped member (WAL, snapshot db, member id) is written back by a
    // real machine within seconds of the first start, long before the workload.
    m.sync();

    let mut acked = 0;
    for i in 0..N {
        put(e.client, &format!("k/{i:05}"), &format!("value-{i}"))
            .unwrap_or_else(|err| panic!("{err}\n--- log ---\n{}", server.log_text()));
        acked += 1;
    }
    let rep = powercut(&m, &mut server);
    eprintln!(
        "etcd unsafe_no_fsync={unsafe_no_fsync}: powercut lost {} bytes",
        lost_bytes(&rep)
    );
    drop(server);

    let e = Etcd {
        client: free_port(),
        peer: e.peer,
    };
    let mut server = start_etcd(&m, &e, unsafe_no_fsync);
    let o = etcdctl(e.client, &["get", "k/", "--prefix", "--keys-only"]);
    assert!(o.status.success(), "etcdctl get:\n{}", output_text(&o));
    let found = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.starts_with("k/"))
        .count() as u64;
    let setting = if unsafe_no_fsync {
        "--unsafe-no-fsync"
    } else {
        "default"
    };
    let v = Verdict::new("etcd", setting, acked, found);
    v.print();
    server.stop();
    v
}

#[test]
fn base64_matches_rfc4648() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
}

#[test]
fn etcd_unsafe_no_fsync_loses_acknowledged_puts() {
    scenario(true).assert_some_lost();
}

#[test]
fn etcd_default_keeps_every_acknowledged_put() {
    scenario(false).assert_none_lost();
}
