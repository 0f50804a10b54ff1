//! The image write path: a stack of small readers, then a disk writer that holds the first MiB back.
//!
//! source (HTTP) → progress → hash → decompress (gzip, zstd or xz, by magic) → content (raw or qcow2,
//! by magic again) → disk writer. Hashing and writing run on threads of their own so that they overlap
//! reading and decompressing. Before streaming, the first and last MiB of the target are zeroed so no
//! old partition table survives; the image's own first MiB (its partition table and boot code) is
//! written only after the checksum matched. A mismatch or an interrupted write therefore leaves a disk
//! without a partition table, which no firmware will boot.

use std::io::{self, Cursor, Read};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use flate2::read::MultiGzDecoder;
use liblzma::read::XzDecoder;

use crate::checksum::{Algorithm, Expected, Hasher};
use crate::progress::{ProgressReader, ProgressTracker};
use crate::qcow2::{self, Qcow2Error};
use crate::target::{AlignedBuffer, Target};

/// The part of the image written last, after the checksum matched.
pub const HEAD_BYTES: usize = 1 << 20;
/// Reads from the source and writes to the target move this much at a time.
pub(crate) const CHUNK_BYTES: usize = 4 << 20;
/// Zero skipping looks at blocks of this size (aligned on the target): small enough to find the
/// zero runs of file systems, large enough to keep writes big.
const ZERO_BLOCK_BYTES: usize = 64 << 10;
/// Runs of zeros at least this long are zeroed with [`Target::zero_fast`]; shorter ones are written,
/// which keeps writes big and device commands few.
const ZERO_FAST_MIN_BYTES: u64 = 1 << 20;
/// Most memory a decompressor may use: xz dictionaries and zstd windows up to 32 MiB (xz -6 uses
/// 8 MiB, zstd -19 8 MiB); more would not fit the ramdisk's budget.
const DECOMPRESSOR_MEMORY_BYTES: u64 = 32 << 20;
/// The same limit as a zstd window log.
const ZSTD_WINDOW_LOG_MAX: u32 = 25;

/// Enough leading bytes to recognise every format [`probe_format`] knows.
const PROBE_BYTES: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the image is {feature}, which cannot be written (supported: raw and qcow2, each optionally gzip-, zstd- or xz-compressed)")]
    Unsupported { feature: String },
    #[error(transparent)]
    Qcow2(#[from] Qcow2Error),
    #[error("reading the image failed after {bytes_read} bytes")]
    Read {
        /// Bytes of the download (before decompression) read so far.
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
    /// Size of the disk image: bytes of a raw image, virtual size of a qcow2.
    pub image_bytes: u64,
    pub elapsed: Duration,
    /// What was written, e.g. "raw", "raw (gzip)", "qcow2 (zstd)".
    pub format: String,
}

/// Formats recognised by their first bytes (never by the URL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    Gzip,
    Zstd,
    Xz,
    Qcow2,
    /// A disk image format Ferric recognises but does not write: writing it as raw would leave garbage.
    Other(&'static str),
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Gzip => "gzip",
            Format::Zstd => "zstd",
            Format::Xz => "xz",
            Format::Qcow2 => "qcow2",
            Format::Other(name) => name,
        }
    }
}

/// Recognises a format from the first bytes of a stream (up to 512 are looked at).
pub fn probe_format(head: &[u8]) -> Format {
    match head {
        [0x1f, 0x8b, 0x08, ..] => Format::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Format::Zstd,
        [0xfd, b'7', b'z', b'X', b'Z', 0x00, ..] => Format::Xz,
        [b'Q', b'F', b'I', 0xfb, 0, 0, 0, 1, ..] => Format::Other("a qcow version 1 image"),
        [b'Q', b'F', b'I', 0xfb, ..] => Format::Qcow2,
        [b'Q', b'E', b'D', 0, ..] => Format::Other("a QED image"),
        [b'K', b'D', b'M', b'V', ..] => Format::Other("a VMDK image"),
        [b'L', b'U', b'K', b'S', 0xba, 0xbe, ..] => Format::Other("a LUKS-encrypted volume"),
        _ if head.starts_with(b"# Disk DescriptorFile") => Format::Other("a VMDK descriptor"),
        _ if head.starts_with(b"vhdxfile") => Format::Other("a VHDX image"),
        _ if head.starts_with(b"conectix") => Format::Other("a dynamic VHD image"),
        _ if head.get(0x40..0x44) == Some(&[0x7f, 0x10, 0xda, 0xbe]) => Format::Other("a VDI image"),
        _ => Format::Raw,
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
        // The image may have run over the zeroed tail (an image larger than the disk, or one whose
        // backup partition table was written before the failure): clear it again so no partition
        // table can be found. Best effort: the device may be the thing that failed.
        let _ = target.write_at(size - HEAD_BYTES as u64, &zeros).and_then(|()| target.sync());
    }
    let written = outcome?;
    Ok(WriteReport {
        source_bytes: progress.bytes_done(),
        image_bytes: written.image_bytes,
        elapsed: started.elapsed(),
        format: written.format,
    })
}

/// An image streamed onto the target, its first MiB still held back.
struct Written {
    head: Vec<u8>,
    image_bytes: u64,
    format: String,
}

/// Streams everything but the head, verifies the checksum, then writes the head.
fn stream_and_verify<R: Read>(
    source: R,
    expected: &Expected,
    target: &mut dyn Target,
    progress: &Arc<ProgressTracker>,
) -> Result<Written, WriteError> {
    progress.set_stage("writing image");
    // Hashing runs on its own thread, fed a copy of the download, so it overlaps reading and writing.
    // It is the one part of the write that cannot be split: its thread does nothing but hash.
    let (written, actual) = std::thread::scope(|scope| {
        let (batches, batches_rx) = mpsc::sync_channel::<Vec<u8>>(HASH_QUEUE);
        let (spent, spent_rx) = mpsc::channel();
        let algorithm = expected.algorithm;
        let hasher = scope.spawn(move || {
            let mut hasher = Hasher::new(algorithm);
            for batch in batches_rx {
                hasher.update(&batch);
                // Gone only once the tee is done: the batch is no longer needed.
                let _ = spent.send(batch);
            }
            hasher.finalize_hex()
        });
        let mut source = HashTee::new(ProgressReader::new(source, progress.clone()), batches, spent_rx);
        let written = write_stream(&mut source, target, progress).and_then(|written| {
            progress.set_stage("verifying checksum");
            // What the decompressor or the qcow2 reader left unread: the checksum covers the whole download.
            io::copy(&mut source, &mut io::sink()).map_err(|e| read_error(progress, e))?;
            Ok(written)
        });
        drop(source.finish());
        let actual = hasher.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        written.map(|written| (written, actual))
    })?;
    if actual != expected.hex {
        return Err(WriteError::ChecksumMismatch {
            algorithm: expected.algorithm,
            expected: expected.hex.clone(),
            actual,
        });
    }
    progress.set_stage("writing partition table");
    write_at(target, 0, &written.head)?;
    progress.set_stage("flushing");
    sync(target)?;
    Ok(written)
}

/// Recognises the download's format, decompresses it if needed, and writes what it holds.
fn write_stream(source: impl Read, target: &mut dyn Target, progress: &ProgressTracker) -> Result<Written, WriteError> {
    let mut source = source;
    let probe = read_probe(&mut source, progress)?;
    let format = probe_format(&probe);
    let input = Cursor::new(probe).chain(source);
    let written = match format {
        Format::Gzip => write_decompressed(MultiGzDecoder::new(input), format, target, progress),
        Format::Zstd => {
            let mut decoder = zstd::stream::read::Decoder::new(input).map_err(|e| read_error(progress, e))?;
            decoder.window_log_max(ZSTD_WINDOW_LOG_MAX).map_err(|e| read_error(progress, e))?;
            write_decompressed(decoder, format, target, progress)
        }
        Format::Xz => {
            let stream =
                liblzma::stream::Stream::new_stream_decoder(DECOMPRESSOR_MEMORY_BYTES, liblzma::stream::CONCATENATED)
                    .map_err(|e| read_error(progress, e.into()))?;
            write_decompressed(XzDecoder::new_stream(input, stream), format, target, progress)
        }
        Format::Raw | Format::Qcow2 | Format::Other(_) => write_content(input, format, None, target, progress),
    };
    written.map_err(|e| over_memory_limit(format, &e).unwrap_or(e))
}

/// The error to report when a decompressor stopped because the image needs more than
/// [`DECOMPRESSOR_MEMORY_BYTES`].
fn over_memory_limit(format: Format, error: &WriteError) -> Option<WriteError> {
    let WriteError::Read { source, .. } = error else { return None };
    let feature = match format {
        Format::Xz => {
            let inner = source.get_ref()?.downcast_ref::<liblzma::stream::Error>()?;
            matches!(inner, liblzma::stream::Error::MemLimit)
                .then_some("xz with a dictionary over 32 MiB (xz -7 to -9); recompress with xz -6 or less")?
        }
        // zstd reports it only as a message (ZSTD_error_frameParameter_windowTooLarge).
        Format::Zstd => source
            .to_string()
            .contains("too much memory")
            .then_some("zstd with a window over 32 MiB (--long or --ultra); recompress without them")?,
        _ => return None,
    };
    Some(WriteError::Unsupported { feature: feature.to_owned() })
}

/// Bytes handed to the hashing thread at a time, and how many may wait: bounds the memory for hashing.
const HASH_BATCH_BYTES: usize = 1 << 20;
const HASH_QUEUE: usize = 8;

/// Passes a reader through, sending a copy of every byte to the hashing thread in batches, which
/// come back to be refilled (no allocation, no page faults per batch).
struct HashTee<R> {
    inner: R,
    batch: Vec<u8>,
    batches: mpsc::SyncSender<Vec<u8>>,
    spent: mpsc::Receiver<Vec<u8>>,
}

impl<R: Read> HashTee<R> {
    fn new(inner: R, batches: mpsc::SyncSender<Vec<u8>>, spent: mpsc::Receiver<Vec<u8>>) -> Self {
        Self { inner, batch: Vec::with_capacity(HASH_BATCH_BYTES), batches, spent }
    }

    /// Sends what is left; dropping the result closes the channel, which ends the hashing.
    fn finish(mut self) -> mpsc::SyncSender<Vec<u8>> {
        self.send_batch();
        self.batches
    }

    fn send_batch(&mut self) {
        if !self.batch.is_empty() {
            let mut next = self.spent.try_recv().unwrap_or_else(|_| Vec::with_capacity(HASH_BATCH_BYTES));
            next.clear();
            let batch = std::mem::replace(&mut self.batch, next);
            // The hashing thread only stops early when the write failed: its digest no longer matters.
            let _ = self.batches.send(batch);
        }
    }
}

impl<R: Read> Read for HashTee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut data = &buf[..n];
        while !data.is_empty() {
            let take = (HASH_BATCH_BYTES - self.batch.len()).min(data.len());
            self.batch.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.batch.len() == HASH_BATCH_BYTES {
                self.send_batch();
            }
        }
        Ok(n)
    }
}

/// Recognises what a decompressor yields and writes it.
fn write_decompressed(
    mut reader: impl Read,
    container: Format,
    target: &mut dyn Target,
    progress: &ProgressTracker,
) -> Result<Written, WriteError> {
    let probe = read_probe(&mut reader, progress)?;
    let format = probe_format(&probe);
    write_content(Cursor::new(probe).chain(reader), format, Some(container), target, progress)
}

fn write_content(
    reader: impl Read,
    format: Format,
    container: Option<Format>,
    target: &mut dyn Target,
    progress: &ProgressTracker,
) -> Result<Written, WriteError> {
    let (head, image_bytes) = match (format, container) {
        (Format::Raw, _) => write_raw(reader, target, progress)?,
        (Format::Qcow2, _) => qcow2::write(reader, target, progress)?,
        (Format::Other(name), _) => return Err(WriteError::Unsupported { feature: name.to_owned() }),
        (inner, outer) => {
            let outer = outer.map_or("", Format::name);
            return Err(WriteError::Unsupported { feature: format!("{} data inside {outer}", inner.name()) });
        }
    };
    let format = match container {
        Some(container) => format!("{} ({})", format.name(), container.name()),
        None => format.name().to_owned(),
    };
    Ok(Written { head, image_bytes, format })
}

/// Copies a raw image to the target from offset 0; returns its head and its size.
fn write_raw(
    mut reader: impl Read,
    target: &mut dyn Target,
    progress: &ProgressTracker,
) -> Result<(Vec<u8>, u64), WriteError> {
    DiskWriter::run(target, |writer| {
        let mut offset = 0u64;
        loop {
            let mut buf = writer.take_buffer()?;
            let filled = fill(&mut reader, &mut buf).map_err(|e| read_error(progress, e))?;
            if filled == 0 {
                writer.recycle(buf);
                return Ok(offset);
            }
            writer.submit(offset, buf, filled)?;
            offset += filled as u64;
        }
    })
}

/// Data written beyond this since the last flush is flushed in the background (when the target has a
/// [`Syncer`](crate::target::Syncer)): the final sync then finds little left, progress stays close to
/// what is durable, and a device's cache (or a loop device's page cache) never holds the whole image.
const FLUSH_BEHIND_BYTES: u64 = 16 << 20;

/// Buffers of [`CHUNK_BYTES`] in use at once: one being filled, one gathering small writes, the rest
/// queued for or being written by the writer thread.
const WRITE_BUFFERS: usize = 4;

/// Work for the writer thread.
enum Job {
    /// Write the first `len` bytes of the buffer at `offset`, then hand the buffer back.
    Data {
        offset: u64,
        buf: AlignedBuffer,
        len: usize,
    },
    Zeros {
        offset: u64,
        len: u64,
    },
}

/// Writes an image's bytes at their offsets, holding the first [`HEAD_BYTES`] back. The writes run on
/// a thread of their own, so they overlap reading, hashing and decompressing; that thread zeroes the
/// image's long runs of zeros with [`Target::zero_fast`] rather than writing them. Only the image's
/// extent is zeroed: zeroing a whole disk first can take hours (WRITE SAME at media speed).
pub(crate) struct DiskWriter {
    size: u64,
    target_name: String,
    head: Vec<u8>,
    /// Small contiguous writes gathered into one: (offset, buffer, bytes used).
    staged: Option<(u64, AlignedBuffer, usize)>,
    spare: Vec<AlignedBuffer>,
    allocated: usize,
    jobs: mpsc::SyncSender<Job>,
    returned: mpsc::Receiver<AlignedBuffer>,
}

impl DiskWriter {
    /// Runs `write` with a writer feeding a writer thread, and waits for the writes; returns the
    /// held-back head and what `write` returned.
    pub(crate) fn run<T>(
        target: &mut dyn Target,
        write: impl FnOnce(&mut DiskWriter) -> Result<T, WriteError>,
    ) -> Result<(Vec<u8>, T), WriteError> {
        let target_name = target.describe();
        let size = target.size();
        std::thread::scope(|scope| {
            // One flush at a time, at most one more asked for: flushing never holds the writes up.
            let (flush, flusher) = match target.syncer() {
                Some(mut syncer) => {
                    let (flush, requests) = mpsc::sync_channel::<()>(1);
                    (Some(flush), Some(scope.spawn(move || requests.iter().try_for_each(|()| syncer.sync()))))
                }
                None => (None, None),
            };
            let (jobs, jobs_rx) = mpsc::sync_channel(WRITE_BUFFERS - 2);
            let (returned_tx, returned) = mpsc::channel();
            let thread = scope.spawn(move || ZeroingWriter::new(target, flush).run(jobs_rx, returned_tx));
            let mut writer = DiskWriter {
                size,
                target_name,
                head: vec![0; HEAD_BYTES],
                staged: None,
                spare: Vec::new(),
                allocated: 0,
                jobs,
                returned,
            };
            let result = write(&mut writer).and_then(|value| writer.flush_staged().map(|()| value));
            let DiskWriter { head, jobs, target_name, .. } = writer;
            drop(jobs);
            let written = thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            // A failed flush stops the writer thread, whose error then only says so.
            if let Some(flusher) = flusher {
                let flushed = flusher.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                flushed.map_err(|source| WriteError::Write { target: target_name, offset: 0, source })?;
            }
            // The writer thread's error is the precise one: ours may only say that it stopped.
            written?;
            Ok((head, result?))
        })
    }

    /// A buffer of [`CHUNK_BYTES`] to fill and [`submit`](Self::submit); waits while all are in use.
    pub(crate) fn take_buffer(&mut self) -> Result<AlignedBuffer, WriteError> {
        self.spare.extend(self.returned.try_iter());
        if let Some(buf) = self.spare.pop() {
            return Ok(buf);
        }
        if self.allocated < WRITE_BUFFERS {
            self.allocated += 1;
            return Ok(AlignedBuffer::new(CHUNK_BYTES));
        }
        self.returned.recv().map_err(|_| self.writer_stopped(0))
    }

    pub(crate) fn recycle(&mut self, buf: AlignedBuffer) {
        self.spare.push(buf);
    }

    /// Writes the first `len` bytes of `buf` at `offset` without copying them.
    pub(crate) fn submit(&mut self, offset: u64, buf: AlignedBuffer, len: usize) -> Result<(), WriteError> {
        self.flush_staged()?;
        self.send_data(offset, buf, len)
    }

    /// Writes `data` at `offset`, gathering small contiguous writes (decompressed clusters) into one.
    pub(crate) fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), WriteError> {
        if let Some((staged_at, buf, used)) = &mut self.staged {
            if *staged_at + *used as u64 == offset && *used + data.len() <= buf.len() {
                buf[*used..*used + data.len()].copy_from_slice(data);
                *used += data.len();
                return Ok(());
            }
        }
        self.flush_staged()?;
        for (i, piece) in data.chunks(CHUNK_BYTES).enumerate() {
            let mut buf = self.take_buffer()?;
            buf[..piece.len()].copy_from_slice(piece);
            self.staged = Some((offset + (i * CHUNK_BYTES) as u64, buf, piece.len()));
            if piece.len() == CHUNK_BYTES {
                self.flush_staged()?;
            }
        }
        Ok(())
    }

    /// Makes `len` bytes at `offset` zero.
    pub(crate) fn write_zeros(&mut self, offset: u64, len: u64) -> Result<(), WriteError> {
        let end = offset.saturating_add(len);
        self.check_fits(offset, end)?;
        if offset < HEAD_BYTES as u64 {
            self.head[offset as usize..end.min(HEAD_BYTES as u64) as usize].fill(0);
        }
        let offset = offset.max(HEAD_BYTES as u64);
        if offset >= end {
            return Ok(());
        }
        self.jobs.send(Job::Zeros { offset, len: end - offset }).map_err(|_| self.writer_stopped(offset))
    }

    fn flush_staged(&mut self) -> Result<(), WriteError> {
        match self.staged.take() {
            Some((offset, buf, used)) => self.send_data(offset, buf, used),
            None => Ok(()),
        }
    }

    /// Copies what falls into the head, sends the rest to the writer thread.
    fn send_data(&mut self, offset: u64, buf: AlignedBuffer, len: usize) -> Result<(), WriteError> {
        let end = offset + len as u64;
        self.check_fits(offset, end)?;
        let mut skip = 0;
        if offset < HEAD_BYTES as u64 {
            skip = (HEAD_BYTES - offset as usize).min(len);
            self.head[offset as usize..offset as usize + skip].copy_from_slice(&buf[..skip]);
        }
        if skip == len {
            self.recycle(buf);
            return Ok(());
        }
        if skip > 0 {
            // Rare (the image's first MiB): move the rest to the front rather than track a start.
            let mut rest = self.take_buffer()?;
            rest[..len - skip].copy_from_slice(&buf[skip..len]);
            self.recycle(buf);
            return self.send_data(offset + skip as u64, rest, len - skip);
        }
        self.jobs.send(Job::Data { offset, buf, len }).map_err(|_| self.writer_stopped(offset))
    }

    fn check_fits(&self, offset: u64, end: u64) -> Result<(), WriteError> {
        if end > self.size {
            return Err(WriteError::Write {
                target: self.target_name.clone(),
                offset,
                source: io::Error::new(
                    io::ErrorKind::StorageFull,
                    format!("the image continues to byte {end}, past the end of the target ({} bytes)", self.size),
                ),
            });
        }
        Ok(())
    }

    /// Stands in for the writer thread's own error, which [`run`](Self::run) returns instead.
    fn writer_stopped(&self, offset: u64) -> WriteError {
        WriteError::Write { target: self.target_name.clone(), offset, source: io::Error::other("the writer stopped") }
    }
}

/// The writer thread: performs the jobs in order, handing buffers back; stops at the first error.
/// Zero runs are gathered across jobs and zeroed fast when long enough and the target can.
struct ZeroingWriter<'t> {
    target: &'t mut dyn Target,
    /// False once [`Target::zero_fast`] said it cannot: zeros are written from then on.
    zero_fast: bool,
    /// A run of zeros not zeroed yet: (offset, len).
    zero_run: Option<(u64, u64)>,
    zeros: Vec<u8>,
    /// Asks the flusher thread for a flush; `None` without one.
    flush: Option<mpsc::SyncSender<()>>,
    /// Bytes written since the last flush was asked for.
    unflushed: u64,
}

impl<'t> ZeroingWriter<'t> {
    fn new(target: &'t mut dyn Target, flush: Option<mpsc::SyncSender<()>>) -> Self {
        Self { target, zero_fast: true, zero_run: None, zeros: Vec::new(), flush, unflushed: 0 }
    }

    fn run(mut self, jobs: mpsc::Receiver<Job>, returned: mpsc::Sender<AlignedBuffer>) -> Result<(), WriteError> {
        for job in jobs {
            match job {
                Job::Data { offset, buf, len } => {
                    let written = self.data(offset, &buf[..len]);
                    // The other end is gone only when the image writer finished or failed.
                    let _ = returned.send(buf);
                    written?;
                }
                Job::Zeros { offset, len } => self.add_zeros(offset, len)?,
            }
        }
        self.flush_zeros()
    }

    /// Writes `data`, except its runs of zero blocks (aligned on the target) that are long enough or
    /// reach its end (they may continue in the next job): those join the zero run.
    fn data(&mut self, offset: u64, data: &[u8]) -> Result<(), WriteError> {
        let mut write_from = 0usize;
        let mut zeros_from: Option<usize> = None;
        let mut at = 0usize;
        while at < data.len() {
            let block_end = ((offset + at as u64) / ZERO_BLOCK_BYTES as u64 + 1) * ZERO_BLOCK_BYTES as u64;
            let next = ((block_end - offset) as usize).min(data.len());
            if is_zero(&data[at..next]) {
                zeros_from.get_or_insert(at);
            } else if let Some(start) = zeros_from.take() {
                let continues_run = start == 0 && self.zero_run.is_some_and(|(o, l)| o + l == offset);
                if continues_run || (at - start) as u64 >= ZERO_FAST_MIN_BYTES {
                    self.write(offset + write_from as u64, &data[write_from..start])?;
                    self.add_zeros(offset + start as u64, (at - start) as u64)?;
                    write_from = at;
                }
            }
            at = next;
        }
        let end = zeros_from.unwrap_or(data.len());
        self.write(offset + write_from as u64, &data[write_from..end])?;
        if end < data.len() {
            self.add_zeros(offset + end as u64, (data.len() - end) as u64)?;
        }
        Ok(())
    }

    /// Writes data; first settles the zero run, which ends here.
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), WriteError> {
        if data.is_empty() {
            return Ok(());
        }
        self.flush_zeros()?;
        write_at(self.target, offset, data)?;
        self.flush_behind(offset, data.len())
    }

    /// Asks for a background flush once [`FLUSH_BEHIND_BYTES`] were written since the last one, unless
    /// one is already waiting (the count then carries over to the next write).
    fn flush_behind(&mut self, offset: u64, written: usize) -> Result<(), WriteError> {
        self.unflushed += written as u64;
        let Some(flush) = &self.flush else { return Ok(()) };
        if self.unflushed < FLUSH_BEHIND_BYTES {
            return Ok(());
        }
        match flush.try_send(()) {
            Ok(()) => self.unflushed = 0,
            Err(mpsc::TrySendError::Full(())) => {}
            Err(mpsc::TrySendError::Disconnected(())) => {
                let source = io::Error::other("a flush failed");
                return Err(WriteError::Write { target: self.target.describe(), offset, source });
            }
        }
        Ok(())
    }

    fn add_zeros(&mut self, offset: u64, len: u64) -> Result<(), WriteError> {
        match &mut self.zero_run {
            Some((run_offset, run_len)) if *run_offset + *run_len == offset => *run_len += len,
            _ => {
                self.flush_zeros()?;
                self.zero_run = Some((offset, len));
            }
        }
        Ok(())
    }

    /// Zeroes the pending run: fast if it is long enough and the target can, else by writing zeros.
    fn flush_zeros(&mut self) -> Result<(), WriteError> {
        let Some((offset, len)) = self.zero_run.take() else { return Ok(()) };
        if self.zero_fast && len >= ZERO_FAST_MIN_BYTES {
            let zeroed = self.target.zero_fast(offset, len).map_err(|source| WriteError::Write {
                target: self.target.describe(),
                offset,
                source,
            })?;
            if zeroed {
                return Ok(());
            }
            tracing::info!(target = %self.target.describe(), "the target cannot zero without writing: writing zeros");
            self.zero_fast = false;
        }
        if self.zeros.is_empty() {
            self.zeros = vec![0u8; CHUNK_BYTES];
        }
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(CHUNK_BYTES as u64) as usize;
            write_at(self.target, at, &self.zeros[..n])?;
            self.flush_behind(at, n)?;
            at += n as u64;
        }
        Ok(())
    }
}

/// True if every byte is zero; ORs 64-byte lanes so the compiler vectorises it.
fn is_zero(data: &[u8]) -> bool {
    let mut chunks = data.chunks_exact(64);
    let lanes_zero = chunks.all(|lane| lane.iter().fold(0u8, |acc, b| acc | b) == 0);
    lanes_zero && chunks.remainder().iter().all(|b| *b == 0)
}

/// The first [`PROBE_BYTES`] of a stream (fewer if it is shorter).
fn read_probe(reader: &mut impl Read, progress: &ProgressTracker) -> Result<Vec<u8>, WriteError> {
    let mut probe = vec![0u8; PROBE_BYTES];
    let filled = fill(reader, &mut probe).map_err(|e| read_error(progress, e))?;
    probe.truncate(filled);
    Ok(probe)
}

pub(crate) fn read_error(progress: &ProgressTracker, source: io::Error) -> WriteError {
    WriteError::Read { bytes_read: progress.bytes_done(), source }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
pub(crate) fn fill(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
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

/// Helpers shared by the image and qcow2 tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::target::{Fault, FaultyTarget, FileTarget};
    use sha2::{Digest, Sha256};
    use std::path::Path;
    use std::process::Command;

    /// What the disk held before: anything still reading this was not written.
    pub(crate) const OLD: u8 = 0xee;

    pub(crate) fn sha256(data: &[u8]) -> Expected {
        Expected { algorithm: Algorithm::Sha256, hex: hex::encode(Sha256::digest(data)) }
    }

    pub(crate) fn sha256_file(path: &Path) -> Expected {
        let mut hasher = Sha256::new();
        io::copy(&mut std::fs::File::open(path).unwrap(), &mut hasher).unwrap();
        Expected { algorithm: Algorithm::Sha256, hex: hex::encode(hasher.finalize()) }
    }

    /// A disk file of `len` bytes of [`OLD`], as if an older image lived there.
    pub(crate) fn old_disk(len: u64) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), vec![OLD; len as usize]).unwrap();
        file
    }

    /// Writes the image file `image` onto the disk file `disk`, checking it against its own sha256,
    /// through a fault-injecting target when `fault` is given.
    pub(crate) fn write_file(image: &Path, disk: &Path, fault: Option<Fault>) -> Result<WriteReport, WriteError> {
        write_file_expecting(image, &sha256_file(image), disk, fault)
    }

    pub(crate) fn write_file_expecting(
        image: &Path,
        expected: &Expected,
        disk: &Path,
        fault: Option<Fault>,
    ) -> Result<WriteReport, WriteError> {
        let source = std::fs::File::open(image).unwrap();
        let progress = Arc::new(ProgressTracker::default());
        let file_target = FileTarget::open(disk).unwrap();
        match fault {
            Some(fault) => write_image(source, expected, &mut FaultyTarget::new(file_target, fault), &progress),
            None => write_image(source, expected, &mut { file_target }, &progress),
        }
    }

    pub(crate) fn assert_no_partition_table(disk: &[u8]) {
        assert!(disk[..HEAD_BYTES].iter().all(|b| *b == 0), "first MiB must be zero");
        assert!(disk[disk.len() - HEAD_BYTES..].iter().all(|b| *b == 0), "last MiB must be zero");
    }

    /// The disk is as before except for its zeroed first and last MiB.
    pub(crate) fn assert_only_wiped(disk: &[u8]) {
        assert_no_partition_table(disk);
        let middle = &disk[HEAD_BYTES..disk.len() - HEAD_BYTES];
        assert!(middle.iter().all(|b| *b == OLD), "nothing but the first and last MiB may change");
    }

    pub(crate) fn run(description: &str, command: &mut Command) -> String {
        ferric_runner::run(description, command).unwrap().stdout
    }

    /// Asserts that the first `len` bytes of two files are equal, comparing 4 MiB at a time.
    pub(crate) fn assert_same_prefix(written: &Path, expected: &Path, len: u64) {
        let (mut a, mut b) = (std::fs::File::open(written).unwrap(), std::fs::File::open(expected).unwrap());
        let (mut buf_a, mut buf_b) = (vec![0u8; CHUNK_BYTES], vec![0u8; CHUNK_BYTES]);
        let mut offset = 0u64;
        while offset < len {
            let n = (len - offset).min(CHUNK_BYTES as u64) as usize;
            a.read_exact(&mut buf_a[..n]).unwrap();
            b.read_exact(&mut buf_b[..n]).unwrap();
            if buf_a[..n] != buf_b[..n] {
                let first = (0..n).find(|i| buf_a[*i] != buf_b[*i]).unwrap() as u64 + offset;
                panic!("{} differs from {} at byte {first}", written.display(), expected.display());
            }
            offset += n as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::target::{Fault, FaultyTarget, FileTarget, Slice};
    use flate2::{write::GzEncoder, Compression};
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;

    const DISK: u64 = 16 << 20;

    /// An image with a recognisable first MiB and a body that differs per offset.
    fn image(len: usize) -> Vec<u8> {
        let mut data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        data[510] = 0x55;
        data[511] = 0xaa;
        data[512..520].copy_from_slice(b"EFI PART");
        data
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        zstd::stream::encode_all(data, 3).unwrap()
    }

    /// Two concatenated xz streams, as `cat a.xz b.xz` gives.
    fn xz_two_streams(data: &[u8]) -> Vec<u8> {
        let (first, second) = data.split_at(data.len() / 3);
        let mut out = Vec::new();
        for part in [first, second] {
            let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 1);
            enc.write_all(part).unwrap();
            out.extend(enc.finish().unwrap());
        }
        out
    }

    fn write(data: &[u8], expected: &Expected, target: &mut dyn Target) -> Result<WriteReport, WriteError> {
        write_image(data, expected, target, &Arc::new(ProgressTracker::default()))
    }

    #[test]
    fn raw_image_is_written_whole_and_verified() {
        let data = image(5 * HEAD_BYTES + 123);
        let file = old_disk(DISK);
        let mut target = FaultyTarget::new(FileTarget::open(file.path()).unwrap(), Fault::NoFastZeroing);
        let progress = Arc::new(ProgressTracker::default());
        let report = write_image(&data[..], &sha256(&data), &mut target, &progress).unwrap();
        assert_eq!(report.image_bytes, data.len() as u64);
        assert_eq!(report.source_bytes, data.len() as u64);
        assert_eq!(report.format, "raw");
        let written = std::fs::read(file.path()).unwrap();
        assert_eq!(&written[..data.len()], &data[..]);
        assert!(written[data.len()..DISK as usize - HEAD_BYTES].iter().all(|b| *b == OLD));
        assert_eq!(progress.snapshot().stage, "flushing");
    }

    #[test]
    fn compressed_images_are_decompressed_and_the_checksum_covers_the_download() {
        let data = image(3 * HEAD_BYTES + 4097);
        let cases: [(&str, Vec<u8>); 3] =
            [("raw (gzip)", gzip(&data)), ("raw (zstd)", zstd(&data)), ("raw (xz)", xz_two_streams(&data))];
        for (format, compressed) in cases {
            let file = old_disk(DISK);
            let mut target = FileTarget::open(file.path()).unwrap();
            let report = write(&compressed, &sha256(&compressed), &mut target).unwrap();
            assert_eq!(report.format, format);
            assert_eq!(report.image_bytes, data.len() as u64, "{format}");
            assert_eq!(report.source_bytes, compressed.len() as u64, "{format}");
            assert_eq!(&std::fs::read(file.path()).unwrap()[..data.len()], &data[..], "{format}");
        }
    }

    #[test]
    fn zero_blocks_are_skipped_when_the_target_zeroes_fast_and_written_otherwise() {
        // 1 MiB head, 6 MiB of zeros, 1 MiB of data.
        let mut data = image(8 * HEAD_BYTES);
        data[HEAD_BYTES..7 * HEAD_BYTES].fill(0);
        for fault in [None, Some(Fault::NoFastZeroing)] {
            let file = old_disk(DISK);
            let mut target = FaultyTarget::new(FileTarget::open(file.path()).unwrap(), fault.unwrap_or(Fault::SyncEio));
            let mut plain = FileTarget::open(file.path()).unwrap();
            let target: &mut dyn Target = if fault.is_some() { &mut target } else { &mut plain };
            write(&data, &sha256(&data), target).unwrap();
            let written = std::fs::read(file.path()).unwrap();
            assert_eq!(&written[..data.len()], &data[..], "{fault:?}");
            let allocated = file.as_file().metadata().unwrap().blocks() * 512;
            if fault.is_none() {
                // The 6 MiB of zeros were deallocated, not written.
                assert!(allocated <= DISK - 6 * HEAD_BYTES as u64, "{allocated} bytes allocated");
            } else {
                assert!(allocated >= DISK, "zeros written, {allocated} bytes allocated");
            }
            // Only the image's extent is zeroed, never the rest of the disk (hours on some RAID disks).
            assert!(written[data.len()..DISK as usize - HEAD_BYTES].iter().all(|b| *b == OLD), "{fault:?}");
        }
    }

    /// Compresses `data` with a real tool from stdin (so it cannot shrink the window to the input size).
    fn compress_with(tool: &str, args: &[&str], data: &[u8]) -> Vec<u8> {
        let input = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(input.path(), data).unwrap();
        let output = std::process::Command::new(tool)
            .args(args)
            .stdin(std::fs::File::open(input.path()).unwrap())
            .output()
            .unwrap();
        assert!(output.status.success(), "{tool} {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        output.stdout
    }

    #[test]
    fn decompressors_needing_more_than_32_mib_are_refused() {
        let data = image(2 * HEAD_BYTES + 512);
        let cases: [(&str, &[&str], Option<&str>); 5] = [
            ("xz", &["-9", "-c"], Some("xz with a dictionary over 32 MiB")),
            ("xz", &["-6", "-c"], None),
            ("zstd", &["--long=27", "-c"], Some("zstd with a window over 32 MiB")),
            ("zstd", &["--ultra", "-22", "-c"], Some("zstd with a window over 32 MiB")),
            ("zstd", &["-19", "-c"], None),
        ];
        for (tool, args, refusal) in cases {
            let compressed = compress_with(tool, args, &data);
            let file = old_disk(DISK);
            let mut target = FileTarget::open(file.path()).unwrap();
            let result = write(&compressed, &sha256(&compressed), &mut target);
            match refusal {
                Some(message) => {
                    let err = result.unwrap_err();
                    assert!(matches!(err, WriteError::Unsupported { .. }), "{tool} {args:?}: {err}");
                    assert!(err.to_string().contains(message), "{tool} {args:?}: {err}");
                    assert_no_partition_table(&std::fs::read(file.path()).unwrap());
                }
                None => {
                    result.unwrap();
                    assert_eq!(&std::fs::read(file.path()).unwrap()[..data.len()], &data[..], "{tool} {args:?}");
                }
            }
        }
    }

    #[test]
    fn zero_check_finds_a_single_non_zero_byte_anywhere() {
        for len in [0, 1, 63, 64, 65, 4096, ZERO_BLOCK_BYTES] {
            assert!(is_zero(&vec![0u8; len]), "{len}");
            for at in [0, len / 2, len.saturating_sub(1)].into_iter().filter(|at| *at < len) {
                let mut block = vec![0u8; len];
                block[at] = 1;
                assert!(!is_zero(&block), "{len} bytes, non-zero at {at}");
            }
        }
    }

    #[test]
    fn image_is_written_into_a_slice_of_the_disk() {
        let data = image(3 * HEAD_BYTES);
        let file = old_disk(DISK);
        let mut disk = FileTarget::open(file.path()).unwrap();
        let start = 4 << 20;
        let mut partition = Slice::new(&mut disk, start, 8 << 20);
        write(&data, &sha256(&data), &mut partition).unwrap();
        let written = std::fs::read(file.path()).unwrap();
        let start = start as usize;
        assert!(written[..start].iter().all(|b| *b == OLD), "before the partition");
        assert_eq!(&written[start..start + data.len()], &data[..]);
        assert!(written[start + (8 << 20)..].iter().all(|b| *b == OLD), "after the partition");
    }

    #[test]
    fn checksum_mismatch_leaves_no_partition_table() {
        let data = image(3 * HEAD_BYTES);
        let file = old_disk(DISK);
        let mut target = FileTarget::open(file.path()).unwrap();
        let wrong = sha256(b"something else");
        let err = write(&data, &wrong, &mut target).unwrap_err();
        assert!(matches!(err, WriteError::ChecksumMismatch { .. }), "{err}");
        assert!(err.to_string().contains(&wrong.hex));
        assert_no_partition_table(&std::fs::read(file.path()).unwrap());
    }

    #[test]
    fn write_failures_name_the_offset_and_leave_no_partition_table() {
        for fault in [Fault::EioAfter(3 << 20), Fault::ShortWriteAfter(3 << 20)] {
            let data = image(6 * HEAD_BYTES);
            let file = old_disk(DISK);
            let mut target = FaultyTarget::new(FileTarget::open(file.path()).unwrap(), fault);
            let err = write(&data, &sha256(&data), &mut target).unwrap_err();
            assert!(matches!(err, WriteError::Write { .. }), "{fault:?}: {err}");
            assert_no_partition_table(&std::fs::read(file.path()).unwrap());
        }
    }

    #[test]
    fn failed_final_flush_is_reported() {
        let data = image(2 * HEAD_BYTES);
        let file = old_disk(DISK);
        let mut target = FaultyTarget::new(FileTarget::open(file.path()).unwrap(), Fault::SyncEio);
        let err = write(&data, &sha256(&data), &mut target).unwrap_err();
        assert!(matches!(err, WriteError::Write { .. }), "{err}");
    }

    #[test]
    fn failed_background_flush_fails_the_write() {
        // Enough data for several flushes behind the writes: the first failure must not be lost.
        let data = image(4 * FLUSH_BEHIND_BYTES as usize);
        let file = old_disk(8 * FLUSH_BEHIND_BYTES);
        let mut target = FaultyTarget::new(FileTarget::open(file.path()).unwrap(), Fault::SyncerEio);
        let err = write(&data, &sha256(&data), &mut target).unwrap_err();
        let WriteError::Write { target, source, .. } = &err else { panic!("{err}") };
        assert!(target.contains(&file.path().display().to_string()), "{err}");
        assert_eq!(source.raw_os_error(), Some(nix::libc::EIO), "{err}: {source}");
        assert_no_partition_table(&std::fs::read(file.path()).unwrap());
    }

    #[test]
    fn image_larger_than_target_fails() {
        let data = image(DISK as usize + 10);
        let file = old_disk(DISK);
        let mut target = FileTarget::open(file.path()).unwrap();
        let err = write(&data, &sha256(&data), &mut target).unwrap_err();
        assert!(err.to_string().contains("offset"), "{err}");
        assert_no_partition_table(&std::fs::read(file.path()).unwrap());
    }

    #[test]
    fn zeros_past_the_end_of_the_target_still_fail() {
        let mut data = image(DISK as usize + HEAD_BYTES);
        data[DISK as usize - HEAD_BYTES..].fill(0);
        let file = old_disk(DISK);
        let mut target = FileTarget::open(file.path()).unwrap();
        let err = write(&data, &sha256(&data), &mut target).unwrap_err();
        assert!(matches!(err, WriteError::Write { .. }), "{err}");
        assert_no_partition_table(&std::fs::read(file.path()).unwrap());
    }

    #[test]
    fn truncated_compressed_images_are_read_errors() {
        let data = image(3 * HEAD_BYTES);
        for compressed in [gzip(&data), zstd(&data), xz_two_streams(&data)] {
            let cut = &compressed[..compressed.len() / 2];
            let file = old_disk(DISK);
            let mut target = FileTarget::open(file.path()).unwrap();
            let err = write(cut, &sha256(cut), &mut target).unwrap_err();
            assert!(matches!(err, WriteError::Read { .. }), "{err}");
            assert_no_partition_table(&std::fs::read(file.path()).unwrap());
        }
    }

    #[test]
    fn unsupported_formats_are_refused_before_writing() {
        let mut vdi = vec![0u8; 128];
        vdi[0x40..0x44].copy_from_slice(&0xbeda107fu32.to_le_bytes());
        let cases: [(&str, Vec<u8>, &str); 7] = [
            ("VMDK", b"KDMV\x01\0\0\0".to_vec(), "VMDK image"),
            ("VHDX", b"vhdxfile".to_vec(), "VHDX image"),
            ("VDI", vdi, "VDI image"),
            ("qcow v1", b"QFI\xfb\0\0\0\x01".to_vec(), "qcow version 1"),
            ("LUKS", b"LUKS\xba\xbe\0\x01".to_vec(), "LUKS"),
            ("gzip inside zstd", zstd(&gzip(&image(HEAD_BYTES))), "gzip data inside zstd"),
            ("VMDK inside gzip", gzip(b"# Disk DescriptorFile\nversion=1\n"), "VMDK descriptor"),
        ];
        for (name, mut data, message) in cases {
            if data.len() < 16 {
                data.resize(3 * HEAD_BYTES, 0);
            }
            let file = old_disk(DISK);
            let mut target = FileTarget::open(file.path()).unwrap();
            let err = write(&data, &sha256(&data), &mut target).unwrap_err();
            assert!(matches!(err, WriteError::Unsupported { .. }), "{name}: {err}");
            assert!(err.to_string().contains(message), "{name}: {err}");
            assert_only_wiped(&std::fs::read(file.path()).unwrap());
        }
    }

    #[test]
    fn probe_recognises_formats_by_magic_only() {
        let cases: [(&[u8], Format); 7] = [
            (b"\x1f\x8b\x08\0", Format::Gzip),
            (b"\x1f\x8b\x07\0", Format::Raw),
            (b"\x28\xb5\x2f\xfd", Format::Zstd),
            (b"\xfd7zXZ\0", Format::Xz),
            (b"QFI\xfb\0\0\0\x03", Format::Qcow2),
            (b"\xeb\x63\x90", Format::Raw),
            (b"", Format::Raw),
        ];
        for (head, format) in cases {
            assert_eq!(probe_format(head), format, "{head:?}");
        }
    }
}
