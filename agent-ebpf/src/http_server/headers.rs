//! Finding a header (`Traceparent`, `Tracestate`) in a request's
//! `http.Header`, a Go `map[string][]string`, from BPF.
//!
//! The map's hash function is seeded per map (AES-based on amd64), so the
//! probe cannot compute where a key lives: it reads the map's groups (swiss
//! tables, Go 1.24+) or buckets (Go 1.17-1.23) one helper call each and
//! compares the keys of the right length. net/http removes `Host` from the
//! map, so for a request with no other header the search ends at the map
//! header.

use agent_common::http::{
    BUCKET_KEYS, BUCKET_MIN_TOPHASH, BUCKET_OVERFLOW, BUCKET_SIZE, BUCKET_VALUES,
    GROUP_CTRL_EMPTY_BIT, GROUP_SIZE, GROUP_SLOT_SIZE, HttpOffsets, MAP_LAYOUT_BUCKETS,
    MAP_LAYOUT_SWISS,
};
use aya_ebpf::helpers::generated::bpf_probe_read_user as read_user_raw;

use crate::{
    go::{copy_string, read_field},
    record::{load, store},
};

/// Bytes of scratch space a group or bucket is read into.
pub const SCRATCH_LEN: usize = BUCKET_SIZE as usize;
const _: () = assert!(GROUP_SIZE <= BUCKET_SIZE);

/// Groups or buckets read at most: a swiss table of 128 slots (up to 112
/// headers), or 8 buckets (the size net/http's pre-sizing gives 27 to 52
/// headers) with 8 overflow buckets. A bucket overflows when more than 8 of
/// the map's keys hash to it: with 26 keys in 8 buckets that happens to
/// about one map in 40, so the reads must cover overflow buckets as well as
/// main ones. A larger map is counted (`headers_incomplete`).
const MAX_GROUPS: usize = 16;
/// Keys of the right length whose bytes are compared at most.
const MAX_CANDIDATES: usize = 4;
/// The keys searched for, as net/http canonicalizes them.
pub const TRACEPARENT_KEY: [u8; 11] = *b"Traceparent";
pub const TRACESTATE_KEY: [u8; 10] = *b"Tracestate";
/// Bytes of the map header read: every field used lies in them.
const HEAD_LEN: usize = 48;

/// What a search found.
pub enum Search {
    /// The header's first value: its full length (the first
    /// `min(len, CAP)` bytes are in the destination).
    Found(u32),
    /// Every entry was looked at: there is no such header.
    Absent,
    /// Not every entry could be looked at (a read failed, the map is larger
    /// than the probe searches, or it is growing).
    Incomplete,
}

#[inline(always)]
fn word(bytes: &[u8], at: usize) -> Option<u64> {
    let b = bytes.get(at..at + 8)?;
    Some(u64::from_le_bytes([
        b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
    ]))
}

#[inline(always)]
fn head_word(head: &[u8; HEAD_LEN], offset: u64) -> Option<u64> {
    if offset > (HEAD_LEN - 8) as u64 {
        return None;
    }
    word(head, offset as usize)
}

/// Reads `len` bytes at `addr` into the front of `scratch`.
#[inline(always)]
fn read_into(scratch: &mut [u8; SCRATCH_LEN], addr: u64, len: u64) -> bool {
    if len > SCRATCH_LEN as u64 || len == 0 {
        return false;
    }
    // SAFETY: `scratch` has room for `len` bytes; a bad address makes the
    // helper fail.
    unsafe { read_user_raw(scratch.as_mut_ptr().cast(), len as u32, addr as *const _) == 0 }
}

/// Slots whose key has the right length, found while scanning groups.
///
/// Every loop-carried value lives here, in map memory, and is read and
/// written volatile: in registers or on the stack, each path through the
/// unrolled scans would carry different constants and the verifier could not
/// prune them (it gave up, "argument list too long"); loaded from a map
/// value, each is just an unknown number.
#[repr(C)]
pub struct Scan {
    found: u64,
    /// Set when something could not be looked at.
    incomplete: u64,
    /// Bucket scan: the next main bucket, the pending overflow bucket.
    cursor: [u64; 2],
    keys: [u64; MAX_CANDIDATES],
    values: [u64; MAX_CANDIDATES],
    counts: [u64; MAX_CANDIDATES],
}

impl Scan {
    /// Notes the slot whose key header is at `key_at` and value at
    /// `value_at` in `scratch` if its key is `key_len` bytes long.
    #[inline(always)]
    fn slot(&mut self, scratch: &[u8; SCRATCH_LEN], key_len: u64, key_at: usize, value_at: usize) {
        if word(scratch, key_at + 8) != Some(key_len) {
            return;
        }
        let n = load(&self.found);
        if n >= MAX_CANDIDATES as u64 {
            store(&mut self.incomplete, 1);
            return;
        }
        let (Some(key), Some(values), Some(count)) = (
            word(scratch, key_at),
            word(scratch, value_at),
            word(scratch, value_at + 8),
        ) else {
            store(&mut self.incomplete, 1);
            return;
        };
        let i = n as usize;
        if i < MAX_CANDIDATES {
            self.keys[i] = key;
            self.values[i] = values;
            self.counts[i] = count;
            store(&mut self.found, n + 1);
        }
    }
}

/// Whether the `N` bytes at `at` spell `key`; `None` if unreadable.
#[inline(always)]
fn is_key<const N: usize>(at: u64, key: &[u8; N]) -> Option<bool> {
    const { assert!(N > 8 && N <= 16) };
    let mut bytes = [0u8; 16];
    // SAFETY: `bytes` has room for the N bytes read; a bad address makes
    // the helper fail.
    let ret = unsafe { read_user_raw(bytes.as_mut_ptr().cast(), N as u32, at as *const _) };
    if ret != 0 {
        return None;
    }
    let mut same = word(&bytes, 0) == word(key, 0);
    for i in 8..N {
        same &= bytes[i] == key[i];
    }
    Some(same)
}

/// Scans the groups (swiss) or buckets at `data` into `scan`, noting the
/// keys `key_len` bytes long.
#[inline(always)]
fn scan_groups(
    off: &HttpOffsets,
    head: &[u8; HEAD_LEN],
    data: u64,
    key_len: u64,
    scratch: &mut [u8; SCRATCH_LEN],
    scan: &mut Scan,
) {
    match off.map_layout {
        MAP_LAYOUT_SWISS => {
            let Some(dir_len) = head_word(head, off.map_size) else {
                store(&mut scan.incomplete, 1);
                return;
            };
            // A small map's dirPtr is its one group; a larger one's is a
            // directory of tables, the first of which is searched.
            let (groups, n) = if dir_len == 0 {
                (data, 1)
            } else {
                if dir_len > 1 {
                    store(&mut scan.incomplete, 1);
                }
                let table = read_field::<u64>(data, 0).unwrap_or(0);
                let (Some(groups), Some(mask)) = (
                    read_field::<u64>(table, off.table_groups),
                    read_field::<u64>(table, off.table_groups_mask),
                ) else {
                    store(&mut scan.incomplete, 1);
                    return;
                };
                (groups, mask.saturating_add(1))
            };
            if n > MAX_GROUPS as u64 {
                store(&mut scan.incomplete, 1);
            }
            for g in 0..MAX_GROUPS {
                if g as u64 >= n {
                    break;
                }
                if !read_into(scratch, groups + g as u64 * GROUP_SIZE, GROUP_SIZE) {
                    store(&mut scan.incomplete, 1);
                    return;
                }
                for s in 0..8 {
                    if scratch[s] & GROUP_CTRL_EMPTY_BIT == 0 {
                        let key_at = 8 + s * GROUP_SLOT_SIZE;
                        scan.slot(scratch, key_len, key_at, key_at + 16);
                    }
                }
            }
        }
        MAP_LAYOUT_BUCKETS => {
            // hmap.B is one byte; its offset is not 8-aligned.
            let b = match head.get(off.map_size as usize) {
                Some(&b) if off.map_size < HEAD_LEN as u64 => b,
                _ => {
                    store(&mut scan.incomplete, 1);
                    return;
                }
            };
            if head_word(head, off.map_old) != Some(0) {
                // Growing: entries may still sit in the old buckets.
                store(&mut scan.incomplete, 1);
                return;
            }
            let buckets: u64 = if b >= 8 { 1 << 8 } else { 1 << b };
            // Bucket reads: the main buckets in order, each followed by its
            // overflow chain. `next` and `overflow` live in memory, as the
            // scan's state does.
            for _ in 0..MAX_GROUPS {
                let next = load(&scan.cursor[0]);
                let overflow = load(&scan.cursor[1]);
                let addr = if overflow != 0 {
                    overflow
                } else if next < buckets {
                    store(&mut scan.cursor[0], next + 1);
                    data + next * BUCKET_SIZE
                } else {
                    return;
                };
                if !read_into(scratch, addr, BUCKET_SIZE) {
                    store(&mut scan.incomplete, 1);
                    return;
                }
                for s in 0..8 {
                    if scratch[s] >= BUCKET_MIN_TOPHASH {
                        scan.slot(
                            scratch,
                            key_len,
                            BUCKET_KEYS + s * 16,
                            BUCKET_VALUES + s * 24,
                        );
                    }
                }
                store(
                    &mut scan.cursor[1],
                    word(scratch, BUCKET_OVERFLOW).unwrap_or(0),
                );
            }
            if load(&scan.cursor[1]) != 0 || load(&scan.cursor[0]) < buckets {
                store(&mut scan.incomplete, 1);
            }
        }
        _ => store(&mut scan.incomplete, 1),
    }
}

/// Searches the `http.Header` map at `map` for `key`, with `scan` and
/// `scratch` in map memory, and copies the first value into `dst`.
#[inline(always)]
pub fn find_header<const N: usize, const CAP: usize>(
    off: &HttpOffsets,
    map: u64,
    key: &[u8; N],
    scan: &mut Scan,
    scratch: &mut [u8; SCRATCH_LEN],
    dst: &mut [u8; CAP],
) -> Search {
    if map == 0 {
        return Search::Absent;
    }
    let mut head = [0u8; HEAD_LEN];
    // SAFETY: `head` has HEAD_LEN bytes; a bad address makes the helper fail.
    if unsafe { read_user_raw(head.as_mut_ptr().cast(), HEAD_LEN as u32, map as *const _) } != 0 {
        return Search::Incomplete;
    }
    let (Some(count), Some(data)) = (
        head_word(&head, off.map_count),
        head_word(&head, off.map_data),
    ) else {
        return Search::Incomplete;
    };
    if count == 0 {
        return Search::Absent;
    }
    store(&mut scan.found, 0);
    store(&mut scan.incomplete, 0);
    store(&mut scan.cursor[0], 0);
    store(&mut scan.cursor[1], 0);
    scan_groups(off, &head, data, N as u64, scratch, scan);
    let found = load(&scan.found);
    for i in 0..MAX_CANDIDATES {
        if i as u64 >= found {
            break;
        }
        match is_key(load(&scan.keys[i]), key) {
            Some(true) => {}
            Some(false) => continue,
            None => {
                store(&mut scan.incomplete, 1);
                continue;
            }
        }
        if load(&scan.counts[i]) == 0 {
            return Search::Found(0);
        }
        let Some([data, len]) = read_field::<[u64; 2]>(load(&scan.values[i]), 0) else {
            return Search::Incomplete;
        };
        return match copy_string(data, len, dst) {
            Some(len) => Search::Found(len),
            None => Search::Incomplete,
        };
    }
    if load(&scan.incomplete) != 0 {
        Search::Incomplete
    } else {
        Search::Absent
    }
}
