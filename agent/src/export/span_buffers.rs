//! Reused buffers for encoded spans.
//!
//! A span builder encodes each span into a buffer of its own; the export
//! batcher copies a batch of them into one request body and is then done
//! with them. Allocating and freeing them one by one, 512 at a time,
//! overflowed the allocator's per-thread cache, so the copied buffers go
//! back to the builders instead.

use std::cell::RefCell;

/// Span buffers kept for reuse, per thread, at most this many.
const POOLED_SPAN_BUFFERS: usize = 512;
/// A buffer this large or larger is freed, not kept (a span with a long
/// stack trace, say), so the pool stays under a megabyte.
const POOLED_SPAN_BUFFER_MAX: usize = 2048;

thread_local! {
    /// Buffers of spans already copied into an export body. Per thread:
    /// the builders and the batcher share the agent's thread, so the same
    /// few hundred buffers go round without a lock.
    static SPAN_BUFFERS: RefCell<Vec<Vec<u8>>> =
        const { RefCell::new(Vec::new()) };
}

/// An empty buffer for encoding a span into, with room for `capacity` bytes.
pub fn span_buffer(capacity: usize) -> Vec<u8> {
    let reused = SPAN_BUFFERS.with_borrow_mut(Vec::pop);
    match reused {
        Some(mut buf) => {
            buf.clear();
            buf.reserve(capacity);
            buf
        }
        None => Vec::with_capacity(capacity),
    }
}

/// Gives a span's buffer back once its bytes are in an export body.
pub fn recycle_span_buffer(buf: Vec<u8>) {
    if buf.capacity() >= POOLED_SPAN_BUFFER_MAX {
        return;
    }
    SPAN_BUFFERS.with_borrow_mut(|pool| {
        if pool.len() < POOLED_SPAN_BUFFERS {
            pool.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_buffers_come_back_empty_and_big_ones_are_not_kept() {
        let mut buf = span_buffer(16);
        buf.extend_from_slice(b"an encoded span");
        let ptr = buf.as_ptr();
        recycle_span_buffer(buf);
        let again = span_buffer(16);
        assert!(again.is_empty());
        assert_eq!(
            again.as_ptr(),
            ptr,
            "the recycled buffer is handed out again"
        );

        recycle_span_buffer(Vec::with_capacity(POOLED_SPAN_BUFFER_MAX));
        let fresh = span_buffer(16);
        assert!(
            fresh.capacity() < POOLED_SPAN_BUFFER_MAX,
            "a big buffer is freed, not pooled"
        );
    }

    #[test]
    fn the_pool_is_bounded() {
        for _ in 0..POOLED_SPAN_BUFFERS + 10 {
            recycle_span_buffer(Vec::with_capacity(8));
        }
        assert_eq!(SPAN_BUFFERS.with_borrow(Vec::len), POOLED_SPAN_BUFFERS);
    }
}
