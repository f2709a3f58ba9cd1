#!/usr/bin/env python3
"""Regenerates the stored seed corpus of the USDT fuzz targets.

    agent/fuzz/make-seeds.py [BUILD_DIR]

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


def save(target, data, name=None):
    """Stores one seed, named by its SHA-1 (libFuzzer's naming)."""
    if isinstance(data, str):
        data = data.encode()
    assert len(data) <= 8192, f"{target}: a {len(data)}-byte seed is too big"
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


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="usdt-seeds-")
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
