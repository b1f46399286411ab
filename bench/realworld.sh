#!/usr/bin/env bash
# bench/realworld.sh — real workloads on native, bindfs and lossfs (see docs/BENCHMARKS.md,
# "Real workloads").
#
# For ROUND in 1..ROUNDS (default 2), on each target in turn:
#   native        a plain directory,
#   bindfs        a `bindfs BACK MNT` mount (the FUSE passthrough baseline),
#   lossfs:NAME   a `lossfs BACK MNT -o allow_other OPTS` mount, once per option set of
#                 LOSSFS_MODES,
# all under one base directory on the same filesystem, with a fresh backing directory per
# target, it runs
#   pgbench  a fresh PostgreSQL cluster (initdb as user postgres, data directory on the
#            target, TCP on 127.0.0.1 only, a free port), `pgbench -i -s PG_SCALE` (timed)
#            then `pgbench -T PG_SECS -c PG_CLIENTS`: TPS and average latency;
#   kafka    one KRaft broker (combined broker+controller; the partition logs on the target,
#            the metadata log on a plain directory), then Kafka's producer perf tool
#            (org.apache.kafka.tools.ProducerPerformance) with KAFKA_RECORDS records of
#            KAFKA_RECORD_SIZE bytes, unthrottled, once per acks value of KAFKA_ACKS, each
#            into its own topic: records/s, MB/s, average and p99 latency as the tool prints them;
# then prints a table per round with every lossfs mode's ratio to native and to bindfs.
#
# Needs root, bindfs, fusermount3, python3, PostgreSQL (Debian's postgresql-15), java 17 and
# a Kafka 4 home with the kafka-tools jar (tests/kafka/fetch.sh 4).  Env:
#   LOSSFS_MODES="default=;threads4=-o threads=4"   NAME=OPTIONS pairs separated by ';'
#                   (OPTIONS split on blanks, passed after `-o allow_other`)
#   WORKLOADS="pgbench kafka"   TARGETS="native bindfs lossfs"   ROUNDS=2   SKIP_BUILD=1
#   BASE=dir        scratch dir (default: mktemp -d under /var/tmp; removed at the end)
#   OUT=dir         where results.txt, table.txt and the logs go (default: $BASE/out, kept)
#   PG_BIN=/usr/lib/postgresql/15/bin  PG_SCALE=10  PG_SECS=30  PG_CLIENTS=4  PG_JOBS=2
#   KAFKA_HOME=dir  (default: the newest kafka-4.* under $LOSSFS_KAFKA_CACHE or
#                   /var/cache/lossfs-kafka)   KAFKA_RECORDS=200000  KAFKA_RECORD_SIZE=1024
#   KAFKA_ACKS="1 all"   KAFKA_HEAP=-Xmx1g   KAFKA_WARMUP=N  records the tool leaves out of its
#                   steady-state figures (--warmup-records, Kafka 3.9+; default 0: all count)
#   WAIT_SECS=120   bound of every start, stop and setup step; a measured step gets its own
#                   length on top of it
# Every process the script starts is stopped by its pid, at the end and on error or Ctrl-C.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
. "$here/common.sh"

LOSSFS_MODES=${LOSSFS_MODES:-default=;threads4=-o threads=4}
WORKLOADS=${WORKLOADS:-pgbench kafka} TARGETS=${TARGETS:-native bindfs lossfs}
ROUNDS=${ROUNDS:-2} WAIT_SECS=${WAIT_SECS:-120}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin} PG_SCALE=${PG_SCALE:-10} PG_SECS=${PG_SECS:-30}
PG_CLIENTS=${PG_CLIENTS:-4} PG_JOBS=${PG_JOBS:-2}
KAFKA_RECORDS=${KAFKA_RECORDS:-200000} KAFKA_RECORD_SIZE=${KAFKA_RECORD_SIZE:-1024}
KAFKA_ACKS=${KAFKA_ACKS:-1 all} KAFKA_HEAP=${KAFKA_HEAP:--Xmx1g} KAFKA_WARMUP=${KAFKA_WARMUP:-0}

die() { echo "realworld.sh: $*" >&2; exit 2; }
has() { case " $2 " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

[ "$(id -u)" = 0 ] || die "needs root (mounts, and initdb as user postgres)"
for tool in python3 fusermount3 timeout runuser; do
  command -v $tool >/dev/null || die "$tool is missing"
done
if has bindfs "$TARGETS"; then command -v bindfs >/dev/null || die "bindfs is missing (apt-get install -y bindfs)"; fi
if has pgbench "$WORKLOADS"; then
  for b in initdb pg_ctl postgres pgbench; do
    [ -x "$PG_BIN/$b" ] || die "$PG_BIN/$b is missing (apt-get install -y postgresql-15, or set PG_BIN)"
  done
  id postgres >/dev/null 2>&1 || die "no user postgres"
fi
if has kafka "$WORKLOADS"; then
  command -v java >/dev/null || die "java is missing (apt-get install -y openjdk-17-jre-headless)"
  if [ -z "${KAFKA_HOME:-}" ]; then
    KAFKA_HOME=$(find "${LOSSFS_KAFKA_CACHE:-/var/cache/lossfs-kafka}" -maxdepth 1 -name 'kafka-4.*' \
      -type d 2>/dev/null | sort -V | tail -1)
  fi
  if [ -z "$KAFKA_HOME" ] || ! compgen -G "$KAFKA_HOME/libs/kafka-tools-[0-9]*.jar" >/dev/null; then
    die "no Kafka 4 home with the kafka-tools jar (run tests/kafka/fetch.sh 4, or set KAFKA_HOME)"
  fi
fi

# Option sets: MODE_NAMES[i] is mounted with MODE_OPTS[i].
MODE_NAMES=() MODE_OPTS=()
IFS=';' read -r -a specs <<<"$LOSSFS_MODES"
for spec in "${specs[@]}"; do
  [ -n "${spec// /}" ] || continue
  case $spec in *=*) ;; *) die "LOSSFS_MODES entry '$spec' is not NAME=OPTIONS" ;; esac
  name=${spec%%=*} name=${name// /}
  [[ $name =~ ^[A-Za-z0-9_.-]+$ ]] || die "LOSSFS_MODES name '$name' must be [A-Za-z0-9_.-]+"
  MODE_NAMES+=("$name") MODE_OPTS+=("${spec#*=}")
done
if has lossfs "$TARGETS"; then [ ${#MODE_NAMES[@]} -gt 0 ] || die "LOSSFS_MODES is empty"; fi

if has lossfs "$TARGETS" && [ "${SKIP_BUILD:-0}" != 1 ]; then
  (cd "$repo" && cargo build --release -p lossfs) || exit 2
fi
LOSSFS="$repo/target/release/lossfs"

BASE=${BASE:-$(mktemp -d /var/tmp/lossfs-realworld.XXXXXX)}
mkdir -p "$BASE"
chmod 755 "$BASE"   # user postgres must reach its data directory
OUT=${OUT:-$BASE/out}
mkdir -p "$OUT"
results="$OUT/results.txt"

# --- processes and mounts the script owns, for the cleanup ---------------------------------
PIDS=()        # every background process started (java), stopped by pid
PG_DATA=""     # the data directory of the running cluster, if any
PG_PID=""      # its postmaster's pid
MOUNTS=()      # mount points made here
PORTS_USED=" "

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
stop_pid() {  # stop_pid PID [SECS]: SIGTERM, wait up to SECS (default 20), then SIGKILL
  local pid=$1 secs=${2:-20} i
  alive "$pid" || return 0
  kill "$pid" 2>/dev/null
  for ((i = 0; i < secs * 10; i++)); do alive "$pid" || return 0; sleep 0.1; done
  log "pid $pid still alive after ${secs}s, killing"
  kill -9 "$pid" 2>/dev/null
  for ((i = 0; i < 50; i++)); do alive "$pid" || return 0; sleep 0.1; done
}
# bounded SECS CMD...: CMD under timeout(1), as a background job waited for, so that a signal
# to the script is handled at once (the cleanup then stops the job by its pid).
bounded() {
  local secs=$1 pid rc; shift
  timeout "$secs" "$@" &
  pid=$!
  PIDS+=("$pid")
  wait "$pid"; rc=$?
  forget_pid "$pid"
  return $rc
}
forget_pid() { local p keep=(); for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done; PIDS=("${keep[@]}"); }

free_port() {  # a port on 127.0.0.1 that nothing listens on and that this run has not handed out
  local p
  for _ in $(seq 50); do
    p=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    if ! has "$p" "$PORTS_USED"; then PORTS_USED+="$p "; echo "$p"; return 0; fi
  done
  die "no free port"
}

unmount() {  # common.sh's, with this script's stop_pid and MOUNTS bookkeeping: unmount MNT, wait for DPID
  local mnt=$1 dpid=${2:-} keep=() m
  if mounted "$mnt"; then
    timeout 30 fusermount3 -u "$mnt" 2>/dev/null || timeout 10 fusermount3 -u -z "$mnt"
  fi
  for _ in $(seq 200); do alive "$dpid" || break; sleep 0.1; done
  if alive "$dpid"; then log "daemon $dpid still alive, stopping it"; stop_pid "$dpid"; fi
  for m in "${MOUNTS[@]}"; do [ "$m" = "$mnt" ] || keep+=("$m"); done
  MOUNTS=("${keep[@]}")
}

pg_stop() {  # stop the running cluster: pg_ctl stop -m fast, bounded, then its pid
  [ -n "$PG_DATA" ] || return 0
  if alive "$PG_PID"; then
    timeout "$WAIT_SECS" runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w \
      -t "$WAIT_SECS" stop >/dev/null 2>&1 || log "pg_ctl stop failed"
    stop_pid "$PG_PID"
  fi
  PG_DATA="" PG_PID=""
}

cleanup() {
  local p m
  pg_stop
  for p in "${PIDS[@]}"; do stop_pid "$p"; done
  PIDS=()
  for m in "${MOUNTS[@]}"; do unmount "$m" "$(daemon_pid "$m")"; done
  [ "${KEEP_BASE:-0}" = 1 ] || find "$BASE" -mindepth 1 -maxdepth 1 ! -name out -exec rm -rf {} +
  rmdir "$BASE" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

daemon_pid() { pgrep -f -- " $1( |\$)" | head -1; }

# --- targets --------------------------------------------------------------------------------
# setup_target TARGET -> DIR (where the workloads write), DPID and MNT for FUSE targets.
setup_target() {
  local t=$1 i
  local root="$BASE/t-${t//:/-}"
  rm -rf "$root"; mkdir -p "$root"
  DPID="" MNT=""
  case $t in
    native) DIR="$root/dir"; mkdir -p "$DIR" ;;
    bindfs)
      mkdir -p "$root/back" "$root/mnt"; MNT="$root/mnt"
      timeout 30 bindfs "$root/back" "$MNT" || { log "bindfs mount failed"; return 1; }
      MOUNTS+=("$MNT"); DPID=$(daemon_pid "$MNT"); DIR="$MNT" ;;
    lossfs:*)
      i=${t#lossfs:}
      mkdir -p "$root/back" "$root/mnt"; MNT="$root/mnt"
      # shellcheck disable=SC2086  # the option set is split on blanks on purpose
      timeout 30 "$LOSSFS" "$root/back" "$MNT" -o allow_other ${MODE_OPTS[$i]} \
        || { log "lossfs mount failed"; return 1; }
      MOUNTS+=("$MNT"); DPID=$(daemon_pid "$MNT"); DIR="$MNT" ;;
  esac
  # The plain directory beside the target for what is not measured (configs, logs, metadata).
  AUX="$root/aux"; mkdir -p "$AUX"
}
teardown_target() {
  [ -n "$MNT" ] && unmount "$MNT" "$DPID"
  rm -rf "$BASE/t-${1//:/-}"
}

# --- pgbench --------------------------------------------------------------------------------
run_pgbench() {  # run_pgbench ROUND LABEL
  local round=$1 label=$2 port data out t0 t1 tps lat
  port=$(free_port)
  data="$DIR/pgdata"
  mkdir -p "$data"; chown postgres: "$data"; chmod 700 "$data"
  chown postgres: "$AUX"
  log "round $round: $label: initdb in $data, port $port"
  if ! bounded "$WAIT_SECS" runuser -u postgres -- "$PG_BIN/initdb" -D "$data" -A trust -U postgres \
      -E UTF8 --locale=C.UTF-8 >"$AUX/initdb.log" 2>&1; then
    cp "$AUX/initdb.log" "$OUT/r$round-$label-initdb.log"
    echo "$round $label pgbench error initdb" | tee -a "$results"; return 1
  fi
  cat >>"$data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = ''
max_connections = $((PG_CLIENTS + 10))
EOF
  PG_DATA=$data
  if ! bounded "$WAIT_SECS" runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$data" -l "$AUX/postgres.log" \
      -w -t "$WAIT_SECS" start >/dev/null 2>&1; then
    PG_PID=$(head -1 "$data/postmaster.pid" 2>/dev/null)
    cp "$AUX/postgres.log" "$OUT/r$round-$label-postgres.log" 2>/dev/null
    echo "$round $label pgbench error start" | tee -a "$results"; pg_stop; return 1
  fi
  PG_PID=$(head -1 "$data/postmaster.pid")
  local conn=(-h 127.0.0.1 -p "$port" -U postgres)
  t0=$(date +%s.%N)
  if ! bounded $((WAIT_SECS * 5)) "$PG_BIN/pgbench" "${conn[@]}" -i -q -s "$PG_SCALE" postgres \
      >"$OUT/r$round-$label-pgbench-init.log" 2>&1; then
    echo "$round $label pgbench error init" | tee -a "$results"; pg_stop; return 1
  fi
  t1=$(date +%s.%N)
  echo "$round $label pgbench init_s $(python3 -c "print(round($t1 - $t0, 2))")" | tee -a "$results"
  out="$OUT/r$round-$label-pgbench.log"
  log "round $round: $label: pgbench -T $PG_SECS -c $PG_CLIENTS -j $PG_JOBS"
  if ! bounded $((PG_SECS + WAIT_SECS)) "$PG_BIN/pgbench" "${conn[@]}" -T "$PG_SECS" -c "$PG_CLIENTS" \
      -j "$PG_JOBS" postgres >"$out" 2>&1; then
    echo "$round $label pgbench error run" | tee -a "$results"; pg_stop; return 1
  fi
  tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$out" | head -1)
  lat=$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' "$out" | head -1)
  { echo "$round $label pgbench tps ${tps:-error}"; echo "$round $label pgbench lat_ms ${lat:-error}"; } | tee -a "$results"
  pg_stop
  cp "$AUX/postgres.log" "$OUT/r$round-$label-postgres.log"
}

# --- Kafka ----------------------------------------------------------------------------------
kjava() {  # kjava HEAP LOG4J_CONFIG: sets KJAVA to a JVM command line on the Kafka home's jars
  KJAVA=(java "$1" -XX:+UseSerialGC -Djava.awt.headless=true "-Dlog4j2.configurationFile=$2"
    -cp "$KAFKA_HOME/libs/*")
}
run_kafka() {  # run_kafka ROUND LABEL
  local round=$1 label=$2 port cport cid props broker i acks topic out line warmup
  port=$(free_port) cport=$(free_port)
  # A cluster id as Kafka makes them: URL-safe base64 of 16 random bytes, never starting with
  # '-' (the storage tool would take it for an option).
  cid=$(python3 -c 'import base64, uuid
while True:
    c = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not c.startswith("-"): break
print(c)')
  for lv in INFO WARN; do
    printf '%s\n' "rootLogger.level=$lv" "rootLogger.appenderRef.out.ref=OUT" "appender.out.type=Console" \
      "appender.out.name=OUT" "appender.out.target=SYSTEM_ERR" "appender.out.layout.type=PatternLayout" \
      "appender.out.layout.pattern=[%d] %p %m (%c)%n" >"$AUX/log4j2-$lv.properties"
  done
  props="$AUX/server.properties"
  cat >"$props" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$DIR/kafka-logs
metadata.log.dir=$AUX/kafka-metadata
num.partitions=1
auto.create.topics.enable=false
log.cleaner.enable=false
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
  log "round $round: $label: Kafka broker on 127.0.0.1:$port, log.dirs on $DIR/kafka-logs"
  kjava -Xmx256m "$AUX/log4j2-WARN.properties"
  if ! bounded "$WAIT_SECS" "${KJAVA[@]}" kafka.tools.StorageTool format -t "$cid" -c "$props" \
      >"$AUX/format.log" 2>&1; then
    cp "$AUX/format.log" "$OUT/r$round-$label-kafka-format.log"
    echo "$round $label kafka error format" | tee -a "$results"; return 1
  fi
  kjava "$KAFKA_HEAP" "$AUX/log4j2-INFO.properties"
  (cd "$AUX" && exec "${KJAVA[@]}" kafka.Kafka "$props") >"$AUX/broker.log" 2>&1 &
  broker=$!
  PIDS+=("$broker")
  for ((i = 0; i < WAIT_SECS * 10; i++)); do
    grep -qs "Kafka Server started" "$AUX/broker.log" && break
    alive "$broker" || break
    sleep 0.1
  done
  if ! grep -qs "Kafka Server started" "$AUX/broker.log"; then
    cp "$AUX/broker.log" "$OUT/r$round-$label-kafka-broker.log"
    echo "$round $label kafka error broker" | tee -a "$results"
    stop_pid "$broker" 60; forget_pid "$broker"; return 1
  fi
  for acks in $KAFKA_ACKS; do
    topic="perf-acks$acks"
    kjava -Xmx256m "$AUX/log4j2-WARN.properties"
    if ! bounded "$WAIT_SECS" "${KJAVA[@]}" org.apache.kafka.tools.TopicCommand \
        --bootstrap-server "127.0.0.1:$port" --create --topic "$topic" --partitions 1 \
        --replication-factor 1 >"$AUX/topic.log" 2>&1; then
      cp "$AUX/topic.log" "$OUT/r$round-$label-kafka-topic.log"
      echo "$round $label kafka-acks$acks error topic" | tee -a "$results"; continue
    fi
    out="$OUT/r$round-$label-kafka-acks$acks.log"
    warmup=()
    [ "$KAFKA_WARMUP" -gt 0 ] && warmup=(--warmup-records "$KAFKA_WARMUP")
    log "round $round: $label: ProducerPerformance $KAFKA_RECORDS x $KAFKA_RECORD_SIZE B, acks=$acks"
    # Bounded by WAIT_SECS plus a floor of 1 MB/s for the records themselves.
    kjava -Xmx512m "$AUX/log4j2-WARN.properties"
    if ! bounded $((WAIT_SECS + KAFKA_RECORDS * KAFKA_RECORD_SIZE / 1000000)) \
        "${KJAVA[@]}" org.apache.kafka.tools.ProducerPerformance \
        --topic "$topic" --num-records "$KAFKA_RECORDS" --record-size "$KAFKA_RECORD_SIZE" \
        --throughput -1 --producer-props "bootstrap.servers=127.0.0.1:$port" "acks=$acks" \
        "${warmup[@]}" >"$out" 2>&1; then
      echo "$round $label kafka-acks$acks error run" | tee -a "$results"; continue
    fi
    # The summary: "N records sent, R records/sec (M MB/sec), A ms avg latency, X ms max
    # latency, P50 ms 50th, P95 ms 95th, P99 ms 99th, P999 ms 99.9th."; with warm-up records
    # a second one follows, "M steady state records sent, ...", which is the one taken.
    line=$(grep -E '^[0-9]+ (steady state )?records sent, .* 99th' "$out" | tail -1)
    python3 - "$round" "$label" "kafka-acks$acks" "$line" <<'PY' | tee -a "$results"
import re, sys
rnd, label, wl, line = sys.argv[1:5]
m = re.search(r"([\d.]+) records/sec \(([\d.]+) MB/sec\), ([\d.]+) ms avg latency, .* ([\d.]+) ms 99th", line)
names = ("rec_s", "mb_s", "avg_ms", "p99_ms")
for n, v in zip(names, m.groups() if m else ("error",) * 4):
    print(rnd, label, wl, n, v)
PY
  done
  stop_pid "$broker" 60; forget_pid "$broker"
  cp "$AUX/broker.log" "$OUT/r$round-$label-kafka-broker.log"
}

# --- the run --------------------------------------------------------------------------------
{
  echo "# realworld.sh date=$(date -u +%FT%TZ) host=$(hostname) nproc=$(nproc) kernel=$(uname -r)"
  echo "# commit=$(cd "$repo" && git rev-parse --short HEAD)$(cd "$repo" && git diff --quiet HEAD -- fusefs || echo -dirty)" \
       "bindfs=$(bindfs --version 2>&1 | head -1 | tr ' ' _) postgres=$("$PG_BIN/postgres" --version 2>/dev/null | awk '{print $3}')" \
       "kafka=${KAFKA_HOME:-none}"
  echo "# modes=\"$LOSSFS_MODES\" pg: scale=$PG_SCALE secs=$PG_SECS clients=$PG_CLIENTS jobs=$PG_JOBS" \
       "kafka: records=$KAFKA_RECORDS size=$KAFKA_RECORD_SIZE acks=\"$KAFKA_ACKS\" warmup=$KAFKA_WARMUP"
  echo "# base=$BASE fs=$(df -T "$BASE" | awk 'NR==2{print $2" "$1}') load=$(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$results" >&2

targets=()
for t in $TARGETS; do
  case $t in
    native | bindfs) targets+=("$t") ;;
    lossfs) for i in "${!MODE_NAMES[@]}"; do targets+=("lossfs:$i"); done ;;
    *) die "unknown target $t (native, bindfs, lossfs)" ;;
  esac
done

for round in $(seq "$ROUNDS"); do
  for t in "${targets[@]}"; do
    case $t in lossfs:*) label="lossfs-${MODE_NAMES[${t#lossfs:}]}" ;; *) label=$t ;; esac
    echo "# r$round $label start load=$(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$results" >&2
    if ! setup_target "$t"; then
      echo "$round $label mount error" | tee -a "$results"; teardown_target "$t"; continue
    fi
    for w in $WORKLOADS; do
      case $w in
        pgbench) run_pgbench "$round" "$label" ;;
        kafka) run_kafka "$round" "$label" ;;
        *) die "unknown workload $w (pgbench, kafka)" ;;
      esac
    done
    teardown_target "$t"
  done
done

python3 - "$results" <<'PY' | tee "$OUT/table.txt"
import sys, collections
vals = collections.defaultdict(dict)   # (round, workload, metric) -> label -> value
rows, labels = [], []
for line in open(sys.argv[1]):
    if line.startswith("#"): continue
    f = line.split()
    if len(f) != 5: continue
    rnd, label, wl, metric, v = f
    try: v = float(v)
    except ValueError: continue
    if (wl, metric) not in rows: rows.append((wl, metric))
    if label not in labels: labels.append(label)
    vals[(rnd, wl, metric)][label] = v
base = [l for l in ("native", "bindfs") if l in labels]
modes = [l for l in labels if l not in base]
lower_better = {"init_s", "lat_ms", "avg_ms", "p99_ms"}
cols = base + modes
ratio_cols = [(m, b) for m in modes for b in base]
short = lambda l: l.replace("lossfs-", "")
hdr = f"{'round':<5} {'workload':<13} {'metric':<7}" + "".join(f" {c:>14}" for c in cols) \
    + "".join(f" {short(m) + '/' + b[:3]:>14}" for m, b in ratio_cols)
print(hdr); print("-" * len(hdr))
for r in sorted({k[0] for k in vals}, key=int):
    for wl, metric in rows:
        d = vals.get((r, wl, metric), {})
        if not d: continue
        cell = lambda l: f" {d[l]:14.2f}" if l in d else f" {'-':>14}"
        rat = lambda a, b: f" {d[a] / d[b]:13.2f}x" if a in d and b in d and d[b] else f" {'-':>14}"
        print(f"{r:<5} {wl:<13} {metric:<7}" + "".join(cell(c) for c in cols)
              + "".join(rat(m, b) for m, b in ratio_cols))
print("(init_s, lat_ms, avg_ms, p99_ms: lower is better, a ratio above 1 is slower; the rest higher is better)")
PY
log "results in $OUT"
