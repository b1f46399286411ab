//! Scenario: a three-node NATS 2.9 JetStream cluster on 127.0.0.1 with a replicated
//! stream (R3), the same one-member sequence as the etcd cluster: only node C's store
//! directory is on the lossfs mount; A's and B's are plain directories.
//!
//! 1. A, B, C start; the stream is created with three replicas and all are current;
//!    `lossctl sync` makes C's store durable (stream and cluster metadata).
//! 2. A is stopped (SIGTERM, a clean shutdown): it has none of what follows.
//! 3. The client publishes N messages through C; each is acknowledged by JetStream once
//!    the stream leader and one follower (B and C, a majority) have it.
//! 4. B is stopped (SIGTERM): it keeps every message, but stays down.
//! 5. C's power is cut: C keeps only what it fsynced.
//! 6. A and C restart and form a majority of two; the client fetches every
//!    acknowledged sequence.
//!
//! NATS 2.9 writes JetStream messages to the OS and fsyncs lazily (no option makes it
//! sync every write: `sync_interval`/`sync: always` came in 2.10), so with its defaults
//! the acknowledged messages are lost. The control run cuts the power right after a
//! `lossctl sync`, the state a server syncing every write would leave: all kept.

use std::path::Path;

use lossfs_tests::scenario::nats::{json_u64, Client, Node};
use lossfs_tests::scenario::{base64, lost_bytes, powercut, Server, Verdict, READY_TIMEOUT};
use lossfs_tests::Mount;

/// Acknowledged publishes per scenario.
const N: u64 = 200;
const STREAM: &str = "LOSSFS";

fn stream_config() -> String {
    format!(
        "{{\"name\":\"{STREAM}\",\"subjects\":[\"lossfs.>\"],\"num_replicas\":3,\
         \"storage\":\"file\"}}"
    )
}

/// `$JS.API.STREAM.INFO` through the node serving clients on `port`.
fn stream_info(port: u16) -> Result<String, String> {
    Client::connect(port)?.js_api(&format!("$JS.API.STREAM.INFO.{STREAM}"), "")
}

/// Waits (bounded) until the stream answers through `node` with a leader among
/// `leaders` and `current` replicas reported current. `Err` with the exit status and
/// log if `server` exits first.
fn wait_stream(
    node: &Node,
    server: &mut Server,
    leaders: &[&Node],
    current: usize,
) -> Result<(), String> {
    server
        .wait_ready_or_exit("serving the stream", READY_TIMEOUT, || {
            let info = stream_info(node.client)?;
            let led = leaders
                .iter()
                .any(|n| info.contains(&format!("\"leader\":\"{}\"", n.name)));
            let cur = info.matches("\"current\":true").count();
            if led && cur >= current {
                Ok(())
            } else {
                Err(format!("stream not ready: {info}"))
            }
        })
        .map_err(|(st, last)| format!("{st:?}, last probe: {last}\n{}", server.log_text()))
}

fn payload(i: u64) -> String {
    format!("message-{i}")
}

/// Fetches sequence `seq` through the node serving clients on `port`: true if it holds
/// the payload that was acknowledged for it.
fn has_message(c: &mut Client, seq: u64) -> Result<bool, String> {
    let subject = format!("$JS.API.STREAM.MSG.GET.{STREAM}");
    // 503 "temporarily unavailable": the restarted nodes are still electing the stream's
    // leader; ask again, for a bounded time.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let r = loop {
        let r = c.request(&subject, format!("{{\"seq\":{seq}}}").as_bytes())?;
        if !r.contains("\"code\":503") || std::time::Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    if r.contains("\"code\":404") {
        return Ok(false);
    }
    if r.contains("\"error\"") {
        return Err(format!("{subject} seq {seq}: {r}"));
    }
    Ok(r.contains(&format!("\"data\":\"{}\"", base64(payload(seq).as_bytes()))))
}

/// The outcome after A and C restart.
enum Outcome {
    /// A and C serve the stream; the acknowledged messages they have.
    Served(Verdict),
    /// A node refused to start or the stream never came back (why, with the log).
    Refused(String),
}

fn scenario(sync_before_cut: bool) -> Outcome {
    let m = Mount::new(&[]);
    let nodes = [Node::new("a"), Node::new("b"), Node::new("c")];
    let [a, b, c] = &nodes;
    let dir_a = m.root.join("nats-a");
    let dir_b = m.root.join("nats-b");
    let dir_c = m.path("nats-c");
    let spawn = |n: &Node, dir: &Path| n.spawn(&nodes, dir, &m.root);

    let mut server_a = spawn(a, &dir_a);
    let mut server_b = spawn(b, &dir_b);
    let mut server_c = spawn(c, &dir_c);
    for (n, s) in [(a, &mut server_a), (b, &mut server_b), (c, &mut server_c)] {
        s.wait_port(n.client, READY_TIMEOUT);
    }
    // The JetStream API answers once the cluster has elected its meta leader.
    server_c.wait_ready("creating the stream", READY_TIMEOUT, || {
        Client::connect(c.client)?
            .js_api(&format!("$JS.API.STREAM.CREATE.{STREAM}"), &stream_config())
            .map(drop)
    });
    wait_stream(c, &mut server_c, &[a, b, c], 2).unwrap_or_else(|e| panic!("{e}"));
    // C's stream directory and the cluster's metadata reach the disk of a real machine
    // within seconds (NATS also fsyncs them at creation), long before the workload.
    m.sync();

    server_a.stop();
    // If A led the stream, B and C elect a new leader first.
    wait_stream(c, &mut server_c, &[b, c], 1).unwrap_or_else(|e| panic!("after A stopped: {e}"));

    let mut client = Client::connect(c.client).unwrap_or_else(|e| panic!("{e}"));
    let mut acked = 0;
    for i in 1..=N {
        let ack = client
            .request("lossfs.k", payload(i).as_bytes())
            .unwrap_or_else(|e| panic!("publish {i}: {e}\n--- log ---\n{}", server_c.log_text()));
        assert_eq!(
            json_u64(&ack, "seq"),
            Some(i),
            "publish {i} not acknowledged in order: {ack}"
        );
        acked += 1;
    }
    drop(client);
    server_b.stop();
    if sync_before_cut {
        m.sync();
    }
    let rep = powercut(&m, &mut server_c);
    eprintln!(
        "nats sync_before_cut={sync_before_cut}: powercut of C lost {} bytes",
        lost_bytes(&rep)
    );
    drop(server_c);
    drop(server_b);
    drop(server_a);

    let mut server_a = spawn(a, &dir_a);
    let mut server_c = spawn(c, &dir_c);
    for (n, s) in [(a, &mut server_a), (c, &mut server_c)] {
        if let Err(e) = wait_stream(n, s, &[a, c], 1) {
            return Outcome::Refused(format!("nats-server {}: {e}", n.name));
        }
    }
    // A MSG.GET is answered by the stream leader whichever node it enters through; read
    // through both to be sure they serve one history.
    let mut found = Vec::new();
    for (n, s) in [(a, &server_a), (c, &server_c)] {
        let mut client = Client::connect(n.client).unwrap_or_else(|e| panic!("{e}"));
        let here = (1..=N)
            .filter(|&seq| {
                has_message(&mut client, seq)
                    .unwrap_or_else(|e| panic!("{e}\n--- log ---\n{}", s.log_text()))
            })
            .count() as u64;
        found.push(here);
    }
    assert_eq!(found[0], found[1], "A and C serve different histories");
    // What the next publish gets: a sequence number at or below N means an acknowledged
    // sequence now names a different message.
    let next = Client::connect(c.client)
        .and_then(|mut cl| cl.request("lossfs.k", b"after-the-cut"))
        .unwrap_or_else(|e| panic!("publish after the restart: {e}"));
    let next_seq = json_u64(&next, "seq");
    eprintln!(
        "nats sync_before_cut={sync_before_cut}: the next publish is acknowledged with seq \
         {next_seq:?}"
    );
    // The stream continues from the messages it kept: after a loss, acknowledged sequence
    // numbers are handed out again.
    assert_eq!(
        next_seq,
        Some(found[0] + 1),
        "the next publish should follow the {} messages kept: {next}",
        found[0]
    );
    let setting = if sync_before_cut {
        "defaults, lossctl sync before the cut (control)"
    } else {
        "defaults"
    };
    let v = Verdict::new("nats-jetstream-r3", setting, acked, found[0]);
    v.print();
    server_a.stop();
    server_c.stop();
    Outcome::Served(v)
}

#[test]
fn nats_jetstream_r3_loses_acknowledged_messages_when_one_node_loses_its_tail() {
    match scenario(false) {
        Outcome::Served(v) => v.assert_some_lost(),
        Outcome::Refused(why) => panic!("cluster did not come back: {why}"),
    }
}

#[test]
fn nats_jetstream_r3_keeps_them_when_the_tail_was_synced() {
    match scenario(true) {
        Outcome::Served(v) => v.assert_none_lost(),
        Outcome::Refused(why) => panic!("cluster did not come back: {why}"),
    }
}
