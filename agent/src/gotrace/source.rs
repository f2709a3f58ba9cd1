//! The stream reader: a buffered [`Source`] over an `io::Read` stream (for
//! batch headers and data as they arrive) that tracks the absolute byte
//! offset in the input so every error can say where it happened. Batch data
//! already in memory is read with [`crate::cursor::Cursor`]; both decode
//! varints by the one rule of [`crate::cursor::uvarint_step`].

use std::io::{self, Read};

use crate::cursor::{MAX_VARINT_LEN, ReadError, VarintStep, uvarint_step};

/// The message Go's trace parser gives for a failed read: the gotrace
/// errors say it, with their own offset, for a [`ReadError`] as for a
/// [`SourceError`].
pub(crate) fn read_msg(e: ReadError) -> &'static str {
    match e {
        ReadError::Eof { .. } => EOF_MSG,
        ReadError::BadVarint { .. } => OVERFLOW_MSG,
    }
}

pub(crate) const EOF_MSG: &str = "unexpected EOF";
pub(crate) const OVERFLOW_MSG: &str = "varint overflows a 64-bit integer";

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

    /// Go's `binary.ReadUvarint`: at most [`MAX_VARINT_LEN`] bytes, read
    /// one by one; errors carry the offset where the varint starts.
    pub(crate) fn read_uvarint(&mut self) -> Result<u64, SourceError> {
        let start = self.offset();
        let mut x: u64 = 0;
        for i in 0..MAX_VARINT_LEN {
            let Some(b) = self.read_byte_opt()? else {
                return Err(SourceError::Eof { offset: start });
            };
            match uvarint_step(x, i, b) {
                VarintStep::More(v) => x = v,
                VarintStep::Done(v) => return Ok(v),
                VarintStep::Overflow => return Err(SourceError::Overflow { offset: start }),
            }
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
