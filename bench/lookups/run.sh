#!/usr/bin/env bash
# bench/lookups/run.sh: connections per second and p50/p99 classification latency of portnanny
# when every connection needs five DNSBL lookups, with the DNS answers coming at 0 ms and at
# 200 ms, for maxthreads 1, 8 and 64; plus the resolver's and classifier's VmRSS under that load.
#
# Usage (root): bench/lookups/run.sh
#   env: DURATION=5 (seconds per cell)  DELAYS="0 200" (ms)  THREADS="1 8 64" (maxthreads)
#        CLIENTS=match (client concurrency = maxthreads; or a fixed number)  KEEP=1 (keep logs)
#        CARGO_TARGET_DIR (where portnanny and the loadgen are built; default target-bin/)
#
# Rules: `bl: dnsbl: z1.bench dnsbl: z2.bench ... dnsbl: z5.bench` then `other: ALL`. The
# responder (slowdns.py) answers NXDOMAIN to everything, so no client is listed and every
# zone is asked (the or-list cannot stop early). The resolver cache is off (`cachesize 0`) and
# the clients rotate over many 127.N.x.y source addresses, so every connection costs five real
# queries; the table's q/conn column checks that.
#
# Safety: the measurement runs in a private mount namespace (`unshare --mount`) whose
# /etc/resolv.conf, /etc/hosts and /etc/nsswitch.conf are bind-mounted files naming only the
# responder this script starts on 127.56.0.1; the script refuses to go on if the namespace is
# the host's. Everything listens on loopback. Every process started here is killed by pid on
# exit. Each cell is bounded: the load generator stops issuing after DURATION and every
# connection has a 10 s deadline, and the whole loadgen run is under `timeout`.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
BENCH_NAME=bench/lookups
# shellcheck source=bench/lib.sh
. "$here/../lib.sh"
root=$(cd "$here/../.." && pwd)
DURATION=${DURATION:-5}
DELAYS=${DELAYS:-"0 200"}
THREADS=${THREADS:-"1 8 64"}
CLIENTS=${CLIENTS:-match}
NS_ADDR=127.56.0.1
target=${CARGO_TARGET_DIR:-$root/target-bin}
PN="$target/release/portnanny"
LG="$target/loadgen/release/portnanny-loadgen"

if [ -z "${PN_LOOKUPS_INNER:-}" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "bench/lookups: needs root (private mount namespace, port 53)" >&2
        exit 1
    fi
    if [ -d "$HOME/.cargo/bin" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    echo "bench/lookups: building (release)..." >&2
    cargo build -q --release --bin portnanny --manifest-path "$root/Cargo.toml" \
        --target-dir "$target"
    # The tests helper's load generator, built read-only into our own target dir.
    cargo build -q --release --locked --manifest-path "$root/bench/loadgen/Cargo.toml" \
        --target-dir "$target/loadgen"
    PN_OUTER_NS=$(readlink /proc/self/ns/mnt)
    export PN_LOOKUPS_INNER=1 PN_OUTER_NS
    exec unshare --mount --propagation private -- "$0" "$@"
fi

# ---- inside the private mount namespace ----
mine=$(readlink /proc/self/ns/mnt)
if [ "$mine" = "${PN_OUTER_NS:-}" ] || [ "$mine" = "$(readlink /proc/1/ns/mnt)" ]; then
    echo "bench/lookups: not in a private mount namespace; refusing to touch /etc" >&2
    exit 1
fi

# As root the classifier's chroot dir must have no group/world-writable ancestor: not /tmp.
work=$(mktemp -d /run/portnanny-bench-lookups.XXXXXX)
chmod 0755 "$work"
pids=()
trap cleanup EXIT

printf 'nameserver %s\noptions timeout:2 attempts:1\n' "$NS_ADDR" > "$work/resolv.conf"
printf '127.0.0.1 localhost\n::1 localhost\n' > "$work/hosts"
printf 'hosts: files dns\n' > "$work/nsswitch.conf"
for f in resolv.conf hosts nsswitch.conf; do
    chmod 0644 "$work/$f"
    mount --bind "$work/$f" "/etc/$f"
    cmp -s "$work/$f" "/etc/$f" || { echo "bench/lookups: bind over /etc/$f failed" >&2; exit 1; }
done

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true


status_field() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null; }

start_dns() {
    local delay=$1
    "$here/slowdns.py" "$NS_ADDR" "$delay" "$work/dns.count" 2> "$work/dns-$delay.log" &
    DNS_PID=$!
    pids+=("$DNS_PID")
    local i
    for i in $(seq 1 100); do
        [ -s "$work/dns.count" ] && return 0
        kill -0 "$DNS_PID" 2>/dev/null || break
        sleep 0.05
    done
    echo "bench/lookups: responder did not start:" >&2
    cat "$work/dns-$delay.log" >&2
    exit 1
}

# forget PID: drop it from the cleanup list once it has been reaped (its number may be reused).
forget() {
    local keep=() p
    for p in "${pids[@]}"; do
        [ "$p" = "$1" ] || keep+=("$p")
    done
    pids=("${keep[@]}")
}

stop_pid() {
    local p=$1 i
    kill "$p" 2>/dev/null || true
    for i in $(seq 1 60); do
        kill -0 "$p" 2>/dev/null || break
        sleep 0.05
    done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    forget "$p"
}

# CPU time (clock ticks) a process has used so far.
cpu_ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0; }

dns_count() { cat "$work/dns.count" 2>/dev/null || echo 0; }

# run_cell DELAY MAXTHREADS NET -> prints one table row
run_cell() {
    local delay=$1 mt=$2 net=$3 port dir pid clients
    port=$(free_port)
    dir="$work/d$delay-m$mt"
    mkdir -p "$dir" "$dir/empty"
    chmod 0755 "$dir" "$dir/empty"
    printf 'bl: dnsbl: z1.bench dnsbl: z2.bench dnsbl: z3.bench dnsbl: z4.bench dnsbl: z5.bench\nother: ALL\n' \
        > "$dir/rules"
    printf 'bl: msg listed%%(nl)s\nother: msg other%%(nl)s\n' > "$dir/actions"
    printf 'rulefile %s\nactionfile %s\nlisten %s@127.0.0.1\nchrootdir %s\nprivsepuser nobody\nmaxthreads %s\ndnstimeout 5s\ncachesize 0\n' \
        "$dir/rules" "$dir/actions" "$port" "$dir/empty" "$mt" > "$dir/nanny.conf"
    chmod 0644 "$dir"/rules "$dir"/actions "$dir"/nanny.conf
    "$PN" "$dir/nanny.conf" 2> "$dir/nanny.log" &
    pid=$!
    pids+=("$pid")
    local i
    for i in $(seq 1 200); do
        listening "$port" && break
        kill -0 "$pid" 2>/dev/null || { echo "bench/lookups: portnanny died:" >&2; cat "$dir/nanny.log" >&2; exit 1; }
        sleep 0.05
    done
    listening "$port" || { echo "bench/lookups: portnanny never listened" >&2; exit 1; }
    local rpid cpid
    rpid=$(worker_of "$pid" resolver)
    cpid=$(worker_of "$pid" classifier)
    if [ "$CLIENTS" = match ]; then clients=$mt; else clients=$CLIENTS; fi

    # Warm-up (not measured), then let the responder's counter settle.
    timeout 30 "$LG" fetch --addr "127.0.0.1:$port" --concurrency "$clients" --duration 0.5 \
        --expect 'other\n' --src-net "$((net + 100))" > /dev/null 2>&1 || true
    sleep 0.5
    local q0 q1 c0 c1 t0 t1
    q0=$(dns_count)
    c0=$(cpu_ticks "$DNS_PID")
    t0=$(date +%s.%N)
    timeout $((DURATION + 30)) "$LG" fetch --addr "127.0.0.1:$port" --concurrency "$clients" \
        --duration "$DURATION" --expect 'other\n' --src-net "$net" \
        > "$dir/lg.out" 2> "$dir/lg.err" &
    local lg=$! rss_r=0 rss_c=0 thr_r=0 v
    pids+=("$lg")
    # Peak VmRSS of each worker while the load runs, sampled every 0.2 s.
    while kill -0 "$lg" 2>/dev/null; do
        v=$(status_field "$rpid" VmRSS); [ -n "$v" ] && [ "$v" -gt "$rss_r" ] && rss_r=$v
        v=$(status_field "$cpid" VmRSS); [ -n "$v" ] && [ "$v" -gt "$rss_c" ] && rss_c=$v
        v=$(status_field "$rpid" Threads); [ -n "$v" ] && [ "$v" -gt "$thr_r" ] && thr_r=$v
        sleep 0.2
    done
    wait "$lg" || true
    forget "$lg"
    sleep 0.5
    q1=$(dns_count)
    c1=$(cpu_ticks "$DNS_PID")
    t1=$(date +%s.%N)
    local line conns=0 rate=? p50=? p99=? errs=? kv k val
    line=$(cat "$dir/lg.out")
    for kv in $line; do
        k=${kv%%=*}; val=${kv#*=}
        case $k in
            conns) conns=$val ;;
            rate) rate=$val ;;
            p50_ms) p50=$val ;;
            p99_ms) p99=$val ;;
            errors) errs=$val ;;
        esac
    done
    local qpc dcpu
    dcpu=$(awk -v c=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" -v a="$t0" -v b="$t1" \
        'BEGIN { printf "%.0f%%", 100 * c / hz / (b - a) }')
    qpc=$(awk -v q=$((q1 - q0)) -v c="$conns" 'BEGIN { if (c > 0) printf "%.2f", q / c; else print "-" }')
    echo "  delay=${delay}ms maxthreads=$mt clients=$clients: $line queries=$((q1 - q0))" >&2
    if [ -s "$dir/lg.err" ]; then sed 's/^/    /' "$dir/lg.err" >&2; fi
    stop_pid "$pid"
    printf '%8s %10s %7s %9s %9s %9s %7s %6s %13s %15s %11s %8s\n' "$delay" "$mt" "$clients" \
        "$rate" "$p50" "$p99" "$errs" "$qpc" "$rss_r" "$rss_c" "$thr_r" "$dcpu" >> "$work/table"
}

echo "bench/lookups: ${DURATION}s per cell; DNS delays (ms): $DELAYS; maxthreads: $THREADS; clients: $CLIENTS" >&2
printf '%8s %10s %7s %9s %9s %9s %7s %6s %13s %15s %11s %8s\n' delay_ms maxthreads clients \
    conn/s p50_ms p99_ms errors q/conn resolver_KiB classifier_KiB res_threads dns_cpu > "$work/table"
net=150
for delay in $DELAYS; do
    start_dns "$delay"
    for mt in $THREADS; do
        net=$((net + 1))
        run_cell "$delay" "$mt" "$net"
    done
    stop_pid "$DNS_PID"
    rm -f "$work/dns.count"
done
echo
cat "$work/table"
