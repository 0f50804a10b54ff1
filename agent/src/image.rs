//! The image write path: a stack of small readers, then a writer that holds the first MiB back.
//!
//! source (HTTP) → hash → progress → decompress (by magic) → target.
//! Before streaming, the first and last MiB of the target are zeroed so no old partition
//! table survives; the image's own first MiB (its partition table and boot code) is written
//! only after the checksum matched. A mismatch or an interrupted write therefore leaves a
//! disk without a partition table, which no firmware will boot.

use std::io::{self, BufRead, BufReader, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flate2::read::MultiGzDecoder;

use crate::checksum::{Algorithm, Expected, HashingReader};
use crate::progress::{ProgressReader, ProgressTracker};
use crate::target::Target;

/// The part of the image written last, after the checksum matched.
pub const HEAD_BYTES: usize = 1 << 20;
const CHUNK_BYTES: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("image format {0} is not supported yet (supported: raw, gzip-compressed raw)")]
    UnsupportedFormat(&'static str),
    #[error("reading the image failed after {bytes_read} bytes")]
    Read {
        bytes_read: u64,
        #[source]
        source: io::Error,
    },
    #[error("writing {target} at offset {offset} failed")]
    Write {
        target: String,
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("target {target} holds {target_bytes} bytes, less than the {needed} bytes needed")]
    TargetTooSmall { target: String, target_bytes: u64, needed: u64 },
    #[error("image checksum mismatch: expected {algorithm} {expected}, got {actual}; the disk was left without a partition table")]
    ChecksumMismatch { algorithm: Algorithm, expected: String, actual: String },
}

/// What a successful write did.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteReport {
    /// Bytes read from the source (compressed size for compressed images).
    pub source_bytes: u64,
    /// Bytes written to the target.
    pub image_bytes: u64,
    pub elapsed: Duration,
}

/// Formats recognised by their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    Gzip,
    Zstd,
    Xz,
    Qcow2,
}

impl Format {
    pub fn sniff(head: &[u8]) -> Format {
        match head {
            [0x1f, 0x8b, ..] => Format::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Format::Zstd,
            [0xfd, b'7', b'z', b'X', b'Z', 0x00, ..] => Format::Xz,
            [b'Q', b'F', b'I', 0xfb, ..] => Format::Qcow2,
            _ => Format::Raw,
        }
    }
}

/// Streams `source` onto `target`, verifying it against `expected` on the way.
pub fn write_image<R: Read>(
    source: R,
    expected: &Expected,
    target: &mut dyn Target,
    progress: &Arc<ProgressTracker>,
) -> Result<WriteReport, WriteError> {
    let started = Instant::now();
    let size = target.size();
    if size < 2 * HEAD_BYTES as u64 {
        return Err(WriteError::TargetTooSmall {
            target: target.describe(),
            target_bytes: size,
            needed: 2 * HEAD_BYTES as u64,
        });
    }
    progress.set_stage("wiping old partition tables");
    let zeros = vec![0u8; HEAD_BYTES];
    for offset in [0, size - HEAD_BYTES as u64] {
        write_at(target, offset, &zeros)?;
    }
    sync(target)?;

    let outcome = stream_and_verify(source, expected, target, progress);
    if outcome.is_err() {
        // The image may have run over the zeroed tail (an image larger than the disk):
        // clear it again so no backup partition table can be found. Best effort: the
        // device may be the thing that failed.
        let _ = target.write_at(size - HEAD_BYTES as u64, &zeros).and_then(|()| target.sync());
    }
    let image_bytes = outcome?;
    Ok(WriteReport { source_bytes: progress.bytes_done(), image_bytes, elapsed: started.elapsed() })
}

/// Streams everything but the head, verifies the checksum, then writes the head.
fn stream_and_verify<R: Read>(
    source: R,
    expected: &Expected,
    target: &mut dyn Target,
    progress: &Arc<ProgressTracker>,
) -> Result<u64, WriteError> {
    progress.set_stage("writing image");
    let mut hashing = HashingReader::new(ProgressReader::new(source, progress.clone()), expected.algorithm);
    let mut buffered = BufReader::with_capacity(CHUNK_BYTES, &mut hashing);
    let magic = buffered.fill_buf().map_err(|source| WriteError::Read { bytes_read: 0, source })?;
    let (head, image_bytes) = match Format::sniff(magic) {
        Format::Raw => copy_holding_head(buffered, target, progress)?,
        Format::Gzip => copy_holding_head(MultiGzDecoder::new(buffered), target, progress)?,
        Format::Zstd => return Err(WriteError::UnsupportedFormat("zstd")),
        Format::Xz => return Err(WriteError::UnsupportedFormat("xz")),
        Format::Qcow2 => return Err(WriteError::UnsupportedFormat("qcow2")),
    };

    progress.set_stage("verifying checksum");
    let actual = hashing.finish().map_err(|source| WriteError::Read { bytes_read: progress.bytes_done(), source })?;
    if actual != expected.hex {
        return Err(WriteError::ChecksumMismatch {
            algorithm: expected.algorithm,
            expected: expected.hex.clone(),
            actual,
        });
    }
    progress.set_stage("writing partition table");
    write_at(target, 0, &head)?;
    progress.set_stage("flushing");
    sync(target)?;
    Ok(image_bytes)
}

/// Copies `reader` to `target` from offset 0, returning the first [`HEAD_BYTES`] instead of
/// writing them, and the number of bytes the image has.
fn copy_holding_head(
    mut reader: impl Read,
    target: &mut dyn Target,
    progress: &ProgressTracker,
) -> Result<(Vec<u8>, u64), WriteError> {
    let mut head = Vec::with_capacity(HEAD_BYTES);
    let mut chunk = vec![0u8; CHUNK_BYTES];
    let mut offset = 0u64;
    loop {
        let filled = fill(&mut reader, &mut chunk)
            .map_err(|source| WriteError::Read { bytes_read: progress.bytes_done(), source })?;
        if filled == 0 {
            break;
        }
        let mut data = &chunk[..filled];
        if head.len() < HEAD_BYTES {
            let take = (HEAD_BYTES - head.len()).min(data.len());
            head.extend_from_slice(&data[..take]);
            data = &data[take..];
            offset += take as u64;
        }
        if !data.is_empty() {
            write_at(target, offset, data)?;
            offset += data.len() as u64;
        }
    }
    Ok((head, offset))
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn fill(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn write_at(target: &mut dyn Target, offset: u64, data: &[u8]) -> Result<(), WriteError> {
    target.write_at(offset, data).map_err(|source| WriteError::Write { target: target.describe(), offset, source })
}

fn sync(target: &mut dyn Target) -> Result<(), WriteError> {
    target.sync().map_err(|source| WriteError::Write { target: target.describe(), offset: 0, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::{Fault, FaultyTarget, FileTarget};
    use flate2::{write::GzEncoder, Compression};
    use sha2::{Digest, Sha256};
    use std::io::Write;

    const DISK: u64 = 16 << 20;

    /// An image with a recognisable first MiB and a body that differs per offset.
    fn image(len: usize) -> Vec<u8> {
        let mut data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        data[510] = 0x55;
        data[511] = 0xaa;
        data[512..520].copy_from_slice(b"EFI PART");
        data
    }

    fn sha256(data: &[u8]) -> Expected {
        Expected { algorithm: Algorithm::Sha256, hex: hex::encode(Sha256::digest(data)) }
    }

    /// A disk file pre-filled with 0xee, as if an older image lived there.
    fn disk() -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), vec![0xee; DISK as usize]).unwrap();
        file
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn assert_no_partition_table(disk: &[u8]) {
        assert!(disk[..HEAD_BYTES].iter().all(|b| *b == 0), "first MiB must be zero");
        assert!(disk[disk.len() - HEAD_BYTES..].iter().all(|b| *b == 0), "last MiB must be zero");
    }

    #[test]
    fn raw_image_is_written_whole_and_verified() {
        let data = image(5 * HEAD_BYTES + 123);
        let file = disk();
        let mut target = FileTarget::open(file.path()).unwrap();
        let progress = Arc::new(ProgressTracker::default());
        let report = write_image(&data[..], &sha256(&data), &mut target, &progress).unwrap();
        assert_eq!(report.image_bytes, data.len() as u64);
        assert_eq!(report.source_bytes, data.len() as u64);
        let written = std::fs::read(file.path()).unwrap();
        assert_eq!(&written[..data.len()], &data[..]);
        assert!(written[data.len()..DISK as usize - HEAD_BYTES].iter().all(|b| *b == 0xee));
        assert_eq!(progress.snapshot().stage, "flushing");
    }

    #[test]
    fn gzip_image_is_decompressed_and_checksum_covers_the_compressed_bytes() {
        let data = image(3 * HEAD_BYTES);
        let compressed = gzip(&data);
        let file = disk();
        let mut target = FileTarget::open(file.path()).unwrap();
        let progress = Arc::new(ProgressTracker::default());
        let report = write_image(&compressed[..], &sha256(&compressed), &mut target, &progress).unwrap();
        assert_eq!(report.image_bytes, data.len() as u64);
        assert_eq!(report.source_bytes, compressed.len() as u64);
        assert_eq!(&std::fs::read(file.path()).unwrap()[..data.len()], &data[..]);
    }

    #[test]
    fn checksum_mismatch_leaves_no_partition_table() {
        let data = image(3 * HEAD_BYTES);
        let file = disk();
        let mut target = FileTarget::open(file.path()).unwrap();
        let wrong = sha256(b"something else");
        let err = write_image(&data[..], &wrong, &mut target, &Arc::new(ProgressTracker::default())).unwrap_err();
        assert!(matches!(err, WriteError::ChecksumMismatch { .. }), "{err}");
        assert!(err.to_string().contains(&wrong.hex));
        assert_no_partition_table(&std::fs::read(file.path()).unwrap());
    }

    #[test]
    fn write_failures_name_the_offset_and_leave_no_partition_table() {
        for fault in [Fault::EioAfter(3 << 20), Fault::ShortWriteAfter(3 << 20)] {
            let data = image(6 * HEAD_BYTES);
            let file = disk();
            let mut target = FaultyTarget::new(FileTarget::open(file.path()).unwrap(), fault);
            let err =
                write_image(&data[..], &sha256(&data), &mut target, &Arc::new(ProgressTracker::default())).unwrap_err();
            assert!(matches!(err, WriteError::Write { .. }), "{fault:?}: {err}");
            assert_no_partition_table(&std::fs::read(file.path()).unwrap());
        }
    }

    #[test]
    fn failed_final_flush_is_reported() {
        let data = image(2 * HEAD_BYTES);
        let file = disk();
        let mut target = FaultyTarget::new(FileTarget::open(file.path()).unwrap(), Fault::SyncEio);
        let err =
            write_image(&data[..], &sha256(&data), &mut target, &Arc::new(ProgressTracker::default())).unwrap_err();
        assert!(matches!(err, WriteError::Write { .. }), "{err}");
    }

    #[test]
    fn image_larger_than_target_fails() {
        let data = image(DISK as usize + 10);
        let file = disk();
        let mut target = FileTarget::open(file.path()).unwrap();
        let err =
            write_image(&data[..], &sha256(&data), &mut target, &Arc::new(ProgressTracker::default())).unwrap_err();
        assert!(err.to_string().contains("offset"), "{err}");
        assert_no_partition_table(&std::fs::read(file.path()).unwrap());
    }

    #[test]
    fn truncated_gzip_is_a_read_error() {
        let data = image(3 * HEAD_BYTES);
        let compressed = gzip(&data);
        let cut = &compressed[..compressed.len() / 2];
        let file = disk();
        let mut target = FileTarget::open(file.path()).unwrap();
        let err = write_image(cut, &sha256(cut), &mut target, &Arc::new(ProgressTracker::default())).unwrap_err();
        assert!(matches!(err, WriteError::Read { .. }), "{err}");
        assert_no_partition_table(&std::fs::read(file.path()).unwrap());
    }

    #[test]
    fn unsupported_formats_are_refused_before_writing() {
        let cases: [(&[u8], &str); 3] =
            [(b"QFI\xfb\0\0\0\x03", "qcow2"), (b"\x28\xb5\x2f\xfd\0", "zstd"), (b"\xfd7zXZ\0\0", "xz")];
        for (magic, name) in cases {
            let mut data = magic.to_vec();
            data.resize(3 * HEAD_BYTES, 0);
            let file = disk();
            let mut target = FileTarget::open(file.path()).unwrap();
            let err =
                write_image(&data[..], &sha256(&data), &mut target, &Arc::new(ProgressTracker::default())).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        }
    }
}
