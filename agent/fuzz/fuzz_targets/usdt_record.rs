//! Fuzzes the decoder of the `usdt_probe` program's ring-buffer records:
//! whatever the bytes, decoding never panics; a decoded record has at most
//! 12 arguments, the record is exactly its head, values and string bytes,
//! each string argument's bytes are the next ones of those its length
//! names; and a decoded record written back into a record decodes to the
//! same event.
#![no_main]

use agent::usdt;

use std::mem::offset_of;

use agent_common::usdt::{KIND_USDT, USDT_MAX_ARGS, USDT_RECORD_HEAD, UsdtRecord};
use libfuzzer_sys::fuzz_target;
use usdt::{UsdtDecodeError, UsdtEvent, decode_usdt_record};

fn u16_at(data: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes([data[at], data[at + 1]]))
}

/// The record bytes the kernel side would have written for `event`: the
/// head, the values, the strings back to back.
fn encode(event: &UsdtEvent) -> Vec<u8> {
    let mut out = vec![0u8; USDT_RECORD_HEAD];
    let h = &event.header;
    for (i, v) in [h.kind, h.target, h.tid, h.site].into_iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
    }
    out[16..24].copy_from_slice(&h.goid.to_le_bytes());
    out[24..32].copy_from_slice(&h.ktime_ns.to_le_bytes());
    let put16 = |out: &mut Vec<u8>, at: usize, v: u16| {
        out[at..at + 2].copy_from_slice(&v.to_le_bytes());
    };
    put16(
        &mut out,
        offset_of!(UsdtRecord, arg_count),
        event.args.len() as u16,
    );
    let (mut failed, mut truncated, mut mask) = (0u16, 0u16, 0u16);
    let mut strings = Vec::new();
    for (i, arg) in event.args.iter().enumerate() {
        out.extend_from_slice(&arg.value.to_le_bytes());
        failed |= u16::from(arg.failed) << i;
        truncated |= u16::from(arg.truncated) << i;
        if let Some(s) = &arg.string {
            mask |= 1 << i;
            out[offset_of!(UsdtRecord, str_len) + i] = s.len() as u8;
            strings.extend_from_slice(s);
        }
    }
    put16(
        &mut out,
        offset_of!(UsdtRecord, str_used),
        strings.len() as u16,
    );
    put16(&mut out, offset_of!(UsdtRecord, failed), failed);
    put16(&mut out, offset_of!(UsdtRecord, truncated), truncated);
    put16(&mut out, offset_of!(UsdtRecord, str_mask), mask);
    out.extend_from_slice(&strings);
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
        Err(UsdtDecodeError::Length { len, need }) => {
            assert_eq!(len, data.len());
            assert_ne!(len, need);
            return;
        }
        Err(UsdtDecodeError::Kind(kind)) => {
            assert_ne!(kind, KIND_USDT);
            return;
        }
        Err(UsdtDecodeError::Field { offset, .. }) => {
            assert!(offset < USDT_RECORD_HEAD, "error at {offset}");
            return;
        }
    };
    assert_eq!(event.header.kind, KIND_USDT);
    assert!(event.args.len() <= USDT_MAX_ARGS);
    assert_eq!(
        event.args.len(),
        u16_at(data, offset_of!(UsdtRecord, arg_count))
    );

    // The record is exactly its head, its values and its string bytes, and
    // each string is the next `str_len` of those bytes.
    let strings_at = USDT_RECORD_HEAD + 8 * event.args.len();
    let used = u16_at(data, offset_of!(UsdtRecord, str_used));
    assert_eq!(data.len(), strings_at + used);
    let mut start = strings_at;
    for (i, arg) in event.args.iter().enumerate() {
        let Some(s) = &arg.string else {
            continue;
        };
        let len = usize::from(data[offset_of!(UsdtRecord, str_len) + i]);
        assert_eq!(s.len(), len);
        assert_eq!(&s[..], &data[start..start + len]);
        assert_eq!(arg.value, 0, "a string's value is 0");
        start += len;
    }
    assert!(start <= data.len());

    // A decoded event survives a round trip through the record layout.
    let again = decode_usdt_record(&encode(&event)).expect("a re-encoded event decodes");
    assert_eq!(again, event);
});
