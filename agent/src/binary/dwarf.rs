//! Struct layouts from DWARF (`.debug_info`, zlib-compressed by the Go
//! linker since 1.11). Loaded once, on the first offset query; only the
//! sections that describe types are decompressed.

use std::collections::HashMap;
use std::sync::Arc;

use gimli::{AttributeValue, DebugInfoOffset, EndianSlice, LittleEndian};

type R<'a> = EndianSlice<'a, LittleEndian>;

/// Largest section we agree to decompress: a corrupt header must not make
/// us allocate gigabytes.
const MAX_SECTION: u64 = 512 << 20;
const ELFCOMPRESS_ZLIB: u32 = 1;
/// How deep we follow typedefs and nested structs to find an alignment.
const MAX_TYPE_DEPTH: u32 = 8;

/// Why DWARF could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DwarfError {
    #[error("section {section} is compressed with unsupported type {ch_type}")]
    UnsupportedCompression { section: String, ch_type: u32 },
    #[error(
        "section {section}: compression header at byte 0 declares {size} bytes (limit {MAX_SECTION})"
    )]
    TooLarge { section: String, size: u64 },
    #[error("section {section} does not decompress to its declared size")]
    Decompress { section: String },
    #[error("section {section} is truncated")]
    Truncated { section: String },
    #[error("malformed DWARF at .debug_info byte {offset:#x}")]
    Gimli {
        offset: u64,
        #[source]
        source: gimli::Error,
    },
}

/// Raw bytes of an ELF section plus whether it carries `SHF_COMPRESSED`.
pub struct RawSection<'a> {
    pub name: &'a str,
    pub data: &'a [u8],
    pub compressed: bool,
}

/// Decompresses `SHF_COMPRESSED` (ELF compression header) and legacy
/// `.zdebug` ("ZLIB" + big-endian size) sections.
pub fn section_bytes(raw: &RawSection<'_>) -> Result<Arc<[u8]>, DwarfError> {
    let section = || raw.name.to_owned();
    let truncated = || DwarfError::Truncated { section: section() };
    let (ch_type, size, body) = if raw.compressed {
        let mut c = crate::cursor::Cursor::new(raw.data);
        let ch_type = c.read_u32().map_err(|_| truncated())?;
        let _reserved = c.read_u32().map_err(|_| truncated())?;
        let size = c.read_u64().map_err(|_| truncated())?;
        let _align = c.read_u64().map_err(|_| truncated())?;
        (ch_type, size, raw.data.get(24..).ok_or_else(truncated)?)
    } else if raw.name.starts_with(".zdebug") && raw.data.starts_with(b"ZLIB") {
        let size = raw.data.get(4..12).ok_or_else(truncated)?;
        let mut be = [0u8; 8];
        be.copy_from_slice(size);
        (
            ELFCOMPRESS_ZLIB,
            u64::from_be_bytes(be),
            raw.data.get(12..).ok_or_else(truncated)?,
        )
    } else {
        return Ok(Arc::from(raw.data));
    };
    if ch_type != ELFCOMPRESS_ZLIB {
        return Err(DwarfError::UnsupportedCompression {
            section: section(),
            ch_type,
        });
    }
    if size > MAX_SECTION {
        return Err(DwarfError::TooLarge {
            section: section(),
            size,
        });
    }
    let limit = size as usize;
    let out = miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(body, limit)
        .map_err(|_| DwarfError::Decompress { section: section() })?;
    if out.len() != limit {
        return Err(DwarfError::Decompress { section: section() });
    }
    Ok(Arc::from(out))
}

/// A member of a struct as DWARF describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub offset: u64,
    pub size: u64,
    pub align: u64,
}

/// A struct's size and the members we were asked about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StructLayout {
    pub size: u64,
    pub members: Vec<(String, Member)>,
}

/// The (decompressed) sections gimli reads. Go names types with inline
/// strings (`DW_FORM_string`); `.debug_str` covers other producers.
struct Sections {
    info: Arc<[u8]>,
    abbrev: Arc<[u8]>,
    str: Arc<[u8]>,
}

fn slice(b: &[u8]) -> R<'_> {
    EndianSlice::new(b, LittleEndian)
}

type Header<'a> = gimli::UnitHeader<R<'a>>;

fn gimli_err(offset: u64) -> impl Fn(gimli::Error) -> DwarfError {
    move |source| DwarfError::Gimli { offset, source }
}

/// The loaded DWARF and an index from struct name to its DIE.
pub struct DwarfIndex {
    sections: Sections,
    structs: HashMap<String, DebugInfoOffset>,
    /// Start of every unit in `.debug_info`, ascending.
    units: Vec<usize>,
}

impl DwarfIndex {
    /// `load(name)` returns the named section's bytes (decompressed), or an
    /// empty slice if absent.
    pub fn load(
        load: impl Fn(&str) -> Result<Arc<[u8]>, DwarfError>,
    ) -> Result<DwarfIndex, DwarfError> {
        let sections = Sections {
            info: load(".debug_info")?,
            abbrev: load(".debug_abbrev")?,
            str: load(".debug_str")?,
        };
        let mut structs = HashMap::new();
        let mut unit_starts = Vec::new();
        let debug_info = gimli::DebugInfo::from(slice(&sections.info));
        let debug_abbrev = gimli::DebugAbbrev::from(slice(&sections.abbrev));
        let debug_str = gimli::DebugStr::from(slice(&sections.str));
        let mut units = debug_info.units();
        // A unit that does not parse (a C compiler's DWARF in a cgo binary
        // using forms we do not need) is skipped; the first error is kept
        // for when nothing could be indexed at all.
        let mut first_error = None;
        loop {
            let header = match units.next() {
                Ok(Some(header)) => header,
                Ok(None) => break,
                Err(e) => {
                    first_error.get_or_insert(DwarfError::Gimli {
                        offset: unit_starts.last().map_or(0, |&o| o as u64),
                        source: e,
                    });
                    break;
                }
            };
            let unit_at = header.offset().0 as u64;
            unit_starts.push(header.offset().0);
            if let Err(source) = index_unit(&header, &debug_abbrev, &debug_str, &mut structs) {
                first_error.get_or_insert(DwarfError::Gimli {
                    offset: unit_at,
                    source,
                });
            }
        }
        if let Some(e) = first_error
            && structs.is_empty()
        {
            return Err(e);
        }
        Ok(DwarfIndex {
            sections,
            structs,
            units: unit_starts,
        })
    }

    /// The names of the structs found, in no particular order: what
    /// [`Self::layout`] knows (for the fuzz target, which asks for each).
    pub fn struct_names(&self) -> impl Iterator<Item = &str> {
        self.structs.keys().map(String::as_str)
    }

    /// The layout of struct `name`, with `fields` (all members if empty).
    /// `Ok(None)` if no such struct.
    pub fn layout(&self, name: &str, fields: &[&str]) -> Result<Option<StructLayout>, DwarfError> {
        let Some(&die) = self.structs.get(name) else {
            return Ok(None);
        };
        let at = die.0 as u64;
        let err = gimli_err(at);
        let debug_info = gimli::DebugInfo::from(slice(&self.sections.info));
        let debug_abbrev = gimli::DebugAbbrev::from(slice(&self.sections.abbrev));
        let debug_str = gimli::DebugStr::from(slice(&self.sections.str));
        let header = self.unit_of(&debug_info, die).map_err(&err)?;
        let abbrevs = header.abbreviations(&debug_abbrev).map_err(&err)?;
        let offset = die.to_unit_offset(&header).ok_or(DwarfError::Gimli {
            offset: at,
            source: gimli::Error::NoEntryAtGivenOffset(at),
        })?;
        let mut tree = header.entries_tree(&abbrevs, Some(offset)).map_err(&err)?;
        let root = tree.root().map_err(&err)?;
        let size = udata(root.entry().attr_value(gimli::DW_AT_byte_size)).unwrap_or(0);
        let types = Types {
            index: self,
            debug_info: &debug_info,
            debug_abbrev: &debug_abbrev,
        };
        let mut members = Vec::new();
        let mut children = root.children();
        while let Some(child) = children.next().map_err(&err)? {
            let entry = child.entry();
            if entry.tag() != gimli::DW_TAG_member {
                continue;
            }
            let Some(member_name) = entry
                .attr_value(gimli::DW_AT_name)
                .and_then(|v| v.string_value(&debug_str))
            else {
                continue;
            };
            let member_name = String::from_utf8_lossy(member_name.slice()).into_owned();
            if !fields.is_empty() && !fields.contains(&member_name.as_str()) {
                continue;
            }
            let Some(offset) = member_offset(entry.attr_value(gimli::DW_AT_data_member_location))
            else {
                continue;
            };
            let (size, align) = match type_ref(&header, entry.attr_value(gimli::DW_AT_type)) {
                Some(t) => types.size_align(t, 0),
                None => (0, 1),
            };
            members.push((
                member_name,
                Member {
                    offset,
                    size,
                    align,
                },
            ));
        }
        Ok(Some(StructLayout { size, members }))
    }
}

/// A type reference, within the unit or across units (Go's linker points
/// members at types in other units with `DW_FORM_ref_addr`).
fn type_ref(header: &Header<'_>, value: Option<AttributeValue<R<'_>>>) -> Option<DebugInfoOffset> {
    match value? {
        AttributeValue::UnitRef(r) => r.to_debug_info_offset(header),
        AttributeValue::DebugInfoRef(r) => Some(r),
        _ => None,
    }
}

/// Records the named struct DIEs among `header`'s top-level children.
fn index_unit(
    header: &Header<'_>,
    debug_abbrev: &gimli::DebugAbbrev<R<'_>>,
    debug_str: &gimli::DebugStr<R<'_>>,
    structs: &mut HashMap<String, DebugInfoOffset>,
) -> gimli::Result<()> {
    let abbrevs = header.abbreviations(debug_abbrev)?;
    let mut tree = header.entries_tree(&abbrevs, None)?;
    let root = tree.root()?;
    let mut children = root.children();
    // Go's type DIEs are direct children of their unit; subtrees
    // (functions, members) are skipped without being decoded.
    while let Some(child) = children.next()? {
        let entry = child.entry();
        if entry.tag() != gimli::DW_TAG_structure_type {
            continue;
        }
        let Some(name) = entry
            .attr_value(gimli::DW_AT_name)
            .and_then(|v| v.string_value(debug_str))
        else {
            continue;
        };
        let name = String::from_utf8_lossy(name.slice()).into_owned();
        if let Some(off) = entry.offset().to_debug_info_offset(header) {
            structs.entry(name).or_insert(off);
        }
    }
    Ok(())
}

struct Types<'i, 'a> {
    index: &'i DwarfIndex,
    debug_info: &'i gimli::DebugInfo<R<'a>>,
    debug_abbrev: &'i gimli::DebugAbbrev<R<'a>>,
}

impl Types<'_, '_> {
    /// Size and alignment of the type at `t`, following typedefs and
    /// nesting (Go aligns a struct to its most aligned member).
    fn size_align(&self, t: DebugInfoOffset, depth: u32) -> (u64, u64) {
        if depth > MAX_TYPE_DEPTH {
            return (0, 1);
        }
        let Ok(header) = self.index.unit_of(self.debug_info, t) else {
            return (0, 1);
        };
        let Ok(abbrevs) = header.abbreviations(self.debug_abbrev) else {
            return (0, 1);
        };
        let Some(unit_offset) = t.to_unit_offset(&header) else {
            return (0, 1);
        };
        let Ok(entry) = header.entry(&abbrevs, unit_offset) else {
            return (0, 1);
        };
        let size = udata(entry.attr_value(gimli::DW_AT_byte_size));
        let target = type_ref(&header, entry.attr_value(gimli::DW_AT_type));
        match entry.tag() {
            gimli::DW_TAG_pointer_type | gimli::DW_TAG_subroutine_type => (8, 8),
            gimli::DW_TAG_base_type => {
                let size = size.unwrap_or(0);
                (size, natural_align(size))
            }
            gimli::DW_TAG_typedef => match target {
                Some(r) => self.size_align(r, depth + 1),
                None => (size.unwrap_or(0), 1),
            },
            gimli::DW_TAG_array_type => {
                let elem = target.map_or((0, 1), |r| self.size_align(r, depth + 1));
                (size.unwrap_or(0), elem.1)
            }
            gimli::DW_TAG_structure_type => {
                let mut align = 1;
                if let Ok(mut tree) = header.entries_tree(&abbrevs, Some(unit_offset))
                    && let Ok(root) = tree.root()
                {
                    let mut children = root.children();
                    while let Ok(Some(child)) = children.next() {
                        if let Some(r) =
                            type_ref(&header, child.entry().attr_value(gimli::DW_AT_type))
                        {
                            align = align.max(self.size_align(r, depth + 1).1);
                        }
                    }
                }
                (size.unwrap_or(0), align)
            }
            _ => (size.unwrap_or(0), 1),
        }
    }
}

impl DwarfIndex {
    /// The unit containing `die`.
    fn unit_of<'a>(
        &self,
        debug_info: &gimli::DebugInfo<R<'a>>,
        die: DebugInfoOffset,
    ) -> gimli::Result<Header<'a>> {
        let i = self.units.partition_point(|&start| start <= die.0);
        let start = i
            .checked_sub(1)
            .and_then(|i| self.units.get(i))
            .ok_or(gimli::Error::NoEntryAtGivenOffset(die.0 as u64))?;
        debug_info.header_from_offset(DebugInfoOffset(*start))
    }
}

fn natural_align(size: u64) -> u64 {
    match size {
        0 => 1,
        s if s >= 8 => 8,
        s if s.is_power_of_two() => s,
        _ => 1,
    }
}

fn udata(value: Option<AttributeValue<R<'_>>>) -> Option<u64> {
    value.and_then(|v| v.udata_value())
}

/// `DW_AT_data_member_location`: a constant, or (old producers) an
/// expression `DW_OP_plus_uconst N`.
fn member_offset(value: Option<AttributeValue<R<'_>>>) -> Option<u64> {
    let value = value?;
    if let Some(v) = value.udata_value() {
        return Some(v);
    }
    if let AttributeValue::Exprloc(expr) = value {
        let mut c = crate::cursor::Cursor::new(expr.0.slice());
        if c.read_u8().ok()? == gimli::DW_OP_plus_uconst.0 {
            return c.read_uvarint().ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_sections_are_bounded() {
        let payload = b"hello dwarf".repeat(10);
        let z = miniz_oxide::deflate::compress_to_vec_zlib(&payload, 6);
        let mut data = Vec::new();
        data.extend_from_slice(&1u32.to_le_bytes());
        data.extend_from_slice(&0u32.to_le_bytes());
        data.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        data.extend_from_slice(&1u64.to_le_bytes());
        data.extend_from_slice(&z);
        let raw = RawSection {
            name: ".debug_info",
            data: &data,
            compressed: true,
        };
        assert_eq!(&*section_bytes(&raw).unwrap(), &payload[..]);

        // Declared size too small: the limit stops decompression.
        let mut short = data.clone();
        short[8..16].copy_from_slice(&10u64.to_le_bytes());
        let raw = RawSection {
            name: ".debug_info",
            data: &short,
            compressed: true,
        };
        assert!(matches!(
            section_bytes(&raw),
            Err(DwarfError::Decompress { .. })
        ));

        // Declared size absurd: refused before allocating.
        let mut huge = data.clone();
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        let raw = RawSection {
            name: ".debug_info",
            data: &huge,
            compressed: true,
        };
        assert!(matches!(
            section_bytes(&raw),
            Err(DwarfError::TooLarge { .. })
        ));

        let raw = RawSection {
            name: ".debug_info",
            data: &data[..10],
            compressed: true,
        };
        assert!(matches!(
            section_bytes(&raw),
            Err(DwarfError::Truncated { .. })
        ));
        let mut zstd = data.clone();
        zstd[0] = 2;
        let raw = RawSection {
            name: ".debug_info",
            data: &zstd,
            compressed: true,
        };
        assert!(matches!(
            section_bytes(&raw),
            Err(DwarfError::UnsupportedCompression { ch_type: 2, .. })
        ));
    }

    #[test]
    fn member_offsets_from_constants_and_expressions() {
        assert_eq!(member_offset(Some(AttributeValue::Udata(24))), Some(24));
        let expr = EndianSlice::new(&[0x23u8, 0x98, 0x01][..], LittleEndian);
        assert_eq!(
            member_offset(Some(AttributeValue::Exprloc(gimli::Expression(expr)))),
            Some(152)
        );
        assert_eq!(member_offset(None), None);
        assert_eq!(natural_align(4), 4);
        assert_eq!(natural_align(16), 8);
        assert_eq!(natural_align(3), 1);
    }
}
