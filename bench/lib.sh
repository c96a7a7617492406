# bench/lib.sh: shell helpers shared by bench/run.sh and bench/lookups/run.sh (sourced, not run).
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
