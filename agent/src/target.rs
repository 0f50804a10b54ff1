//! Where images are written: a small trait with file/block-device, byte-range and fault-injecting
//! implementations, so the write path is tested against real files and injected failures.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{posix_fadvise, FallocateFlags, OFlag, PosixFadviseAdvice};

/// Writes at least this large start their writeback at once (see [`FileTarget::write_at`]).
const WRITEBACK_HINT_BYTES: usize = 1 << 20;

/// A fixed-size byte range the agent writes an image into.
pub trait Target: Send {
    /// Capacity in bytes; writes beyond it fail.
    fn size(&self) -> u64;
    /// Writes all of `buf` at `offset`.
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Fills all of `buf` from `offset` (config drive, GPT and ESP code read back what an image wrote).
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Makes `len` bytes at `offset` read back as zeros without writing data (discard/write-zeroes on
    /// devices, holes in files). `Ok(false)` when the target cannot: the caller then writes zeros.
    fn zero_fast(&mut self, offset: u64, len: u64) -> io::Result<bool>;
    /// Makes everything written so far durable.
    fn sync(&mut self) -> io::Result<()>;
    /// Human name for logs and errors (e.g. `/dev/vda`).
    fn describe(&self) -> String;
    /// Discards `len` bytes at `offset` (BLKDISCARD). Devices may read back zeros, the old data or
    /// anything else afterwards, so callers check. `Ok(false)` when the target cannot discard.
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<bool>;
    /// Syncs, then drops what the page cache holds of the target, so that reads come from the device:
    /// after a hardware erase the cache still holds the data from before it.
    fn drop_cache(&mut self) -> io::Result<()>;
    /// A second handle that makes the writes done so far durable from another thread, so flushing can
    /// overlap writing. `None` when the target has no such handle: everything waits for [`sync`](Self::sync).
    fn syncer(&self) -> Option<Box<dyn Syncer>> {
        None
    }
}

/// Makes a target's writes durable while its writer goes on (see [`Target::syncer`]).
pub trait Syncer: Send {
    fn sync(&mut self) -> io::Result<()>;
}

/// A duplicate descriptor of the target's file or device.
struct FileSyncer(File);

impl Syncer for FileSyncer {
    fn sync(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
}

/// Checks that `len` bytes at `offset` lie inside a target of `size` bytes.
fn check_range(offset: u64, len: u64, size: u64, what: &str) -> io::Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::StorageFull,
            format!("{what} of {len} bytes at offset {offset} goes past the end ({size} bytes)"),
        )),
    }
}

/// Offsets, lengths and buffer addresses of direct writes are multiples of this (any logical block size).
pub const DIRECT_IO_ALIGNMENT: usize = 4096;

/// `len` bytes (zeroed) starting at a [`DIRECT_IO_ALIGNMENT`] boundary, so that writes from them can
/// bypass the page cache: an aligned window into a slightly larger allocation.
pub(crate) struct AlignedBuffer {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuffer {
    pub(crate) fn new(len: usize) -> AlignedBuffer {
        let storage = vec![0u8; len + DIRECT_IO_ALIGNMENT];
        let start = storage.as_ptr().align_offset(DIRECT_IO_ALIGNMENT);
        AlignedBuffer { storage, start, len }
    }
}

impl std::ops::Deref for AlignedBuffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }
}

impl std::ops::DerefMut for AlignedBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

/// A block device or a regular file of fixed size (its current length).
pub struct FileTarget {
    file: File,
    /// The same file opened with O_DIRECT, if the file system allows it: aligned writes bypass the page
    /// cache (no copy, no writeback left for the final sync).
    direct: Option<File>,
    size: u64,
    path: PathBuf,
    block_device: bool,
}

impl FileTarget {
    /// Opens for reading and writing: later steps (config drive, boot entries) read what the image wrote.
    pub fn open(path: &Path) -> io::Result<Self> {
        let mut file = OpenOptions::new().read(true).write(true).open(path)?;
        // Seeking to the end gives the size of block devices as well as of files.
        let size = file.seek(SeekFrom::End(0))?;
        let direct = OpenOptions::new().write(true).custom_flags(OFlag::O_DIRECT.bits()).open(path).ok();
        let block_device = file.metadata()?.file_type().is_block_device();
        Ok(Self { file, direct, size, path: path.to_owned(), block_device })
    }

    /// How many leading bytes of `buf` can be written at `offset` with O_DIRECT.
    fn direct_len(&self, offset: u64, buf: &[u8]) -> usize {
        let aligned =
            offset.is_multiple_of(DIRECT_IO_ALIGNMENT as u64) && buf.as_ptr().align_offset(DIRECT_IO_ALIGNMENT) == 0;
        if self.direct.is_some() && aligned {
            buf.len() / DIRECT_IO_ALIGNMENT * DIRECT_IO_ALIGNMENT
        } else {
            0
        }
    }
}

impl Target for FileTarget {
    fn size(&self) -> u64 {
        self.size
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        check_range(offset, buf.len() as u64, self.size, "write")?;
        let (direct, buffered) = buf.split_at(self.direct_len(offset, buf));
        if let (Some(file), false) = (&self.direct, direct.is_empty()) {
            file.write_all_at(direct, offset)?;
        }
        let offset = offset + direct.len() as u64;
        self.file.write_all_at(buffered, offset)?;
        if buffered.len() >= WRITEBACK_HINT_BYTES {
            // Start writing large buffered writes back now rather than all at the final sync. Only a hint.
            let (start, len) = (offset as i64, buffered.len() as i64);
            let _ = posix_fadvise(self.file.as_raw_fd(), start, len, PosixFadviseAdvice::POSIX_FADV_DONTNEED);
        }
        Ok(())
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_range(offset, buf.len() as u64, self.size, "read")?;
        self.file.read_exact_at(buf, offset)
    }

    fn zero_fast(&mut self, offset: u64, len: u64) -> io::Result<bool> {
        check_range(offset, len, self.size, "zeroing")?;
        if len == 0 {
            return Ok(true);
        }
        let (Ok(start), Ok(length)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Ok(false);
        };
        // Block devices turn a punched hole into WRITE ZEROES without a fallback to writing
        // buffers (so it is fast or refused); files deallocate the range.
        let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        match nix::fcntl::fallocate(self.file.as_raw_fd(), flags, start, length) {
            Ok(()) => Ok(true),
            Err(Errno::EOPNOTSUPP | Errno::EINVAL | Errno::ENODEV | Errno::ENOTTY | Errno::ENOSYS) => Ok(false),
            Err(errno) => Err(errno.into()),
        }
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_all()
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<bool> {
        check_range(offset, len, self.size, "discard")?;
        if !self.block_device {
            return Ok(false);
        }
        if len == 0 {
            return Ok(true);
        }
        match blkdiscard(&self.file, offset, len) {
            Ok(()) => Ok(true),
            // Unaligned ranges, or devices (and loop backing files) without discard.
            Err(Errno::EOPNOTSUPP | Errno::EINVAL | Errno::ENOTTY) => Ok(false),
            Err(errno) => Err(errno.into()),
        }
    }

    fn drop_cache(&mut self) -> io::Result<()> {
        self.sync()?;
        // Offset 0 and length 0: the whole file or device. Clean pages are dropped, dirty ones stay (none
        // are left after the sync).
        posix_fadvise(self.file.as_raw_fd(), 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED)?;
        Ok(())
    }

    fn syncer(&self) -> Option<Box<dyn Syncer>> {
        let file = self.file.try_clone().ok()?;
        Some(Box::new(FileSyncer(file)))
    }
}

#[allow(unsafe_code)]
mod ioctl {
    // BLKDISCARD = _IO(0x12, 119), from linux/fs.h; its argument points at {start, length} in bytes.
    nix::ioctl_write_ptr_bad!(blkdiscard, nix::request_code_none!(0x12, 119), [u64; 2]);
}

#[allow(unsafe_code)]
fn blkdiscard(file: &File, offset: u64, len: u64) -> nix::Result<()> {
    let range = [offset, len];
    // SAFETY: the kernel reads two u64 values from `range`, which outlives the call; the descriptor is open.
    unsafe { ioctl::blkdiscard(file.as_raw_fd(), &range) }.map(drop)
}

/// A byte range of another target (a partition), with every access checked against the range.
pub struct Slice<'a> {
    inner: &'a mut dyn Target,
    start: u64,
    len: u64,
}

impl<'a> Slice<'a> {
    /// `len` bytes of `inner` from `start`; accesses past `inner`'s end fail in `inner`.
    pub fn new(inner: &'a mut dyn Target, start: u64, len: u64) -> Self {
        Self { inner, start, len }
    }

    /// Where the range starts on the inner target.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The inner offset of `offset`, once `len` bytes there are known to fit the slice.
    fn inner_offset(&self, offset: u64, len: u64, what: &str) -> io::Result<u64> {
        check_range(offset, len, self.len, what)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.describe())))?;
        self.start.checked_add(offset).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))
    }
}

impl Target for Slice<'_> {
    fn size(&self) -> u64 {
        self.len
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let inner_offset = self.inner_offset(offset, buf.len() as u64, "write")?;
        self.inner.write_at(inner_offset, buf)
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let inner_offset = self.inner_offset(offset, buf.len() as u64, "read")?;
        self.inner.read_at(inner_offset, buf)
    }

    fn zero_fast(&mut self, offset: u64, len: u64) -> io::Result<bool> {
        let inner_offset = self.inner_offset(offset, len, "zeroing")?;
        self.inner.zero_fast(inner_offset, len)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.inner.sync()
    }

    fn describe(&self) -> String {
        format!("{} bytes {}..{}", self.inner.describe(), self.start, self.start.saturating_add(self.len))
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<bool> {
        let inner_offset = self.inner_offset(offset, len, "discard")?;
        self.inner.discard(inner_offset, len)
    }

    fn drop_cache(&mut self) -> io::Result<()> {
        self.inner.drop_cache()
    }

    fn syncer(&self) -> Option<Box<dyn Syncer>> {
        self.inner.syncer()
    }
}

/// How a [`FaultyTarget`] fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Writes fail with EIO once this many bytes were written.
    EioAfter(u64),
    /// The write that crosses this many bytes stops short, as a device that disappears mid-write.
    ShortWriteAfter(u64),
    /// `sync` fails with EIO.
    SyncEio,
    /// The syncer's flushes, made while writing goes on, fail with EIO; `sync` works.
    SyncerEio,
    /// `zero_fast` and `discard` answer "cannot", as a device without discard or write-zeroes support.
    NoFastZeroing,
}

/// Wraps a target and injects one fault, for tests of the failure paths.
pub struct FaultyTarget<T> {
    inner: T,
    fault: Fault,
    written: u64,
}

impl<T: Target> FaultyTarget<T> {
    pub fn new(inner: T, fault: Fault) -> Self {
        Self { inner, fault, written: 0 }
    }

    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: Target> Target for FaultyTarget<T> {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let after = self.written + buf.len() as u64;
        match self.fault {
            Fault::EioAfter(limit) if after > limit => return Err(Errno::EIO.into()),
            Fault::ShortWriteAfter(limit) if after > limit => {
                let keep = limit.saturating_sub(self.written) as usize;
                self.inner.write_at(offset, &buf[..keep])?;
                self.written += keep as u64;
                return Err(io::Error::new(io::ErrorKind::WriteZero, "short write: device stopped accepting data"));
            }
            _ => {}
        }
        self.inner.write_at(offset, buf)?;
        self.written = after;
        Ok(())
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(offset, buf)
    }

    fn zero_fast(&mut self, offset: u64, len: u64) -> io::Result<bool> {
        if self.fault == Fault::NoFastZeroing {
            return Ok(false);
        }
        self.inner.zero_fast(offset, len)
    }

    fn sync(&mut self) -> io::Result<()> {
        if self.fault == Fault::SyncEio {
            return Err(Errno::EIO.into());
        }
        self.inner.sync()
    }

    fn describe(&self) -> String {
        format!("{} (fault-injecting: {:?})", self.inner.describe(), self.fault)
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<bool> {
        if self.fault == Fault::NoFastZeroing {
            return Ok(false);
        }
        self.inner.discard(offset, len)
    }

    fn drop_cache(&mut self) -> io::Result<()> {
        if self.fault == Fault::SyncEio {
            return Err(Errno::EIO.into());
        }
        self.inner.drop_cache()
    }

    fn syncer(&self) -> Option<Box<dyn Syncer>> {
        if self.fault == Fault::SyncerEio {
            return Some(Box::new(FailingSyncer));
        }
        self.inner.syncer()
    }
}

/// The syncer of a target whose syncs fail.
struct FailingSyncer;

impl Syncer for FailingSyncer {
    fn sync(&mut self) -> io::Result<()> {
        Err(Errno::EIO.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffers_are_aligned_zeroed_and_of_their_length() {
        for len in [4096, 16 << 20] {
            let buffer = AlignedBuffer::new(len);
            assert_eq!((buffer.as_ptr().align_offset(DIRECT_IO_ALIGNMENT), buffer.len()), (0, len));
            assert!(buffer.iter().all(|byte| *byte == 0));
        }
    }
    use std::os::unix::fs::MetadataExt;
    use std::process::Command;

    fn sized_file(len: u64) -> (tempfile::NamedTempFile, FileTarget) {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(len).unwrap();
        let target = FileTarget::open(file.path()).unwrap();
        (file, target)
    }

    /// A file of `len` bytes of `fill`, fully allocated.
    fn filled_file(len: usize, fill: u8) -> (tempfile::NamedTempFile, FileTarget) {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), vec![fill; len]).unwrap();
        let target = FileTarget::open(file.path()).unwrap();
        (file, target)
    }

    #[test]
    fn file_target_refuses_writes_and_reads_past_its_end() {
        let (_f, mut t) = sized_file(4096);
        assert_eq!(t.size(), 4096);
        t.write_at(4000, &[1; 96]).unwrap();
        let err = t.write_at(4000, &[1; 97]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        let mut buf = [0u8; 97];
        assert_eq!(t.read_at(4000, &mut buf).unwrap_err().kind(), io::ErrorKind::StorageFull);
        assert_eq!(t.read_at(u64::MAX, &mut buf).unwrap_err().kind(), io::ErrorKind::StorageFull);
    }

    #[test]
    fn file_target_reads_back_what_was_written() {
        let (_f, mut t) = sized_file(8192);
        t.write_at(1000, b"ferric").unwrap();
        let mut buf = [0u8; 8];
        t.read_at(999, &mut buf).unwrap();
        assert_eq!(&buf, b"\0ferric\0");
    }

    #[test]
    fn zero_fast_punches_a_hole_in_a_file() {
        let (f, mut t) = filled_file(1 << 20, 0xee);
        let allocated_before = f.as_file().metadata().unwrap().blocks();
        assert!(t.zero_fast(64 << 10, 512 << 10).unwrap());
        let data = std::fs::read(f.path()).unwrap();
        assert!(data[..64 << 10].iter().all(|b| *b == 0xee));
        assert!(data[64 << 10..576 << 10].iter().all(|b| *b == 0));
        assert!(data[576 << 10..].iter().all(|b| *b == 0xee));
        assert_eq!(data.len(), 1 << 20, "the size is kept");
        assert!(f.as_file().metadata().unwrap().blocks() < allocated_before, "the range is deallocated");
        assert!(t.zero_fast(0, (1 << 20) + 1).is_err(), "past the end");
    }

    /// A loop device over a file, detached on drop.
    struct Loop {
        device: PathBuf,
        _backing: tempfile::NamedTempFile,
    }

    impl Loop {
        fn new(len: usize, fill: u8) -> Loop {
            let backing = tempfile::NamedTempFile::new_in("/var/tmp").unwrap();
            std::fs::write(backing.path(), vec![fill; len]).unwrap();
            let attached =
                ferric_runner::run("losetup", Command::new("losetup").args(["-f", "--show"]).arg(backing.path()));
            let device = PathBuf::from(attached.unwrap().stdout.trim());
            Loop { device, _backing: backing }
        }
    }

    impl Drop for Loop {
        fn drop(&mut self) {
            let _ = ferric_runner::run("losetup -d", Command::new("losetup").arg("-d").arg(&self.device));
        }
    }

    #[test]
    fn zero_fast_zeroes_a_loop_device_and_reads_work_on_it() {
        let dev = Loop::new(4 << 20, 0xee);
        let mut t = FileTarget::open(&dev.device).unwrap();
        assert_eq!(t.size(), 4 << 20);
        assert!(t.zero_fast(1 << 20, 2 << 20).unwrap(), "loop devices support write-zeroes");
        let mut buf = vec![0u8; 4 << 20];
        t.read_at(0, &mut buf).unwrap();
        assert!(buf[..1 << 20].iter().all(|b| *b == 0xee));
        assert!(buf[1 << 20..3 << 20].iter().all(|b| *b == 0));
        assert!(buf[3 << 20..].iter().all(|b| *b == 0xee));
        // Block devices refuse ranges that are not sector-aligned: the caller writes zeros instead.
        assert!(!t.zero_fast(1, 4096).unwrap());
    }

    #[test]
    fn discard_on_devices_slices_and_files() {
        let dev = Loop::new(4 << 20, 0xee);
        let mut t = FileTarget::open(&dev.device).unwrap();
        assert!(t.discard(1 << 20, 1 << 20).unwrap(), "loop devices discard (holes in the backing file)");
        let mut slice = Slice::new(&mut t, 3 << 20, 1 << 20);
        assert!(slice.discard(0, 512 << 10).unwrap());
        assert_eq!(slice.discard(0, (1 << 20) + 512).unwrap_err().kind(), io::ErrorKind::StorageFull);
        assert!(!t.discard(1, 4096).unwrap(), "unaligned ranges are refused, not an error");
        let mut data = vec![0u8; 4 << 20];
        t.read_at(0, &mut data).unwrap();
        let zeroed = |range: std::ops::Range<usize>| data[range].iter().all(|b| *b == 0);
        assert!(zeroed(1 << 20..2 << 20) && zeroed(3 << 20..(3 << 20) + (512 << 10)));
        assert!(data[..1 << 20].iter().chain(&data[2 << 20..3 << 20]).all(|b| *b == 0xee));

        let (f, mut file) = filled_file(8192, 0xee);
        assert!(!file.discard(0, 4096).unwrap(), "regular files have no discard (zero_fast punches holes)");
        let mut faulty = FaultyTarget::new(FileTarget::open(&dev.device).unwrap(), Fault::NoFastZeroing);
        assert!(!faulty.discard(0, 4096).unwrap());
        assert!(std::fs::read(f.path()).unwrap().iter().all(|b| *b == 0xee));
    }

    #[test]
    fn drop_cache_makes_reads_come_from_the_device() {
        let dev = Loop::new(1 << 20, 0xee);
        let mut t = FileTarget::open(&dev.device).unwrap();
        let mut buf = [0u8; 4096];
        t.read_at(0, &mut buf).unwrap();
        // Change what the device holds behind the block device's page cache, as a hardware erase does.
        let backing = OpenOptions::new().write(true).open(dev._backing.path()).unwrap();
        backing.write_all_at(&[0u8; 4096], 0).unwrap();
        backing.sync_all().unwrap();
        t.read_at(0, &mut buf).unwrap();
        assert_eq!(buf[0], 0xee, "still the cached data");
        t.drop_cache().unwrap();
        t.read_at(0, &mut buf).unwrap();
        assert!(buf.iter().all(|b| *b == 0), "read from the device after dropping the cache");
        let mut faulty = FaultyTarget::new(t, Fault::SyncEio);
        assert_eq!(faulty.drop_cache().unwrap_err().raw_os_error(), Some(Errno::EIO as i32));
    }

    /// `len` bytes starting `misalign` bytes past a [`DIRECT_IO_ALIGNMENT`] boundary, filled with a pattern.
    fn buffer(storage: &mut Vec<u8>, misalign: usize, len: usize) -> &mut [u8] {
        *storage = vec![0u8; len + 2 * DIRECT_IO_ALIGNMENT];
        let start = storage.as_ptr().align_offset(DIRECT_IO_ALIGNMENT) + misalign;
        let buf = &mut storage[start..start + len];
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (i % 253) as u8 + 1;
        }
        buf
    }

    #[test]
    fn aligned_prefixes_are_written_directly() {
        let (_f, t) = sized_file(1 << 20);
        assert!(t.direct.is_some(), "ext4 files support O_DIRECT");
        let mut storage = Vec::new();
        let cases = [
            ("aligned", 8192, 0, 12288, 12288),
            ("aligned with a tail", 8192, 0, 12388, 12288),
            ("shorter than a block", 8192, 0, 4000, 0),
            ("unaligned offset", 8192 + 512, 0, 12288, 0),
            ("unaligned buffer", 8192, 8, 12288, 0),
        ];
        for (name, offset, misalign, len, direct) in cases {
            assert_eq!(t.direct_len(offset, buffer(&mut storage, misalign, len)), direct, "{name}");
        }
    }

    #[test]
    fn split_direct_and_buffered_writes_read_back() {
        let dev = Loop::new(1 << 20, 0xee);
        let (file, file_target) = filled_file(1 << 20, 0xee);
        for (path, mut t) in
            [(dev.device.clone(), FileTarget::open(&dev.device).unwrap()), (file.path().into(), file_target)]
        {
            let mut storage = Vec::new();
            for (offset, misalign, len) in [(4096, 0, 3 * 4096 + 100), (65536 + 512, 0, 5000), (131072, 3, 8192)] {
                let data = buffer(&mut storage, misalign, len).to_vec();
                t.write_at(offset, buffer(&mut storage, misalign, len)).unwrap();
                let mut back = vec![0u8; len];
                t.read_at(offset, &mut back).unwrap();
                assert_eq!(back, data, "{} at {offset}", path.display());
            }
            t.sync().unwrap();
            let on_disk = std::fs::read(&path).unwrap();
            assert_eq!(on_disk[4096 + 3 * 4096 + 100], 0xee, "{}: nothing past the write", path.display());
            assert_eq!(on_disk[4095], 0xee, "{}: nothing before the write", path.display());
        }
    }

    #[test]
    fn slice_maps_offsets_and_checks_its_bounds() {
        let (f, mut t) = sized_file(1 << 20);
        let mut slice = Slice::new(&mut t, 4096, 8192);
        assert_eq!(slice.size(), 8192);
        assert!(slice.describe().ends_with(" bytes 4096..12288"), "{}", slice.describe());
        slice.write_at(0, b"start").unwrap();
        slice.write_at(8192 - 3, b"end").unwrap();
        let mut buf = [0u8; 3];
        slice.read_at(8189, &mut buf).unwrap();
        assert_eq!(&buf, b"end");
        let cases: [(&str, io::Result<()>); 4] = [
            ("write past the end", slice.write_at(8190, b"xyz")),
            ("read past the end", slice.read_at(8190, &mut buf)),
            ("zeroing past the end", slice.zero_fast(1, 8192).map(drop)),
            ("offset overflow", slice.write_at(u64::MAX, b"x")),
        ];
        for (name, result) in cases {
            let err = result.expect_err(name);
            assert_eq!(err.kind(), io::ErrorKind::StorageFull, "{name}");
            assert!(err.to_string().contains("bytes 4096..12288"), "{name}: {err}");
        }
        let data = std::fs::read(f.path()).unwrap();
        assert_eq!(&data[4096..4101], b"start");
        assert_eq!(&data[12285..12288], b"end");
        assert!(data[..4096].iter().chain(&data[12288..]).all(|b| *b == 0));
    }

    #[test]
    fn slice_zero_fast_stays_inside_its_range() {
        let (f, mut t) = filled_file(64 << 10, 0xee);
        let mut slice = Slice::new(&mut t, 16 << 10, 16 << 10);
        assert!(slice.zero_fast(0, 16 << 10).unwrap());
        let data = std::fs::read(f.path()).unwrap();
        assert!(data[..16 << 10].iter().all(|b| *b == 0xee));
        assert!(data[16 << 10..32 << 10].iter().all(|b| *b == 0));
        assert!(data[32 << 10..].iter().all(|b| *b == 0xee));
    }

    #[test]
    fn eio_fault_fires_after_the_limit() {
        let (_f, t) = sized_file(8192);
        let mut t = FaultyTarget::new(t, Fault::EioAfter(4096));
        t.write_at(0, &[1; 4096]).unwrap();
        let err = t.write_at(4096, &[1; 1]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(Errno::EIO as i32));
    }

    #[test]
    fn short_write_keeps_only_the_bytes_before_the_limit() {
        let (f, t) = sized_file(8192);
        let mut t = FaultyTarget::new(t, Fault::ShortWriteAfter(100));
        assert!(t.write_at(0, &[7; 200]).is_err());
        let data = std::fs::read(f.path()).unwrap();
        assert!(data[..100].iter().all(|b| *b == 7));
        assert!(data[100..200].iter().all(|b| *b == 0));
    }

    #[test]
    fn faulty_target_forwards_reads_and_zeroing_unless_told_not_to() {
        let (f, t) = filled_file(8192, 0xee);
        let mut t = FaultyTarget::new(t, Fault::SyncEio);
        let mut buf = [0u8; 2];
        t.read_at(0, &mut buf).unwrap();
        assert_eq!(buf, [0xee, 0xee]);
        assert!(t.zero_fast(0, 4096).unwrap());
        assert!(std::fs::read(f.path()).unwrap()[..4096].iter().all(|b| *b == 0));
        let mut t = FaultyTarget::new(t.into_inner(), Fault::NoFastZeroing);
        assert!(!t.zero_fast(4096, 4096).unwrap());
        assert!(std::fs::read(f.path()).unwrap()[4096..].iter().all(|b| *b == 0xee));
    }
}
