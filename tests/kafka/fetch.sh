#!/usr/bin/env bash
# Assembles a runnable Kafka home per version pinned in tests/kafka/pom.xml, from Maven
# Central only: libs/ (the broker's runtime jars, by `mvn dependency:copy-dependencies`)
# and classes/ (the scenario client, tests/kafka/LossfsKafkaClient.java, compiled against
# that version's kafka-clients).  There are no bin/ scripts: the broker runs as
# `java -cp 'HOME/libs/*' kafka.Kafka server.properties`, the tools by main class.
#
# Usage: tests/kafka/fetch.sh [3.9|4|all]   (default: all)
# Homes go to $LOSSFS_KAFKA_CACHE (default /var/cache/lossfs-kafka), one per version:
# kafka-3.9.2/, kafka-4.4.0/...  A home whose libs/ is complete is kept as it is; the
# client is recompiled when its source changes.  Needs java, javac (JDK 17) and mvn.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
pom="$here/pom.xml"
client="$here/LossfsKafkaClient.java"
cache="${LOSSFS_KAFKA_CACHE:-/var/cache/lossfs-kafka}"
which="${1:-all}"

for tool in java javac mvn sha256sum; do
    command -v "$tool" >/dev/null || {
        echo "fetch.sh: $tool is missing (apt-get install -y openjdk-17-jdk-headless maven)" >&2
        exit 1
    }
done

# The pinned version of a profile, read from the pom's properties.
pinned() {
    sed -n "s:.*<$1>\(.*\)</$1>.*:\1:p" "$pom" | head -n1
}

# fetch PROFILE VERSION: the home of one version.
fetch() {
    local profile="$1" version="$2"
    local home="$cache/kafka-$version"
    if [ -z "$version" ]; then
        echo "fetch.sh: no version for profile $profile in $pom" >&2
        exit 1
    fi
    if [ ! -f "$home/libs/.complete" ]; then
        echo "fetch.sh: assembling Kafka $version in $home"
        rm -rf "$home.tmp"
        mkdir -p "$home.tmp"
        mvn -B -q -Dstyle.color=never -f "$pom" -P "$profile" dependency:copy-dependencies \
            -DincludeScope=runtime -DoutputDirectory="$home.tmp/libs"
        [ -f "$home.tmp/libs/kafka_2.13-$version.jar" ] || {
            echo "fetch.sh: kafka_2.13-$version.jar missing after the copy" >&2
            exit 1
        }
        touch "$home.tmp/libs/.complete"
        rm -rf "$home"
        mv "$home.tmp" "$home"
    fi
    local sum
    sum="$(sha256sum "$client" | cut -d' ' -f1)"
    if [ "$(cat "$home/classes/.source-sha256" 2>/dev/null)" != "$sum" ]; then
        echo "fetch.sh: compiling the scenario client against Kafka $version"
        rm -rf "$home/classes"
        mkdir -p "$home/classes"
        javac -nowarn -cp "$home/libs/*" -d "$home/classes" "$client"
        echo "$sum" > "$home/classes/.source-sha256"
    fi
    echo "fetch.sh: Kafka $version ready in $home"
}

case "$which" in
    3.9) fetch kafka-3.9 "$(pinned kafka39.version)" ;;
    4) fetch kafka-4 "$(pinned kafka4.version)" ;;
    all)
        fetch kafka-3.9 "$(pinned kafka39.version)"
        fetch kafka-4 "$(pinned kafka4.version)"
        ;;
    *)
        echo "usage: $0 [3.9|4|all]" >&2
        exit 2
        ;;
esac
