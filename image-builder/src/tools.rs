//! Host programs the agent runs (mke2fs for ext2/3/4 ephemeral partitions, hdparm for ATA secure erase),
//! with the other names the host gives them: mke2fs picks the file system type from the name it is run as
//! (`mkfs.ext4`).

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::BuildError;

/// Where tools are installed in the image; the agent's default PATH starts with it.
pub const TOOLS_DIR: &str = "usr/sbin";

/// Each default tool with the places a host may keep it, in order of preference: mke2fs for ext
/// ephemeral partitions, hdparm for the ATA security erase of `erase_devices` (libc only, 140 KiB).
const DEFAULT_TOOLS: &[&[&str]] = &[&["/usr/sbin/mke2fs", "/sbin/mke2fs"], &["/usr/sbin/hdparm", "/sbin/hdparm"]];

/// The default tools the build host has; a missing one is logged (the agent then refuses the ext
/// ephemeral formats with an error naming `mkfs.<format>`, and erases ATA disks without secure erase).
pub fn default_tools() -> Vec<PathBuf> {
    DEFAULT_TOOLS
        .iter()
        .filter_map(|candidates| {
            let found = candidates.iter().map(PathBuf::from).find(|path| path.is_file());
            if found.is_none() {
                tracing::warn!(?candidates, "default tool not on this host; the ramdisk will not have it");
            }
            found
        })
        .collect()
}

/// A tool as found on the host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tool {
    /// The real file (symlinks resolved); its name is the tool's name in the image.
    pub source: PathBuf,
    pub name: String,
    /// Other names of the same file in its directory (symlinks to it or hard links), sorted.
    pub aliases: Vec<String>,
}

impl Tool {
    /// Resolves `path` (possibly a symlink such as /sbin/mkfs.ext4) and collects its aliases.
    pub fn resolve(path: &Path) -> Result<Tool, BuildError> {
        let missing = |source| BuildError::MissingTool { path: path.to_path_buf(), source };
        let source = fs::canonicalize(path).map_err(missing)?;
        let metadata = fs::metadata(&source).map_err(missing)?;
        if !metadata.is_file() {
            return Err(missing(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file")));
        }
        let name = file_name(&source).expect("a canonical file path has a file name");
        let dir = source.parent().expect("a canonical file path has a parent");
        let mut aliases = BTreeSet::new();
        for entry in fs::read_dir(dir).map_err(BuildError::io("cannot list", dir))? {
            let entry = entry.map_err(BuildError::io("cannot list", dir))?;
            let same_file = fs::metadata(entry.path())
                .is_ok_and(|other| (other.dev(), other.ino()) == (metadata.dev(), metadata.ino()));
            match file_name(&entry.path()) {
                Some(alias) if same_file && alias != name => {
                    aliases.insert(alias);
                }
                _ => {}
            }
        }
        Ok(Tool { source, name, aliases: aliases.into_iter().collect() })
    }

    /// The tool's path in the image (no leading `/`).
    pub fn image_path(&self) -> String {
        format!("{TOOLS_DIR}/{}", self.name)
    }

    pub fn alias_paths(&self) -> impl Iterator<Item = String> + '_ {
        self.aliases.iter().map(|alias| format!("{TOOLS_DIR}/{alias}"))
    }
}

fn file_name(path: &Path) -> Option<String> {
    path.file_name().map(|name| name.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_symlinks_and_finds_symlinked_and_hard_linked_aliases() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("sbin");
        fs::create_dir(&bin).unwrap();
        fs::write(bin.join("mke2fs"), b"\x7fELF").unwrap();
        for alias in ["mkfs.ext2", "mkfs.ext4"] {
            std::os::unix::fs::symlink("mke2fs", bin.join(alias)).unwrap();
        }
        fs::hard_link(bin.join("mke2fs"), bin.join("mkfs.ext3")).unwrap();
        fs::write(bin.join("mkfs.vfat"), b"\x7fELF").unwrap();
        std::os::unix::fs::symlink("mkfs.vfat", bin.join("mkfs.fat")).unwrap();
        std::os::unix::fs::symlink("missing", bin.join("dangling")).unwrap();
        let elsewhere = dir.path().join("mkfs");
        std::os::unix::fs::symlink(bin.join("mkfs.ext4"), &elsewhere).unwrap();

        let canonical_bin = fs::canonicalize(&bin).unwrap();
        let expected = Tool {
            source: canonical_bin.join("mke2fs"),
            name: "mke2fs".to_string(),
            aliases: vec!["mkfs.ext2".to_string(), "mkfs.ext3".to_string(), "mkfs.ext4".to_string()],
        };
        for given in [bin.join("mke2fs"), bin.join("mkfs.ext4"), elsewhere] {
            assert_eq!(Tool::resolve(&given).unwrap(), expected, "{}", given.display());
        }
        assert_eq!(expected.image_path(), "usr/sbin/mke2fs");
        assert_eq!(
            expected.alias_paths().collect::<Vec<_>>(),
            ["usr/sbin/mkfs.ext2", "usr/sbin/mkfs.ext3", "usr/sbin/mkfs.ext4"]
        );
        assert_eq!(Tool::resolve(&bin.join("mkfs.vfat")).unwrap().aliases, ["mkfs.fat"]);
    }

    #[test]
    fn missing_tool_or_directory_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("missing", dir.path().join("dangling")).unwrap();
        for path in [dir.path().join("no-such-tool"), dir.path().join("dangling"), dir.path().to_path_buf()] {
            let err = Tool::resolve(&path).unwrap_err();
            assert!(matches!(&err, BuildError::MissingTool { path: named, .. } if *named == path), "{err}");
            assert!(err.to_string().contains(&path.display().to_string()), "{err}");
        }
    }

    #[test]
    fn the_hosts_mke2fs_and_hdparm_are_the_defaults_and_mke2fs_carries_the_mkfs_ext_names() {
        // scripts/setup.sh installs both on the build host.
        let defaults = default_tools();
        let tools: Vec<Tool> = defaults.iter().map(|path| Tool::resolve(path).unwrap()).collect();
        let names: Vec<&str> = tools.iter().map(|tool| tool.name.as_str()).collect();
        assert_eq!(names, ["mke2fs", "hdparm"], "{defaults:?}");
        for name in ["mkfs.ext2", "mkfs.ext3", "mkfs.ext4"] {
            assert!(tools[0].aliases.iter().any(|alias| alias == name), "{name} missing: {:?}", tools[0]);
        }
    }
}
