//! `erase_devices`: erase a whole disk with the best method it offers, then prove it with a sampled
//! read-back.
//!
//! Order (the first that applies wins): NVMe Format NVM with a secure erase; ATA security erase; write
//! zeroes offloaded to the device (no data crosses the bus; refused, never emulated, by devices without
//! it); discard, trusted only where every byte reads back zero afterwards (what a discarded block reads
//! as is up to the device); zero fill with large aligned direct writes. A hardware erase may leave
//! something other than zeros (a user-data erase may leave ones or a vendor pattern, a crypto erase
//! leaves noise): when the read-back finds non-zero data the disk is overwritten after all (the
//! overwrite methods in their order), then checked again, so every erased disk provably reads zero.

use std::fmt;
use std::io;
use std::time::Instant;

use ferric_protocol::ErasedDevice;

use super::verify::{self, VerifyError};
use super::{ata, nvme, DiskJob, StepProgress};
use crate::disklabel::DiskLabelError;
use crate::partition::PartitionError;
use crate::target::{AlignedBuffer, Target};

/// Bytes per zero-fill write: large direct writes are split by the kernel into requests sent together,
/// which keeps the device's queue full.
const ZERO_FILL_CHUNK: usize = 16 << 20;
/// Bytes per write-zeroes or discard request; progress is reported between them.
const OFFLOAD_CHUNK: u64 = 1 << 30;

/// An erase method, in the order tried by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EraseMethod {
    NvmeFormat,
    AtaSecureErase,
    WriteZeroes,
    Discard,
    ZeroFill,
}

impl EraseMethod {
    pub const ALL: [EraseMethod; 5] = [
        EraseMethod::NvmeFormat,
        EraseMethod::AtaSecureErase,
        EraseMethod::WriteZeroes,
        EraseMethod::Discard,
        EraseMethod::ZeroFill,
    ];

    /// Methods that write through the block layer, usable on any disk.
    fn is_overwrite(self) -> bool {
        matches!(self, EraseMethod::WriteZeroes | EraseMethod::Discard | EraseMethod::ZeroFill)
    }

    /// As logged, and reported in `ErasedDevice::method` for the overwrite methods (the hardware ones
    /// report their variant, e.g. `nvme format (crypto erase)`).
    pub fn name(self) -> &'static str {
        match self {
            EraseMethod::NvmeFormat => "nvme format",
            EraseMethod::AtaSecureErase => "ata secure erase",
            EraseMethod::WriteZeroes => "write zeroes",
            EraseMethod::Discard => "discard",
            EraseMethod::ZeroFill => "zero fill",
        }
    }
}

impl fmt::Display for EraseMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why one disk could not be erased (wrapped with the disk's name by the caller).
#[derive(Debug, thiserror::Error)]
pub enum EraseError {
    #[error("opening it failed")]
    Open(#[source] io::Error),
    #[error("{method} at byte {offset} failed")]
    Write {
        method: &'static str,
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("reading back discarded bytes at byte {offset} failed")]
    ReadBack {
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("syncing it failed")]
    Sync(#[source] io::Error),
    #[error("none of the allowed methods ({allowed}) can erase it")]
    NoMethod { allowed: String },
    #[error("NVMe format failed")]
    Nvme(#[source] nvme::NvmeError),
    #[error("ATA secure erase failed")]
    Ata(#[source] Box<ata::AtaError>),
    #[error("the read-back after {method} failed")]
    Verify {
        method: String,
        #[source]
        source: VerifyError,
    },
    #[error("reading its partition table failed")]
    DiskLabel(#[source] DiskLabelError),
    #[error("re-reading its partition table failed")]
    Reread(#[source] Box<PartitionError>),
}

pub(crate) fn mib_per_second(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 / (1 << 20) as f64 / seconds
    } else {
        0.0
    }
}

/// Makes all of `target` read zero with the first of `methods` it accepts (write zeroes, discard
/// followed by a read-back, zero fill), moving on to the next one where a method is refused; `advance`
/// hears of each range done. Returns the methods used, in order.
pub fn overwrite(
    target: &mut dyn Target,
    methods: &[EraseMethod],
    advance: &dyn Fn(u64),
) -> Result<Vec<EraseMethod>, EraseError> {
    let candidates: Vec<EraseMethod> = methods.iter().copied().filter(|method| method.is_overwrite()).collect();
    let no_method = || EraseError::NoMethod { allowed: join(methods) };
    let mut current = candidates.first().copied().ok_or_else(no_method)?;
    let zeros = AlignedBuffer::new(ZERO_FILL_CHUNK);
    let mut read_back = Vec::new();
    let mut used = Vec::new();
    let size = target.size();
    let mut offset = 0;
    while offset < size {
        let len = match current {
            EraseMethod::ZeroFill => (size - offset).min(ZERO_FILL_CHUNK as u64),
            _ => (size - offset).min(OFFLOAD_CHUNK),
        };
        let write_error = |source| EraseError::Write { method: current.name(), offset, source };
        let done = match current {
            EraseMethod::WriteZeroes => target.zero_fast(offset, len).map_err(write_error)?,
            EraseMethod::Discard => {
                target.discard(offset, len).map_err(write_error)? && reads_zero(target, offset, len, &mut read_back)?
            }
            _ => {
                target.write_at(offset, &zeros[..len as usize]).map_err(write_error)?;
                true
            }
        };
        if done {
            if used.last() != Some(&current) {
                used.push(current);
            }
            offset += len;
            advance(len);
            continue;
        }
        let next = candidates.iter().skip_while(|method| **method != current).nth(1).copied();
        tracing::info!(device = %target.describe(), refused = %current, next = ?next.map(|m| m.to_string()), offset,
            "erase method refused");
        current = next.ok_or_else(no_method)?;
    }
    target.sync().map_err(EraseError::Sync)?;
    Ok(used)
}

fn join(methods: &[EraseMethod]) -> String {
    methods.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// Whether all `len` bytes at `offset` read back zero (from the device: BLKDISCARD drops them from the
/// page cache).
fn reads_zero(target: &mut dyn Target, offset: u64, len: u64, buffer: &mut Vec<u8>) -> Result<bool, EraseError> {
    buffer.resize(ZERO_FILL_CHUNK, 0);
    let mut position = offset;
    while position < offset + len {
        let piece = (offset + len - position).min(ZERO_FILL_CHUNK as u64) as usize;
        target
            .read_at(position, &mut buffer[..piece])
            .map_err(|source| EraseError::ReadBack { offset: position, source })?;
        if let Some(index) = verify::first_non_zero(&buffer[..piece]) {
            tracing::info!(device = %target.describe(), byte = position + index as u64,
                "discarded data does not read back zero");
            return Ok(false);
        }
        position += piece as u64;
    }
    Ok(true)
}

/// Tries the hardware methods `methods` allows that fit the disk (NVMe namespace, ATA drive); the
/// method's name when one erased it.
fn hardware_erase(
    job: &DiskJob,
    methods: &[EraseMethod],
    progress: &StepProgress,
) -> Result<Option<&'static str>, EraseError> {
    for method in methods {
        match method {
            EraseMethod::NvmeFormat if job.is_nvme() => {
                progress.set(&job.device, "nvme format");
                let others = nvme::sibling_namespaces(&job.sysfs);
                match nvme::format(&job.path, &others).map_err(EraseError::Nvme)? {
                    nvme::Outcome::Erased(erase) => return Ok(Some(erase.method())),
                    nvme::Outcome::Unsupported(why) => tracing::info!(device = %job.device, "no NVMe format: {why}"),
                }
            }
            EraseMethod::AtaSecureErase if job.is_ata() => {
                progress.set(&job.device, "ata secure erase");
                match ata::secure_erase(&job.path).map_err(|error| EraseError::Ata(Box::new(error)))? {
                    ata::Outcome::Erased { enhanced } => return Ok(Some(ata::method_name(enhanced))),
                    ata::Outcome::Unsupported(why) => {
                        tracing::info!(device = %job.device, "no ATA secure erase: {why}")
                    }
                }
            }
            _ => {}
        }
    }
    Ok(None)
}

/// Erases one disk, `target` opened on it, and checks it reads back zero.
pub(super) fn erase(
    job: &DiskJob,
    target: &mut dyn Target,
    methods: &[EraseMethod],
    samples: u32,
    progress: &StepProgress,
) -> Result<ErasedDevice, EraseError> {
    let started = Instant::now();
    let hardware = hardware_erase(job, methods, progress)?;
    let offsets = verify::sample_offsets(target.size(), samples, verify::random_seed());
    let (method, samples_verified) = verify_or_overwrite(job, target, hardware, methods, &offsets, progress)?;
    let (bytes, seconds) = (target.size(), started.elapsed().as_secs_f64());
    tracing::info!(device = %job.device, %method, bytes, seconds, samples_verified, "erased");
    Ok(ErasedDevice {
        device: job.device.clone(),
        method,
        bytes,
        seconds,
        mib_per_second: mib_per_second(bytes, seconds),
        samples_verified,
    })
}

/// After the `hardware` erase if any: the read-back of the blocks at `offsets`; when it finds data (or
/// there was no hardware erase), the overwrite and the read-back again. Returns the methods used, joined,
/// and the blocks verified.
fn verify_or_overwrite(
    job: &DiskJob,
    target: &mut dyn Target,
    hardware: Option<&'static str>,
    methods: &[EraseMethod],
    offsets: &[u64],
    progress: &StepProgress,
) -> Result<(String, u32), EraseError> {
    let mut used = Vec::new();
    if let Some(name) = hardware {
        used.push(name.to_owned());
        progress.set(&job.device, &format!("verifying {} blocks after {name}", offsets.len()));
        match verify::verify_zeroed(target, offsets) {
            Ok(count) => {
                progress.advance(target.size());
                return Ok((name.to_owned(), count));
            }
            Err(VerifyError::NotZero { offset, value }) if methods.iter().any(|method| method.is_overwrite()) => {
                tracing::warn!(device = %job.device,
                    "byte {offset} reads {value:#04x} after {name}: overwriting too, so the disk provably reads zero")
            }
            Err(source) => return Err(EraseError::Verify { method: name.to_owned(), source }),
        }
    }
    progress.set(&job.device, &overwrite_stage(methods));
    let overwritten = overwrite(target, methods, &|bytes| progress.advance(bytes))?;
    used.extend(overwritten.iter().map(ToString::to_string));
    let method = used.join(" + ");
    progress.set(&job.device, &format!("verifying {} blocks", offsets.len()));
    match verify::verify_zeroed(target, offsets) {
        Ok(count) => Ok((method, count)),
        Err(source) => Err(EraseError::Verify { method, source }),
    }
}

fn overwrite_stage(methods: &[EraseMethod]) -> String {
    let allowed: Vec<EraseMethod> = methods.iter().copied().filter(|method| method.is_overwrite()).collect();
    format!("overwriting ({})", join(&allowed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::{Fault, FaultyTarget, FileTarget};
    use std::cell::Cell;

    const MIB: u64 = 1 << 20;

    fn random_file(len: usize) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new_in("/var/tmp").unwrap();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let data: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8 | 1
            })
            .collect();
        std::fs::write(file.path(), data).unwrap();
        file
    }

    #[test]
    fn overwrite_falls_back_in_order_and_reports_the_methods_used() {
        use EraseMethod::*;
        // A regular file: write zeroes punches holes, discard is refused (no block device).
        let cases = [
            ("write zeroes first", vec![WriteZeroes, Discard, ZeroFill], None, vec![WriteZeroes]),
            ("discard refused on a file: zero fill", vec![Discard, ZeroFill], None, vec![ZeroFill]),
            (
                "device without offloads",
                vec![WriteZeroes, Discard, ZeroFill],
                Some(Fault::NoFastZeroing),
                vec![ZeroFill],
            ),
            ("hardware methods are skipped", vec![NvmeFormat, AtaSecureErase, ZeroFill], None, vec![ZeroFill]),
        ];
        for (name, methods, fault, expected) in cases {
            let file = random_file(40 * MIB as usize + 4096);
            let target = FileTarget::open(file.path()).unwrap();
            let advanced = Cell::new(0);
            let advance = |bytes| advanced.set(advanced.get() + bytes);
            let used = match fault {
                Some(fault) => overwrite(&mut FaultyTarget::new(target, fault), &methods, &advance),
                None => overwrite(&mut { target }, &methods, &advance),
            };
            assert_eq!(used.unwrap(), expected, "{name}");
            assert_eq!(advanced.get(), 40 * MIB + 4096, "{name}: progress");
            let data = std::fs::read(file.path()).unwrap();
            assert_eq!(verify::first_non_zero(&data), None, "{name}: all zero");
        }
    }

    #[test]
    fn overwrite_without_a_usable_method_names_the_allowed_ones() {
        let file = random_file(MIB as usize);
        let mut target = FaultyTarget::new(FileTarget::open(file.path()).unwrap(), Fault::NoFastZeroing);
        let error = overwrite(&mut target, &[EraseMethod::WriteZeroes, EraseMethod::Discard], &|_| {}).unwrap_err();
        assert_eq!(error.to_string(), "none of the allowed methods (write zeroes, discard) can erase it");
    }

    #[test]
    fn eio_during_zero_fill_fails_with_the_offset_and_the_cause() {
        let file = random_file(64 * MIB as usize);
        let target = FileTarget::open(file.path()).unwrap();
        let mut target = FaultyTarget::new(target, Fault::EioAfter(20 * MIB));
        let error = overwrite(&mut target, &[EraseMethod::ZeroFill], &|_| {}).unwrap_err();
        assert_eq!(error.to_string(), format!("zero fill at byte {} failed", 16 * MIB));
        let source = std::error::Error::source(&error).unwrap().to_string();
        assert!(source.contains("Input/output error"), "{source}");
    }

    #[test]
    fn a_hardware_erase_that_leaves_data_is_followed_by_an_overwrite() {
        use EraseMethod::*;
        let cases = [
            ("left zeros: trusted", 0x00, vec![WriteZeroes, ZeroFill], Ok("nvme format (user data erase)")),
            (
                "left ones: overwritten",
                0xff,
                vec![WriteZeroes, ZeroFill],
                Ok("nvme format (user data erase) + write zeroes"),
            ),
            (
                "left ones, no overwrite allowed",
                0xff,
                vec![NvmeFormat],
                Err("the read-back after nvme format (user data erase) failed"),
            ),
        ];
        for (name, fill, methods, expected) in cases {
            let file = tempfile::NamedTempFile::new_in("/var/tmp").unwrap();
            std::fs::write(file.path(), vec![fill; 8 * MIB as usize]).unwrap();
            let mut target = FileTarget::open(file.path()).unwrap();
            let env = crate::clean::CleanEnv::new("/nonexistent");
            let disk =
                ferric_protocol::inventory::Disk { name: "/dev/nvme0n1".into(), size: 8 * MIB, ..Default::default() };
            let job = DiskJob::new(&disk, &env);
            let tracker = crate::progress::ProgressTracker::default();
            let progress = StepProgress::new("erase_devices", &tracker);
            let offsets = verify::sample_offsets(8 * MIB, 4, 1);
            let hardware = Some("nvme format (user data erase)");
            match (verify_or_overwrite(&job, &mut target, hardware, &methods, &offsets, &progress), expected) {
                (Ok((method, count)), Ok(wanted)) => {
                    assert_eq!((method.as_str(), count), (wanted, offsets.len() as u32), "{name}");
                    assert_eq!(tracker.bytes_done(), 8 * MIB, "{name}: progress counts the disk once");
                    assert_eq!(verify::first_non_zero(&std::fs::read(file.path()).unwrap()), None, "{name}");
                }
                (Err(error), Err(wanted)) => {
                    assert_eq!(error.to_string(), wanted, "{name}");
                    assert_eq!(tracker.bytes_done(), 0, "{name}");
                }
                (got, _) => panic!("{name}: {got:?}"),
            }
        }
    }
}
