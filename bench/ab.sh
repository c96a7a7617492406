#!/usr/bin/env bash
# bench/ab.sh: conn/s of two or more portnanny binaries (and floor-rtt) at one concurrency, with
# the servers pinned to one CPU and the client to the other, in many short interleaved rounds.
# For changes of a few percent: unpinned, the scheduler either lets the classifier preempt the
# parent on its CPU or not, and that choice alone moves concurrency 1 by about 7% from one
# daemon start to the next (bench/README.md, "Results, 2026-12-05 (evening)").
#
# Usage: bench/ab.sh BINARY...   (env: ACTION='msg hello%(nl)s' CONC=1 ROUNDS=20 DURATION=0.5
#                                 SERVER_CPU=1 CLIENT_CPU=0)
# Prints the median, mean, min and max rate of each binary and of floor-rtt. Listens on
# 127.0.0.1 only, IP-only rules (no DNS query); every process it starts is killed by pid on
# exit.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
BENCH_NAME=ab
# shellcheck source=bench/lib.sh
. "$here/lib.sh"
root=$(dirname "$here")
if [ -d "${HOME:-/root}/.cargo/bin" ]; then
    export PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi
ACTION=${ACTION:-'msg hello%(nl)s'}
CONC=${CONC:-1}
ROUNDS=${ROUNDS:-20}
DURATION=${DURATION:-0.5}
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
[ "$#" -ge 1 ] || { echo "usage: bench/ab.sh BINARY..." >&2; exit 2; }
for bin in "$@"; do
    [ -x "$bin" ] || { echo "ab: $bin is not executable" >&2; exit 1; }
done

cargo build -q --release --manifest-path "$root/bench/loadgen/Cargo.toml"
LG="$root/bench/loadgen/target/release/portnanny-loadgen"
make_work portnanny-ab
pids=()
trap cleanup EXIT

expect='hello\n'
[ "$ACTION" = drop ] && expect=''
ports=() names=() expects=()
i=0
for bin in "$@"; do
    port=$(free_port)
    d="$work/s$i"
    mkdir -p "$d/conf" "$d/empty"
    chmod 0755 "$d" "$d/conf" "$d/empty"
    printf 'all: ALL\n' > "$d/conf/rules"
    printf 'all: %s\n' "$ACTION" > "$d/conf/actions"
    {
        printf 'rulefile %s\nactionfile %s\nlisten %s@127.0.0.1\n' \
            "$d/conf/rules" "$d/conf/actions" "$port"
        if [ "$(id -u)" -eq 0 ]; then
            printf 'chrootdir %s\nprivsepuser nobody\n' "$d/empty"
        fi
    } > "$d/conf/nanny.conf"
    # Workers inherit the parent's CPU mask.
    taskset -c "$SERVER_CPU" "$bin" "$d/conf/nanny.conf" 2> "$d.log" &
    pids+=("$!")
    wait_listen "$port" "$!"
    ports+=("$port"); names+=("$i:$(basename "$bin")"); expects+=("$expect")
    i=$((i + 1))
done
port=$(free_port)
taskset -c "$SERVER_CPU" "$LG" floor-roundtrip --port "$port" --reply 'hello\n' 2> "$work/floor.log" &
pids+=("$!")
wait_listen "$port" "$!"
ports+=("$port"); names+=("floor-rtt"); expects+=('hello\n')

echo "ab: '$ACTION', concurrency $CONC, $ROUNDS rounds of ${DURATION}s, servers on CPU $SERVER_CPU, client on CPU $CLIENT_CPU" >&2
echo "ab: $(platform_line)" >&2
for _ in $(seq 1 "$ROUNDS"); do
    for j in "${!ports[@]}"; do
        taskset -c "$CLIENT_CPU" "$LG" fetch --addr "127.0.0.1:${ports[$j]}" --concurrency "$CONC" \
            --duration 0.2 --expect "${expects[$j]}" > /dev/null 2>&1 || true
        line=$(taskset -c "$CLIENT_CPU" "$LG" fetch --addr "127.0.0.1:${ports[$j]}" \
            --concurrency "$CONC" --duration "$DURATION" --expect "${expects[$j]}")
        rate=${line##*rate=}
        echo "$j ${rate%% *}" >> "$work/rates"
    done
done
for j in "${!ports[@]}"; do
    awk -v j="$j" '$1 == j { print $2 }' "$work/rates" | sort -n |
        awk -v n="${names[$j]}" '{ a[NR] = $1; s += $1 }
            END { printf "%-24s median %7d  mean %7d  min %7d  max %7d\n", n, a[int((NR + 1) / 2)], s / NR, a[1], a[NR] }'
done
