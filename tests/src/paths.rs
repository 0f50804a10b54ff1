//! Where the harness finds the workspace's binaries, caches and scratch space.
//!
//! The end-to-end tests run the real binaries (`ferric-controller`, `ferric-agent`, `ferric-init`) built by
//! `cargo build --workspace --bins` into the same `target/<profile>` directory as the running test
//! executable, so that `cargo test --release` tests the release binaries and never silently picks up stale
//! ones elsewhere.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("cannot locate the running executable")]
    CurrentExe(#[source] std::io::Error),
    #[error("`{exe}` is not inside a cargo target/<profile> directory")]
    NotInTargetDir { exe: PathBuf },
    #[error("binary `{name}` not found at {path}: run `cargo build --release --workspace --bins` (or without --release for debug tests) first")]
    MissingBinary { name: String, path: PathBuf },
}

/// The `target/<profile>` directory holding the running executable (a test in `deps/` or a binary).
pub fn target_profile_dir() -> Result<PathBuf, PathError> {
    let exe = std::env::current_exe().map_err(PathError::CurrentExe)?;
    profile_dir_of(&exe).ok_or(PathError::NotInTargetDir { exe })
}

/// Test executables live in `target/<profile>/deps/`, binaries directly in `target/<profile>/`.
fn profile_dir_of(exe: &Path) -> Option<PathBuf> {
    let parent = exe.parent()?;
    let dir = if parent.file_name()? == "deps" { parent.parent()? } else { parent };
    Some(dir.to_path_buf())
}

/// A workspace binary built next to the running executable, or a clear error naming the build command.
pub fn workspace_binary(name: &str) -> Result<PathBuf, PathError> {
    let path = target_profile_dir()?.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(PathError::MissingBinary { name: name.to_string(), path })
    }
}

/// The repository root (the workspace directory above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("crate lives inside the workspace").to_path_buf()
}

/// The repository's download cache for kernel packages (`.cache/kernel`).
pub fn kernel_cache_dir() -> PathBuf {
    repo_root().join(".cache").join("kernel")
}

/// Scratch space for test runs, inside the target directory so that it is ignored by git and shared by runs.
pub fn scratch_dir() -> Result<PathBuf, PathError> {
    Ok(target_profile_dir()?.join("ferric-tests"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_executables_and_binaries_map_to_the_profile_dir() {
        assert_eq!(
            profile_dir_of(Path::new("/w/target/release/deps/e2e-1234")),
            Some(PathBuf::from("/w/target/release"))
        );
        assert_eq!(profile_dir_of(Path::new("/w/target/debug/ferric-demo")), Some(PathBuf::from("/w/target/debug")));
    }

    #[test]
    fn missing_binary_error_names_the_build_command() {
        let err = workspace_binary("no-such-ferric-binary").unwrap_err();
        assert!(err.to_string().contains("cargo build --release --workspace --bins"), "{err}");
    }
}
