//! Reading untrusted bytes: one zero-copy [`Cursor`] over a byte slice and
//! one [`uvarint`] decoder with the semantics of Go's
//! `encoding/binary.Uvarint`, shared by the Go binary analysis
//! ([`crate::binary`]), the execution-trace decoder ([`crate::gotrace`]) and
//! the flight-recorder type names ([`crate::flight`]).
//!
//! Every read is bounds-checked, a failed read does not move the cursor, and
//! every failure carries the absolute byte offset where it happened.

/// The longest varint encoding of a `u64`, in bytes.
pub const MAX_VARINT_LEN: usize = 10;

/// A read past the end of the data, or a malformed varint.
///
/// Cheap and `Copy`: the module-boundary errors wrap it as their `#[source]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// Fewer than `wanted` bytes are left at `offset`.
    #[error("unexpected end of data at byte {offset} (wanted {wanted} more bytes)")]
    Eof { offset: u64, wanted: usize },
    /// A varint longer than 10 bytes or overflowing 64 bits, starting at
    /// `offset`.
    #[error("malformed varint at byte {offset}")]
    BadVarint { offset: u64 },
}

/// What one byte does to a varint being decoded (see [`uvarint_step`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VarintStep {
    /// The varint goes on; the value so far.
    More(u64),
    /// The varint ends with this byte; its value.
    Done(u64),
    /// The varint overflows 64 bits.
    Overflow,
}

/// The varint rule for one byte: folds `b`, byte `i` (from 0) of a varint,
/// into the value so far `x`. Byte 10 and a tenth byte above 1 overflow.
///
/// [`uvarint`] applies it to a slice; a stream reader applies it byte by
/// byte (and stops after [`MAX_VARINT_LEN`] bytes, as Go's
/// `binary.ReadUvarint` does).
#[inline(always)]
pub fn uvarint_step(x: u64, i: usize, b: u8) -> VarintStep {
    if i >= MAX_VARINT_LEN {
        return VarintStep::Overflow;
    }
    let shift = 7 * i as u32;
    if b < 0x80 {
        if i == MAX_VARINT_LEN - 1 && b > 1 {
            return VarintStep::Overflow;
        }
        return VarintStep::Done(x | u64::from(b) << shift);
    }
    VarintStep::More(x | u64::from(b & 0x7f) << shift)
}

/// Decodes an unsigned LEB128 varint at the start of `buf` with the exact
/// semantics of Go's `binary.Uvarint`: `Ok((value, length))`, or
/// [`ReadError::Eof`] if `buf` ends first, or [`ReadError::BadVarint`].
/// Error offsets are relative to `buf` (the cursor adds its own).
#[inline(always)]
pub fn uvarint(buf: &[u8]) -> Result<(u64, usize), ReadError> {
    // Fast path: one byte.
    match buf.first() {
        Some(&b) if b < 0x80 => return Ok((u64::from(b), 1)),
        None => {
            return Err(ReadError::Eof {
                offset: 0,
                wanted: 1,
            });
        }
        _ => {}
    }
    let mut x: u64 = 0;
    for (i, &b) in buf.iter().enumerate() {
        match uvarint_step(x, i, b) {
            VarintStep::More(v) => x = v,
            VarintStep::Done(v) => return Ok((v, i + 1)),
            VarintStep::Overflow => return Err(ReadError::BadVarint { offset: 0 }),
        }
    }
    Err(ReadError::Eof {
        offset: buf.len() as u64,
        wanted: 1,
    })
}

/// A position in a borrowed byte slice whose first byte is at absolute
/// offset `base` in the input (0 unless made with [`Cursor::with_base`]).
#[derive(Clone, Debug)]
pub struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
    base: u64,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Cursor {
            data,
            pos: 0,
            base: 0,
        }
    }

    /// A cursor at `pos` in `data` (reads fail if `pos` is out of range).
    pub fn at(data: &'a [u8], pos: usize) -> Self {
        Cursor { data, pos, base: 0 }
    }

    /// A cursor at the start of `data`, whose first byte is at input offset
    /// `base`.
    pub fn with_base(data: &'a [u8], base: u64) -> Self {
        Cursor { data, pos: 0, base }
    }

    /// The current position in `data`.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// The current absolute offset in the input (`base + pos`).
    pub fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// Whether no bytes are left.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// How many bytes are left.
    pub fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    fn eof(&self, wanted: usize) -> ReadError {
        ReadError::Eof {
            offset: self.offset(),
            wanted,
        }
    }

    /// The next `n` bytes, borrowed.
    #[inline]
    pub fn read_bytes(&mut self, n: usize) -> Result<&'a [u8], ReadError> {
        let bytes = self
            .pos
            .checked_add(n)
            .and_then(|end| self.data.get(self.pos..end))
            .ok_or_else(|| self.eof(n))?;
        self.pos += n;
        Ok(bytes)
    }

    /// Skips `n` bytes.
    pub fn skip(&mut self, n: usize) -> Result<(), ReadError> {
        self.read_bytes(n).map(|_| ())
    }

    fn read_array<const N: usize>(&mut self) -> Result<[u8; N], ReadError> {
        let eof = self.eof(N);
        let bytes = self.read_bytes(N)?;
        bytes.try_into().map_err(|_| eof)
    }

    #[inline]
    pub fn read_u8(&mut self) -> Result<u8, ReadError> {
        let b = *self.data.get(self.pos).ok_or_else(|| self.eof(1))?;
        self.pos += 1;
        Ok(b)
    }

    /// A little-endian `u32`.
    pub fn read_u32(&mut self) -> Result<u32, ReadError> {
        Ok(u32::from_le_bytes(self.read_array()?))
    }

    /// A little-endian `u64`.
    pub fn read_u64(&mut self) -> Result<u64, ReadError> {
        Ok(u64::from_le_bytes(self.read_array()?))
    }

    /// A little-endian word of `ptr_size` bytes (4 or 8; anything else reads 8).
    pub fn read_word(&mut self, ptr_size: u8) -> Result<u64, ReadError> {
        if ptr_size == 4 {
            self.read_u32().map(u64::from)
        } else {
            self.read_u64()
        }
    }

    /// An unsigned varint ([`uvarint`]); errors carry absolute offsets.
    #[inline]
    pub fn read_uvarint(&mut self) -> Result<u64, ReadError> {
        let rest = self.data.get(self.pos..).unwrap_or(&[]);
        match uvarint(rest) {
            Ok((v, n)) => {
                self.pos += n;
                Ok(v)
            }
            Err(e) => Err(self.shift(e)),
        }
    }

    /// `e`, with offsets relative to the current position, made absolute.
    #[cold]
    fn shift(&self, e: ReadError) -> ReadError {
        let at = self.offset();
        match e {
            ReadError::Eof { offset, wanted } => ReadError::Eof {
                offset: at + offset,
                wanted,
            },
            ReadError::BadVarint { offset } => ReadError::BadVarint {
                offset: at + offset,
            },
        }
    }

    /// Bytes up to (not including) the next NUL; the NUL is consumed.
    pub fn read_cstr(&mut self) -> Result<&'a [u8], ReadError> {
        let rest = self.data.get(self.pos..).ok_or_else(|| self.eof(1))?;
        let len = rest.iter().position(|&b| b == 0).ok_or(ReadError::Eof {
            offset: self.base + self.data.len() as u64,
            wanted: 1,
        })?;
        let bytes = self.read_bytes(len)?;
        self.pos += 1;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_little_endian_words_and_reports_offsets() {
        let data = [1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 9];
        let mut c = Cursor::new(&data);
        assert_eq!(c.read_u32(), Ok(1));
        assert_eq!(c.read_word(8), Ok(2));
        assert_eq!(c.pos(), 12);
        assert_eq!(
            c.read_u32(),
            Err(ReadError::Eof {
                offset: 12,
                wanted: 4
            })
        );
        // A failed read does not move the cursor.
        assert_eq!(c.read_u8(), Ok(9));
    }

    #[test]
    fn uvarint_matches_go_encoding() {
        assert_eq!(Cursor::new(&[0x00]).read_uvarint(), Ok(0));
        assert_eq!(Cursor::new(&[0x7f]).read_uvarint(), Ok(127));
        assert_eq!(Cursor::new(&[0xac, 0x02]).read_uvarint(), Ok(300));
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(Cursor::new(&max).read_uvarint(), Ok(u64::MAX));
        let overflow = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert_eq!(
            Cursor::new(&overflow).read_uvarint(),
            Err(ReadError::BadVarint { offset: 0 })
        );
        assert_eq!(
            Cursor::new(&[0x80, 0x80]).read_uvarint(),
            Err(ReadError::Eof {
                offset: 2,
                wanted: 1
            })
        );
    }

    #[test]
    fn cstr_and_huge_lengths_are_bounded() {
        let mut c = Cursor::new(b"abc\0de");
        assert_eq!(c.read_cstr(), Ok(&b"abc"[..]));
        assert_eq!(c.pos(), 4);
        assert!(c.read_cstr().is_err());
        assert!(Cursor::at(b"xy", 1).read_bytes(usize::MAX).is_err());
        assert!(Cursor::at(b"xy", 5).read_u8().is_err());
    }

    #[test]
    fn uvarint_has_go_binary_uvarint_edges() {
        assert_eq!(uvarint(&[0x01, 0xff]), Ok((1, 1)));
        assert_eq!(uvarint(&[0xac, 0x02, 0xff]), Ok((300, 2)));
        assert_eq!(
            uvarint(&[]),
            Err(ReadError::Eof {
                offset: 0,
                wanted: 1
            })
        );
        // Ten continuation bytes: Go's Uvarint wants more input if the
        // slice ends there, and overflows if there is an eleventh byte.
        let ten = [0x80; 10];
        assert_eq!(
            uvarint(&ten),
            Err(ReadError::Eof {
                offset: 10,
                wanted: 1
            })
        );
        let eleven = [0x80; 11];
        assert_eq!(uvarint(&eleven), Err(ReadError::BadVarint { offset: 0 }));
    }

    #[test]
    fn errors_carry_the_absolute_offset() {
        let data = [0x05, 0x80, 0x80];
        let mut c = Cursor::with_base(&data, 1000);
        assert_eq!(c.offset(), 1000);
        assert_eq!(c.read_uvarint(), Ok(5));
        assert_eq!(c.offset(), 1001);
        assert_eq!(c.remaining(), 2);
        assert_eq!(
            c.read_uvarint(),
            Err(ReadError::Eof {
                offset: 1003,
                wanted: 1
            })
        );
        // The failed varint did not move the cursor.
        assert_eq!(c.offset(), 1001);
        assert_eq!(
            c.read_bytes(3),
            Err(ReadError::Eof {
                offset: 1001,
                wanted: 3
            })
        );
        assert_eq!(c.read_bytes(2), Ok(&[0x80, 0x80][..]));
        assert!(c.is_empty());
        assert_eq!(
            c.read_u8(),
            Err(ReadError::Eof {
                offset: 1003,
                wanted: 1
            })
        );
        let overflow = [0xff; 11];
        assert_eq!(
            Cursor::with_base(&overflow, 7).read_uvarint(),
            Err(ReadError::BadVarint { offset: 7 })
        );
    }
}
