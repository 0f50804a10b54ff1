//! Gets a kernel (vmlinuz + module tree) from a Debian package, apt or the host, and runs depmod
//! on it without touching the source tree.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use ferric_runner::run;
use tempfile::TempDir;

use crate::error::BuildError;

/// Where the kernel and its modules come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSource {
    /// A `linux-image-*.deb` file.
    Deb(PathBuf),
    /// An apt package (metapackages like `linux-image-amd64` are resolved), downloaded into the cache.
    Package(String),
    /// The running kernel: `/boot/vmlinuz-$(uname -r)` and `/lib/modules/$(uname -r)`.
    Host,
}

/// A kernel ready for module selection: depmod has run on a staging copy.
#[derive(Debug)]
pub struct Kernel {
    pub release: String,
    pub vmlinuz: PathBuf,
    /// The staged `lib/modules/<release>`, with fresh modules.dep and modules.alias.
    pub modules_dir: PathBuf,
    /// File name of the .deb the kernel came from, if any.
    pub package_file: Option<String>,
    /// Keeps the unpacked package and the staging tree alive as long as the kernel is used.
    scratch: Vec<TempDir>,
}

/// The files depmod generates; they are never taken from the source tree.
const GENERATED_INDEX_PREFIX: &str = "modules.";
const SOURCE_INDICES: &[&str] = &["modules.builtin", "modules.builtin.modinfo", "modules.order"];

pub fn prepare(source: &KernelSource, cache_dir: &Path, progress: &mut dyn FnMut(&str)) -> Result<Kernel, BuildError> {
    match source {
        KernelSource::Deb(deb) => from_package(deb, progress),
        KernelSource::Package(name) => from_package(&download(name, cache_dir, progress)?, progress),
        KernelSource::Host => {
            let release = fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_err(BuildError::io("cannot read", "/proc/sys/kernel/osrelease"))?;
            let release = release.trim().to_string();
            check_host_kernel(Path::new("/"), &release)?;
            stage(Path::new("/"), release, progress)
        }
    }
}

fn from_package(deb: &Path, progress: &mut dyn FnMut(&str)) -> Result<Kernel, BuildError> {
    let mut unpacked = Vec::new();
    let root = unpack(deb, progress, &mut unpacked)?;
    let mut kernel = from_tree(&root, progress)?;
    kernel.package_file = file_name(deb);
    kernel.scratch.extend(unpacked);
    Ok(kernel)
}

/// The kernel of a directory laid out like an unpacked kernel package: `boot/vmlinuz-<release>`
/// and `lib/modules/<release>/` (the builder's tests make such trees).
pub(crate) fn from_tree(root: &Path, progress: &mut dyn FnMut(&str)) -> Result<Kernel, BuildError> {
    let release = find_release(root)?;
    stage(root, release, progress)
}

/// The kernel `release` under `root`, with depmod run on a staging copy of its modules.
fn stage(root: &Path, release: String, progress: &mut dyn FnMut(&str)) -> Result<Kernel, BuildError> {
    progress(&format!("kernel {release}: running depmod on a staging tree"));
    let mut scratch = Vec::new();
    let modules_dir = stage_and_depmod(&root.join("lib/modules").join(&release), &release, &mut scratch)?;
    Ok(Kernel {
        vmlinuz: root.join("boot").join(format!("vmlinuz-{release}")),
        release,
        modules_dir,
        package_file: None,
        scratch,
    })
}

fn file_name(path: &Path) -> Option<String> {
    path.file_name().map(|name| name.to_string_lossy().into_owned())
}

fn scratch_dir(purpose: &str, scratch: &mut Vec<TempDir>) -> Result<PathBuf, BuildError> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("ferric-{purpose}-"))
        .tempdir()
        .map_err(BuildError::io("cannot create a temporary directory in", std::env::temp_dir()))?;
    let path = dir.path().to_path_buf();
    scratch.push(dir);
    Ok(path)
}

fn unpack(deb: &Path, progress: &mut dyn FnMut(&str), scratch: &mut Vec<TempDir>) -> Result<PathBuf, BuildError> {
    progress(&format!("unpacking {}", deb.display()));
    let root = scratch_dir("kernel", scratch)?;
    run(format!("unpack kernel package {}", deb.display()), Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))?;
    Ok(root)
}

/// Errors naming the first of `/boot/vmlinuz-<release>` and `/lib/modules/<release>` that is missing.
fn check_host_kernel(root: &Path, release: &str) -> Result<(), BuildError> {
    for path in [root.join("boot").join(format!("vmlinuz-{release}")), root.join("lib/modules").join(release)] {
        if !path.exists() {
            return Err(BuildError::MissingHostKernel { path });
        }
    }
    Ok(())
}

/// The release of the one `boot/vmlinuz-<release>` that has a `lib/modules/<release>`.
fn find_release(root: &Path) -> Result<String, BuildError> {
    let boot = root.join("boot");
    let entries = fs::read_dir(&boot).map_err(|_| BuildError::NoKernelInTree { root: root.to_path_buf() })?;
    let mut releases = Vec::new();
    for entry in entries {
        let entry = entry.map_err(BuildError::io("cannot list", &boot))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(release) = name.strip_prefix("vmlinuz-") {
            if root.join("lib/modules").join(release).is_dir() {
                releases.push(release.to_string());
            }
        }
    }
    releases.sort();
    match releases.len() {
        0 => Err(BuildError::NoKernelInTree { root: root.to_path_buf() }),
        1 => Ok(releases.remove(0)),
        _ => Err(BuildError::SeveralKernelsInTree { root: root.to_path_buf(), releases }),
    }
}

/// Links the module tree into a scratch `lib/modules/<release>` and runs depmod there, so the
/// source (possibly the host's /lib/modules) is only read. Returns the staged modules dir.
fn stage_and_depmod(source: &Path, release: &str, scratch: &mut Vec<TempDir>) -> Result<PathBuf, BuildError> {
    let stage = scratch_dir("depmod", scratch)?;
    let modules_dir = stage.join("lib/modules").join(release);
    fs::create_dir_all(&modules_dir).map_err(BuildError::io("cannot create", &modules_dir))?;
    for entry in fs::read_dir(source).map_err(BuildError::io("cannot list", source))? {
        let entry = entry.map_err(BuildError::io("cannot list", source))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(GENERATED_INDEX_PREFIX) && !SOURCE_INDICES.contains(&name.as_str()) {
            continue;
        }
        let link = modules_dir.join(&name);
        std::os::unix::fs::symlink(entry.path(), &link).map_err(BuildError::io("cannot create symlink", &link))?;
    }
    run(
        format!("compute module dependencies for {release}"),
        Command::new("depmod").arg("-b").arg(&stage).arg(release),
    )?;
    Ok(modules_dir)
}

/// Finds the .deb for `name` in `cache_dir`, downloading it with apt if absent. A metapackage
/// (`linux-image-amd64`) is first resolved to the versioned image package it depends on.
fn download(name: &str, cache_dir: &Path, progress: &mut dyn FnMut(&str)) -> Result<PathBuf, BuildError> {
    let package = resolve_metapackage(name)?;
    if package != name {
        progress(&format!("{name} resolves to {package}"));
    }
    let show = run(
        format!("look up package {package}"),
        Command::new("apt-cache").args(["show", "--no-all-versions", &package]),
    )?;
    let (version, architecture) =
        candidate(&show.stdout).ok_or_else(|| BuildError::UnknownPackage { package: package.clone() })?;
    let deb = cache_dir.join(deb_file_name(&package, &version, &architecture));
    if deb.is_file() {
        progress(&format!("reusing {}", deb.display()));
        return Ok(deb);
    }
    progress(&format!("downloading {package} {version} into {}", cache_dir.display()));
    fs::create_dir_all(cache_dir).map_err(BuildError::io("cannot create", cache_dir))?;
    run(
        format!("download kernel package {package}"),
        Command::new("apt-get").args(["download", &format!("{package}={version}")]).current_dir(cache_dir),
    )?;
    if deb.is_file() {
        Ok(deb)
    } else {
        Err(BuildError::DownloadMissing { package, expected: deb })
    }
}

/// The newest versioned kernel package (`linux-image-<release>_<version>_<arch>.deb`) in `cache_dir`,
/// by Debian version order; metapackage files are skipped. `None` when there is none.
pub fn newest_cached_package(cache_dir: &Path) -> Result<Option<PathBuf>, BuildError> {
    let entries = match fs::read_dir(cache_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(BuildError::io("cannot list", cache_dir)(e)),
    };
    let mut newest: Option<(String, PathBuf)> = None;
    for path in entries.filter_map(|entry| entry.ok().map(|e| e.path())) {
        let Some(version) = path.file_name().and_then(|n| versioned_image_package_version(&n.to_string_lossy())) else {
            continue;
        };
        let newer = match &newest {
            None => true,
            Some((best, _)) => run(
                format!("compare kernel package versions {version} and {best}"),
                Command::new("dpkg").args(["--compare-versions", &version, "gt", best]),
            )
            .is_ok(),
        };
        if newer {
            newest = Some((version, path));
        }
    }
    Ok(newest.map(|(_, path)| path))
}

/// The package version of a versioned image package file: `linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb`
/// gives `6.1.192-2`; the metapackage (`linux-image-amd64_...`) gives `None`.
fn versioned_image_package_version(file_name: &str) -> Option<String> {
    let stem = file_name.strip_prefix("linux-image-")?.strip_suffix(".deb")?;
    let (release, rest) = stem.split_once('_')?;
    let (version, _arch) = rest.rsplit_once('_')?;
    release.starts_with(|c: char| c.is_ascii_digit()).then(|| version.replace("%3a", ":"))
}

/// Follows `Depends: linux-image-*` edges until a package without one: the real image package.
fn resolve_metapackage(name: &str) -> Result<String, BuildError> {
    let mut package = name.to_string();
    // Debian's chains are one or two hops (linux-image-amd64 -> linux-image-6.1.0-N-amd64).
    for _ in 0..4 {
        let depends = run(format!("resolve package {package}"), Command::new("apt-cache").args(["depends", &package]))?;
        match image_dependency(&depends.stdout) {
            Some(next) => package = next,
            None => break,
        }
    }
    Ok(package)
}

/// The first `linux-image-*` hard dependency in `apt-cache depends` output.
fn image_dependency(apt_cache_depends: &str) -> Option<String> {
    apt_cache_depends
        .lines()
        .filter_map(|line| line.trim().trim_start_matches('|').strip_prefix("Depends: "))
        .find(|dep| dep.starts_with("linux-image-"))
        .map(str::to_string)
}

/// Version and architecture from the first stanza of `apt-cache show`.
fn candidate(apt_cache_show: &str) -> Option<(String, String)> {
    let stanza = apt_cache_show.split("\n\n").next()?;
    let field = |key: &str| stanza.lines().find_map(|l| l.strip_prefix(key)).map(|v| v.trim().to_string());
    Some((field("Version:")?, field("Architecture:")?))
}

/// The name `apt-get download` gives a package file (epoch colon escaped as `%3a`).
fn deb_file_name(package: &str, version: &str, architecture: &str) -> String {
    format!("{package}_{}_{architecture}.deb", version.replace(':', "%3a"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_cached_package_orders_by_debian_version_and_skips_the_metapackage() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "linux-image-amd64_6.1.192-2_amd64.deb",
            "linux-image-6.1.0-9-amd64_6.1.27-1_amd64.deb",
            "linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb",
            "linux-image-6.1.0-56-amd64_6.1.192-10_amd64.deb",
            "notes.txt",
        ] {
            fs::write(dir.path().join(name), b"").unwrap();
        }
        let newest = newest_cached_package(dir.path()).unwrap().unwrap();
        assert_eq!(newest.file_name().unwrap(), "linux-image-6.1.0-56-amd64_6.1.192-10_amd64.deb");
        assert_eq!(newest_cached_package(&dir.path().join("absent")).unwrap(), None);
    }

    #[test]
    fn metapackage_resolves_to_versioned_image() {
        let meta = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n";
        assert_eq!(image_dependency(meta).as_deref(), Some("linux-image-6.1.0-56-amd64"));
        let image = "linux-image-6.1.0-56-amd64\n  Depends: kmod\n |Depends: initramfs-tools\n  \
                     Conflicts: linux-image-6.1.0-56-amd64-unsigned\n  Suggests: linux-doc-6.1\n";
        assert_eq!(image_dependency(image), None);
    }

    #[test]
    fn candidate_and_file_name_follow_apt() {
        let show = "Package: linux-image-amd64\nVersion: 1:6.1.192-2\nArchitecture: amd64\n\nPackage: x\nVersion: 0\n";
        let (version, arch) = candidate(show).unwrap();
        assert_eq!(deb_file_name("linux-image-amd64", &version, &arch), "linux-image-amd64_1%3a6.1.192-2_amd64.deb");
        assert_eq!(candidate("Package: x\n"), None);
    }

    /// Needs apt's package lists (apt-get update) but no network: the expected file is put
    /// in the cache first, so apt-get download must not run.
    #[test]
    fn cached_metapackage_download_is_reused() {
        let cache = tempfile::tempdir().unwrap();
        let package = resolve_metapackage("linux-image-amd64").unwrap();
        assert!(package.starts_with("linux-image-") && package != "linux-image-amd64", "{package}");
        let mut show = Command::new("apt-cache");
        show.args(["show", "--no-all-versions", &package]);
        let (version, arch) = candidate(&run("show", &mut show).unwrap().stdout).unwrap();
        let expected = cache.path().join(deb_file_name(&package, &version, &arch));
        fs::write(&expected, b"placeholder").unwrap();
        let mut lines = Vec::new();
        let deb = download("linux-image-amd64", cache.path(), &mut |line| lines.push(line.to_string())).unwrap();
        assert_eq!(deb, expected);
        assert!(lines.iter().any(|l| l.starts_with("reusing")), "{lines:?}");
        assert!(!lines.iter().any(|l| l.starts_with("downloading")), "{lines:?}");
    }

    #[test]
    fn missing_host_kernel_names_the_path() {
        let root = tempfile::tempdir().unwrap();
        let err = check_host_kernel(root.path(), "9.9.9-test").unwrap_err();
        assert!(err.to_string().contains("boot/vmlinuz-9.9.9-test"), "{err}");
        fs::create_dir_all(root.path().join("boot")).unwrap();
        fs::write(root.path().join("boot/vmlinuz-9.9.9-test"), b"k").unwrap();
        let err = check_host_kernel(root.path(), "9.9.9-test").unwrap_err();
        assert!(matches!(&err, BuildError::MissingHostKernel { path } if path.ends_with("lib/modules/9.9.9-test")));
        fs::create_dir_all(root.path().join("lib/modules/9.9.9-test")).unwrap();
        check_host_kernel(root.path(), "9.9.9-test").unwrap();
    }

    #[test]
    fn tree_must_hold_exactly_one_kernel_with_modules() {
        let root = tempfile::tempdir().unwrap();
        assert!(matches!(find_release(root.path()), Err(BuildError::NoKernelInTree { .. })));
        fs::create_dir_all(root.path().join("boot")).unwrap();
        fs::create_dir_all(root.path().join("lib/modules/1.0-a")).unwrap();
        fs::write(root.path().join("boot/vmlinuz-1.0-a"), b"k").unwrap();
        fs::write(root.path().join("boot/vmlinuz-2.0-orphan"), b"k").unwrap();
        assert_eq!(find_release(root.path()).unwrap(), "1.0-a");
        fs::create_dir_all(root.path().join("lib/modules/2.0-orphan")).unwrap();
        assert!(matches!(find_release(root.path()), Err(BuildError::SeveralKernelsInTree { .. })));
    }
}
