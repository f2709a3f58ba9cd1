//! Fuzzes the decoder of the `usdt_probe` program's ring-buffer records:
//! whatever the bytes, decoding never panics; a decoded record has at most
//! 12 arguments, each string argument's bytes are the bytes of the record's
//! used string area that its offset and length name; and a decoded record
//! written back into a record decodes to the same event.
#![no_main]

#[path = "../../src/usdt/mod.rs"]
#[allow(
    dead_code,
    unused_imports,
    reason = "only the decoding entry point is fuzzed"
)]
mod usdt;

use std::mem::{offset_of, size_of};

use agent_common::{
    event::KIND_USDT,
    usdt::{USDT_MAX_ARGS, USDT_STR_BUF, UsdtRecord},
};
use libfuzzer_sys::fuzz_target;
use usdt::{UsdtDecodeError, UsdtEvent, decode_usdt_record};

fn u16_at(data: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes([data[at], data[at + 1]]))
}

fn u32_at(data: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"))
}

/// The record bytes the kernel side would have written for `event`, with
/// its strings back to back from the start of the string area.
fn encode(event: &UsdtEvent) -> Vec<u8> {
    let mut out = vec![0u8; size_of::<UsdtRecord>()];
    let h = &event.header;
    for (i, v) in [h.kind, h.target, h.tid, h.site].into_iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
    }
    out[16..24].copy_from_slice(&h.goid.to_le_bytes());
    out[24..32].copy_from_slice(&h.ktime_ns.to_le_bytes());
    let put32 = |out: &mut Vec<u8>, at: usize, v: u32| {
        out[at..at + 4].copy_from_slice(&v.to_le_bytes());
    };
    put32(
        &mut out,
        offset_of!(UsdtRecord, arg_count),
        event.args.len() as u32,
    );
    let (mut failed, mut truncated, mut mask, mut used) = (0u32, 0u32, 0u32, 0usize);
    for (i, arg) in event.args.iter().enumerate() {
        let at = offset_of!(UsdtRecord, args) + 8 * i;
        out[at..at + 8].copy_from_slice(&arg.value.to_le_bytes());
        failed |= u32::from(arg.failed) << i;
        truncated |= u32::from(arg.truncated) << i;
        if let Some(s) = &arg.string {
            mask |= 1 << i;
            let off = offset_of!(UsdtRecord, str_off) + 2 * i;
            out[off..off + 2].copy_from_slice(&(used as u16).to_le_bytes());
            let len = offset_of!(UsdtRecord, str_len) + 2 * i;
            out[len..len + 2].copy_from_slice(&(s.len() as u16).to_le_bytes());
            let at = offset_of!(UsdtRecord, strings) + used;
            out[at..at + s.len()].copy_from_slice(s);
            used += s.len();
        }
    }
    put32(&mut out, offset_of!(UsdtRecord, str_used), used as u32);
    put32(&mut out, offset_of!(UsdtRecord, failed), failed);
    put32(&mut out, offset_of!(UsdtRecord, truncated), truncated);
    put32(&mut out, offset_of!(UsdtRecord, str_mask), mask);
    out
}

fuzz_target!(|data: &[u8]| {
    let event = match decode_usdt_record(data) {
        Ok(event) => event,
        Err(UsdtDecodeError::Short { len, need }) => {
            assert_eq!(len, data.len());
            assert!(len < need);
            return;
        }
        Err(UsdtDecodeError::Kind(kind)) => {
            assert_ne!(kind, KIND_USDT);
            return;
        }
        Err(UsdtDecodeError::Field { offset, .. }) => {
            assert!(offset < size_of::<UsdtRecord>(), "error at {offset}");
            return;
        }
    };
    assert!(data.len() >= size_of::<UsdtRecord>());
    assert_eq!(event.header.kind, KIND_USDT);
    assert!(event.args.len() <= USDT_MAX_ARGS);
    assert_eq!(
        event.args.len(),
        u32_at(data, offset_of!(UsdtRecord, arg_count)) as usize
    );

    // Each string lies inside the record's used string area, where its
    // offset and length say.
    let strings = offset_of!(UsdtRecord, strings);
    let used = u32_at(data, offset_of!(UsdtRecord, str_used)) as usize;
    assert!(used <= USDT_STR_BUF);
    let mut total = 0;
    for (i, arg) in event.args.iter().enumerate() {
        let Some(s) = &arg.string else {
            continue;
        };
        let off = u16_at(data, offset_of!(UsdtRecord, str_off) + 2 * i);
        let len = u16_at(data, offset_of!(UsdtRecord, str_len) + 2 * i);
        assert_eq!(s.len(), len);
        assert!(off + len <= used, "string {i} at {off}+{len} past {used}");
        assert_eq!(&s[..], &data[strings + off..strings + off + len]);
        total += len;
    }

    // Strings may overlap in a hostile record; when they fit back to back
    // the event survives a round trip through the record layout.
    if total <= USDT_STR_BUF {
        let again = decode_usdt_record(&encode(&event)).expect("a re-encoded event decodes");
        assert_eq!(again, event);
    }
});
