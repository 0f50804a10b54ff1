//! The proof that an erase left zeros: the first and last MiB and pseudo-random 1 MiB blocks are read back
//! from the device (not from the page cache) and must be all zero.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io;

use crate::target::Target;

/// Size of one sampled block.
pub const SAMPLE_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("dropping the page cache before reading back failed")]
    DropCache(#[source] io::Error),
    #[error("reading back {len} bytes at byte {offset} failed")]
    Read {
        offset: u64,
        len: u64,
        #[source]
        source: io::Error,
    },
    #[error("byte {offset} reads back as {value:#04x}, not zero")]
    NotZero { offset: u64, value: u8 },
}

/// A seed that differs on every call, so a tenant cannot predict which blocks are checked.
pub fn random_seed() -> u64 {
    RandomState::new().build_hasher().finish()
}

/// Start offsets of the blocks to check on a device of `size` bytes: the first and the last MiB and
/// `count` pseudo-random MiB-aligned blocks drawn from `seed`, sorted, without duplicates.
pub fn sample_offsets(size: u64, count: u32, seed: u64) -> Vec<u64> {
    if size == 0 {
        return Vec::new();
    }
    let last = size.saturating_sub(SAMPLE_BYTES);
    let aligned_starts = last / SAMPLE_BYTES + 1;
    let mut offsets = vec![0, last];
    // xorshift64: its state must not be zero.
    let mut state = seed.max(1);
    for _ in 0..count {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        offsets.push(state % aligned_starts * SAMPLE_BYTES);
    }
    offsets.sort_unstable();
    offsets.dedup();
    offsets
}

/// Reads back the block at each of `offsets` (up to [`SAMPLE_BYTES`], less at the end of the device)
/// after dropping the page cache; returns how many blocks were found zero.
pub fn verify_zeroed(target: &mut dyn Target, offsets: &[u64]) -> Result<u32, VerifyError> {
    target.drop_cache().map_err(VerifyError::DropCache)?;
    let size = target.size();
    let mut block = vec![0u8; SAMPLE_BYTES as usize];
    for &offset in offsets {
        let len = SAMPLE_BYTES.min(size.saturating_sub(offset));
        let block = &mut block[..len as usize];
        target.read_at(offset, block).map_err(|source| VerifyError::Read { offset, len, source })?;
        if let Some(position) = first_non_zero(block) {
            return Err(VerifyError::NotZero { offset: offset + position as u64, value: block[position] });
        }
    }
    Ok(offsets.len() as u32)
}

/// The index of the first non-zero byte of `bytes`, if any. OR-ing 64-byte chunks without an early exit
/// compiles to vector instructions: the discard path checks whole disks this way.
pub fn first_non_zero(bytes: &[u8]) -> Option<usize> {
    let chunk = bytes.chunks(64).position(|chunk| chunk.iter().fold(0, |acc, byte| acc | byte) != 0)?;
    let start = chunk * 64;
    bytes[start..].iter().position(|byte| *byte != 0).map(|position| start + position)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::FileTarget;

    const MIB: u64 = 1 << 20;

    #[test]
    fn samples_cover_both_ends_and_stay_inside_the_device() {
        let cases = [
            ("empty device", 0, 8, 0),
            ("smaller than a sample", 4096, 8, 1),
            ("exactly one sample", MIB, 8, 1),
            ("not a whole number of MiB", 10 * MIB + 512, 64, 11),
            ("large device", 1 << 40, 64, 66),
        ];
        for (name, size, count, at_most) in cases {
            let offsets = sample_offsets(size, count, 42);
            assert!(offsets.len() <= at_most, "{name}: {offsets:?}");
            if size == 0 {
                assert!(offsets.is_empty(), "{name}");
                continue;
            }
            assert_eq!(offsets.first(), Some(&0), "{name}");
            assert_eq!(offsets.last(), Some(&size.saturating_sub(MIB)), "{name}");
            assert!(offsets.windows(2).all(|pair| pair[0] < pair[1]), "{name}: sorted, no duplicates");
            assert!(offsets.iter().all(|offset| offset + MIB.min(size) <= size), "{name}: inside");
        }
        let large = sample_offsets(1 << 40, 64, 42);
        assert_eq!(large.len(), 66, "64 distinct random blocks on a 1 TiB device, plus both ends");
        assert_ne!(large, sample_offsets(1 << 40, 64, 43), "another seed, other blocks");
    }

    #[test]
    fn first_non_zero_finds_the_first_set_byte() {
        let cases: [(&str, Vec<u8>, Option<usize>); 5] = [
            ("empty", vec![], None),
            ("all zero", vec![0; 1000], None),
            ("in a word", [vec![0; 17], vec![3], vec![0; 30]].concat(), Some(17)),
            ("in the tail", [vec![0; 1003], vec![9]].concat(), Some(1003)),
            ("first byte", [vec![1], vec![0; 15]].concat(), Some(0)),
        ];
        for (name, bytes, expected) in cases {
            assert_eq!(first_non_zero(&bytes), expected, "{name}");
        }
    }

    #[test]
    fn a_planted_block_is_found_and_a_zeroed_device_passes() {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(64 * MIB).unwrap();
        let mut target = FileTarget::open(file.path()).unwrap();
        let offsets = sample_offsets(64 * MIB, 16, 7);
        assert_eq!(verify_zeroed(&mut target, &offsets).unwrap(), offsets.len() as u32);

        // One byte inside a randomly chosen block (neither end): the check must find exactly it.
        let planted = offsets[offsets.len() / 2] + 12345;
        target.write_at(planted, &[0x5a]).unwrap();
        match verify_zeroed(&mut target, &offsets) {
            Err(VerifyError::NotZero { offset, value }) => assert_eq!((offset, value), (planted, 0x5a)),
            other => panic!("expected NotZero, got {other:?}"),
        }
        // A byte in the last MiB is always checked, whatever the seed.
        target.write_at(planted, &[0]).unwrap();
        target.write_at(64 * MIB - 1, &[1]).unwrap();
        let error = verify_zeroed(&mut target, &sample_offsets(64 * MIB, 0, 99)).unwrap_err();
        assert_eq!(error.to_string(), format!("byte {} reads back as 0x01, not zero", 64 * MIB - 1));
    }
}
