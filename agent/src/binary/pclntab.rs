//! `.gopclntab`: the runtime's function table. It survives `-ldflags=-s -w`,
//! so it names functions and their address ranges in stripped binaries.
//!
//! Layouts (little-endian, as the linker writes them for x86-64):
//!
//! | magic        | Go        | functab entry         | `_func` head             |
//! |--------------|-----------|-----------------------|--------------------------|
//! | `0xfffffffa` | 1.16–1.17 | (entry PC, funcoff) words | entry PC word, nameOff i32 |
//! | `0xfffffff0` | 1.18–1.19 | (entryOff, funcoff) u32s  | entryOff u32, nameOff i32  |
//! | `0xfffffff1` | 1.20+     | same as 1.18              | same as 1.18               |
//!
//! The header: magic u32, two pad bytes, minLC u8, ptrSize u8, then words:
//! nfunc, nfiles, [textStart (1.18+)], funcnameOffset, cuOffset,
//! filetabOffset, pctabOffset, pclnOffset (offsets from the header).

use crate::cursor::{Cursor, ReadError};

const MAGIC_116: u32 = 0xffff_fffa;
const MAGIC_118: u32 = 0xffff_fff0;
const MAGIC_120: u32 = 0xffff_fff1;
/// More functions than this is corruption: the largest real binaries hold a
/// few hundred thousand.
const MAX_FUNCS: u64 = 1 << 24;

/// Which layout a table uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum PclnVersion {
    Go116,
    Go118,
    Go120,
}

/// Why a pclntab could not be used. Offsets are from the table's start.
#[derive(Debug, thiserror::Error)]
pub enum PclnError {
    #[error("unknown pclntab magic {magic:#x} (Go 1.16+ layouts only)")]
    BadMagic { magic: u32 },
    #[error("unsupported pclntab pointer size {ptr_size}")]
    BadPointerSize { ptr_size: u8 },
    #[error("implausible function count {nfunc}")]
    TooManyFuncs { nfunc: u64 },
    #[error("pclntab offset {value:#x} in header word at byte {offset} is outside the table")]
    BadOffset { offset: usize, value: u64 },
    #[error("truncated pclntab")]
    Truncated(#[source] ReadError),
    #[error(
        "no text start: the header has none and no runtime.text symbol or .text section was found"
    )]
    NoTextStart,
    #[error("text start {text_start:#x} leaves no room for 32-bit entry offsets")]
    BadTextStart { text_start: u64 },
}

impl From<ReadError> for PclnError {
    fn from(e: ReadError) -> Self {
        PclnError::Truncated(e)
    }
}

/// A parsed header: positions within the table bytes, no copies.
#[derive(Clone, Debug)]
pub struct PclnTab {
    pub version: PclnVersion,
    ptr_size: u8,
    nfunc: usize,
    text_start: u64,
    funcnametab: usize,
    /// `cutab`: per compilation unit, u32 offsets into `filetab`.
    cutab: usize,
    filetab: usize,
    /// The pc-value tables (`pcfile`, `pcln`, ...).
    pctab: usize,
    /// Instruction size quantum (`minLC`): pc deltas are multiples of it.
    quantum: u8,
    /// Start of `pclntable` (functab and the `_func` records).
    pcln: usize,
}

/// The source position of one pc, as the table records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PclnLine<'a> {
    pub function: &'a [u8],
    pub file: &'a [u8],
    pub line: u32,
}

/// One function as the table records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PclnFunc<'a> {
    pub name: &'a [u8],
    pub entry: u64,
    /// The next function's entry (or the end of text): includes padding.
    pub end: u64,
}

/// Offsets in `data` (8-byte aligned) where a pclntab header for x86-64
/// could start: a known magic, two zero pad bytes, minLC 1, ptrSize 8.
/// Used when there is no `.gopclntab` section (PIE builds before Go 1.26
/// put the table inside `.data.rel.ro`).
pub fn header_candidates(data: &[u8]) -> impl Iterator<Item = usize> + '_ {
    data.chunks_exact(8).enumerate().filter_map(|(i, w)| {
        let magic = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        let known = matches!(magic, MAGIC_116 | MAGIC_118 | MAGIC_120);
        (known && w[4..] == [0, 0, 1, 8]).then_some(i * 8)
    })
}

impl PclnTab {
    /// Where `funcnametab` starts, from the table's start (the moduledata's
    /// second word points there).
    pub fn funcnametab_offset(&self) -> usize {
        self.funcnametab
    }

    /// Parses the header. `text_start(funcnametab_offset)` is asked for the
    /// text start of 1.18+ tables whose header field is zero (Go 1.26
    /// stopped filling it; PIE leaves it to a relocation).
    pub fn parse(
        data: &[u8],
        text_start: impl FnOnce(usize) -> Option<u64>,
    ) -> Result<PclnTab, PclnError> {
        let mut c = Cursor::new(data);
        let magic = c.read_u32()?;
        let version = match magic {
            MAGIC_116 => PclnVersion::Go116,
            MAGIC_118 => PclnVersion::Go118,
            MAGIC_120 => PclnVersion::Go120,
            _ => return Err(PclnError::BadMagic { magic }),
        };
        c.skip(2)?;
        let quantum = c.read_u8()?;
        let ptr_size = c.read_u8()?;
        if ptr_size != 8 && ptr_size != 4 {
            return Err(PclnError::BadPointerSize { ptr_size });
        }
        let nfunc = c.read_word(ptr_size)?;
        if nfunc > MAX_FUNCS {
            return Err(PclnError::TooManyFuncs { nfunc });
        }
        let _nfiles = c.read_word(ptr_size)?;
        let header_text = match version {
            PclnVersion::Go116 => None,
            _ => Some(c.read_word(ptr_size)?),
        };
        let offset_word = |c: &mut Cursor<'_>| -> Result<usize, PclnError> {
            let at = c.pos();
            let value = c.read_word(ptr_size)?;
            usize::try_from(value)
                .ok()
                .filter(|&v| v < data.len())
                .ok_or(PclnError::BadOffset { offset: at, value })
        };
        let funcnametab = offset_word(&mut c)?;
        let cutab = offset_word(&mut c)?;
        let filetab = offset_word(&mut c)?;
        let pctab = offset_word(&mut c)?;
        let pcln = offset_word(&mut c)?;
        let text_start = match header_text {
            None => 0,
            Some(t) if t != 0 => t,
            Some(_) => text_start(funcnametab).ok_or(PclnError::NoTextStart)?,
        };
        // 1.18+ entries are 32-bit offsets from it: none may wrap around.
        if text_start.checked_add(u64::from(u32::MAX)).is_none() {
            return Err(PclnError::BadTextStart { text_start });
        }
        let tab = PclnTab {
            version,
            ptr_size,
            nfunc: nfunc as usize,
            text_start,
            funcnametab,
            cutab,
            filetab,
            pctab,
            quantum: quantum.max(1),
            pcln,
        };
        // The functab must fit: nfunc+1 pairs plus nothing else checked here.
        let field = tab.field_size();
        let functab_len = (tab.nfunc * 2 + 1)
            .checked_mul(field)
            .ok_or(PclnError::TooManyFuncs { nfunc })?;
        Cursor::at(data, pcln).skip(functab_len)?;
        Ok(tab)
    }

    /// Number of functions.
    pub fn len(&self) -> usize {
        self.nfunc
    }

    /// Whether the table lists no function.
    pub fn is_empty(&self) -> bool {
        self.nfunc == 0
    }

    /// The text start entry offsets are based on (0 for Go 1.16 tables,
    /// whose entries are addresses): for the fuzz target's range checks.
    pub fn text_start(&self) -> u64 {
        self.text_start
    }

    fn field_size(&self) -> usize {
        match self.version {
            PclnVersion::Go116 => usize::from(self.ptr_size),
            _ => 4,
        }
    }

    fn functab_word(&self, data: &[u8], index: usize) -> Result<u64, ReadError> {
        let field = self.field_size();
        // index <= 2*nfunc+1 and the functab was bounds-checked in parse.
        let mut c = Cursor::at(data, self.pcln + index * field);
        if field == 4 {
            c.read_u32().map(u64::from)
        } else {
            c.read_u64()
        }
    }

    fn entry_pc(&self, data: &[u8], i: usize) -> Result<u64, ReadError> {
        let raw = self.functab_word(data, 2 * i)?;
        Ok(match self.version {
            PclnVersion::Go116 => raw,
            // Cannot wrap: parse checked that text_start + u32::MAX fits.
            _ => self.text_start + raw,
        })
    }

    /// The `i`th function (`i < len()`).
    pub fn func<'a>(&self, data: &'a [u8], i: usize) -> Result<PclnFunc<'a>, PclnError> {
        let entry = self.entry_pc(data, i)?;
        let end = self.entry_pc(data, i + 1)?;
        let funcoff = self.functab_word(data, 2 * i + 1)?;
        let func_at = usize::try_from(funcoff)
            .ok()
            .and_then(|o| o.checked_add(self.pcln))
            .ok_or(PclnError::BadOffset {
                offset: self.pcln,
                value: funcoff,
            })?;
        let mut c = Cursor::at(data, func_at);
        c.skip(match self.version {
            PclnVersion::Go116 => usize::from(self.ptr_size),
            _ => 4,
        })?;
        let name_off = c.read_u32()?;
        let name_at =
            self.funcnametab
                .checked_add(name_off as usize)
                .ok_or(PclnError::BadOffset {
                    offset: func_at,
                    value: u64::from(name_off),
                })?;
        let name = Cursor::at(data, name_at).read_cstr()?;
        Ok(PclnFunc { name, entry, end })
    }

    /// The function named `name` (a linear scan: no index is kept, to keep
    /// memory flat; ~1 ms per 10k functions).
    pub fn find<'a>(&self, data: &'a [u8], name: &str) -> Result<Option<PclnFunc<'a>>, PclnError> {
        for i in 0..self.nfunc {
            let f = self.func(data, i)?;
            if f.name == name.as_bytes() {
                return Ok(Some(f));
            }
        }
        Ok(None)
    }

    /// The function containing `pc` (binary search: the table is sorted).
    pub fn lookup<'a>(&self, data: &'a [u8], pc: u64) -> Result<Option<PclnFunc<'a>>, PclnError> {
        match self.lookup_index(data, pc)? {
            Some(i) => Ok(Some(self.func(data, i)?)),
            None => Ok(None),
        }
    }

    /// The function, file and line of `pc`, from the function's `pcfile`
    /// and `pcln` tables. `None` when no function holds `pc` or its tables
    /// do not cover it.
    pub fn line_at<'a>(&self, data: &'a [u8], pc: u64) -> Result<Option<PclnLine<'a>>, PclnError> {
        let Some(i) = self.lookup_index(data, pc)? else {
            return Ok(None);
        };
        let func = self.func(data, i)?;
        let at = self.func_record(data, i)?;
        // `_func` after the entry (a word before 1.18, a u32 since) and
        // nameOff: args, deferreturn, pcsp, pcfile, pcln, npcdata, cuOffset.
        let mut c = Cursor::at(data, at);
        c.skip(match self.version {
            PclnVersion::Go116 => usize::from(self.ptr_size),
            _ => 4,
        })?;
        c.skip(4 * 4)?;
        let pcfile = c.read_u32()?;
        let pcln = c.read_u32()?;
        let _npcdata = c.read_u32()?;
        let cu = c.read_u32()?;
        let (Some(fileno), Some(line)) = (
            self.pc_value(data, pcfile, func.entry, pc)?,
            self.pc_value(data, pcln, func.entry, pc)?,
        ) else {
            return Ok(None);
        };
        let (Ok(fileno), Ok(line)) = (u32::try_from(fileno), u32::try_from(line)) else {
            return Ok(None);
        };
        let slot = (cu as usize)
            .checked_add(fileno as usize)
            .and_then(|s| s.checked_mul(4))
            .and_then(|s| s.checked_add(self.cutab))
            .ok_or(PclnError::BadOffset {
                offset: at,
                value: u64::from(cu),
            })?;
        let file_off = Cursor::at(data, slot).read_u32()?;
        let file = Cursor::at(data, self.filetab.saturating_add(file_off as usize)).read_cstr()?;
        Ok(Some(PclnLine {
            function: func.name,
            file,
            line,
        }))
    }

    /// The value a pc-value table (at `pctab + off`) gives `target` in the
    /// function entered at `entry`: zig-zag value deltas and pc deltas (in
    /// quanta) as uvarints, from the value -1 at the entry.
    fn pc_value(
        &self,
        data: &[u8],
        off: u32,
        entry: u64,
        target: u64,
    ) -> Result<Option<i64>, PclnError> {
        if off == 0 {
            return Ok(None);
        }
        let mut c = Cursor::at(data, self.pctab.saturating_add(off as usize));
        let (mut pc, mut value) = (entry, -1i64);
        let mut first = true;
        loop {
            let delta = c.read_uvarint()?;
            if delta == 0 && !first {
                return Ok(None);
            }
            first = false;
            // Zig-zag: the low bit is the sign.
            let step = ((delta >> 1) as i64) ^ -((delta & 1) as i64);
            value = value.wrapping_add(step);
            let pc_delta = c.read_uvarint()?.saturating_mul(u64::from(self.quantum));
            pc = pc.saturating_add(pc_delta);
            if target < pc {
                return Ok(Some(value));
            }
        }
    }

    /// Where the `i`th function's `_func` record starts.
    fn func_record(&self, data: &[u8], i: usize) -> Result<usize, PclnError> {
        let funcoff = self.functab_word(data, 2 * i + 1)?;
        usize::try_from(funcoff)
            .ok()
            .and_then(|o| o.checked_add(self.pcln))
            .ok_or(PclnError::BadOffset {
                offset: self.pcln,
                value: funcoff,
            })
    }

    /// The index of the function containing `pc`.
    fn lookup_index(&self, data: &[u8], pc: u64) -> Result<Option<usize>, PclnError> {
        let (mut lo, mut hi) = (0usize, self.nfunc);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.entry_pc(data, mid + 1)? <= pc {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo >= self.nfunc {
            return Ok(None);
        }
        let inside = self.entry_pc(data, lo)? <= pc && pc < self.entry_pc(data, lo + 1)?;
        Ok(inside.then_some(lo))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A synthetic table in the given layout with functions (name, entryOff, size).
    pub fn synth(version: PclnVersion, text: u64, funcs: &[(&str, u64, u64)]) -> Vec<u8> {
        let magic = match version {
            PclnVersion::Go116 => MAGIC_116,
            PclnVersion::Go118 => MAGIC_118,
            PclnVersion::Go120 => MAGIC_120,
        };
        let words = if version == PclnVersion::Go116 { 7 } else { 8 };
        let header = 8 + 8 * words;
        let mut names = Vec::new();
        let mut name_offs = Vec::new();
        for (name, _, _) in funcs {
            name_offs.push(names.len() as u32);
            names.extend_from_slice(name.as_bytes());
            names.push(0);
        }
        let funcnametab = header;
        let pcln = funcnametab + names.len();
        let field = if version == PclnVersion::Go116 { 8 } else { 4 };
        let functab_len = (funcs.len() * 2 + 1) * field;
        let func_rec = if version == PclnVersion::Go116 { 12 } else { 8 };
        let mut out = Vec::new();
        out.extend_from_slice(&magic.to_le_bytes());
        out.extend_from_slice(&[0, 0, 1, 8]);
        out.extend_from_slice(&(funcs.len() as u64).to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
        if version != PclnVersion::Go116 {
            out.extend_from_slice(&text.to_le_bytes());
        }
        for off in [funcnametab, funcnametab, funcnametab, funcnametab, pcln] {
            out.extend_from_slice(&(off as u64).to_le_bytes());
        }
        out.extend_from_slice(&names);
        let base = if version == PclnVersion::Go116 {
            text
        } else {
            0
        };
        let put = |out: &mut Vec<u8>, v: u64| {
            if field == 4 {
                out.extend_from_slice(&(v as u32).to_le_bytes());
            } else {
                out.extend_from_slice(&v.to_le_bytes());
            }
        };
        for (i, (_, entry, _)) in funcs.iter().enumerate() {
            put(&mut out, base + entry);
            put(&mut out, (functab_len + i * func_rec) as u64);
        }
        let last = funcs.last().map_or(0, |f| f.1 + f.2);
        put(&mut out, base + last);
        for (i, (_, entry, _)) in funcs.iter().enumerate() {
            if version == PclnVersion::Go116 {
                out.extend_from_slice(&(base + entry).to_le_bytes());
            } else {
                out.extend_from_slice(&(*entry as u32).to_le_bytes());
            }
            out.extend_from_slice(&name_offs[i].to_le_bytes());
        }
        out
    }

    /// Found by the pclntab fuzz target: a text start near the top of the
    /// address space made entries wrap around to below it.
    #[test]
    fn a_text_start_entries_would_wrap_past_is_refused() {
        let data = synth(PclnVersion::Go120, u64::MAX, &[("main.main", 0x48, 0x10)]);
        assert!(matches!(
            PclnTab::parse(&data, |_| None),
            Err(PclnError::BadTextStart {
                text_start: u64::MAX
            })
        ));
        let top = u64::MAX - u64::from(u32::MAX);
        let data = synth(PclnVersion::Go120, top, &[("main.main", 0x48, 0x10)]);
        let tab = PclnTab::parse(&data, |_| None).expect("room for every offset");
        assert_eq!(tab.func(&data, 0).unwrap().entry, top + 0x48);
    }

    const FUNCS: &[(&str, u64, u64)] = &[
        ("runtime.a", 0, 0x20),
        ("main.main", 0x20, 0x40),
        ("main.b", 0x60, 0x10),
    ];

    #[test]
    fn every_layout_names_and_ranges() {
        for version in [PclnVersion::Go116, PclnVersion::Go118, PclnVersion::Go120] {
            let data = synth(version, 0x401000, FUNCS);
            let tab = PclnTab::parse(&data, |_| None).unwrap();
            assert_eq!(tab.version, version);
            assert_eq!(tab.len(), 3);
            let f = tab.find(&data, "main.main").unwrap().unwrap();
            assert_eq!((f.entry, f.end), (0x401020, 0x401060));
            assert_eq!(tab.find(&data, "main.nope").unwrap(), None);
            assert_eq!(
                tab.lookup(&data, 0x401065).unwrap().unwrap().name,
                b"main.b"
            );
            assert_eq!(
                tab.lookup(&data, 0x401000).unwrap().unwrap().name,
                b"runtime.a"
            );
            assert_eq!(tab.lookup(&data, 0x401070).unwrap(), None);
            assert_eq!(tab.lookup(&data, 0x400fff).unwrap(), None);
        }
    }

    #[test]
    fn candidates_are_aligned_headers() {
        let mut data = vec![0u8; 40];
        data[4..12].copy_from_slice(&[0xf1, 0xff, 0xff, 0xff, 0, 0, 1, 8]);
        data[16..24].copy_from_slice(&[0xf1, 0xff, 0xff, 0xff, 0, 0, 1, 8]);
        data[24..32].copy_from_slice(&[0xfb, 0xff, 0xff, 0xff, 0, 0, 1, 8]);
        assert_eq!(header_candidates(&data).collect::<Vec<_>>(), vec![16]);
    }

    #[test]
    fn zero_text_start_uses_the_fallback() {
        let data = synth(PclnVersion::Go120, 0, FUNCS);
        assert!(matches!(
            PclnTab::parse(&data, |_| None),
            Err(PclnError::NoTextStart)
        ));
        let tab = PclnTab::parse(&data, |_| Some(0x1000)).unwrap();
        assert_eq!(tab.find(&data, "main.b").unwrap().unwrap().entry, 0x1060);
    }

    #[test]
    fn corrupt_tables_fail_cleanly() {
        let data = synth(PclnVersion::Go118, 0x401000, FUNCS);
        for len in 0..data.len() {
            if let Ok(tab) = PclnTab::parse(&data[..len], |_| None) {
                for i in 0..tab.len() {
                    let _ = tab.func(&data[..len], i);
                }
            }
        }
        let mut bad = data.clone();
        bad[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            PclnTab::parse(&bad, |_| None),
            Err(PclnError::TooManyFuncs { .. })
        ));
        let mut bad = data.clone();
        bad[64..72].copy_from_slice(&0xffff_ffffu64.to_le_bytes());
        assert!(matches!(
            PclnTab::parse(&bad, |_| None),
            Err(PclnError::BadOffset { offset: 64, .. })
        ));
        let mut bad = data.clone();
        bad[0] = 0xfb;
        assert!(matches!(
            PclnTab::parse(&bad, |_| None),
            Err(PclnError::BadMagic { magic: 0xffff_fffb })
        ));
        // A name offset pointing past the end is an error, not a panic.
        let mut bad = data.clone();
        let n = bad.len();
        bad[n - 4..].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
        let tab = PclnTab::parse(&bad, |_| None).unwrap();
        assert!(tab.func(&bad, 2).is_err());
    }
}
