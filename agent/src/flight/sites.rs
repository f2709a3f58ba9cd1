//! Finding the `w.Write` call sites inside a WriteTo body.
//!
//! Go calls an interface method by loading the function pointer from the
//! itab (`fun[0]` is at offset 0x18: after `inter`, `_type` and `hash`) and
//! calling through a register: `mov rdx, [r9+0x18]; ...; call rdx`, or
//! `call [reg+0x18]`. `io.Writer` has one method, so every such call in
//! WriteTo is `w.Write`. Deferred closures are called through offset 0 of
//! the closure (`mov rax, [rdx]; call rax`) and do not match.

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

/// Offset of `fun[0]` in a Go `itab` on 64-bit targets.
pub const ITAB_FUN0: u64 = 0x18;

/// Byte offsets (from `ip`) of the interface-method calls in `code`.
pub fn interface_calls(code: &[u8], ip: u64) -> Vec<u64> {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    // For each full register, the last instruction that wrote it since the
    // last control-flow boundary: was it a load from [reg+0x18]?
    let mut loaded_fun0: Vec<Register> = Vec::new();
    let mut out = Vec::new();
    let mut ins = Instruction::default();
    while decoder.can_decode() {
        decoder.decode_out(&mut ins);
        if ins.is_invalid() {
            loaded_fun0.clear();
            continue;
        }
        if ins.mnemonic() == Mnemonic::Call {
            let hit = match ins.code() {
                Code::Call_rm64 if ins.op0_kind() == OpKind::Register => {
                    loaded_fun0.contains(&ins.op0_register().full_register())
                }
                Code::Call_rm64 if ins.op0_kind() == OpKind::Memory => is_fun0_load(&ins),
                _ => false,
            };
            if hit {
                out.push(ins.ip() - ip);
            }
            loaded_fun0.clear();
            continue;
        }
        if ins.is_jcc_short_or_near()
            || ins.mnemonic() == Mnemonic::Jmp
            || ins.mnemonic() == Mnemonic::Ret
        {
            // Another path may reach the next instruction.
            loaded_fun0.clear();
            continue;
        }
        // Drop registers this instruction overwrites, then add the loaded one.
        if ins.op_count() > 0 && ins.op0_kind() == OpKind::Register {
            let dst = ins.op0_register().full_register();
            // A register-to-register copy of a loaded pointer carries it.
            let copied = ins.mnemonic() == Mnemonic::Mov
                && ins.op_count() == 2
                && ins.op1_kind() == OpKind::Register
                && loaded_fun0.contains(&ins.op1_register().full_register());
            loaded_fun0.retain(|r| *r != dst);
            let loaded = ins.mnemonic() == Mnemonic::Mov
                && ins.op_count() == 2
                && ins.op1_kind() == OpKind::Memory
                && is_fun0_load(&ins);
            if loaded || copied {
                loaded_fun0.push(dst);
            }
        }
    }
    out
}

/// `[base+0x18]` with a general-purpose base other than the stack pointer
/// and no index.
fn is_fun0_load(ins: &Instruction) -> bool {
    let base = ins.memory_base();
    ins.memory_displacement64() == ITAB_FUN0
        && ins.memory_index() == Register::None
        && base != Register::None
        && base != Register::RSP
        && base != Register::RBP
        && base != Register::RIP
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_writer_calls_of_go_1_26_write_to() {
        // mov rdx, [rdx+0x18]; add rbx, 0x10; mov rax, [rsp+0xf0];
        // mov ecx, 0x10; mov rdi, rcx; call rdx
        let header_write = [
            0x48, 0x8b, 0x52, 0x18, 0x48, 0x83, 0xc3, 0x10, 0x48, 0x8b, 0x84, 0x24, 0xf0, 0, 0, 0,
            0xb9, 0x10, 0, 0, 0, 0x48, 0x89, 0xcf, 0xff, 0xd2,
        ];
        assert_eq!(interface_calls(&header_write, 0x1000), vec![24]);
        // mov rdx, [rdx+0]; call rax — a deferred closure: mov rax, [rdx]; call rax
        let deferred = [0x48, 0x8b, 0x02, 0xff, 0xd0];
        assert!(interface_calls(&deferred, 0).is_empty());
        // call [rdx+0x18]
        let direct = [0xff, 0x52, 0x18];
        assert_eq!(interface_calls(&direct, 0), vec![0]);
        // Go 1.26 x/exp: mov rcx, [rcx+0x18]; mov rbx, rax; mov rdx, rcx; call rdx
        let copied = [
            0x48, 0x8b, 0x49, 0x18, 0x48, 0x89, 0xc3, 0x48, 0x89, 0xca, 0xff, 0xd2,
        ];
        assert_eq!(interface_calls(&copied, 0), vec![10]);
        // The register is overwritten between the load and the call.
        let clobbered = [0x48, 0x8b, 0x52, 0x18, 0x31, 0xd2, 0xff, 0xd2];
        assert!(interface_calls(&clobbered, 0).is_empty());
    }
}
