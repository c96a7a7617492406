# bench/lib.sh: shell helpers shared by bench/run.sh, bench/ab.sh, bench/waiting.sh, bench/lookups/run.sh and bench/sentry/run.sh
# (sourced, not run).
# The caller sets BENCH_NAME (the prefix of its messages), and for cleanup `pids` (what it
# started) and `work` (its scratch directory).

# listening PORT: whether something listens on TCP PORT.
listening() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q LISTEN; }

# free_port: a TCP port in 20000-39999 nothing listens on (bounded: 100 tries).
free_port() {
    local p tries=0
    while :; do
        p=$(( 20000 + RANDOM % 20000 ))
        listening "$p" || { echo "$p"; return; }
        tries=$((tries + 1))
        [ "$tries" -lt 100 ] || { echo "${BENCH_NAME:-bench}: no free port" >&2; exit 1; }
    done
}

# wait_listen PORT PID: waits (10 s at most) until PORT listens; exits with the logs in `work`
# if PID dies first or the port never listens.
wait_listen() {
    local port=$1 pid=$2 i
    for i in $(seq 1 200); do
        listening "$port" && return 0
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "${BENCH_NAME:-bench}: server $pid died; log:" >&2
            cat "$work"/*.log >&2 2>/dev/null || true
            exit 1
        fi
        sleep 0.05
    done
    echo "${BENCH_NAME:-bench}: port $port never listened" >&2
    exit 1
}

# worker_of PARENT ROLE: the child of PARENT started with `--privsep-role ROLE`.
worker_of() {
    local p
    for p in $(ps -o pid= --ppid "$1"); do
        if tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -q -- "--privsep-role $2"; then
            echo "$p"
            return
        fi
    done
}

# make_work NAME: sets `work` to a fresh scratch directory (mode 0755) named after NAME. As root
# under /run, not /tmp: the classifier's chroot dir must have no group/world-writable ancestor.
make_work() {
    local base=/tmp
    if [ "$(id -u)" -eq 0 ] && [ -d /run ]; then base=/run; fi
    work=$(mktemp -d "$base/$1.XXXXXX")
    chmod 0755 "$work"
}

# cleanup: the EXIT trap. Stops every process in `pids` (TERM, then KILL), by pid only, and
# removes `work` unless KEEP is set.
cleanup() {
    for p in "${pids[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    sleep 0.3
    for p in "${pids[@]}"; do
        kill -9 "$p" 2>/dev/null || true
    done
    if [ -z "${KEEP:-}" ]; then rm -rf "$work"; else echo "${BENCH_NAME:-bench}: kept $work" >&2; fi
}

# build_portnanny_and_loadgen ROOT TARGET: sets PN (the portnanny binary measured: PORTNANNY if
# set, else a release build of ROOT's work tree into TARGET), `measured` (what PN is, naming
# uncommitted changes), and LG (the load generator, built in release).
build_portnanny_and_loadgen() {
    local root=$1 target=$2 dirty
    echo "${BENCH_NAME:-bench}: building (release)..." >&2
    if [ -n "${PORTNANNY:-}" ]; then
        # A binary built elsewhere (e.g. from a clean export of one commit): measured as given.
        PN=$PORTNANNY
        [ -x "$PN" ] || { echo "${BENCH_NAME:-bench}: $PN is not executable" >&2; exit 1; }
        measured="$PN"
    else
        cargo build -q --release --bin portnanny --manifest-path "$root/Cargo.toml" --target-dir "$target"
        PN="$target/release/portnanny"
        # The build is of the work tree, which may hold someone's uncommitted changes: say so.
        measured="work tree of $root at $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')"
        dirty=$(git -C "$root" status --porcelain -- Cargo.toml src privsep policy 2>/dev/null | wc -l)
        if [ "$dirty" -gt 0 ]; then measured="$measured + $dirty uncommitted file(s) in src/privsep/policy"; fi
    fi
    cargo build -q --release --manifest-path "$root/bench/loadgen/Cargo.toml"
    LG="$root/bench/loadgen/target/release/portnanny-loadgen"
}

# platform_line: what decides the cost of waking an idle CPU, which sets concurrency 1 (see
# bench/README.md, "Concurrency 1 and the idle vCPU"): the cpuidle driver and governor, the
# guest halt-polling window where the haltpoll driver is in use, and the hypervisor if any.
platform_line() {
    local d=/sys/devices/system/cpu/cpuidle driver governor poll="" hv
    driver=$(cat "$d/current_driver" 2>/dev/null || echo none)
    governor=$(cat "$d/current_governor_ro" 2>/dev/null || cat "$d/current_governor" 2>/dev/null || echo none)
    if [ -r /sys/module/haltpoll/parameters/guest_halt_poll_ns ]; then
        poll=", guest_halt_poll_ns $(cat /sys/module/haltpoll/parameters/guest_halt_poll_ns)"
    fi
    hv=$(systemd-detect-virt --vm 2>/dev/null || true)
    [ -n "$hv" ] || hv=$(grep -q '^flags.* hypervisor' /proc/cpuinfo && echo "a hypervisor" || echo none)
    echo "platform: $(nproc) CPUs, cpuidle $driver/$governor$poll, virtual machine: $hv"
}
