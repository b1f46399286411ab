//! NATS 2.9 with JetStream for the scenarios: a cluster member on 127.0.0.1 and a
//! minimal client of the core text protocol (CONNECT, PING/PONG, SUB, PUB with a reply
//! subject, MSG/HMSG), enough to call the JetStream API (`$JS.API.*`) and publish with
//! acknowledgements.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{free_port, require_program, Server};

/// How long one request waits for its reply.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The subscription receiving every reply.
const INBOX: &str = "_INBOX.lossfs";

/// One message delivered to the client.
#[derive(Debug, PartialEq, Eq)]
pub struct Msg {
    /// Subject it was published to.
    pub subject: String,
    /// Headers block (`NATS/1.0 503\r\n...`) of an HMSG, empty for a MSG.
    pub headers: String,
    /// Payload.
    pub payload: Vec<u8>,
}

/// A connection to one NATS server.
pub struct Client {
    w: TcpStream,
    r: BufReader<TcpStream>,
    next_reply: u64,
}

impl Client {
    /// Connects to 127.0.0.1:`port`, reads the server's INFO, sends CONNECT and
    /// subscribes to the reply inbox; a PING/PONG round trip confirms all of it.
    pub fn connect(port: u16) -> Result<Client, String> {
        let s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))?;
        s.set_read_timeout(Some(REQUEST_TIMEOUT))
            .map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(REQUEST_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
        let mut c = Client {
            w: s,
            r,
            next_reply: 0,
        };
        let info = c.line()?;
        if !info.starts_with("INFO ") {
            return Err(format!("expected INFO from 127.0.0.1:{port}, got {info:?}"));
        }
        // headers + no_responders: a request nobody serves (no stream leader yet) is
        // answered at once with a 503 status instead of timing out.
        c.send(&format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true,\
             \"no_responders\":true,\"lang\":\"rust\",\"version\":\"0\"}}\r\n\
             SUB {INBOX}.* 1\r\nPING\r\n"
        ))?;
        loop {
            let l = c.line()?;
            match l.as_str() {
                "PONG" => return Ok(c),
                "PING" => c.send("PONG\r\n")?,
                _ if l.starts_with("-ERR") => return Err(format!("server: {l}")),
                _ => {}
            }
        }
    }

    fn send(&mut self, s: &str) -> Result<(), String> {
        self.w
            .write_all(s.as_bytes())
            .map_err(|e| format!("send to nats: {e}"))
    }

    fn line(&mut self) -> Result<String, String> {
        let mut l = String::new();
        let n = self
            .r
            .read_line(&mut l)
            .map_err(|e| format!("read from nats: {e}"))?;
        if n == 0 || !l.ends_with("\r\n") {
            return Err(format!("connection closed (got {l:?})"));
        }
        l.truncate(l.len() - 2);
        Ok(l)
    }

    /// Reads the next MSG or HMSG, answering the server's PINGs on the way.
    fn next_msg(&mut self) -> Result<Msg, String> {
        loop {
            let l = self.line()?;
            let f: Vec<&str> = l.split(' ').collect();
            match f[0] {
                "PING" => self.send("PONG\r\n")?,
                "MSG" | "HMSG" => return self.msg_body(&f),
                "-ERR" => return Err(format!("server: {l}")),
                _ => {}
            }
        }
    }

    /// The body of `MSG subject sid [reply] len` or `HMSG subject sid [reply] hlen len`.
    fn msg_body(&mut self, f: &[&str]) -> Result<Msg, String> {
        let num = |s: &str| {
            s.parse::<usize>()
                .map_err(|e| format!("bad length in {f:?}: {e}"))
        };
        let (hlen, len) = match (f[0], f.len()) {
            ("MSG", 4 | 5) => (0, num(f[f.len() - 1])?),
            ("HMSG", 5 | 6) => (num(f[f.len() - 2])?, num(f[f.len() - 1])?),
            _ => return Err(format!("bad message line {f:?}")),
        };
        if hlen > len {
            return Err(format!("header longer than message in {f:?}"));
        }
        let mut body = vec![0; len + 2];
        self.r
            .read_exact(&mut body)
            .map_err(|e| format!("read message body: {e}"))?;
        body.truncate(len);
        let payload = body.split_off(hlen);
        Ok(Msg {
            subject: f[1].to_string(),
            headers: String::from_utf8_lossy(&body).into_owned(),
            payload,
        })
    }

    /// Publishes `payload` to `subject` with a fresh reply subject and returns the reply
    /// (an HMSG status such as 503 "no responders" is an error).
    pub fn request(&mut self, subject: &str, payload: &[u8]) -> Result<String, String> {
        self.next_reply += 1;
        let reply = format!("{INBOX}.{}", self.next_reply);
        let mut req = format!("PUB {subject} {reply} {}\r\n", payload.len()).into_bytes();
        req.extend_from_slice(payload);
        req.extend_from_slice(b"\r\n");
        self.w
            .write_all(&req)
            .map_err(|e| format!("publish to {subject}: {e}"))?;
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            // A late reply to an earlier, timed-out request is skipped.
            let m = self.next_msg()?;
            if m.subject == reply {
                if !m.headers.is_empty() {
                    return Err(format!("{subject}: status {:?}", m.headers.trim_end()));
                }
                return Ok(String::from_utf8_lossy(&m.payload).into_owned());
            }
            if Instant::now() >= deadline {
                return Err(format!("{subject}: no reply within {REQUEST_TIMEOUT:?}"));
            }
        }
    }

    /// A JetStream API call: `Ok` with the reply unless it carries an `"error"`.
    pub fn js_api(&mut self, subject: &str, payload: &str) -> Result<String, String> {
        let r = self.request(subject, payload.as_bytes())?;
        if r.contains("\"error\"") {
            Err(format!("{subject}: {r}"))
        } else {
            Ok(r)
        }
    }
}

/// The unsigned number after `"key":` in a JSON reply (enough for the flat numbers
/// the scenarios read: a publish ack's `seq`, a stream state's `messages`).
pub fn json_u64(reply: &str, key: &str) -> Option<u64> {
    let pat = format!("\"{key}\":");
    let at = reply.find(&pat)? + pat.len();
    let digits: String = reply[at..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// One member of a NATS cluster on 127.0.0.1.
#[derive(Debug, Clone)]
pub struct Node {
    /// Server name (`server_name`).
    pub name: String,
    /// Client port.
    pub client: u16,
    /// Cluster (route) port.
    pub cluster: u16,
}

impl Node {
    /// A node with free client and cluster ports.
    pub fn new(name: &str) -> Node {
        Node {
            name: name.to_string(),
            client: free_port(),
            cluster: free_port(),
        }
    }

    /// Starts this node with JetStream storing in `store_dir`, routes to the other
    /// `nodes`, config and log in `cwd` (outside the mount). Does not wait: JetStream
    /// in a cluster is ready only once a quorum of nodes runs.
    pub fn spawn(&self, nodes: &[Node], store_dir: &Path, cwd: &Path) -> Server {
        let bin = require_program("nats-server", "nats-server");
        let routes: Vec<String> = nodes
            .iter()
            .filter(|n| n.name != self.name)
            .map(|n| format!("\"nats://127.0.0.1:{}\"", n.cluster))
            .collect();
        let cfg = format!(
            "server_name: \"{}\"\nlisten: \"127.0.0.1:{}\"\n\
             jetstream {{ store_dir: \"{}\" }}\n\
             cluster {{ name: \"lossfs\"\n listen: \"127.0.0.1:{}\"\n routes: [{}] }}\n",
            self.name,
            self.client,
            store_dir.display(),
            self.cluster,
            routes.join(", ")
        );
        let cfg_path = cwd.join(format!("nats-{}.conf", self.name));
        fs::write(&cfg_path, cfg).unwrap_or_else(|e| panic!("write {}: {e}", cfg_path.display()));
        let mut cmd = Command::new(bin);
        cmd.current_dir(cwd).arg("-c").arg(&cfg_path);
        let log = cwd.join(format!("nats-{}.log", self.name));
        Server::spawn(&format!("nats-server {}", self.name), &mut cmd, &log)
    }
}

#[cfg(test)]
mod tests {
    use super::json_u64;

    #[test]
    fn json_u64_reads_flat_numbers() {
        let ack = r#"{"stream":"S","seq":42}"#;
        assert_eq!(json_u64(ack, "seq"), Some(42));
        let info = r#"{"state":{"messages": 7,"bytes":100}}"#;
        assert_eq!(json_u64(info, "messages"), Some(7));
        assert_eq!(json_u64(info, "missing"), None);
    }
}
