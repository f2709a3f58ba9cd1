//! USDT probes: the argument specs the agent writes into the `USDT_SPECS`
//! map (one [`UsdtSpec`] per probe site, indexed by the site index in the low
//! 32 bits of the attach cookie, as libbpf does), and the [`UsdtRecord`] the
//! `usdt_probe` program writes for each hit.

use crate::event::EventHeader;

/// Arguments one probe can carry (the `sys/sdt.h` maximum, as in libbpf).
pub const USDT_MAX_ARGS: usize = 12;
/// Entries of the `USDT_SPECS` map: probe sites attached at once.
pub const USDT_MAX_SITES: u32 = 4096;
/// Largest number of bytes copied from one string argument.
pub const USDT_STR_CAP_MAX: u8 = 128;
/// Bytes copied from a string argument when the mapping does not say.
pub const USDT_STR_CAP_DEFAULT: u8 = 64;
/// Bytes of the record's string area, shared by all string arguments.
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

/// A USDT probe fired. `header.site` is the site index (into the agent's USDT
/// site table and `USDT_SPECS`), `header.goid` is 0 (USDT probes fire in C
/// code: the agent pairs by request id, not goroutine).
///
/// The fields the agent reads for every record come first, then the string
/// bytes, then the values: a record with one short string argument (a
/// request id) is read from its first two cache lines, which matters when
/// the agent drains a million records a second that another CPU just wrote.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UsdtRecord {
    pub header: EventHeader,
    /// Arguments read (the spec's `arg_count`).
    pub arg_count: u32,
    /// Bytes of `strings` in use.
    pub str_used: u32,
    /// Bit `i` set: argument `i` could not be read (its value is 0).
    pub failed: u32,
    /// Bit `i` set: string argument `i` was cut short (its cap, or no room
    /// left in `strings`).
    pub truncated: u32,
    /// Bit `i` set: argument `i` is a string whose bytes are in `strings`.
    pub str_mask: u32,
    pub _pad: u32,
    /// Where each string argument's bytes start in `strings`.
    pub str_off: [u16; USDT_MAX_ARGS],
    /// Bytes of each string argument copied (without the NUL).
    pub str_len: [u16; USDT_MAX_ARGS],
    /// String bytes of all string arguments, back to back.
    pub strings: [u8; USDT_STR_BUF],
    /// Argument values, sign- or zero-extended to 64 bits by their size. For
    /// string arguments, the pointer (which the agent does not read).
    pub args: [u64; USDT_MAX_ARGS],
}

const _: () = assert!(
    core::mem::size_of::<UsdtRecord>()
        == 32 + 8 + 8 * USDT_MAX_ARGS + 4 * USDT_MAX_ARGS + 16 + USDT_STR_BUF
);
const _: () = assert!(core::mem::size_of::<UsdtRecord>() <= crate::http::MAX_RECORD);
