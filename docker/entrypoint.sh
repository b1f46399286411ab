#!/bin/sh
# Container entrypoint: mounts lossfs over the program's data directory and runs the
# program on it under `lossfs run`, which forwards SIGTERM/SIGINT/SIGHUP to it, unmounts
# when it exits and exits with its status.
#
#   entrypoint.sh PROGRAM ARGS...
#
# Environment:
#   LOSSFS_BACKING  the real data, on a volume      (default /data/backing)
#   LOSSFS_MOUNT    where the program expects it   (default /var/lib/kafka)
#   LOSSFS_OPTIONS  lossfs -o options              (default allow_other,default_permissions)
#   LOSSFS_RESTART  1: start PROGRAM again after each power cut that kills it; otherwise a
#                   cut ends the run (and the container) with status 137
#   LOSSFS_BIN      the lossfs binary              (default lossfs, from PATH)
#
# `docker kill` + `docker start` is a power cut: the daemon dies without a clean unmount,
# and the next mount of the same backing directory rolls its unsynced data back.
# See docs/docker.md.
set -eu

backing=${LOSSFS_BACKING:-/data/backing}
mnt=${LOSSFS_MOUNT:-/var/lib/kafka}
options=${LOSSFS_OPTIONS-allow_other,default_permissions}
lossfs=${LOSSFS_BIN:-lossfs}

if [ $# -eq 0 ]; then
    echo "entrypoint.sh: no program given (entrypoint.sh PROGRAM ARGS...)" >&2
    exit 2
fi
mkdir -p "$backing" "$mnt"

restart=
case "${LOSSFS_RESTART:-0}" in
    1|yes|true) restart=--restart ;;
    0|no|false|"") ;;
    *) echo "entrypoint.sh: LOSSFS_RESTART must be 1 or 0, not $LOSSFS_RESTART" >&2; exit 2 ;;
esac

if [ -n "$options" ]; then
    exec "$lossfs" run --backing "$backing" --mount "$mnt" -o "$options" $restart -- "$@"
fi
exec "$lossfs" run --backing "$backing" --mount "$mnt" $restart -- "$@"
