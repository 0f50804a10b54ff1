//! Finds the shared libraries (and ELF interpreter) a binary needs, as `ldd` reports them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use ferric_runner::CommandError;

use crate::error::BuildError;

/// Absolute library paths `binary` loads; empty for a static binary.
pub fn needed_by(binary: &Path) -> Result<BTreeSet<PathBuf>, BuildError> {
    match ferric_runner::run(format!("list shared libraries of {}", binary.display()), Command::new("ldd").arg(binary))
    {
        Ok(finished) => parse_ldd(&finished.stdout, binary),
        // glibc's ldd exits 1 for static executables.
        Err(CommandError::Failed { stderr_tail, .. }) if stderr_tail.contains("not a dynamic executable") => {
            Ok(BTreeSet::new())
        }
        Err(err) => Err(err.into()),
    }
}

fn parse_ldd(output: &str, binary: &Path) -> Result<BTreeSet<PathBuf>, BuildError> {
    let mut libraries = BTreeSet::new();
    for line in output.lines().map(str::trim) {
        if line.is_empty() || line.contains("statically linked") || line.starts_with("linux-vdso") {
            continue;
        }
        let location = match line.split_once("=>") {
            Some((name, target)) => {
                let target = target.trim();
                if target.starts_with("not found") {
                    return Err(BuildError::MissingLibrary {
                        binary: binary.to_path_buf(),
                        library: name.trim().to_string(),
                    });
                }
                target
            }
            None => line,
        };
        let path = location.split(" (0x").next().unwrap_or(location).trim();
        if path.starts_with('/') {
            libraries.insert(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libraries_and_interpreter_skipping_vdso() {
        let output = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                      \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f01)\n\
                      \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f02)\n\
                      \t/lib64/ld-linux-x86-64.so.2 (0x00007f03)\n";
        let libs = parse_ldd(output, Path::new("/bin/x")).unwrap();
        let expected =
            ["/lib/x86_64-linux-gnu/libc.so.6", "/lib/x86_64-linux-gnu/libgcc_s.so.1", "/lib64/ld-linux-x86-64.so.2"];
        assert_eq!(libs.iter().map(|p| p.to_str().unwrap()).collect::<Vec<_>>(), expected);
        assert!(parse_ldd("\tstatically linked\n", Path::new("/bin/x")).unwrap().is_empty());
    }

    #[test]
    fn unresolved_library_is_an_error() {
        let err = parse_ldd("\tlibmissing.so.3 => not found\n", Path::new("/bin/x")).unwrap_err();
        assert!(matches!(&err, BuildError::MissingLibrary { library, .. } if library == "libmissing.so.3"), "{err}");
    }

    #[test]
    fn real_dynamic_and_static_binaries() {
        let libs = needed_by(Path::new("/bin/true")).unwrap();
        assert!(libs.iter().any(|p| p.ends_with("libc.so.6")), "{libs:?}");
        assert!(libs.iter().any(|p| p.to_string_lossy().contains("ld-linux")), "{libs:?}");
        assert!(needed_by(Path::new("/bin/busybox")).unwrap().is_empty());
    }
}
