//! Fuzzes the TOML mapping from USDT probe pairs to spans: whatever the
//! text, parsing and validation never panic, and an accepted mapping (with
//! the built-in mappings it adds) keeps the invariants the pairing engine
//! relies on: argument indices and string caps in range, the request id
//! declared on both sides with one type, no probe in two spans, every probe
//! found again by `find`, and the string arguments it asks the kernel side
//! to read within the probe's arguments.
#![no_main]

use agent::usdt;

use agent_common::usdt::{USDT_MAX_ARGS, USDT_STR_CAP_MAX};
use libfuzzer_sys::fuzz_target;
use usdt::{
    StringMode, UsdtProbe,
    mapping::{ArgType, MappingConfig, Role},
};

fn probe(provider: &str, name: &str) -> UsdtProbe {
    UsdtProbe {
        provider: provider.to_owned(),
        name: name.to_owned(),
        path: "/fuzz".into(),
        module: "/fuzz".to_owned(),
        file_offset: 0,
        vaddr: 0,
        semaphore: None,
        arg_text: String::new(),
        args: Vec::new(),
        args_error: None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        // `from_file` reads a `String`: non-UTF-8 files never get here.
        return;
    };
    let Ok(config) = MappingConfig::from_toml_str(text) else {
        return;
    };
    let strings = config.string_args();
    for (i, span) in config.spans.iter().enumerate() {
        for role in [Role::Start, Role::End] {
            let args = span.args(role);
            for arg in args {
                assert!((arg.index as usize) < USDT_MAX_ARGS);
                assert!(arg.cap >= 1 && arg.cap <= USDT_STR_CAP_MAX);
                if let ArgType::Bytes { len_index } = arg.ty {
                    assert!(args.iter().any(
                        |a| a.index == len_index && matches!(a.ty, ArgType::I64 | ArgType::U64)
                    ));
                }
            }
            // One name and one index per argument.
            for (j, a) in args.iter().enumerate() {
                assert!(args[j + 1..].iter().all(|b| b.index != a.index));
            }
            let id = args
                .iter()
                .find(|a| a.name == span.request_id)
                .expect("request id declared");
            let int = matches!(id.ty, ArgType::I64 | ArgType::U64);
            let other = match role {
                Role::Start => Role::End,
                Role::End => Role::Start,
            };
            let other_id = span
                .args(other)
                .iter()
                .find(|a| a.name == span.request_id)
                .expect("request id declared on both sides");
            assert_eq!(int, matches!(other_id.ty, ArgType::I64 | ArgType::U64));
        }
        for name in span.name.args() {
            assert!(
                span.start_args
                    .iter()
                    .chain(&span.end_args)
                    .any(|a| a.name == name)
            );
        }
        // No probe belongs to two spans: each probe finds its own span.
        for (probe_ref, role) in [(&span.start, Role::Start), (&span.end, Role::End)] {
            let provider = probe_ref.provider.as_deref().unwrap_or("any");
            let found = config.find_index(provider, &probe_ref.name);
            assert_eq!(found, Some((i, role)), "{probe_ref} found elsewhere");
            // What the kernel side is asked to read as strings is what
            // the mapping declares.
            let probe = probe(provider, &probe_ref.name);
            for s in strings.for_probe(&probe) {
                assert!((s.arg as usize) < USDT_MAX_ARGS);
                assert!(s.cap >= 1 && s.cap <= USDT_STR_CAP_MAX);
                if let StringMode::PtrLen { len_arg } = s.mode {
                    assert!((len_arg as usize) < USDT_MAX_ARGS && len_arg != s.arg);
                }
            }
        }
    }
});
