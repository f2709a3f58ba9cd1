#!/usr/bin/env bash
# Dump-to-exported-spans latency of flight-recorder dumps joined to the live
# agent's request spans, and the agent's memory, for 1, 10 and 64 MiB dumps
# (issue 21). As root.
#
#   scripts/bench-flight-join.sh                 # SIZES="1 10 64" DUMPS=5
#
# For each size S (MiB): the flightrec fixture (-load 4: four goroutines
# calling /work in a loop, each request a task with three regions and two
# logs; -min-age 600s -max-bytes S MiB, so the window is S MiB once full)
# runs under `agent --pid` (release build, --save-dumps), exporting OTLP/HTTP
# to a sink that discards it (`cargo xtask sink`), as a deployment would
# export; OUTPUT=jsonl writes JSONL to a file instead (its JSON encoding of
# some 2.5 KB per span is then most of the time: the dump's spans wait for
# room in the export queue). Once the window is full, DUMPS dumps to a file,
# each after the previous one's spans are out. The agent logs, per dump, the
# time from WriteTo's return to its last span handed to the export
# pipeline, split into the wait for the session's drain, the join index and
# the mapping (wall time, and the decoder thread's CPU time: it runs at nice
# 19 beside a target that keeps both cores busy). Its peak RSS (VmHWM) is
# read at the end, beside its RSS before the first dump. Baseline, same run:
# `agent decode` of each saved dump to /dev/null (wall time and peak RSS,
# /usr/bin/time), and with OUTPUT=jsonl also with `--join` of the live spans.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
sizes="${SIZES:-1 10 64}"
dumps="${DUMPS:-5}"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
out="$target_dir/bench-flight-join"
rm -rf "$out"
mkdir -p "$out"

(cd "$root/agent/tests/fixtures" && CGO_ENABLED=0 go build -o "$out/flightrec" ./flightrec)
(cd "$root" && cargo build --release -p agent --bin agent)
agent="$target_dir/release/agent"
output="${OUTPUT:-otlp}"
if [[ "$output" == otlp ]]; then
    (cd "$root" && cargo build -q -p xtask)
    "$target_dir/debug/xtask" sink --listen 127.0.0.1:0 >"$out/sink.out" &
    sink=$!
    trap 'kill $sink 2>/dev/null || true' EXIT
    for _ in $(seq 50); do grep -q "listening on" "$out/sink.out" && break; sleep 0.1; done
    export_args=(--otlp-endpoint "http://$(sed -n 's/^listening on //p' "$out/sink.out")" --otlp-protocol http/protobuf)
fi

median() { python3 -c 'import statistics,sys; v=[float(x) for x in sys.argv[1:]]; print(f"{statistics.median(v):.1f}" if v else "-")' "$@"; }

echo "| dump size (median) | dumps | WriteTo return to last span (median, max) | of which drain wait | join index | mapping | mapping on a CPU | spans (median) | joined | agent RSS before / peak | decode alone: no join / --join (median) | decode peak RSS: no join / --join |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for size in $sizes; do
    dir="$out/$size"
    mkdir -p "$dir/dumps"
    "$out/flightrec" -load 4 -min-age 600s -max-bytes $((size << 20)) >"$dir/fixture.out" 2>&1 &
    fixture=$!
    for _ in $(seq 50); do grep -q "listening on" "$dir/fixture.out" && break; sleep 0.1; done
    addr="$(sed -n 's/^listening on //p' "$dir/fixture.out")"
    if [[ "$output" == jsonl ]]; then
        export_args=(--output "jsonl=$dir/spans.jsonl")
    fi
    AGENT_LOG=info "$agent" --pid "$fixture" "${export_args[@]}" --save-dumps "$dir/dumps" \
        2>"$dir/agent.log" &
    agent_pid=$!
    for _ in $(seq 600); do grep -q "attached to PID" "$dir/agent.log" && break; sleep 0.1; done
    # Fill the window: about 1 MiB/s of trace under this load.
    sleep $(( size * 3 / 2 + 3 ))
    rss_before="$(awk '/VmRSS/ {print $2}' "/proc/$agent_pid/status")"
    for i in $(seq "$dumps"); do
        curl -sf "http://$addr/dump?to=file&path=$dir/written-$i.trace" >/dev/null
        for _ in $(seq 600); do
            [[ "$(grep -c 'ms after WriteTo returned' "$dir/agent.log")" -ge "$i" ]] && break
            sleep 0.1
        done
        sleep 0.5
    done
    peak="$(awk '/VmHWM/ {print $2}' "/proc/$agent_pid/status")"
    kill -INT "$agent_pid"; wait "$agent_pid" || true
    kill "$fixture"; wait "$fixture" 2>/dev/null || true

    lines="$(grep 'ms after WriteTo returned' "$dir/agent.log")"
    field() { sed -n "s/.*$1.*/\\1/p" <<<"$lines"; }
    bytes="$(field ': \([0-9]*\) bytes, ')"
    spans="$(field 'bytes, \([0-9]*\) spans')"
    joined="$(field '(\([0-9]*\) joined')"
    after="$(field 'last span \([0-9.]*\) ms after')"
    wait_ms="$(field 'drain wait \([0-9.]*\) ms')"
    index_ms="$(field 'spans \([0-9.]*\) ms, mapping')"
    map_ms="$(field 'mapping \([0-9.]*\) ms, of which')"
    cpu_ms="$(field 'of which \([0-9.]*\) ms on a CPU')"
    max_after="$(python3 -c 'import sys; print(f"{max(float(x) for x in sys.argv[1:]):.1f}")' $after)"
    mib="$(python3 -c 'import statistics,sys; print(f"{statistics.median(int(x) for x in sys.argv[1:])/1048576:.2f} MiB")' $bytes)"

    plain=(); joinedt=(); plain_rss=(); join_rss=()
    for f in "$dir"/dumps/*.trace; do
        /usr/bin/time -o "$dir/time.txt" -f '%e %M' "$agent" decode "$f" --output "jsonl=/dev/null" -q >/dev/null 2>&1
        r="$(tail -1 "$dir/time.txt")"
        plain+=("$(awk '{print $1*1000}' <<<"$r")"); plain_rss+=("$(awk '{print $2/1024}' <<<"$r")")
        [[ "$output" == jsonl ]] || continue
        /usr/bin/time -o "$dir/time.txt" -f '%e %M' "$agent" decode "$f" --join "$dir/spans.jsonl" --output "jsonl=/dev/null" -q >/dev/null 2>&1
        r="$(tail -1 "$dir/time.txt")"
        joinedt+=("$(awk '{print $1*1000}' <<<"$r")"); join_rss+=("$(awk '{print $2/1024}' <<<"$r")")
    done
    echo "| $mib | $(wc -l <<<"$lines") | $(median $after) ms, $max_after ms | $(median $wait_ms) ms | $(median $index_ms) ms | $(median $map_ms) ms | $(median $cpu_ms) ms | $(median $spans) | $(median $joined) | $((rss_before / 1024)) / $((peak / 1024)) MiB | $(median "${plain[@]}") / $(median "${joinedt[@]}") ms | $(median "${plain_rss[@]}") / $(median "${join_rss[@]}") MiB |"
done
