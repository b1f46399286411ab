# bench/common.sh — sourced by the bench scripts: log lines, mount checks, a bounded unmount.

log() { echo "[$(date -u +%T)] $*" >&2; }

mounted() { grep -qs " $1 " /proc/mounts; }

# unmount MNT [PID]: unmounts MNT (lazily if it stays busy) and waits up to 20 s for the FUSE
# daemon PID serving it (found from its command line when not given) to exit, else kills it.
unmount() {
  local mnt=$1 pid=${2:-}
  [ -n "$pid" ] || pid=$(pgrep -f -- " $mnt\$" | head -1)
  if mounted "$mnt"; then
    timeout 30 fusermount3 -u "$mnt" 2>/dev/null || timeout 10 fusermount3 -u -z "$mnt"
  fi
  for _ in $(seq 200); do
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then log "daemon $pid still alive, killing"; kill "$pid"; fi
}
