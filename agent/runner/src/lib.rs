//! Runs external commands for every Ferric component.
//!
//! Each run carries a human description ("unpack kernel package"), is logged with its
//! command line, and on failure yields an error holding the description, the command
//! line, the exit status and the last lines of stderr, so that a failure report says
//! what was being done and what the tool said, not just "exit status 1".

use std::fmt;
use std::process::{Child, Command, Output, Stdio};

/// How many trailing stderr lines an error keeps.
pub const STDERR_TAIL_LINES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{description}: could not start `{command_line}`")]
    Spawn {
        description: String,
        command_line: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{description}: `{command_line}` failed ({status}){}", tail_suffix(.stderr_tail))]
    Failed { description: String, command_line: String, status: String, stderr_tail: String },
}

fn tail_suffix(tail: &str) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!(": {tail}")
    }
}

/// The finished command's output, stdout as text.
#[derive(Debug, Clone)]
pub struct Finished {
    pub stdout: String,
    pub stderr_tail: String,
}

/// Renders a command line for logs and errors.
pub fn command_line(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// The last [`STDERR_TAIL_LINES`] non-empty lines of `stderr`, joined by newlines.
pub fn stderr_tail(stderr: &[u8]) -> String {
    tail_lines(&String::from_utf8_lossy(stderr), STDERR_TAIL_LINES)
}

/// The last `count` non-empty lines of `text`, joined by newlines (for logs quoted in errors).
pub fn tail_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

/// Starts a long-running command (a server, a VM) with its description logged; the caller owns
/// the child and its stdio (set them on `cmd` first, e.g. to a log file whose tail errors quote).
pub fn spawn(description: impl fmt::Display, cmd: &mut Command) -> Result<Child, CommandError> {
    let description = description.to_string();
    let command_line = command_line(cmd);
    tracing::info!(%description, %command_line, "starting");
    cmd.spawn().map_err(|source| CommandError::Spawn { description, command_line, source })
}

/// Runs `cmd` to completion, capturing stdout and stderr.
pub fn run(description: impl fmt::Display, cmd: &mut Command) -> Result<Finished, CommandError> {
    let description = description.to_string();
    let command_line = command_line(cmd);
    tracing::debug!(%description, %command_line, "running");
    let output: Output = cmd.stdin(Stdio::null()).output().map_err(|source| CommandError::Spawn {
        description: description.clone(),
        command_line: command_line.clone(),
        source,
    })?;
    let tail = stderr_tail(&output.stderr);
    if !output.status.success() {
        return Err(CommandError::Failed {
            description,
            command_line,
            status: output.status.to_string(),
            stderr_tail: tail,
        });
    }
    Ok(Finished { stdout: String::from_utf8_lossy(&output.stdout).into_owned(), stderr_tail: tail })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_returns_stdout() {
        let out = run("echo", Command::new("sh").args(["-c", "echo hello; echo warn >&2"])).unwrap();
        assert_eq!(out.stdout, "hello\n");
        assert_eq!(out.stderr_tail, "warn");
    }

    #[test]
    fn failure_names_description_and_keeps_stderr_tail() {
        let script = "for i in $(seq 1 30); do echo line$i >&2; done; exit 3";
        let err = run("count to thirty", Command::new("sh").args(["-c", script])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("count to thirty: `sh -c"), "{msg}");
        assert!(msg.contains("exit status: 3"), "{msg}");
        assert!(msg.contains("line30") && msg.contains("line11") && !msg.contains("line10\n"), "{msg}");
    }

    #[test]
    fn tail_lines_skips_blank_lines_and_keeps_the_last() {
        assert_eq!(tail_lines("a\n\nb\n  \nc\n", 2), "b\nc");
        assert_eq!(tail_lines("only\n", 5), "only");
    }

    #[test]
    fn spawned_command_runs_and_missing_program_is_named() {
        let mut child = spawn("sleep briefly", Command::new("sh").args(["-c", "exit 4"])).unwrap();
        assert_eq!(child.wait().unwrap().code(), Some(4));
        let err = spawn("start a ghost", &mut Command::new("/nonexistent/ghost")).unwrap_err();
        assert!(err.to_string().starts_with("start a ghost: could not start"), "{err}");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = run("run a ghost", &mut Command::new("/nonexistent/ghost")).unwrap_err();
        assert!(matches!(err, CommandError::Spawn { .. }), "{err}");
    }
}
