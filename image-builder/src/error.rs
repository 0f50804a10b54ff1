use std::path::PathBuf;

use ferric_runner::CommandError;

use crate::cpio::CpioError;
use crate::elf::ElfError;

/// Why a ramdisk build failed; every variant names the file, package or module involved.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("host kernel not usable: {path} does not exist")]
    MissingHostKernel { path: PathBuf },
    #[error("no boot/vmlinuz-<release> with a matching lib/modules/<release> under {root}")]
    NoKernelInTree { root: PathBuf },
    #[error("several kernels under {root} ({releases:?}); the ramdisk takes exactly one")]
    SeveralKernelsInTree { root: PathBuf, releases: Vec<String> },
    #[error("apt knows no installable version of package {package}")]
    UnknownPackage { package: String },
    #[error("apt-get download {package} finished but {expected} is not there")]
    DownloadMissing { package: String, expected: PathBuf },
    #[error("required kernel module {module} is neither in the kernel tree nor built in")]
    MissingModule { module: String },
    #[error("cannot read kernel module {path}")]
    ModuleElf {
        path: PathBuf,
        #[source]
        source: ElfError,
    },
    #[error("tool {path} is not a program on the build host")]
    MissingTool {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{binary} needs shared library {library}, which ldd could not find")]
    MissingLibrary { binary: PathBuf, library: String },
    #[error("cannot add {path} to the initramfs")]
    Archive {
        path: String,
        #[source]
        source: CpioError,
    },
    #[error("cannot serialise the build description")]
    Json(#[source] serde_json::Error),
}

impl BuildError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { action, path, source }
    }

    pub(crate) fn archive(path: impl Into<String>) -> impl FnOnce(CpioError) -> Self {
        let path = path.into();
        move |source| Self::Archive { path, source }
    }
}
