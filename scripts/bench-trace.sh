#!/usr/bin/env bash
# Benchmarks the Go execution-trace decoder (agent::gotrace) against Go's own
# parser (golang.org/x/exp/trace, the standard library's internal/trace) on
# the same trace file, in the same run.
#
#   scripts/bench-trace.sh            # RUNS=5 SIZE_MB=50
#   RUNS=9 SIZE_MB=100 scripts/bench-trace.sh
#   NO_RECORD=1 scripts/bench-trace.sh   # do not append to BENCHMARKS.md
#
# 1. Generates a ~SIZE_MB trace with agent/tests/fixtures/traces/bench (kept in
#    target/bench-trace/ and reused; REGENERATE=1 to make a new one).
# 2. Builds both readers: `decode_bench` (agent/examples/decode_bench.rs) and
#    `tracedump -count` (agent/tests/fixtures/tracedump); each reads every
#    event of the file and prints the count (the counts must agree).
# 3. Runs them alternately RUNS times under /usr/bin/time, takes the medians
#    of wall time and peak RSS, and prints MB/s, events/s and the ratios.
# 4. Appends the result to BENCHMARKS.md under "## Trace decoder".
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
runs="${RUNS:-5}"
size_mb="${SIZE_MB:-50}"
out="$root/target/bench-trace"
mkdir -p "$out"
trace="$out/bench-${size_mb}mb.trace"

if [[ ! -s "$trace" || "${REGENERATE:-0}" == 1 ]]; then
    echo "generating a ${size_mb} MB trace: $trace" >&2
    (cd "$root/agent/tests/fixtures" && go run ./traces/bench "$trace" "$size_mb")
fi
(cd "$root/agent/tests/fixtures/tracedump" && go build -o "$out/tracedump" .)
cargo build --quiet --release --manifest-path "$root/Cargo.toml" -p agent --example decode_bench
rust_bin="$root/target/release/examples/decode_bench"
go_bin="$out/tracedump"

bytes=$(stat -c %s "$trace")
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# measure NAME CMD...: appends "wall_s rss_kb cpu_s events" to $tmp/NAME.
measure() {
    local name="$1"
    shift
    /usr/bin/time -f "%e %M %U %S" -o "$tmp/time" "$@" >"$tmp/stdout"
    local events
    events=$(grep -oE '^[0-9]+$|events=[0-9]+' "$tmp/stdout" | grep -oE '[0-9]+' | head -1)
    read -r wall rss user sys <"$tmp/time"
    echo "$wall $rss $(awk -v u="$user" -v s="$sys" 'BEGIN {print u + s}') $events" >>"$tmp/$name"
}

# Warm the page cache, then alternate.
cat "$trace" >/dev/null
for ((i = 0; i < runs; i++)); do
    measure rust "$rust_bin" "$trace"
    measure go "$go_bin" -count "$trace"
    measure stream "$rust_bin" --stream "$trace"
done

median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
rust_s=$(cut -d' ' -f1 "$tmp/rust" | median)
go_s=$(cut -d' ' -f1 "$tmp/go" | median)
rust_kb=$(cut -d' ' -f2 "$tmp/rust" | median)
go_kb=$(cut -d' ' -f2 "$tmp/go" | median)
stream_s=$(cut -d' ' -f1 "$tmp/stream" | median)
stream_kb=$(cut -d' ' -f2 "$tmp/stream" | median)
stream_cpu=$(cut -d' ' -f3 "$tmp/stream" | median)
rust_cpu=$(cut -d' ' -f3 "$tmp/rust" | median)
go_cpu=$(cut -d' ' -f3 "$tmp/go" | median)
rust_ev=$(cut -d' ' -f4 "$tmp/rust" | sort -u)
go_ev=$(cut -d' ' -f4 "$tmp/go" | sort -u)
stream_ev=$(cut -d' ' -f4 "$tmp/stream" | sort -u)
load=$(cut -d' ' -f1-3 /proc/loadavg)
if [[ "$rust_ev" != "$go_ev" || "$stream_ev" != "$go_ev" || $(echo "$rust_ev" | wc -l) != 1 ]]; then
    echo "event counts disagree: rust=[$rust_ev] stream=[$stream_ev] go=[$go_ev]" >&2
    exit 1
fi

report=$(
    awk -v b="$bytes" -v ev="$rust_ev" -v rs="$rust_s" -v gs="$go_s" -v rk="$rust_kb" -v gk="$go_kb" \
        -v rc="$rust_cpu" -v gc="$go_cpu" -v n="$runs" -v load="$load" \
        -v ss="$stream_s" -v sk="$stream_kb" -v sc="$stream_cpu" 'BEGIN {
        mb = b / 1e6
        printf "| reader | median wall (s) | MB/s | events/s | median CPU (s) | peak RSS (MB) |\n"
        printf "|---|---:|---:|---:|---:|---:|\n"
        printf "| agent::gotrace, `Reader::from_file` (`decode_bench`) | %.2f | %.1f | %.2fM | %.2f | %.1f |\n", rs, mb / rs, ev / rs / 1e6, rc, rk / 1024
        printf "| agent::gotrace, `Reader::new` over `io::Read` (`decode_bench --stream`) | %.2f | %.1f | %.2fM | %.2f | %.1f |\n", ss, mb / ss, ev / ss / 1e6, sc, sk / 1024
        printf "| Go x/exp/trace (`tracedump -count`) | %.2f | %.1f | %.2fM | %.2f | %.1f |\n", gs, mb / gs, ev / gs / 1e6, gc, gk / 1024
        printf "\n`from_file`: throughput (wall) **%.2fx** Go'\''s (target >= 2x), CPU time %.2fx less, peak memory **%.3f** of Go'\''s (target <= 0.25).\n", gs / rs, gc / rc, rk / gk
        printf "Stream (`io::Read`, one generation in memory): throughput **%.2fx**, CPU time %.2fx less, peak memory **%.3f** of Go'\''s.\n", gs / ss, gc / sc, sk / gk
        printf "Trace: %.1f MB, %d events; medians of %d alternating runs each; load average at the end: %s.\n", mb, ev, n, load
    }'
)
echo "$report"

if [[ "${NO_RECORD:-0}" != 1 ]]; then
    host="$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"
    versions="$(go version | cut -d' ' -f3), $(rustc --version | cut -d' ' -f1-2)"
    entry="### $(date -u +%Y-%m-%dT%H:%MZ), ${host}, ${versions}

Command: \`RUNS=${runs} SIZE_MB=${size_mb} scripts/bench-trace.sh\`; wall time and peak RSS from \`/usr/bin/time\`,
process start to exit, the same file for both readers.

${report}
"
    ENTRY="$entry" python3 - "$root/BENCHMARKS.md" <<'EOF'
import os, sys
path = sys.argv[1]
entry = os.environ["ENTRY"]
try:
    text = open(path).read()
except FileNotFoundError:
    text = "# Benchmarks\n"
start, end = "<!-- bench:trace-decoder:start -->", "<!-- bench:trace-decoder:end -->"
if start not in text or end not in text:
    intro = ("## Trace decoder\n\nThe Go execution-trace decoder (`agent::gotrace::Reader`) against "
             "Go's own parser (`golang.org/x/exp/trace`), reading every event of the same ~50 MB "
             "trace (`scripts/bench-trace.sh`, which appends one entry per run here). Targets: at "
             "least 2x Go's throughput, at most a quarter of its peak memory.\n\n")
    text = text.rstrip("\n") + "\n\n" + start + "\n" + intro + entry + end + "\n"
else:
    k = text.index(end)
    text = text[:k].rstrip("\n") + "\n\n" + entry + text[k:]
open(path, "w").write(text)
EOF
    echo "recorded in BENCHMARKS.md" >&2
fi
