//! Reading Go values from a probed goroutine: registers of Go's internal ABI,
//! the goroutine id, strings and struct fields.

use agent_common::target::OFFSET_ABSENT;
use aya_ebpf::{
    helpers::{bpf_probe_read_user, generated::bpf_probe_read_user as read_user_raw},
    programs::ProbeContext,
};

/// Go's ABIInternal integer argument registers on amd64, in order.
#[derive(Clone, Copy)]
pub enum Reg {
    Rax,
    Rbx,
    Rcx,
    Rdi,
}

/// Value of a register of the probed thread.
#[inline(always)]
pub fn reg(ctx: &ProbeContext, reg: Reg) -> u64 {
    // SAFETY: `ctx.regs` points at the probed thread's saved registers, which
    // the kernel hands to the program and the verifier lets it read.
    let regs = unsafe { &*ctx.regs };
    match reg {
        Reg::Rax => regs.rax,
        Reg::Rbx => regs.rbx,
        Reg::Rcx => regs.rcx,
        Reg::Rdi => regs.rdi,
    }
}

/// The current goroutine's `g`, which Go's ABIInternal keeps in R14.
#[inline(always)]
pub fn g_pointer(ctx: &ProbeContext) -> u64 {
    // SAFETY: as in `reg`.
    unsafe { (*ctx.regs).r14 }
}

/// Reads a `T` at `base + offset` in the target; `None` where the offset is
/// absent or the read faults.
#[inline(always)]
pub fn read_field<T>(base: u64, offset: u64) -> Option<T> {
    if offset == OFFSET_ABSENT || base == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_user copes with any address: a bad one makes it
    // fail, which is reported as `None`.
    unsafe { bpf_probe_read_user((base + offset) as *const T) }.ok()
}

/// The goroutine id of the current goroutine, 0 when it cannot be read.
#[inline(always)]
pub fn goid(ctx: &ProbeContext, goid_offset: u64) -> Option<u64> {
    read_field::<u64>(g_pointer(ctx), goid_offset)
}

/// Copies the Go string stored at `base + offset` into `dst`: at most
/// `dst.len()` bytes. Returns the string's full length in the target.
#[inline(always)]
pub fn read_string<const CAP: usize>(base: u64, offset: u64, dst: &mut [u8; CAP]) -> Option<u32> {
    let [data, len] = read_field::<[u64; 2]>(base, offset)?;
    copy_string(data, len, dst)
}

/// Copies the Go string with data pointer `data` and length `len` into
/// `dst`: at most `dst.len()` bytes. Returns the full length.
#[inline(always)]
pub fn copy_string<const CAP: usize>(data: u64, len: u64, dst: &mut [u8; CAP]) -> Option<u32> {
    let mut n = len;
    if n > CAP as u64 {
        n = CAP as u64;
    }
    if n == 0 {
        return Some(0);
    }
    // SAFETY: `dst` has CAP bytes and n <= CAP; the source is any user
    // address, a bad one makes the helper fail.
    let ret = unsafe { read_user_raw(dst.as_mut_ptr().cast(), n as u32, data as *const _) };
    if ret < 0 {
        return None;
    }
    Some(clamp_len(len))
}

/// A Go length as a record's `u32` length field.
#[inline(always)]
pub fn clamp_len(len: u64) -> u32 {
    if len > u32::MAX as u64 {
        u32::MAX
    } else {
        len as u32
    }
}

/// The first `LEN` bytes of a Go struct, read with one helper call into a
/// scratch area (a string area of the record, overwritten afterwards), so
/// several fields cost one read instead of one each. A field outside the
/// window, or every field when the bulk read failed, is read on its own.
pub struct Window<'a, const CAP: usize, const LEN: usize> {
    base: u64,
    bytes: Option<&'a [u8; CAP]>,
}

impl<'a, const CAP: usize, const LEN: usize> Window<'a, CAP, LEN> {
    /// Reads `LEN` bytes at `base` into `scratch`.
    #[inline(always)]
    pub fn read(base: u64, scratch: &'a mut [u8; CAP]) -> Self {
        const { assert!(LEN <= CAP && LEN >= 8) };
        // SAFETY: `scratch` has CAP >= LEN bytes; a bad address makes the
        // helper fail, and then every field is read on its own.
        let ret =
            unsafe { read_user_raw(scratch.as_mut_ptr().cast(), LEN as u32, base as *const _) };
        Self {
            base,
            bytes: (ret == 0 && base != 0).then_some(&*scratch),
        }
    }

    /// The 8-byte word at `offset` of the struct.
    #[inline(always)]
    pub fn word(&self, offset: u64) -> Option<u64> {
        if let Some(bytes) = self.bytes
            && offset <= (LEN - 8) as u64
        {
            // SAFETY: offset + 8 <= LEN <= CAP, checked above.
            return Some(unsafe {
                core::ptr::read_unaligned(bytes.as_ptr().add(offset as usize).cast::<u64>())
            });
        }
        read_field::<u64>(self.base, offset)
    }

    /// The Go string header (data, len) at `offset`.
    #[inline(always)]
    pub fn string(&self, offset: u64) -> Option<(u64, u64)> {
        Some((self.word(offset)?, self.word(offset.checked_add(8)?)?))
    }
}
