//! Scenario: a Kafka partition leader loses its unsynced tail, and acknowledged records
//! with it. Three brokers, each on its own lossfs mount; one partition on brokers 1, 2, 3
//! (1 leads), replication factor 3, `min.insync.replicas=2`, producer `acks=all`.
//!
//! 1. The topics exist and every replica is in sync; every mount is synced (the cluster's
//!    bootstrap is old news on a real machine).
//! 2. Follower 3 is stopped cleanly: it has none of what follows.
//! 3. 10 records are produced with acks=all: each is acknowledged once leader 1 and
//!    follower 2 have it (in their page caches: Kafka does not fsync by default).
//! 4. Follower 2 is killed (SIGKILL) and leaves the in-sync set; then the power of
//!    leader 1's mount alone is cut: 1 keeps only what it fsynced.
//! 5. Leader 1 restarts first, alone, and leads again (it was the last in-sync replica);
//!    then 2 and 3 restart and follow it, truncating their logs to its log.
//! 6. 10 new records are produced; the partition is read back.
//!
//! Two topics run through it side by side: `tail` with Kafka's default flush policy (no
//! fsync before acknowledging), and `flushed` with `flush.messages=1` (the topic-level
//! `log.flush.interval.messages=1`: an fsync per record before the leader acknowledges).
//! The first loses every acknowledged record and hands their offsets to the new records;
//! the second loses nothing.

use std::time::Duration;

use lossfs_tests::scenario::kafka::{tally, Cluster, Leader, Record, Tally, Version};
use lossfs_tests::scenario::{lost_bytes, Verdict};

/// Records acknowledged before the cut, and new records after it.
const N: u64 = 10;
/// The topics: default flush policy, and an fsync per record.
const TOPICS: [(&str, &[&str]); 2] = [
    ("tail", &["min.insync.replicas=2"]),
    ("flushed", &["min.insync.replicas=2", "flush.messages=1"]),
];
/// How long the restarted old leader alone may take to lead again.
const LEAD_AGAIN: Duration = Duration::from_secs(30);

/// What the scenario saw, per topic, and whether broker 1 alone led again.
struct Outcome {
    tallies: Vec<(String, Tally)>,
    led_alone: Vec<bool>,
}

fn scenario(version: Version) -> Outcome {
    let mut c = Cluster::start(version, 3, &[]);
    c.create_topics_synced(&TOPICS);

    c.stop(3);
    for (topic, _) in TOPICS {
        c.await_partition(topic, Leader::Broker(1), (2, 2), Duration::from_secs(90))
            .unwrap_or_else(|e| panic!("{topic}: follower 3 did not leave the ISR: {e}"));
    }
    let specs: Vec<String> = TOPICS
        .iter()
        .map(|(t, _)| format!("{t}:all:{N}:{t}-acked:0"))
        .collect();
    let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
    let acked = c.produce(&specs);
    for (topic, _) in TOPICS {
        let n = acked.iter().filter(|r| r.topic == topic).count() as u64;
        assert_eq!(
            n, N,
            "{topic}: every record should be acknowledged (acks=all)"
        );
    }

    c.kill(2);
    for (topic, _) in TOPICS {
        c.await_partition(topic, Leader::Broker(1), (1, 1), Duration::from_secs(90))
            .unwrap_or_else(|e| panic!("{topic}: killed follower 2 did not leave the ISR: {e}"));
    }
    let rep = c.powercut(1);
    eprintln!(
        "kafka {}: power cut of leader 1 lost {} bytes",
        version.label(),
        lost_bytes(&rep)
    );

    c.restart(1)
        .unwrap_or_else(|e| panic!("old leader refused to restart: {e}"));
    let led_alone: Vec<bool> = TOPICS
        .iter()
        .map(|(topic, _)| {
            let r = c.await_partition(topic, Leader::Broker(1), (1, 3), LEAD_AGAIN);
            eprintln!(
                "kafka {}: {topic} with broker 1 alone: {r:?}",
                version.label()
            );
            r.is_ok()
        })
        .collect();
    for id in [2, 3] {
        c.restart(id)
            .unwrap_or_else(|e| panic!("broker refused to restart: {e}"));
    }
    for (topic, _) in TOPICS {
        let state = c
            .await_partition(topic, Leader::Any, (3, 3), Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("{topic}: replicas not back in sync: {e}"));
        eprintln!("kafka {}: all restarted: {state}", version.label());
    }
    let specs: Vec<String> = TOPICS
        .iter()
        .map(|(t, _)| format!("{t}:all:{N}:{t}-new:0"))
        .collect();
    let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
    let new = c.produce(&specs);
    let mut tallies = Vec::new();
    for (topic, _) in TOPICS {
        let n = new.iter().filter(|r| r.topic == topic).count() as u64;
        assert_eq!(n, N, "{topic}: the new records should be acknowledged");
        let found = c.consume(topic);
        let mine: Vec<Record> = acked.iter().filter(|r| r.topic == topic).cloned().collect();
        tallies.push((topic.to_string(), tally(&mine, &found)));
    }
    c.stop_all();
    Outcome { tallies, led_alone }
}

/// Prints the verdict line of each topic; returns (tail, flushed) verdicts and tallies.
fn report(version: Version, o: &Outcome) -> Vec<(Verdict, Tally)> {
    o.tallies
        .iter()
        .zip(&o.led_alone)
        .map(|((topic, t), led)| {
            let setting = match topic.as_str() {
                "tail" => "leader-tail flush=default",
                _ => "leader-tail flush.messages=1",
            };
            let v = Verdict::new(
                "kafka",
                &format!("{} {setting}", version.label()),
                t.acknowledged,
                t.found,
            );
            println!(
                "{}, offsets reused {}; old leader led again alone: {}",
                v.line(),
                t.offsets_reused,
                if *led { "yes" } else { "no" }
            );
            (v, *t)
        })
        .collect()
}

fn check(version: Version) {
    let o = scenario(version);
    let verdicts = report(version, &o);
    let (tail, tail_tally) = &verdicts[0];
    let (flushed, _) = &verdicts[1];
    flushed.assert_none_lost();
    tail.assert_some_lost();
    assert!(
        tail_tally.offsets_reused > 0,
        "{}: the lost records' offsets should be reused by the new records",
        tail.line()
    );
}

#[test]
fn kafka_39_zookeeper_leader_loses_unsynced_tail_and_reuses_offsets() {
    check(Version::ZooKeeper39);
}

#[test]
fn kafka_4_kraft_leader_loses_unsynced_tail_and_reuses_offsets() {
    check(Version::Kraft4);
}
