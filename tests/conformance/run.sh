#!/usr/bin/env bash
# POSIX conformance of lossfs: runs pjdfstest (the Rust rewrite, `cargo install pjdfstest`)
# on a plain directory and on a lossfs mount (as root, -o allow_other,default_permissions)
# of a directory on the same file system, and fails on every case that passes on the plain
# directory but not on lossfs.  Cases failing on both are reported, not fatal: they say
# something about the backing file system, not about lossfs.
#
# Usage: tests/conformance/run.sh   (as root, after `cargo build --workspace`)
# It does so once per namespace durability model (-o metadata=durable, journal, posix) and
# cache mode (-o cache=writethrough, writeback).
# Env: LOSSFS_BIN (default $CARGO_TARGET_DIR/debug/lossfs or target/debug/lossfs),
#      MODELS (default "durable journal posix": the metadata models to run),
#      CACHES (default "writethrough writeback": the cache modes to run each model in),
#      PJDFSTEST (default pjdfstest from PATH), KEEP=1 keeps the logs' directory.
set -euo pipefail

cd "$(dirname "$0")/../.."
conf="$PWD/tests/conformance/pjdfstest.toml"
lossfs="${LOSSFS_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/debug/lossfs}"
pjdfstest="${PJDFSTEST:-pjdfstest}"

die() { echo "conformance: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "must run as root (pjdfstest switches users, lossfs mounts FUSE)"
[ -x "$lossfs" ] || die "$lossfs not found: run cargo build --workspace first (or set LOSSFS_BIN)"
command -v "$pjdfstest" >/dev/null || die "$pjdfstest not installed: cargo install pjdfstest --locked --version 0.2.2"
command -v fusermount3 >/dev/null || die "fusermount3 not installed (apt-get install fuse3)"

# pjdfstest switches to the users of [dummy_auth] in pjdfstest.toml: nobody/nogroup exist on
# Debian, "tests" is created here.
if ! getent passwd tests >/dev/null; then
    useradd --system --no-create-home --user-group --shell /usr/sbin/nologin tests \
        || die "cannot create the user tests"
fi

start=$SECONDS
work=$(mktemp -d /tmp/lossfs_conformance.XXXXXX)
# The other users must be able to reach the directories under test.
chmod 755 "$work"
mkdir -m 755 "$work/plain" "$work/backing" "$work/mnt" "$work/second"
daemon=""

cleanup() {
    if grep -qs " $work/mnt " /proc/self/mountinfo; then
        fusermount3 -u "$work/mnt" 2>/dev/null || fusermount3 -u -z "$work/mnt" || true
    fi
    if [ -n "$daemon" ] && kill -0 "$daemon" 2>/dev/null; then
        kill -KILL "$daemon" 2>/dev/null || true
    fi
    umount "$work/second" 2>/dev/null || true
    if [ "${KEEP:-0}" = 1 ]; then
        echo "conformance: logs kept in $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

# A second file system for the EXDEV cases (rename/link across file systems).
mount -t tmpfs -o size=16m,mode=755 lossfs-conformance "$work/second" \
    || die "cannot mount a tmpfs on $work/second"

run_suite() { # DIR LOG: runs the whole suite in DIR, bounded; its verdicts go to LOG
    local rc=0
    (cd "$1" && timeout --kill-after=10 600 "$pjdfstest" -c "$conf" -p "$1" -s "$work/second") \
        >"$2" 2>&1 || rc=$?
    # 1 is "some cases failed"; anything else (a crash, the timeout) means the run is broken.
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 1 ]; then
        tail -n 40 "$2" >&2
        die "pjdfstest on $1 exited with $rc"
    fi
}

echo "conformance: pjdfstest on a plain directory ($work/plain)"
run_suite "$work/plain" "$work/plain.log"

# Verdict lines look like "chmod::eperm::regular      ok" (or FAILED, skipped).
verdicts() { sed -nE 's/^([a-z0-9_:]+)[[:space:]]+(ok|FAILED|skipped)$/\1 \2/p' "$1" | sort; }
verdicts "$work/plain.log" >"$work/plain.v"
[ -s "$work/plain.v" ] || die "no verdicts in the plain run's output"
echo "conformance: plain:  $(grep Summary "$work/plain.log" || echo 'no summary')"

run_lossfs() { # MODEL CACHE: mounts lossfs with -o metadata=MODEL,cache=CACHE, runs the suite
    local model="$1-$2" rc=0
    rm -rf "$work/backing" && mkdir -m 755 "$work/backing"
    echo "conformance: pjdfstest on lossfs -o metadata=$1,cache=$2 ($work/mnt over $work/backing)"
    "$lossfs" "$work/backing" "$work/mnt" -o "allow_other,default_permissions,metadata=$1,cache=$2" -f \
        2>"$work/daemon-$model.stderr" &
    daemon=$!
    for _ in $(seq 100); do
        grep -qs " $work/mnt .* - fuse.lossfs " /proc/self/mountinfo && break
        kill -0 "$daemon" 2>/dev/null || { cat "$work/daemon-$model.stderr" >&2; die "lossfs exited before mounting"; }
        sleep 0.1
    done
    grep -qs " $work/mnt .* - fuse.lossfs " /proc/self/mountinfo \
        || { cat "$work/daemon-$model.stderr" >&2; die "lossfs did not mount within 10 s"; }
    run_suite "$work/mnt" "$work/lossfs-$model.log"

    # The daemon must have survived the whole run and unmount cleanly.
    kill -0 "$daemon" 2>/dev/null || { cat "$work/daemon-$model.stderr" >&2; die "the lossfs daemon died during the run"; }
    fusermount3 -u "$work/mnt" || die "fusermount3 -u $work/mnt failed"
    timeout 20 tail --pid="$daemon" -f /dev/null || die "lossfs still running 20 s after unmount"
    wait "$daemon" || rc=$?
    daemon=""
    [ "$rc" -eq 0 ] || { cat "$work/daemon-$model.stderr" >&2; die "lossfs exited with $rc after unmount"; }
}

compare() { # MODEL-CACHE: prints what differs from the plain run; returns 1 on a regression
    local model=$1 log="$work/lossfs-$1.log" v="$work/lossfs-$1.v" both skipped regressions c
    verdicts "$log" >"$v"
    echo "conformance: lossfs metadata=$model: $(grep Summary "$log" || echo 'no summary')"
    both=$(join "$work/plain.v" "$v" | awk '$2 == "FAILED" && $3 == "FAILED" { print $1 }')
    if [ -n "$both" ]; then
        echo "conformance: metadata=$model: failing on both (not counted against lossfs):"
        printf '  %s\n' $both
    fi
    # A case skipped on lossfs only is listed with pjdfstest's reason, not counted: the
    # known one, link::link_count_max, asks pathconf(_PC_LINK_MAX), which glibc answers
    # from the file system type, and a FUSE mount's type says nothing about the backing
    # file system.
    skipped=$(join "$work/plain.v" "$v" | awk '$2 == "ok" && $3 == "skipped" { print $1 }')
    for c in $skipped; do
        echo "conformance: metadata=$model: skipped on lossfs only: $c: $(grep -A1 -E "^$c[[:space:]]+skipped" "$log" | tail -n 1 | sed 's/^[[:space:]]*//')"
    done
    # A case that passes on the plain directory and fails on lossfs (or is missing because
    # the run broke off) is a regression.
    regressions=$(join -a 1 -e missing -o 0,1.2,2.2 "$work/plain.v" "$v" \
        | awk '$2 == "ok" && ($3 == "FAILED" || $3 == "missing") { print $1 " (" $3 ")" }')
    [ -z "$regressions" ] && return 0
    echo "conformance: metadata=$model: these cases pass on a plain directory but not on lossfs:" >&2
    printf '%s\n' "$regressions" | sed 's/^/  /' >&2
    for c in $(printf '%s\n' "$regressions" | cut -d' ' -f1); do
        grep -A2 -E "^$c[[:space:]]+FAILED" "$log" | sed 's/^/    /' >&2 || true
    done
    return 1
}

# Every namespace durability model: journal and posix keep removed entries in a graveyard,
# which no program may be able to tell (link counts, for one).
failed=""
for model in ${MODELS:-durable journal posix}; do
    for cache in ${CACHES:-writethrough writeback}; do
        run_lossfs "$model" "$cache"
        compare "$model-$cache" || failed="$failed $model-$cache"
    done
done
echo "conformance: took $((SECONDS - start)) s"
if [ -n "$failed" ]; then
    echo "conformance: FAILED: cases that pass on a plain directory fail on lossfs with metadata-cache=${failed# }" >&2
    exit 1
fi
echo "conformance: ok: every case that passes on a plain directory passes on lossfs, in every metadata model and cache mode"
