//! `.go.buildinfo`: the Go version, the main module, its dependencies and the
//! build settings. Present in every Go binary since 1.13, stripped or not;
//! parsed here for Go 1.17 (pointers to Go strings) and 1.18+ (inline varint
//! strings).

use crate::cursor::{Cursor, ReadError};
use serde::Serialize;

/// `\xff Go buildinf:`, at a 16-byte aligned address.
pub const MAGIC: &[u8; 14] = b"\xff Go buildinf:";
const HEADER_SIZE: usize = 32;
const FLAG_BIG_ENDIAN: u8 = 1;
const FLAG_INLINE_STRINGS: u8 = 2;
/// Longest string accepted through a pointer (the Go 1.17 format); larger
/// lengths are corrupt, not data.
const MAX_POINTED_STRING: u64 = 16 << 20;

/// What the binary says about how it was built.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BuildInfo {
    pub go_version: GoVersion,
    /// As written in the binary, e.g. `go1.22.12` or `go1.24.0 X:nocoverageredesign`.
    pub go_version_raw: String,
    /// The main package's import path (`path` line), e.g. `example.com/cmd/server`.
    pub main_package: String,
    pub main: Module,
    pub deps: Vec<Module>,
    /// `build` lines (Go 1.18+): `-ldflags`, `GOARCH`, `CGO_ENABLED`, `vcs.revision`...
    pub settings: Vec<(String, String)>,
}

impl BuildInfo {
    /// A build setting by key (`CGO_ENABLED`, `-buildmode`, ...).
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.settings
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A dependency by module path (after replacement, the original path).
    pub fn dep(&self, path: &str) -> Option<&Module> {
        self.deps.iter().find(|m| m.path == path)
    }
}

/// A module as recorded by the Go linker.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Module {
    pub path: String,
    /// `(devel)` for the main module of a `go build` in a work tree.
    pub version: String,
    /// `h1:` hash; empty for the main module and for replaced modules.
    pub sum: String,
    /// The `=>` replacement, if the module was replaced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replace: Option<Box<Module>>,
}

/// A Go release: `go1.22.12` is 1.22.12; `go1.21rc2` is 1.21.0.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash, Serialize)]
pub struct GoVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl GoVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        GoVersion {
            major,
            minor,
            patch,
        }
    }

    /// Parses `go1.22.12`, `go1.21rc2`, `1.20`, `devel go1.24-abcdef ...`,
    /// `go1.24.0 X:boringcrypto`. Anything else is `None`.
    pub fn parse(raw: &str) -> Option<GoVersion> {
        let s = raw.trim();
        let s = s.strip_prefix("devel ").unwrap_or(s);
        let s = s.strip_prefix("go").unwrap_or(s);
        let mut parts = [0u32; 3];
        let mut rest = s;
        for (i, part) in parts.iter_mut().enumerate() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                if i < 2 {
                    return None;
                }
                break;
            }
            *part = rest[..digits].parse().ok()?;
            rest = &rest[digits..];
            match rest.strip_prefix('.') {
                Some(r) if i < 2 => rest = r,
                _ => {
                    if i == 0 {
                        return None;
                    }
                    break;
                }
            }
        }
        Some(GoVersion::new(parts[0], parts[1], parts[2]))
    }
}

impl std::fmt::Display for GoVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Why `.go.buildinfo` could not be read. Offsets are relative to the start
/// of the build-info blob (the magic).
#[derive(Debug, thiserror::Error)]
pub enum BuildInfoError {
    #[error("no Go build-info magic")]
    NoMagic,
    #[error("truncated build info")]
    Truncated(#[source] ReadError),
    #[error("unsupported pointer size {ptr_size} at byte 14")]
    BadPointerSize { ptr_size: u8 },
    #[error("big-endian build info is not supported (x86-64 only)")]
    BigEndian,
    #[error(
        "build-info pointer at byte {offset} ({vaddr:#x}) is not mapped by any PT_LOAD segment"
    )]
    Unmapped { offset: usize, vaddr: u64 },
    #[error("Go version string is empty")]
    EmptyVersion,
    #[error("unrecognised Go version {raw:?}")]
    BadVersion { raw: String },
}

impl From<ReadError> for BuildInfoError {
    fn from(e: ReadError) -> Self {
        BuildInfoError::Truncated(e)
    }
}

/// Finds the magic at a 16-byte aligned offset in `data` (how Go's
/// `debug/buildinfo` searches a data segment when there is no section).
pub fn find_magic(data: &[u8]) -> Option<usize> {
    (0..data.len())
        .step_by(16)
        .find(|&i| data.get(i..i + MAGIC.len()) == Some(&MAGIC[..]))
}

/// Parses the blob starting at the magic. `read_vaddr(vaddr, len)` returns
/// the bytes the program would see at `vaddr` (for the Go 1.17 format).
pub fn parse<'a>(
    blob: &'a [u8],
    read_vaddr: &dyn Fn(u64, u64) -> Option<&'a [u8]>,
) -> Result<BuildInfo, BuildInfoError> {
    let (version, modinfo) = raw_strings(blob, read_vaddr)?;
    if version.is_empty() {
        return Err(BuildInfoError::EmptyVersion);
    }
    let go_version_raw = String::from_utf8_lossy(version).into_owned();
    let go_version =
        GoVersion::parse(&go_version_raw).ok_or_else(|| BuildInfoError::BadVersion {
            raw: go_version_raw.clone(),
        })?;
    // The module info is framed by two 16-byte sentinels; without them it
    // is empty (a binary built outside module mode).
    let modinfo = if modinfo.len() >= 33 && modinfo[modinfo.len() - 17] == b'\n' {
        &modinfo[16..modinfo.len() - 16]
    } else {
        &[][..]
    };
    let mut info = BuildInfo {
        go_version,
        go_version_raw,
        main_package: String::new(),
        main: Module::default(),
        deps: Vec::new(),
        settings: Vec::new(),
    };
    parse_modinfo(&String::from_utf8_lossy(modinfo), &mut info);
    Ok(info)
}

fn raw_strings<'a>(
    blob: &'a [u8],
    read_vaddr: &dyn Fn(u64, u64) -> Option<&'a [u8]>,
) -> Result<(&'a [u8], &'a [u8]), BuildInfoError> {
    let mut c = Cursor::new(blob);
    if c.read_bytes(MAGIC.len())? != MAGIC {
        return Err(BuildInfoError::NoMagic);
    }
    let ptr_size = c.read_u8()?;
    let flags = c.read_u8()?;
    if flags & FLAG_INLINE_STRINGS != 0 {
        let mut c = Cursor::at(blob, HEADER_SIZE);
        let version = read_varint_string(&mut c)?;
        let modinfo = read_varint_string(&mut c)?;
        return Ok((version, modinfo));
    }
    if flags & FLAG_BIG_ENDIAN != 0 {
        return Err(BuildInfoError::BigEndian);
    }
    if ptr_size != 4 && ptr_size != 8 {
        return Err(BuildInfoError::BadPointerSize { ptr_size });
    }
    let version_at = c.pos();
    let version_hdr = c.read_word(ptr_size)?;
    let modinfo_at = c.pos();
    let modinfo_hdr = c.read_word(ptr_size)?;
    let version = read_pointed_string(version_at, version_hdr, ptr_size, read_vaddr)?;
    let modinfo = read_pointed_string(modinfo_at, modinfo_hdr, ptr_size, read_vaddr)?;
    Ok((version, modinfo))
}

fn read_varint_string<'a>(c: &mut Cursor<'a>) -> Result<&'a [u8], BuildInfoError> {
    let at = c.offset();
    let len = c.read_uvarint()?;
    let len = usize::try_from(len).map_err(|_| ReadError::Eof {
        offset: at,
        wanted: usize::MAX,
    })?;
    Ok(c.read_bytes(len)?)
}

/// A Go string header (`ptr`, `len`) at `hdr_vaddr`, then its bytes.
fn read_pointed_string<'a>(
    offset: usize,
    hdr_vaddr: u64,
    ptr_size: u8,
    read_vaddr: &dyn Fn(u64, u64) -> Option<&'a [u8]>,
) -> Result<&'a [u8], BuildInfoError> {
    let hdr = read_vaddr(hdr_vaddr, 2 * u64::from(ptr_size)).ok_or(BuildInfoError::Unmapped {
        offset,
        vaddr: hdr_vaddr,
    })?;
    let mut c = Cursor::new(hdr);
    let data = c.read_word(ptr_size)?;
    let len = c.read_word(ptr_size)?;
    if len == 0 {
        return Ok(&[]);
    }
    if len > MAX_POINTED_STRING {
        return Err(BuildInfoError::Unmapped {
            offset,
            vaddr: data,
        });
    }
    read_vaddr(data, len).ok_or(BuildInfoError::Unmapped {
        offset,
        vaddr: data,
    })
}

/// The text `runtime/debug.BuildInfo.String` produces, minus the sentinels.
fn parse_modinfo(text: &str, info: &mut BuildInfo) {
    // Which module a `=>` line replaces: the main module or the last dep.
    let mut last_is_main = false;
    for line in text.lines() {
        let Some((key, rest)) = line.split_once('\t') else {
            continue;
        };
        match key {
            "path" => info.main_package = rest.to_owned(),
            "mod" => {
                info.main = parse_module(rest);
                last_is_main = true;
            }
            "dep" => {
                info.deps.push(parse_module(rest));
                last_is_main = false;
            }
            "=>" => {
                let replacement = Some(Box::new(parse_module(rest)));
                if last_is_main {
                    info.main.replace = replacement;
                } else if let Some(dep) = info.deps.last_mut() {
                    dep.replace = replacement;
                }
            }
            "build" => {
                if let Some(setting) = parse_setting(rest) {
                    info.settings.push(setting);
                }
            }
            _ => {}
        }
    }
}

fn parse_module(rest: &str) -> Module {
    let mut fields = rest.split('\t');
    Module {
        path: fields.next().unwrap_or_default().to_owned(),
        version: fields.next().unwrap_or_default().to_owned(),
        sum: fields.next().unwrap_or_default().to_owned(),
        replace: None,
    }
}

/// `key=value`, where either side may be a Go-quoted string.
fn parse_setting(rest: &str) -> Option<(String, String)> {
    let (key, value) = if let Some(quoted) = rest.strip_prefix('"') {
        let (key, after) = unquote_prefix(quoted)?;
        (key, after.strip_prefix('=')?.to_owned())
    } else {
        let (k, v) = rest.split_once('=')?;
        (k.to_owned(), v.to_owned())
    };
    let value = match value.strip_prefix('"') {
        Some(quoted) => unquote_prefix(quoted)?.0,
        None => value,
    };
    Some((key, value))
}

/// Reads a Go-quoted string body up to its closing quote; returns the
/// unquoted text and what follows the quote.
fn unquote_prefix(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, ch)) = chars.next() {
        match ch {
            '"' => return Some((out, &s[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                other => out.push(other),
            },
            _ => out.push(ch),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: &[u8; 16] = b"0w\xaf\x0c\x92t\x08\x02A\xe1\xc1\x07\xe6\xd6\x18\xe6";
    const END: &[u8; 16] = b"\xf92C1\x86\x18 r\x00\x82B\x10A\x16\xd8\xf2";

    fn framed(text: &str) -> Vec<u8> {
        let mut v = START.to_vec();
        v.extend_from_slice(text.as_bytes());
        v.extend_from_slice(END);
        v
    }

    const MODINFO: &str = "path\texample.com/app\n\
        mod\texample.com/app\t(devel)\t\n\
        dep\tgolang.org/x/net\tv0.20.0\th1:abc=\n\
        dep\texample.com/old\tv1.0.0\t\n\
        =>\t../local\t(devel)\t\n\
        build\t-buildmode=exe\n\
        build\t-ldflags=\"-s -w\"\n\
        build\t\"weird key\"=v\n\
        build\tCGO_ENABLED=0\n";

    fn no_memory<'a>() -> impl Fn(u64, u64) -> Option<&'a [u8]> {
        |_, _| None
    }

    fn inline_blob(version: &str, modinfo: &[u8]) -> Vec<u8> {
        let mut blob = MAGIC.to_vec();
        blob.push(8);
        blob.push(FLAG_INLINE_STRINGS);
        blob.resize(HEADER_SIZE, 0);
        blob.push(version.len() as u8);
        blob.extend_from_slice(version.as_bytes());
        // Two-byte varint length: the module info is longer than 127 bytes.
        let len = modinfo.len();
        assert!((128..16384).contains(&len));
        blob.push((len as u8 & 0x7f) | 0x80);
        blob.push((len >> 7) as u8);
        blob.extend_from_slice(modinfo);
        blob
    }

    #[test]
    fn inline_format_go118() {
        let blob = inline_blob("go1.22.12", &framed(MODINFO));
        let info = parse(&blob, &no_memory()).unwrap();
        assert_eq!(info.go_version, GoVersion::new(1, 22, 12));
        assert_eq!(info.go_version_raw, "go1.22.12");
        assert_eq!(info.main_package, "example.com/app");
        assert_eq!(info.main.path, "example.com/app");
        assert_eq!(info.main.version, "(devel)");
        assert_eq!(info.deps.len(), 2);
        assert_eq!(info.deps[0].version, "v0.20.0");
        assert_eq!(info.deps[0].sum, "h1:abc=");
        assert_eq!(info.deps[1].replace.as_ref().unwrap().path, "../local");
        assert_eq!(info.setting("-ldflags"), Some("-s -w"));
        assert_eq!(info.setting("weird key"), Some("v"));
        assert_eq!(info.setting("CGO_ENABLED"), Some("0"));
        assert_eq!(info.settings.len(), 4);
    }

    #[test]
    fn pointer_format_go117() {
        // Memory: string headers at 0x1000, 0x1010; bytes at 0x2000, 0x3000.
        let version = b"go1.17.13".to_vec();
        let modinfo = framed(MODINFO);
        let mut hdrs = Vec::new();
        hdrs.extend_from_slice(&0x2000u64.to_le_bytes());
        hdrs.extend_from_slice(&(version.len() as u64).to_le_bytes());
        hdrs.extend_from_slice(&0x3000u64.to_le_bytes());
        hdrs.extend_from_slice(&(modinfo.len() as u64).to_le_bytes());
        let regions: Vec<(u64, &[u8])> =
            vec![(0x1000, &hdrs), (0x2000, &version), (0x3000, &modinfo)];
        let read = |vaddr: u64, len: u64| -> Option<&[u8]> {
            regions.iter().find_map(|&(base, bytes)| {
                let start = usize::try_from(vaddr.checked_sub(base)?).ok()?;
                bytes.get(start..start.checked_add(usize::try_from(len).ok()?)?)
            })
        };
        let mut blob = MAGIC.to_vec();
        blob.push(8);
        blob.push(0);
        blob.extend_from_slice(&0x1000u64.to_le_bytes());
        blob.extend_from_slice(&0x1010u64.to_le_bytes());
        let info = parse(&blob, &read).unwrap();
        assert_eq!(info.go_version, GoVersion::new(1, 17, 13));
        assert_eq!(info.main.path, "example.com/app");
        assert_eq!(info.deps[0].path, "golang.org/x/net");

        // A header pointing nowhere is an error naming the offset.
        let mut bad = blob.clone();
        bad[16..24].copy_from_slice(&0x9999u64.to_le_bytes());
        match parse(&bad, &read) {
            Err(BuildInfoError::Unmapped {
                offset: 16,
                vaddr: 0x9999,
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn corrupt_blobs_are_errors_not_panics() {
        let good = inline_blob("go1.22.12", &framed(MODINFO));
        for len in 0..good.len() {
            // Every truncation either fails or parses a prefix; none panics.
            let _ = parse(&good[..len], &no_memory());
        }
        let mut huge = good[..HEADER_SIZE].to_vec();
        huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert!(matches!(
            parse(&huge, &no_memory()),
            Err(BuildInfoError::Truncated(ReadError::Eof { offset: 42, .. }))
        ));
        assert!(matches!(
            parse(b"\xff Go buildinX:", &no_memory()),
            Err(BuildInfoError::NoMagic)
        ));
        let empty = inline_blob("", &framed(MODINFO));
        assert!(matches!(
            parse(&empty, &no_memory()),
            Err(BuildInfoError::EmptyVersion)
        ));
    }

    #[test]
    fn version_parsing() {
        let v = |s| GoVersion::parse(s);
        assert_eq!(v("go1.22.12"), Some(GoVersion::new(1, 22, 12)));
        assert_eq!(v("go1.21rc2"), Some(GoVersion::new(1, 21, 0)));
        assert_eq!(v("go1.20"), Some(GoVersion::new(1, 20, 0)));
        assert_eq!(v("go1.24.0 X:boringcrypto"), Some(GoVersion::new(1, 24, 0)));
        assert_eq!(v("devel go1.24-abcdef Tue"), Some(GoVersion::new(1, 24, 0)));
        assert_eq!(v("go1.26.8"), Some(GoVersion::new(1, 26, 8)));
        assert_eq!(v("gox"), None);
        assert_eq!(v("go1"), None);
        assert_eq!(v(""), None);
        assert!(GoVersion::new(1, 9, 0) < GoVersion::new(1, 10, 0));
        assert_eq!(GoVersion::new(1, 22, 3).to_string(), "1.22.3");
    }

    #[test]
    fn magic_search_is_aligned() {
        let mut data = vec![0u8; 64];
        data[8..22].copy_from_slice(MAGIC);
        assert_eq!(find_magic(&data), None);
        data[32..46].copy_from_slice(MAGIC);
        assert_eq!(find_magic(&data), Some(32));
    }
}
