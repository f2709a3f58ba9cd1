//! USDT probes: the argument specs the agent writes into the `USDT_SPECS`
//! map (one [`UsdtSpec`] per probe site, indexed by the site index in the low
//! 32 bits of the attach cookie, as libbpf does), and the [`UsdtRecord`] the
//! `usdt_probe` program writes for each hit.

use crate::event::EventHeader;

/// `EventHeader::kind` of a [`UsdtRecord`].
pub const KIND_USDT: u32 = 3;

/// Arguments one probe can carry (the `sys/sdt.h` maximum, as in libbpf).
pub const USDT_MAX_ARGS: usize = 12;
/// Entries of the `USDT_SPECS` map: probe sites attached at once.
pub const USDT_MAX_SITES: u32 = 4096;
/// Largest number of bytes copied from one string argument.
pub const USDT_STR_CAP_MAX: u8 = 128;
/// Bytes copied from a string argument when the mapping does not say.
pub const USDT_STR_CAP_DEFAULT: u8 = 64;
/// Bytes a record has for the strings of all its string arguments, at
/// least: the slots of arguments a probe does not have add to it.
pub const USDT_STR_BUF: usize = 344;

/// `UsdtArgSpec::kind`: the slot is unused.
pub const ARG_NONE: u8 = 0;
/// The value is the constant `val_off` (`-4@$5`).
pub const ARG_CONST: u8 = 1;
/// The value is in register `reg` (`8@%rdi`, `-4@%eax`, `1@%ah`).
pub const ARG_REG: u8 = 2;
/// The value is at `reg + val_off` in the target (`-4@-20(%rbp)`).
pub const ARG_REG_DEREF: u8 = 3;
/// The value is at `reg + (idx_reg << scale_shift) + val_off`
/// (`8@16(%rax,%rbx,8)`).
pub const ARG_SIB: u8 = 4;

/// `UsdtArgSpec::str_mode`: the argument is a plain integer.
pub const STR_NONE: u8 = 0;
/// The argument points at a NUL-terminated string.
pub const STR_NUL: u8 = 1;
/// The argument points at a string whose length is argument `len_arg`.
pub const STR_PTR_LEN: u8 = 2;

/// `UsdtArgSpec::reg` of the instruction pointer (`%rip`). At a uprobe the
/// saved instruction pointer is the probe's own address.
pub const REG_IP: u8 = 16;
/// Number of 8-byte slots in x86-64 `struct pt_regs`; register indices are
/// below it.
pub const PT_REGS_SLOTS: u8 = 21;

/// How to fetch one argument. Registers are indices of 8-byte slots in the
/// kernel's x86-64 `struct pt_regs` (r15 = 0 ... ip = 16 ... ss = 20).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsdtArgSpec {
    /// The constant (`ARG_CONST`) or the displacement (deref and SIB).
    pub val_off: u64,
    /// One of the `ARG_*` constants.
    pub kind: u8,
    /// Base register (`ARG_REG`, `ARG_REG_DEREF`, `ARG_SIB`).
    pub reg: u8,
    /// Index register (`ARG_SIB`).
    pub idx_reg: u8,
    /// log2 of the scale (`ARG_SIB`): 0..=3.
    pub scale_shift: u8,
    /// Size of the value in bytes: 1, 2, 4 or 8.
    pub size: u8,
    /// Non-zero: sign-extend the value, else zero-extend.
    pub signed: u8,
    /// Right shift applied to the register before truncation: 8 for the
    /// high-byte registers `%ah`, `%bh`, `%ch`, `%dh`.
    pub reg_shift: u8,
    /// One of the `STR_*` constants.
    pub str_mode: u8,
    /// Bytes copied at most from the string (`STR_NUL`, `STR_PTR_LEN`),
    /// 1..=USDT_STR_CAP_MAX.
    pub str_cap: u8,
    /// Index of the argument holding the length (`STR_PTR_LEN`); it must come
    /// before this argument.
    pub len_arg: u8,
    pub _pad: [u8; 6],
}

const _: () = assert!(core::mem::size_of::<UsdtArgSpec>() == 24);

/// One entry of the `USDT_SPECS` array map: how to read a site's arguments.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsdtSpec {
    pub args: [UsdtArgSpec; USDT_MAX_ARGS],
    /// Arguments in use, 0..=USDT_MAX_ARGS.
    pub arg_count: u32,
    /// Non-zero once the agent has filled the entry.
    pub active: u32,
}

const _: () = assert!(core::mem::size_of::<UsdtSpec>() == 24 * USDT_MAX_ARGS + 8);

/// Bytes of a record's body: room for every argument value and the string
/// area.
pub const USDT_BODY: usize = 8 * USDT_MAX_ARGS + USDT_STR_BUF;

/// A USDT probe fired. `header.site` is the site index (into the agent's USDT
/// site table and `USDT_SPECS`), `header.goid` is 0 (USDT probes fire in C
/// code: the agent pairs by request id, not goroutine).
///
/// The record is as long as what it holds: the fixed head
/// ([`USDT_RECORD_HEAD`] bytes), then `arg_count` values, then `str_used`
/// string bytes, and it ends there. The program builds it in per-CPU memory
/// and copies only that much into the ring buffer: a request id's record is
/// 80 bytes, where a fixed-size one took 544. Each cache line of ring memory
/// is a first touch for the CPU that writes it and for the one that reads it
/// (a miss of 100 ns or more here, once the target does work between probes),
/// and a ring of the same size holds seven times as many records.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UsdtRecord {
    pub header: EventHeader,
    /// Arguments read (the spec's `arg_count`).
    pub arg_count: u16,
    /// String bytes after the values.
    pub str_used: u16,
    /// Bit `i` set: argument `i` could not be read (its value is 0).
    pub failed: u16,
    /// Bit `i` set: string argument `i` was cut short (its cap, or no room
    /// left in the record).
    pub truncated: u16,
    /// Bit `i` set: argument `i` is a string whose bytes are in the record.
    pub str_mask: u16,
    pub _pad: u16,
    /// Bytes of string argument `i` (without the NUL), where bit `i` of
    /// `str_mask` is set. The strings lie back to back in argument order.
    pub str_len: [u8; USDT_MAX_ARGS],
    /// `arg_count` argument values, sign- or zero-extended to 64 bits by
    /// their size (0 for a string, whose pointer the agent does not need),
    /// then the string bytes from byte `8 * arg_count`.
    pub body: [u64; USDT_BODY / 8],
}

/// Bytes of a [`UsdtRecord`] before its values.
pub const USDT_RECORD_HEAD: usize = core::mem::offset_of!(UsdtRecord, body);

const _: () = assert!(USDT_BODY.is_multiple_of(8));
const _: () = assert!(USDT_RECORD_HEAD == 32 + 12 + USDT_MAX_ARGS);
const _: () = assert!(USDT_RECORD_HEAD.is_multiple_of(8));
const _: () = assert!(core::mem::size_of::<UsdtRecord>() == USDT_RECORD_HEAD + USDT_BODY);
// A string's length fits its `str_len` byte.
const _: () = assert!(USDT_STR_CAP_MAX as usize <= u8::MAX as usize);
// The bit sets have a bit per argument.
const _: () = assert!(USDT_MAX_ARGS <= 16);
const _: () = assert!(core::mem::size_of::<UsdtRecord>() <= crate::http::MAX_RECORD);
