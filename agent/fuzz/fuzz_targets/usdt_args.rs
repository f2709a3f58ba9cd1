//! Fuzzes the USDT argument-spec parser (`-4@%edi 8@-16(%rbp,%rax,8)`):
//! whatever the string, parsing never panics, errors point inside it, a
//! parsed list prints back to a string that parses to the same list, and
//! every parsed spec encodes for the kernel side into a valid slot.
#![no_main]

use agent::usdt;

use agent_common::usdt::{ARG_CONST, ARG_REG, ARG_REG_DEREF, ARG_SIB, PT_REGS_SLOTS, REG_IP};
use libfuzzer_sys::fuzz_target;
use usdt::args::{ArgLocation, MAX_ARGS, parse_args};

fuzz_target!(|data: &[u8]| {
    // Notes hold UTF-8 (discovery refuses anything else); invalid bytes
    // still make a string worth parsing.
    let text = String::from_utf8_lossy(data);
    let args = match parse_args(&text) {
        Ok(args) => args,
        Err(err) => {
            assert!(err.pos <= text.len(), "error at {} past the text", err.pos);
            assert_eq!(err.text, text);
            return;
        }
    };
    assert!(args.len() <= MAX_ARGS);

    // Display round trip: what `agent probes` prints parses back the same.
    let printed: Vec<String> = args.iter().map(ToString::to_string).collect();
    let printed = printed.join(" ");
    let reparsed = parse_args(&printed)
        .unwrap_or_else(|e| panic!("{text:?} printed as {printed:?}, which does not parse: {e}"));
    assert_eq!(reparsed, args, "{text:?} printed as {printed:?}");

    for mut arg in args {
        assert!(matches!(arg.size, 1 | 2 | 4 | 8), "size {}", arg.size);
        // Discovery resolves symbols; an unresolved one must be refused.
        if matches!(arg.location, ArgLocation::Symbol { .. }) {
            assert!(arg.encode(0x1000).is_err(), "{arg} encodes unresolved");
        }
        if let ArgLocation::Symbol { address, .. } = &mut arg.location {
            *address = Some(0x4000);
        }
        let spec = arg
            .encode(0x1000)
            .unwrap_or_else(|e| panic!("{arg} does not encode: {e}"));
        assert_eq!(spec.size, arg.size);
        assert_eq!(spec.signed, u8::from(arg.signed));
        assert!(spec.reg < PT_REGS_SLOTS && spec.idx_reg < PT_REGS_SLOTS);
        assert!(spec.reg_shift == 0 || spec.reg_shift == 8);
        assert!(spec.scale_shift <= 3);
        let kind = match arg.location {
            ArgLocation::Const(_) => ARG_CONST,
            ArgLocation::Reg(_) => ARG_REG,
            ArgLocation::Deref { .. } => ARG_REG_DEREF,
            ArgLocation::Sib { scale, .. } => {
                assert_eq!(1u8 << spec.scale_shift, scale);
                assert_ne!(spec.idx_reg, REG_IP, "%rip as an index register");
                ARG_SIB
            }
            ArgLocation::Symbol { .. } => {
                assert_eq!(spec.reg, REG_IP);
                assert_eq!(spec.val_off, 0x3000);
                ARG_REG_DEREF
            }
        };
        assert_eq!(spec.kind, kind);
    }
});
