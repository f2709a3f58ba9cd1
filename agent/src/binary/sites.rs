//! Probe sites: where in a function a uprobe costs least.
//!
//! The kernel emulates a few x86 instructions under a uprobe (direct
//! `call`, `jmp`, `jcc`, the `x86_nops` encodings, `push reg`) and
//! single-steps the rest out of line, roughly 13x dearer (BENCHMARKS.md,
//! "Cost per uprobe hit by site kind"). A Go function starts with
//! `cmp rsp, [r14+10h]` (single-stepped), then the `jbe` to morestack
//! (emulated), then `push rbp` (emulated): probing the `jbe` sees the same
//! argument registers as the entry, because `cmp` writes only flags.
//!
//! The `jbe` runs on every call, like the entry. When the stack must grow,
//! morestack restarts the function from its entry, so the site is hit once
//! more for that call: exactly as an entry probe would be.

use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Formatter, Instruction, InstructionInfoFactory,
    IntelFormatter, Mnemonic, OpAccess, OpKind, Register,
};

/// How many instructions past the entry we look for a cheaper site.
const MAX_LOOKAHEAD: usize = 8;

/// A site chosen within `code` (which starts at `ip`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// Byte offset from the function's entry.
    pub offset: u64,
    pub instruction: String,
    pub emulated: bool,
    pub reason: String,
}

fn format(ins: &Instruction) -> String {
    let mut formatter = IntelFormatter::new();
    let opts = formatter.options_mut();
    opts.set_hex_prefix("0x");
    opts.set_hex_suffix("");
    opts.set_uppercase_hex(false);
    opts.set_branch_leading_zeros(false);
    opts.set_space_after_operand_separator(true);
    let mut out = String::new();
    formatter.format(ins, &mut out);
    out
}

/// The NOP encodings the kernel recognises as such (`x86_nops[len]`,
/// arch/x86/include/asm/nops.h), by length.
const KERNEL_NOPS: [&[u8]; 9] = [
    &[],
    &[0x90],
    &[0x66, 0x90],
    &[0x0f, 0x1f, 0x00],
    &[0x0f, 0x1f, 0x40, 0x00],
    &[0x0f, 0x1f, 0x44, 0x00, 0x00],
    &[0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00],
    &[0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00],
    &[0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
];

/// Whether the kernel's x86 uprobe code emulates this instruction (whose
/// encoding is `bytes`) rather than single-stepping it
/// (arch/x86/kernel/uprobes.c: `branch_setup_xol_ops` for `call rel32`,
/// `jmp`, `jcc`, `0x90` and the `x86_nops` encodings; `push_setup_xol_ops`
/// for `push reg`). Branches with a prefix (`0x66`) are single-stepped, so
/// the encoded length must be the plain one.
pub fn kernel_emulates(ins: &Instruction, bytes: &[u8]) -> Option<&'static str> {
    let len = ins.len();
    let bytes = bytes.get(..len)?;
    if KERNEL_NOPS.get(len).is_some_and(|nop| *nop == bytes) {
        return Some("nop");
    }
    match ins.code() {
        Code::Call_rel32_64 if len == 5 => Some("call"),
        Code::Jmp_rel8_64 if len == 2 => Some("jmp"),
        Code::Jmp_rel32_64 if len == 5 => Some("jmp"),
        // `prefix* + 0x90` is emulated like a zero-length jump.
        Code::Nopd | Code::Nopq | Code::Nopw if bytes.last() == Some(&0x90) => Some("nop"),
        // 0x50+r, or 0x41 0x50+r for r8-r15; other prefixes are stepped.
        Code::Push_r64 if len == 1 || bytes.first() == Some(&0x41) => Some("push"),
        _ if ins.is_jcc_short() && len == 2 => Some("jcc"),
        _ if ins.is_jcc_near() && len == 6 => Some("jcc"),
        _ => None,
    }
}

/// Registers (full 64-bit) the instruction writes, partially or fully.
pub(super) fn written(info: &mut InstructionInfoFactory, ins: &Instruction) -> Vec<Register> {
    info.info(ins)
        .used_registers()
        .iter()
        .filter(|r| {
            matches!(
                r.access(),
                OpAccess::Write
                    | OpAccess::CondWrite
                    | OpAccess::ReadWrite
                    | OpAccess::ReadCondWrite
            )
        })
        .map(|r| r.register().full_register())
        .collect()
}

fn reg_name(r: Register) -> String {
    format!("{r:?}").to_lowercase()
}

fn reg_list(regs: &[Register]) -> String {
    regs.iter()
        .map(|&r| reg_name(r))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The cheapest entry site in `code` (a function body starting at `ip`).
/// `None` if the first instruction does not decode.
pub fn entry(code: &[u8], ip: u64, preserve: &[Register]) -> Option<Site> {
    let mut keep: Vec<Register> = preserve.iter().map(|r| r.full_register()).collect();
    keep.push(Register::R14);
    keep.sort_by_key(|r| *r as u32);
    keep.dedup();
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    let mut skipped: Vec<String> = Vec::new();
    let mut first: Option<Instruction> = None;
    let fallback = |first: &Instruction, why: String| Site {
        offset: 0,
        instruction: format(first),
        emulated: kernel_emulates(first, code).is_some(),
        reason: why,
    };
    for _ in 0..MAX_LOOKAHEAD {
        if !decoder.can_decode() {
            break;
        }
        let ins = decoder.decode();
        if ins.is_invalid() {
            let f = first?;
            return Some(fallback(
                &f,
                format!(
                    "undecodable bytes at +{:#x}: probing the entry (single-stepped, ~9 us/hit)",
                    ins.ip() - ip
                ),
            ));
        }
        let first_ins = *first.get_or_insert(ins);
        let offset = ins.ip() - ip;
        if ins.mnemonic() == Mnemonic::Endbr64 {
            skipped.push(format(&ins));
            continue;
        }
        let bytes = usize::try_from(offset)
            .ok()
            .and_then(|o| code.get(o..))
            .unwrap_or_default();
        if let Some(kind) = kernel_emulates(&ins, bytes) {
            let reason = if skipped.is_empty() {
                format!(
                    "the entry instruction is a {kind}, which the kernel emulates (~0.7 us/hit)"
                )
            } else {
                format!(
                    "{kind} at +{offset:#x} is emulated by the kernel (~0.7 us/hit); the skipped `{}` write none of {}, so they still hold their entry values",
                    skipped.join("; "),
                    reg_list(&keep)
                )
            };
            return Some(Site {
                offset,
                instruction: format(&ins),
                emulated: true,
                reason,
            });
        }
        if ins.flow_control() != FlowControl::Next {
            return Some(fallback(
                &first_ins,
                format!(
                    "`{}` at +{offset:#x} changes control flow before any emulated instruction: probing the entry (single-stepped, ~9 us/hit)",
                    format(&ins)
                ),
            ));
        }
        let clobbered: Vec<Register> = written(&mut info, &ins)
            .into_iter()
            .filter(|r| keep.contains(r))
            .collect();
        if !clobbered.is_empty() {
            return Some(fallback(
                &first_ins,
                format!(
                    "`{}` at +{offset:#x} writes {} before any emulated instruction: probing the entry (single-stepped, ~9 us/hit)",
                    format(&ins),
                    reg_list(&clobbered)
                ),
            ));
        }
        skipped.push(format(&ins));
    }
    let f = first?;
    Some(fallback(
        &f,
        format!(
            "no emulated instruction in the first {MAX_LOOKAHEAD} instructions: probing the entry (single-stepped, ~9 us/hit)"
        ),
    ))
}

/// Every `ret` in `code`, as (offset from `ip`, formatted instruction).
pub fn returns(code: &[u8], ip: u64) -> Vec<Site> {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut out = Vec::new();
    while decoder.can_decode() {
        let ins = decoder.decode();
        if ins.mnemonic() == Mnemonic::Ret {
            out.push(Site {
                offset: ins.ip() - ip,
                instruction: format(&ins),
                emulated: false,
                reason: "ret: single-stepped by the kernel (~9 us/hit); the only exit that keeps the return registers".to_owned(),
            });
        }
    }
    out
}

/// Every direct `call` to `target` in `code`: a site the kernel emulates,
/// where the callee's arguments are in their registers.
pub fn calls_to(code: &[u8], ip: u64, target: u64) -> Vec<Site> {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut out = Vec::new();
    while decoder.can_decode() {
        let ins = decoder.decode();
        if ins.mnemonic() == Mnemonic::Call
            && ins.op0_kind() == OpKind::NearBranch64
            && ins.near_branch_target() == target
        {
            out.push(Site {
                offset: ins.ip() - ip,
                instruction: format(&ins),
                emulated: true,
                reason:
                    "call: emulated by the kernel; the callee's arguments are in their registers"
                        .to_owned(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_calls_to_one_target_are_found() {
        // call +5 (to ip+10); call +0 (to ip+10); nop; call -15 (to ip)
        let code = [
            0xe8, 0x05, 0x00, 0x00, 0x00, // call 0x100a
            0xe8, 0x00, 0x00, 0x00, 0x00, // call 0x100a
            0x90, // nop
            0xe8, 0xf0, 0xff, 0xff, 0xff, // call 0x1000
        ];
        let found = calls_to(&code, 0x1000, 0x100a);
        assert_eq!(
            found.iter().map(|s| s.offset).collect::<Vec<_>>(),
            vec![0, 5]
        );
        assert!(found.iter().all(|s| s.emulated));
        assert_eq!(calls_to(&code, 0x1000, 0x1000).len(), 1);
    }

    /// net/http.serverHandler.ServeHTTP as Go 1.26 compiles it.
    const GO_PROLOGUE: &[u8] = &[
        0x49, 0x3b, 0x66, 0x10, // cmp rsp, [r14+0x10]
        0x0f, 0x86, 0x8a, 0x00, 0x00, 0x00, // jbe
        0x55, // push rbp
        0x48, 0x89, 0xe5, // mov rbp, rsp
        0x48, 0x83, 0xec, 0x20, // sub rsp, 0x20
        0x5d, // pop rbp
        0xc3, // ret
    ];

    #[test]
    fn go_prologue_picks_the_jbe() {
        let site = entry(GO_PROLOGUE, 0x1000, &[Register::RCX, Register::RDI]).unwrap();
        assert_eq!(site.offset, 4);
        assert!(site.emulated);
        assert!(site.instruction.starts_with("jbe "), "{}", site.instruction);
        assert!(
            site.reason.contains("cmp rsp, [r14+0x10]"),
            "{}",
            site.reason
        );
    }

    #[test]
    fn big_frame_prologue_skips_lea_r12_unless_preserved() {
        // lea r12, [rsp-0x98]; cmp r12, [r14+0x10]; jbe
        let code = [
            0x4c, 0x8d, 0xa4, 0x24, 0x68, 0xff, 0xff, 0xff, 0x4d, 0x3b, 0x66, 0x10, 0x0f, 0x86,
            0x10, 0, 0, 0,
        ];
        let site = entry(&code, 0, &[Register::RAX]).unwrap();
        assert_eq!(site.offset, 12);
        let site = entry(&code, 0, &[Register::R12D]).unwrap();
        assert_eq!(site.offset, 0);
        assert!(!site.emulated);
        assert!(site.reason.contains("writes r12"), "{}", site.reason);
    }

    #[test]
    fn clobbered_register_falls_back_to_the_entry() {
        // mov ecx, 1; push rbp
        let code = [0xb9, 1, 0, 0, 0, 0x55];
        let site = entry(&code, 0, &[Register::RCX]).unwrap();
        assert_eq!(site.offset, 0);
        assert!(!site.emulated);
        assert_eq!(entry(&code, 0, &[Register::RDI]).unwrap().offset, 5);
        // Writing r14 (the goroutine) is never skipped.
        let code = [0x4d, 0x31, 0xf6, 0x55]; // xor r14, r14; push rbp
        assert_eq!(entry(&code, 0, &[]).unwrap().offset, 0);
    }

    #[test]
    fn control_flow_and_endbr() {
        // endbr64; push rbp
        let code = [0xf3, 0x0f, 0x1e, 0xfa, 0x55];
        let site = entry(&code, 0, &[]).unwrap();
        assert_eq!((site.offset, site.emulated), (4, true));
        // cmp; ret: the ret is not skippable and not emulated.
        let code = [0x48, 0x39, 0xc8, 0xc3];
        let site = entry(&code, 0, &[]).unwrap();
        assert_eq!((site.offset, site.emulated), (0, false));
        assert_eq!(entry(&[], 0, &[]), None);
        assert_eq!(entry(&[0x0f, 0x0b], 0, &[]).map(|s| s.offset), Some(0)); // ud2 flows elsewhere
    }

    #[test]
    fn classification() {
        let emulated = |b: &[u8]| {
            let ins = Decoder::with_ip(64, b, 0, DecoderOptions::NONE).decode();
            kernel_emulates(&ins, b)
        };
        assert_eq!(emulated(&[0xe8, 0, 0, 0, 0]), Some("call"));
        assert_eq!(emulated(&[0x76, 0x10]), Some("jcc"));
        assert_eq!(emulated(&[0x0f, 0x86, 0x8a, 0, 0, 0]), Some("jcc"));
        assert_eq!(emulated(&[0xeb, 0x10]), Some("jmp"));
        assert_eq!(emulated(&[0x55]), Some("push"));
        assert_eq!(emulated(&[0x41, 0x56]), Some("push"));
        assert_eq!(emulated(&[0x90]), Some("nop"));
        assert_eq!(emulated(&[0x0f, 0x1f, 0x00]), Some("nop")); // Go's NOPL
        assert_eq!(emulated(&[0x0f, 0x1f, 0x44, 0x00, 0x00]), Some("nop"));
        // A NOP encoding outside the kernel's table is single-stepped.
        assert_eq!(emulated(&[0x0f, 0x1f, 0x40, 0x08]), None);
        assert_eq!(emulated(&[0xc3]), None);
        assert_eq!(emulated(&[0x5d]), None); // pop rbp
        assert_eq!(emulated(&[0xff, 0xd0]), None); // call rax
        assert_eq!(emulated(&[0x66, 0xe9, 0, 0]), None);
        assert_eq!(emulated(&[0x48, 0x83, 0xec, 0x20]), None); // sub rsp, 0x20
        assert_eq!(emulated(&[0x49, 0x3b, 0x66, 0x10]), None); // cmp rsp, [r14+0x10]
        // Truncated bytes never classify.
        let ins = Decoder::with_ip(64, &[0xe8, 0, 0, 0, 0], 0, DecoderOptions::NONE).decode();
        assert_eq!(kernel_emulates(&ins, &[0xe8]), None);
    }

    #[test]
    fn every_ret_is_found() {
        let rets = returns(GO_PROLOGUE, 0x1000);
        assert_eq!(rets.len(), 1);
        assert_eq!(rets[0].offset, GO_PROLOGUE.len() as u64 - 1);
        assert_eq!(rets[0].instruction, "ret");
        // Bytes c3 inside another instruction are not a ret.
        let code = [0xb8, 0xc3, 0xc3, 0xc3, 0xc3, 0xc2, 0x08, 0x00];
        let rets = returns(&code, 0);
        assert_eq!(rets.iter().map(|s| s.offset).collect::<Vec<_>>(), vec![5]);
    }
}
