#!/usr/bin/env bash
# bench/run.sh: connections per second and p50/p99 latency of portnanny (run, msg, drop) against
# tcpserver serving the same trivial handler and against three reference "floor" servers of the
# load generator (floor-inproc: accept-write-close in one process; floor-rtt: the same plus one
# round trip to a helper process per connection; floor-spawn: posix_spawn of the handler per
# connection), at several concurrencies, in one interleaved run; then the parent's and
# classifier's RSS idle and with HOLD held connections.
#
# Usage: bench/run.sh   (env: DURATION=3 ROUNDS=3 CONCS="1 8 64" HOLD=10000 CARGO_TARGET_DIR=...
#                        HOLD_SERVICE=cat|light; ROUNDS=0 skips the rates, HOLD=0 the RSS part;
#                        PORTNANNY=/path/to/portnanny measures that binary instead of building;
#                        BASELINE=/path/to/other/portnanny adds its run, msg and drop rows,
#                        base-run base-msg base-drop, to the same interleaved run)
# Each cell is measured ROUNDS times, interleaved (every server at every concurrency, then the
# next round), and the round with the median rate is reported, so a burst of load from
# something else on the machine hurts every server alike and does not decide the table.
# Everything listens on 127.0.0.1 only; rules are IP-only, tcpserver runs with -H -R -l 0, so no
# DNS query is made. Every process this script starts is killed by pid on exit.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
BENCH_NAME=bench
# shellcheck source=bench/lib.sh
. "$here/lib.sh"
root=$(dirname "$here")
if [ -d "${HOME:-/root}/.cargo/bin" ]; then
    export PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi
DURATION=${DURATION:-3}
ROUNDS=${ROUNDS:-3}
CONCS=${CONCS:-"1 8 64"}
HOLD=${HOLD:-10000}
HOLD_SERVICE=${HOLD_SERVICE:-cat}
HANDLER=(/bin/echo hello)
target=${CARGO_TARGET_DIR:-$root/target}

command -v tcpserver >/dev/null || { echo "bench: tcpserver missing (apt-get install ucspi-tcp)" >&2; exit 1; }

build_portnanny_and_loadgen "$root" "$target"

make_work portnanny-bench
pids=()
trap cleanup EXIT

# Held connections and their services need descriptors: the hold client one per connection.
# Raising the hard limit (root only) affects only this script and what it starts.
need_fds=$((HOLD + 1024))
if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt "$need_fds" ]; then
    if ! ulimit -Hn "$need_fds" 2>/dev/null; then
        HOLD=$(( $(ulimit -Hn) - 1024 ))
        [ "$HOLD" -gt 0 ] || HOLD=0
        echo "bench: hard fd limit $(ulimit -Hn) < $need_fds; holding $HOLD connections" >&2
    fi
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

declare -A PORT PID

# start_pn NAME ACTION [BINARY] -> sets PORT[NAME], PID[NAME]
start_pn() {
    local name=$1 action=$2 bin=${3:-$PN} port
    port=$(free_port)
    mkdir -p "$work/$name" "$work/$name-empty"
    chmod 0755 "$work/$name" "$work/$name-empty"
    printf 'all: ALL\n' > "$work/$name/rules"
    printf 'all: %s\n' "$action" > "$work/$name/actions"
    {
        printf 'rulefile %s\nactionfile %s\nlisten %s@127.0.0.1\n' \
            "$work/$name/rules" "$work/$name/actions" "$port"
        if [ "$(id -u)" -eq 0 ]; then
            printf 'chrootdir %s\nprivsepuser nobody\n' "$work/$name-empty"
        fi
    } > "$work/$name/nanny.conf"
    "$bin" "$work/$name/nanny.conf" 2> "$work/$name.log" &
    local pid=$!
    pids+=("$pid")
    wait_listen "$port" "$pid"
    PORT[$name]=$port
    PID[$name]=$pid
}

start_tcpserver() {
    local port
    port=$(free_port)
    tcpserver -q -H -R -l 0 -b 1024 -c 1024 127.0.0.1 "$port" "${HANDLER[@]}" 2> "$work/tcpserver.log" &
    local pid=$!
    pids+=("$pid")
    wait_listen "$port" "$pid"
    PORT[tcpserver]=$port
}

# start_floor NAME MODE ARGS... : a reference server of the load generator.
start_floor() {
    local name=$1 mode=$2 port
    shift 2
    port=$(free_port)
    "$LG" "$mode" --port "$port" "$@" 2> "$work/$name.log" &
    local pid=$!
    pids+=("$pid")
    wait_listen "$port" "$pid"
    PORT[$name]=$port
}

start_tcpserver
start_pn run "run ${HANDLER[*]}"
start_pn msg 'msg hello%(nl)s'
start_pn drop 'drop'
start_floor floor-inproc floor-inproc --reply 'hello\n'
start_floor floor-rtt floor-roundtrip --reply 'hello\n'
start_floor floor-spawn floor-spawn -- "${HANDLER[@]}"

declare -A expect=([tcpserver]='hello\n' [run]='hello\n' [msg]='hello\n' [drop]=''
    [floor-inproc]='hello\n' [floor-rtt]='hello\n' [floor-spawn]='hello\n')
# What each portnanny mode is compared with in vs_floor: the least any implementation of it
# can do here (drop sends nothing, floor-rtt sends hello; compared anyway).
declare -A floor_of=([run]=floor-spawn [msg]=floor-rtt [drop]=floor-rtt)
declare -A rate p50 p99 errs
servers=(tcpserver run msg drop floor-inproc floor-rtt floor-spawn)
if [ -n "${BASELINE:-}" ]; then
    [ -x "$BASELINE" ] || { echo "bench: $BASELINE is not executable" >&2; exit 1; }
    start_pn base-run "run ${HANDLER[*]}" "$BASELINE"
    start_pn base-msg 'msg hello%(nl)s' "$BASELINE"
    start_pn base-drop 'drop' "$BASELINE"
    expect+=([base-run]='hello\n' [base-msg]='hello\n' [base-drop]='')
    floor_of+=([base-run]=floor-spawn [base-msg]=floor-rtt [base-drop]=floor-rtt)
    servers+=(base-run base-msg base-drop)
fi

echo "bench: ${ROUNDS} rounds of ${DURATION}s per cell, concurrency $CONCS, handler '${HANDLER[*]}'" >&2
net=100
for round in $(seq 1 "$ROUNDS"); do
    for c in $CONCS; do
        for s in "${servers[@]}"; do
            net=$(( net % 150 + 101 ))
            # Short warm-up, then the measured run.
            "$LG" fetch --addr "127.0.0.1:${PORT[$s]}" --concurrency "$c" --duration 0.3 \
                --expect "${expect[$s]}" --src-net "$net" > /dev/null 2>&1 || true
            line=$("$LG" fetch --addr "127.0.0.1:${PORT[$s]}" --concurrency "$c" \
                --duration "$DURATION" --expect "${expect[$s]}" --src-net "$net" 2> "$work/lg.err")
            echo "  round $round $s c=$c: $line" >&2
            if [ -s "$work/lg.err" ]; then sed 's/^/    /' "$work/lg.err" >&2; fi
            echo "$line" >> "$work/cell.$s.$c"
        done
    done
done

if [ "$ROUNDS" -gt 0 ]; then
    # The median-rate round of each cell.
    for c in $CONCS; do
        for s in "${servers[@]}"; do
            med=$(awk '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "rate") print kv[2], NR } }' \
                "$work/cell.$s.$c" | sort -n | awk '{ a[NR] = $2 } END { print a[int((NR + 1) / 2)] }')
            line=$(sed -n "${med}p" "$work/cell.$s.$c")
            for kv in $line; do
                k=${kv%%=*}; v=${kv#*=}
                case $k in
                    rate) rate[$s,$c]=$v ;;
                    p50_ms) p50[$s,$c]=$v ;;
                    p99_ms) p99[$s,$c]=$v ;;
                    errors) errs[$s,$c]=$v ;;
                esac
            done
        done
    done

    echo
    echo "portnanny: $measured"
    platform_line
    if [ -n "${BASELINE:-}" ]; then echo "baseline (base-*): $BASELINE"; fi
    ratio() { awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'; }
    printf '%-12s %5s %10s %9s %9s %8s %12s %9s\n' server conc conn/s p50_ms p99_ms errors vs_tcpserver vs_floor
    for c in $CONCS; do
        for s in "${servers[@]}"; do
            vs_t=$(ratio "${rate[$s,$c]:-0}" "${rate[tcpserver,$c]:-0}")
            vs_f=-
            if [ -n "${floor_of[$s]:-}" ]; then vs_f=$(ratio "${rate[$s,$c]:-0}" "${rate[${floor_of[$s]},$c]:-0}"); fi
            printf '%-12s %5s %10s %9s %9s %8s %12s %9s\n' "$s" "$c" "${rate[$s,$c]:-?}" \
                "${p50[$s,$c]:-?}" "${p99[$s,$c]:-?}" "${errs[$s,$c]:-?}" "$vs_t" "$vs_f"
        done
    done
fi

[ "$HOLD" -gt 0 ] || exit 0

# RSS: a fresh instance whose service announces itself ("held") and holds the connection until
# EOF: a shell script that execs cat (one process per connection once sh has exec'ed cat), or
# with HOLD_SERVICE=light the load generator's hold-service. Measured with 10,000 held, both
# cost about 230-250 KiB of machine memory per held connection and cat starts faster (10,000
# opened in 13 s against 17 s), so cat is the default.
if [ "$HOLD_SERVICE" = light ]; then
    start_pn hold "run $LG hold-service --lifetime 600"
else
    printf '#!/bin/sh\necho held\nexec cat >/dev/null\n' > "$work/hold.sh"
    chmod 0755 "$work/hold.sh"
    start_pn hold "run $work/hold.sh"
fi
sleep 1
rss() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo "?"; }
fds() { ls "/proc/$1/fd" 2>/dev/null | wc -l; }
mem_used_mib() { awk '/^MemTotal/ { t = $2 } /^MemAvailable/ { a = $2 } END { printf "%d", (t - a) / 1024 }' /proc/meminfo; }
cpid=$(worker_of "${PID[hold]}" classifier)
idle_parent=$(rss "${PID[hold]}")
idle_class=$( [ -n "$cpid" ] && rss "$cpid" || echo "?")
idle_fds=$(fds "${PID[hold]}")
mem_before=$(mem_used_mib)

mkfifo "$work/holdctl"
"$LG" hold --addr "127.0.0.1:${PORT[hold]}" --count "$HOLD" --duration 600 --src-net 90 \
    < "$work/holdctl" > "$work/hold.out" 2> "$work/hold.err" &
lgpid=$!
pids+=("$lgpid")
exec 9> "$work/holdctl"
# Opening is sequential (connect, then the service's first line): allow ~20 ms per connection.
for i in $(seq 1 $(( 600 + HOLD / 5 ))); do
    grep -q '^held=' "$work/hold.out" 2>/dev/null && break
    kill -0 "$lgpid" 2>/dev/null || break
    sleep 0.1
done
held_line=$(cat "$work/hold.out")
sleep 1
cpid=$(worker_of "${PID[hold]}" classifier)
held_parent=$(rss "${PID[hold]}")
held_class=$( [ -n "$cpid" ] && rss "$cpid" || echo "?")
held_fds=$(fds "${PID[hold]}")
mem_held=$(mem_used_mib)
services=$(ps -o pid= --ppid "${PID[hold]}" | wc -l)
exec 9>&-
wait "$lgpid" 2>/dev/null || true
if [ -s "$work/hold.err" ]; then sed 's/^/    /' "$work/hold.err" >&2; fi

echo
echo "RSS (KiB)        idle    with $HOLD held ($held_line)"
printf 'parent      %10s %10s\n' "$idle_parent" "$held_parent"
printf 'classifier  %10s %10s\n' "$idle_class" "$held_class"
printf 'parent fds  %10s %10s\n' "$idle_fds" "$held_fds"
echo "machine memory in use (MiB): $mem_before idle, $mem_held held;" \
    "$services child processes of the parent while held (services + 2 workers);" \
    "hold service: $HOLD_SERVICE"
