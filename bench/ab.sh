#!/usr/bin/env bash
# bench/ab.sh — alternating A/B runs of fsbench workloads against native (see docs/BENCHMARKS.md).
#
# For ROUND in 1..ROUNDS (default 3) runs fsbench.sh (FSB_ONLY, default "smallfiles") on a plain
# directory ("native"), then on one fresh lossfs mount per variant, in the order given, every
# variant under the same base directory (same file system), unmounting in between; then prints
# every variant's value/native ratio per round and the median.  A variant is NAME=BINARY OPTIONS,
# variants separated by ';', e.g.
#   VARIANTS="before=/var/tmp/lossfs-main -o cache=writeback;after=target/release/lossfs -o cache=writeback"
# Env: FSBENCH (default ../../shared/bench/fsbench.sh), ROUNDS, BASE (scratch dir, default under
# /var/tmp, removed), OUT (results.txt goes there, default BASE/out, kept), FSB_* passed through.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
FSBENCH=${FSBENCH:-$here/../../shared/bench/fsbench.sh}
[ -f "$FSBENCH" ] || { echo "ab.sh: fsbench not found at $FSBENCH (set FSBENCH=)" >&2; exit 2; }
ROUNDS=${ROUNDS:-3}
export FSB_ONLY=${FSB_ONLY:-smallfiles}
: "${VARIANTS:?set VARIANTS=\"NAME=BINARY OPTIONS;...\"}"
BASE=${BASE:-$(mktemp -d /var/tmp/lossfs-ab.XXXXXX)}
OUT=${OUT:-$BASE/out}
mkdir -p "$BASE" "$OUT"
results="$OUT/results.txt"
. "$here/common.sh"
cleanup() {
  for m in "$BASE"/*/mnt; do [ -d "$m" ] && mounted "$m" && timeout 30 fusermount3 -u "$m"; done
  find "$BASE" -mindepth 1 -maxdepth 1 ! -name out -exec rm -rf {} +
  rmdir "$BASE" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pass() {  # pass ROUND LABEL DIR
  bash "$FSBENCH" "$1" "$2" 2>&1 | while IFS= read -r line; do
    case $line in "#"*) ;; *) echo "$ROUND $line" ;; esac
  done | tee -a "$results" >&2
}

echo "# ab.sh date=$(date -u +%FT%TZ) only=\"$FSB_ONLY\" rounds=$ROUNDS load=\"$(cut -d' ' -f1-3 /proc/loadavg)\"" | tee -a "$results" >&2
IFS=';' read -ra variants <<<"$VARIANTS"
for ROUND in $(seq "$ROUNDS"); do
  d="$BASE/native"; rm -rf "$d"; mkdir -p "$d"
  log "round $ROUND: native (load $(cut -d' ' -f1 /proc/loadavg))"
  pass "$d" native; rm -rf "$d"
  for v in "${variants[@]}"; do
    name=${v%%=*} cmd=${v#*=}
    back="$BASE/$name/back" mnt="$BASE/$name/mnt"
    rm -rf "$BASE/$name"; mkdir -p "$back" "$mnt"
    read -ra argv <<<"$cmd"
    log "round $ROUND: $name (${argv[*]})"
    if timeout 30 "${argv[0]}" "$back" "$mnt" "${argv[@]:1}"; then
      pid=$(pgrep -f -- "$back $mnt" | head -1)
      pass "$mnt" "$name"
      unmount "$mnt" "$pid"
    else
      echo "$ROUND $name mount error" | tee -a "$results" >&2
    fi
    rm -rf "$BASE/$name"
  done
done

python3 - "$results" <<'PY' | tee "$OUT/table.txt"
import collections, statistics, sys
vals = collections.defaultdict(dict)   # (workload, round) -> label -> value
labels = []
for line in open(sys.argv[1]):
    f = line.split()
    if line.startswith("#") or len(f) < 4:
        continue
    try:
        v = float(f[3])
    except ValueError:
        continue
    rnd, label, wl = f[0], f[1], f[2]
    vals[(wl, rnd)][label] = v
    if label != "native" and label not in labels:
        labels.append(label)
for wl in sorted({w for w, _ in vals}):
    rounds = sorted((r for w, r in vals if w == wl), key=int)
    print(f"{wl}: value (ratio to native) per round")
    ratios = collections.defaultdict(list)
    for r in rounds:
        d = vals[(wl, r)]
        n = d.get("native")
        cells = [f"native {n:.0f}" if n else "native -"]
        for l in labels:
            if l in d and n:
                ratios[l].append(d[l] / n)
                cells.append(f"{l} {d[l]:.0f} ({d[l] / n:.2f}x)")
        print(f"  round {r}: " + ", ".join(cells))
    for l in labels:
        if ratios[l]:
            print(f"  {l}: median {statistics.median(ratios[l]):.2f}x of "
                  + " ".join(f"{x:.2f}" for x in ratios[l]))
PY
log "results in $OUT"
