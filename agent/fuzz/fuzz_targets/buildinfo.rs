//! Fuzzes the Go build-info reader (`binary::buildinfo`): the input is a
//! data segment mapped at `BASE`, searched for the `\xff Go buildinf:`
//! magic as the agent searches a binary without a `.go.buildinfo` section;
//! the Go 1.17 pointer format reads its strings through the same mapping.
//!
//! Whatever the bytes, reading never panics; a build info it returns names
//! a Go version whose text is in the input and parses to the version
//! returned (which prints and parses back to itself), and module paths
//! that are in the input too.
#![no_main]

use agent::binary::buildinfo::{BuildInfoError, GoVersion, find_magic, parse};
use libfuzzer_sys::fuzz_target;

/// Where the input is mapped.
const BASE: u64 = 0x4d_0000;

fn contains(haystack: &[u8], needle: &str) -> bool {
    needle.is_empty()
        || haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
}

/// Text taken from the input as is: present byte for byte unless the
/// lossy conversion replaced something.
fn check_from_input(data: &[u8], what: &str, text: &str) {
    if !text.contains('\u{fffd}') {
        assert!(contains(data, text), "{what} {text:?} is not in the input");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(at) = find_magic(data) else {
        return;
    };
    assert_eq!(at % 16, 0);
    let read = |vaddr: u64, len: u64| -> Option<&[u8]> {
        let start = usize::try_from(vaddr.checked_sub(BASE)?).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        data.get(start..end)
    };
    let blob = &data[at..];
    let info = match parse(blob, &read) {
        Ok(info) => info,
        Err(BuildInfoError::Unmapped { offset, .. }) => {
            assert!(offset < blob.len(), "pointer at {offset}, past the blob");
            return;
        }
        Err(BuildInfoError::BadVersion { raw }) => {
            assert_eq!(GoVersion::parse(&raw), None, "{raw:?} does parse");
            return;
        }
        Err(_) => return,
    };
    let raw = &info.go_version_raw;
    assert!(!raw.is_empty());
    check_from_input(data, "Go version", raw);
    assert_eq!(GoVersion::parse(raw), Some(info.go_version), "{raw:?}");
    let printed = info.go_version.to_string();
    assert_eq!(
        GoVersion::parse(&printed),
        Some(info.go_version),
        "{printed:?}"
    );

    check_from_input(data, "main package", &info.main_package);
    let modules = std::iter::once(&info.main).chain(&info.deps);
    for m in modules.flat_map(|m| std::iter::once(m).chain(m.replace.as_deref())) {
        check_from_input(data, "module path", &m.path);
        check_from_input(data, "module version", &m.version);
        check_from_input(data, "module sum", &m.sum);
        for s in [&m.path, &m.version, &m.sum] {
            assert!(!s.contains(['\t', '\n']), "{s:?}");
        }
    }
    for (key, _) in &info.settings {
        assert!(!key.is_empty() || info.setting("").is_some());
    }
});
