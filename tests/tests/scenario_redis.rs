//! Scenario: Redis with an append-only file on a lossfs mount. N acknowledged SETs, a power
//! cut, a restart on the same mount, and a count of the keys that are still there.
//! `appendfsync no` and `everysec` lose acknowledged writes; `always` loses none.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use lossfs_tests::scenario::{
    free_port, lost_bytes, powercut, require_program, Server, Verdict, READY_TIMEOUT,
};
use lossfs_tests::Mount;

/// Acknowledged SETs per scenario.
const N: u64 = 500;

/// A minimal RESP client: one connection, one command at a time, bounded reads.
struct Resp {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

#[derive(Debug, PartialEq)]
enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(usize),
}

impl Resp {
    fn connect(port: u16) -> Result<Resp, String> {
        let s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
        Ok(Resp { w: s, r })
    }

    fn cmd(&mut self, args: &[&str]) -> Result<Reply, String> {
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.w
            .write_all(req.as_bytes())
            .map_err(|e| format!("send {args:?}: {e}"))?;
        self.reply()
    }

    fn line(&mut self) -> Result<String, String> {
        let mut l = String::new();
        let n = self
            .r
            .read_line(&mut l)
            .map_err(|e| format!("read reply: {e}"))?;
        if n == 0 || !l.ends_with("\r\n") {
            return Err(format!("connection closed mid-reply (got {l:?})"));
        }
        l.truncate(l.len() - 2);
        Ok(l)
    }

    fn reply(&mut self) -> Result<Reply, String> {
        let l = self.line()?;
        let (kind, rest) = l.split_at(1.min(l.len()));
        let int = |s: &str| {
            s.parse::<i64>()
                .map_err(|e| format!("bad reply {l:?}: {e}"))
        };
        match kind {
            "+" => Ok(Reply::Simple(rest.to_string())),
            "-" => Ok(Reply::Error(rest.to_string())),
            ":" => Ok(Reply::Int(int(rest)?)),
            "*" => Ok(Reply::Array(int(rest)?.max(0) as usize)),
            "$" => {
                let len = int(rest)?;
                if len < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let mut buf = vec![0u8; len as usize + 2];
                std::io::Read::read_exact(&mut self.r, &mut buf)
                    .map_err(|e| format!("read bulk: {e}"))?;
                buf.truncate(len as usize);
                Ok(Reply::Bulk(Some(buf)))
            }
            _ => Err(format!("unexpected reply line {l:?}")),
        }
    }
}

fn start_redis(m: &Mount, fsync: &str, port: u16) -> Server {
    let bin = require_program("redis-server", "redis-server");
    let mut cmd = Command::new(bin);
    cmd.current_dir(&m.root)
        .arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1", "--daemonize", "no", "--save", ""])
        .args(["--appendonly", "yes", "--appendfsync", fsync])
        .arg("--dir")
        .arg(m.path("redis"))
        .args(["--protected-mode", "no", "--logfile", ""]);
    let mut s = Server::spawn("redis-server", &mut cmd, &m.root.join("redis.log"));
    s.wait_port(port, READY_TIMEOUT);
    // Listening comes before the AOF is loaded; PING answers -LOADING until it is.
    s.wait_ready("loaded", READY_TIMEOUT, || {
        match Resp::connect(port)?.cmd(&["PING"])? {
            Reply::Simple(p) if p == "PONG" => Ok(()),
            r => Err(format!("PING: {r:?}")),
        }
    });
    s
}

/// Keys `k0..kN` that exist on the server.
fn count_keys(port: u16) -> u64 {
    let mut c = Resp::connect(port).unwrap_or_else(|e| panic!("{e}"));
    (0..N)
        .filter(|i| {
            let k = format!("k{i}");
            match c.cmd(&["EXISTS", &k]) {
                Ok(Reply::Int(n)) => n == 1,
                r => panic!("EXISTS {k}: {r:?}"),
            }
        })
        .count() as u64
}

fn scenario(fsync: &str) -> Verdict {
    require_program("redis-server", "redis-server");
    let m = Mount::new(&[]);
    std::fs::create_dir(m.path("redis")).unwrap_or_else(|e| panic!("mkdir redis dir: {e}"));
    let port = free_port();
    let mut server = start_redis(&m, fsync, port);

    let mut c = Resp::connect(port).unwrap_or_else(|e| panic!("{e}"));
    let mut acked = 0;
    for i in 0..N {
        let r = c
            .cmd(&["SET", &format!("k{i}"), &format!("value-{i}")])
            .unwrap_or_else(|e| panic!("SET k{i}: {e}\n{}", server.log_text()));
        assert_eq!(r, Reply::Simple("OK".into()), "SET k{i}");
        acked += 1;
    }
    drop(c);
    let rep = powercut(&m, &mut server);
    eprintln!(
        "redis appendfsync={fsync}: powercut lost {} bytes",
        lost_bytes(&rep)
    );
    drop(server);

    assert!(
        Path::new(&m.path("redis")).is_dir(),
        "redis dir gone after the cut"
    );
    let port = free_port();
    let mut server = start_redis(&m, fsync, port);
    let found = count_keys(port);
    let v = Verdict::new("redis", &format!("appendfsync={fsync}"), acked, found);
    v.print();
    server.stop();
    v
}

#[test]
fn redis_appendfsync_no_loses_acknowledged_sets() {
    scenario("no").assert_some_lost();
}

#[test]
fn redis_appendfsync_everysec_loses_acknowledged_sets() {
    // everysec fsyncs the AOF within about a second: the cut comes right after the last
    // acknowledged SET (the server is SIGSTOPped first), before the next background fsync.
    scenario("everysec").assert_some_lost();
}

#[test]
fn redis_appendfsync_always_keeps_every_acknowledged_set() {
    scenario("always").assert_none_lost();
}
