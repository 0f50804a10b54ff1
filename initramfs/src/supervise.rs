//! PID 1's duties towards processes: reaping orphans, and keeping the agent running. Its
//! waiting loops also run periodic maintenance (DHCP lease renewal), so PID 1 needs no
//! other thread.

use std::process::Command;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::cmdline::BootParams;

/// Pause before restarting an agent that exited.
const AGENT_RESTART_DELAY: Duration = Duration::from_secs(5);
/// How often a missing `ferric.api` is complained about.
const MISSING_API_URL_REMINDER: Duration = Duration::from_secs(30);
/// The kernel starts init with only HOME and TERM. The agent will run disk tools by name
/// (sgdisk, mkfs and the like; it runs none yet), which needs a PATH.
const DEFAULT_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// Reaps every child that has exited, without blocking. Orphans are re-parented to PID 1,
/// so without this they would stay zombies forever.
pub fn reap_zombies() {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(error) => {
                log!("waitpid failed: {error}");
                return;
            }
        }
    }
}

/// How often the waiting loops reap and run maintenance.
const TICK: Duration = Duration::from_millis(250);

/// Sleeps for `duration`, reaping zombies and calling `maintain` every [`TICK`].
pub fn sleep_reaping(duration: Duration, maintain: &mut dyn FnMut()) {
    let deadline = Instant::now() + duration;
    loop {
        reap_zombies();
        maintain();
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return;
        }
        std::thread::sleep(remaining.min(TICK));
    }
}

/// The agent's command line: `ferric-agent run --api-url <URL> [--boot-mac <mac>]`,
/// inheriting init's stdio (the console).
pub fn agent_command(program: &str, api_url: &str, boot_mac: Option<&str>) -> Command {
    let mut command = Command::new(program);
    command.args(["run", "--api-url", api_url]);
    if let Some(mac) = boot_mac {
        command.args(["--boot-mac", mac]);
    }
    if std::env::var_os("PATH").is_none() {
        command.env("PATH", DEFAULT_PATH);
    }
    command
}

/// Runs the agent and restarts it whenever it exits (or could not start), calling
/// `maintain` all the while. Without `ferric.api` there is nothing to run: say so
/// periodically, forever, rather than exit (which would panic the kernel).
pub fn run_agent_forever(params: &BootParams, maintain: &mut dyn FnMut()) -> ! {
    let Some(api_url) = params.api_url.as_deref() else {
        loop {
            log!(
                "no {}=<controller URL> on the kernel command line; cannot start the agent",
                ferric_protocol::CMDLINE_API_URL
            );
            sleep_reaping(MISSING_API_URL_REMINDER, maintain);
        }
    };
    loop {
        let mut command = agent_command(ferric_protocol::AGENT_PATH, api_url, params.boot_mac.as_deref());
        match run_to_exit(&mut command, maintain) {
            Ok(status) => log!("agent {}; restarting in {}s", describe(status), AGENT_RESTART_DELAY.as_secs()),
            Err(error) => log!("could not start the agent: {error}; retrying in {}s", AGENT_RESTART_DELAY.as_secs()),
        }
        sleep_reaping(AGENT_RESTART_DELAY, maintain);
    }
}

/// Starts `command` and waits for it to end, reaping any other child that exits meanwhile
/// and calling `maintain` every [`TICK`].
pub fn run_to_exit(command: &mut Command, maintain: &mut dyn FnMut()) -> std::io::Result<WaitStatus> {
    let child = command.spawn()?;
    let pid = Pid::from_raw(child.id() as i32);
    // The child is waited for with waitpid(-1) below, not through `child`.
    drop(child);
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {
                maintain();
                std::thread::sleep(TICK);
            }
            Ok(status) if status.pid() == Some(pid) => match status {
                WaitStatus::Exited(..) | WaitStatus::Signaled(..) => return Ok(status),
                _ => continue,
            },
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(error) => return Err(error.into()),
        }
    }
}

fn describe(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exited with status {code}"),
        WaitStatus::Signaled(_, signal, _) => format!("was killed by {signal}"),
        other => format!("ended ({other:?})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arguments(command: &Command) -> Vec<String> {
        command.get_args().map(|arg| arg.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn agent_command_line_follows_the_contract() {
        let command = agent_command(ferric_protocol::AGENT_PATH, "http://10.0.2.2:8080", Some("52:54:00:12:34:56"));
        assert_eq!(command.get_program(), ferric_protocol::AGENT_PATH);
        assert_eq!(
            arguments(&command),
            ["run", "--api-url", "http://10.0.2.2:8080", "--boot-mac", "52:54:00:12:34:56"]
        );
        let without_mac = agent_command(ferric_protocol::AGENT_PATH, "http://x", None);
        assert_eq!(arguments(&without_mac), ["run", "--api-url", "http://x"]);
    }

    #[test]
    fn run_to_exit_reports_exit_status_and_signal() {
        let _no_concurrent_children = crate::REAPING.lock();
        let status = run_to_exit(Command::new("sh").args(["-c", "exit 3"]), &mut || {}).unwrap();
        assert!(matches!(status, WaitStatus::Exited(_, 3)), "{status:?}");
        assert_eq!(describe(status), "exited with status 3");

        let status = run_to_exit(Command::new("sh").args(["-c", "kill -TERM $$"]), &mut || {}).unwrap();
        assert!(matches!(status, WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGTERM, _)), "{status:?}");
        assert_eq!(describe(status), "was killed by SIGTERM");
    }

    #[test]
    fn maintenance_runs_while_waiting_for_the_child() {
        let _no_concurrent_children = crate::REAPING.lock();
        let mut ticks = 0;
        let status = run_to_exit(Command::new("sleep").arg("1"), &mut || ticks += 1).unwrap();
        assert!(matches!(status, WaitStatus::Exited(_, 0)), "{status:?}");
        assert!(ticks >= 2, "{ticks} maintenance calls in a second of waiting");

        let mut ticks = 0;
        sleep_reaping(Duration::from_millis(600), &mut || ticks += 1);
        assert!(ticks >= 2, "{ticks} maintenance calls in 0.6s");
    }

    #[test]
    fn missing_program_is_an_error_not_a_panic() {
        assert!(run_to_exit(&mut Command::new("/nonexistent/ferric-agent"), &mut || {}).is_err());
    }
}
