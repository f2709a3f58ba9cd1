//! Byte readers: a zero-copy [`Cursor`] over a byte slice (for batch data
//! already in memory) and a buffered [`Source`] over an `io::Read` stream
//! (for batch headers and data as they arrive). Both track the absolute byte
//! offset in the input so every error can say where it happened.

use std::io::{self, Read};

/// Why a cursor read failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CursorError {
    /// Ran out of bytes.
    Eof,
    /// A varint longer than 64 bits.
    Overflow,
}

impl std::fmt::Display for CursorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CursorError::Eof => "unexpected EOF",
            CursorError::Overflow => "varint overflows a 64-bit integer",
        })
    }
}

/// Decodes an unsigned LEB128 varint at the start of `buf` with the exact
/// semantics of Go's `binary.Uvarint`: `Ok((value, len))`, or why not.
#[inline(always)]
pub(crate) fn uvarint(buf: &[u8]) -> Result<(u64, usize), CursorError> {
    // Fast path: one byte.
    match buf.first() {
        Some(&b) if b < 0x80 => return Ok((b as u64, 1)),
        None => return Err(CursorError::Eof),
        _ => {}
    }
    let mut x: u64 = 0;
    let mut s: u32 = 0;
    for (i, &b) in buf.iter().enumerate() {
        if i == 10 {
            return Err(CursorError::Overflow);
        }
        if b < 0x80 {
            if i == 9 && b > 1 {
                return Err(CursorError::Overflow);
            }
            return Ok((x | (b as u64) << s, i + 1));
        }
        x |= ((b & 0x7f) as u64) << s;
        s += 7;
    }
    Err(CursorError::Eof)
}

/// A zero-copy reader over a byte slice that knows its absolute offset.
#[derive(Debug, Clone)]
pub(crate) struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
    base: u64,
}

impl<'a> Cursor<'a> {
    /// A cursor over `data`, whose first byte is at input offset `base`.
    pub(crate) fn new(data: &'a [u8], base: u64) -> Self {
        Cursor { data, pos: 0, base }
    }

    pub(crate) fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    pub(crate) fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    pub(crate) fn read_u8(&mut self) -> Result<u8, CursorError> {
        let b = *self.data.get(self.pos).ok_or(CursorError::Eof)?;
        self.pos += 1;
        Ok(b)
    }

    #[inline]
    pub(crate) fn read_uvarint(&mut self) -> Result<u64, CursorError> {
        let rest = self.data.get(self.pos..).unwrap_or(&[]);
        let (v, n) = uvarint(rest)?;
        self.pos += n;
        Ok(v)
    }

    pub(crate) fn read_bytes(&mut self, n: usize) -> Result<&'a [u8], CursorError> {
        let end = self.pos.checked_add(n).ok_or(CursorError::Eof)?;
        let b = self.data.get(self.pos..end).ok_or(CursorError::Eof)?;
        self.pos = end;
        Ok(b)
    }
}

/// Why a stream read failed.
#[derive(Debug)]
pub(crate) enum SourceError {
    Io { offset: u64, source: io::Error },
    Eof { offset: u64 },
    Overflow { offset: u64 },
}

/// A buffered reader over a stream with an absolute offset.
pub(crate) struct Source<R> {
    r: R,
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
    /// Input offset of `buf[0]`.
    base: u64,
    eof: bool,
}

const BUF_SIZE: usize = 256 << 10;

impl<R: Read> Source<R> {
    pub(crate) fn new(r: R) -> Self {
        Source {
            r,
            buf: vec![0; BUF_SIZE].into_boxed_slice(),
            pos: 0,
            end: 0,
            base: 0,
            eof: false,
        }
    }

    pub(crate) fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// Refills the buffer; returns false at end of input.
    fn fill(&mut self) -> Result<bool, SourceError> {
        if self.pos < self.end {
            return Ok(true);
        }
        if self.eof {
            return Ok(false);
        }
        self.base += self.end as u64;
        self.pos = 0;
        self.end = 0;
        loop {
            match self.r.read(&mut self.buf) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.end = n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(SourceError::Io {
                        offset: self.base,
                        source: e,
                    });
                }
            }
        }
    }

    /// Reads one byte, `None` at a clean end of input.
    pub(crate) fn read_byte_opt(&mut self) -> Result<Option<u8>, SourceError> {
        if !self.fill()? {
            return Ok(None);
        }
        let b = self.buf[self.pos];
        self.pos += 1;
        Ok(Some(b))
    }

    pub(crate) fn read_byte(&mut self) -> Result<u8, SourceError> {
        let off = self.offset();
        self.read_byte_opt()?
            .ok_or(SourceError::Eof { offset: off })
    }

    /// Go's `binary.ReadUvarint`.
    pub(crate) fn read_uvarint(&mut self) -> Result<u64, SourceError> {
        let start = self.offset();
        let mut x: u64 = 0;
        let mut s: u32 = 0;
        for i in 0..10 {
            let Some(b) = self.read_byte_opt()? else {
                return Err(SourceError::Eof { offset: start });
            };
            if b < 0x80 {
                if i == 9 && b > 1 {
                    return Err(SourceError::Overflow { offset: start });
                }
                return Ok(x | (b as u64) << s);
            }
            x |= ((b & 0x7f) as u64) << s;
            s += 7;
        }
        Err(SourceError::Overflow { offset: start })
    }

    /// Appends up to `n` bytes to `out`; returns how many were available.
    pub(crate) fn read_into(&mut self, out: &mut Vec<u8>, n: usize) -> Result<usize, SourceError> {
        let mut got = 0;
        while got < n {
            if !self.fill()? {
                break;
            }
            let take = (n - got).min(self.end - self.pos);
            out.extend_from_slice(&self.buf[self.pos..self.pos + take]);
            self.pos += take;
            got += take;
        }
        Ok(got)
    }

    /// Skips up to `n` bytes; returns how many were available.
    pub(crate) fn skip(&mut self, n: usize) -> Result<usize, SourceError> {
        let mut got = 0;
        while got < n {
            if !self.fill()? {
                break;
            }
            let take = (n - got).min(self.end - self.pos);
            self.pos += take;
            got += take;
        }
        Ok(got)
    }
}
