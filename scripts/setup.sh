#!/usr/bin/env bash
# setup.sh — a fresh Debian 12 machine, as root, ready for lossfs in one command: installs
# the packages of the demo and of the whole test suite (the list .ci/run installs, Kafka
# included), builds everything, and runs the demo (scripts/demo.sh).  Then
# `cargo build --workspace && cargo test --workspace -- --test-threads=2` runs the tests.
#
# Needs the Rust toolchain (cargo, stable) already installed: Debian 12's rustc is too old.
# Kafka comes from Maven Central through tests/kafka/fetch.sh (into /var/cache/lossfs-kafka,
# or $LOSSFS_KAFKA_CACHE); pjdfstest from crates.io.
set -euo pipefail

cd "$(dirname "$0")/.."

[ "$(id -u)" -eq 0 ] || { echo "setup: run as root (apt-get, FUSE mounts)" >&2; exit 1; }
command -v cargo >/dev/null || {
    echo "setup: cargo is missing: install the Rust stable toolchain first (Debian 12's rustc is too old)" >&2
    exit 1
}

export DEBIAN_FRONTEND=noninteractive
apt-get update
# The demo: fuse3 and python3.  The tests: the same packages as .ci/run.
apt-get install -y --no-install-recommends fuse3 python3 systemd
apt-get install -y --no-install-recommends redis-server postgresql-15 etcd-server etcd-client \
    zookeeper nats-server
apt-get install -y --no-install-recommends libacl1-dev e2fsprogs
if ! command -v javac >/dev/null || ! command -v mvn >/dev/null; then
    apt-get install -y --no-install-recommends openjdk-17-jdk-headless maven
fi

pjdfstest_version=0.2.2
if [ "$(pjdfstest --version 2>/dev/null)" != "pjdfstest $pjdfstest_version" ]; then
    cargo install pjdfstest --locked --version "$pjdfstest_version"
fi

tests/kafka/fetch.sh

[ -c /dev/fuse ] || modprobe fuse 2>/dev/null || true
[ -c /dev/fuse ] || {
    echo "setup: /dev/fuse is missing (modprobe fuse; in a container: --device /dev/fuse --cap-add SYS_ADMIN)" >&2
    exit 1
}

cargo build --release --workspace
cargo build --workspace
./scripts/demo.sh
