#!/usr/bin/env python3
"""Regenerates the stored seed corpus of the USDT fuzz targets.

    agent/fuzz/make-seeds.py [--binary] [BUILD_DIR]

Builds the USDT fixture (agent/tests/fixtures/usdt: the Go program with its
C probes, its shared library, the plain C program) and a tiny static ELF
file into BUILD_DIR (a temporary directory by default; needs gcc, go and
systemtap-sdt-dev), and writes:

- corpus/usdt_notes/: for each fixture binary, its `.note.stapsdt` section
  behind the target's layout header (mode byte 0x01, 32 bytes of segment and
  `.stapsdt.base` addresses taken from the binary), once more with the file
  "prelinked" 0x10000 higher (so the `.stapsdt.base` adjustment moves every
  probe), and the tiny ELF file whole (mode byte 0x00, under 2 KB);
- corpus/usdt_args/: every argument string of those notes, plus forms the
  fixture does not produce;
- corpus/usdt_record/: valid `usdt_probe` records (the variable-length layout of
  agent-common's UsdtRecord);
- corpus/usdt_mapping/: the built-in mapping and the mappings of the tests.

With `--binary` it instead builds a tiny Go program and a C program with
debug info (needs go and gcc only) and writes the seeds of the other
targets:

- corpus/buildinfo/: the Go program's `.go.buildinfo` (Go 1.18+ inline
  strings), the same inside a data segment, and its strings in the Go 1.17
  pointer format;
- corpus/pclntab/: compact tables (Go 1.16, 1.18 and 1.20 layouts) of the
  program's first functions, names and entries as its `.gopclntab` has
  them, behind the 8-byte fallback text start;
- corpus/dwarf/: the C program's DWARF 4 and 5 sections, the Go program's
  `.debug_info` units up to ~120 KB, and compressed sections;
- corpus/http_record/, corpus/flight_record/, corpus/syscall_record/:
  record sequences in the agent-common layouts;
- corpus/traceparent/, corpus/tracestate/: header values.

Argument strings are named by content hash, as libFuzzer names inputs, the
rest by what they are. Only small files are written: no binary over a few KB.
"""

import hashlib
import os
import re
import struct
import subprocess
import sys
import tempfile

FUZZ = os.path.dirname(os.path.abspath(__file__))
AGENT = os.path.dirname(FUZZ)
FIXTURES = os.path.join(AGENT, "tests", "fixtures")

TINY_C = r"""
/* A static ELF file without libc: two probes, one guarded by a semaphore,
 * arguments in registers, on the stack, constant and %rip-relative. */
#define _SDT_HAS_SEMAPHORES 1
#include <sys/sdt.h>
unsigned short tiny_begin_semaphore __attribute__((section(".probes")));
unsigned short tiny_end_semaphore __attribute__((section(".probes")));
unsigned short tiny_count_semaphore __attribute__((section(".probes")));
long tiny_counter;
static const char tiny_name[] = "tiny";
void _start(void) {
    STAP_PROBE1(tiny, count, tiny_counter);
    long v = tiny_counter + 1;
    STAP_PROBE3(tiny, begin, v, tiny_name, tiny_counter);
    STAP_PROBE2(tiny, end, v, -7);
    __asm__ volatile("mov $60, %eax\n\txor %edi, %edi\n\tsyscall");
    for (;;) {}
}
"""


def save(target, data, name=None, limit=8192):
    """Stores one seed, named by its SHA-1 (libFuzzer's naming)."""
    if isinstance(data, str):
        data = data.encode()
    assert len(data) <= limit, f"{target}: a {len(data)}-byte seed is too big"
    out = os.path.join(FUZZ, "corpus", target)
    os.makedirs(out, exist_ok=True)
    name = name or hashlib.sha1(data).hexdigest()
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)


class Elf:
    """Just enough of a little-endian ELF64 file."""

    def __init__(self, path):
        with open(path, "rb") as f:
            self.data = f.read()
        d = self.data
        assert d[:4] == b"\x7fELF" and d[4] == 2 and d[5] == 1, path
        phoff, shoff = struct.unpack_from("<QQ", d, 0x20)
        phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from("<HHHHH", d, 0x36)
        self.segments = []
        for i in range(phnum):
            p_type, flags, offset, vaddr, _, filesz, _, _ = struct.unpack_from(
                "<IIQQQQQQ", d, phoff + i * phentsize
            )
            self.segments.append((p_type, flags, offset, vaddr, filesz))
        raw = []
        for i in range(shnum):
            name, sh_type, _, addr, offset, size = struct.unpack_from(
                "<IIQQQQ", d, shoff + i * shentsize
            )
            raw.append((name, sh_type, addr, offset, size))
        strtab = raw[shstrndx]
        self.sections = {}
        for name, sh_type, addr, offset, size in raw:
            start = strtab[3] + name
            end = d.index(b"\0", start)
            self.sections[d[start:end].decode()] = (sh_type, addr, offset, size)

    def section(self, name):
        _, _, offset, size = self.sections[name]
        return self.data[offset : offset + size]

    def layout(self, shift=0):
        """The usdt_notes layout header: text vaddr, text size, data size,
        .stapsdt.base address, data vaddr; the text segment and
        .stapsdt.base moved by `shift` (semaphores do not move with them)."""
        loads = [s for s in self.segments if s[0] == 1]
        text = next(s for s in loads if s[1] & 1)
        data = next((s for s in loads if s[1] & 2), text)
        base = self.sections.get(".stapsdt.base", (0, 0, 0, 0))[1]
        return struct.pack(
            "<QIIQQ",
            text[3] + shift,
            min(text[4], 0xFFFFFFFF),
            min(data[4], 0xFFFFFFFF),
            base + shift if base else 0,
            data[3],
        )

    def arg_strings(self):
        notes, out, pos = self.section(".note.stapsdt"), [], 0
        while pos + 12 <= len(notes):
            namesz, descsz, _ = struct.unpack_from("<III", notes, pos)
            desc = pos + 12 + ((namesz + 3) & ~3)
            strings = notes[desc + 24 : desc + descsz].split(b"\0")
            out.append(strings[2].decode())
            pos = desc + ((descsz + 3) & ~3)
        return out


def run(*cmd, cwd=None, env=None):
    subprocess.run(cmd, cwd=cwd, env=env, check=True)


def build(out):
    usdt = os.path.join(FIXTURES, "usdt")
    lib = os.path.join(out, "libfix.so")
    run("gcc", "-shared", "-fPIC", "-O2", "-g", "-o", lib,
        os.path.join(usdt, "lib", "fixlib.c"), os.path.join(usdt, "lib", "fixlib_guarded.c"))
    exe = os.path.join(out, "usdt")
    run("go", "build", "-o", exe, "./usdt", cwd=FIXTURES,
        env=dict(os.environ, CGO_ENABLED="1"))
    cprog = os.path.join(out, "cprog")
    run("gcc", "-O2", "-o", cprog, os.path.join(usdt, "cprog", "cprog.c"))
    src = os.path.join(out, "tiny.c")
    with open(src, "w") as f:
        f.write(TINY_C)
    tiny = os.path.join(out, "tiny")
    run("gcc", "-Os", "-g0", "-static", "-nostdlib", "-fno-asynchronous-unwind-tables",
        "-fno-pie", "-no-pie", "-Wl,--build-id=none", "-Wl,-N", "-Wl,-z,norelro", "-Wl,--no-warn-rwx-segments",
        "-o", tiny, src)
    # Keeps .symtab: the %rip-relative argument resolves through it.
    run("objcopy", "-R", ".comment", "-R", ".note.gnu.property", tiny)
    return [lib, exe, cprog, tiny], tiny


def record(args, site=0, tid=1234, goid=0, ktime=1_000_000_000, failed=0, truncated=0):
    """A usdt_probe record: `args` are ints or (pointer, bytes) strings. The
    head, the values (0 for a string), then the strings back to back."""
    values, lens, strings, mask = [], [], b"", 0
    for i, a in enumerate(args):
        if isinstance(a, tuple):
            values.append(0)
            lens.append(len(a[1]))
            strings += a[1]
            mask |= 1 << i
        else:
            values.append(a & 0xFFFFFFFFFFFFFFFF)
            lens.append(0)
    pad = 12 - len(args)
    rec = struct.pack("<IIIIQQHH", 3, 1, tid, site, goid, ktime, len(args), len(strings))
    rec += struct.pack("<HHHH", failed, truncated, mask, 0)
    rec += struct.pack("<12B", *(lens + [0] * pad))
    assert len(rec) == 56
    rec += struct.pack(f"<{len(values)}Q", *values)
    return rec + strings


def toml_consts(path):
    with open(path) as f:
        return re.findall(r'(?s)const [A-Z_]+: &str = r#"(.*?)"#;', f.read())

TINY_GO = """package main

import (
	"fmt"
	"net/http"
)

type pair struct {
	A int64
	B string
	C [3]uint16
}

func main() {
	p := pair{A: 1, B: "x"}
	fmt.Println(p, http.StatusOK)
}
"""

DWARF_C = r"""
#include <stdint.h>
struct inner { uint16_t a; uint8_t b[3]; };
typedef struct inner inner_t;
struct outer {
    int64_t id;
    const char *name;
    inner_t in;
    struct outer *next;
    double ratio;
    uint32_t flags[4];
};
struct outer g_outer;
int main(void) { return (int)g_outer.id; }
"""


def uvarint(data, pos):
    value, shift = 0, 0
    while True:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def pclntab_seed(elf, text_start, version, count, header_text):
    """A compact table of the first `count` functions of `elf`'s Go 1.20+
    `.gopclntab`, in `version`'s layout ("1.16", "1.18", "1.20")."""
    tab = elf.section(".gopclntab")
    magic, _, _, ptr = struct.unpack_from("<IHBB", tab, 0)
    assert magic == 0xFFFFFFF1 and ptr == 8, hex(magic)
    nfunc, _, _, names_at, _, _, _, pcln = struct.unpack_from("<8Q", tab, 8)
    funcs = []
    for i in range(min(count, nfunc) + 1):
        entry, funcoff = struct.unpack_from("<II", tab, pcln + 8 * i)
        if i == min(count, nfunc):
            end = entry
            break
        _, name_off = struct.unpack_from("<Ii", tab, pcln + funcoff)
        start = names_at + name_off
        funcs.append((tab[start : tab.index(b"\0", start)], entry))
    names, offs = b"", []
    for name, _ in funcs:
        offs.append(len(names))
        names += name + b"\0"
    old = version == "1.16"
    words = 7 if old else 8
    header = 8 + 8 * words
    pcln_at = header + len(names)
    field = 8 if old else 4
    functab_len = (len(funcs) * 2 + 1) * field
    rec = 12 if old else 8
    put = (lambda v: struct.pack("<Q", v)) if old else (lambda v: struct.pack("<I", v))
    base = text_start if old else 0
    magic = {"1.16": 0xFFFFFFFA, "1.18": 0xFFFFFFF0, "1.20": 0xFFFFFFF1}[version]
    out = struct.pack("<IHBB", magic, 0, 1, 8) + struct.pack("<QQ", len(funcs), 0)
    if not old:
        out += struct.pack("<Q", header_text)
    out += struct.pack("<5Q", header, header, header, header, pcln_at) + names
    for i, (_, entry) in enumerate(funcs):
        out += put(base + entry) + put(functab_len + i * rec)
    out += put(base + end)
    for i, (_, entry) in enumerate(funcs):
        out += (struct.pack("<Q", base + entry) if old else struct.pack("<I", entry))
        out += struct.pack("<I", offs[i])
    return out


def symbol(path, name):
    out = subprocess.run(["nm", path], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == name:
            return int(parts[0], 16)
    raise KeyError(name)


def dwarf_seed(elf, info_limit=None):
    info = elf.section(".debug_info")
    if info_limit is not None:
        # Whole units only, up to the limit.
        end = pos = 0
        while pos + 4 <= len(info):
            size = struct.unpack_from("<I", info, pos)[0] + 4
            if pos + size > info_limit:
                break
            pos += size
            end = pos
        info = info[:end]
    abbrev = elf.section(".debug_abbrev")
    strs = elf.section(".debug_str") if ".debug_str" in elf.sections else b""
    return b"\x00" + struct.pack("<II", len(info), len(abbrev)) + info + abbrev + strs


def header(kind, goid=42, ktime=1_000_000, target=0, tid=1234, site=0):
    return struct.pack("<IIIIQQ", kind, target, tid, site, goid, ktime)


def framed(records):
    """Records behind their u16 lengths (for http_record: shift 0)."""
    return b"".join(struct.pack("<H", len(r)) + r for r in records)


def fixed(text, cap):
    text = text.encode()[:cap]
    return text + b"\0" * (cap - len(text))


def http_start(response, method, uri, ktime, goid=42):
    rec = header(1, goid, ktime) + struct.pack("<QQqBBHIIIII", 0xC000100000, response, -1, 1, 1, 0,
                                               0x3F, len(method), len(uri), 14, 15)
    rec += fixed(method, 16) + fixed(uri, 256) + fixed("localhost:8080", 128)
    return rec + fixed("127.0.0.1:50000", 64)


def http_end(response, status, pattern, ktime):
    rec = header(2, 0, ktime) + struct.pack("<QqqII", response, status, 12, 3, len(pattern))
    return rec + fixed(pattern, 128)


def http_value(kind, response, value, cap, ktime):
    return header(kind, 0, ktime) + struct.pack("<QII", response, len(value), 0) + fixed(value, cap)


def flight_records(dump_id, data, chunk=256, returned=None, skip=()):
    recs = [header(4, 7, dump_id, site=1) + struct.pack("<5Q", dump_id, 0xC000200000, 0x77, 0xC000300000, 0)]
    seq = 0
    for off in range(0, len(data), chunk):
        part = data[off : off + chunk]
        if seq not in skip:
            recs.append(header(5, 7, dump_id + seq + 1, site=1)
                        + struct.pack("<QQIIII", dump_id, off, seq, len(part), 0, 0) + part)
        seq += 1
    n = len(data) if returned is None else returned
    recs.append(header(6, 7, dump_id + 1000, site=1)
                + struct.pack("<QqQQQQIIII", dump_id, n, 0, 0, len(data), 0, seq, 1, 0, 0))
    return recs


def syscall(nr, ret, enter, ktime, tgid=1, tid=None, flags=0, arg0=0, goid=0):
    head = header(41, goid=goid, ktime=ktime, tid=tid or tgid)
    return head + struct.pack("<IIIIQqQ", tgid, nr, flags, 0, enter, ret, arg0)


def syscall_seed_launch():
    """The root process (pid 1): a failed openat, a write, exit_group(5)."""
    return framed([
        syscall(257, -2, 1_000, 2_000),
        syscall(1, 4, 3_000, 4_000),
        syscall(231, 0, 5_000, 5_000, flags=1, arg0=5),
        header(43, goid=0, ktime=6_000, tid=1),
    ])


def syscall_seed_fork():
    """Pid 1 forks pid 2, which writes and exits 3; a call on a goroutine."""
    return framed([
        syscall(56, 2, 1_000, 2_000),
        header(42, goid=0, ktime=1_500, tid=2) + struct.pack("<II", 1, 2),
        syscall(1, 6, 2_000, 2_500, tgid=2),
        syscall(231, 0, 3_000, 3_000, tgid=2, flags=1, arg0=3),
        header(43, goid=0, ktime=3_500, tid=2),
        syscall(74, 0, 4_000, 9_000, goid=7, tid=5),
    ])


def binary_seeds(out):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "main.go"), "w") as f:
        f.write(TINY_GO)
    with open(os.path.join(out, "go.mod"), "w") as f:
        f.write("module example.com/tiny\n\ngo 1.22\n")
    exe = os.path.join(out, "tiny-go")
    run("go", "build", "-ldflags=-compressdwarf=false", "-o", exe, ".", cwd=out,
        env=dict(os.environ, CGO_ENABLED="0"))
    go = Elf(exe)

    # buildinfo: the section; inside a data segment; the Go 1.17 format.
    section = go.section(".go.buildinfo")
    save("buildinfo", section, "go-section")
    save("buildinfo", bytes(range(48)) + section + b"\0" * 64, "go-in-data")
    version_len, pos = uvarint(section, 32)
    version = section[pos : pos + version_len]
    modinfo_len, pos = uvarint(section, pos + version_len)
    modinfo = section[pos : pos + modinfo_len]
    base = 0x4D0000  # the target's mapping
    blob = b"\xff Go buildinf:" + bytes([8, 0]) + struct.pack("<QQ", base + 32, base + 48)
    blob += struct.pack("<QQ", base + 64, len(version))
    blob += struct.pack("<QQ", base + 64 + len(version), len(modinfo)) + version + modinfo
    save("buildinfo", blob, "go117-pointers")

    # pclntab
    text = symbol(exe, "runtime.text")
    save("pclntab", struct.pack("<Q", text) + pclntab_seed(go, text, "1.20", 48, 0), "go120-text-fallback")
    save("pclntab", struct.pack("<Q", 0) + pclntab_seed(go, text, "1.18", 24, text), "go118")
    save("pclntab", struct.pack("<Q", 0) + pclntab_seed(go, text, "1.16", 24, 0), "go116")

    # dwarf
    src = os.path.join(out, "dwarf.c")
    with open(src, "w") as f:
        f.write(DWARF_C)
    for v in (4, 5):
        cexe = os.path.join(out, f"dwarf{v}")
        run("gcc", f"-gdwarf-{v}", "-O0", "-o", cexe, src)
        save("dwarf", dwarf_seed(Elf(cexe)), f"c-dwarf{v}", limit=16384)
    save("dwarf", dwarf_seed(go, 120_000), "go-units", limit=200_000)
    import zlib
    abbrev = Elf(os.path.join(out, "dwarf5")).section(".debug_abbrev")
    body = zlib.compress(abbrev)
    save("dwarf", b"\x01" + struct.pack("<IIQQ", 1, 0, len(abbrev), 1) + body, "elf-compressed")
    save("dwarf", b"\x03" + b"ZLIB" + struct.pack(">Q", len(abbrev)) + body, "zdebug")

    # http_record
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    save("http_record", framed([
        http_start(0xC000500000, "GET", "/api/items?id=42&token=s3cret", 1_000_000),
        http_value(7, 0xC000500000, tp, 56, 1_000_100),
        http_value(8, 0xC000500000, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7", 512, 1_000_200),
        http_end(0xC000500000, 200, "GET /api/items", 2_000_000),
    ]), "request-with-parent", limit=16384)
    save("http_record", framed([
        http_start(0xC000600000, "POST", "/upload", 1_000_000),
        http_start(0xC000700000, "BREW", "*", 1_100_000, goid=43),
        http_end(0xC000700000, 418, "", 1_200_000),
        header(3) + b"\0" * 24,
        b"\x01\0\0",
    ]), "two-requests-one-open", limit=16384)

    # flight_record
    dump = bytes(range(256)) * 3 + b"go 1.26 trace\0"
    save("flight_record", framed(flight_records(0x1234, dump)), "complete-dump")
    save("flight_record", framed(flight_records(0x2000, dump, chunk=100, skip=(2,))
                                 + flight_records(0x3000, dump[:300], returned=200)),
         "gap-and-short-write")

    # syscall_record
    save("syscall_record", syscall_seed_launch(), "launch-openat-write-exit")
    save("syscall_record", syscall_seed_fork(), "fork-and-goroutine")

    # traceparent, tracestate: cut byte, then the value kept.
    future = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds"
    save("traceparent", b"\x00" + tp.encode(), "v00")
    save("traceparent", b"\x00" + tp[:-2].encode() + b"00", "v00-not-sampled")
    save("traceparent", b"\x00" + future.encode(), "future")
    save("traceparent", bytes([len(future) - 56]) + future[:56].encode(), "future-cut")
    save("tracestate", b"\x00congo=t61rcWkgMzE,rojo=00f067aa0ba902b7", "two")
    save("tracestate", b"\x00 ot=th:8 ,, vendor@sys=x\t", "whitespace-tenant")
    save("tracestate", b"\x05a=1,b=2,ccc=3", "cut")
    save("tracestate", b"\x00" + ",".join(f"k{i}=v{i}" for i in range(34)).encode(), "34-members")
    print(f"seeds written; the programs left in {out}")


def main():
    argv = sys.argv[1:]
    if argv[:1] == ["--binary"]:
        binary_seeds(argv[1] if len(argv) > 1 else tempfile.mkdtemp(prefix="binary-seeds-"))
        return
    out = argv[0] if argv else tempfile.mkdtemp(prefix="usdt-seeds-")
    os.makedirs(out, exist_ok=True)
    binaries, tiny = build(out)

    args = set()
    for path in binaries:
        elf = Elf(path)
        notes = elf.section(".note.stapsdt")
        name = os.path.basename(path)
        save("usdt_notes", b"\x01" + elf.layout() + notes, f"{name}-notes")
        save("usdt_notes", b"\x01" + elf.layout(0x10000) + notes, f"{name}-notes-prelinked")
        args.update(elf.arg_strings())
    with open(tiny, "rb") as f:
        save("usdt_notes", b"\x00" + f.read(), "tiny-elf")

    args.update([
        "-4@%edi 8@-16(%rbp,%rax,8)",
        "%rdi %rsi",
        "-4@%fs:8",
        "8@(,%rax,8)",
        "4@counter-0x10(%rip) 8@$0xffffffffffffffff -8@$-9223372036854775808",
        "-1@%R8B 2@%r9w 1@%sil 1@%dh",
        "8@( %rsp , %rcx , 4 )",
        "",
    ])
    for a in args:
        save("usdt_args", a)

    save("usdt_record", record([]), "no-args")
    save("usdt_record", record([5, -7, 1234567890123], site=3), "constants")
    save("usdt_record", record([(0x7F0000001000, b"req-1"), (0x7F0000002000, b"GET"),
                                (0x7F0000003000, b"/api/items?id=42")], site=7), "http-start")
    save("usdt_record", record([(0x7F0000001000, b"req-1"), 503, 1500], site=8), "http-end")
    save("usdt_record", record(list(range(12)), failed=0b100000000001), "twelve-some-failed")
    save("usdt_record", record([(0x1000, b"x" * 128), (0x2000, b"y" * 128), (0x3000, b"z" * 88)],
                               truncated=0b100), "strings-full-truncated")

    with open(os.path.join(AGENT, "src", "usdt", "mapping.rs")) as f:
        builtin = re.search(r'(?s)pub const BUILTIN: &str = r#"(.*?)"#;', f.read()).group(1)
    save("usdt_mapping", builtin, "builtin.toml")
    for test in ["usdt_mapping.rs", "usdt_spans.rs"]:
        for i, text in enumerate(toml_consts(os.path.join(AGENT, "tests", test))):
            save("usdt_mapping", text, f"{test[:-3]}-{i}.toml")
    print(f"seeds written; fixture binaries left in {out}")


if __name__ == "__main__":
    main()
