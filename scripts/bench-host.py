#!/usr/bin/env python3
"""Host mode with many targets: time from exec to probes attached, and the
agent's RSS, with the shared eBPF object (the default) and with an object,
ring and pipeline per target (`--object-per-target`, the design before it),
measured in the same run, alternating.

For each configuration and each count N: the agent is started with
`--exe NAME` (new processes held at exec until attached), then N copies of
the Go HTTP fixture are started one after another, each once the previous
one is attached. Exec-to-attached is the time from just before the fork to
the agent's `attached to PID N` line (the process is stopped meanwhile).
Once all N are attached, each is sent one request, and after 2 s the
agent's VmRSS and VmHWM are read from /proc. Spans go to a JSONL file.

    sudo scripts/bench-host.py [--agent target/release/agent] [--counts 1,10,50] [--rounds 1]

With --burst, the N programs are started at once (each held at exec until
attached), and exec-to-attached is each one's time until its own line.

With --binary PATH (repeatable; ARGS after a comma: --binary 'jaeger,version'),
exec-to-attached of that Go binary instead: it is copied under a name of
its own, the agent (shared object) watches for it, and it is started
--starts times, one after another, each stopped once attached. Per binary:
its first start (which includes the binary's analysis) and the median and
p99 of the later ones (the analysis kept), beside the fixture's in the same
run.

Run as root. Prints one line per run and a summary table (medians).
"""

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {
    "object per target": ["--object-per-target"],
    "shared object": [],
}


class Agent:
    """The agent, its stderr lines with the time each was read."""

    def __init__(self, cmd):
        self.lines = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        log = open(os.environ["BENCH_AGENT_LOG"], "w") if os.environ.get("BENCH_AGENT_LOG") else None
        for line in self.proc.stderr:
            if log:
                log.write(line)
                log.flush()
            with self.cond:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self.cond.notify_all()

    def wait_for(self, needle, timeout=120):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for at, line in self.lines:
                    if needle in line:
                        return at, line
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    tail = "\n".join(l for _, l in self.lines[-20:])
                    sys.exit(f"agent did not print {needle!r}:\n{tail}")
                self.cond.wait(min(left, 0.2))

    def memory_kb(self):
        values = {}
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0])
        return values["VmRSS"], values["VmHWM"]

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def build_fixture(out):
    subprocess.run(
        ["go", "build", "-o", out, "./httpserver"],
        cwd=os.path.join(ROOT, "agent", "tests", "fixtures"),
        env={**os.environ, "CGO_ENABLED": "0"},
        check=True,
    )


def start_server(binary):
    proc = subprocess.Popen(
        [binary], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    return proc


def server_address(proc):
    for line in proc.stdout:
        if line.startswith("listening on "):
            addr = line.split()[-1]
            # Keep draining its stdout.
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return addr
    raise RuntimeError("the fixture exited before listening")


def run(agent_bin, binary, name, config, count, out_dir, burst):
    jsonl = os.path.join(out_dir, "spans.jsonl")
    agent = Agent(
        [agent_bin, "--exe", name, "--output", f"jsonl={jsonl}", *CONFIGS[config]]
    )
    agent.wait_for("watching for new processes")
    latencies = []
    servers = []
    try:
        if burst:
            # All at once: each held at exec until its turn is attached.
            starts = []
            for _ in range(count):
                starts.append(time.monotonic())
                servers.append(start_server(binary))
            for started, proc in zip(starts, servers):
                at, _ = agent.wait_for(f"attached to PID {proc.pid} ")
                latencies.append(at - started)
        for _ in range(0 if burst else count):
            started = time.monotonic()
            proc = start_server(binary)
            servers.append(proc)
            at, _ = agent.wait_for(f"attached to PID {proc.pid} ")
            latencies.append(at - started)
        for proc in servers:
            addr = server_address(proc)
            urllib.request.urlopen(f"http://{addr}/items/bench", timeout=10).read()
        time.sleep(2)
        rss, hwm = agent.memory_kb()
    finally:
        for proc in servers:
            proc.terminate()
        for proc in servers:
            proc.wait()
        agent.stop()
    return latencies, rss, hwm


def run_binaries(agent_bin, binaries, starts, out_dir):
    """Exec to attached for each (label, path, args), alternating binaries
    start by start so that each sees the same machine."""
    copies = []
    for index, (label, path, args) in enumerate(binaries):
        name = f"bx{index}{os.getpid()}"[:15]
        copy = os.path.join(out_dir, name)
        shutil.copyfile(path, copy)
        os.chmod(copy, 0o755)
        copies.append((label, name, copy, args))
    latencies = {label: [] for label, _, _, _ in copies}
    jsonl = os.path.join(out_dir, "spans.jsonl")
    exes = [arg for _, name, _, _ in copies for arg in ("--exe", name)]
    agent = Agent([agent_bin, *exes, "--output", f"jsonl={jsonl}"])
    agent.wait_for("watching for new processes")
    try:
        for _ in range(starts):
            for label, _, copy, args in copies:
                started = time.monotonic()
                proc = subprocess.Popen(
                    [copy, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                at, _ = agent.wait_for(f"attached to PID {proc.pid} ")
                latencies[label].append(at - started)
                # Only the attach is measured: a server is stopped at once.
                proc.terminate()
                proc.wait(timeout=60)
                agent.wait_for(f"PID {proc.pid} exited")
    finally:
        agent.stop()
    return latencies


def main_binaries(args):
    out_dir = tempfile.mkdtemp(prefix="bench-host-")
    try:
        fixture = os.path.join(out_dir, "fixture")
        build_fixture(fixture)
        binaries = [("the HTTP fixture", fixture, [])]
        for spec in args.binary:
            path, *rest = spec.split(",")
            binaries.append((os.path.basename(path), path, rest))
        sizes = {label: os.path.getsize(path) for label, path, _ in binaries}
        for label, path, _ in binaries:
            print(f"{label}: {path}, {sizes[label] / 1e6:.1f} MB", flush=True)
        latencies = run_binaries(args.agent, binaries, args.starts, out_dir)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    print()
    # The first start of each binary includes its analysis (the agent keeps
    # it, by device, inode and build id, for the starts after it).
    print(
        "| binary | size | first start (analysis included) | later starts, median | p99 |"
        " median against the fixture's |"
    )
    print("|---|---|---|---|---|---|")
    base = statistics.median(latencies[binaries[0][0]][1:])
    for label, path, _ in binaries:
        first, later = latencies[label][0], sorted(latencies[label][1:])
        p99 = later[min(len(later) - 1, int(len(later) * 0.99))]
        median = statistics.median(later)
        print(
            f"| {label} | {sizes[label] / 1e6:.1f} MB | {first * 1000:.0f} ms"
            f" | {median * 1000:.0f} ms | {p99 * 1000:.0f} ms | {median / base:.2f}x |"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agent", default=os.path.join(ROOT, "target", "release", "agent"))
    parser.add_argument("--counts", default="1,10,50")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--burst",
        action="store_true",
        help="start the N programs at once instead of one after another",
    )
    parser.add_argument(
        "--binary",
        action="append",
        default=[],
        help="exec to attached of this Go binary (ARGS after commas), not the N-target runs",
    )
    parser.add_argument("--starts", type=int, default=20, help="starts per binary (at least 2)")
    args = parser.parse_args()
    if args.binary:
        return main_binaries(args)
    counts = [int(c) for c in args.counts.split(",")]
    out_dir = tempfile.mkdtemp(prefix="bench-host-")
    name = f"bh{os.getpid()}"[:15]
    binary = os.path.join(out_dir, name)
    build_fixture(binary)
    print(f"fixture {binary}: {os.path.getsize(binary) / 1e6:.1f} MB", flush=True)
    results = {}
    try:
        for round_ in range(args.rounds):
            for count in counts:
                for config in CONFIGS:
                    latencies, rss, hwm = run(
                        args.agent, binary, name, config, count, out_dir, args.burst
                    )
                    print(
                        f"round {round_ + 1} {config:>17} N={count:>2}: exec to attached"
                        f" median {statistics.median(latencies) * 1000:.0f} ms,"
                        f" max {max(latencies) * 1000:.0f} ms; RSS {rss / 1024:.1f} MB,"
                        f" peak {hwm / 1024:.1f} MB",
                        flush=True,
                    )
                    entry = results.setdefault((config, count), ([], [], []))
                    entry[0].extend(latencies)
                    entry[1].append(rss)
                    entry[2].append(hwm)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    print()
    print("| targets | configuration | exec to attached, median (p90) | agent RSS (median) | peak RSS (median) |")
    print("|---|---|---|---|---|")
    for count in counts:
        for config in CONFIGS:
            lat, rss, hwm = results[(config, count)]
            lat = sorted(lat)
            p90 = lat[min(len(lat) - 1, int(len(lat) * 0.9))]
            print(
                f"| {count} | {config} | {statistics.median(lat) * 1000:.0f} ms"
                f" ({p90 * 1000:.0f} ms) | {statistics.median(rss) / 1024:.1f} MB"
                f" | {statistics.median(hwm) / 1024:.1f} MB |"
            )
    for count in counts:
        per, shared = (results[(c, count)] for c in CONFIGS)
        print(
            f"N={count}: shared/per-target RSS {statistics.median(shared[1]) / statistics.median(per[1]):.2f}x,"
            f" exec to attached {statistics.median(shared[0]) / statistics.median(per[0]):.2f}x"
        )


if __name__ == "__main__":
    main()
