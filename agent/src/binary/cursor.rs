//! A zero-copy cursor over untrusted bytes: every read is bounds-checked and
//! every failure carries the byte offset where it happened.

/// A read past the end of the data, or a malformed varint.
///
/// Cheap and `Copy`: the module-boundary errors wrap it as their `#[source]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// Fewer than `wanted` bytes are left at `offset`.
    #[error("unexpected end of data at byte {offset} (wanted {wanted} more bytes)")]
    Eof { offset: usize, wanted: usize },
    /// A varint longer than 10 bytes or overflowing 64 bits.
    #[error("malformed varint at byte {offset}")]
    BadVarint { offset: usize },
}

/// A position in a borrowed byte slice.
#[derive(Clone, Debug)]
pub struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Cursor { data, pos: 0 }
    }

    /// A cursor at `pos` in `data` (reads fail if `pos` is out of range).
    pub fn at(data: &'a [u8], pos: usize) -> Self {
        Cursor { data, pos }
    }

    /// The current byte offset.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// The next `n` bytes, borrowed.
    pub fn read_bytes(&mut self, n: usize) -> Result<&'a [u8], ReadError> {
        let eof = ReadError::Eof {
            offset: self.pos,
            wanted: n,
        };
        let end = self.pos.checked_add(n).ok_or(eof)?;
        let bytes = self.data.get(self.pos..end).ok_or(eof)?;
        self.pos = end;
        Ok(bytes)
    }

    /// Skips `n` bytes.
    pub fn skip(&mut self, n: usize) -> Result<(), ReadError> {
        self.read_bytes(n).map(|_| ())
    }

    fn read_array<const N: usize>(&mut self) -> Result<[u8; N], ReadError> {
        let offset = self.pos;
        let bytes = self.read_bytes(N)?;
        bytes
            .try_into()
            .map_err(|_| ReadError::Eof { offset, wanted: N })
    }

    pub fn read_u8(&mut self) -> Result<u8, ReadError> {
        Ok(self.read_array::<1>()?[0])
    }

    pub fn read_u32(&mut self) -> Result<u32, ReadError> {
        Ok(u32::from_le_bytes(self.read_array()?))
    }

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

    /// An unsigned LEB128 varint as Go's `encoding/binary.Uvarint` writes it.
    pub fn read_uvarint(&mut self) -> Result<u64, ReadError> {
        let start = self.pos;
        let mut value: u64 = 0;
        for i in 0..10u32 {
            let byte = self.read_u8()?;
            if i == 9 && byte > 1 {
                return Err(ReadError::BadVarint { offset: start });
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ReadError::BadVarint { offset: start })
    }

    /// Bytes up to (not including) the next NUL; the NUL is consumed.
    pub fn read_cstr(&mut self) -> Result<&'a [u8], ReadError> {
        let rest = self.data.get(self.pos..).ok_or(ReadError::Eof {
            offset: self.pos,
            wanted: 1,
        })?;
        let len = rest.iter().position(|&b| b == 0).ok_or(ReadError::Eof {
            offset: self.data.len(),
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
}
