//! Reading `.note.stapsdt` notes from an ELF file.
//!
//! Each note (owner `stapsdt`, type 3) holds the probe's address, the
//! link-time address of `.stapsdt.base`, the semaphore's address (0 when
//! none), then three NUL-terminated strings: provider, name, arguments. When
//! the file was prelinked or otherwise moved, the actual `.stapsdt.base`
//! section address differs from the recorded one and the probe address moves
//! by the same amount (the semaphore does not, as in libbpf).

use std::{collections::HashMap, path::Path};

use object::{
    Endianness, ReadRef,
    elf::{self, FileHeader64},
    read::elf::{FileHeader, NoteIterator, ProgramHeader, SectionHeader},
};

use super::{
    Semaphore, UsdtError, UsdtProbe,
    args::{ArgLocation, parse_args},
};

const NOTE_SECTION: &[u8] = b".note.stapsdt";
const BASE_SECTION: &[u8] = b".stapsdt.base";
const NOTE_OWNER: &[u8] = b"stapsdt";
const NOTE_TYPE: u32 = 3;

/// A zero-copy cursor over a note's descriptor; errors carry the offset.
struct Desc<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Desc<'a> {
    fn read_u64(&mut self) -> Result<u64, (usize, &'static str)> {
        let bytes = self
            .data
            .get(self.pos..self.pos + 8)
            .ok_or((self.pos, "descriptor too short for an address"))?;
        self.pos += 8;
        let mut buf = [0; 8];
        buf.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(buf))
    }

    fn read_cstr(&mut self) -> Result<&'a str, (usize, &'static str)> {
        let rest = self.data.get(self.pos..).unwrap_or_default();
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or((self.pos, "string without a NUL"))?;
        let s = std::str::from_utf8(&rest[..len]).map_err(|_| (self.pos, "string not UTF-8"))?;
        self.pos += len + 1;
        Ok(s)
    }
}

/// Parses the USDT notes of the ELF image `data`, read from `path`: a whole
/// image in memory, or a file read on demand (`object::ReadCache`), of
/// which only the headers, the notes and the symbols are then read.
pub(super) fn probes_in_image<'data, R: ReadRef<'data>>(
    path: &Path,
    data: R,
) -> Result<Vec<UsdtProbe>, UsdtError> {
    let elf_err = |source| UsdtError::Elf {
        path: path.to_owned(),
        source,
    };
    let header = FileHeader64::<Endianness>::parse(data).map_err(elf_err)?;
    let endian = header.endian().map_err(elf_err)?;
    if endian != Endianness::Little || header.e_machine(endian) != elf::EM_X86_64 {
        return Err(UsdtError::UnsupportedElf {
            path: path.to_owned(),
        });
    }
    let sections = header.sections(endian, data).map_err(elf_err)?;
    let segments = header.program_headers(endian, data).map_err(elf_err)?;
    let base_section = sections
        .section_by_name(endian, BASE_SECTION)
        .map(|(_, s)| s.sh_addr(endian));

    // vaddr -> file offset through the PT_LOAD segment containing it.
    let file_offset = |vaddr: u64, executable: bool| -> Option<u64> {
        segments.iter().find_map(|ph| {
            if ph.p_type(endian) != elf::PT_LOAD {
                return None;
            }
            if executable && (ph.p_flags(endian) & elf::PF_X).0 == 0 {
                return None;
            }
            let start = ph.p_vaddr(endian);
            let end = start.checked_add(ph.p_filesz(endian))?;
            if !(start..end).contains(&vaddr) {
                return None;
            }
            (vaddr - start).checked_add(ph.p_offset(endian))
        })
    };

    let mut probes = Vec::new();
    for section in sections.iter() {
        if section.sh_type(endian) != elf::SHT_NOTE
            || sections.section_name(endian, section) != Ok(NOTE_SECTION)
        {
            continue;
        }
        let notes_data = section.data(endian, data).map_err(elf_err)?;
        let mut notes = NoteIterator::<FileHeader64<Endianness>>::new(
            endian,
            section.sh_addralign(endian),
            notes_data,
        )
        .map_err(elf_err)?;
        while let Some(note) = notes.next().map_err(elf_err)? {
            if note.name() != NOTE_OWNER || note.n_type(endian).0 != NOTE_TYPE {
                continue;
            }
            let desc = note.desc();
            // Where this descriptor lies in the file, for error messages.
            let desc_offset = (section.sh_offset(endian) as usize)
                .wrapping_add((desc.as_ptr() as usize).wrapping_sub(notes_data.as_ptr() as usize));
            let note_err = |(pos, reason): (usize, &'static str)| UsdtError::Note {
                path: path.to_owned(),
                offset: desc_offset as u64 + pos as u64,
                reason,
            };
            let mut cur = Desc { data: desc, pos: 0 };
            let pc = cur.read_u64().map_err(note_err)?;
            let note_base = cur.read_u64().map_err(note_err)?;
            let sema = cur.read_u64().map_err(note_err)?;
            let provider = cur.read_cstr().map_err(note_err)?;
            let name = cur.read_cstr().map_err(note_err)?;
            let arg_text = cur.read_cstr().map_err(note_err)?;
            let vaddr = match base_section {
                Some(actual) if note_base != 0 => pc.wrapping_add(actual).wrapping_sub(note_base),
                _ => pc,
            };
            let Some(offset) = file_offset(vaddr, true) else {
                return Err(UsdtError::Note {
                    path: path.to_owned(),
                    offset: desc_offset as u64,
                    reason: "probe address outside every executable segment",
                });
            };
            let semaphore = if sema == 0 {
                None
            } else {
                let Some(sema_offset) = file_offset(sema, false) else {
                    return Err(UsdtError::Note {
                        path: path.to_owned(),
                        offset: desc_offset as u64 + 16,
                        reason: "semaphore address outside every loaded segment",
                    });
                };
                Some(Semaphore {
                    vaddr: sema,
                    file_offset: sema_offset,
                })
            };
            let (args, args_error) = match parse_args(arg_text) {
                Ok(args) => (args, None),
                Err(err) => (Vec::new(), Some(err)),
            };
            probes.push(UsdtProbe {
                provider: provider.to_owned(),
                name: name.to_owned(),
                path: path.to_owned(),
                module: path.display().to_string(),
                file_offset: offset,
                vaddr,
                semaphore,
                arg_text: arg_text.to_owned(),
                args,
                args_error,
            });
        }
    }
    resolve_symbols(data, &mut probes)?;
    Ok(probes)
}

/// Fills in the addresses of `symbol(%rip)` arguments from `.symtab`, else
/// `.dynsym`. Symbols that cannot be found stay unresolved: attaching such a
/// probe fails with the symbol's name.
fn resolve_symbols<'data, R: ReadRef<'data>>(
    data: R,
    probes: &mut [UsdtProbe],
) -> Result<(), UsdtError> {
    let wanted = probes
        .iter()
        .flat_map(|p| &p.args)
        .any(|a| matches!(a.location, ArgLocation::Symbol { .. }));
    if !wanted {
        return Ok(());
    }
    let mut table = HashMap::new();
    if let Ok(header) = FileHeader64::<Endianness>::parse(data)
        && let Ok(endian) = header.endian()
        && let Ok(sections) = header.sections(endian, data)
    {
        for kind in [elf::SHT_DYNSYM, elf::SHT_SYMTAB] {
            let Ok(symbols) = sections.symbols(endian, data, kind) else {
                continue;
            };
            for symbol in symbols.iter() {
                use object::read::elf::Sym;
                if symbol.st_shndx(endian) == elf::SHN_UNDEF {
                    continue;
                }
                if let Ok(name) = symbol.name(endian, symbols.strings()) {
                    table.insert(name.to_vec(), symbol.st_value(endian));
                }
            }
        }
    }
    for arg in probes.iter_mut().flat_map(|p| p.args.iter_mut()) {
        if let ArgLocation::Symbol {
            symbol,
            addend,
            address,
        } = &mut arg.location
        {
            *address = table
                .get(symbol.as_bytes())
                .map(|&value| value.wrapping_add(*addend as u64));
        }
    }
    Ok(())
}
