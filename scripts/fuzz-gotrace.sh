#!/usr/bin/env bash
# Runs the Go execution-trace decoder's fuzz target (gotrace_decode) for a
# bounded time on its stored corpus: scripts/fuzz.sh for that one target.
#
#   scripts/fuzz-gotrace.sh [SECONDS]     (default 60)
set -euo pipefail
exec "$(dirname "$0")/fuzz.sh" "${1:-60}" gotrace_decode
