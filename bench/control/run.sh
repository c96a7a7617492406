#!/usr/bin/env bash
# bench/control/run.sh: what the control channel costs (issue 11), in one run:
#
# 1. `msg` throughput (bench/loadgen fetch at concurrency CONC, as bench/run.sh measures it)
#    alone, with `nannyctl status` run every 0.1 s, and with it run back to back, on the same
#    daemon; ROUNDS rounds of DURATION seconds each, interleaved, median round reported;
# 2. HOLD (10,000) live connections held on a fresh daemon, then the end-to-end time of
#    `nannyctl list --json` with a filter and an ordering (process start to exit, output to
#    /dev/null), REPS runs, median and max: the filtered rows in full, and the first 50;
# 3. the daemon's CPU (parent + control worker, utime+stime from /proc/PID/stat) over WINDOW
#    (60) seconds: idle, under `nannyctl watch --interval 1` on a 50-row terminal (a pty from
#    script(1)), and under `watch --interval 1 --json` printing every row.
#
# How the connections are held: each by a `run` service that announces itself and execs `cat`
# (bench/run.sh's HOLD service), so HOLD processes (~0.25 MB of machine memory each). Lighter
# states cannot hold 10,000: the daemon caps connections waiting for a verdict (MAX_PENDING)
# and messages being written (MAX_MSG_WRITERS) at 4,096 each, and a message being written is
# given up after 30 s, shorter than the CPU window.
#
# Usage: bench/control/run.sh   (root; env: HOLD=10000 (0: part 1 only) REPS=20 WINDOW=60
#        ROUNDS=5 DURATION=3 CONC=8; PORTNANNY=/path/to/portnanny and NANNYCTL=/path/to/nannyctl instead of
#        building; KEEP=1 keeps the scratch dir)
# Everything listens on 127.0.0.1 and a socket in the scratch dir; every process this script
# starts is killed by pid on exit.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
BENCH_NAME=control-bench
# shellcheck source=bench/lib.sh
. "$here/../lib.sh"
root=$(dirname "$(dirname "$here")")
if [ -d "${HOME:-/root}/.cargo/bin" ]; then
    export PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi
HOLD=${HOLD:-10000}
REPS=${REPS:-20}
WINDOW=${WINDOW:-60}
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-3}
CONC=${CONC:-8}
target=${CARGO_TARGET_DIR:-$root/target}

[ "$(id -u)" -eq 0 ] || { echo "$BENCH_NAME: needs root (10,000 services, raised fd limit)" >&2; exit 1; }
command -v script >/dev/null || { echo "$BENCH_NAME: script(1) missing (util-linux)" >&2; exit 1; }

build_portnanny_and_loadgen "$root" "$target"
if [ -n "${NANNYCTL:-}" ]; then
    CTL=$NANNYCTL
else
    cargo build -q --release --bin nannyctl --manifest-path "$root/Cargo.toml" --target-dir "$target"
    CTL="$target/release/nannyctl"
fi

work=$(mktemp -d /run/portnanny-control-bench.XXXXXX)
chmod 0755 "$work"
pids=()
trap cleanup EXIT

# The hold client needs one descriptor per connection; the daemon inherits the limit.
need_fds=$((HOLD + 1024))
if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt "$need_fds" ]; then
    ulimit -Hn "$need_fds"
fi
ulimit -n "$(ulimit -Hn)"

wait_listen() {
    local port=$1 pid=$2 i
    for i in $(seq 1 200); do
        listening "$port" && [ -S "$work/$3/ctl" ] && return 0
        kill -0 "$pid" 2>/dev/null || { echo "$BENCH_NAME: daemon $pid died:" >&2; cat "$work/$3.log" >&2; exit 1; }
        sleep 0.05
    done
    echo "$BENCH_NAME: port $port never listened" >&2
    exit 1
}

declare -A PORT PID
# start_pn NAME RULES ACTIONS: a daemon with a control socket at $work/NAME/ctl.
start_pn() {
    local name=$1 port
    port=$(free_port)
    mkdir -p "$work/$name" "$work/$name-empty"
    chmod 0755 "$work/$name" "$work/$name-empty"
    printf '%b' "$2" > "$work/$name/rules"
    printf '%b' "$3" > "$work/$name/actions"
    printf 'rulefile %s\nactionfile %s\nlisten %s@127.0.0.1\nchrootdir %s\nprivsepuser nobody\ncontrol %s\n' \
        "$work/$name/rules" "$work/$name/actions" "$port" "$work/$name-empty" "$work/$name/ctl" \
        > "$work/$name/nanny.conf"
    "$PN" "$work/$name/nanny.conf" 2> "$work/$name.log" &
    local pid=$!
    pids+=("$pid")
    wait_listen "$port" "$pid" "$name"
    PORT[$name]=$port
    PID[$name]=$pid
}

# cpu_ticks PID...: utime+stime of each, summed (clock ticks).
cpu_ticks() {
    local total=0 p t
    for p in "$@"; do
        t=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null || echo 0)
        total=$((total + t))
    done
    echo "$total"
}

median() { sort -n | awk '{ a[NR] = $1 } END { if (NR) print a[int((NR + 1) / 2)]; else print "?" }'; }
maxof() { sort -n | tail -1; }

echo "$BENCH_NAME: portnanny: $measured; nannyctl: $CTL" >&2

# 1. msg throughput with and without a stream of control requests.
start_pn msg 'all: ALL\n' 'all: msg hello%(nl)s\n'
# status_loop GAP: `nannyctl status` again and again, GAP seconds apart (0: back to back).
status_loop() {
    while :; do
        "$CTL" -s "$work/msg/ctl" status > /dev/null 2>&1 || true
        if [ "$1" != 0 ]; then sleep "$1"; fi
    done
}
declare -A gap_of=([off]='' [paced]=0.1 [tight]=0)
net=100
for round in $(seq 1 "$ROUNDS"); do
    for mode in off paced tight; do
        net=$(( net % 150 + 101 ))
        lp=""
        if [ -n "${gap_of[$mode]}" ]; then
            status_loop "${gap_of[$mode]}" &
            lp=$!
            pids+=("$lp")
            sleep 0.2
        fi
        line=$("$LG" fetch --addr "127.0.0.1:${PORT[msg]}" --concurrency "$CONC" \
            --duration "$DURATION" --expect 'hello\n' --src-net "$net" 2> /dev/null)
        if [ -n "$lp" ]; then kill "$lp" 2>/dev/null || true; wait "$lp" 2>/dev/null || true; fi
        echo "  round $round status-loop=$mode: $line" >&2
        for kv in $line; do
            if [ "${kv%%=*}" = rate ]; then echo "${kv#*=}" >> "$work/rate.$mode"; fi
        done
    done
done
# The loop on its own for DURATION s: how many requests a second it makes, and the daemon's
# CPU per request (parent, classifier and control worker: `status` asks the classifier too).
daemon=("${PID[msg]}" "$(worker_of "${PID[msg]}" classifier)" "$(worker_of "${PID[msg]}" control)")
n=0
c0=$(cpu_ticks "${daemon[@]}")
t0=$(date +%s%N)
end=$(( t0 + DURATION * 1000000000 ))
while [ "$(date +%s%N)" -lt "$end" ]; do "$CTL" -s "$work/msg/ctl" status > /dev/null; n=$((n + 1)); done
c1=$(cpu_ticks "${daemon[@]}")
status_rate=$(( n / DURATION ))
per_req_us=$(awk -v t=$(( c1 - c0 )) -v hz="$(getconf CLK_TCK)" -v n="$n" \
    'BEGIN { if (n) printf "%.0f", 1e6 * t / hz / n; else print "?" }')
rate_off=$(median < "$work/rate.off")
rate_paced=$(median < "$work/rate.paced")
rate_tight=$(median < "$work/rate.tight")
kill "${PID[msg]}" 2>/dev/null || true
if [ "$HOLD" -eq 0 ]; then
    echo
    echo "portnanny: $measured"
    echo "msg, concurrency $CONC, median of $ROUNDS rounds of ${DURATION}s: $rate_off conn/s alone;" \
        "$rate_paced conn/s with nannyctl status every 0.1 s; $rate_tight conn/s with nannyctl" \
        "status back to back (~$status_rate requests/s on its own, ${per_req_us} us of daemon CPU each)"
    exit 0
fi

# 2. HOLD connections, then list.
printf '#!/bin/sh\necho held\nexec cat >/dev/null\n' > "$work/hold.sh"
chmod 0755 "$work/hold.sh"
# The hold client's sources are 127.90.(i/250).(i%250+1): `low` is the first 4,000.
start_pn hold 'low: ip: 127.90.0.0/20\nhigh: ALL\n' \
    "low: run $work/hold.sh\nhigh: run $work/hold.sh\n"
parent=${PID[hold]}
ctlw=$(worker_of "$parent" control)
mkfifo "$work/holdctl"
"$LG" hold --addr "127.0.0.1:${PORT[hold]}" --count "$HOLD" --duration 900 --src-net 90 \
    < "$work/holdctl" > "$work/hold.out" 2> "$work/hold.err" &
lgpid=$!
pids+=("$lgpid")
exec 9> "$work/holdctl"
for _ in $(seq 1 $(( 600 + HOLD / 5 ))); do
    grep -q '^held=' "$work/hold.out" 2>/dev/null && break
    kill -0 "$lgpid" 2>/dev/null || break
    sleep 0.1
done
held_line=$(cat "$work/hold.out")
echo "$BENCH_NAME: $held_line" >&2
live=$("$CTL" -s "$work/hold/ctl" --json list --limit 0 | sed 's/^{"total":\([0-9]*\),.*/\1/')
echo "$BENCH_NAME: the daemon lists $live live connections" >&2

# time_list ARGS...: milliseconds per run of `nannyctl ARGS` (output to /dev/null), REPS runs.
time_list() {
    local i t0 t1
    for i in $(seq 1 "$REPS"); do
        t0=$(date +%s%N)
        "$CTL" -s "$work/hold/ctl" "$@" > /dev/null
        t1=$(date +%s%N)
        awk -v d=$(( t1 - t0 )) 'BEGIN { printf "%.1f\n", d / 1e6 }'
    done
}
filtered=$("$CTL" -s "$work/hold/ctl" --json list --class low --limit 0 | sed 's/^{"total":\([0-9]*\),.*/\1/')
bytes_full=$("$CTL" -s "$work/hold/ctl" --json list --class low --sort -age,peer | wc -c)
time_list --json list --class low --sort -age,peer > "$work/t.full"
time_list --json list --class low --sort -age,peer --limit 50 > "$work/t.page"
time_list --json list --sort peer > "$work/t.all"

# 3. CPU of the parent and the control worker over WINDOW seconds.
# window_cpu: "TOTAL PARENT CONTROL" ticks over WINDOW seconds.
window_cpu() {
    local a b c d
    a=$(cpu_ticks "$parent")
    c=$(cpu_ticks "$ctlw")
    sleep "$WINDOW"
    b=$(cpu_ticks "$parent")
    d=$(cpu_ticks "$ctlw")
    echo "$(( b - a + d - c )) $(( b - a )) $(( d - c ))"
}
tck=$(getconf CLK_TCK)
read -r idle_ticks idle_p idle_c < <(window_cpu)
script -qc "stty rows 50 cols 200; exec $CTL -s $work/hold/ctl watch --interval 1" /dev/null \
    > /dev/null 2>&1 &
wpid=$!
pids+=("$wpid")
sleep 1.5
read -r tty_ticks tty_p tty_c < <(window_cpu)
kill -INT "$wpid" 2>/dev/null || true
"$CTL" -s "$work/hold/ctl" watch --interval 1 --json > /dev/null 2>&1 &
wpid=$!
pids+=("$wpid")
sleep 1.5
read -r json_ticks json_p json_c < <(window_cpu)
kill -INT "$wpid" 2>/dev/null || true
exec 9>&-
wait "$lgpid" 2>/dev/null || true

pct() { awk -v t="$1" -v hz="$tck" -v w="$WINDOW" 'BEGIN { printf "%.2f%%", 100 * t / hz / w }'; }
echo
echo "portnanny: $measured"
echo "msg, concurrency $CONC, median of $ROUNDS rounds of ${DURATION}s: $rate_off conn/s alone;" \
    "$rate_paced conn/s with nannyctl status every 0.1 s; $rate_tight conn/s with nannyctl" \
    "status back to back (~$status_rate requests/s on its own, ${per_req_us} us of daemon CPU each)"
echo "held: $held_line; listed live: $live; --class low matches $filtered ($bytes_full bytes of JSON)"
printf 'nannyctl list, %d runs, ms    median    max\n' "$REPS"
printf '  --class low --sort -age,peer (all %s rows)  %8s %8s\n' "$filtered" "$(median < "$work/t.full")" "$(maxof < "$work/t.full")"
printf '  --class low --sort -age,peer --limit 50     %8s %8s\n' "$(median < "$work/t.page")" "$(maxof < "$work/t.page")"
printf '  --sort peer (all %s rows)                 %8s %8s\n' "$live" "$(median < "$work/t.all")" "$(maxof < "$work/t.all")"
echo "daemon CPU (parent + control worker) over ${WINDOW}s, ticks of 1/${tck}s:"
echo "  idle                                   $idle_ticks ($(pct "$idle_ticks") of a core; parent $idle_p, control $idle_c)"
echo "  watch --interval 1, 50-row terminal    $tty_ticks ($(pct "$tty_ticks") of a core; parent $tty_p, control $tty_c)"
echo "  watch --interval 1 --json, every row   $json_ticks ($(pct "$json_ticks") of a core; parent $json_p, control $json_c)"
