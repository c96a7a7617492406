#!/usr/bin/env bash
# The project's test command (README, .ci/run): formatting, lints, every test of the workspace,
# a build of the fuzz workspace and lints of the benchmark's load generator. Runs every step
# even after a failure and ends with one summary line; exits non-zero if any step failed.
#
# The end-to-end tests start the real daemon; as root (CI) they also check the privilege drop,
# run the daemon in private mount namespaces with a loopback dnsmasq as its resolver, and talk
# to a private rsyslogd. The packages they need are installed by .ci/install-test-deps (below).
set -euo pipefail
cd "$(dirname "$0")"

if [ -d "${HOME:-/root}/.cargo/bin" ]; then
    export PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

start=$(date +%s)
results=()
failed=0

step() {
    local name="$1"
    shift
    local t0
    t0=$(date +%s)
    echo "==> $name: $*"
    if "$@"; then
        results+=("$name ok ($(( $(date +%s) - t0 ))s)")
    else
        results+=("$name FAILED ($(( $(date +%s) - t0 ))s)")
        failed=1
    fi
}

fuzz_build() {
    if [ ! -f fuzz/Cargo.toml ]; then
        echo "fuzz: no fuzz/Cargo.toml, nothing to build"
        return 0
    fi
    # The fuzz workspace is separate (its own [workspace]); its targets link libFuzzer through
    # libfuzzer-sys, which builds on stable without cargo-fuzz. Its own target dir keeps it from
    # invalidating the main build.
    cargo build --manifest-path fuzz/Cargo.toml --target-dir fuzz/target
}

# The benchmark's load generator and floor servers (its own workspace): kept compiling and
# lint-clean, since bench/run.sh is how the performance numbers in the README are made.
bench_lint() {
    cargo fmt --manifest-path bench/loadgen/Cargo.toml --check &&
        cargo clippy --manifest-path bench/loadgen/Cargo.toml --all-targets -- -D warnings
}

# Debian packages and the service test user the end-to-end tests need (root only).
./.ci/install-test-deps

step fmt cargo fmt --all --check
step clippy cargo clippy --workspace --all-targets -- -D warnings
step test cargo test --workspace --no-fail-fast
step fuzz fuzz_build
step bench bench_lint

summary=""
for r in "${results[@]}"; do
    summary="${summary:+$summary; }$r"
done
total=$(( $(date +%s) - start ))
if [ "$failed" -eq 0 ]; then
    echo "test.sh: PASS in ${total}s: ${summary}"
else
    echo "test.sh: FAIL in ${total}s: ${summary}"
fi
exit "$failed"
