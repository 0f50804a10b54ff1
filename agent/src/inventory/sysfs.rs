//! A sysfs tree under a root path. Links are resolved inside the tree, so a fixture captured with
//! relative links (scripts/capture-sysfs-fixture.sh) reads like the real `/sys`.

use std::fs;
use std::path::{Path, PathBuf};

pub(crate) struct Sysfs {
    root: PathBuf,
    devices: PathBuf,
}

impl Sysfs {
    pub(crate) fn new(root: &Path) -> Self {
        let root = fs::canonicalize(root).unwrap_or_else(|_| root.to_owned());
        let devices = root.join("sys/devices");
        Sysfs { root, devices }
    }

    /// `rel` (e.g. `sys/block`) under the root.
    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Where a link such as `sys/block/sda` or `.../device` leads: a canonical device directory.
    pub(crate) fn resolve(&self, path: &Path) -> Option<PathBuf> {
        let resolved = fs::canonicalize(path).ok()?;
        resolved.starts_with(&self.root).then_some(resolved)
    }

    /// The path as the kernel would name it (`/sys/devices/...`), for the substring tests that udev
    /// and lsblk make on it; a root such as `/data/fixture` must not match `/ata`.
    pub(crate) fn syspath(&self, dir: &Path) -> String {
        let rel = dir.strip_prefix(&self.root).unwrap_or(dir);
        format!("/{}", rel.display())
    }

    /// The subsystem (`pci`, `scsi`, `virtio`, ...) of a device directory.
    pub(crate) fn subsystem(&self, dir: &Path) -> Option<String> {
        link_name(&dir.join("subsystem"))
    }

    /// The parent device, `None` once above `sys/devices`.
    pub(crate) fn parent(&self, dir: &Path) -> Option<PathBuf> {
        let parent = dir.parent()?;
        (parent.starts_with(&self.devices) && parent != self.devices).then(|| parent.to_owned())
    }

    /// `dir` and its parents, innermost first.
    pub(crate) fn ancestors<'a>(&'a self, dir: &Path) -> impl Iterator<Item = PathBuf> + 'a {
        std::iter::successors(Some(dir.to_owned()), move |d| self.parent(d))
    }
}

/// The file's content without surrounding whitespace; `None` when unreadable or blank.
pub(crate) fn read_trimmed(path: &Path) -> Option<String> {
    let text = fs::read(path).ok()?;
    let text = String::from_utf8_lossy(&text);
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

pub(crate) fn read_u64(path: &Path) -> Option<u64> {
    read_trimmed(path)?.parse().ok()
}

/// The last component of a symlink's target (`driver` -> `virtio_net`).
pub(crate) fn link_name(path: &Path) -> Option<String> {
    fs::read_link(path).ok()?.file_name().map(|n| n.to_string_lossy().into_owned())
}

pub(crate) fn sysname(dir: &Path) -> String {
    dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Entry names of a directory, in natural order (`nvme2n1` before `nvme10n1`).
pub(crate) fn sorted_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort_by_key(|name| natural_key(name));
    names
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Chunk {
    Number(u64),
    Text(String),
}

fn natural_key(name: &str) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    let mut rest = name;
    while let Some(first) = rest.chars().next() {
        let digits = first.is_ascii_digit();
        let end = rest.find(|c: char| c.is_ascii_digit() != digits).unwrap_or(rest.len());
        let (chunk, tail) = rest.split_at(end);
        chunks.push(match chunk.parse() {
            Ok(n) if digits => Chunk::Number(n),
            _ => Chunk::Text(chunk.to_owned()),
        });
        rest = tail;
    }
    chunks
}

/// `H:C:T:L` of a SCSI device name.
pub(crate) fn hctl(name: &str) -> Option<[u32; 4]> {
    let mut parts = name.split(':').map(|p| p.parse::<u32>().ok());
    let hctl = [parts.next()??, parts.next()??, parts.next()??, parts.next()??];
    parts.next().is_none().then_some(hctl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order_compares_numbers_by_value() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["nvme10n1", "sdb", "nvme2n1", "sda", "md127", "md0"] {
            fs::create_dir(dir.path().join(name)).unwrap();
        }
        assert_eq!(sorted_entries(dir.path()), ["md0", "md127", "nvme2n1", "nvme10n1", "sda", "sdb"]);
    }

    #[test]
    fn hctl_parses_only_four_numbers() {
        let cases = [
            ("scsi device", "6:0:1:2", Some([6, 0, 1, 2])),
            ("scsi target", "target6:0:0", None),
            ("five fields", "1:2:3:4:5", None),
            ("three fields", "1:2:3", None),
            ("not numbers", "a:b:c:d", None),
        ];
        for (case, name, expected) in cases {
            assert_eq!(hctl(name), expected, "{case}");
        }
    }

    #[test]
    fn syspath_is_relative_to_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        fs::create_dir_all(data.join("sys/devices/pci0000:00")).unwrap();
        let sys = Sysfs::new(&data);
        let dev = sys.resolve(&data.join("sys/devices/pci0000:00")).unwrap();
        assert_eq!(sys.syspath(&dev), "/sys/devices/pci0000:00");
        assert_eq!(sys.parent(&dev), None, "nothing above sys/devices");
    }
}
