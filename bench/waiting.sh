#!/usr/bin/env bash
# bench/waiting.sh: `msg` connections per second on a plain listener while WAITING connections
# sit silent on a `proxy from` listener of the same daemon, each awaiting its PROXY header (the
# loop watches every one of them until its 5 s deadline). What a loop turn costs as the set of
# descriptors it waits on grows: with poll(2) every turn handed the kernel all of them.
#
# Usage: bench/waiting.sh   (env: WAITING="0 1000" CONCS="1 8" DURATION=2 ROUNDS=3
#                            PORTNANNY=/path/to/portnanny measures that binary instead of building;
#                            BASELINE=/path/to/other/portnanny adds its rows, interleaved)
# Everything listens on 127.0.0.1; the silent clients come from 127.0.120.x, the measured ones
# from 127.102.x.y. Rules are IP-only, so no DNS query is made. Every process this script starts
# is killed by pid on exit.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
BENCH_NAME=waiting
# shellcheck source=bench/lib.sh
. "$here/lib.sh"
root=$(dirname "$here")
if [ -d "${HOME:-/root}/.cargo/bin" ]; then
    export PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi
WAITING=${WAITING:-"0 1000"}
CONCS=${CONCS:-"1 8"}
DURATION=${DURATION:-2}
ROUNDS=${ROUNDS:-3}
target=${CARGO_TARGET_DIR:-$root/target}
command -v python3 >/dev/null || { echo "waiting: python3 missing" >&2; exit 1; }

build_portnanny_and_loadgen "$root" "$target"
make_work portnanny-waiting
pids=()
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# The silent clients: connect, send nothing, hold until killed (bounded by SECS).
cat > "$work/silent.py" <<'EOF'
import socket, sys, time
port, n, secs = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
held = []
for i in range(n):
    s = socket.socket()
    s.bind(("127.0.120.%d" % (1 + i % 250), 0))
    s.connect(("127.0.0.1", port))
    held.append(s)
print("held", len(held), flush=True)
time.sleep(secs)
EOF

# start NAME BINARY -> sets PROXY_PORT[NAME], PLAIN_PORT[NAME]
declare -A PROXY_PORT PLAIN_PORT
start() {
    local name=$1 bin=$2 pp lp
    pp=$(free_port)
    lp=$(free_port)
    mkdir -p "$work/$name" "$work/$name-empty"
    chmod 0755 "$work/$name" "$work/$name-empty"
    printf 'all: ALL\n' > "$work/$name/rules"
    printf 'all: msg hello%%(nl)s\n' > "$work/$name/actions"
    {
        printf 'rulefile %s\nactionfile %s\n' "$work/$name/rules" "$work/$name/actions"
        printf 'listen %s@127.0.0.1 proxy from 127.0.0.0/8\nlisten %s@127.0.0.1\n' "$pp" "$lp"
        if [ "$(id -u)" -eq 0 ]; then
            printf 'chrootdir %s\nprivsepuser nobody\n' "$work/$name-empty"
        fi
    } > "$work/$name/nanny.conf"
    "$bin" "$work/$name/nanny.conf" 2> "$work/$name.log" &
    pids+=("$!")
    local i
    for i in $(seq 1 200); do
        listening "$lp" && break
        sleep 0.05
    done
    listening "$lp" || { echo "waiting: $name never listened" >&2; cat "$work/$name.log" >&2; exit 1; }
    PROXY_PORT[$name]=$pp
    PLAIN_PORT[$name]=$lp
}

names=(portnanny)
start portnanny "$PN"
if [ -n "${BASELINE:-}" ]; then
    names+=(baseline)
    start baseline "$BASELINE"
fi

# One measurement: WAITING silent clients, then DURATION s of fetches at CONC. Each silent set
# lives 1 s + DURATION + 1 s, inside the daemon's 5 s header deadline (DURATION <= 2).
measure() {
    local name=$1 waiting=$2 conc=$3 hp=""
    if [ "$waiting" -gt 0 ]; then
        python3 "$work/silent.py" "${PROXY_PORT[$name]}" "$waiting" $((DURATION + 2)) > "$work/silent.out" &
        hp=$!
        pids+=("$hp")
        local i
        for i in $(seq 1 100); do
            grep -q held "$work/silent.out" 2>/dev/null && break
            sleep 0.05
        done
    fi
    "$LG" fetch --addr "127.0.0.1:${PLAIN_PORT[$name]}" --concurrency "$conc" \
        --duration "$DURATION" --expect 'hello\n' --src-net 102 | sed 's/.*rate=\([0-9]*\).*/\1/'
    if [ -n "$hp" ]; then
        kill "$hp" 2>/dev/null || true
        wait "$hp" 2>/dev/null || true
    fi
    sleep 0.5
}

[ "$DURATION" -le 2 ] || { echo "waiting: DURATION must be <= 2 (the header deadline is 5 s)" >&2; exit 1; }
declare -A RATES
for r in $(seq 1 "$ROUNDS"); do
    for w in $WAITING; do
        for c in $CONCS; do
            for n in "${names[@]}"; do
                RATES[$n/$w/$c]+="$(measure "$n" "$w" "$c") "
            done
        done
    done
done

echo "portnanny: $measured${BASELINE:+; baseline: $BASELINE}"
printf '%-10s %8s %5s %10s   %s\n' server waiting conc "conn/s" "(median of $ROUNDS rounds; all rounds)"
for w in $WAITING; do
    for c in $CONCS; do
        for n in "${names[@]}"; do
            all=${RATES[$n/$w/$c]}
            med=$(tr ' ' '\n' <<< "$all" | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
            printf '%-10s %8s %5s %10s   %s\n' "$n" "$w" "$c" "$med" "$all"
        done
    done
done
