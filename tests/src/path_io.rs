//! The one error type for a failed file-system operation on a path, shared by the harness's modules.

use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {path}")]
pub struct PathIoError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl PathIoError {
    /// For `map_err`: `fs::read(path).map_err(PathIoError::at("read", path))`.
    pub fn at(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> PathIoError {
        let path = path.to_path_buf();
        move |source| PathIoError { action, path, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_action_and_the_path_and_keeps_the_cause() {
        let err =
            std::fs::read("/nonexistent/ferric").map_err(PathIoError::at("read", Path::new("/nonexistent/ferric")));
        let err = err.unwrap_err();
        assert_eq!(err.to_string(), "cannot read /nonexistent/ferric");
        assert_eq!(err.source.kind(), io::ErrorKind::NotFound);
    }
}
