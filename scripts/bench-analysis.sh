#!/usr/bin/env bash
# Binary analysis cost (issue 5, item 7b): wall time and peak RSS of what the
# agent does with a target before attaching: open + build info + the built-in
# probes' functions, entry/return sites and struct offsets (`inspect`), plus
# a walk of the whole pclntab. Each run is a fresh process, so the peak RSS
# is that of one analysis; the page cache is warm (first run excluded).
#
#   scripts/bench-analysis.sh [BINARY...]     (RUNS=21 by default)
#
# Without arguments: the Go distribution's `go` and `compile` commands
# (stripped of DWARF, symbol table present) and `cmd/go` rebuilt with DWARF.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-21}

cargo build --release -q -p agent --example analyze
analyze=target/release/examples/analyze

if [ "$#" -eq 0 ]; then
    tooldir=$(go env GOTOOLDIR)
    with_dwarf=target/tmp/bench-analysis/go-with-dwarf
    mkdir -p "$(dirname "$with_dwarf")"
    [ -x "$with_dwarf" ] || GOTOOLCHAIN=local go build -o "$with_dwarf" cmd/go
    set -- "$(go env GOROOT)/bin/go" "$tooldir/compile" "$with_dwarf"
fi

median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

printf '%-60s %8s %10s %10s %12s %10s\n' binary "size MB" "median ms" "max ms" "median RSS MB" functions
for bin in "$@"; do
    "$analyze" --bench "$bin" > /dev/null # warm the page cache
    results=$(for _ in $(seq "$RUNS"); do "$analyze" --bench "$bin"; done)
    ms=$(sed -n 's/.*ms=\([0-9.]*\).*/\1/p' <<< "$results" | median)
    max=$(sed -n 's/.*ms=\([0-9.]*\).*/\1/p' <<< "$results" | sort -n | tail -1)
    rss=$(sed -n 's/.*rss_kb=\([0-9]*\).*/\1/p' <<< "$results" | median)
    funcs=$(sed -n 's/.*functions=\([0-9]*\).*/\1/p' <<< "$results" | head -1)
    size=$(stat -c %s "$bin")
    printf '%-60s %8.1f %10s %10s %12.1f %10s\n' "$bin" "$(bc -l <<< "$size/1048576")" "$ms" "$max" "$(bc -l <<< "$rss/1024")" "$funcs"
done

# Cost per uprobe hit at each kind of site (root only: perf_event_open).
if [ "$(id -u)" = 0 ] && [ "${SITE_COST:-1}" = 1 ]; then
    sitecost=target/tmp/bench-analysis/sitecost
    (cd agent/tests/fixtures && GOTOOLCHAIN=local go build -o "../../../$sitecost" ./sitecost)
    echo
    "$analyze" --site-cost "$sitecost" "${CALLS:-100000}" "${ROUNDS:-5}"
fi
