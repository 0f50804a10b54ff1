//! A reproducible cpio "newc" archive writer, the format the Linux kernel unpacks as initramfs.
//!
//! Reproducible means: entries are sorted by path whatever the insertion order, every entry
//! carries the same mtime, uid/gid 0, and inode numbers are assigned sequentially at write
//! time, so the same set of entries always gives the same bytes. Parent directories are
//! added automatically (mode 0755) so the kernel never has to guess them.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use flate2::{Compression, GzBuilder};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFLNK: u32 = 0o120_000;
/// Symlink permissions are not used by Linux; this is what `ln -s` gives.
const SYMLINK_PERMISSIONS: u32 = 0o777;
const PERMISSION_BITS: u32 = 0o7777;
const IMPLICIT_DIR_MODE: u32 = 0o755;
const TRAILER: &str = "TRAILER!!!";

#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("invalid archive path {path:?}: it must be non-empty and have no `.` or `..` parts")]
    InvalidPath { path: String },
    #[error("invalid target {target:?} for symlink {path}: it must be non-empty and have no NUL byte")]
    InvalidLinkTarget { path: String, target: String },
    #[error("archive path {path} is added twice")]
    Duplicate { path: String },
    #[error("cannot add {path}: its parent {parent} is not a directory in the archive")]
    ParentNotDirectory { path: String, parent: String },
    #[error("cannot read {path} to add it to the archive")]
    ReadSource {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Body {
    Directory,
    File(Vec<u8>),
    CharDevice { major: u32, minor: u32 },
    Symlink { target: String },
}

#[derive(Debug, Clone)]
struct Entry {
    permissions: u32,
    body: Body,
}

impl Entry {
    fn mode(&self) -> u32 {
        let file_type = match self.body {
            Body::Directory => S_IFDIR,
            Body::File(_) => S_IFREG,
            Body::CharDevice { .. } => S_IFCHR,
            Body::Symlink { .. } => S_IFLNK,
        };
        file_type | self.permissions
    }

    fn data(&self) -> &[u8] {
        match &self.body {
            Body::File(bytes) => bytes,
            // A symlink's data is its target path.
            Body::Symlink { target } => target.as_bytes(),
            Body::Directory | Body::CharDevice { .. } => &[],
        }
    }
}

/// An in-memory cpio newc archive. Paths are stored without a leading `/`.
#[derive(Debug, Clone, Default)]
pub struct Archive {
    mtime: u64,
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    /// An empty archive whose entries all get `mtime` (use SOURCE_DATE_EPOCH, or 0).
    pub fn new(mtime: u64) -> Self {
        Self { mtime, entries: BTreeMap::new() }
    }

    /// Adds a directory. Adding an existing directory again just sets its mode.
    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<(), CpioError> {
        let path = normalize(path)?;
        self.add_parents(&path)?;
        match self.entries.get_mut(&path) {
            Some(existing) if existing.body == Body::Directory => existing.permissions = mode & PERMISSION_BITS,
            Some(_) => return Err(CpioError::Duplicate { path }),
            None => {
                self.entries.insert(path, Entry { permissions: mode & PERMISSION_BITS, body: Body::Directory });
            }
        }
        Ok(())
    }

    /// Adds a regular file with the given content.
    pub fn add_file(&mut self, path: &str, mode: u32, content: Vec<u8>) -> Result<(), CpioError> {
        self.insert(path, Entry { permissions: mode & PERMISSION_BITS, body: Body::File(content) })
    }

    /// Adds a regular file whose content is read now from `source` (symlinks followed).
    pub fn add_file_from_path(&mut self, path: &str, mode: u32, source: &Path) -> Result<(), CpioError> {
        let content =
            std::fs::read(source).map_err(|err| CpioError::ReadSource { path: source.to_path_buf(), source: err })?;
        self.add_file(path, mode, content)
    }

    /// Adds a character device node.
    pub fn add_char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> Result<(), CpioError> {
        self.insert(path, Entry { permissions: mode & PERMISSION_BITS, body: Body::CharDevice { major, minor } })
    }

    /// Adds a symbolic link to `target` (kept as given; relative targets resolve from the link's directory).
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), CpioError> {
        if target.is_empty() || target.contains('\0') {
            return Err(CpioError::InvalidLinkTarget { path: path.to_string(), target: target.to_string() });
        }
        self.insert(
            path,
            Entry { permissions: SYMLINK_PERMISSIONS, body: Body::Symlink { target: target.to_string() } },
        )
    }

    /// Number of entries, directories included, trailer excluded.
    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// Writes the uncompressed archive, returning the number of bytes written.
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<u64> {
        let mut written = 0;
        for (index, (path, entry)) in self.entries.iter().enumerate() {
            let inode = u32::try_from(index + 1).map_err(io::Error::other)?;
            written += self.write_entry(out, inode, path, entry)?;
        }
        let trailer = Header { inode: 0, mode: 0, nlink: 1, mtime: 0, file_size: 0, rdev: (0, 0) };
        written += write_record(out, &trailer, TRAILER, &[])?;
        Ok(written)
    }

    /// Writes the archive gzip-compressed, reproducibly (header mtime 0, no file name, best
    /// compression). Returns the uncompressed size.
    pub fn write_gzip(&self, out: impl Write) -> io::Result<u64> {
        let mut encoder = GzBuilder::new().mtime(0).write(out, Compression::best());
        let size = self.write_to(&mut encoder)?;
        encoder.finish()?.flush()?;
        Ok(size)
    }

    fn write_entry(&self, out: &mut impl Write, inode: u32, path: &str, entry: &Entry) -> io::Result<u64> {
        let data = entry.data();
        let header = Header {
            inode,
            mode: entry.mode(),
            nlink: if entry.body == Body::Directory { 2 } else { 1 },
            mtime: u32::try_from(self.mtime).map_err(io::Error::other)?,
            file_size: u32::try_from(data.len()).map_err(io::Error::other)?,
            rdev: match entry.body {
                Body::CharDevice { major, minor } => (major, minor),
                _ => (0, 0),
            },
        };
        write_record(out, &header, path, data)
    }

    fn insert(&mut self, path: &str, entry: Entry) -> Result<(), CpioError> {
        let path = normalize(path)?;
        if self.entries.contains_key(&path) {
            return Err(CpioError::Duplicate { path });
        }
        self.add_parents(&path)?;
        self.entries.insert(path, entry);
        Ok(())
    }

    fn add_parents(&mut self, path: &str) -> Result<(), CpioError> {
        let mut end = 0;
        while let Some(offset) = path[end..].find('/') {
            end += offset;
            let parent = &path[..end];
            match self.entries.get(parent) {
                Some(existing) if existing.body != Body::Directory => {
                    return Err(CpioError::ParentNotDirectory { path: path.to_string(), parent: parent.to_string() });
                }
                Some(_) => {}
                None => {
                    self.entries
                        .insert(parent.to_string(), Entry { permissions: IMPLICIT_DIR_MODE, body: Body::Directory });
                }
            }
            end += 1;
        }
        Ok(())
    }
}

/// Strips a leading `/` and rejects empty, `.` and `..` components.
fn normalize(path: &str) -> Result<String, CpioError> {
    let trimmed = path.trim_start_matches('/').trim_end_matches('/');
    let valid = !trimmed.is_empty()
        && trimmed.split('/').all(|part| !part.is_empty() && part != "." && part != "..")
        && !trimmed.contains('\0');
    if valid {
        Ok(trimmed.to_string())
    } else {
        Err(CpioError::InvalidPath { path: path.to_string() })
    }
}

struct Header {
    inode: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    file_size: u32,
    rdev: (u32, u32),
}

/// Writes one newc record: header, NUL-terminated name padded to 4 bytes, data padded to 4 bytes.
fn write_record(out: &mut impl Write, header: &Header, name: &str, data: &[u8]) -> io::Result<u64> {
    let name_size = name.len() + 1;
    let (rdev_major, rdev_minor) = header.rdev;
    let fields = [
        header.inode,
        header.mode,
        0, // uid
        0, // gid
        header.nlink,
        header.mtime,
        header.file_size,
        0, // devmajor
        0, // devminor
        rdev_major,
        rdev_minor,
        u32::try_from(name_size).map_err(io::Error::other)?,
        0, // check
    ];
    let mut record = String::with_capacity(110);
    record.push_str("070701");
    for field in fields {
        record.push_str(&format!("{field:08X}"));
    }
    out.write_all(record.as_bytes())?;
    out.write_all(name.as_bytes())?;
    let name_nuls = 1 + padding(record.len() + name_size);
    out.write_all(&[0u8; 4][..name_nuls])?;
    let header_len = record.len() + name.len() + name_nuls;
    out.write_all(data)?;
    let data_padding = padding(data.len());
    out.write_all(&[0u8; 3][..data_padding])?;
    Ok((header_len + data.len() + data_padding) as u64)
}

/// Bytes needed after `len` bytes to reach the next multiple of 4.
fn padding(len: usize) -> usize {
    (4 - len % 4) % 4
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use std::process::Command;

    impl Archive {
        /// The uncompressed archive as bytes.
        fn to_bytes(&self) -> Vec<u8> {
            let mut bytes = Vec::new();
            self.write_to(&mut bytes).unwrap();
            bytes
        }
    }

    /// One way to add an entry, so tests can replay the same additions in any order.
    type Step = fn(&mut Archive, &Path) -> Result<(), CpioError>;

    fn sample(reverse: bool) -> Archive {
        let source = tempfile::NamedTempFile::new().unwrap();
        fs::write(source.path(), b"#!/bin/sh\necho tool\n").unwrap();
        let mut steps: Vec<Step> = vec![
            |a, _| a.add_dir("etc", 0o700),
            |a, _| a.add_file("/etc/ferric/build.json", 0o644, b"{\"a\":1}".to_vec()),
            |a, source| a.add_file_from_path("usr/bin/tool", 0o755, source),
            |a, _| a.add_char_device("dev/console", 0o600, 5, 1),
            |a, _| a.add_char_device("dev/null", 0o666, 1, 3),
            |a, _| a.add_dir("tmp", 0o1777),
            |a, _| a.add_file("a-b", 0o600, b"odd length".to_vec()),
            |a, _| a.add_symlink("usr/sbin/tool-alias", "../bin/tool"),
        ];
        if reverse {
            steps.reverse();
        }
        let mut archive = Archive::new(1_700_000_000);
        for step in steps {
            step(&mut archive, source.path()).unwrap();
        }
        archive
    }

    fn cpio(args: &[&str], dir: &Path) -> String {
        ferric_runner::run("read test archive", Command::new("cpio").args(args).current_dir(dir)).unwrap().stdout
    }

    fn dev_numbers(rdev: u64) -> (u64, u64) {
        let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
        let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
        (major, minor)
    }

    #[test]
    fn gnu_cpio_lists_sorted_entries_with_implicit_parents() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.cpio"), sample(false).to_bytes()).unwrap();
        let names: Vec<String> =
            cpio(&["-it", "--quiet", "-F", "a.cpio"], dir.path()).lines().map(str::to_string).collect();
        let expected = [
            "a-b",
            "dev",
            "dev/console",
            "dev/null",
            "etc",
            "etc/ferric",
            "etc/ferric/build.json",
            "tmp",
            "usr",
            "usr/bin",
            "usr/bin/tool",
            "usr/sbin",
            "usr/sbin/tool-alias",
        ];
        assert_eq!(names, expected);

        let verbose = cpio(&["-itv", "--quiet", "-F", "a.cpio"], dir.path());
        let line_for = |name: &str| verbose.lines().find(|l| l.ends_with(name)).unwrap().to_string();
        assert!(line_for("dev/console").starts_with("crw-------"), "{verbose}");
        assert!(line_for(" etc").starts_with("drwx------"), "{verbose}");
        assert!(line_for("tmp").starts_with("drwxrwxrwt"), "{verbose}");
        assert!(line_for("usr/bin/tool").contains(" root "), "{verbose}");
        assert!(line_for("usr/sbin/tool-alias -> ../bin/tool").starts_with("lrwxrwxrwx"), "{verbose}");
    }

    #[test]
    fn gnu_cpio_extracts_modes_contents_and_devices() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.cpio"), sample(false).to_bytes()).unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        cpio(&["-idv", "--quiet", "-F", "../a.cpio"], &root);

        let mode = |p: &str| fs::symlink_metadata(root.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(fs::read(root.join("etc/ferric/build.json")).unwrap(), b"{\"a\":1}");
        assert_eq!(fs::read_to_string(root.join("usr/bin/tool")).unwrap(), "#!/bin/sh\necho tool\n");
        assert_eq!(fs::read(root.join("a-b")).unwrap(), b"odd length");
        assert_eq!(mode("usr/bin/tool"), 0o755);
        assert_eq!(mode("etc/ferric/build.json"), 0o644);
        assert_eq!(mode("a-b"), 0o600);
        assert_eq!(mode("etc"), 0o700);
        assert_eq!(mode("etc/ferric"), 0o755);

        for (path, perm, numbers) in [("dev/console", 0o600, (5, 1)), ("dev/null", 0o666, (1, 3))] {
            let meta = fs::symlink_metadata(root.join(path)).unwrap();
            assert!(meta.file_type().is_char_device(), "{path}");
            assert_eq!(meta.permissions().mode() & 0o7777, perm, "{path}");
            assert_eq!(dev_numbers(meta.rdev()), numbers, "{path}");
        }
        let alias = root.join("usr/sbin/tool-alias");
        assert!(fs::symlink_metadata(&alias).unwrap().file_type().is_symlink());
        assert_eq!(fs::read_link(&alias).unwrap(), Path::new("../bin/tool"));
        assert_eq!(fs::read_to_string(&alias).unwrap(), "#!/bin/sh\necho tool\n", "the link resolves in the tree");
        let file = fs::metadata(root.join("usr/bin/tool")).unwrap();
        assert_eq!((file.uid(), file.gid()), (0, 0));
    }

    #[test]
    fn headers_carry_fixed_mtime_sequential_inodes_and_trailer() {
        let bytes = sample(false).to_bytes();
        let field = |record: &[u8], index: usize| {
            u32::from_str_radix(std::str::from_utf8(&record[6 + index * 8..14 + index * 8]).unwrap(), 16).unwrap()
        };
        assert_eq!(&bytes[..6], b"070701");
        assert_eq!(field(&bytes, 0), 1, "first inode");
        assert_eq!(field(&bytes, 5), 1_700_000_000, "mtime");
        assert_eq!((field(&bytes, 2), field(&bytes, 3)), (0, 0), "uid/gid");
        assert_eq!(bytes.len() % 4, 0);
        let trailer_at = bytes.windows(TRAILER.len()).rposition(|w| w == TRAILER.as_bytes()).unwrap();
        assert_eq!(&bytes[trailer_at - 110..trailer_at - 104], b"070701");
    }

    #[test]
    fn output_is_identical_whatever_the_insertion_order() {
        let forward = sample(false);
        let backward = sample(true);
        assert_eq!(forward.to_bytes(), backward.to_bytes());
        let mut gz_forward = Vec::new();
        let mut gz_backward = Vec::new();
        forward.write_gzip(&mut gz_forward).unwrap();
        backward.write_gzip(&mut gz_backward).unwrap();
        assert_eq!(gz_forward, gz_backward);
        assert_ne!(forward.to_bytes(), Archive::new(1).to_bytes());
    }

    #[test]
    fn gzip_output_has_no_name_or_time_and_decompresses_to_the_archive() {
        let archive = sample(false);
        let mut compressed = Vec::new();
        let size = archive.write_gzip(&mut compressed).unwrap();
        assert_eq!(&compressed[..3], &[0x1f, 0x8b, 8]);
        assert_eq!(compressed[3], 0, "no FNAME or other optional header fields");
        assert_eq!(&compressed[4..8], &[0, 0, 0, 0], "header mtime");
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&compressed[..]), &mut plain).unwrap();
        assert_eq!(plain, archive.to_bytes());
        assert_eq!(size, plain.len() as u64);
    }

    #[test]
    fn rejects_duplicates_bad_paths_and_non_directory_parents() {
        let mut archive = Archive::new(0);
        archive.add_file("usr/bin/x", 0o755, vec![]).unwrap();
        assert!(matches!(archive.add_file("/usr/bin/x", 0o755, vec![]), Err(CpioError::Duplicate { .. })));
        assert!(matches!(archive.add_dir("usr/bin/x", 0o755), Err(CpioError::Duplicate { .. })));
        assert!(matches!(archive.add_file("usr/bin/x/y", 0o644, vec![]), Err(CpioError::ParentNotDirectory { .. })));
        assert!(matches!(archive.add_symlink("usr/bin/x", "y"), Err(CpioError::Duplicate { .. })));
        for target in ["", "a\0b"] {
            let err = archive.add_symlink("usr/bin/link", target).unwrap_err();
            assert!(matches!(err, CpioError::InvalidLinkTarget { .. }), "{target:?}: {err}");
        }
        for bad in ["", "/", "a/../b", "./a", "a//b"] {
            assert!(matches!(archive.add_dir(bad, 0o755), Err(CpioError::InvalidPath { .. })), "{bad}");
        }
        archive.add_dir("usr", 0o700).unwrap();
        assert_eq!(archive.entry_count(), 3, "usr, usr/bin (implicit) and usr/bin/x");
    }
}
