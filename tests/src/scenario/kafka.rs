//! Apache Kafka for the scenarios: a cluster of brokers on 127.0.0.1, each broker's
//! `log.dirs` on its own lossfs mount, its quorum (ZooKeeper for 3.9, a KRaft controller
//! for 4.x) on a plain directory, and the scenario client (tests/kafka/LossfsKafkaClient.java)
//! whose output lines give the test every acknowledgement with its key and offset.
//!
//! The Kafka homes come from tests/kafka/fetch.sh (pinned jars from Maven Central, in
//! `$LOSSFS_KAFKA_CACHE`, default /var/cache/lossfs-kafka); a missing home fails the test
//! with the command that makes it. Broker ids are 1..=n; broker `i` runs on `mounts[i-1]`.
//! Logs (brokers, quorum, clients) are in [`Cluster::dir`], kept when the test fails.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::{free_port, powercut, Server};
use crate::{output_text, run_bounded, unique_tmp_dir, Mount, MountSetup};

/// How long a broker or the quorum may take to listen, and a partition to get a leader:
/// JVMs start slowly on a busy two-core machine.
pub const KAFKA_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one client run (a JVM that creates, awaits, produces or consumes) may take.
pub const KAFKA_CLIENT_TIMEOUT: Duration = Duration::from_secs(150);
/// How long each broker's mount may live: a whole scenario with its restarts.
const MOUNT_LIFETIME: Duration = Duration::from_secs(900);
/// Broker heap: small, as the scenarios hold little data.
const BROKER_HEAP: &str = "-Xmx384m";

/// A pinned Kafka version (tests/kafka/pom.xml).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Kafka 3.9 in ZooKeeper mode.
    ZooKeeper39,
    /// The newest Kafka 4.x, KRaft only.
    Kraft4,
}

impl Version {
    /// The version number pinned in tests/kafka/pom.xml.
    pub fn number(self) -> String {
        let pom = Path::new(env!("CARGO_MANIFEST_DIR")).join("kafka/pom.xml");
        let text =
            fs::read_to_string(&pom).unwrap_or_else(|e| panic!("read {}: {e}", pom.display()));
        let prop = match self {
            Version::ZooKeeper39 => "kafka39.version",
            Version::Kraft4 => "kafka4.version",
        };
        let open = format!("<{prop}>");
        let close = format!("</{prop}>");
        text.split_once(&open)
            .and_then(|(_, rest)| rest.split_once(&close))
            .map(|(v, _)| v.trim().to_string())
            .unwrap_or_else(|| panic!("{} pins no {prop}", pom.display()))
    }

    /// Short name in verdict lines: `3.9.2-zk`, `4.4.0-kraft`.
    pub fn label(self) -> String {
        match self {
            Version::ZooKeeper39 => format!("{}-zk", self.number()),
            Version::Kraft4 => format!("{}-kraft", self.number()),
        }
    }

    /// The Kafka home made by tests/kafka/fetch.sh; panics saying how to make it.
    pub fn home(self) -> PathBuf {
        let cache = std::env::var_os("LOSSFS_KAFKA_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/lossfs-kafka"));
        let home = cache.join(format!("kafka-{}", self.number()));
        let arg = match self {
            Version::ZooKeeper39 => "3.9",
            Version::Kraft4 => "4",
        };
        assert!(
            home.join("libs/.complete").is_file()
                && home.join("classes/LossfsKafkaClient.class").is_file(),
            "scenario cannot run: Kafka {} is not in {} (run tests/kafka/fetch.sh {arg}; \
             .ci/run does this)",
            self.number(),
            home.display()
        );
        home
    }
}

/// The leader a partition should have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leader {
    /// Some broker leads.
    Any,
    /// This broker leads.
    Broker(usize),
    /// No broker leads (the partition is offline).
    None,
}

impl Leader {
    fn arg(self) -> String {
        match self {
            Leader::Any => "-1".to_string(),
            Leader::Broker(id) => id.to_string(),
            Leader::None => "none".to_string(),
        }
    }
}

/// One line of the client: an acknowledgement (`ACK`) or a record found (`REC`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Topic.
    pub topic: String,
    /// Record key.
    pub key: String,
    /// Offset in partition 0 (-1: not known, as with acks=0).
    pub offset: i64,
}

/// The `KIND topic key partition offset` lines of a client's output.
pub fn records(output: &str, kind: &str) -> Vec<Record> {
    output
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [k, topic, key, _partition, offset] if *k == kind => Some(Record {
                    topic: topic.to_string(),
                    key: key.to_string(),
                    offset: offset.parse().ok()?,
                }),
                _ => None,
            }
        })
        .collect()
}

/// What became of a set of acknowledged records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Acknowledged records.
    pub acknowledged: u64,
    /// Acknowledged records found (same key; at the acknowledged offset when one is known).
    pub found: u64,
    /// Acknowledged offsets now holding another record.
    pub offsets_reused: u64,
}

/// Compares the acknowledgements with the records read back.
pub fn tally(acked: &[Record], found: &[Record]) -> Tally {
    let by_offset: BTreeMap<i64, &str> = found.iter().map(|r| (r.offset, r.key.as_str())).collect();
    let keys: std::collections::BTreeSet<&str> = found.iter().map(|r| r.key.as_str()).collect();
    let mut t = Tally {
        acknowledged: acked.len() as u64,
        found: 0,
        offsets_reused: 0,
    };
    for a in acked {
        if a.offset < 0 {
            t.found += u64::from(keys.contains(a.key.as_str()));
            continue;
        }
        match by_offset.get(&a.offset) {
            Some(k) if *k == a.key => t.found += 1,
            Some(_) => {
                t.offsets_reused += 1;
                // The record may have been written again elsewhere (a producer retry).
                t.found += u64::from(keys.contains(a.key.as_str()));
            }
            None => t.found += u64::from(keys.contains(a.key.as_str())),
        }
    }
    t
}

/// One record batch of a partition's log file, as it lies on a replica's disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    /// Offset of its first record.
    pub base_offset: i64,
    /// Offset of its last record.
    pub last_offset: i64,
    /// The CRC-32C the producer's batch carries over its records.
    pub crc: u32,
}

/// The batches of partition 0 of `topic` in the log directory `log_dir` (segment files in
/// offset order), up to the first incomplete batch: what the broker would recover.
pub fn replica_batches(log_dir: &Path, topic: &str) -> Vec<Batch> {
    let dir = log_dir.join(format!("{topic}-0"));
    let mut segments: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segments.sort();
    let mut out = Vec::new();
    for seg in segments {
        let data = fs::read(&seg).unwrap_or_else(|e| panic!("read {}: {e}", seg.display()));
        out.extend(parse_batches(&data));
    }
    out
}

/// Record batches (magic 2) from the bytes of one segment file; stops at a torn or
/// zero-filled tail.
pub fn parse_batches(data: &[u8]) -> Vec<Batch> {
    // baseOffset i64, batchLength i32, partitionLeaderEpoch i32, magic i8, crc u32,
    // attributes i16, lastOffsetDelta i32, ...: big-endian.
    const HEADER: usize = 8 + 4 + 4 + 1 + 4 + 2 + 4;
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + HEADER <= data.len() {
        let be8 = |o: usize| i64::from_be_bytes(data[o..o + 8].try_into().unwrap_or([0; 8]));
        let be4 = |o: usize| u32::from_be_bytes(data[o..o + 4].try_into().unwrap_or([0; 4]));
        let base_offset = be8(pos);
        let length = be4(pos + 8) as usize;
        let magic = data[pos + 16];
        if length < HEADER - 12 || magic != 2 || pos + 12 + length > data.len() {
            break;
        }
        out.push(Batch {
            base_offset,
            last_offset: base_offset + i64::from(be4(pos + 23) as i32),
            crc: be4(pos + 17),
        });
        pos += 12 + length;
    }
    out
}

/// A Kafka cluster on 127.0.0.1 whose brokers keep their logs on lossfs mounts.
pub struct Cluster {
    /// The Kafka version it runs.
    pub version: Version,
    /// Plain directory with configs, logs and the quorum's data.
    pub dir: PathBuf,
    home: PathBuf,
    ports: Vec<u16>,
    quorum_port: u16,
    cluster_id: String,
    quorum: Option<Server>,
    brokers: Vec<Option<Server>>,
    /// One mount per broker: broker `i` on `mounts[i - 1]`.
    pub mounts: Vec<Mount>,
}

impl Cluster {
    /// Starts the quorum and `n` brokers with the extra broker settings `extra`
    /// (`name=value` lines), and waits until every broker listens.
    pub fn start(version: Version, n: usize, extra: &[&str]) -> Cluster {
        let home = version.home();
        let dir = unique_tmp_dir("kafka");
        let mounts: Vec<Mount> = (0..n)
            .map(|_| {
                Mount::new_with(
                    &[],
                    MountSetup {
                        lifetime: Some(MOUNT_LIFETIME),
                        ..MountSetup::default()
                    },
                )
            })
            .collect();
        let ports = (0..n).map(|_| free_port()).collect();
        let mut c = Cluster {
            version,
            dir,
            home,
            ports,
            quorum_port: free_port(),
            cluster_id: cluster_id(),
            quorum: None,
            brokers: (0..n).map(|_| None).collect(),
            mounts,
        };
        c.write_configs(extra);
        c.start_quorum();
        for id in 1..=n {
            if version == Version::Kraft4 {
                c.format(&c.dir.join(format!("broker-{id}.properties")));
            }
            c.spawn_broker(id);
        }
        for id in 1..=n {
            c.wait_broker(id);
        }
        c
    }

    /// `127.0.0.1:p1,127.0.0.1:p2,...`: every broker.
    pub fn bootstrap(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The log directory of broker `id` (on its mount).
    pub fn log_dir(&self, id: usize) -> PathBuf {
        self.mounts[id - 1].path("kafka-logs")
    }

    fn java(&self, heap: &str, log4j: &str) -> Command {
        let mut c = Command::new("java");
        c.arg(heap)
            .args(["-XX:+UseSerialGC", "-Djava.awt.headless=true"])
            // Only the config of the Log4j in use (reload4j for 3.9, Log4j 2 for 4.x).
            .arg(match self.version {
                Version::ZooKeeper39 => format!(
                    "-Dlog4j.configuration=file:{}",
                    self.dir.join(format!("{log4j}.properties")).display()
                ),
                Version::Kraft4 => format!(
                    "-Dlog4j2.configurationFile={}",
                    self.dir.join(format!("{log4j}2.properties")).display()
                ),
            })
            .arg("-cp")
            .arg(format!(
                "{}:{}/libs/*",
                self.home.join("classes").display(),
                self.home.display()
            ))
            // Everything a broker touches outside its log.dirs stays in the plain directory.
            .current_dir(&self.dir);
        c
    }

    fn write_configs(&self, extra: &[&str]) {
        let write = |name: &str, text: String| {
            let p = self.dir.join(name);
            fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        };
        // Log4j 1 (3.9, reload4j) and Log4j 2 (4.x) configs: brokers at INFO, clients at WARN.
        for (name, level) in [("log4j-server", "INFO"), ("log4j-client", "WARN")] {
            write(
                &format!("{name}.properties"),
                format!(
                    "log4j.rootLogger={level}, out\n\
                     log4j.appender.out=org.apache.log4j.ConsoleAppender\n\
                     log4j.appender.out.Target=System.err\n\
                     log4j.appender.out.layout=org.apache.log4j.PatternLayout\n\
                     log4j.appender.out.layout.ConversionPattern=[%d] %p %m (%c)%n\n\
                     log4j.logger.org.apache.zookeeper=WARN\n\
                     log4j.logger.kafka.request.logger=WARN\n"
                ),
            );
            write(
                &format!("{name}2.properties"),
                format!(
                    "rootLogger.level={level}\n\
                     rootLogger.appenderRef.out.ref=OUT\n\
                     appender.out.type=Console\n\
                     appender.out.name=OUT\n\
                     appender.out.target=SYSTEM_ERR\n\
                     appender.out.layout.type=PatternLayout\n\
                     appender.out.layout.pattern=[%d] %p %m (%c)%n\n"
                ),
            );
        }
        let voters = format!("100@127.0.0.1:{}", self.quorum_port);
        match self.version {
            Version::ZooKeeper39 => write(
                "zoo.cfg",
                format!(
                    "tickTime=500\ninitLimit=20\nsyncLimit=10\ndataDir={}\nclientPort={}\n\
                     clientPortAddress=127.0.0.1\nadmin.enableServer=false\nmaxClientCnxns=0\n",
                    self.dir.join("zookeeper").display(),
                    self.quorum_port
                ),
            ),
            Version::Kraft4 => write(
                "controller.properties",
                format!(
                    "process.roles=controller\nnode.id=100\ncontroller.quorum.voters={voters}\n\
                     listeners=CONTROLLER://127.0.0.1:{}\ncontroller.listener.names=CONTROLLER\n\
                     listener.security.protocol.map=CONTROLLER:PLAINTEXT\nlog.dirs={}\n",
                    self.quorum_port,
                    self.dir.join("controller").display()
                ),
            ),
        }
        for id in 1..=self.ports.len() {
            let port = self.ports[id - 1];
            let mut p = format!(
                "listeners=PLAINTEXT://127.0.0.1:{port}\n\
                 advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
                 log.dirs={}\n\
                 num.network.threads=2\nnum.io.threads=2\nnum.replica.fetchers=1\n\
                 background.threads=2\nlog.cleaner.enable=false\n\
                 auto.create.topics.enable=false\nauto.leader.rebalance.enable=false\n\
                 offsets.topic.replication.factor=1\ntransaction.state.log.replication.factor=1\n\
                 transaction.state.log.min.isr=1\ngroup.initial.rebalance.delay.ms=0\n\
                 replica.lag.time.max.ms=10000\n",
                self.log_dir(id).display()
            );
            match self.version {
                Version::ZooKeeper39 => p.push_str(&format!(
                    "broker.id={id}\nzookeeper.connect=127.0.0.1:{}\n\
                     zookeeper.session.timeout.ms=6000\nzookeeper.connection.timeout.ms=60000\n",
                    self.quorum_port
                )),
                Version::Kraft4 => p.push_str(&format!(
                    "process.roles=broker\nnode.id={id}\ncontroller.quorum.voters={voters}\n\
                     controller.listener.names=CONTROLLER\ninter.broker.listener.name=PLAINTEXT\n\
                     listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
                     broker.session.timeout.ms=6000\nbroker.heartbeat.interval.ms=1000\n"
                )),
            }
            for e in extra {
                p.push_str(e);
                p.push('\n');
            }
            write(&format!("broker-{id}.properties"), p);
        }
    }

    /// `kafka-storage format` of one KRaft node (its meta.properties and bootstrap).
    fn format(&self, config: &Path) {
        let mut cmd = self.java("-Xmx128m", "log4j-client");
        cmd.args([
            "kafka.tools.StorageTool",
            "format",
            "-t",
            &self.cluster_id,
            "-c",
        ])
        .arg(config);
        let o = run_bounded(&mut cmd, KAFKA_CLIENT_TIMEOUT);
        assert!(
            o.status.success(),
            "kafka-storage format {}:\n{}",
            config.display(),
            output_text(&o)
        );
    }

    fn start_quorum(&mut self) {
        let log = self.dir.join("quorum.log");
        let mut s = match self.version {
            Version::ZooKeeper39 => {
                let mut cmd = self.java("-Xmx128m", "log4j-server");
                cmd.arg("org.apache.zookeeper.server.ZooKeeperServerMain")
                    .arg(self.dir.join("zoo.cfg"));
                Server::spawn("zookeeper", &mut cmd, &log)
            }
            Version::Kraft4 => {
                self.format(&self.dir.join("controller.properties"));
                let mut cmd = self.java("-Xmx192m", "log4j-server");
                cmd.arg("kafka.Kafka")
                    .arg(self.dir.join("controller.properties"));
                Server::spawn("kafka-controller", &mut cmd, &log)
            }
        };
        s.wait_port(self.quorum_port, KAFKA_READY_TIMEOUT);
        self.quorum = Some(s);
    }

    fn spawn_broker(&mut self, id: usize) {
        assert!(
            self.brokers[id - 1].is_none(),
            "broker {id} is already running"
        );
        let mut cmd = self.java(BROKER_HEAP, "log4j-server");
        cmd.arg("kafka.Kafka")
            .arg(self.dir.join(format!("broker-{id}.properties")));
        let log = self.dir.join(format!("broker-{id}.log"));
        self.brokers[id - 1] = Some(Server::spawn(&format!("kafka broker {id}"), &mut cmd, &log));
    }

    fn wait_broker(&mut self, id: usize) {
        if let Err(e) = self.wait_started(id, 0) {
            panic!("{e}");
        }
    }

    /// Waits until broker `id` logs that it started (after byte `from` of its log: the
    /// log spans every start), bounded; `Err` with the log if it exits first.
    fn wait_started(&mut self, id: usize, from: usize) -> Result<(), String> {
        let marker = match self.version {
            Version::ZooKeeper39 => format!("[KafkaServer id={id}] started"),
            Version::Kraft4 => "Kafka Server started".to_string(),
        };
        let s = self.broker(id);
        let log = s.log.clone();
        let r = s.wait_ready_or_exit("started", KAFKA_READY_TIMEOUT, || {
            let text = fs::read(&log).unwrap_or_default();
            let text = String::from_utf8_lossy(text.get(from..).unwrap_or_default());
            if text.contains(&marker) {
                Ok(())
            } else {
                Err(format!("no {marker:?} in {} yet", log.display()))
            }
        });
        r.map_err(|(st, _)| {
            let text = self.brokers[id - 1]
                .take()
                .map(|s| s.log_text())
                .unwrap_or_default();
            format!(
                "broker {id} exited ({st:?}) before it started:\n{}",
                text.get(from..).unwrap_or_default()
            )
        })
    }

    /// Starts broker `id` again on its mount (recovery included) and waits until it has
    /// started; `Err` with its log if it exits first (a broker refusing to start). A 3.9
    /// broker restarted before ZooKeeper expired its previous session finds its id still
    /// registered and exits: it is started again until the session is gone, bounded.
    pub fn restart(&mut self, id: usize) -> Result<(), String> {
        let deadline = std::time::Instant::now() + KAFKA_READY_TIMEOUT;
        loop {
            let from = fs::metadata(self.dir.join(format!("broker-{id}.log")))
                .map(|m| m.len() as usize)
                .unwrap_or(0);
            self.spawn_broker(id);
            match self.wait_started(id, from) {
                Ok(()) => return Ok(()),
                Err(e) if e.contains("NodeExists") && std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Broker `id`'s process; panics if it is not running.
    pub fn broker(&mut self, id: usize) -> &mut Server {
        self.brokers[id - 1]
            .as_mut()
            .unwrap_or_else(|| panic!("broker {id} is not running"))
    }

    /// Stops broker `id` cleanly (SIGTERM: a controlled shutdown that hands its
    /// leaderships over), bounded.
    pub fn stop(&mut self, id: usize) {
        if let Some(mut s) = self.brokers[id - 1].take() {
            s.stop();
        }
    }

    /// SIGKILLs broker `id` (a crash: what it wrote stays in its mount's page cache).
    pub fn kill(&mut self, id: usize) {
        drop(self.brokers[id - 1].take());
    }

    /// SIGSTOPs every running broker: the instant of a power outage, after which no
    /// broker writes, acknowledges or syncs anything.
    pub fn freeze_all(&mut self) {
        for s in self.brokers.iter().flatten() {
            if let Some(pid) = s.pid() {
                // SAFETY: kill(2) of the process group our unreaped broker leads.
                unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGSTOP) };
            }
        }
    }

    /// `lossctl powercut` of broker `id`'s mount: the broker is killed, its unsynced
    /// writes are rolled back. Returns the report.
    pub fn powercut(&mut self, id: usize) -> serde_json::Value {
        let mut s = self.brokers[id - 1]
            .take()
            .unwrap_or_else(|| panic!("broker {id} is not running at the power cut"));
        powercut(&self.mounts[id - 1], &mut s)
    }

    /// Cuts the power of every broker's mount at one instant, as `lossctl powercut --all`:
    /// the brokers are frozen first, then every mount is cut; with `--all` itself when the
    /// cluster's mounts are the only lossfs mounts on the host (it would cut other tests'
    /// mounts too), else mount by mount, which the freeze makes the same outage.
    pub fn powercut_all(&mut self) -> Vec<serde_json::Value> {
        self.freeze_all();
        let ours: Vec<PathBuf> = self.mounts.iter().map(|m| m.mnt.clone()).collect();
        let on_host =
            lossfs::mountinfo::lossfs_mounts().unwrap_or_else(|e| panic!("read mountinfo: {e}"));
        let only_ours =
            on_host.len() == ours.len() && on_host.iter().all(|m| ours.contains(&m.mount_point));
        if !only_ours {
            eprintln!(
                "kafka: other lossfs mounts are up; cutting the {} broker mounts one by one \
                 (brokers frozen) instead of with --all",
                ours.len()
            );
            return (1..=ours.len()).map(|id| self.powercut(id)).collect();
        }
        let o = crate::lossctl(&["powercut", "--all", "--json"]);
        assert!(
            o.status.success(),
            "lossctl powercut --all:\n{}",
            output_text(&o)
        );
        let reps: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("powercut --all JSON ({e}):\n{}", output_text(&o)));
        for id in 1..=ours.len() {
            if let Some(mut s) = self.brokers[id - 1].take() {
                s.assert_killed(Duration::from_secs(20));
            }
        }
        reps
    }

    /// Runs the scenario client with `args` (after the command, the bootstrap list is
    /// inserted), bounded; its output.
    pub fn client(&self, command: &str, args: &[&str]) -> Output {
        let mut cmd = self.java("-Xmx128m", "log4j-client");
        cmd.args(["-XX:TieredStopAtLevel=1", "LossfsKafkaClient", command])
            .arg(self.bootstrap())
            .args(args);
        run_bounded(&mut cmd, KAFKA_CLIENT_TIMEOUT)
    }

    /// Starts the scenario client in the background (a steady producer), its output in
    /// `name.log` of the cluster directory.
    pub fn spawn_client(&self, name: &str, command: &str, args: &[&str]) -> Server {
        let mut cmd = self.java("-Xmx128m", "log4j-client");
        cmd.args(["-XX:TieredStopAtLevel=1", "LossfsKafkaClient", command])
            .arg(self.bootstrap())
            .args(args);
        Server::spawn(name, &mut cmd, &self.dir.join(format!("{name}.log")))
    }

    /// Creates `topic` with one partition on `replicas` (the first is its leader) and
    /// topic configs `configs`, and waits until all replicas are in sync.
    pub fn create_topic(&self, topic: &str, replicas: &[usize], configs: &[&str]) {
        let r: Vec<String> = replicas.iter().map(usize::to_string).collect();
        let mut args = vec![topic.to_string(), r.join(":")];
        args.extend(configs.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = self.client("create", &args);
        assert!(
            o.status.success(),
            "create topic {topic}:\n{}",
            output_text(&o)
        );
        self.await_partition(
            topic,
            Leader::Broker(replicas[0]),
            (replicas.len(), replicas.len()),
            KAFKA_READY_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("topic {topic}: {e}"));
    }

    /// Creates every topic of `topics` (name, topic configs) with one partition on all
    /// brokers (broker 1 leads), waits until their replicas are in sync, and syncs every
    /// mount: the durable starting state a power cut is measured against.
    pub fn create_topics_synced(&self, topics: &[(&str, &[&str])]) {
        let all: Vec<usize> = (1..=self.brokers.len()).collect();
        for (topic, configs) in topics {
            self.create_topic(topic, &all, configs);
        }
        for m in &self.mounts {
            m.sync();
        }
    }

    /// Starts one producer per `(topic, acks)` of `producers` in the background, each
    /// sending `count` records keyed by its topic's name, one every `interval_ms` (0: as
    /// fast as it may), and waits, at most `timeout`, until every one of them has `least`
    /// acknowledgements.  Returns the producer client still running; its log holds the
    /// `ACK` lines ([`records`]).
    pub fn produce_until(
        &self,
        producers: &[(&str, &str)],
        count: usize,
        interval_ms: u64,
        least: usize,
        timeout: Duration,
    ) -> Server {
        let specs: Vec<String> = producers
            .iter()
            .map(|(t, acks)| format!("{t}:{acks}:{count}:{t}:{interval_ms}"))
            .collect();
        let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
        let mut producer = self.spawn_client("producer", "produce", &specs);
        let deadline = Instant::now() + timeout;
        loop {
            let acked = records(&producer.log_text(), "ACK");
            let fewest = producers
                .iter()
                .map(|(t, _)| acked.iter().filter(|r| r.topic == *t).count())
                .min()
                .unwrap_or(0);
            if fewest >= least {
                return producer;
            }
            assert!(
                producer.exited().is_none() && Instant::now() < deadline,
                "the producers did not reach {least} acknowledgements each:\n{}",
                producer.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until partition 0 of `topic` has the `leader` asked for and `min_isr` to
    /// `max_isr` replicas in sync, at most `timeout` (under [`KAFKA_CLIENT_TIMEOUT`]);
    /// `Ok` with the state line, `Err` with the last state.
    pub fn await_partition(
        &self,
        topic: &str,
        leader: Leader,
        (min_isr, max_isr): (usize, usize),
        timeout: Duration,
    ) -> Result<String, String> {
        let timeout = timeout.as_millis().to_string();
        let o = self.client(
            "await",
            &[
                topic,
                &leader.arg(),
                &min_isr.to_string(),
                &max_isr.to_string(),
                &timeout,
            ],
        );
        let text = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if o.status.success() {
            Ok(text)
        } else {
            Err(output_text(&o))
        }
    }

    /// Produces with one producer per `specs` entry (`TOPIC:ACKS:COUNT:PREFIX:INTERVAL_MS`)
    /// and returns the acknowledgements.
    pub fn produce(&self, specs: &[&str]) -> Vec<Record> {
        let o = self.client("produce", specs);
        assert!(
            o.status.success(),
            "produce {specs:?}:\n{}",
            output_text(&o)
        );
        records(&String::from_utf8_lossy(&o.stdout), "ACK")
    }

    /// Every record of partition 0 of `topic`, read from its leader.
    pub fn consume(&self, topic: &str) -> Vec<Record> {
        let timeout = (KAFKA_CLIENT_TIMEOUT.as_millis() - 30_000).to_string();
        let o = self.client("consume", &[topic, &timeout]);
        assert!(o.status.success(), "consume {topic}:\n{}", output_text(&o));
        records(&String::from_utf8_lossy(&o.stdout), "REC")
    }

    /// Stops every broker and then the quorum cleanly (bounded), so their logs can be
    /// compared on disk.
    pub fn stop_all(&mut self) {
        for id in 1..=self.brokers.len() {
            self.stop(id);
        }
        if let Some(mut q) = self.quorum.take() {
            q.stop();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for b in self.brokers.iter_mut() {
            drop(b.take());
        }
        drop(self.quorum.take());
        if std::thread::panicking() {
            eprintln!(
                "kafka: logs and configs kept in {} (broker-N.log, quorum.log, clients)",
                self.dir.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A fresh KRaft cluster id: 16 random bytes in URL-safe base64 without padding.
fn cluster_id() -> String {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        ^ u64::from(std::process::id());
    let mut bytes = crate::rng::Rng::new(seed).bytes(16);
    // An id starting with '-' (one in 64) reads as an option to kafka-storage: keep the
    // first base64 digit below 32, as Kafka's own random ids avoid a leading '-'.
    bytes[0] &= 0x7f;
    super::base64(&bytes)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ids_never_start_with_a_dash() {
        for _ in 0..2000 {
            let id = cluster_id();
            assert_eq!(id.len(), 22, "{id}");
            assert!(!id.starts_with('-'), "{id} reads as an option");
        }
    }

    fn batch(base: i64, delta: i32, crc: u32, records: usize) -> Vec<u8> {
        let mut v = Vec::new();
        let length = (49 + records) as u32;
        v.extend_from_slice(&base.to_be_bytes());
        v.extend_from_slice(&length.to_be_bytes());
        v.extend_from_slice(&7i32.to_be_bytes());
        v.push(2);
        v.extend_from_slice(&crc.to_be_bytes());
        v.extend_from_slice(&0i16.to_be_bytes());
        v.extend_from_slice(&delta.to_be_bytes());
        v.resize(12 + length as usize, 0xab);
        v
    }

    #[test]
    fn batches_are_read_up_to_a_torn_tail() {
        let mut seg = batch(0, 4, 0xdead_beef, 10);
        seg.extend(batch(5, 0, 0x0102_0304, 3));
        let torn = batch(6, 0, 1, 3);
        seg.extend_from_slice(&torn[..torn.len() - 1]);
        assert_eq!(
            parse_batches(&seg),
            vec![
                Batch {
                    base_offset: 0,
                    last_offset: 4,
                    crc: 0xdead_beef
                },
                Batch {
                    base_offset: 5,
                    last_offset: 5,
                    crc: 0x0102_0304
                },
            ]
        );
        seg.truncate(batch(0, 4, 0, 10).len());
        seg.extend_from_slice(&[0; 200]);
        assert_eq!(
            parse_batches(&seg).len(),
            1,
            "a zero-filled tail is no batch"
        );
    }

    #[test]
    fn tally_counts_lost_and_reused_offsets() {
        let r = |key: &str, offset: i64| Record {
            topic: "t".into(),
            key: key.into(),
            offset,
        };
        let acked = [r("a", 0), r("b", 1), r("c", 2), r("d", -1)];
        let found = [r("a", 0), r("x", 1), r("d", 2)];
        assert_eq!(
            tally(&acked, &found),
            Tally {
                acknowledged: 4,
                found: 2,
                offsets_reused: 2
            }
        );
    }
}
