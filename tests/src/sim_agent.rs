//! An agent in the ramdisk reduced to its protocol, for tests of the controller's flows without a VM:
//! it looks the node up by MAC until the controller knows it, heartbeats, reports `write_image`
//! running then succeeded, and reports a `reboot` task done at once. It stops when it reported the
//! reboot, or when the controller ended its work after the write (a node with a BMC: the controller
//! power-cycles the node itself and refuses the agent's token).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use ferric_protocol::{
    heartbeat_path, CommandResult, CommandStatus, Heartbeat, HeartbeatResponse, LookupResponse, Task,
    AGENT_API_VERSION, API_VERSION_HEADER, LOOKUP_PATH,
};

const POLL: Duration = Duration::from_millis(300);

/// A running simulated agent; `finish` stops it and returns the tasks it was given.
#[derive(Debug)]
pub struct SimulatedAgent {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Task>>,
}

impl SimulatedAgent {
    /// Starts looking up the node owning `mac` on the controller at `base_url`.
    pub fn start(base_url: &str, mac: &str) -> SimulatedAgent {
        let stop = Arc::new(AtomicBool::new(false));
        let (base_url, mac, flag) = (base_url.to_owned(), mac.to_owned(), Arc::clone(&stop));
        let thread = std::thread::spawn(move || run(&base_url, &mac, &flag));
        SimulatedAgent { stop, thread }
    }

    /// Whether it stopped by itself (its work is over).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Stops it; the tasks it was given, in order.
    pub fn finish(self) -> Vec<Task> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the simulated agent panicked")
    }
}

fn run(base_url: &str, mac: &str, stop: &AtomicBool) -> Vec<Task> {
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let mut tasks = Vec::new();
    let lookup_url = format!("{base_url}{LOOKUP_PATH}?addresses={mac}");
    let lookup = loop {
        if stop.load(Ordering::Relaxed) {
            return tasks;
        }
        let response = http.get(&lookup_url).header(API_VERSION_HEADER, AGENT_API_VERSION).send().unwrap();
        if response.status().is_success() {
            break response.json::<LookupResponse>().unwrap();
        }
        std::thread::sleep(POLL);
    };
    let heartbeat_url = format!("{base_url}{}", heartbeat_path(&lookup.node.uuid));
    let mut report: Option<CommandResult> = None;
    while !stop.load(Ordering::Relaxed) {
        let heartbeat = Heartbeat {
            agent_token: lookup.config.agent_token.clone(),
            agent_version: "simulated".into(),
            command: report.clone(),
            progress: None,
            log_tail: vec!["simulated agent".into()],
            inventory: None,
        };
        let response =
            http.post(&heartbeat_url).header(API_VERSION_HEADER, AGENT_API_VERSION).json(&heartbeat).send().unwrap();
        let succeeded = |name: &str| {
            report.as_ref().is_some_and(|r| r.command_name == name && r.command_status == CommandStatus::Succeeded)
        };
        if !response.status().is_success() {
            assert!(succeeded("write_image"), "heartbeat refused: {}", response.text().unwrap());
            return tasks;
        }
        let answer: HeartbeatResponse = response.json().unwrap();
        if succeeded("reboot") {
            return tasks;
        }
        report = match (answer.task, report.take()) {
            (Some(task), _) => {
                // A reboot is done at once; an image write is first seen running.
                let status =
                    if task.command.name() == "reboot" { CommandStatus::Succeeded } else { CommandStatus::Running };
                let result = command_result(&task, status);
                tasks.push(task);
                Some(result)
            }
            (None, Some(running)) if running.command_status == CommandStatus::Running => {
                Some(CommandResult { command_status: CommandStatus::Succeeded, ..running })
            }
            (None, previous) => previous,
        };
        std::thread::sleep(POLL);
    }
    tasks
}

fn command_result(task: &Task, status: CommandStatus) -> CommandResult {
    CommandResult {
        id: task.id.clone(),
        command_name: task.command.name().into(),
        command_status: status,
        command_error: None,
        command_result: None,
    }
}
