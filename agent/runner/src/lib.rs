//! Runs external commands for every Ferric component.
//!
//! Each run carries a human description ("unpack kernel package"), is logged with its
//! command line, and on failure yields an error holding the description, the command
//! line, the exit status and the last lines of stderr, so that a failure report says
//! what was being done and what the tool said, not just "exit status 1".

use std::fmt;
use std::process::{Command, Output, Stdio};

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
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n")
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
    fn missing_program_is_a_spawn_error() {
        let err = run("run a ghost", &mut Command::new("/nonexistent/ghost")).unwrap_err();
        assert!(matches!(err, CommandError::Spawn { .. }), "{err}");
    }
}
