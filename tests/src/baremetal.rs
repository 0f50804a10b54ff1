//! The real `baremetal` CLI (python-ironicclient, installed into `.venv` by `scripts/setup.sh`), run
//! against the controller without Keystone, as an operator would.

use std::path::PathBuf;
use std::process::Command;

use ferric_runner::CommandError;
use serde_json::Value;

use crate::paths;

/// What one CLI invocation may take (`--wait` included), enforced by coreutils' `timeout`.
const COMMAND_TIMEOUT_SECS: &str = "90";

/// Runs `.venv/bin/baremetal` against the controller with no authentication, as an operator would.
#[derive(Debug)]
pub struct Baremetal {
    binary: PathBuf,
    endpoint: String,
    home: tempfile::TempDir,
}

impl Baremetal {
    pub fn new(endpoint: String) -> Baremetal {
        let binary = paths::repo_root().join(".venv/bin/baremetal");
        assert!(binary.is_file(), "{} is missing: run `bash scripts/setup.sh` first", binary.display());
        // The client caches negotiated versions under $HOME; a fresh one keeps runs independent.
        Baremetal { binary, endpoint, home: tempfile::tempdir().unwrap() }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.arg(COMMAND_TIMEOUT_SECS)
            .arg(&self.binary)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("LANG", "C.UTF-8")
            .env("OS_AUTH_TYPE", "none")
            .env("OS_ENDPOINT", &self.endpoint);
        cmd
    }

    pub fn try_run(&self, args: &[&str]) -> Result<String, CommandError> {
        let description = format!("baremetal {}", args.join(" "));
        ferric_runner::run(description, &mut self.command(args)).map(|finished| finished.stdout)
    }

    pub fn run(&self, args: &[&str]) -> String {
        self.try_run(args).unwrap_or_else(|error| panic!("{error}"))
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut with_format = args.to_vec();
        with_format.extend(["-f", "json"]);
        let stdout = self.run(&with_format);
        serde_json::from_str(&stdout)
            .unwrap_or_else(|error| panic!("baremetal {args:?} printed no JSON ({error}): {stdout}"))
    }

    pub fn node(&self, node: &str) -> Value {
        self.json(&["node", "show", node])
    }
}
