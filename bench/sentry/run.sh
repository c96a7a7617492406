#!/usr/bin/env bash
# bench/sentry/run.sh: portnanny's sentry against Debian's PortSentry 1.2 on the same scans, in
# one run, one after the other, in a lab of two network namespaces (host, scanner) joined by a
# veth pair (10.204.0.0/24, inside the namespaces only). For each side: the detector's CPU
# seconds and peak RSS over a full-port SYN scan (nmap -T5 -sS -p-) and a concurrent UDP sweep
# (-sU -p 1-1023, bounded by UDP_TIMEOUT), the time from the start of a scan to its block
# command (p50/p99 over SCANS SYN scans of ports 1-1000, each from its own address), how many
# scans were blocked at all, and for portnanny the p99 latency of ordinary `msg` connections
# idle and during the full-port scan (bench/loadgen).
#
# Usage: bench/sentry/run.sh   (root; env: SCANS=20 GAP=1.2 BYSTANDER_SECS=5 UDP_TIMEOUT=30s
#        PORTNANNY=/path/to/portnanny instead of building; PORTSENTRY_DEB=/path/to/.deb instead
#        of `apt-get download portsentry`; KEEP=1 keeps the scratch dir with the logs)
# Nothing is installed: PortSentry's .deb is unpacked into the scratch dir. Nothing touches the
# machine's own network namespace; the namespaces are deleted on exit and every process this
# script starts is killed by pid.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
BENCH_NAME=sentry-bench
# shellcheck source=bench/lib.sh
. "$here/../lib.sh"
root=$(dirname "$(dirname "$here")")
if [ -d "${HOME:-/root}/.cargo/bin" ]; then
    export PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi
SCANS=${SCANS:-20}
BYSTANDER_SECS=${BYSTANDER_SECS:-5}
UDP_TIMEOUT=${UDP_TIMEOUT:-30s}
GAP=${GAP:-1.2}
target=${CARGO_TARGET_DIR:-$root/target}
HOST=10.204.0.1
PORT=4040

[ "$(id -u)" -eq 0 ] || { echo "$BENCH_NAME: needs root (network namespaces)" >&2; exit 1; }
for c in ip nmap perl dpkg-deb; do
    command -v "$c" >/dev/null || { echo "$BENCH_NAME: $c missing" >&2; exit 1; }
done

build_portnanny_and_loadgen "$root" "$target"

# /run, not /tmp: the classifier's chroot needs no group/world-writable ancestor, and the
# path must be short (PortSentry's config path is patched into a copy of its binary, below).
work=$(mktemp -d /run/pnb.XXXXXX)
chmod 0755 "$work"
pids=()
HNS=pnb-host-$$
SNS=pnb-scan-$$
teardown() {
    cleanup
    ip netns del "$HNS" 2>/dev/null || true
    ip netns del "$SNS" 2>/dev/null || true
}
trap teardown EXIT

# The lab. Scanner addresses: .2 primary (unused), .10 the full TCP scan, .11 the UDP sweep,
# .12 the full scan during the bystander's load, .100 on one per timed scan.
ip netns add "$HNS"
ip netns add "$SNS"
ip -n "$HNS" link add vh type veth peer name vs netns "$SNS"
ip -n "$HNS" addr add "$HOST/24" dev vh
ip -n "$SNS" addr add 10.204.0.2/24 dev vs
for a in 10 11 12 $(seq 100 $((100 + SCANS - 1))); do
    ip -n "$SNS" addr add "10.204.0.$a/24" dev vs
done
for ns in "$HNS" "$SNS"; do ip -n "$ns" link set lo up; done
ip -n "$HNS" link set vh up
ip -n "$SNS" link set vs up
sleep 1

TCK=$(getconf CLK_TCK)
cpu() { awk -v t="$TCK" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / t }' "/proc/$1/stat" 2>/dev/null || echo 0; }
hwm() { awk '/^VmHWM/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo "?"; }
now() { date +%s.%N; }
# first_block FILE ADDR: the time of ADDR's first line in FILE ("ADDR SECONDS"), or nothing.
first_block() { awk -v a="$2" '$1 == a { print $2; exit }' "$1" 2>/dev/null || true; }
# pct P: the P-th percentile (nearest rank) of the numbers on stdin.
pct() { sort -n | awk -v p="$1" '{ v[NR] = $1 } END { if (NR == 0) { print "-"; exit } i = int(p * NR / 100 + 0.999); if (i < 1) i = 1; printf "%.3f", v[i] }'; }
nmap_ns() { ip netns exec "$SNS" timeout 300 nmap -n -Pn -e vs "$@" > /dev/null 2>&1 || true; }

# The block-command script: one line "ADDR SECONDS.NANOS" per run.
printf '#!/bin/sh\necho "$1 $(date +%%s.%%N)" >> "$(dirname "$0")/$(basename "$0" .sh).blocks"\n' > "$work/pn.sh"
cp "$work/pn.sh" "$work/ps.sh"
chmod 0755 "$work/pn.sh" "$work/ps.sh"

declare -A R
# cpu_of PIDS: their CPU seconds together.
cpu_of() { local d t=0; for d in $1; do t=$(awk -v a="$t" -v b="$(cpu "$d")" 'BEGIN { print a + b }'); done; echo "$t"; }
# settle PIDS: wait (at most 30 s) until their CPU time stops growing: a backlog is worked off.
settle() {
    local a b
    a=$(cpu_of "$1")
    for _ in $(seq 1 30); do
        sleep 1
        b=$(cpu_of "$1")
        [ "$a" != "$b" ] || return 0
        a=$b
    done
}
since() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
# full_scan SIDE TAG TCPADDR UDPADDR BYSTANDER DETECTOR_PIDS PARENT_PID: nmap -T5 -sS -p- from
# TCPADDR with, at the same time, -sU -p 1-1023 from UDPADDR (unless empty), and with
# BYSTANDER=1 the load generator's `msg` connections over the host namespace's loopback.
full_scan() {
    local side=$1 tag=$2 ta=$3 ua=$4 by=$5 dets=$6 parent=$7 blocks=$work/$1.blocks c0 p0=0 t0 tb tcp udp=""
    sleep "$GAP"
    c0=$(cpu_of "$dets")
    [ -z "$parent" ] || p0=$(cpu "$parent")
    t0=$(now)
    # Not through nmap_ns: $! is then `timeout` itself (ip execs it), which passes cleanup's
    # TERM on to nmap.
    ip netns exec "$SNS" timeout 300 nmap -n -Pn -e vs -sS -T5 -p- --host-timeout 180s \
        -S "$ta" "$HOST" > /dev/null 2>&1 &
    tcp=$!
    pids+=("$tcp")
    if [ -n "$ua" ]; then
        ip netns exec "$SNS" timeout 300 nmap -n -Pn -e vs -sU -T5 -p 1-1023 \
            --host-timeout "$UDP_TIMEOUT" -S "$ua" "$HOST" > /dev/null 2>&1 &
        udp=$!
        pids+=("$udp")
    fi
    if [ "$by" = 1 ]; then
        sleep 0.3
        R[$side,busy]=$(ip netns exec "$HNS" "$LG" fetch --addr "$HOST:$PORT" --concurrency 1 \
            --duration "$BYSTANDER_SECS" --expect 'hello\n' --src-net 77 2> "$work/lg-busy.err")
    fi
    wait "$tcp" || true
    R[$side,${tag}secs]=$(since "$(now)" "$t0")
    [ -z "$udp" ] || wait "$udp" || true
    settle "$dets"
    R[$side,${tag}cpu]=$(since "$(cpu_of "$dets")" "$c0")
    R[$side,${tag}pcpu]=$( [ -z "$parent" ] && echo - || since "$(cpu "$parent")" "$p0")
    R[$side,${tag}rss]=$(for d in $dets; do hwm "$d"; done | paste -sd+ -)
    tb=$(first_block "$blocks" "$ta")
    R[$side,${tag}block]=$( [ -n "$tb" ] && since "$tb" "$t0" || echo none)
    if [ -n "$ua" ]; then
        R[$side,udp]=$( [ -n "$(first_block "$blocks" "$ua")" ] && echo blocked || echo "not blocked")
    fi
}
# timed_scans SIDE: SCANS SYN scans of ports 1-1000, one at a time, each from its own address,
# GAP seconds after the previous one's block (or its 5 s wait). portnanny's sentry reports at
# most 200 probes a second from all sources together (against forged floods), and one such scan
# sends 1,000: a scan that starts within the same second as the previous one's reports gets
# none reported (GAP=0 shows it: every second scan missed).
timed_scans() {
    local side=$1 blocks=$work/$1.blocks i a t0 tb lat
    : > "$work/$side.lat"
    for i in $(seq 0 $((SCANS - 1))); do
        a=10.204.0.$((100 + i))
        tb=""
        [ "$i" -eq 0 ] || sleep "$GAP"
        t0=$(now)
        nmap_ns -sS -T5 -p 1-1000 --max-retries 1 --host-timeout 60s -S "$a" "$HOST"
        for _ in $(seq 1 50); do
            tb=$(first_block "$blocks" "$a")
            [ -z "$tb" ] || break
            sleep 0.1
        done
        if [ -n "$tb" ]; then
            lat=$(since "$tb" "$t0")
            echo "$lat" >> "$work/$side.lat"
            echo "  $side scan $i from $a: block command after ${lat}s" >&2
        else
            echo "  $side scan $i from $a: no block command within 5 s of the scan's end" >&2
        fi
    done
    R[$side,n]=$(wc -l < "$work/$side.lat")
    R[$side,p50]=$(pct 50 < "$work/$side.lat")
    R[$side,p99]=$(pct 99 < "$work/$side.lat")
}
# reported ADDR: distinct ports portnanny's log shows a probe verdict for from ADDR.
reported() { grep -F "peer=$1:0 " "$work/pn.log" | grep -o 'local=[^ ]*' | sort -u | wc -l; }

# --- portnanny ---
mkdir -p "$work/pn-empty"
chmod 0755 "$work/pn-empty"
printf 'banned: blocked\nscan: trap && hits: 5\nok: ALL\n' > "$work/pn.rules"
printf 'scan: block 1h : drop\nbanned: drop\nok: msg hello%%(nl)s\n' > "$work/pn.actions"
cat > "$work/nanny.conf" <<CONF
rulefile $work/pn.rules
actionfile $work/pn.actions
listen $PORT@$HOST
chrootdir $work/pn-empty
privsepuser nobody
stealth tcp below 65535
stealth udp below 1024
blockbudget 1000
neverblock auto
blockcmd $work/pn.sh %(ip)s
CONF
ip netns exec "$HNS" "$PN" -v "$work/nanny.conf" < /dev/null > /dev/null 2> "$work/pn.log" &
pnpid=$!
pids+=("$pnpid")
for _ in $(seq 1 100); do
    grep -q 'started: listening' "$work/pn.log" && break
    kill -0 "$pnpid" 2>/dev/null || break
    sleep 0.1
done
grep -q 'started: listening' "$work/pn.log" || { echo "$BENCH_NAME: portnanny did not start:" >&2; cat "$work/pn.log" >&2; exit 1; }
sleep 1
spid=$(worker_of "$pnpid" sentry)
[ -n "$spid" ] || { echo "$BENCH_NAME: no sentry worker:" >&2; cat "$work/pn.log" >&2; exit 1; }
R[pn,rss0]=$(hwm "$spid")
echo "$BENCH_NAME: portnanny (parent $pnpid, sentry $spid): scanning" >&2
timed_scans pn
full_scan pn "" 10.204.0.10 10.204.0.11 0 "$spid" "$pnpid"
R[pn,rep_tcp]=$(reported 10.204.0.10)
R[pn,rep_udp]=$(reported 10.204.0.11)
R[pn,suppressed]=$(grep -o '[0-9]* probe reports suppressed' "$work/pn.log" | awk '{ s += $1 } END { print s + 0 }')
# The bystander: idle, then during a full scan from .12 (after the measurements above: its
# TIME_WAIT sockets stay in the host's socket table for a minute, which the sentry reads).
ip netns exec "$HNS" "$LG" fetch --addr "$HOST:$PORT" --concurrency 1 --duration 0.5 \
    --expect 'hello\n' --src-net 76 > /dev/null 2>&1 || true
R[pn,idle]=$(ip netns exec "$HNS" "$LG" fetch --addr "$HOST:$PORT" --concurrency 1 \
    --duration "$BYSTANDER_SECS" --expect 'hello\n' --src-net 76 2> "$work/lg-idle.err")
full_scan pn by_ 10.204.0.12 "" 1 "$spid" "$pnpid"
R[pn,rep_by]=$(reported 10.204.0.12)
R[pn,tw]=$(ip netns exec "$HNS" ss -Htan state time-wait | wc -l)
kill "$pnpid" 2>/dev/null || true
for _ in $(seq 1 50); do kill -0 "$pnpid" 2>/dev/null || break; sleep 0.1; done
kill -9 "$pnpid" 2>/dev/null || true

# --- PortSentry 1.2 ---
ps_why=""
deb=${PORTSENTRY_DEB:-}
if [ -z "$deb" ]; then
    deb=$(ls "$root"/target/test-deps/portsentry_*.deb 2>/dev/null | head -1 || true)
fi
if [ -z "$deb" ]; then
    mkdir -p "$work/deb"
    chmod 0777 "$work/deb"
    (cd "$work/deb" && timeout 120 apt-get download -q portsentry > /dev/null 2>&1) || true
    deb=$(ls "$work"/deb/portsentry_*.deb 2>/dev/null | head -1 || true)
fi
if [ -z "$deb" ]; then
    ps_why="apt-get download portsentry failed (no .deb; set PORTSENTRY_DEB)"
else
    dpkg-deb -x "$deb" "$work/ps-root"
    psver=$(dpkg-deb -f "$deb" Version)
    # Its config path is compiled in (/etc/portsentry/portsentry.conf): a copy of the binary
    # reads $work/ps.conf instead (same string length or shorter, NUL-padded).
    perl -0777 -pe 'BEGIN { $n = shift } s{/etc/portsentry/portsentry\.conf\0}{$n . ("\0" x (32 - length $n))}e' \
        "$work/ps.conf" "$work/ps-root/usr/sbin/portsentry" > "$work/portsentry"
    chmod 0755 "$work/portsentry"
    grep -q "$work/ps.conf" "$work/portsentry" || ps_why="could not patch the config path into the binary"
    : > "$work/ps.ignore"
    cat > "$work/ps.conf" <<CONF
TCP_PORTS="1,11,15"
UDP_PORTS="1,7,9"
ADVANCED_PORTS_TCP="65535"
ADVANCED_PORTS_UDP="1023"
ADVANCED_EXCLUDE_TCP="113,139"
ADVANCED_EXCLUDE_UDP="520,138,137,67"
IGNORE_FILE="$work/ps.ignore"
HISTORY_FILE="$work/ps.history"
BLOCKED_FILE="$work/ps.blocked"
RESOLVE_HOST="0"
BLOCK_UDP="2"
BLOCK_TCP="2"
KILL_RUN_CMD_FIRST="0"
KILL_RUN_CMD="$work/ps.sh \$TARGET\$"
SCAN_TRIGGER="4"
CONF
fi
if [ -z "$ps_why" ]; then
    ip netns exec "$HNS" "$work/portsentry" -atcp > "$work/ps-tcp.out" 2>&1 || true
    ip netns exec "$HNS" "$work/portsentry" -audp > "$work/ps-udp.out" 2>&1 || true
    # It daemonizes: its processes are the ones in the host namespace running our copy.
    pspids=""
    for _ in $(seq 1 50); do
        pspids=""
        for p in $(ip netns pids "$HNS"); do
            [ "$(readlink "/proc/$p/exe" 2>/dev/null)" = "$work/portsentry" ] && pspids="$pspids $p"
        done
        [ "$(echo "$pspids" | wc -w)" -ge 2 ] && break
        sleep 0.2
    done
    for p in $pspids; do pids+=("$p"); done
    if [ "$(echo "$pspids" | wc -w)" -lt 2 ]; then
        ps_why="portsentry -atcp/-audp did not both stay up (pids:${pspids:- none}); $(cat "$work"/ps-*.out | tr '\n' ' ' | cut -c1-200)"
    else
        # It binds every port below 65535 once at start to find the unused ones: let it settle.
        sleep 3
        R[ps,rss0]=$(for d in $pspids; do hwm "$d"; done | paste -sd+ -)
        echo "$BENCH_NAME: PortSentry $psver (pids$pspids): scanning" >&2
        timed_scans ps
        full_scan ps "" 10.204.0.10 10.204.0.11 0 "$pspids" ""
    fi
fi

# --- the table ---
for side in pn ps; do
    [ -z "${R[$side,n]:-}" ] || R[$side,cmds]=$(wc -l < "$work/$side.blocks" 2>/dev/null || echo 0)
done
lat() { echo "${1:-?}" | awk '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "p99_ms") print kv[2] } }'; }
idle99=$(lat "${R[pn,idle]:-}")
busy99=$(lat "${R[pn,busy]:-}")
echo
echo "portnanny: $measured; PortSentry: ${psver:-none} (Debian .deb, unpacked, not installed); $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "timed: $SCANS x nmap -sS -T5 -p 1-1000, each from its own address, ${GAP}s apart; full: nmap -sS -T5 -p- from .10 and, at the same time, -sU -T5 -p 1-1023 --host-timeout $UDP_TIMEOUT from .11"
printf '%-40s %12s %12s\n' measure portnanny portsentry
row() { printf '%-40s %12s %12s\n' "$1" "${R[pn,$2]:-?}" "${R[ps,$2]:--}"; }
row "timed scans: block command ran (of $SCANS)" n
row 'timed scans: start to block cmd p50 s' p50
row 'timed scans: start to block cmd p99 s' p99
row 'detector VmHWM KiB at start' rss0
row 'full+udp: detector CPU s' cpu
row 'full+udp: parent CPU s' pcpu
row 'full+udp: detector VmHWM KiB after' rss
row 'full scan: nmap duration s' secs
row 'full scan: start to block cmd s' block
row 'udp sweep (.11)' udp
row 'full scan: ports reported (of 65533)' rep_tcp
row 'udp sweep: ports reported' rep_udp
row 'reports suppressed (200/s cap)' suppressed
row 'block commands run in all' cmds
echo "PortSentry logs only to syslog: its probes seen are not counted; 65533 = ports 1-65534 but 4040."
echo "bystander (load generator, 127.76/77.x.y -> $HOST:$PORT over the host namespace's loopback, msg, concurrency 1, ${BYSTANDER_SECS}s):"
echo "  idle:                      ${R[pn,idle]:-?}"
echo "  during a full scan (.12):  ${R[pn,busy]:-?}"
echo "  p99 during/idle: $(awk -v a="$busy99" -v b="$idle99" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }') (goal 1.5x);" \
    "that scan: nmap ${R[pn,by_secs]:-?} s, block cmd after ${R[pn,by_block]:-?} s, ports reported ${R[pn,rep_by]:-?}," \
    "sentry CPU ${R[pn,by_cpu]:-?} s, parent CPU ${R[pn,by_pcpu]:-?} s, TIME_WAIT sockets after: ${R[pn,tw]:-?}"
if [ -n "$ps_why" ]; then echo "PortSentry not measured: $ps_why"; fi
