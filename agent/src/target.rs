//! Where images are written: a small trait with file/block-device and fault-injecting
//! implementations, so the write path is tested against real files and injected failures.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A fixed-size byte range the agent writes an image into.
pub trait Target: Send {
    /// Capacity in bytes; writes beyond it fail.
    fn size(&self) -> u64;
    /// Writes all of `buf` at `offset`.
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Makes everything written so far durable.
    fn sync(&mut self) -> io::Result<()>;
    /// Human name for logs and errors (e.g. `/dev/vda`).
    fn describe(&self) -> String;
}

/// A block device or a regular file of fixed size (its current length).
pub struct FileTarget {
    file: File,
    size: u64,
    path: PathBuf,
}

impl FileTarget {
    pub fn open(path: &Path) -> io::Result<Self> {
        let mut file = OpenOptions::new().write(true).open(path)?;
        // Seeking to the end gives the size of block devices as well as of files.
        let size = file.seek(SeekFrom::End(0))?;
        Ok(Self { file, size, path: path.to_owned() })
    }
}

impl Target for FileTarget {
    fn size(&self) -> u64 {
        self.size
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64).filter(|end| *end <= self.size);
        if end.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!("write of {} bytes at offset {offset} goes past the end ({} bytes)", buf.len(), self.size),
            ));
        }
        self.file.write_all_at(buf, offset)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_all()
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
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
            Fault::EioAfter(limit) if after > limit => return Err(io::Error::from_raw_os_error(libc_eio())),
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

    fn sync(&mut self) -> io::Result<()> {
        if self.fault == Fault::SyncEio {
            return Err(io::Error::from_raw_os_error(libc_eio()));
        }
        self.inner.sync()
    }

    fn describe(&self) -> String {
        format!("{} (fault-injecting: {:?})", self.inner.describe(), self.fault)
    }
}

fn libc_eio() -> i32 {
    nix::errno::Errno::EIO as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sized_file(len: u64) -> (tempfile::NamedTempFile, FileTarget) {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(len).unwrap();
        let target = FileTarget::open(file.path()).unwrap();
        (file, target)
    }

    #[test]
    fn file_target_refuses_writes_past_its_end() {
        let (_f, mut t) = sized_file(4096);
        assert_eq!(t.size(), 4096);
        t.write_at(4000, &[1; 96]).unwrap();
        let err = t.write_at(4000, &[1; 97]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
    }

    #[test]
    fn eio_fault_fires_after_the_limit() {
        let (_f, t) = sized_file(8192);
        let mut t = FaultyTarget::new(t, Fault::EioAfter(4096));
        t.write_at(0, &[1; 4096]).unwrap();
        let err = t.write_at(4096, &[1; 1]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(nix::errno::Errno::EIO as i32));
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
}
