#!/usr/bin/env python3
"""Counting uprobes (no BPF program) at file offsets of a binary, for one PID.

    scripts/count_uprobes.py BINARY PID SECONDS OFFSET...

Attaches a perf uprobe event at each OFFSET (hex, as the agent logs them at
-v: "attached at PATH +0x..."), waits SECONDS, prints each offset's hit count.
Used for BENCHMARKS.md: how many times each of the agent's sites fires per
request, and what the traps alone cost under load (the event costs the trap
and the kernel's emulation or single-step, like an empty BPF program).
Root only.
"""
import ctypes
import os
import struct
import sys
import time

PERF_ATTR_SIZE = 112  # PERF_ATTR_SIZE_VER5
SYS_PERF_EVENT_OPEN = 298  # x86_64
PERF_FLAG_FD_CLOEXEC = 8


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    binary, pid, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    offsets = [int(x, 16) for x in sys.argv[4:]]
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/sys/bus/event_source/devices/uprobe/type") as f:
        pmu = int(f.read())
    path = ctypes.create_string_buffer(binary.encode())
    fds = []
    for offset in offsets:
        # struct perf_event_attr: type @0, size @4, config1 (uprobe_path)
        # @56, config2 (probe_offset) @64; counting, enabled.
        attr = bytearray(PERF_ATTR_SIZE)
        struct.pack_into("I", attr, 0, pmu)
        struct.pack_into("I", attr, 4, PERF_ATTR_SIZE)
        struct.pack_into("Q", attr, 56, ctypes.addressof(path))
        struct.pack_into("Q", attr, 64, offset)
        buf = (ctypes.c_char * PERF_ATTR_SIZE).from_buffer(attr)
        fd = libc.syscall(SYS_PERF_EVENT_OPEN, buf, pid, -1, -1, PERF_FLAG_FD_CLOEXEC)
        if fd < 0:
            sys.exit(f"uprobe at {binary}+{offset:#x}: {os.strerror(ctypes.get_errno())}")
        fds.append(fd)
    time.sleep(seconds)
    for offset, fd in zip(offsets, fds):
        (count,) = struct.unpack("Q", os.read(fd, 8))
        print(f"{offset:#x} {count}")


if __name__ == "__main__":
    main()
