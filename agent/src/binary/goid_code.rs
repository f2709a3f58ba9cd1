//! `runtime.g.goid` from the runtime's own machine code, for binaries
//! without DWARF whose Go release the offsets table does not know.
//!
//! The runtime prints goroutine ids in a handful of places, always as a
//! label and then the field: `print("goroutine ", gp.goid)` in
//! `goroutineheader`, `", goid=", gp.goid` in `dumpgstatus` and the stack
//! checks, `"  G", gp.goid` in `schedtrace`, `"runtime: g ", gp.goid` in
//! the unwinder. Compiled, each is `call runtime.printstring` with the
//! label in RAX/RBX (a `lea` of the bytes and a `mov` of the length), then
//! `call runtime.printuint` (`printint` before Go 1.20) with the goid in
//! RAX, loaded by `mov rax, [gp+goid]`, possibly through a stack spill.
//!
//! Every `runtime.*` function is walked straight through, tracking where
//! each register and stack slot got its value (a field load, a string's
//! address, a constant); a print of a goid label followed by a print of a
//! field load is a site. The offset is accepted only when at least two
//! functions have sites and every site agrees.

use std::collections::{BTreeMap, HashMap};

use iced_x86::{
    Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, MemorySize,
    Mnemonic, OpKind, Register,
};

/// The labels printed right before a `g`'s goid (and never before another
/// struct's goid field: `"[originating from goroutine "` prints an
/// ancestor's, `" in goroutine "` a plain integer).
const GOID_LABELS: &[&str] = &[
    "goroutine ",
    ", goid=",
    "  G",
    "runtime: g ",
    "runtime: g",
    " gp.goid=",
    "scanning async preempted goroutine ",
    "runtime: checkdead: find g ",
];

/// Agreeing functions needed before an offset is believed.
const MIN_FUNCTIONS: usize = 2;

/// What a register or a stack slot holds, as far as the walk knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Value {
    /// A qword loaded from `[reg+disp]` (not the stack).
    Field(u64),
    /// The address of bytes in the binary (`lea reg, [rip+x]`).
    Address(u64),
    Const(u64),
}

/// One place the runtime prints a goid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoidSite {
    pub function: String,
    /// The `call` that prints it.
    pub address: u64,
    pub label: String,
    pub offset: u64,
}

/// The print functions' addresses.
#[derive(Clone, Copy, Debug)]
pub struct PrintFunctions {
    pub printstring: u64,
    /// `printuint` and `printint` (either may be absent: 0).
    pub printints: [u64; 2],
}

/// The goid sites in one function's `code` (at `ip`); `read` returns the
/// binary's bytes at a link-time address.
pub fn sites_in(
    function: &str,
    code: &[u8],
    ip: u64,
    print: PrintFunctions,
    read: &impl Fn(u64, u64) -> Option<Vec<u8>>,
) -> Vec<GoidSite> {
    let mut regs: HashMap<Register, Value> = HashMap::new();
    let mut slots: HashMap<i64, Value> = HashMap::new();
    let mut label: Option<String> = None;
    let mut out = Vec::new();
    let mut info = InstructionInfoFactory::new();
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut ins = Instruction::default();
    while decoder.can_decode() {
        decoder.decode_out(&mut ins);
        if ins.is_invalid() {
            break;
        }
        if ins.flow_control() == FlowControl::Call {
            let target = ins.near_branch_target();
            if target != 0 && target == print.printstring {
                label = match (regs.get(&Register::RAX), regs.get(&Register::RBX)) {
                    (Some(&Value::Address(at)), Some(&Value::Const(len))) if len <= 64 => {
                        read(at, len).and_then(|b| String::from_utf8(b).ok())
                    }
                    _ => None,
                };
            } else if target != 0 && print.printints.contains(&target) {
                if let (Some(l), Some(&Value::Field(offset))) =
                    (label.take(), regs.get(&Register::RAX))
                    && GOID_LABELS.contains(&l.as_str())
                {
                    out.push(GoidSite {
                        function: function.to_owned(),
                        address: ins.ip(),
                        label: l,
                        offset,
                    });
                }
            } else {
                label = None;
            }
            // Go's ABI: every register may be clobbered by a call.
            regs.clear();
            continue;
        }
        let stack_slot = |ins: &Instruction, op: u32| -> Option<i64> {
            (ins.op_kind(op) == OpKind::Memory
                && ins.memory_base() == Register::RSP
                && ins.memory_index() == Register::None)
                .then(|| ins.memory_displacement64() as i64)
        };
        let value = match (ins.mnemonic(), ins.op0_kind(), ins.op1_kind()) {
            (Mnemonic::Mov, OpKind::Register, OpKind::Memory) => {
                if let Some(slot) = stack_slot(&ins, 1) {
                    slots.get(&slot).copied()
                } else if ins.memory_size() == MemorySize::UInt64
                    && ins.memory_index() == Register::None
                    && !matches!(
                        ins.memory_base(),
                        Register::None | Register::RIP | Register::RSP | Register::RBP
                    )
                {
                    Some(Value::Field(ins.memory_displacement64()))
                } else {
                    None
                }
            }
            (Mnemonic::Mov, OpKind::Register, OpKind::Register) => {
                regs.get(&ins.op1_register().full_register()).copied()
            }
            (Mnemonic::Mov, OpKind::Register, k) if is_immediate(k) => {
                Some(Value::Const(ins.immediate(1)))
            }
            (Mnemonic::Lea, OpKind::Register, OpKind::Memory)
                if ins.memory_base() == Register::RIP =>
            {
                Some(Value::Address(ins.ip_rel_memory_address()))
            }
            (Mnemonic::Mov, OpKind::Memory, OpKind::Register) => {
                if let Some(slot) = stack_slot(&ins, 0) {
                    let v = (ins.op1_register().size() == 8)
                        .then(|| regs.get(&ins.op1_register()).copied())
                        .flatten();
                    match v {
                        Some(v) => slots.insert(slot, v),
                        None => slots.remove(&slot),
                    };
                }
                continue;
            }
            _ => None,
        };
        if let Some(slot) = stack_slot(&ins, 0) {
            slots.remove(&slot);
        }
        for r in super::sites::written(&mut info, &ins) {
            regs.remove(&r);
        }
        if let Some(v) = value
            && ins.op0_kind() == OpKind::Register
        {
            regs.insert(ins.op0_register().full_register(), v);
        }
    }
    out
}

fn is_immediate(k: OpKind) -> bool {
    matches!(
        k,
        OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64
    )
}

/// Why the machine code does not give the goid offset.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GoidError {
    #[error("runtime.printstring and runtime.printuint/printint not found")]
    NoPrintFunctions,
    #[error(
        "goid loads printed in {functions} runtime function(s), fewer than the {MIN_FUNCTIONS} needed to agree"
    )]
    TooFew { functions: usize },
    #[error("goid loads disagree: {0}")]
    Disagree(String),
}

/// The offset every site agrees on, from at least [`MIN_FUNCTIONS`]
/// functions.
pub fn agree(sites: &[GoidSite]) -> Result<u64, GoidError> {
    let mut by_offset: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    for s in sites {
        by_offset.entry(s.offset).or_default().push(&s.function);
    }
    if by_offset.len() > 1 {
        let parts: Vec<String> = by_offset
            .iter()
            .map(|(off, fs)| format!("{off:#x} in {}", fs.join(", ")))
            .collect();
        return Err(GoidError::Disagree(parts.join("; ")));
    }
    let mut functions: Vec<&str> = sites.iter().map(|s| s.function.as_str()).collect();
    functions.sort_unstable();
    functions.dedup();
    if functions.len() < MIN_FUNCTIONS {
        return Err(GoidError::TooFew {
            functions: functions.len(),
        });
    }
    Ok(sites[0].offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRINT: PrintFunctions = PrintFunctions {
        printstring: 0x2000,
        printints: [0x3000, 0],
    };

    /// `lea rax, [rip+label]; mov ebx, len; call printstring; mov rax,
    /// [rcx+0x98]; mov [rsp+0x60], rax; xor eax, eax; mov rax, [rsp+0x60];
    /// call printuint`, at 0x1000, with "goroutine " at 0x5000.
    fn code() -> Vec<u8> {
        let mut c = Vec::new();
        let ip = 0x1000u64;
        // lea rax, [rip+disp32]
        let lea_end = ip + 7;
        c.extend([0x48, 0x8d, 0x05]);
        c.extend(((0x5000 - lea_end) as i32).to_le_bytes());
        c.extend([0xbb, 10, 0, 0, 0]); // mov ebx, 10
        let call_end = ip + c.len() as u64 + 5;
        c.push(0xe8);
        c.extend(((0x2000i64 - call_end as i64) as i32).to_le_bytes());
        c.extend([0x48, 0x8b, 0x81, 0x98, 0, 0, 0]); // mov rax, [rcx+0x98]
        c.extend([0x48, 0x89, 0x44, 0x24, 0x60]); // mov [rsp+0x60], rax
        c.extend([0x31, 0xc0]); // xor eax, eax
        c.extend([0x48, 0x8b, 0x44, 0x24, 0x60]); // mov rax, [rsp+0x60]
        let call_end = ip + c.len() as u64 + 5;
        c.push(0xe8);
        c.extend(((0x3000i64 - call_end as i64) as i32).to_le_bytes());
        c
    }

    fn read(at: u64, len: u64) -> Option<Vec<u8>> {
        (at == 0x5000 && len == 10).then(|| b"goroutine ".to_vec())
    }

    #[test]
    fn finds_a_spilled_goid_print() {
        let sites = sites_in("runtime.goroutineheader", &code(), 0x1000, PRINT, &read);
        assert_eq!(sites.len(), 1);
        assert_eq!(sites[0].offset, 0x98);
        assert_eq!(sites[0].label, "goroutine ");
        // Another label: not a goid.
        let other = |_: u64, _: u64| Some(b"in routine".to_vec());
        assert!(sites_in("f", &code(), 0x1000, PRINT, &other).is_empty());
    }

    #[test]
    fn agreement_rules() {
        let site = |f: &str, off| GoidSite {
            function: f.into(),
            address: 0,
            label: "goroutine ".into(),
            offset: off,
        };
        assert_eq!(agree(&[site("a", 0x98), site("b", 0x98)]), Ok(0x98));
        assert_eq!(
            agree(&[site("a", 0x98), site("a", 0x98)]),
            Err(GoidError::TooFew { functions: 1 })
        );
        assert!(matches!(
            agree(&[site("a", 0x98), site("b", 0x90), site("c", 0x98)]),
            Err(GoidError::Disagree(_))
        ));
    }
}
