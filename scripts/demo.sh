#!/usr/bin/env bash
# demo.sh — lossfs in one minute: mount a temporary directory, write a synced and an
# unsynced record, cut the power, and show what survived.  Needs root, /dev/fuse, fuse3,
# and the binaries (cargo build --release --workspace; or set LOSSFS_BIN_DIR).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${LOSSFS_BIN_DIR:-$here/target/release}
[ -x "$bin/lossfs" ] || { echo "demo: $bin/lossfs missing: run cargo build --release --workspace" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "demo: run as root (FUSE mounts and open_by_handle_at need it)" >&2; exit 1; }
[ -c /dev/fuse ] || { echo "demo: /dev/fuse missing (modprobe fuse, or give the container --device /dev/fuse)" >&2; exit 1; }

work=$(mktemp -d /tmp/lossfs-demo.XXXXXX)
mkdir "$work/backing" "$work/mnt"
cleanup() { fusermount3 -u "$work/mnt" 2>/dev/null || fusermount3 -u -z "$work/mnt" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "mount $work/backing at $work/mnt"
"$bin/lossfs" "$work/backing" "$work/mnt"
log="$work/mnt/wal.log"

say "write record 1 and fsync it (durable), then records 2 and 3 without fsync"
python3 - "$log" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
os.write(fd, b"record 1: acknowledged AND fsynced\n")
os.fsync(fd)
os.write(fd, b"record 2: acknowledged, never fsynced\n")
os.write(fd, b"record 3: acknowledged, never fsynced\n")
os.close(fd)
PY
echo "--- $log before the cut:"; cat "$log"

say "a 'broker' keeps the log open (it will die with the power)"
sleep 600 <"$log" &
broker=$!
sleep 0.2

say "lossctl status"
"$bin/lossctl" status "$work/mnt"

say "lossctl powercut"
"$bin/lossctl" powercut "$work/mnt"
if kill -0 "$broker" 2>/dev/null; then echo "demo: the broker survived the cut (bug)" >&2; exit 1; fi
wait "$broker" 2>/dev/null || true

say "after the cut, what a real disk would have kept:"
cat "$log"
if grep -q "record 2" "$log"; then echo "demo: unsynced data survived (bug)" >&2; exit 1; fi
grep -q "record 1" "$log" || { echo "demo: synced data lost (bug)" >&2; exit 1; }
echo
echo "record 1 (fsynced) survived; records 2 and 3 (acknowledged but never fsynced) are gone."
