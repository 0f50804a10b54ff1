//! The Ferric ramdisk under test: built by the image builder from the freshly built agent and init
//! binaries and the Debian kernel package that scripts/setup.sh caches, so an end-to-end run always tests
//! the current code and needs no network. Its kernel also boots the test OS.

use std::path::{Path, PathBuf};

use ferric_image_builder::{BuildError, BuildOptions, KernelSource};

use crate::paths::{self, PathError};

/// Where the host's firmware files live; the builder copies those the selected modules declare.
pub const FIRMWARE_DIR: &str = "/lib/firmware";
/// Fixed initramfs mtime (2024-01-01) so that rebuilds from the same inputs are byte-identical.
const SOURCE_DATE_EPOCH: u64 = 1_704_067_200;

#[derive(Debug, thiserror::Error)]
pub enum RamdiskError {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("looking for a cached kernel package in {dir} failed")]
    KernelCache {
        dir: PathBuf,
        #[source]
        source: Box<BuildError>,
    },
    #[error("no kernel package (linux-image-<release>_<version>_amd64.deb) in {dir}: run scripts/setup.sh, which downloads it")]
    NoKernelPackage { dir: PathBuf },
    #[error("building the ramdisk in {out_dir} failed")]
    Build {
        out_dir: PathBuf,
        #[source]
        source: Box<BuildError>,
    },
}

/// A built ramdisk: the directory the controller serves (`--ramdisk-dir`) and its kernel.
#[derive(Debug, Clone)]
pub struct RamdiskPaths {
    pub dir: PathBuf,
    pub vmlinuz: PathBuf,
    /// The kernel package the ramdisk's kernel and modules came from (the test OS takes drivers from it).
    pub kernel_package: PathBuf,
}

/// Builds the ramdisk into `out_dir` from `ferric-agent` and `ferric-init` in the running executable's
/// `target/<profile>` directory and the newest kernel package in the repository's kernel cache.
/// The ramdisk of this test process, built on first use under the scratch dir and shared by its tests;
/// a failure to build it fails the test that asked.
pub fn shared_ramdisk() -> &'static RamdiskPaths {
    static RAMDISK: std::sync::OnceLock<RamdiskPaths> = std::sync::OnceLock::new();
    RAMDISK.get_or_init(|| {
        let out_dir = paths::scratch_dir().expect("scratch dir").join("ramdisk");
        build_ramdisk(&out_dir).unwrap_or_else(|e| panic!("building the ramdisk failed: {}", crate::error_chain(&e)))
    })
}

pub fn build_ramdisk(out_dir: &Path) -> Result<RamdiskPaths, RamdiskError> {
    let cache_dir = paths::kernel_cache_dir();
    let deb = ferric_image_builder::newest_cached_package(&cache_dir)
        .map_err(|source| RamdiskError::KernelCache { dir: cache_dir.clone(), source: Box::new(source) })?
        .ok_or_else(|| RamdiskError::NoKernelPackage { dir: cache_dir.clone() })?;
    let options = BuildOptions {
        out_dir: out_dir.to_path_buf(),
        kernel: KernelSource::Deb(deb.clone()),
        agent: paths::workspace_binary("ferric-agent")?,
        init: paths::workspace_binary("ferric-init")?,
        cache_dir,
        extra_modules: Vec::new(),
        firmware_dir: PathBuf::from(FIRMWARE_DIR),
        source_date_epoch: SOURCE_DATE_EPOCH,
        ca_bundle: None,
        // mke2fs: the agent formats ext2/3/4 ephemeral partitions with it.
        tools: ferric_image_builder::default_tools(),
    };
    let report = ferric_image_builder::build(&options, &mut |step| tracing::info!("ramdisk: {step}"))
        .map_err(|source| RamdiskError::Build { out_dir: out_dir.to_path_buf(), source: Box::new(source) })?;
    tracing::info!(
        kernel = %report.kernel_release,
        vmlinuz_bytes = report.vmlinuz_bytes,
        initramfs_bytes = report.initramfs_bytes,
        "ramdisk built"
    );
    Ok(RamdiskPaths { dir: out_dir.to_path_buf(), vmlinuz: report.vmlinuz, kernel_package: deb })
}
