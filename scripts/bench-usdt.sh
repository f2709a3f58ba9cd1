#!/usr/bin/env bash
# USDT: the agent against the design it replaces (bpftrace printing one JSON
# line per event, piped to a small consumer that pairs them by request id),
# in one run, as root.
#
# The traced program is the USDT fixture (agent/tests/fixtures/usdt) in its
# flood mode: `flood N ITER` fires N request_start/request_end pairs with
# ids "f-<i>" back to back, ITER iterations of busy work inside each pair,
# and reports pairs/s. Each round runs, in rotating order:
#   untraced  the fixture alone
#   agent     `agent --pid P --otlp-endpoint http://SINK` (spans built,
#             paired, encoded as OTLP protobuf and exported over HTTP to a
#             local sink that discards them: `cargo xtask sink`)
#   bpftrace  `bpftrace -p P` on both probes, printf one JSON line per event,
#             piped to a python3 consumer that pairs them like the seed's
#             span manager and writes each span as one JSON line to /dev/null
#   floor     bpftrace on the same two probes with `@n = count()` only: no
#             record, no consumer; the price of the two uprobe traps that
#             any uprobe-based tracer pays
# at three work levels: ITER=0 (the probes alone: the flood rate, for loss),
# ITER=$WORK (a request that does some work of its own) and ITER=$REF, the
# reference load: the issue's throughput target is stated where "bpftrace's
# pipeline manages about 0.4x", and 8,500 iterations (about 14 us of work
# per pair here) is where it does on this machine; the table shows the
# ratio bpftrace actually got, so the reference is checked in every run.
#
# Reported (medians over rounds): pairs/s and the ratio to untraced; CPU of
# the tracer processes (utime+stime from /proc/PID/stat, from just before
# the flood until they are idle again) per 1,000 spans; events lost (the
# agent's summary: ring buffer full, unmatched, ...; bpftrace: its "Lost N
# events" lines and the consumer's unpaired starts/ends).
#
# Usage: scripts/bench-usdt.sh [ROUNDS] [N_FLOOD] [N_WORK] [WORK] [REF]
set -euo pipefail

ROUNDS=${1:-5}
N_FLOOD=${2:-200000}
N_WORK=${3:-50000}
WORK=${4:-6000}
REF=${5:-8500}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${BENCH_DIR:-/tmp/bench-usdt}
mkdir -p "$OUT"

command -v bpftrace >/dev/null || {
    echo "bpftrace not found: apt-get install -y bpftrace" >&2
    exit 1
}

echo "building the fixture and the agent (release)..." >&2
gcc -shared -fPIC -O2 -g -o "$OUT/libfix.so" \
    "$ROOT/agent/tests/fixtures/usdt/lib/fixlib.c" \
    "$ROOT/agent/tests/fixtures/usdt/lib/fixlib_guarded.c"
(cd "$ROOT/agent/tests/fixtures" && CGO_ENABLED=1 go build -o "$OUT/usdt" ./usdt)
(cd "$ROOT" && cargo build --release -p agent --bin agent >&2)
(cd "$ROOT" && cargo build -p xtask >&2)
AGENT=${AGENT:-$ROOT/target/release/agent}
SINK_BIN=$ROOT/target/debug/xtask

cat >"$OUT/trace.bt" <<'EOF'
usdt:__EXE__:fixture:request_start
{
    printf("{\"event\":\"request_start\",\"data\":{\"request_id\":\"%s\",\"timestamp\":%llu}}\n", str(arg0), nsecs);
}
usdt:__EXE__:fixture:request_end
{
    printf("{\"event\":\"request_end\",\"data\":{\"request_id\":\"%s\",\"timestamp\":%llu}}\n", str(arg0), nsecs);
}
EOF

cat >"$OUT/consumer.py" <<'EOF'
# The seed's pipeline, reduced: parse each JSON event line, pair start/end
# by request_id, make a span record and write it out as one JSON line.
# Counts are of the flood's ids ("f-..."); warm-up pairs ("w...") only
# signal that bpftrace is attached.
import json, re, sys
out = open("/dev/null", "w")
open_spans = {}
spans = unmatched_ends = bad = lost = 0
status_path = sys.argv[1]
ready = False
for line in sys.stdin:
    if not line.startswith("{"):
        # bpftrace reports perf-buffer overruns on its output stream.
        m = re.search(r"Lost (\d+) events", line)
        if m:
            lost += int(m.group(1))
        continue
    try:
        ev = json.loads(line)
    except ValueError:
        bad += 1
        continue
    data = ev["data"]
    rid = data["request_id"]
    if ev["event"] == "request_start":
        open_spans[rid] = data["timestamp"]
    else:
        start = open_spans.pop(rid, None)
        if start is None:
            unmatched_ends += rid.startswith("f-")
            continue
        span = {"name": "Request", "attributes": {"request.id": rid},
                "start": start, "end": data["timestamp"]}
        out.write(json.dumps(span) + "\n")
        if rid.startswith("f-"):
            spans += 1
        elif not ready:
            ready = True
            open(status_path + ".ready", "w").close()
unended = sum(1 for rid in open_spans if rid.startswith("f-"))
with open(status_path, "w") as f:
    json.dump({"spans": spans, "unmatched_ends": unmatched_ends,
               "unended_starts": unended, "bad_lines": bad, "lost": lost}, f)
EOF

python3 - "$OUT" "$AGENT" "$SINK_BIN" "$ROUNDS" "$N_FLOOD" "$N_WORK" "$WORK" "$REF" <<'EOF'
import json, os, re, signal, statistics, subprocess, sys, time

out, agent_bin, sink_bin, rounds, n_flood, n_work, work, ref = *sys.argv[1:4], *map(int, sys.argv[4:])
levels = {"flood": (n_flood, 0), "work": (n_work, work), "reference": (n_work, ref)}
TCK = os.sysconf("SC_CLK_TCK")

# One OTLP/HTTP sink for the whole run; it accepts and discards exports.
sink = subprocess.Popen([sink_bin, "sink"], stdout=subprocess.PIPE, text=True)
sink_addr = sink.stdout.readline().split()[-1]

def cpu(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TCK
    except (FileNotFoundError, ProcessLookupError):
        return None

def wait_idle(pids, quiet=0.6, limit=120):
    """Waits until the processes' CPU stops growing; returns their CPU."""
    last, since, end = None, time.time(), time.time() + limit
    while time.time() < end:
        now = [cpu(p) for p in pids]
        if now != last:
            last, since = now, time.time()
        elif time.time() - since >= quiet:
            break
        time.sleep(0.1)
    return sum(c for c in last if c is not None)

class Fixture:
    def __init__(self):
        self.p = subprocess.Popen([f"{out}/usdt", f"{out}/libfix.so"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, bufsize=1)
        line = self.p.stdout.readline().split()
        assert line[0] == "ready", line
        self.pid = int(line[1])
    def cmd(self, c):
        self.p.stdin.write(c + "\n"); self.p.stdin.flush()
        return self.p.stdout.readline().strip()
    def flood(self, n, it):
        f = self.cmd(f"flood {n} {it}").split()
        return float(f[4])
    def close(self):
        try:
            self.cmd("quit")
        except BrokenPipeError:
            pass
        self.p.wait(10)

def run_untraced(n, it):
    fx = Fixture()
    rate = fx.flood(n, it)
    fx.close()
    return {"rate": rate}

def run_agent(n, it, tag):
    fx = Fixture()
    summary = f"{out}/agent-summary-{tag}.txt"
    err = open(f"{out}/agent-stderr-{tag}.txt", "w+")
    a = subprocess.Popen([agent_bin, "--pid", str(fx.pid), "--otlp-endpoint", f"http://{sink_addr}",
                          "--summary-file", summary], stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.time() + 60
    while True:
        err.seek(0)
        if "attached to PID" in err.read():
            break
        assert a.poll() is None and time.time() < deadline, "agent did not attach"
        time.sleep(0.05)
    before = wait_idle([a.pid], quiet=0.3)
    rate = fx.flood(n, it)
    after = wait_idle([a.pid])
    a.send_signal(signal.SIGINT)
    a.wait(30)
    fx.close()
    s = dict(l.split("=") for l in open(summary).read().split())
    s = {k: int(v) for k, v in s.items()}
    lost = (s["ringbuf_full"] + s["bad_records"] + s["usdt_unmatched_ends"] + s["usdt_expired"]
            + s["usdt_evicted"] + s["usdt_replaced"] + s["usdt_unreadable_ids"]
            + s["dropped_queue_full"] + s["dropped_export_failed"])
    # Spans the sink received: paired, encoded and exported.
    spans = s["spans_exported"]
    return {"rate": rate, "cpu": after - before, "spans": spans, "lost_events": 2 * n - 2 * spans,
            "reported_loss": lost, "ringbuf_full": s["ringbuf_full"], "summary": s}

def run_floor(n, it, tag):
    """The uprobe floor: bpftrace on the same two probes doing nothing but
    bump a per-CPU counter. No records, no consumer: what any uprobe-based
    tracer pays for the two traps alone."""
    fx = Fixture()
    script = ("usdt:__EXE__:fixture:request_start { @n = count(); }\n"
              "usdt:__EXE__:fixture:request_end { @n = count(); }\n").replace("__EXE__", f"/proc/{fx.pid}/exe")
    with open(f"{out}/floor-{tag}.bt", "w") as f:
        f.write(script)
    bt = subprocess.Popen(["bpftrace", "-p", str(fx.pid), f"{out}/floor-{tag}.bt"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + 120
    while "Attaching" not in bt.stdout.readline():
        assert bt.poll() is None and time.time() < deadline, "bpftrace did not attach"
    time.sleep(1.0)
    rate = fx.flood(n, it)
    stop(bt)
    fx.close()
    return {"rate": rate}

def stop(proc):
    # bpftrace exits on SIGINT, after printing its maps; once in a while it
    # hangs detaching (tracefs is not mounted here). Its figures are taken by
    # then, so a kill loses nothing.
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        print("bpftrace did not exit 30 s after SIGINT: killed", file=sys.stderr, flush=True)
        proc.kill()
        proc.wait()

def run_bpftrace(n, it, tag):
    fx = Fixture()
    status = f"{out}/consumer-{tag}.json"
    for p in (status, status + ".ready"):
        if os.path.exists(p):
            os.remove(p)
    script = open(f"{out}/trace.bt").read().replace("__EXE__", f"/proc/{fx.pid}/exe")
    with open(f"{out}/trace-{tag}.bt", "w") as f:
        f.write(script)
    err = open(f"{out}/bpftrace-stderr-{tag}.txt", "w+")
    bt = subprocess.Popen(["bpftrace", "-p", str(fx.pid), f"{out}/trace-{tag}.bt"],
                          stdout=subprocess.PIPE, stderr=err)
    con = subprocess.Popen([sys.executable, f"{out}/consumer.py", status], stdin=bt.stdout)
    bt.stdout.close()
    deadline, i = time.time() + 120, 0
    while not os.path.exists(status + ".ready"):
        assert bt.poll() is None and time.time() < deadline, "bpftrace did not attach: " + open(err.name).read()[-2000:]
        fx.cmd(f"start w{i}"); fx.cmd(f"end w{i}"); i += 1
        time.sleep(0.2)
    before = wait_idle([bt.pid, con.pid], quiet=0.3)
    rate = fx.flood(n, it)
    after = wait_idle([bt.pid, con.pid])
    stop(bt)
    con.wait(60)
    fx.close()
    c = json.load(open(status))
    err.seek(0)
    text = err.read()
    lost_lines = c["lost"] + sum(int(m) for m in re.findall(r"Lost (\d+) events", text))
    spans = c["spans"]
    return {"rate": rate, "cpu": after - before, "spans": spans, "lost_events": 2 * n - 2 * spans,
            "reported_loss": lost_lines + c["unmatched_ends"] + c["unended_starts"],
            "bpftrace_lost_lines": lost_lines, "unmatched_ends": c["unmatched_ends"],
            "unended_starts": c["unended_starts"]}

results = {}
modes = ["untraced", "agent", "bpftrace", "floor"]
for level, (n, it) in levels.items():
    for r in range(rounds):
        order = modes[r % len(modes):] + modes[:r % len(modes)]
        for m in order:
            tag = f"{level}-{m}-{r}"
            if m == "untraced":
                res = run_untraced(n, it)
            elif m == "floor":
                res = run_floor(n, it, tag)
            elif m == "agent":
                res = run_agent(n, it, tag)
            else:
                res = run_bpftrace(n, it, tag)
            results.setdefault((level, m), []).append(res)
            print(f"{tag}: " + json.dumps({k: v for k, v in res.items() if k != "summary"}), file=sys.stderr, flush=True)

sink.kill()
json.dump({f"{k[0]}/{k[1]}": v for k, v in results.items()}, open(f"{out}/results.json", "w"), indent=1)

def med(level, m, key):
    return statistics.median(x[key] for x in results[(level, m)])

print(f"rounds={rounds} " + "; ".join(f"{level}: N={n} pairs, ITER={it}" for level, (n, it) in levels.items()))
print()
print("| load | tracer | pairs/s (median) | vs untraced (median of per-round ratios) | added per pair (µs) | tracer CPU ms per 1,000 spans | spans/pairs (median) | events lost (max over rounds) | loss reported (max) |")
print("|---|---|---|---|---|---|---|---|---|")
for level, (n, _) in levels.items():
    base = med(level, "untraced", "rate")
    print(f"| {level} | untraced | {base:,.0f} | 1.00x | - | - | - | - | - |")
    for m in ("agent", "bpftrace"):
        rate = med(level, m, "rate")
        # Each round's traced rate over the same round's untraced rate.
        ratio = statistics.median(t["rate"] / u["rate"] for t, u in
                                  zip(results[(level, m)], results[(level, "untraced")]))
        per_k = statistics.median(x["cpu"] / max(x["spans"], 1) * 1000 * 1000 for x in results[(level, m)])
        spans = med(level, m, "spans")
        lost = max(x["lost_events"] for x in results[(level, m)])
        reported = max(x["reported_loss"] for x in results[(level, m)])
        added = (1 / rate - 1 / base) * 1e6
        print(f"| {level} | {m} | {rate:,.0f} | {ratio:.2f}x | {added:.2f} | {per_k:.2f} | {spans:,.0f}/{n:,} | {lost:,} | {reported:,} |")
    rate = med(level, "floor", "rate")
    ratio = statistics.median(t["rate"] / u["rate"] for t, u in
                              zip(results[(level, "floor")], results[(level, "untraced")]))
    print(f"| {level} | floor: bpftrace, count() only | {rate:,.0f} | {ratio:.2f}x | {(1 / rate - 1 / base) * 1e6:.2f} | - | - | - | - |")
print()
for level in levels:
    # Per round: bpftrace's CPU per span over the agent's, then the median.
    ratios = [b["cpu"] / max(b["spans"], 1) / (a["cpu"] / max(a["spans"], 1))
              for a, b in zip(results[(level, "agent")], results[(level, "bpftrace")]) if a["cpu"] > 0]
    print(f"{level}: bpftrace + consumer use {statistics.median(ratios):.1f}x the agent's CPU per span "
          f"(median of per-round ratios, {min(ratios):.1f}x-{max(ratios):.1f}x)")
EOF
