#!/usr/bin/env bash
# Reserve, report and release 2 MiB hugepages for DPDK/SPDK, and mount hugetlbfs.
#
#   hugepages/hugepages.sh reserve N   reserve at least N 2 MiB pages (idempotent) and mount
#                                      hugetlbfs at $CARMINE_HUGE_MNT (default /dev/hugepages)
#   hugepages/hugepages.sh release     give back the pages this script reserved (the count it
#                                      found before reserving is kept in the state file)
#   hugepages/hugepages.sh status      print the pool and the mount
#
# Every action says what it did. Errors are explicit: not root, not enough free memory, or the
# kernel granted fewer pages than asked (fragmented memory).
set -euo pipefail

NR=/proc/sys/vm/nr_hugepages
MNT=${CARMINE_HUGE_MNT:-/dev/hugepages}
STATE=${CARMINE_HUGE_STATE:-/run/carmine-hugepages.before}
PAGE_KB=2048

say() { echo "hugepages: $*"; }
die() { echo "hugepages: error: $*" >&2; exit 1; }
meminfo() { awk -v k="$1:" '$1 == k { print $2 }' /proc/meminfo; }
need_root() { [ "$(id -u)" = 0 ] || die "must run as root to $1 (try: sudo $0 $*)"; }

mount_hugetlbfs() {
    if awk -v m="$MNT" '$2 == m && $3 == "hugetlbfs" { found = 1 } END { exit !found }' /proc/mounts; then
        say "hugetlbfs already mounted at $MNT"
    else
        mkdir -p "$MNT"
        mount -t hugetlbfs -o pagesize=2M nodev "$MNT"
        say "mounted hugetlbfs at $MNT"
    fi
}

status() {
    say "page size $(meminfo Hugepagesize) kB, total $(meminfo HugePages_Total), free $(meminfo HugePages_Free), reserved-by-others $(meminfo HugePages_Rsvd)"
    awk '$3 == "hugetlbfs" { print "hugepages: hugetlbfs mounted at " $2 " (" $4 ")" }' /proc/mounts
    [ -f "$STATE" ] && say "pool was $(cat "$STATE") pages before carmine reserved" || true
}

case "${1:-}" in
reserve)
    want=${2:-}
    [[ "$want" =~ ^[0-9]+$ ]] || die "usage: $0 reserve N (N = number of 2 MiB pages)"
    need_root "reserve hugepages" reserve "$want"
    [ "$(meminfo Hugepagesize)" = "$PAGE_KB" ] || die "default hugepage size is $(meminfo Hugepagesize) kB, expected 2048 kB"
    cur=$(cat "$NR")
    if [ "$cur" -ge "$want" ]; then
        say "already $cur pages reserved (wanted $want): nothing to do"
    else
        avail_kb=$(meminfo MemAvailable)
        need_kb=$(( (want - cur) * PAGE_KB ))
        [ "$avail_kb" -gt "$need_kb" ] ||
            die "not enough memory: $((need_kb / 1024)) MiB needed for $((want - cur)) more pages, $((avail_kb / 1024)) MiB available"
        [ -f "$STATE" ] || echo "$cur" > "$STATE"
        echo "$want" > "$NR"
        got=$(cat "$NR")
        if [ "$got" -lt "$want" ]; then
            die "kernel granted only $got of $want pages (memory fragmented?); try fewer, or reserve at boot (see hugepages/README.md)"
        fi
        say "reserved $want pages of 2 MiB ($((want * 2)) MiB), was $cur"
    fi
    mount_hugetlbfs
    ;;
release)
    need_root "release hugepages" release
    if [ -f "$STATE" ]; then
        before=$(cat "$STATE")
        echo "$before" > "$NR"
        rm -f "$STATE"
        say "released: pool back to $before pages (now $(cat "$NR"); pages still in use are freed when their owner exits)"
    else
        say "nothing to release: this script did not reserve pages (pool is $(cat "$NR"))"
    fi
    # Stale hugepage files of dead carmine processes (EAL --file-prefix carmine*) keep pages busy.
    find "$MNT" -maxdepth 1 -type f -name 'carmine*' -delete 2>/dev/null || true
    ;;
status)
    status
    ;;
*)
    echo "usage: $0 reserve N | release | status" >&2
    exit 2
    ;;
esac
