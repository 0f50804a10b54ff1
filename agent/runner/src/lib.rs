//! Runs external commands for every Ferric component.
//!
//! Each run carries a human description ("unpack kernel package"), is logged with its
//! command line, and on failure yields an error holding the description, the command
//! line, the exit status and the last lines of stderr, so that a failure report says
//! what was being done and what the tool said, not just "exit status 1".

use std::fmt;
use std::io::Read;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// An error and its sources on one line (`error: cause: cause...`): logs and `last_error` have room
/// for one line, not a backtrace.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

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
    /// Killed by [`run_with_timeout`]; the tail is what it had written to stderr by then.
    #[error("{description}: `{command_line}` did not finish within {timeout:?}{}", tail_suffix(.stderr_tail))]
    TimedOut { description: String, command_line: String, timeout: Duration, stderr_tail: String },
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

/// How often [`run_with_timeout`] checks whether the command has finished.
const EXIT_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Runs `cmd` to completion like [`run`], but kills it once `timeout` has passed: for tools that
/// can hang on a peer that stops answering (network clients). Only `cmd` itself is killed, so it should be
/// a program, not a shell whose children would keep the output pipes open.
pub fn run_with_timeout(
    description: impl fmt::Display,
    cmd: &mut Command,
    timeout: Duration,
) -> Result<Finished, CommandError> {
    let description = description.to_string();
    let command_line = command_line(cmd);
    tracing::debug!(%description, %command_line, ?timeout, "running");
    let spawn_error =
        |source| CommandError::Spawn { description: description.clone(), command_line: command_line.clone(), source };
    let mut child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(spawn_error)?;
    // Both pipes are drained while the command runs, so that a chatty command never blocks on a full pipe.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(spawn_error)? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            // An error here means it exited meanwhile; `wait` reaps it either way.
            let _ = child.kill();
            child.wait().map_err(spawn_error)?;
            break None;
        }
        std::thread::sleep(EXIT_POLL_INTERVAL);
    };
    let stdout = stdout.join().unwrap_or_default();
    let tail = stderr_tail(&stderr.join().unwrap_or_default());
    match status {
        None => Err(CommandError::TimedOut { description, command_line, timeout, stderr_tail: tail }),
        Some(status) if !status.success() => {
            Err(CommandError::Failed { description, command_line, status: status.to_string(), stderr_tail: tail })
        }
        Some(_) => Ok(Finished { stdout: String::from_utf8_lossy(&stdout).into_owned(), stderr_tail: tail }),
    }
}

/// Reads `pipe` to its end on a thread of its own.
fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            // A read error (the child killed mid-write) keeps what was read so far.
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
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
    fn run_with_timeout_returns_output_of_a_quick_command() {
        let script = "echo out; echo err >&2";
        let out = run_with_timeout("quick", Command::new("sh").args(["-c", script]), Duration::from_secs(10)).unwrap();
        assert_eq!((out.stdout.as_str(), out.stderr_tail.as_str()), ("out\n", "err"));
        let err = run_with_timeout("fail", Command::new("sh").args(["-c", "exit 2"]), Duration::from_secs(10));
        assert!(matches!(err, Err(CommandError::Failed { .. })), "{err:?}");
    }

    #[test]
    fn run_with_timeout_kills_a_hanging_command_and_keeps_its_stderr() {
        let started = Instant::now();
        let script = "echo waiting >&2; exec sleep 30";
        let err =
            run_with_timeout("hang", Command::new("sh").args(["-c", script]), Duration::from_millis(300)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
        let msg = err.to_string();
        assert!(matches!(err, CommandError::TimedOut { .. }), "{msg}");
        assert!(msg.starts_with("hang: `sh -c") && msg.contains("did not finish within 300ms: waiting"), "{msg}");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = run("run a ghost", &mut Command::new("/nonexistent/ghost")).unwrap_err();
        assert!(matches!(err, CommandError::Spawn { .. }), "{err}");
    }
}
