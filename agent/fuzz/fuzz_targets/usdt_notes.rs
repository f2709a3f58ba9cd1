//! Fuzzes USDT discovery from ELF bytes (`usdt::probes_in_elf`): the
//! `.note.stapsdt` notes, the `.stapsdt.base` adjustment, the probe and
//! semaphore file offsets, the argument strings and the `%rip`-relative
//! symbols. The first input byte picks how the rest is read:
//!
//! - even: the rest is a whole ELF image. Discovery never panics, errors
//!   point inside the image, and every probe found is self-consistent.
//! - odd: the rest is 32 bytes of layout (text and data segment addresses
//!   and sizes, the `.stapsdt.base` address) then the raw contents of a
//!   `.note.stapsdt` section, which the target wraps in a well-formed
//!   x86-64 ELF image (with a symbol table). An independent walk of the
//!   notes then predicts exactly which probes discovery returns (addresses
//!   moved by the base adjustment, file offsets, semaphores, parsed
//!   arguments, resolved symbols), or that it fails.
//!
//! Seeds of the second kind hold the note sections of the USDT fixture's
//! binaries, written by `agent/fuzz/make-seeds.py`.
#![no_main]

use agent::usdt;

use libfuzzer_sys::fuzz_target;
use usdt::{
    UsdtError, UsdtProbe,
    args::{ArgLocation, parse_args},
    probes_in_elf,
};

/// Symbols of the synthetic image's `.symtab` (names from the fixture's
/// `-8@fix_pair(%rip) 4@fix_pair+8(%rip)`).
const SYMBOLS: &[(&str, u64)] = &[("fix_pair", 0x5000), ("fix_counter", 0x6010)];

/// Checks that hold for any image.
fn check_probes(image: &[u8], result: &Result<Vec<UsdtProbe>, UsdtError>) {
    let probes = match result {
        Ok(probes) => probes,
        Err(UsdtError::Note { offset, .. }) => {
            assert!(*offset <= image.len() as u64, "error offset {offset:#x}");
            return;
        }
        Err(_) => return,
    };
    for p in probes {
        for s in [&p.provider, &p.name, &p.arg_text] {
            assert!(!s.contains('\0'));
        }
        if let Some(sema) = p.semaphore {
            assert_ne!(sema.vaddr, 0, "a zero semaphore address means none");
        }
        match &p.args_error {
            Some(_) => assert!(p.args.is_empty()),
            None => {
                // The arguments are those of the note's string, with only
                // the symbols' addresses filled in.
                let mut parsed = parse_args(&p.arg_text).expect("arguments parse again");
                for (a, b) in parsed.iter_mut().zip(&p.args) {
                    if let (
                        ArgLocation::Symbol { address, .. },
                        ArgLocation::Symbol { address: found, .. },
                    ) = (&mut a.location, &b.location)
                    {
                        *address = *found;
                    }
                }
                assert_eq!(parsed, p.args);
            }
        }
    }
}

fn u64_at(data: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(data[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(data: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"))
}

/// Where the synthetic image's segments and `.stapsdt.base` are.
struct Layout {
    text_vaddr: u64,
    text_size: u64,
    data_vaddr: u64,
    data_size: u64,
    base: Option<u64>,
}

/// File offset of the data segment's start (the text segment's is 0).
const DATA_OFFSET: u64 = 0x200;

impl Layout {
    fn parse(bytes: &[u8; 32]) -> Self {
        let base = u64_at(bytes, 16);
        Self {
            text_vaddr: u64_at(bytes, 0),
            // Sizes stay below 4 GiB, vaddr + size may still overflow.
            text_size: u64::from(u32_at(bytes, 8)),
            data_size: u64::from(u32_at(bytes, 12)),
            base: (base != 0).then_some(base),
            data_vaddr: u64_at(bytes, 24),
        }
    }

    /// The file offset of `vaddr` through the first PT_LOAD (executable
    /// only, or any) that holds it.
    fn file_offset(&self, vaddr: u64, executable: bool) -> Option<u64> {
        let segments = [
            (self.text_vaddr, self.text_size, 0, true),
            (self.data_vaddr, self.data_size, DATA_OFFSET, false),
        ];
        segments.iter().find_map(|&(start, size, offset, x)| {
            if executable && !x {
                return None;
            }
            let end = start.checked_add(size)?;
            if !(start..end).contains(&vaddr) {
                return None;
            }
            (vaddr - start).checked_add(offset)
        })
    }
}

fn push_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn push_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn push_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// A section header: name offset, type, flags, addr, offset, size, link,
/// info, alignment, entry size.
#[allow(clippy::too_many_arguments, reason = "one field each")]
fn section(
    out: &mut Vec<u8>,
    name: u32,
    ty: u32,
    addr: u64,
    offset: u64,
    size: u64,
    link: u32,
    align: u64,
    entsize: u64,
) {
    push_u32(out, name);
    push_u32(out, ty);
    push_u64(out, 0);
    push_u64(out, addr);
    push_u64(out, offset);
    push_u64(out, size);
    push_u32(out, link);
    push_u32(out, u32::from(entsize != 0)); // sh_info: first global symbol
    push_u64(out, align);
    push_u64(out, entsize);
}

/// A little-endian x86-64 ELF image with the text and data PT_LOADs of
/// `layout`, `notes` as its `.note.stapsdt`, `.stapsdt.base` when the
/// layout has one, and a `.symtab` with [`SYMBOLS`].
fn build_image(layout: &Layout, notes: &[u8]) -> Vec<u8> {
    const SHSTRTAB: &[u8] = b"\0.note.stapsdt\0.stapsdt.base\0.shstrtab\0.symtab\0.strtab\0";
    let mut strtab = vec![0u8];
    let mut name_offsets = Vec::new();
    for (name, _) in SYMBOLS {
        name_offsets.push(strtab.len() as u32);
        strtab.extend_from_slice(name.as_bytes());
        strtab.push(0);
    }

    let mut out = Vec::new();
    // ELF header.
    out.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    push_u16(&mut out, 3); // ET_DYN
    push_u16(&mut out, 62); // EM_X86_64
    push_u32(&mut out, 1);
    push_u64(&mut out, 0); // entry
    push_u64(&mut out, 64); // phoff
    let shoff_at = out.len();
    push_u64(&mut out, 0); // shoff, patched below
    push_u32(&mut out, 0);
    push_u16(&mut out, 64);
    push_u16(&mut out, 56);
    push_u16(&mut out, 2); // phnum
    push_u16(&mut out, 64);
    let shnum_at = out.len();
    push_u16(&mut out, 0); // shnum, patched below
    let shstrndx_at = out.len();
    push_u16(&mut out, 0); // shstrndx, patched below
    // Program headers: text (R+X) then data (R+W).
    for (flags, offset, vaddr, size) in [
        (5u32, 0, layout.text_vaddr, layout.text_size),
        (6, DATA_OFFSET, layout.data_vaddr, layout.data_size),
    ] {
        push_u32(&mut out, 1); // PT_LOAD
        push_u32(&mut out, flags);
        push_u64(&mut out, offset);
        push_u64(&mut out, vaddr);
        push_u64(&mut out, vaddr);
        push_u64(&mut out, size);
        push_u64(&mut out, size);
        push_u64(&mut out, 0x1000);
    }
    let notes_at = out.len() as u64;
    out.extend_from_slice(notes);
    let shstrtab_at = out.len() as u64;
    out.extend_from_slice(SHSTRTAB);
    let strtab_at = out.len() as u64;
    out.extend_from_slice(&strtab);
    out.resize(out.len().next_multiple_of(8), 0);
    let symtab_at = out.len() as u64;
    out.extend_from_slice(&[0; 24]);
    for ((_, value), name) in SYMBOLS.iter().zip(name_offsets) {
        push_u32(&mut out, name);
        out.push(0x11); // STB_GLOBAL, STT_OBJECT
        out.push(0);
        push_u16(&mut out, 1); // defined (in the notes' section, as good as any)
        push_u64(&mut out, *value);
        push_u64(&mut out, 8);
    }
    let symtab_size = out.len() as u64 - symtab_at;

    // Section headers: null, notes, [base], .shstrtab, .symtab, .strtab.
    let shoff = out.len() as u64;
    out.extend_from_slice(&[0; 64]);
    section(&mut out, 1, 7, 0, notes_at, notes.len() as u64, 0, 4, 0); // SHT_NOTE
    if let Some(base) = layout.base {
        section(&mut out, 15, 1, base, 0, 1, 0, 1, 0); // SHT_PROGBITS
    }
    let shstrndx = ((out.len() as u64 - shoff) / 64) as u16;
    let shstrtab_size = SHSTRTAB.len() as u64;
    section(&mut out, 29, 3, 0, shstrtab_at, shstrtab_size, 0, 1, 0); // SHT_STRTAB
    let strndx = u32::from(shstrndx) + 2;
    section(&mut out, 39, 2, 0, symtab_at, symtab_size, strndx, 8, 24); // SHT_SYMTAB
    section(&mut out, 47, 3, 0, strtab_at, strtab.len() as u64, 0, 1, 0);
    let count = ((out.len() as u64 - shoff) / 64) as u16;
    out[shoff_at..shoff_at + 8].copy_from_slice(&shoff.to_le_bytes());
    out[shnum_at..shnum_at + 2].copy_from_slice(&count.to_le_bytes());
    out[shstrndx_at..shstrndx_at + 2].copy_from_slice(&shstrndx.to_le_bytes());
    out
}

/// What discovery must find in the synthetic image: its probes as
/// (provider, name, vaddr, file offset, semaphore (vaddr, file offset),
/// arguments text), or `None` when it must fail.
type Expected = (String, String, u64, u64, Option<(u64, u64)>, String);

/// Walks `notes` as the ELF note format says (4-byte alignment), on its
/// own, and applies the rules of `.note.stapsdt`.
fn expected(layout: &Layout, notes: &[u8]) -> Option<Vec<Expected>> {
    let mut found = Vec::new();
    let mut pos = 0usize;
    while pos < notes.len() {
        let header = notes.get(pos..pos + 12)?;
        let namesz = u32_at(header, 0) as usize;
        let descsz = u32_at(header, 4) as usize;
        let ty = u32_at(header, 8);
        let mut name = notes.get(pos + 12..pos + 12 + namesz)?;
        let desc_at = pos + (12 + namesz).next_multiple_of(4);
        let desc = notes.get(desc_at..desc_at + descsz)?;
        pos = (desc_at + descsz).next_multiple_of(4);
        while let [rest @ .., 0] = name {
            name = rest;
        }
        if name != b"stapsdt" || ty != 3 {
            continue;
        }
        // Three addresses, then three NUL-terminated UTF-8 strings.
        let pc = u64_at(desc.get(..24)?, 0);
        let note_base = u64_at(desc, 8);
        let sema = u64_at(desc, 16);
        let mut strings = desc[24..].split(|&b| b == 0);
        let mut text = || -> Option<String> {
            let s = strings.next()?;
            // A last piece with no NUL after it is no string.
            let end = s.as_ptr() as usize + s.len() - desc.as_ptr() as usize;
            if end >= desc.len() {
                return None;
            }
            String::from_utf8(s.to_vec()).ok()
        };
        let (provider, probe_name, args) = (text()?, text()?, text()?);
        let vaddr = match layout.base {
            Some(actual) if note_base != 0 => pc.wrapping_add(actual).wrapping_sub(note_base),
            _ => pc,
        };
        let offset = layout.file_offset(vaddr, true)?;
        let semaphore = if sema == 0 {
            None
        } else {
            Some((sema, layout.file_offset(sema, false)?))
        };
        found.push((provider, probe_name, vaddr, offset, semaphore, args));
    }
    Some(found)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let result = probes_in_elf("/fuzz", rest);
        check_probes(rest, &result);
        return;
    }
    let mut params = [0u8; 32];
    let n = rest.len().min(32);
    params[..n].copy_from_slice(&rest[..n]);
    let layout = Layout::parse(&params);
    let notes = &rest[n..];
    let image = build_image(&layout, notes);
    let result = probes_in_elf("/fuzz", &image);
    check_probes(&image, &result);

    let expected = expected(&layout, notes);
    let probes = match (result, expected) {
        (Ok(probes), Some(expected)) => {
            let got: Vec<Expected> = probes
                .iter()
                .map(|p| {
                    (
                        p.provider.clone(),
                        p.name.clone(),
                        p.vaddr,
                        p.file_offset,
                        p.semaphore.map(|s| (s.vaddr, s.file_offset)),
                        p.arg_text.clone(),
                    )
                })
                .collect();
            assert_eq!(got, expected);
            probes
        }
        (Err(_), None) => return,
        (Ok(probes), None) => panic!("found {probes:?} in notes that should be refused"),
        (Err(err), Some(expected)) => panic!("{err} instead of {expected:?}"),
    };
    // `symbol(%rip)` arguments resolve through the symbol table.
    for arg in probes.iter().flat_map(|p| &p.args) {
        if let ArgLocation::Symbol {
            symbol,
            addend,
            address,
        } = &arg.location
        {
            let want = SYMBOLS
                .iter()
                .find(|(name, _)| name == symbol)
                .map(|(_, value)| value.wrapping_add(*addend as u64));
            assert_eq!(*address, want, "{symbol}");
        }
    }
});
