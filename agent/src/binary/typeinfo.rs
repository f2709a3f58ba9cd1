//! Struct layouts from Go's own runtime type metadata, for binaries without
//! DWARF whose Go release the offsets table does not know.
//!
//! Every struct type the program can allocate on the heap, convert to an
//! interface or reflect on has a type descriptor (`abi.StructType`,
//! `runtime.structtype` before Go 1.21) in the module's `types` region: its
//! size, and for every field its name, its type's descriptor (size and
//! alignment) and its offset, exactly as the compiler laid it out. The
//! region is `[moduledata.types, moduledata.etypes)`; names and field lists
//! live inside it, and type names are `NameOff`s from `types`.
//!
//! Named types are not listed anywhere (typelinks hold only unnamed types,
//! and Go 1.27 dropped typelinks), so the region is scanned: every 8-byte
//! aligned position whose kind byte says struct, whose flags say named with
//! an uncommon part, whose name is one we want and whose uncommon part's
//! package path is the right one. A descriptor is accepted only when its
//! field list is consistent: offsets ascending, each field inside the
//! struct and aligned to its type's alignment.
//!
//! Layouts (internal/abi/type.go, runtime/type.go before 1.21):
//! `Type` is 48 bytes (`Size_` at 0, `TFlag` at 20, `Align_` at 21, `Kind_`
//! at 23, `Str` at 40); `StructType` adds `PkgPath Name` at 48 and `Fields
//! []StructField` at 56 (80 bytes); its `UncommonType` follows at 80
//! (`PkgPath NameOff` first). A `StructField` is `Name` (a pointer to the
//! name bytes), `Typ *Type` and `Offset` (Go 1.17 and 1.18: `offsetAnon`,
//! the offset shifted left by one). A name is a flags byte, a uvarint length
//! and the bytes (Go 1.17+). In PIE the pointer words are filled by
//! `R_X86_64_RELATIVE` relocations, whose addends are read instead.

use std::collections::{BTreeMap, HashMap};

use super::buildinfo::GoVersion;
use super::dwarf::{Member, StructLayout};

const TYPE_SIZE: u64 = 0;
const TYPE_TFLAG: u64 = 20;
const TYPE_ALIGN: u64 = 21;
const TYPE_KIND: u64 = 23;
const TYPE_STR: u64 = 40;
const STRUCT_FIELDS: u64 = 56;
const STRUCT_UNCOMMON: u64 = 80;
const FIELD_SIZE: u64 = 24;
const KIND_MASK: u8 = 0x1f;
const KIND_STRUCT: u8 = 25;
const TFLAG_UNCOMMON: u8 = 1 << 0;
const TFLAG_EXTRA_STAR: u8 = 1 << 1;
const TFLAG_NAMED: u8 = 1 << 2;
/// More fields than this is not a struct the agent reads.
const MAX_FIELDS: u64 = 4096;
/// Names longer than this are not type or field names.
const MAX_NAME: u64 = 4096;
/// A `types` region larger than this is not one.
const MAX_REGION: u64 = 512 << 20;

/// The word indices of `types` and `etypes` in `runtime.moduledata`, per
/// layout: Go 1.17-1.19, 1.20-1.26 (`covctrs` added), 1.27 (`typedesclen`
/// between them). The binary's release picks the first to try; the others
/// are tried after it (a toolchain fork or a newer release), and a layout
/// is used only if its region holds the descriptors asked for.
pub const MODULEDATA_TYPES_WORDS: [(u64, u64); 3] = [(37, 39), (37, 38), (35, 36)];

/// The layouts to try for `go`, most likely first.
pub fn moduledata_layouts(go: GoVersion) -> Vec<(u64, u64)> {
    let first = if (go.major, go.minor) >= (1, 27) {
        0
    } else if (go.major, go.minor) >= (1, 20) {
        1
    } else {
        2
    };
    let mut out = vec![MODULEDATA_TYPES_WORDS[first]];
    out.extend(
        MODULEDATA_TYPES_WORDS
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != first)
            .map(|(_, w)| *w),
    );
    out
}

/// The `types` region as the program sees it.
pub struct Region<'a> {
    /// Link-time address of `bytes[0]` (`moduledata.types`).
    pub base: u64,
    pub bytes: &'a [u8],
    /// `R_X86_64_RELATIVE` relocations (target address to addend): PIE.
    pub relocs: &'a HashMap<u64, u64>,
    /// Go 1.17 and 1.18 store `offset << 1 | embedded`.
    pub shifted_offsets: bool,
}

/// Why a struct's layout could not be read from type metadata.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TypeInfoError {
    #[error("no type descriptor for {0} in this binary")]
    NoDescriptor(String),
    #[error("the type descriptor of {type_name} is inconsistent: {why}")]
    Inconsistent { type_name: String, why: String },
    #[error("{type_name} has two type descriptors with different layouts")]
    Ambiguous { type_name: String },
}

impl Region<'_> {
    fn bytes_at(&self, addr: u64, len: u64) -> Option<&[u8]> {
        let start = usize::try_from(addr.checked_sub(self.base)?).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        self.bytes.get(start..end)
    }

    fn u8(&self, addr: u64) -> Option<u8> {
        self.bytes_at(addr, 1).map(|b| b[0])
    }

    fn i32(&self, addr: u64) -> Option<i32> {
        Some(i32::from_le_bytes(self.bytes_at(addr, 4)?.try_into().ok()?))
    }

    /// A pointer-sized word: the relocation's addend when there is one.
    fn word(&self, addr: u64) -> Option<u64> {
        let raw = u64::from_le_bytes(self.bytes_at(addr, 8)?.try_into().ok()?);
        Some(self.relocs.get(&addr).copied().unwrap_or(raw))
    }

    /// The name at `addr`: (flags, text).
    fn name(&self, addr: u64) -> Option<(u8, &str)> {
        let head = self.bytes_at(addr, 1)?[0];
        let start = usize::try_from(addr.checked_sub(self.base)?).ok()? + 1;
        let rest = self.bytes.get(start..(start + 10).min(self.bytes.len()))?;
        let (len, n) = crate::cursor::uvarint(rest).ok()?;
        if len > MAX_NAME {
            return None;
        }
        let text = self.bytes_at(addr.checked_add(1 + n as u64)?, len)?;
        Some((head, std::str::from_utf8(text).ok()?))
    }

    fn name_off(&self, off: i32) -> Option<(u8, &str)> {
        self.name(self.base.checked_add_signed(i64::from(off))?)
    }

    /// The type name of the descriptor at `addr` (without the extra star).
    fn type_name(&self, addr: u64) -> Option<&str> {
        let tflag = self.u8(addr + TYPE_TFLAG)?;
        let (_, name) = self.name_off(self.i32(addr + TYPE_STR)?)?;
        Some(if tflag & TFLAG_EXTRA_STAR != 0 {
            name.strip_prefix('*')?
        } else {
            name
        })
    }

    /// The layout of the struct descriptor at `addr`, checked.
    fn layout(&self, addr: u64, type_name: &str) -> Result<StructLayout, TypeInfoError> {
        let bad = |why: String| TypeInfoError::Inconsistent {
            type_name: type_name.to_owned(),
            why,
        };
        let size = self
            .word(addr + TYPE_SIZE)
            .ok_or_else(|| bad("size unreadable".into()))?;
        let ptr = self.word(addr + STRUCT_FIELDS);
        let len = self.word(addr + STRUCT_FIELDS + 8);
        let cap = self.word(addr + STRUCT_FIELDS + 16);
        let (Some(ptr), Some(len), Some(cap)) = (ptr, len, cap) else {
            return Err(bad("field list unreadable".into()));
        };
        if len != cap || len > MAX_FIELDS {
            return Err(bad(format!("field list of length {len}, capacity {cap}")));
        }
        let mut members = Vec::new();
        let mut last = 0;
        for i in 0..len {
            let f = ptr + i * FIELD_SIZE;
            let name = self
                .word(f)
                .and_then(|n| self.name(n))
                .map(|(_, n)| n)
                .ok_or_else(|| bad(format!("field {i}: name unreadable")))?;
            let typ = self
                .word(f + 8)
                .ok_or_else(|| bad(format!("field {name}: type unreadable")))?;
            let raw = self
                .word(f + 16)
                .ok_or_else(|| bad(format!("field {name}: offset unreadable")))?;
            let offset = if self.shifted_offsets { raw >> 1 } else { raw };
            let fsize = self
                .word(typ + TYPE_SIZE)
                .ok_or_else(|| bad(format!("field {name}: type size unreadable")))?;
            let align = u64::from(
                self.u8(typ + TYPE_ALIGN)
                    .ok_or_else(|| bad(format!("field {name}: alignment unreadable")))?,
            );
            if offset < last {
                return Err(bad(format!(
                    "field {name} at {offset} comes before the previous one at {last}"
                )));
            }
            if fsize > 0 && offset.checked_add(fsize).is_none_or(|end| end > size) {
                return Err(bad(format!(
                    "field {name} ({offset}+{fsize}) runs past the {size}-byte struct"
                )));
            }
            if align == 0 || !align.is_power_of_two() || !offset.is_multiple_of(align) {
                return Err(bad(format!(
                    "field {name} at {offset} is not aligned to {align}"
                )));
            }
            last = offset;
            members.push((
                name.to_owned(),
                Member {
                    offset,
                    size: fsize,
                    align,
                },
            ));
        }
        Ok(StructLayout { size, members })
    }
}

/// `net/http.Request` -> (`net/http`, [`http.Request`]): the package path
/// and the names the runtime may give the type. The runtime names a type
/// by its package's name, which is the path's last element except for a
/// major-version suffix (`github.com/labstack/echo/v4` is package `echo`,
/// `gopkg.in/yaml.v3` package `yaml`); the package path in the
/// descriptor's uncommon part tells the candidates apart.
fn runtime_names(type_name: &str) -> Option<(&str, Vec<String>)> {
    let dot = type_name.rfind('.')?;
    let (pkg, name) = (&type_name[..dot], &type_name[dot + 1..]);
    let mut elements = pkg.rsplit('/');
    let last = elements.next()?;
    let is_major = |s: &str| {
        s.strip_prefix('v')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let mut shorts = vec![last];
    if is_major(last)
        && let Some(before) = elements.next()
    {
        shorts.push(before);
    }
    if let Some((base, major)) = last.rsplit_once('.')
        && is_major(major)
    {
        shorts.push(base);
    }
    Some((pkg, shorts.iter().map(|s| format!("{s}.{name}")).collect()))
}

/// The layouts of `wanted` (`net/http.Request`, ...) from the struct
/// descriptors in `region`; every name gets its layout or why not.
pub fn struct_layouts(
    region: &Region<'_>,
    wanted: &[&str],
) -> BTreeMap<String, Result<StructLayout, TypeInfoError>> {
    let mut by_runtime_name: HashMap<String, Vec<(&str, &str)>> = HashMap::new();
    for &full in wanted {
        if let Some((pkg, names)) = runtime_names(full) {
            for name in names {
                by_runtime_name.entry(name).or_default().push((full, pkg));
            }
        }
    }
    let mut found: BTreeMap<String, Result<StructLayout, TypeInfoError>> = BTreeMap::new();
    let end = region.bytes.len() as u64;
    let mut at = 0;
    while at + STRUCT_UNCOMMON + 4 <= end {
        let b = &region.bytes[at as usize..];
        let (tflag, kind) = (b[TYPE_TFLAG as usize], b[TYPE_KIND as usize]);
        let addr = region.base + at;
        at += 8;
        if kind & KIND_MASK != KIND_STRUCT
            || tflag & (TFLAG_NAMED | TFLAG_UNCOMMON) != (TFLAG_NAMED | TFLAG_UNCOMMON)
        {
            continue;
        }
        let Some(candidates) = region.type_name(addr).and_then(|n| by_runtime_name.get(n)) else {
            continue;
        };
        let Some((_, pkg)) = region
            .i32(addr + STRUCT_UNCOMMON)
            .and_then(|off| region.name_off(off))
        else {
            continue;
        };
        let Some(&(full, _)) = candidates.iter().find(|(_, p)| *p == pkg) else {
            continue;
        };
        let layout = region.layout(addr, full);
        match found.get(full) {
            None => {
                found.insert(full.to_owned(), layout);
            }
            Some(Ok(prev)) if layout.as_ref().is_ok_and(|l| l == prev) => {}
            Some(Ok(_)) if layout.is_err() => {}
            Some(Err(_)) if layout.is_ok() => {
                found.insert(full.to_owned(), layout);
            }
            Some(_) => {
                found.insert(
                    full.to_owned(),
                    Err(TypeInfoError::Ambiguous {
                        type_name: full.to_owned(),
                    }),
                );
            }
        }
    }
    for &full in wanted {
        found
            .entry(full.to_owned())
            .or_insert_with(|| Err(TypeInfoError::NoDescriptor(full.to_owned())));
    }
    found
}

/// Whether `(types, etypes)` read from a moduledata candidate can be a
/// `types` region.
pub fn plausible_region(types: u64, etypes: u64) -> bool {
    types != 0 && types < etypes && etypes - types <= MAX_REGION
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_names_follow_the_package_name() {
        let names = |t| runtime_names(t).map(|(pkg, n)| (pkg.to_owned(), n));
        assert_eq!(
            names("net/http.Request"),
            Some(("net/http".into(), vec!["http.Request".into()]))
        );
        assert_eq!(
            names("github.com/labstack/echo/v4.context"),
            Some((
                "github.com/labstack/echo/v4".into(),
                vec!["v4.context".into(), "echo.context".into()]
            ))
        );
        assert_eq!(
            names("gopkg.in/yaml.v3.Node"),
            Some((
                "gopkg.in/yaml.v3".into(),
                vec!["yaml.v3.Node".into(), "yaml.Node".into()]
            ))
        );
        assert_eq!(names("nodot"), None);
    }

    /// A hand-made region: a name table and one struct descriptor with two
    /// fields (as a Go 1.19+ linker lays it out).
    fn image(shifted: bool, bad_order: bool) -> (Vec<u8>, u64) {
        let base = 0x1000u64;
        let mut b = vec![0u8; 0x400];
        let put_name = |b: &mut Vec<u8>, at: usize, s: &str| {
            b[at] = 0;
            b[at + 1] = s.len() as u8;
            b[at + 2..at + 2 + s.len()].copy_from_slice(s.as_bytes());
        };
        put_name(&mut b, 0x10, "*http.Request");
        put_name(&mut b, 0x30, "net/http");
        put_name(&mut b, 0x40, "Method");
        put_name(&mut b, 0x50, "URL");
        // A u64 type descriptor at 0x80.
        b[0x80..0x88].copy_from_slice(&8u64.to_le_bytes());
        b[0x80 + 21] = 8;
        // The struct at 0x100: 48 bytes.
        let d = 0x100;
        b[d..d + 8].copy_from_slice(&48u64.to_le_bytes());
        b[d + 20] = TFLAG_NAMED | TFLAG_UNCOMMON | TFLAG_EXTRA_STAR;
        b[d + 21] = 8;
        b[d + 23] = KIND_STRUCT;
        b[d + 40..d + 44].copy_from_slice(&0x10i32.to_le_bytes());
        let fields = base + 0x200;
        b[d + 56..d + 64].copy_from_slice(&fields.to_le_bytes());
        b[d + 64..d + 72].copy_from_slice(&2u64.to_le_bytes());
        b[d + 72..d + 80].copy_from_slice(&2u64.to_le_bytes());
        b[d + 80..d + 84].copy_from_slice(&0x30i32.to_le_bytes());
        let offsets: [u64; 2] = if bad_order { [16, 8] } else { [8, 16] };
        for (i, (name, off)) in [(0x40u64, offsets[0]), (0x50, offsets[1])]
            .into_iter()
            .enumerate()
        {
            let f = 0x200 + i * 24;
            b[f..f + 8].copy_from_slice(&(base + name).to_le_bytes());
            b[f + 8..f + 16].copy_from_slice(&(base + 0x80).to_le_bytes());
            let raw = if shifted { off << 1 } else { off };
            b[f + 16..f + 24].copy_from_slice(&raw.to_le_bytes());
        }
        (b, base)
    }

    #[test]
    fn reads_a_struct_descriptor() {
        for shifted in [false, true] {
            let (bytes, base) = image(shifted, false);
            let relocs = HashMap::new();
            let region = Region {
                base,
                bytes: &bytes,
                relocs: &relocs,
                shifted_offsets: shifted,
            };
            let got = struct_layouts(&region, &["net/http.Request", "net/url.URL"]);
            let req = got["net/http.Request"].as_ref().unwrap();
            assert_eq!(req.size, 48);
            assert_eq!(
                req.members
                    .iter()
                    .map(|(n, m)| (n.as_str(), m.offset))
                    .collect::<Vec<_>>(),
                [("Method", 8), ("URL", 16)]
            );
            assert_eq!(
                got["net/url.URL"],
                Err(TypeInfoError::NoDescriptor("net/url.URL".into()))
            );
        }
    }

    #[test]
    fn wrong_package_or_bad_order_is_refused() {
        let (bytes, base) = image(false, false);
        let relocs = HashMap::new();
        let region = Region {
            base,
            bytes: &bytes,
            relocs: &relocs,
            shifted_offsets: false,
        };
        // Same runtime name, another package.
        let got = struct_layouts(&region, &["example.com/http.Request"]);
        assert!(got["example.com/http.Request"].is_err());

        let (bytes, base) = image(false, true);
        let region = Region {
            base,
            bytes: &bytes,
            relocs: &relocs,
            shifted_offsets: false,
        };
        let got = struct_layouts(&region, &["net/http.Request"]);
        assert!(matches!(
            got["net/http.Request"],
            Err(TypeInfoError::Inconsistent { .. })
        ));
    }

    #[test]
    fn layouts_by_release() {
        assert_eq!(moduledata_layouts(GoVersion::new(1, 27, 4))[0], (37, 39));
        assert_eq!(moduledata_layouts(GoVersion::new(1, 26, 8))[0], (37, 38));
        assert_eq!(moduledata_layouts(GoVersion::new(1, 17, 13))[0], (35, 36));
        assert_eq!(moduledata_layouts(GoVersion::new(1, 30, 0)).len(), 3);
    }
}
