//! USDT argument specs: the x86-64 operand strings `sys/sdt.h` leaves in a
//! note (`-4@$5 8@%rdi -4@-20(%rbp) 8@16(%rax,%rbx,8) -4@counter(%rip)`),
//! parsed into [`ArgSpec`]s and encoded for the kernel side as
//! [`agent_common::usdt::UsdtArgSpec`].
//!
//! The forms are libbpf's (constant, register, register + offset
//! dereference, base + index * scale) plus what libbpf leaves out: the
//! high-byte registers (`%ah`), a missing size (taken as 8 bytes, unsigned,
//! as bcc does) and `%rip`-relative operands naming a symbol, which the
//! discovery resolves through the ELF symbol tables.

use std::fmt;

use agent_common::usdt::{ARG_CONST, ARG_REG, ARG_REG_DEREF, ARG_SIB, REG_IP, UsdtArgSpec};

/// Arguments one probe may have.
pub const MAX_ARGS: usize = agent_common::usdt::USDT_MAX_ARGS;

/// An x86-64 register, as a slot of the kernel's `struct pt_regs`, and the
/// part of it an operand names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Register {
    /// The operand's name without `%` (`eax`, `r9d`, `ah`).
    pub name: &'static str,
    /// Index of the 8-byte slot in `struct pt_regs` holding the full register.
    pub slot: u8,
    /// Right shift to reach the named part: 8 for `%ah`, `%bh`, `%ch`, `%dh`.
    pub shift: u8,
}

/// Where an argument's value is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArgLocation {
    /// `$imm`: the value itself.
    Const(i64),
    /// `%reg`: a register.
    Reg(Register),
    /// `off(%reg)`: memory at `reg + offset` (`%rip` reads relative to the
    /// probe's address, as libbpf does).
    Deref { base: Register, offset: i64 },
    /// `off(%base,%index,scale)`: memory at `base + index * scale + offset`.
    Sib {
        base: Register,
        index: Register,
        scale: u8,
        offset: i64,
    },
    /// `symbol+addend(%rip)`: memory at a symbol's address. `address` is the
    /// symbol's link-time address plus the addend, once resolved.
    Symbol {
        symbol: String,
        addend: i64,
        address: Option<u64>,
    },
}

/// One argument of a USDT probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgSpec {
    /// Size of the value in bytes: 1, 2, 4 or 8.
    pub size: u8,
    /// Whether the value is signed (a negative size in the note).
    pub signed: bool,
    pub location: ArgLocation,
}

/// Why an argument string could not be parsed. `pos` is the byte offset in
/// the probe's whole argument string.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("argument spec {text:?}: {reason} at byte {pos}")]
pub struct ArgSpecError {
    pub text: String,
    pub pos: usize,
    pub reason: &'static str,
}

/// Why an [`ArgSpec`] cannot be encoded for the kernel side.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("symbol {0:?} of a %rip-relative argument was not found in the ELF symbol tables")]
    UnresolvedSymbol(String),
}

impl fmt::Display for ArgSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.signed { "-" } else { "" };
        write!(f, "{sign}{}@", self.size)?;
        match &self.location {
            ArgLocation::Const(value) => write!(f, "${value}"),
            ArgLocation::Reg(reg) => write!(f, "%{}", reg.name),
            ArgLocation::Deref { base, offset } => {
                if *offset != 0 {
                    write!(f, "{offset}")?;
                }
                write!(f, "(%{})", base.name)
            }
            ArgLocation::Sib {
                base,
                index,
                scale,
                offset,
            } => {
                if *offset != 0 {
                    write!(f, "{offset}")?;
                }
                write!(f, "(%{},%{},{scale})", base.name, index.name)
            }
            ArgLocation::Symbol { symbol, addend, .. } => {
                write!(f, "{symbol}")?;
                if *addend != 0 {
                    write!(f, "{addend:+}")?;
                }
                write!(f, "(%rip)")
            }
        }
    }
}

impl ArgSpec {
    /// Encodes the spec for the `usdt_probe` program. `probe_vaddr` is the
    /// probe's (base-adjusted) link-time address: `%rip`-relative symbols are
    /// read relative to the saved instruction pointer, which at a uprobe is
    /// the probe's own run-time address.
    pub fn encode(&self, probe_vaddr: u64) -> Result<UsdtArgSpec, EncodeError> {
        let mut spec = UsdtArgSpec {
            size: self.size,
            signed: u8::from(self.signed),
            ..UsdtArgSpec::default()
        };
        match &self.location {
            ArgLocation::Const(value) => {
                spec.kind = ARG_CONST;
                spec.val_off = *value as u64;
            }
            ArgLocation::Reg(reg) => {
                spec.kind = ARG_REG;
                spec.reg = reg.slot;
                spec.reg_shift = reg.shift;
            }
            ArgLocation::Deref { base, offset } => {
                spec.kind = ARG_REG_DEREF;
                spec.reg = base.slot;
                spec.val_off = *offset as u64;
            }
            ArgLocation::Sib {
                base,
                index,
                scale,
                offset,
            } => {
                spec.kind = ARG_SIB;
                spec.reg = base.slot;
                spec.idx_reg = index.slot;
                spec.scale_shift = scale.trailing_zeros() as u8;
                spec.val_off = *offset as u64;
            }
            ArgLocation::Symbol {
                symbol, address, ..
            } => {
                let Some(address) = address else {
                    return Err(EncodeError::UnresolvedSymbol(symbol.clone()));
                };
                spec.kind = ARG_REG_DEREF;
                spec.reg = REG_IP;
                spec.val_off = address.wrapping_sub(probe_vaddr);
            }
        }
        Ok(spec)
    }
}

/// `struct pt_regs` slots (x86-64): r15 r14 r13 r12 bp bx r11 r10 r9 r8 ax cx
/// dx si di orig_ax ip cs flags sp ss.
const REGISTERS: &[(&str, u8, u8)] = &[
    ("rax", 10, 0),
    ("eax", 10, 0),
    ("ax", 10, 0),
    ("al", 10, 0),
    ("ah", 10, 8),
    ("rbx", 5, 0),
    ("ebx", 5, 0),
    ("bx", 5, 0),
    ("bl", 5, 0),
    ("bh", 5, 8),
    ("rcx", 11, 0),
    ("ecx", 11, 0),
    ("cx", 11, 0),
    ("cl", 11, 0),
    ("ch", 11, 8),
    ("rdx", 12, 0),
    ("edx", 12, 0),
    ("dx", 12, 0),
    ("dl", 12, 0),
    ("dh", 12, 8),
    ("rsi", 13, 0),
    ("esi", 13, 0),
    ("si", 13, 0),
    ("sil", 13, 0),
    ("rdi", 14, 0),
    ("edi", 14, 0),
    ("di", 14, 0),
    ("dil", 14, 0),
    ("rbp", 4, 0),
    ("ebp", 4, 0),
    ("bp", 4, 0),
    ("bpl", 4, 0),
    ("rsp", 19, 0),
    ("esp", 19, 0),
    ("sp", 19, 0),
    ("spl", 19, 0),
    ("rip", REG_IP, 0),
    ("eip", REG_IP, 0),
    ("r8", 9, 0),
    ("r8d", 9, 0),
    ("r8w", 9, 0),
    ("r8b", 9, 0),
    ("r9", 8, 0),
    ("r9d", 8, 0),
    ("r9w", 8, 0),
    ("r9b", 8, 0),
    ("r10", 7, 0),
    ("r10d", 7, 0),
    ("r10w", 7, 0),
    ("r10b", 7, 0),
    ("r11", 6, 0),
    ("r11d", 6, 0),
    ("r11w", 6, 0),
    ("r11b", 6, 0),
    ("r12", 3, 0),
    ("r12d", 3, 0),
    ("r12w", 3, 0),
    ("r12b", 3, 0),
    ("r13", 2, 0),
    ("r13d", 2, 0),
    ("r13w", 2, 0),
    ("r13b", 2, 0),
    ("r14", 1, 0),
    ("r14d", 1, 0),
    ("r14w", 1, 0),
    ("r14b", 1, 0),
    ("r15", 0, 0),
    ("r15d", 0, 0),
    ("r15w", 0, 0),
    ("r15b", 0, 0),
];

/// Looks up an x86-64 register by its AT&T name without `%`.
pub fn register(name: &str) -> Option<Register> {
    REGISTERS
        .iter()
        .find(|(n, _, _)| n.eq_ignore_ascii_case(name))
        .map(|&(name, slot, shift)| Register { name, slot, shift })
}

/// Parses a probe's whole argument string: operands separated by spaces.
pub fn parse_args(text: &str) -> Result<Vec<ArgSpec>, ArgSpecError> {
    let mut args = Vec::new();
    let bytes = text.as_bytes();
    let mut pos = 0;
    while pos < bytes.len() {
        if bytes[pos].is_ascii_whitespace() {
            pos += 1;
            continue;
        }
        // An operand ends at whitespace outside parentheses.
        let start = pos;
        let mut depth = 0u32;
        while pos < bytes.len() && (depth > 0 || !bytes[pos].is_ascii_whitespace()) {
            match bytes[pos] {
                b'(' => depth += 1,
                b')' => depth = depth.saturating_sub(1),
                _ => {}
            }
            pos += 1;
        }
        if args.len() == MAX_ARGS {
            return Err(ArgSpecError {
                text: text.to_owned(),
                pos: start,
                reason: "more than 12 arguments",
            });
        }
        let arg = parse_arg(&text[start..pos]).map_err(|(off, reason)| ArgSpecError {
            text: text.to_owned(),
            pos: start + off,
            reason,
        })?;
        args.push(arg);
    }
    Ok(args)
}

/// A cursor over one operand's *text* (a tokenizer for the argument spec,
/// not a byte reader like [`crate::cursor::Cursor`]); errors carry the byte
/// offset.
struct Cursor<'a> {
    s: &'a [u8],
    pos: usize,
}

type PResult<T> = Result<T, (usize, &'static str)>;

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, byte: u8, reason: &'static str) -> PResult<()> {
        if self.eat(byte) {
            Ok(())
        } else {
            Err((self.pos, reason))
        }
    }

    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(|b| b == b' ' || b == b'\t') {
            self.pos += 1;
        }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }

    /// A signed decimal or `0x` hexadecimal integer.
    fn integer(&mut self) -> PResult<i64> {
        let start = self.pos;
        let negative = if self.eat(b'-') {
            true
        } else {
            self.eat(b'+');
            false
        };
        let (radix, digits_start) =
            if self.s[self.pos..].starts_with(b"0x") || self.s[self.pos..].starts_with(b"0X") {
                self.pos += 2;
                (16, self.pos)
            } else {
                (10, self.pos)
            };
        while self.peek().is_some_and(|b| (b as char).is_digit(radix)) {
            self.pos += 1;
        }
        if self.pos == digits_start {
            return Err((start, "expected a number"));
        }
        let digits = std::str::from_utf8(&self.s[digits_start..self.pos])
            .map_err(|_| (start, "expected a number"))?;
        let magnitude =
            u64::from_str_radix(digits, radix).map_err(|_| (start, "number too large"))?;
        // Two's complement: `-0x8000000000000000` and large unsigned
        // constants keep their bits.
        Ok(if negative {
            (magnitude as i64).wrapping_neg()
        } else {
            magnitude as i64
        })
    }

    /// `%name`.
    fn register(&mut self) -> PResult<Register> {
        let start = self.pos;
        self.expect(b'%', "expected a register")?;
        let name_start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_alphanumeric()) {
            self.pos += 1;
        }
        let name = std::str::from_utf8(&self.s[name_start..self.pos]).unwrap_or("");
        register(name).ok_or((start, "unknown or unsupported register"))
    }

    /// A symbol name as the assembler prints it.
    fn symbol(&mut self) -> &'a str {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'$')
        {
            self.pos += 1;
        }
        std::str::from_utf8(&self.s[start..self.pos]).unwrap_or("")
    }
}

/// Parses one operand such as `-4@-20(%rbp)`; errors are (offset, reason).
fn parse_arg(text: &str) -> PResult<ArgSpec> {
    let mut c = Cursor {
        s: text.as_bytes(),
        pos: 0,
    };
    let (size, signed) = match text.find('@') {
        Some(at) => {
            let size = c.integer()?;
            if c.pos != at {
                return Err((c.pos, "expected '@' after the size"));
            }
            c.pos = at + 1;
            let signed = size < 0;
            match size.unsigned_abs() {
                n @ (1 | 2 | 4 | 8) => (n as u8, signed),
                _ => return Err((0, "size must be 1, 2, 4 or 8")),
            }
        }
        // Old notes carry no size: a full register, as bcc reads them.
        None => (8, false),
    };
    c.skip_spaces();
    let location = match c.peek() {
        Some(b'$') => {
            c.pos += 1;
            ArgLocation::Const(c.integer()?)
        }
        Some(b'%') => {
            let rest = &c.s[c.pos + 1..];
            if rest.len() >= 3 && rest[2] == b':' && rest[1] == b's' {
                return Err((c.pos, "segment-relative operands are not supported"));
            }
            ArgLocation::Reg(c.register()?)
        }
        Some(b'-' | b'+' | b'0'..=b'9' | b'(') => {
            let offset = if c.peek() == Some(b'(') {
                0
            } else {
                c.integer()?
            };
            memory(&mut c, offset)?
        }
        Some(b) if b.is_ascii_alphabetic() || b == b'_' || b == b'.' => {
            let sym_pos = c.pos;
            let symbol = c.symbol().to_owned();
            let addend = match c.peek() {
                Some(b'+' | b'-') => c.integer()?,
                _ => 0,
            };
            match memory(&mut c, 0)? {
                ArgLocation::Deref { base, .. } if base.slot == REG_IP => ArgLocation::Symbol {
                    symbol,
                    addend,
                    address: None,
                },
                _ => return Err((sym_pos, "a symbol is only supported relative to %rip")),
            }
        }
        _ => return Err((c.pos, "expected $constant, %register or memory operand")),
    };
    c.skip_spaces();
    if !c.at_end() {
        return Err((c.pos, "unexpected text after the operand"));
    }
    Ok(ArgSpec {
        size,
        signed,
        location,
    })
}

/// `(%base)`, `(%base,%index)` or `(%base,%index,scale)` after a displacement.
fn memory(c: &mut Cursor<'_>, offset: i64) -> PResult<ArgLocation> {
    c.expect(b'(', "expected '('")?;
    c.skip_spaces();
    if c.peek() == Some(b',') {
        return Err((
            c.pos,
            "memory operands without a base register are not supported",
        ));
    }
    let base = c.register()?;
    c.skip_spaces();
    if c.eat(b')') {
        return Ok(ArgLocation::Deref { base, offset });
    }
    c.expect(b',', "expected ',' or ')'")?;
    c.skip_spaces();
    let index = c.register()?;
    if index.slot == REG_IP || index.shift != 0 {
        return Err((c.pos, "invalid index register"));
    }
    c.skip_spaces();
    let scale = if c.eat(b',') {
        c.skip_spaces();
        let at = c.pos;
        match c.integer()? {
            n @ (1 | 2 | 4 | 8) => n as u8,
            _ => return Err((at, "scale must be 1, 2, 4 or 8")),
        }
    } else {
        1
    };
    c.skip_spaces();
    c.expect(b')', "expected ')'")?;
    Ok(ArgLocation::Sib {
        base,
        index,
        scale,
        offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> ArgSpec {
        let mut args = parse_args(text).expect("parses");
        assert_eq!(args.len(), 1);
        args.remove(0)
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "-4@$5",
            "8@%rdi",
            "1@%ah",
            "-4@-20(%rbp)",
            "8@(%rax,%rbx,8)",
            "-2@16(%rax,%rbx,2)",
            "8@counter+8(%rip)",
            "4@(%rsp)",
        ] {
            assert_eq!(one(text).to_string(), text);
        }
    }
}
