//! Builds the Ferric ramdisk: a distribution kernel plus a reproducible gzip-compressed cpio
//! initramfs holding ferric-init as `/init`, the agent, the host tools it runs (mke2fs, hdparm), their shared
//! libraries, the drivers a provisioning host needs (virtio, NVMe/SATA/SAS/RAID, common server NICs)
//! and their firmware.
//!
//! Reproducible: the same inputs and `source_date_epoch` give byte-identical outputs, so a
//! ramdisk can be rebuilt and compared, and caches keyed by its hash stay valid.

pub mod cpio;
mod elf;
mod error;
mod firmware;
mod kernel;
mod libraries;
mod modules;
mod tools;

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ferric_init::modindex::ModuleIndex;
use serde::Serialize;
use sha2::{Digest, Sha256};

pub use error::BuildError;
pub use kernel::{newest_cached_package, KernelSource};
pub use modules::REQUIRED_MODULES;
pub use tools::{default_tools, TOOLS_DIR};

/// Where `--init` lands in the initramfs (the kernel runs `/init` as PID 1).
pub const INIT_PATH: &str = "init";
/// The build description inside the initramfs.
pub const BUILD_DESCRIPTION_PATH: &str = "etc/ferric/build.json";
/// Where `--ca-bundle` lands ([`ferric_protocol::CA_BUNDLE_PATH`] inside the image tree): the agent
/// trusts these CAs for HTTPS image downloads.
pub const CA_BUNDLE_PATH: &str = "etc/ferric/ca-bundle.pem";

#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Receives `vmlinuz`, `initramfs` and `manifest.json`.
    pub out_dir: PathBuf,
    pub kernel: KernelSource,
    pub agent: PathBuf,
    pub init: PathBuf,
    /// Where downloaded kernel packages are kept between builds.
    pub cache_dir: PathBuf,
    /// Modules wanted on top of [`REQUIRED_MODULES`].
    pub extra_modules: Vec<String>,
    pub firmware_dir: PathBuf,
    /// mtime of every initramfs entry.
    pub source_date_epoch: u64,
    /// PEM CA certificates installed at [`CA_BUNDLE_PATH`] (an image server with an in-house CA).
    pub ca_bundle: Option<PathBuf>,
    /// Host programs the agent runs, installed in [`TOOLS_DIR`] with their shared libraries and, as
    /// symlinks, the other names the host gives them in their directory (mke2fs: mkfs.ext2/3/4).
    /// [`default_tools`] is what the agent needs for ext ephemeral partitions and ATA secure erase.
    pub tools: Vec<PathBuf>,
}

/// Uncompressed bytes of initramfs file content, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CategorySizes {
    /// Module files plus the modules.* indices.
    pub modules: u64,
    pub firmware: u64,
    /// `/init` and the agent.
    pub binaries: u64,
    pub tools: u64,
    pub libraries: u64,
    /// build.json and the CA bundle.
    pub metadata: u64,
}

#[derive(Debug, Clone)]
pub struct BuildReport {
    pub kernel_release: String,
    /// The .deb the kernel came from, if any.
    pub kernel_package: Option<String>,
    pub vmlinuz: PathBuf,
    pub initramfs: PathBuf,
    pub manifest: PathBuf,
    pub vmlinuz_bytes: u64,
    /// Compressed size.
    pub initramfs_bytes: u64,
    /// Size of the cpio archive before compression.
    pub initramfs_uncompressed_bytes: u64,
    /// Included module names, dependencies included.
    pub modules: Vec<String>,
    /// Required modules the kernel has built in.
    pub builtin_modules: Vec<String>,
    pub firmware_found: Vec<String>,
    pub firmware_missing: Vec<String>,
    /// In-image paths of the binaries (`init`, the agent).
    pub binaries: Vec<String>,
    pub tools: Vec<InstalledTool>,
    /// In-image paths of the shared libraries.
    pub libraries: Vec<String>,
    pub content_bytes: CategorySizes,
}

/// A tool in the image and the symlinks naming it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledTool {
    /// In-image path, e.g. `/usr/sbin/mke2fs`.
    pub path: String,
    /// In-image paths of the symlinks to it, e.g. `/usr/sbin/mkfs.ext4`.
    pub links: Vec<String>,
}

impl BuildReport {
    /// What went in and how big it came out, as an aligned two-column table.
    pub fn summary(&self) -> String {
        let sizes = &self.content_bytes;
        let kernel = match &self.kernel_package {
            Some(package) => format!("{} ({package})", self.kernel_release),
            None => self.kernel_release.clone(),
        };
        let rows = [
            ("kernel", kernel),
            (
                "modules",
                format!("{} included, {} required ones built in", self.modules.len(), self.builtin_modules.len()),
            ),
            ("firmware", format!("{} found, {} missing", self.firmware_found.len(), self.firmware_missing.len())),
            ("binaries", self.binaries.join(", ")),
            ("tools", self.tools.iter().map(InstalledTool::describe).collect::<Vec<_>>().join(", ")),
            ("libraries", self.libraries.join(", ")),
            ("content (uncompressed)", String::new()),
            ("  modules", size(sizes.modules)),
            ("  firmware", size(sizes.firmware)),
            ("  binaries", size(sizes.binaries)),
            ("  tools", size(sizes.tools)),
            ("  libraries", size(sizes.libraries)),
            ("  metadata", size(sizes.metadata)),
            ("  cpio archive", size(self.initramfs_uncompressed_bytes)),
            ("output", String::new()),
            ("  vmlinuz", size(self.vmlinuz_bytes)),
            ("  initramfs", size(self.initramfs_bytes)),
            ("  total", size(self.vmlinuz_bytes + self.initramfs_bytes)),
        ];
        let mut out = String::new();
        for (label, value) in rows {
            out.push_str(format!("{label:<16}{value}").trim_end());
            out.push('\n');
        }
        out.push_str(&format!("manifest        {}\n", self.manifest.display()));
        out
    }
}

impl InstalledTool {
    /// `/usr/sbin/mke2fs (also mkfs.ext2, mkfs.ext4)`.
    fn describe(&self) -> String {
        let names: Vec<&str> = self.links.iter().map(|link| link.rsplit('/').next().unwrap_or(link)).collect();
        if names.is_empty() {
            self.path.clone()
        } else {
            format!("{} (also {})", self.path, names.join(", "))
        }
    }
}

fn size(bytes: u64) -> String {
    format!("{bytes:>10} bytes {:>7.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[derive(Debug, Serialize)]
struct ModuleRecord {
    name: String,
    path: String,
}

#[derive(Debug, Serialize)]
struct FileRecord {
    path: String,
    bytes: u64,
    sha256: String,
}

#[derive(Debug, Serialize)]
struct ToolRecord {
    #[serde(flatten)]
    file: FileRecord,
    /// Where it came from on the build host.
    source: String,
    links: Vec<String>,
}

#[derive(Debug, Serialize)]
struct FirmwareRecord {
    found: Vec<String>,
    missing: Vec<String>,
    files: Vec<String>,
}

/// What went into the ramdisk; stored as /etc/ferric/build.json and in manifest.json.
#[derive(Debug, Serialize)]
struct BuildDescription {
    kernel_release: String,
    kernel_package: Option<String>,
    source_date_epoch: u64,
    modules: Vec<ModuleRecord>,
    builtin_modules: Vec<String>,
    firmware: FirmwareRecord,
    binaries: Vec<FileRecord>,
    tools: Vec<ToolRecord>,
    libraries: Vec<FileRecord>,
    ca_bundle: Option<FileRecord>,
}

#[derive(Debug, Serialize)]
struct Manifest<'a> {
    #[serde(flatten)]
    build: &'a BuildDescription,
    content_bytes: &'a CategorySizes,
    initramfs_uncompressed_bytes: u64,
    vmlinuz: FileRecord,
    initramfs: FileRecord,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn file_record(path: &str, bytes: &[u8]) -> FileRecord {
    FileRecord { path: path.to_string(), bytes: bytes.len() as u64, sha256: sha256_hex(bytes) }
}

fn read(path: &Path) -> Result<Vec<u8>, BuildError> {
    fs::read(path).map_err(BuildError::io("cannot read", path))
}

fn read_text(path: &Path) -> Result<String, BuildError> {
    fs::read_to_string(path).map_err(BuildError::io("cannot read", path))
}

/// Which [`CategorySizes`] counter a file counts towards.
#[derive(Debug, Clone, Copy)]
enum Category {
    Modules,
    Firmware,
    Binaries,
    Tools,
    Libraries,
    Metadata,
}

/// What [`Contents::add_binaries`] installed.
struct Programs {
    binaries: Vec<FileRecord>,
    tools: Vec<ToolRecord>,
    libraries: Vec<FileRecord>,
}

/// The initramfs being assembled, with its content sizes.
struct Contents {
    archive: cpio::Archive,
    sizes: CategorySizes,
}

impl Contents {
    fn add(&mut self, category: Category, path: &str, mode: u32, content: Vec<u8>) -> Result<(), BuildError> {
        let counter = match category {
            Category::Modules => &mut self.sizes.modules,
            Category::Firmware => &mut self.sizes.firmware,
            Category::Binaries => &mut self.sizes.binaries,
            Category::Tools => &mut self.sizes.tools,
            Category::Libraries => &mut self.sizes.libraries,
            Category::Metadata => &mut self.sizes.metadata,
        };
        *counter += content.len() as u64;
        self.archive.add_file(path, mode, content).map_err(BuildError::archive(path))
    }

    /// The selected modules, uncompressed, at their package paths (minus any compression
    /// suffix), plus kmod's indices filtered to them (modules.builtin whole, so that init
    /// knows what needs no file). Returns the selection and the firmware the modules declare.
    fn add_modules(
        &mut self,
        kernel: &kernel::Kernel,
        extra: &[String],
    ) -> Result<(modules::Selection, BTreeSet<String>), BuildError> {
        let modules_dep = read_text(&kernel.modules_dir.join("modules.dep"))?;
        let builtin_path = kernel.modules_dir.join("modules.builtin");
        let modules_builtin = if builtin_path.exists() { read_text(&builtin_path)? } else { String::new() };
        let index = ModuleIndex::parse(kernel.modules_dir.clone(), "", &modules_dep, &modules_builtin);
        let requested = REQUIRED_MODULES.iter().copied().chain(extra.iter().map(String::as_str));
        let selection = modules::select(&index, requested)?;
        tracing::debug!(modules = ?selection.modules.keys().collect::<Vec<_>>(), "selected kernel modules");

        let image_dir = format!("lib/modules/{}", kernel.release);
        let mut firmware = BTreeSet::new();
        for relative in selection.modules.values() {
            let path = kernel.modules_dir.join(relative);
            let content = modules::read_plain(&path)?;
            firmware.extend(
                firmware::declared_by(&content)
                    .map_err(|source| BuildError::ModuleElf { path: path.clone(), source })?,
            );
            self.add(Category::Modules, &format!("{image_dir}/{}", modules::plain_path(relative)), 0o644, content)?;
        }
        let modules_alias = read_text(&kernel.modules_dir.join("modules.alias"))?;
        for (name, content) in [
            ("modules.dep", selection.filter_dep(&modules_dep)),
            ("modules.alias", selection.filter_alias(&modules_alias)),
            ("modules.builtin", modules_builtin),
        ] {
            self.add(Category::Modules, &format!("{image_dir}/{name}"), 0o644, content.into_bytes())?;
        }
        Ok((selection, firmware))
    }

    /// The `declared` firmware, where `firmware_dir` has it.
    fn add_firmware(
        &mut self,
        declared: &BTreeSet<String>,
        firmware_dir: &Path,
    ) -> Result<firmware::FirmwareLookup, BuildError> {
        let lookup = firmware::look_up(firmware_dir, declared.iter().map(String::as_str));
        if !lookup.missing.is_empty() {
            tracing::info!(dir = %firmware_dir.display(), missing = ?lookup.missing, "declared firmware not found");
        }
        for file in &lookup.files {
            let content = read(&firmware_dir.join(file))?;
            self.add(Category::Firmware, &format!("lib/firmware/{file}"), 0o644, content)?;
        }
        Ok(lookup)
    }

    /// `/init`, the agent, the tools with their aliases, and the shared libraries they all load at the paths
    /// ldd reports (the content of the real file when the path is a symlink).
    fn add_binaries(&mut self, init: &Path, agent: &Path, tools: &[PathBuf]) -> Result<Programs, BuildError> {
        let mut binaries = Vec::new();
        let mut library_paths = BTreeSet::new();
        // The image stores paths without the leading slash.
        let agent_path = ferric_protocol::AGENT_PATH.trim_start_matches('/');
        for (image_path, source) in [(INIT_PATH, init), (agent_path, agent)] {
            let content = read(source)?;
            binaries.push(file_record(&format!("/{image_path}"), &content));
            self.add(Category::Binaries, image_path, 0o755, content)?;
            library_paths.extend(libraries::needed_by(source)?);
        }
        // The same tool given twice (as /sbin/mkfs.ext4 and /usr/sbin/mke2fs, say) goes in once.
        let resolved: BTreeSet<tools::Tool> =
            tools.iter().map(|path| tools::Tool::resolve(path)).collect::<Result<_, _>>()?;
        let mut tool_records = Vec::new();
        for tool in &resolved {
            let content = read(&tool.source)?;
            let image_path = tool.image_path();
            let mut links = Vec::new();
            for link in tool.alias_paths() {
                self.archive.add_symlink(&link, &tool.name).map_err(BuildError::archive(&link))?;
                links.push(format!("/{link}"));
            }
            tool_records.push(ToolRecord {
                file: file_record(&format!("/{image_path}"), &content),
                source: tool.source.to_string_lossy().into_owned(),
                links,
            });
            self.add(Category::Tools, &image_path, 0o755, content)?;
            library_paths.extend(libraries::needed_by(&tool.source)?);
        }
        let mut libraries = Vec::new();
        for path in &library_paths {
            let content = read(path)?;
            let image_path = path.to_string_lossy().into_owned();
            libraries.push(file_record(&image_path, &content));
            self.add(Category::Libraries, &image_path, 0o755, content)?;
        }
        Ok(Programs { binaries, tools: tool_records, libraries })
    }

    /// `bundle` at [`CA_BUNDLE_PATH`], if it holds a PEM certificate (a typo'd path to a key or a DER file
    /// would otherwise only show at the first HTTPS download).
    fn add_ca_bundle(&mut self, bundle: &Path) -> Result<FileRecord, BuildError> {
        const PEM_CERTIFICATE: &[u8] = b"-----BEGIN CERTIFICATE-----";
        let content = read(bundle)?;
        if !content.windows(PEM_CERTIFICATE.len()).any(|window| window == PEM_CERTIFICATE) {
            let missing = std::io::Error::new(std::io::ErrorKind::InvalidData, "no -----BEGIN CERTIFICATE----- line");
            return Err(BuildError::io("not a PEM CA bundle:", bundle)(missing));
        }
        let record = file_record(&format!("/{CA_BUNDLE_PATH}"), &content);
        self.add(Category::Metadata, CA_BUNDLE_PATH, 0o644, content)?;
        Ok(record)
    }

    /// Mount points and the device nodes the kernel and init need before devtmpfs is up.
    fn add_skeleton(&mut self) -> Result<(), BuildError> {
        for dir in ["proc", "sys", "dev", "run", "etc", "var"] {
            self.archive.add_dir(dir, 0o755).map_err(BuildError::archive(dir))?;
        }
        self.archive.add_dir("tmp", 0o1777).map_err(BuildError::archive("tmp"))?;
        self.archive.add_char_device("dev/console", 0o600, 5, 1).map_err(BuildError::archive("dev/console"))?;
        self.archive.add_char_device("dev/null", 0o666, 1, 3).map_err(BuildError::archive("dev/null"))
    }
}

fn to_json(value: &impl Serialize) -> Result<Vec<u8>, BuildError> {
    let mut json = serde_json::to_vec_pretty(value).map_err(BuildError::Json)?;
    json.push(b'\n');
    Ok(json)
}

/// Builds `vmlinuz`, `initramfs` and `manifest.json` in `opts.out_dir`. `progress` gets one
/// short line per step.
pub fn build(opts: &BuildOptions, progress: &mut dyn FnMut(&str)) -> Result<BuildReport, BuildError> {
    let kernel = kernel::prepare(&opts.kernel, &opts.cache_dir, progress)?;
    build_with_kernel(opts, &kernel, progress)
}

/// [`build`] with the kernel already prepared; `opts.kernel` and `opts.cache_dir` are not used.
fn build_with_kernel(
    opts: &BuildOptions,
    kernel: &kernel::Kernel,
    progress: &mut dyn FnMut(&str),
) -> Result<BuildReport, BuildError> {
    let mut contents =
        Contents { archive: cpio::Archive::new(opts.source_date_epoch), sizes: CategorySizes::default() };

    let (selection, declared_firmware) = contents.add_modules(kernel, &opts.extra_modules)?;
    progress(&format!(
        "modules: {} selected with dependencies, {} required ones built in",
        selection.modules.len(),
        selection.builtin.len()
    ));
    let firmware = contents.add_firmware(&declared_firmware, &opts.firmware_dir)?;
    progress(&format!(
        "firmware: {} declared, {} found in {}, {} missing",
        firmware.found.len() + firmware.missing.len(),
        firmware.found.len(),
        opts.firmware_dir.display(),
        firmware.missing.len()
    ));
    let Programs { binaries, tools, libraries } = contents.add_binaries(&opts.init, &opts.agent, &opts.tools)?;
    progress(&format!(
        "binaries: {}, tools: {} ({} names), shared libraries: {}",
        binaries.len(),
        tools.len(),
        tools.iter().map(|tool| 1 + tool.links.len()).sum::<usize>(),
        libraries.len()
    ));
    contents.add_skeleton()?;
    let ca_bundle = opts.ca_bundle.as_deref().map(|bundle| contents.add_ca_bundle(bundle)).transpose()?;

    let description = BuildDescription {
        kernel_release: kernel.release.clone(),
        kernel_package: kernel.package_file.clone(),
        source_date_epoch: opts.source_date_epoch,
        modules: selection
            .modules
            .iter()
            .map(|(name, path)| ModuleRecord { name: name.clone(), path: modules::plain_path(path).to_string() })
            .collect(),
        builtin_modules: selection.builtin.iter().cloned().collect(),
        firmware: FirmwareRecord {
            found: firmware.found.into_iter().collect(),
            missing: firmware.missing.into_iter().collect(),
            files: firmware.files.into_iter().collect(),
        },
        binaries,
        tools,
        libraries,
        ca_bundle,
    };
    contents.add(Category::Metadata, BUILD_DESCRIPTION_PATH, 0o644, to_json(&description)?)?;

    progress(&format!("compressing {} initramfs entries", contents.archive.entry_count()));
    let vmlinuz = read(&kernel.vmlinuz)?;
    let mut initramfs = Vec::new();
    let initramfs_uncompressed_bytes = contents
        .archive
        .write_gzip(&mut initramfs)
        .map_err(BuildError::io("cannot compress initramfs for", &opts.out_dir))?;
    let manifest = to_json(&Manifest {
        build: &description,
        content_bytes: &contents.sizes,
        initramfs_uncompressed_bytes,
        vmlinuz: file_record("vmlinuz", &vmlinuz),
        initramfs: file_record("initramfs", &initramfs),
    })?;
    let [vmlinuz_path, initramfs_path, manifest_path] = write_all_or_nothing(
        &opts.out_dir,
        &[("vmlinuz", &vmlinuz), ("initramfs", &initramfs), ("manifest.json", &manifest)],
    )?;
    progress(&format!("wrote {}", opts.out_dir.display()));

    Ok(BuildReport {
        kernel_release: description.kernel_release,
        kernel_package: description.kernel_package,
        vmlinuz: vmlinuz_path,
        initramfs: initramfs_path,
        manifest: manifest_path,
        vmlinuz_bytes: vmlinuz.len() as u64,
        initramfs_bytes: initramfs.len() as u64,
        initramfs_uncompressed_bytes,
        modules: description.modules.into_iter().map(|m| m.name).collect(),
        builtin_modules: description.builtin_modules,
        firmware_found: description.firmware.found,
        firmware_missing: description.firmware.missing,
        binaries: description.binaries.into_iter().map(|b| b.path).collect(),
        tools: description
            .tools
            .into_iter()
            .map(|tool| InstalledTool { path: tool.file.path, links: tool.links })
            .collect(),
        libraries: description.libraries.into_iter().map(|l| l.path).collect(),
        content_bytes: contents.sizes,
    })
}

/// Writes every file to a temporary name in `dir` first, then renames them into place in
/// order. The last file (manifest.json) is the commit marker: the old one is removed before
/// the first rename and the new one appears only after every other file is in place, so a
/// directory with a manifest.json holds the files it describes. Should a rename fail, the
/// files already renamed are removed again: a failed build leaves no half-new output.
fn write_all_or_nothing<const N: usize>(dir: &Path, files: &[(&str, &[u8]); N]) -> Result<[PathBuf; N], BuildError> {
    fs::create_dir_all(dir).map_err(BuildError::io("cannot create", dir))?;
    let mut staged = Vec::with_capacity(N);
    for (name, content) in files {
        let mut temp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .tempfile_in(dir)
            .map_err(BuildError::io("cannot create a temporary file in", dir))?;
        temp.write_all(content).map_err(BuildError::io("cannot write", temp.path()))?;
        staged.push((temp, dir.join(name)));
    }
    if let Some((marker, _)) = files.last() {
        let marker = dir.join(marker);
        match fs::remove_file(&marker) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(BuildError::io("cannot remove the old", marker)(err))
            }
            _ => {}
        }
    }
    let mut finals = Vec::with_capacity(N);
    for (temp, target) in staged {
        if let Err(err) = temp.persist(&target) {
            for renamed in &finals {
                let _ = fs::remove_file(renamed);
            }
            return Err(BuildError::Io { action: "cannot rename into", path: target, source: err.error });
        }
        finals.push(target);
    }
    Ok(finals.try_into().expect("one path per file"))
}

#[cfg(test)]
mod tests;
