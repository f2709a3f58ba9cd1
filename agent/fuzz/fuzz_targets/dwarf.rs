//! Fuzzes the DWARF struct-layout reader (`binary::dwarf`). The first
//! input byte picks what the rest is:
//!
//! - odd: one section for `section_bytes` (bit 1 clear: with an ELF
//!   compression header; set: a `.zdebug` section). A decompressed section
//!   has exactly the size its header declares; an uncompressed one is the
//!   input.
//! - even: two little-endian u32 lengths, then `.debug_info`,
//!   `.debug_abbrev` and (the rest) `.debug_str`, as a binary holds them
//!   after decompression. Whatever they hold, indexing and asking for the
//!   layout of every struct found never panic; members have a power-of-two
//!   alignment of at most 8, and asking for some fields gives those of the
//!   full layout.
#![no_main]

use std::sync::Arc;

use agent::binary::dwarf::{DwarfIndex, RawSection, section_bytes};
use libfuzzer_sys::fuzz_target;

/// Structs asked for per input.
const MAX_STRUCTS: usize = 64;

fn sections(data: &[u8]) {
    let Some((lens, rest)) = data.split_first_chunk::<8>() else {
        return;
    };
    let info_len = u32::from_le_bytes(lens[..4].try_into().unwrap()) as usize;
    let abbrev_len = u32::from_le_bytes(lens[4..].try_into().unwrap()) as usize;
    let info_len = info_len.min(rest.len());
    let (info, rest) = rest.split_at(info_len);
    let (abbrev, str) = rest.split_at(abbrev_len.min(rest.len()));
    let Ok(index) = DwarfIndex::load(|name| {
        Ok(Arc::from(match name {
            ".debug_info" => info,
            ".debug_abbrev" => abbrev,
            ".debug_str" => str,
            _ => &[][..],
        }))
    }) else {
        return;
    };
    let mut names: Vec<&str> = index.struct_names().collect();
    names.sort_unstable();
    for name in names.into_iter().take(MAX_STRUCTS) {
        let Ok(layout) = index.layout(name, &[]) else {
            continue;
        };
        let layout = layout.expect("a struct found by name has a layout");
        for (_, m) in &layout.members {
            assert!(
                matches!(m.align, 1 | 2 | 4 | 8),
                "{name}: align {}",
                m.align
            );
        }
        let Some((first, _)) = layout.members.first() else {
            continue;
        };
        let some = index
            .layout(name, &[first.as_str()])
            .expect("read once already")
            .expect("found once already");
        let expected: Vec<_> = layout
            .members
            .iter()
            .filter(|(n, _)| n == first)
            .cloned()
            .collect();
        assert_eq!(some.members, expected, "{name}");
        assert_eq!(some.size, layout.size);
    }
}

fn one_section(mode: u8, data: &[u8]) {
    let zdebug = mode & 2 != 0;
    let raw = RawSection {
        name: if zdebug {
            ".zdebug_info"
        } else {
            ".debug_info"
        },
        data,
        compressed: !zdebug,
    };
    let Ok(out) = section_bytes(&raw) else {
        return;
    };
    let declared = if zdebug {
        if !data.starts_with(b"ZLIB") {
            assert_eq!(&out[..], data);
            return;
        }
        u64::from_be_bytes(data[4..12].try_into().unwrap())
    } else {
        u64::from_le_bytes(data[8..16].try_into().unwrap())
    };
    assert_eq!(out.len() as u64, declared);
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((&mode, rest)) if mode & 1 == 1 => one_section(mode, rest),
        Some((_, rest)) => sections(rest),
        None => {}
    }
});
