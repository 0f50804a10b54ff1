//! The Ferric ramdisk under test: built by the image builder from the freshly built agent and init
//! binaries and the Debian kernel package, so an end-to-end run always tests the current code.

use std::path::{Path, PathBuf};

use ferric_image_builder::{BuildError, BuildOptions, KernelSource};

use crate::paths::{self, PathError};

/// The Debian metapackage the ramdisk's kernel comes from (resolved and downloaded into the cache).
pub const KERNEL_PACKAGE: &str = "linux-image-amd64";
/// Where the host's firmware files live; the builder copies those the selected modules declare.
pub const FIRMWARE_DIR: &str = "/lib/firmware";
/// Fixed initramfs mtime (2024-01-01) so that rebuilds from the same inputs are byte-identical.
const SOURCE_DATE_EPOCH: u64 = 1_704_067_200;

#[derive(Debug, thiserror::Error)]
pub enum RamdiskError {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("building the ramdisk in {out_dir} failed")]
    Build {
        out_dir: PathBuf,
        #[source]
        source: BuildError,
    },
}

/// A built ramdisk: the directory the controller serves (`--ramdisk-dir`) and its two files.
#[derive(Debug, Clone)]
pub struct RamdiskPaths {
    pub dir: PathBuf,
    pub vmlinuz: PathBuf,
    pub initramfs: PathBuf,
    pub kernel_release: String,
}

/// Builds the ramdisk into `out_dir` from `ferric-agent` and `ferric-init` in the running executable's
/// `target/<profile>` directory.
pub fn ensure_ramdisk(out_dir: &Path) -> Result<RamdiskPaths, RamdiskError> {
    let options = BuildOptions {
        out_dir: out_dir.to_path_buf(),
        kernel: KernelSource::Package(KERNEL_PACKAGE.to_string()),
        agent: paths::workspace_binary("ferric-agent")?,
        init: paths::workspace_binary("ferric-init")?,
        cache_dir: paths::kernel_cache_dir(),
        extra_modules: Vec::new(),
        firmware_dir: PathBuf::from(FIRMWARE_DIR),
        source_date_epoch: SOURCE_DATE_EPOCH,
    };
    let report = ferric_image_builder::build(&options, &mut |step| tracing::info!("ramdisk: {step}"))
        .map_err(|source| RamdiskError::Build { out_dir: out_dir.to_path_buf(), source })?;
    tracing::info!(
        kernel = %report.kernel_release,
        vmlinuz_bytes = report.vmlinuz_bytes,
        initramfs_bytes = report.initramfs_bytes,
        "ramdisk built"
    );
    Ok(RamdiskPaths {
        dir: out_dir.to_path_buf(),
        vmlinuz: report.vmlinuz,
        initramfs: report.initramfs,
        kernel_release: report.kernel_release,
    })
}
