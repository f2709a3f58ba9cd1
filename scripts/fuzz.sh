#!/usr/bin/env bash
# Runs the agent's fuzz targets (agent/fuzz) for a bounded time each,
# starting from the stored corpus of each (agent/fuzz/corpus/<target>/).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   (default: 30 s, every target)
#
# Targets: `cargo fuzz list` in agent/fuzz (gotrace_decode, usdt_notes,
# usdt_args, usdt_record, usdt_mapping, buildinfo, pclntab, dwarf,
# http_record, flight_record, traceparent, tracestate, syscall_record). They link the agent
# library built without its eBPF object (feature `ebpf` off), so no
# bpf-linker is needed. Needs the nightly toolchain; installs cargo-fuzz
# from crates.io if missing.
# New inputs go to a temporary directory: the stored corpus is only read.
# libFuzzer's -rss_limit_mb/-malloc_limit_mb turn unbounded allocation into a
# failure, -timeout turns a hang into one; the targets are built with debug
# assertions, so integer overflow panics as well. Crashes land in
# agent/fuzz/artifacts/<target>/. Every target runs even if one fails; the
# script then exits 1 and names the failed ones.
set -euo pipefail

secs=30
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then
    secs="$1"
    shift
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/agent/fuzz"
# The nightly that `cargo xtask setup` installs (it also builds the eBPF
# programs); cargo-fuzz needs a nightly for its sanitizer flags.
toolchain="$(cat "$root/agent-ebpf/nightly-toolchain")"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo "+$toolchain" fuzz list)
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

failed=()
summary=()
for target in "${targets[@]}"; do
    # The largest input worth mutating: whole trace files for the trace
    # decoder, DWARF sections (a Go program's first units), note sections or
    # small ELF images, function tables, record sequences, TOML, spec
    # strings, header values (the probes keep at most 56 and 512 bytes).
    case "$target" in
        gotrace_decode | dwarf) max_len=262144 ;;
        usdt_notes | pclntab) max_len=65536 ;;
        traceparent | tracestate) max_len=1024 ;;
        sql_sanitize | url_sanitize) max_len=4096 ;;
        *) max_len=16384 ;;
    esac
    mkdir -p "$work/$target" "corpus/$target"
    echo "== $target: ${secs}s on corpus/$target ($(find "corpus/$target" -type f | wc -l) inputs)"
    # Debug assertions on: an arithmetic overflow in a parser fails too.
    if cargo "+$toolchain" fuzz run --debug-assertions "$target" "$work/$target" "corpus/$target" -- \
        -max_total_time="$secs" \
        -max_len="$max_len" \
        -rss_limit_mb=2048 \
        -malloc_limit_mb=1024 \
        -timeout=10 \
        -print_final_stats=1 2>&1 | tee "$work/$target.log"; then
        status=ok
    else
        status=FAILED
        failed+=("$target")
    fi
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$target.log" | tail -1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/$target.log" | tail -1)"
    new="$(sed -n 's/^stat::new_units_added: *//p' "$work/$target.log" | tail -1)"
    summary+=("$(printf '%-16s %-6s %10s runs %8s/s %6s new inputs' \
        "$target" "$status" "${runs:-?}" "${rate:-?}" "${new:-?}")")
done

echo "== fuzzing, ${secs}s per target:"
printf '  %s\n' "${summary[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz targets failed: ${failed[*]} (inputs in agent/fuzz/artifacts/)" >&2
    exit 1
fi
