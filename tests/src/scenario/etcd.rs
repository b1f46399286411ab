//! etcd 3.4 for the scenarios: start a member (alone or in a cluster on 127.0.0.1), put
//! through the v3 JSON gateway, and list keys with `etcdctl`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::process::{Command, ExitStatus, Output};
use std::time::Duration;

use super::{base64, require_program, Server, CLIENT_TIMEOUT};
use crate::{output_text, run_bounded};

/// One put through etcd's v3 JSON gateway (`POST /v3/kv/put`), which answers once the
/// put is committed by raft and applied. Ok if etcd acknowledged it.
pub fn put(port: u16, key: &str, value: &str) -> Result<(), String> {
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

/// `etcdctl ARGS` (API v3) against the member serving clients on `port`, bounded.
pub fn etcdctl(port: u16, args: &[&str]) -> Output {
    let mut c = Command::new(require_program("etcdctl", "etcd-client"));
    c.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=127.0.0.1:{port}"))
        .args(["--dial-timeout=2s", "--command-timeout=10s"])
        .args(args);
    run_bounded(&mut c, CLIENT_TIMEOUT)
}

/// Keys under `prefix`, read from the member serving clients on `port` (a linearizable
/// read: it needs a leader).
pub fn keys(port: u16, prefix: &str) -> Vec<String> {
    let o = etcdctl(port, &["get", prefix, "--prefix", "--keys-only"]);
    assert!(o.status.success(), "etcdctl get:\n{}", output_text(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// One member of an etcd cluster on 127.0.0.1.
#[derive(Debug, Clone)]
pub struct Member {
    /// Member name (`--name`).
    pub name: String,
    /// Port serving clients.
    pub client: u16,
    /// Port serving peers.
    pub peer: u16,
}

impl Member {
    /// A member with free client and peer ports.
    pub fn new(name: &str) -> Member {
        Member {
            name: name.to_string(),
            client: super::free_port(),
            peer: super::free_port(),
        }
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer)
    }

    /// Starts this member with its data in `data_dir`, `cluster` being every member
    /// (itself included), without waiting for it: a member of a cluster is healthy only
    /// once a quorum runs. The working directory is `cwd` (outside the mount), the log
    /// goes to `cwd/etcd-NAME.log`.
    pub fn spawn(
        &self,
        cluster: &[Member],
        data_dir: &Path,
        cwd: &Path,
        unsafe_no_fsync: bool,
    ) -> Server {
        let bin = require_program("etcd", "etcd-server");
        let client = format!("http://127.0.0.1:{}", self.client);
        let initial: Vec<String> = cluster
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect();
        let mut cmd = Command::new(bin);
        cmd.current_dir(cwd)
            .args(["--name", &self.name, "--data-dir"])
            .arg(data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &self.peer_url()])
            .args(["--initial-advertise-peer-urls", &self.peer_url()])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-state", "new"]);
        if unsafe_no_fsync {
            // etcd 3.4.23 accepts it although `etcd --help` does not list it.
            cmd.arg("--unsafe-no-fsync");
        }
        let log = cwd.join(format!("etcd-{}.log", self.name));
        Server::spawn(&format!("etcd {}", self.name), &mut cmd, &log)
    }

    /// Waits (bounded) until `etcdctl endpoint health` succeeds on this member, i.e. it
    /// has a leader and answers a quorum read. `Err` with the exit status if the member
    /// exits first.
    pub fn wait_healthy(&self, server: &mut Server, timeout: Duration) -> Result<(), ExitStatus> {
        server
            .wait_ready_or_exit("healthy", timeout, || {
                let o = etcdctl(self.client, &["endpoint", "health"]);
                if o.status.success() {
                    Ok(())
                } else {
                    Err(output_text(&o))
                }
            })
            .map_err(|(st, _)| st)
    }
}
