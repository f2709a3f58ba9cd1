//! USDT argument spec parsing, every x86-64 form libbpf handles and the ones
//! it leaves out, and their kernel-side encoding.

use agent::usdt::args::{ArgLocation, ArgSpec, parse_args, register};
use agent_common::usdt::{ARG_CONST, ARG_REG, ARG_REG_DEREF, ARG_SIB, REG_IP};

fn one(text: &str) -> ArgSpec {
    let mut args = parse_args(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    assert_eq!(args.len(), 1, "{text}");
    args.remove(0)
}

fn reg(name: &str) -> agent::usdt::Register {
    register(name).unwrap_or_else(|| panic!("register {name}"))
}

#[test]
fn constants() {
    assert_eq!(
        one("-4@$5"),
        ArgSpec {
            size: 4,
            signed: true,
            location: ArgLocation::Const(5)
        }
    );
    assert_eq!(one("-4@$-7").location, ArgLocation::Const(-7));
    assert_eq!(one("8@$0x10").location, ArgLocation::Const(16));
    assert_eq!(
        one("-8@$1234567890123").location,
        ArgLocation::Const(1234567890123)
    );
    // gcc prints large unsigned constants as negative numbers.
    assert_eq!(
        one("8@$-446744073709551616").location,
        ArgLocation::Const(18000000000000000000u64 as i64)
    );
    let spec = one("1@$-6").encode(0).expect("encode");
    assert_eq!(
        (spec.kind, spec.val_off, spec.size, spec.signed),
        (ARG_CONST, (-6i64) as u64, 1, 0)
    );
}

#[test]
fn registers_of_every_width() {
    for (text, slot, shift, size, signed) in [
        ("8@%rdi", 14, 0, 8, false),
        ("-8@%rax", 10, 0, 8, true),
        ("-4@%eax", 10, 0, 4, true),
        ("4@%r8d", 9, 0, 4, false),
        ("-2@%ax", 10, 0, 2, true),
        ("2@%r9w", 8, 0, 2, false),
        ("1@%al", 10, 0, 1, false),
        ("-1@%cl", 11, 0, 1, true),
        ("1@%r8b", 9, 0, 1, false),
        ("1@%sil", 13, 0, 1, false),
        ("1@%ah", 10, 8, 1, false),
        ("1@%bh", 5, 8, 1, false),
        ("-1@%ch", 11, 8, 1, true),
        ("1@%dh", 12, 8, 1, false),
        ("8@%r15", 0, 0, 8, false),
        ("8@%rsp", 19, 0, 8, false),
        ("8@%rbp", 4, 0, 8, false),
    ] {
        let arg = one(text);
        assert_eq!((arg.size, arg.signed), (size, signed), "{text}");
        let ArgLocation::Reg(r) = arg.location else {
            panic!("{text}: not a register: {arg:?}");
        };
        assert_eq!((r.slot, r.shift), (slot, shift), "{text}");
        let spec = arg.encode(0).expect("encode");
        assert_eq!(
            (spec.kind, spec.reg, spec.reg_shift),
            (ARG_REG, slot, shift),
            "{text}"
        );
    }
}

#[test]
fn register_dereferences() {
    assert_eq!(
        one("-4@-20(%rbp)").location,
        ArgLocation::Deref {
            base: reg("rbp"),
            offset: -20
        }
    );
    assert_eq!(
        one("8@(%rsp)").location,
        ArgLocation::Deref {
            base: reg("rsp"),
            offset: 0
        }
    );
    assert_eq!(
        one("-2@0x10(%rdi)").location,
        ArgLocation::Deref {
            base: reg("rdi"),
            offset: 16
        }
    );
    let spec = one("-4@-20(%rbp)").encode(0).expect("encode");
    assert_eq!(
        (spec.kind, spec.reg, spec.val_off as i64),
        (ARG_REG_DEREF, 4, -20)
    );
    // Numeric %rip offsets are relative to the probe's address (libbpf).
    let spec = one("8@24(%rip)").encode(0x1000).expect("encode");
    assert_eq!(
        (spec.kind, spec.reg, spec.val_off),
        (ARG_REG_DEREF, REG_IP, 24)
    );
}

#[test]
fn base_index_scale() {
    assert_eq!(
        one("8@(%rax,%rbx,8)").location,
        ArgLocation::Sib {
            base: reg("rax"),
            index: reg("rbx"),
            scale: 8,
            offset: 0
        }
    );
    assert_eq!(
        one("8@16(%rax,%rbx,8)").location,
        ArgLocation::Sib {
            base: reg("rax"),
            index: reg("rbx"),
            scale: 8,
            offset: 16
        }
    );
    assert_eq!(
        one("-4@-8(%rdi,%rsi)").location,
        ArgLocation::Sib {
            base: reg("rdi"),
            index: reg("rsi"),
            scale: 1,
            offset: -8
        }
    );
    let spec = one("-4@8(%rdi,%rsi,4)").encode(0).expect("encode");
    assert_eq!(
        (
            spec.kind,
            spec.reg,
            spec.idx_reg,
            spec.scale_shift,
            spec.val_off
        ),
        (ARG_SIB, 14, 13, 2, 8)
    );
}

#[test]
fn rip_relative_symbols() {
    let arg = one("-4@fix_counter(%rip)");
    assert_eq!(
        arg.location,
        ArgLocation::Symbol {
            symbol: "fix_counter".into(),
            addend: 0,
            address: None
        }
    );
    assert!(
        arg.encode(0x1000).is_err(),
        "unresolved symbols cannot be encoded"
    );
    let mut arg = one("4@fix_pair+8(%rip)");
    let ArgLocation::Symbol {
        addend, address, ..
    } = &mut arg.location
    else {
        panic!("not a symbol: {arg:?}");
    };
    assert_eq!(*addend, 8);
    *address = Some(0x5008);
    let spec = arg.encode(0x1000).expect("encode");
    assert_eq!(
        (spec.kind, spec.reg, spec.val_off),
        (ARG_REG_DEREF, REG_IP, 0x4008)
    );
    let ArgLocation::Symbol { addend, .. } = one("8@tbl-16(%rip)").location else {
        panic!("not a symbol");
    };
    assert_eq!(addend, -16);
}

#[test]
fn whole_argument_strings() {
    let args = parse_args("-4@%esi -4@-24(%rbp) -4@%ecx 2@%ax 8@%rdx").expect("parses");
    assert_eq!(args.len(), 5);
    assert!(parse_args("").expect("no arguments").is_empty());
    let twelve = (0..12)
        .map(|i| format!("8@$${i}"))
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(
        parse_args(&twelve.replace("$$", "$")).expect("12").len(),
        12
    );
    let thirteen = (0..13)
        .map(|i| format!("8@${i}"))
        .collect::<Vec<_>>()
        .join(" ");
    assert!(parse_args(&thirteen).is_err());
    // Old notes without sizes read whole registers.
    assert_eq!(
        parse_args("%rdi").expect("no size")[0],
        ArgSpec {
            size: 8,
            signed: false,
            location: ArgLocation::Reg(reg("rdi"))
        }
    );
}

#[test]
fn errors_say_where() {
    for (text, pos) in [
        ("3@%rax", 0),
        ("8@%xmm0", 2),
        ("8@%rax -4@(%rax,%rbx,3)", 21),
        ("8@%fs:8", 2),
        ("8@(,%rax,8)", 3),
        ("8@foo(%rax)", 2),
        ("8@%rax)", 6),
    ] {
        let err = parse_args(text).expect_err(text);
        assert_eq!(err.pos, pos, "{text}: {err}");
    }
}
