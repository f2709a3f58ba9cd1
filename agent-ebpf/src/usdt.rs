//! USDT probes: one program for every site. A site's argument specs come
//! from `USDT_SPECS`, indexed by the site index in the low 32 bits of the
//! attach cookie (libbpf's design, with the cookie instead of an ip lookup).
//!
//! Each hit builds one `UsdtRecord` in per-CPU memory: up to 12 argument
//! values, sign- or zero-extended by their size, then the bytes of the
//! arguments the spec marks as strings, back to back. Only the part in use
//! is copied into the ring buffer (see `UsdtRecord` for why).

use agent_common::{
    stats,
    usdt::{
        ARG_CONST, ARG_REG, ARG_REG_DEREF, ARG_SIB, KIND_USDT, PT_REGS_SLOTS, STR_NUL, STR_PTR_LEN,
        USDT_BODY, USDT_MAX_ARGS, USDT_MAX_SITES, USDT_RECORD_HEAD, USDT_STR_CAP_MAX, UsdtArgSpec,
        UsdtRecord, UsdtSpec,
    },
};
use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_probe_read_user,
        generated::{
            bpf_probe_read_user as read_user_raw, bpf_probe_read_user_str as read_user_str_raw,
        },
    },
    macros::{map, uprobe},
    maps::{Array, PerCpuArray},
    programs::ProbeContext,
};

use crate::{
    maps::count,
    record::{Scratch, begin, cookie, header},
};

/// Argument specs, indexed by site index (low 32 bits of the attach cookie).
#[map]
pub static USDT_SPECS: Array<UsdtSpec> = Array::with_max_entries(USDT_MAX_SITES, 0);

/// The record being built, per CPU (see [`Scratch`]).
#[map]
static USDT_SCRATCH: PerCpuArray<Scratch<UsdtRecord>> = PerCpuArray::with_max_entries(1, 0);

/// Every USDT probe site.
#[uprobe]
pub fn usdt_probe(ctx: ProbeContext) -> u32 {
    try_usdt_probe(&ctx);
    0
}

/// Strings up to this many bytes may start anywhere up to
/// `USDT_BODY - SMALL_STR`; longer ones up to `USDT_BODY - CAP_MAX`.
/// Two bounded paths let the verifier prove every copy stays in the record.
const SMALL_STR: usize = 64;
const CAP_MAX: usize = USDT_STR_CAP_MAX as usize;

#[inline(always)]
fn try_usdt_probe(ctx: &ProbeContext) {
    let cookie = cookie(ctx);
    let site = cookie as u32;
    let spec = match USDT_SPECS.get(site) {
        Some(spec) if spec.active != 0 => spec,
        _ => {
            count(stats::NO_CONFIG);
            return;
        }
    };
    let Some(building) = begin(&USDT_SCRATCH) else {
        return;
    };
    let rec = &mut *building.rec;

    // Every field the agent reads is set below: `str_len` only for the
    // strings `str_mask` marks, the body only up to the record's length.
    rec.header = header(cookie, KIND_USDT, 0);
    let mut arg_count = spec.arg_count as usize;
    if arg_count > USDT_MAX_ARGS {
        arg_count = USDT_MAX_ARGS;
    }
    clear_counts(rec, arg_count as u16);

    // The failure and truncation bit sets live in memory, not in registers:
    // a register holding a different constant on each path would keep the
    // verifier from pruning, 2^12 paths deep.
    for i in 0..USDT_MAX_ARGS {
        if i >= arg_count {
            break;
        }
        match fetch(ctx, &spec.args[i]) {
            Some(value) => rec.body[i] = value,
            None => {
                rec.body[i] = 0;
                rec.failed |= 1 << i;
            }
        }
    }

    // The strings start right after the values. The running offset lives
    // in memory too: loaded back as an unknown value each round, its bounds
    // are re-checked and the verifier's states for each round collapse into
    // one.
    let strings_at = 8 * arg_count;
    for i in 0..USDT_MAX_ARGS {
        if i >= arg_count {
            break;
        }
        let arg = &spec.args[i];
        if arg.str_mode != STR_NUL && arg.str_mode != STR_PTR_LEN {
            continue;
        }
        if rec.failed & (1 << i) != 0 {
            continue;
        }
        let src = rec.body[i];
        // The agent does not need a string's pointer: the value is 0.
        rec.body[i] = 0;
        let mut cap = arg.str_cap as usize;
        if cap > CAP_MAX {
            cap = CAP_MAX;
        }
        let mut want = cap;
        if arg.str_mode == STR_PTR_LEN {
            let len_arg = arg.len_arg as usize;
            if len_arg >= USDT_MAX_ARGS {
                rec.failed |= 1 << i;
                continue;
            }
            let len = rec.body[len_arg];
            if len < want as u64 {
                want = len as usize;
            } else if len > want as u64 {
                rec.truncated |= 1 << i;
            }
        }
        if src == 0 {
            continue;
        }
        if want == 0 {
            rec.str_len[i] = 0;
            rec.str_mask |= 1 << i;
            continue;
        }
        let used = rec.str_used as usize;
        let at = strings_at + used;
        // SAFETY: the body's bytes, `USDT_BODY` of them.
        let dst = unsafe {
            core::slice::from_raw_parts_mut(rec.body.as_mut_ptr().cast::<u8>(), USDT_BODY)
        };
        let copied = if want <= SMALL_STR {
            if at > USDT_BODY - SMALL_STR {
                rec.truncated |= 1 << i;
                continue;
            }
            copy_str(dst, at, want, SMALL_STR, arg.str_mode, src)
        } else {
            if at > USDT_BODY - CAP_MAX {
                rec.truncated |= 1 << i;
                continue;
            }
            copy_str(dst, at, want, CAP_MAX, arg.str_mode, src)
        };
        match copied {
            Some((n, cut)) => {
                rec.str_len[i] = n as u8;
                rec.str_mask |= 1 << i;
                if cut {
                    rec.truncated |= 1 << i;
                }
                rec.str_used = (used + n) as u16;
            }
            None => rec.failed |= 1 << i,
        }
    }
    if rec.failed != 0 {
        count(stats::READ_FAILED);
        // A rare branch (a probe whose argument spec does not fit the
        // program, or memory gone): worth a line at -vv, not on the hot path.
        aya_log_ebpf::debug!(
            ctx,
            "USDT site {}: argument reads failed (mask {:x})",
            site,
            rec.failed
        );
    }
    let len = USDT_RECORD_HEAD + strings_at + rec.str_used as usize;
    let now = rec.header.ktime_ns;
    building.send(len, now);
}

/// Sets the record's argument count and zeroes the counts and bit sets
/// after it, with one store each: plain assignments of the neighbouring
/// fields make LLVM call `memset`, which the BPF target implements one byte
/// per loop round.
#[inline(always)]
fn clear_counts(rec: &mut UsdtRecord, arg_count: u16) {
    let fields = [
        core::ptr::addr_of_mut!(rec.str_used),
        core::ptr::addr_of_mut!(rec.failed),
        core::ptr::addr_of_mut!(rec.truncated),
        core::ptr::addr_of_mut!(rec.str_mask),
        core::ptr::addr_of_mut!(rec._pad),
    ];
    // SAFETY: pointers to fields of `rec`; volatile keeps LLVM from
    // folding the stores into `memset`.
    unsafe {
        core::ptr::write_volatile(core::ptr::addr_of_mut!(rec.arg_count), arg_count);
        for field in fields {
            core::ptr::write_volatile(field, 0);
        }
    }
}

/// Copies at most `want` (<= `limit`) bytes of the string at `src` to
/// `dst[off..]`, where `off <= dst.len() - limit`. Returns the bytes copied
/// (without a NUL) and whether the string may have been cut short.
#[inline(always)]
fn copy_str(
    dst: &mut [u8],
    off: usize,
    want: usize,
    limit: usize,
    mode: u8,
    src: u64,
) -> Option<(usize, bool)> {
    if off > USDT_BODY - limit || want > limit || want == 0 || dst.len() < USDT_BODY {
        return None;
    }
    // SAFETY: off + want <= USDT_BODY <= dst.len(), checked above.
    let dst = unsafe { dst.as_mut_ptr().add(off) };
    if mode == STR_NUL {
        // SAFETY: `dst` has room for `want` bytes; a bad `src` makes the
        // helper fail.
        let ret = unsafe { read_user_str_raw(dst.cast(), want as u32, src as *const _) };
        if ret <= 0 {
            return None;
        }
        // `ret` counts the NUL the helper always writes.
        let n = (ret - 1) as usize;
        Some((n, ret as usize >= want))
    } else {
        // SAFETY: as above.
        let ret = unsafe { read_user_raw(dst.cast(), want as u32, src as *const _) };
        if ret < 0 {
            return None;
        }
        Some((want, false))
    }
}

/// Loads the 8-byte slot at byte offset `$off` of the program's context.
///
/// In assembly because the verifier only allows context loads at constant
/// offsets, and LLVM merges a `match` of plain field loads into one load
/// at a computed offset, which it rejects.
macro_rules! ctx_slot {
    ($regs:expr, $off:literal) => {{
        let value: u64;
        // SAFETY: `$regs` is the context pointer and `$off` a slot inside
        // `struct pt_regs`; the load has no other effect.
        unsafe {
            core::arch::asm!(
                concat!("{v} = *(u64 *)({r} + ", $off, ")"),
                v = out(reg) value,
                r = in(reg) $regs,
                options(readonly, nostack, preserves_flags),
            )
        };
        value
    }};
}

/// Value of the probed thread's register in `pt_regs` slot `index`: one
/// context load, no helper call (`bpf_probe_read_kernel` cost a call each).
#[inline(always)]
fn reg(ctx: &ProbeContext, index: u8) -> Option<u64> {
    const { assert!(core::mem::size_of::<pt_regs>() == PT_REGS_SLOTS as usize * 8) };
    let r = ctx.regs;
    Some(match index {
        0 => ctx_slot!(r, 0),
        1 => ctx_slot!(r, 8),
        2 => ctx_slot!(r, 16),
        3 => ctx_slot!(r, 24),
        4 => ctx_slot!(r, 32),
        5 => ctx_slot!(r, 40),
        6 => ctx_slot!(r, 48),
        7 => ctx_slot!(r, 56),
        8 => ctx_slot!(r, 64),
        9 => ctx_slot!(r, 72),
        10 => ctx_slot!(r, 80),
        11 => ctx_slot!(r, 88),
        12 => ctx_slot!(r, 96),
        13 => ctx_slot!(r, 104),
        14 => ctx_slot!(r, 112),
        15 => ctx_slot!(r, 120),
        16 => ctx_slot!(r, 128),
        17 => ctx_slot!(r, 136),
        18 => ctx_slot!(r, 144),
        19 => ctx_slot!(r, 152),
        20 => ctx_slot!(r, 160),
        _ => return None,
    })
}

/// Reads `size` bytes at `addr` in the target, zero-extended.
#[inline(always)]
fn read_sized(addr: u64, size: u8) -> Option<u64> {
    // SAFETY: bpf_probe_read_user copes with any address: a bad one makes it
    // fail, which is reported as `None`.
    unsafe {
        match size {
            1 => bpf_probe_read_user(addr as *const u8).ok().map(u64::from),
            2 => bpf_probe_read_user(addr as *const u16).ok().map(u64::from),
            4 => bpf_probe_read_user(addr as *const u32).ok().map(u64::from),
            _ => bpf_probe_read_user(addr as *const u64).ok(),
        }
    }
}

/// One argument's value, extended to 64 bits by its size and signedness.
#[inline(always)]
fn fetch(ctx: &ProbeContext, arg: &UsdtArgSpec) -> Option<u64> {
    let raw = match arg.kind {
        ARG_CONST => arg.val_off,
        ARG_REG => reg(ctx, arg.reg)? >> (arg.reg_shift & 63),
        ARG_REG_DEREF => {
            let addr = reg(ctx, arg.reg)?.wrapping_add(arg.val_off);
            read_sized(addr, arg.size)?
        }
        ARG_SIB => {
            let base = reg(ctx, arg.reg)?;
            let index = reg(ctx, arg.idx_reg)?;
            let addr = base
                .wrapping_add(index << (arg.scale_shift & 3))
                .wrapping_add(arg.val_off);
            read_sized(addr, arg.size)?
        }
        _ => return None,
    };
    let shift = match arg.size {
        1 => 56,
        2 => 48,
        4 => 32,
        _ => 0,
    };
    Some(if arg.signed != 0 {
        ((raw << shift) as i64 >> shift) as u64
    } else {
        (raw << shift) >> shift
    })
}
