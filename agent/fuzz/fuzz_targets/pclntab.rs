//! Fuzzes the `.gopclntab` reader (`binary::pclntab`), the function table
//! of stripped Go binaries. The first 8 input bytes are the text start the
//! agent would find elsewhere (the `runtime.text` symbol) for a 1.18+ table
//! whose header leaves it zero; the rest is the table.
//!
//! Whatever the bytes, parsing and reading never panic. A function read
//! has a name of the table's bytes without NUL, and (1.18+ layouts, whose
//! entries are 32-bit offsets) an entry within the 4 GiB of text from the
//! text start the table reports. When the table is sorted, as the linker
//! writes it, `lookup` finds each function at its entry and `find` by name.
#![no_main]

use agent::binary::pclntab::{PclnTab, PclnVersion};
use libfuzzer_sys::fuzz_target;

/// Functions checked per input (the table may claim millions).
const MAX_CHECKED: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((fallback, table)) = data.split_first_chunk::<8>() else {
        return;
    };
    let fallback = u64::from_le_bytes(*fallback);
    let Ok(tab) = PclnTab::parse(table, |_| Some(fallback)) else {
        return;
    };
    assert!(
        tab.len() <= table.len(),
        "{} functions in {} bytes",
        tab.len(),
        table.len()
    );
    let text = tab.text_start();
    let bytes = table.as_ptr_range();
    let mut funcs = Vec::new();
    for i in 0..tab.len().min(MAX_CHECKED) {
        let Ok(f) = tab.func(table, i) else {
            continue;
        };
        assert!(!f.name.contains(&0));
        let name = f.name.as_ptr_range();
        assert!(bytes.start <= name.start && name.end <= bytes.end);
        if tab.version != PclnVersion::Go116 {
            for pc in [f.entry, f.end] {
                let off = pc.checked_sub(text);
                assert!(
                    off.is_some_and(|o| o <= u64::from(u32::MAX)),
                    "function {i} at {pc:#x}, text from {text:#x}"
                );
            }
        }
        funcs.push((i, f));
    }
    // Sorted (what a real table is): each function found at its entry.
    let all_read = funcs.len() == tab.len();
    // (The last end is the table's end-of-text entry: in order too.)
    let sorted = funcs.iter().all(|(_, f)| f.entry <= f.end)
        && funcs.windows(2).all(|w| w[0].1.end == w[1].1.entry);
    if !(all_read && sorted) {
        return;
    }
    for (i, f) in &funcs {
        if f.entry < f.end {
            let found = tab
                .lookup(table, f.entry)
                .expect("lookup reads what func read");
            assert_eq!(found, Some(*f), "function {i} not found at its entry");
        }
        if let Ok(name) = std::str::from_utf8(f.name) {
            let found = tab.find(table, name).expect("find reads what func read");
            assert_eq!(found.map(|g| g.name), Some(f.name), "function {i}");
        }
    }
});
