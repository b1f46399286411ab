#!/bin/sh
# Installs lossfs: the binaries, the systemd template unit lossfs@.service, an example
# configuration and the example Kafka drop-in.
#
#   scripts/install.sh [--prefix DIR] [--bin-dir DIR] [--unit-dir DIR] [--destdir DIR]
#
#   --prefix DIR   where the binaries live at run time (default /usr: /usr/bin/lossfs,
#                  /usr/bin/lossctl; mount.fuse3 finds helpers in /usr/bin); the unit's
#                  ExecStart names PREFIX/bin/lossfs
#   --bin-dir DIR  where to take the built binaries from (default target/release)
#   --unit-dir DIR where the unit goes (default /lib/systemd/system, where packages put
#                  theirs, so that a copy in /etc/systemd/system still overrides it)
#   --destdir DIR  stage everything under DIR instead of / (also env DESTDIR), for packaging
#                  and tests; nothing outside DIR is touched and systemd is not reloaded
#
# Installs DESTDIR/PREFIX/bin/{lossfs,lossctl}, DESTDIR/UNITDIR/lossfs@.service,
# DESTDIR/etc/lossfs/example.conf (an existing one is kept) and
# DESTDIR/PREFIX/share/doc/lossfs/kafka.service.d/lossfs.conf (copy it to
# /etc/systemd/system/kafka.service.d/ to use it).  See docs/systemd.md.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
prefix=/usr
bindir="$here/target/release"
destdir="${DESTDIR:-}"
unitdir=/lib/systemd/system

die() { echo "install.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; prefix=$2; shift 2 ;;
        --bin-dir) [ $# -ge 2 ] || die "--bin-dir needs a directory"; bindir=$2; shift 2 ;;
        --destdir) [ $# -ge 2 ] || die "--destdir needs a directory"; destdir=$2; shift 2 ;;
        --unit-dir) [ $# -ge 2 ] || die "--unit-dir needs a directory"; unitdir=$2; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

case "$prefix" in /*) ;; *) die "--prefix must be an absolute path: $prefix" ;; esac
case "$unitdir" in /*) ;; *) die "--unit-dir must be an absolute path: $unitdir" ;; esac
for b in lossfs lossctl; do
    [ -x "$bindir/$b" ] || die "$bindir/$b not found: build it first (cargo build --release --workspace) or pass --bin-dir"
done

install -d "$destdir$prefix/bin" "$destdir$unitdir" "$destdir/etc/lossfs" \
    "$destdir$prefix/share/doc/lossfs/kafka.service.d"
install -m 0755 "$bindir/lossfs" "$bindir/lossctl" "$destdir$prefix/bin/"
sed "s|^ExecStart=/usr/bin/lossfs |ExecStart=$prefix/bin/lossfs |" \
    "$here/systemd/lossfs@.service" > "$destdir$unitdir/lossfs@.service"
chmod 0644 "$destdir$unitdir/lossfs@.service"
install -m 0644 "$here/systemd/kafka.service.d/lossfs.conf" \
    "$destdir$prefix/share/doc/lossfs/kafka.service.d/lossfs.conf"
if [ ! -e "$destdir/etc/lossfs/example.conf" ]; then
    cat > "$destdir/etc/lossfs/example.conf" <<'CONF'
# Configuration of lossfs@<instance>.service, where <instance> is the escaped mount point
# (systemd-escape --path /var/lib/kafka gives var-lib-kafka).  Copy this file to
# /etc/lossfs/<instance>.conf, e.g. /etc/lossfs/var-lib-kafka.conf, and edit it.
#
# The directory that holds the real data (must exist; not inside the mount point):
BACKING=/var/lib/kafka.backing
# Mount options, comma separated, as for `lossfs -o` (see lossfs --help):
OPTIONS=allow_other,default_permissions
CONF
    chmod 0644 "$destdir/etc/lossfs/example.conf"
fi

echo "installed lossfs into ${destdir:-/} (prefix $prefix, unit in $unitdir)"
# Earlier versions installed the unit into /etc, where it would hide this one.
old="$destdir/etc/systemd/system/lossfs@.service"
if [ "$unitdir" != /etc/systemd/system ] && [ -e "$old" ]; then
    echo "install.sh: $old (from an earlier install) overrides the new unit: remove it" >&2
fi
if [ -z "$destdir" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
