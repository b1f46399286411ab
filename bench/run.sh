#!/usr/bin/env bash
# bench/run.sh — lossfs performance run (see docs/BENCHMARKS.md).
#
# For ROUND in 1..ROUNDS (default 2) runs the shared fio workload set
# (../shared/bench/fsbench.sh next to the repository, or $FSBENCH) on
#   native  a plain directory,
#   bindfs  a `bindfs BACK MNT` mount (the FUSE passthrough baseline),
#   lossfs  a `lossfs BACK MNT` mount on a fresh backing directory,
# all under one base directory on the same filesystem, unmounting in between; then prints a
# table with lossfs/bindfs and lossfs/native per workload and round. Then two extra measurements:
#   rss       daemon VmRSS/VmHWM after RSS_MIB (default 4096) MiB of unsynced appends,
#   powercut  `lossctl powercut --no-kill --json` after CUT_MIB (default 1024) MiB of unsynced
#             appends: its elapsed_ms and the wall time of the command.
# Needs root (or fuse access), fio, bindfs, python3. Env:
#   FSBENCH=path     fsbench.sh to call (default: $(dirname "$0")/../../shared/bench/fsbench.sh)
#   BASE=dir         scratch dir (default: mktemp -d under /var/tmp; removed at the end)
#   OUT=dir          where results.txt / extras.txt / table.txt go (default: $BASE/out, kept)
#   ROUNDS=N (2)     SKIP_BUILD=1     ONLY_EXTRAS=1 / NO_EXTRAS=1
#   LOSSFS_OPTS="-o threads=8"  extra lossfs options    FSB_* are passed through to fsbench.sh.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
FSBENCH=${FSBENCH:-$here/../../shared/bench/fsbench.sh}   # i.e. <repo>/../shared/bench
[ -f "$FSBENCH" ] || { echo "run.sh: fsbench not found at $FSBENCH (set FSBENCH=)" >&2; exit 2; }
ROUNDS=${ROUNDS:-2} RSS_MIB=${RSS_MIB:-4096} CUT_MIB=${CUT_MIB:-1024}
LOSSFS_OPTS=${LOSSFS_OPTS:-}
for tool in fio bindfs python3 fusermount3; do
  command -v $tool >/dev/null || { echo "run.sh: $tool is missing (apt-get install -y fio bindfs)" >&2; exit 2; }
done

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  (cd "$repo" && cargo build --release --workspace) || exit 2
fi
LOSSFS="$repo/target/release/lossfs" LOSSCTL="$repo/target/release/lossctl"

BASE=${BASE:-$(mktemp -d /var/tmp/lossfs-bench.XXXXXX)}
mkdir -p "$BASE"
OUT=${OUT:-$BASE/out}
mkdir -p "$OUT"
results="$OUT/results.txt" extras="$OUT/extras.txt"
. "$here/common.sh"
cleanup() {
  for m in "$BASE"/*/mnt; do [ -d "$m" ] && unmount "$m"; done
  [ "${KEEP_BASE:-0}" = 1 ] || find "$BASE" -mindepth 1 -maxdepth 1 ! -name out -exec rm -rf {} +
  rmdir "$BASE" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mount_lossfs() {  # mount_lossfs NAME -> sets BACK, MNT, PID
  BACK="$BASE/$1/back" MNT="$BASE/$1/mnt"
  rm -rf "$BASE/$1"; mkdir -p "$BACK" "$MNT"
  # shellcheck disable=SC2086
  timeout 30 "$LOSSFS" "$BACK" "$MNT" $LOSSFS_OPTS || { log "lossfs mount failed"; return 1; }
  PID=$(pgrep -f -- "$BACK $MNT" | head -1)
}

{
  echo "# run.sh date=$(date -u +%FT%TZ) host=$(hostname) nproc=$(nproc) kernel=$(uname -r)"
  echo "# commit=$(cd "$repo" && git rev-parse --short HEAD)$(cd "$repo" && git diff --quiet HEAD -- fusefs ctl || echo -dirty)" \
       "bindfs=$(bindfs --version 2>&1 | head -1 | tr ' ' _) lossfs_opts=\"$LOSSFS_OPTS\""
  echo "# base=$BASE fs=$(df -T "$BASE" | awk 'NR==2{print $2" "$1}')" \
       "env: $(env | grep '^FSB_' | tr '\n' ' ')"
} | tee "$results" >&2

pass() {  # pass ROUND LABEL DIR: one fsbench run, lines prefixed with the round
  local round=$1 label=$2 dir=$3 t0=$SECONDS
  log "round $round: $label on $dir"
  bash "$FSBENCH" "$dir" "$label" 2>&1 | while IFS= read -r line; do
    case $line in "#"*) echo "# r$round $line" ;; *) echo "$round $line" ;; esac
  done | tee -a "$results" >&2
  log "round $round: $label took $((SECONDS - t0)) s"
}

if [ "${ONLY_EXTRAS:-0}" != 1 ]; then
  for round in $(seq "$ROUNDS"); do
    d="$BASE/native"; rm -rf "$d"; mkdir -p "$d/dir"
    pass "$round" native "$d/dir"; rm -rf "$d"

    BACK="$BASE/bindfs/back" MNT="$BASE/bindfs/mnt"
    rm -rf "$BASE/bindfs"; mkdir -p "$BACK" "$MNT"
    if timeout 30 bindfs "$BACK" "$MNT"; then
      pass "$round" bindfs "$MNT"
      unmount "$MNT"
    else
      echo "$round bindfs mount error" | tee -a "$results"
    fi
    rm -rf "$BASE/bindfs"

    if mount_lossfs lossfs; then
      pass "$round" lossfs "$MNT"
      echo "# r$round lossfs daemon pid=$PID $(grep -E 'VmRSS|VmHWM' /proc/$PID/status 2>/dev/null | tr -s ' \t\n' ' ')" | tee -a "$results" >&2
      unmount "$MNT"
    else
      echo "$round lossfs mount error" | tee -a "$results"
    fi
    rm -rf "$BASE/lossfs"
  done

  python3 - "$results" <<'PY' | tee "$OUT/table.txt"
import sys, collections
vals = collections.defaultdict(dict)   # (round, workload) -> label -> (value, unit, p99)
order = []
for line in open(sys.argv[1]):
    if line.startswith("#"): continue
    f = line.split()
    if len(f) < 4 or f[3] == "error" or f[2] == "mount": continue
    rnd, label, wl, v, unit = f[0], f[1], f[2], f[3], f[4]
    p99 = next((x.split("=")[1] for x in f[5:] if x.startswith("p99_us=")), "")
    try: v = float(v)
    except ValueError: continue
    if wl not in order: order.append(wl)
    vals[(rnd, wl)][label] = (v, unit, p99)
rounds = sorted({r for r, _ in vals})
hdr = f"{'round':<5} {'workload':<10} {'unit':<8} {'native':>10} {'bindfs':>10} {'lossfs':>10} {'loss/bind':>9} {'loss/nat':>9}  p99_us n/b/l"
print(hdr); print("-" * len(hdr))
for r in rounds:
    for wl in order:
        d = vals.get((r, wl), {})
        if not d: continue
        unit = next(iter(d.values()))[1]
        g = lambda l: d[l][0] if l in d else None
        fmt = lambda x: f"{x:10.1f}" if x is not None else f"{'-':>10}"
        rat = lambda a, b: f"{a / b:8.2f}x" if a is not None and b else f"{'-':>9}"
        p = "/".join(d[l][2] if l in d and d[l][2] else "-" for l in ("native", "bindfs", "lossfs"))
        print(f"{r:<5} {wl:<10} {unit:<8} {fmt(g('native'))} {fmt(g('bindfs'))} {fmt(g('lossfs'))} "
              f"{rat(g('lossfs'), g('bindfs'))} {rat(g('lossfs'), g('native'))}  {p}")
PY
fi

if [ "${NO_EXTRAS:-0}" != 1 ]; then
  : > "$extras"
  # (a) RSS after RSS_MIB MiB of unsynced appends (no fsync anywhere).
  if mount_lossfs rss; then
    log "rss: appending $RSS_MIB MiB to $MNT/f without fsync (daemon pid $PID)"
    echo "# rss: before $(grep -E 'VmRSS|VmHWM' /proc/$PID/status | tr -s ' \t\n' ' ')" | tee -a "$extras" >&2
    t0=$(date +%s.%N)
    dd if=/dev/zero of="$MNT/f" bs=1M count="$RSS_MIB" conv=notrunc oflag=append status=none
    t1=$(date +%s.%N)
    rss=$(awk '/VmRSS/{print $2}' /proc/$PID/status) hwm=$(awk '/VmHWM/{print $2}' /proc/$PID/status)
    unsynced=$(timeout 30 "$LOSSCTL" status "$MNT" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["unsynced_bytes"])')
    journal=$(du -sk "$BACK/.lossfs" | cut -f1)
    echo "rss appended_mib=$RSS_MIB secs=$(python3 -c "print(round($t1-$t0,1))") vmrss_kib=$rss vmhwm_kib=$hwm unsynced_bytes=$unsynced state_dir_kib=$journal" | tee -a "$extras"
    unmount "$MNT"; rm -rf "$BASE/rss"
  fi
  # (b) powercut of CUT_MIB MiB of unsynced appends.
  if mount_lossfs cut; then
    log "powercut: appending $CUT_MIB MiB to $MNT/f without fsync"
    dd if=/dev/zero of="$MNT/f" bs=1M count="$CUT_MIB" conv=notrunc oflag=append status=none
    t0=$(date +%s%N)
    json=$(timeout 60 "$LOSSCTL" powercut "$MNT" --no-kill --json)
    t1=$(date +%s%N)
    echo "$json" > "$OUT/powercut.json"
    ms=$(echo "$json" | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["elapsed_ms"], j["lost_bytes"])')
    echo "powercut appended_mib=$CUT_MIB elapsed_ms=${ms% *} lost_bytes=${ms#* } wall_ms=$(((t1 - t0) / 1000000)) size_after=$(stat -c %s "$MNT/f")" | tee -a "$extras"
    unmount "$MNT"; rm -rf "$BASE/cut"
  fi
fi
log "results in $OUT"
