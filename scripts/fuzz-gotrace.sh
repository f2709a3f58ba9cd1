#!/usr/bin/env bash
# Runs the Go execution-trace decoder's fuzz target (agent/fuzz, target
# gotrace_decode) for a bounded time, starting from the stored corpus.
#
#   scripts/fuzz-gotrace.sh [SECONDS]     (default 60)
#
# Needs the nightly toolchain; installs cargo-fuzz from crates.io if missing.
# New inputs go to a temporary directory: the stored corpus is only read.
# libFuzzer's -rss_limit_mb/-malloc_limit_mb turn unbounded allocation into a
# failure, -timeout turns a hang into one. Crashes land in
# agent/fuzz/artifacts/gotrace_decode/.
set -euo pipefail

secs="${1:-60}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/agent/fuzz"
# The nightly that `cargo xtask setup` installs (it also builds the eBPF
# programs, which the fuzz build compiles through the agent's build script).
toolchain="$(cat "$root/agent-ebpf/nightly-toolchain")"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cargo "+$toolchain" fuzz run gotrace_decode "$work" corpus/gotrace_decode -- \
    -max_total_time="$secs" \
    -max_len=262144 \
    -rss_limit_mb=2048 \
    -malloc_limit_mb=1024 \
    -timeout=10 \
    -print_final_stats=1
