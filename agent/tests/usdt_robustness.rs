//! Parsers of untrusted bytes never panic: USDT notes with corrupted bytes,
//! random argument strings, random ring-buffer records. Also the
//! `.stapsdt.base` adjustment of a moved (prelinked) image.

mod usdt_support;

use agent::usdt::{args::parse_args, decode_usdt_record, probes_in_elf, probes_in_file};
use agent_common::usdt::{USDT_RECORD_HEAD, UsdtRecord};
use usdt_support::fixture;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Offsets of the `stapsdt` note names (type 3) in an image.
fn note_names(data: &[u8]) -> Vec<usize> {
    data.windows(12)
        .enumerate()
        .filter(|(_, w)| w[..4] == [3, 0, 0, 0] && &w[4..] == b"stapsdt\0")
        .map(|(i, _)| i + 4)
        .collect()
}

#[test]
fn stapsdt_base_adjustment_moves_probes() {
    let fx = fixture("robustness");
    let mut data = std::fs::read(&fx.exe).expect("reading the fixture");
    let before = probes_in_elf(&fx.exe, &data).expect("probes");
    let names = note_names(&data);
    assert_eq!(names.len(), before.len());
    // Pretend the image moved by 0x10 since the first note was written: its
    // recorded .stapsdt.base is 0x10 lower than the section's address.
    let desc = names[0] + 8;
    let base = u64::from_le_bytes(data[desc + 8..desc + 16].try_into().expect("8 bytes"));
    data[desc + 8..desc + 16].copy_from_slice(&(base - 0x10).to_le_bytes());
    let after = probes_in_elf(&fx.exe, &data).expect("probes");
    let pc = u64::from_le_bytes(data[desc..desc + 8].try_into().expect("8 bytes"));
    let moved = after
        .iter()
        .position(|p| p.vaddr == pc + 0x10)
        .expect("moved probe");
    let original = before
        .iter()
        .position(|p| p.vaddr == pc)
        .expect("original probe");
    assert_eq!(moved, original);
    assert_eq!(
        after[moved].file_offset,
        before[original].file_offset + 0x10
    );
    // The semaphore is not adjusted (as in libbpf); the others do not move.
    assert_eq!(after[moved].semaphore, before[original].semaphore);
    for (i, (a, b)) in after.iter().zip(&before).enumerate() {
        if i != moved {
            assert_eq!(a, b);
        }
    }
}

#[test]
fn corrupted_notes_never_panic() {
    let fx = fixture("robustness");
    for path in [&fx.exe, &fx.lib] {
        let mut data = std::fs::read(path).expect("reading the fixture");
        assert!(!probes_in_file(path).expect("clean parse").is_empty());
        let names = note_names(&data);
        let start = names[0] - 16;
        let end = (names[names.len() - 1] + 200).min(data.len());
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut errors = 0;
        for _ in 0..3000 {
            let flips: Vec<(usize, u8)> = (0..1 + rng.below(4))
                .map(|_| (start + rng.below(end - start), rng.next() as u8))
                .collect();
            let saved: Vec<u8> = flips.iter().map(|&(at, _)| data[at]).collect();
            for &(at, byte) in &flips {
                data[at] = byte;
            }
            if probes_in_elf(path, &data).is_err() {
                errors += 1;
            }
            for (&(at, _), byte) in flips.iter().zip(saved) {
                data[at] = byte;
            }
        }
        assert!(errors > 0, "some corruptions must be reported");
        // Truncations too.
        for cut in (0..data.len()).step_by(data.len() / 97 + 1) {
            let _ = probes_in_elf(path, &data[..cut]);
        }
    }
}

#[test]
fn random_arg_strings_never_panic() {
    const ALPHABET: &[u8] = b"%$@()-+,0123456789abcdehilrspx: \t8";
    let mut rng = Rng(42);
    for _ in 0..20000 {
        let len = rng.below(24);
        let text: String = (0..len)
            .map(|_| ALPHABET[rng.below(ALPHABET.len())] as char)
            .collect();
        if let Ok(args) = parse_args(&text) {
            for arg in args {
                // Printing and encoding a parsed spec never panics either.
                let _ = arg.to_string();
                let _ = arg.encode(0x1000);
            }
        }
    }
}

#[test]
fn random_records_never_panic() {
    let size = std::mem::size_of::<UsdtRecord>();
    let mut rng = Rng(7);
    let mut ok = 0;
    for round in 0..5000 {
        let len = if round % 10 == 0 {
            rng.below(size + 8)
        } else {
            size
        };
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if len >= USDT_RECORD_HEAD {
            bytes[..4].copy_from_slice(&3u32.to_le_bytes());
            // Plausible counts and a length to match half of the time, and
            // no strings in half of those.
            if round % 2 == 0 {
                let (count, used) = (rng.below(13), rng.below(345));
                bytes[32..34].copy_from_slice(&(count as u16).to_le_bytes());
                bytes[34..36].copy_from_slice(&(used as u16).to_le_bytes());
                if round % 4 == 0 {
                    bytes[40..42].fill(0);
                }
                bytes.resize(USDT_RECORD_HEAD + 8 * count + used, 0xAB);
            }
        }
        if decode_usdt_record(&bytes).is_ok() {
            ok += 1;
        }
    }
    assert!(ok > 0, "some random records are well-formed");
}
