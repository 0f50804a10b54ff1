//! Helpers shared by the unit tests of several modules.

use std::path::Path;
use std::process::Command;

/// Runs `program` with `args` and returns its standard output; panics if it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let mut command = Command::new(program);
    command.args(args);
    ferric_runner::run(format!("test: {program}"), &mut command).unwrap().stdout
}

/// A loop device, detached when dropped.
pub struct LoopDevice(pub String);

impl LoopDevice {
    /// A loop device over all of `file`, with extra `losetup` options (`-r`, `-P`, `-b 4096`).
    pub fn attach(file: &Path, options: &[&str]) -> Self {
        let mut args = vec!["-f", "--show"];
        args.extend(options);
        args.push(file.to_str().unwrap());
        Self(run("losetup", &args).trim().to_owned())
    }

    /// A loop device over `len` bytes of `file` from `start`: partitions are reached this way because
    /// the kernel of the test machine may not parse partition tables.
    pub fn over(file: &Path, start: u64, len: u64, read_only: bool) -> Self {
        let (start, len) = (start.to_string(), len.to_string());
        let mut options = vec!["-o", &start, "--sizelimit", &len];
        if read_only {
            options.push("-r");
        }
        Self::attach(file, &options)
    }

    pub fn path(&self) -> &Path {
        Path::new(&self.0)
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}
