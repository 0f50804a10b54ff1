//! The agent's `execute_clean_step` command end to end against a fake controller on 127.0.0.1: the task
//! comes in a heartbeat, runs on a blocking thread, and its result (or error) comes back in one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use ferric_agent::agent::{self, AgentConfig};
use ferric_agent::deploy::{DeployConfig, Disk};
use ferric_agent::download::DownloadConfig;
use ferric_agent::logtail::LogTail;
use ferric_agent::partition::BootMode;
use ferric_protocol::{
    CleanStep, CleanStepResult, Command as AgentCommand, CommandResult, CommandStatus, Heartbeat, HeartbeatResponse,
    LookupConfig, LookupNode, LookupResponse, Task,
};
use serde_json::json;

const NODE: &str = "6d8b4f4e-4a9f-4c1e-9a55-0c1f4c2b9d11";

/// What the fake controller hands out and what it heard.
struct Controller {
    task: Option<Task>,
    results: Vec<CommandResult>,
}

async fn lookup() -> Json<LookupResponse> {
    Json(LookupResponse {
        node: LookupNode { uuid: NODE.into(), name: None, properties: json!({}), instance_info: json!({}) },
        config: LookupConfig {
            heartbeat_timeout: 300,
            heartbeat_interval: 1,
            agent_token: "token".into(),
            agent_token_required: true,
        },
    })
}

async fn heartbeat(
    State(state): State<Arc<Mutex<Controller>>>,
    Json(beat): Json<Heartbeat>,
) -> Json<HeartbeatResponse> {
    let mut state = state.lock().unwrap();
    state.results.extend(beat.command);
    Json(HeartbeatResponse { task: state.task.take(), heartbeat_interval: 1 })
}

/// Runs the agent with `--target-disk device` until it reports a finished `command`.
async fn run_step(device: &Path, step: &str) -> CommandResult {
    let task = Task {
        id: "task-1".into(),
        command: AgentCommand::ExecuteCleanStep {
            step: CleanStep { interface: "deploy".into(), step: step.into(), args: json!({}) },
            skip_block_devices: vec![],
        },
    };
    let state = Arc::new(Mutex::new(Controller { task: Some(task), results: Vec::new() }));
    let app = Router::new()
        .route(ferric_protocol::LOOKUP_PATH, get(lookup))
        .route(&ferric_protocol::heartbeat_path(NODE), post(heartbeat))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let root = tempfile::tempdir().unwrap();
    let config = AgentConfig {
        api_url,
        boot_mac: None,
        root: root.path().to_owned(),
        state_dir: root.path().join("state"),
        deploy: DeployConfig {
            disk: Disk::Fixed(device.to_owned()),
            download: DownloadConfig::default(),
            booted: BootMode::Uefi,
            configure_boot: false,
        },
        power_actions: false,
    };
    let agent = tokio::spawn(agent::run(config, LogTail::default()));
    let deadline = Instant::now() + Duration::from_secs(60);
    let finished = loop {
        let done = state.lock().unwrap().results.iter().find(|r| r.command_status != CommandStatus::Running).cloned();
        if let Some(done) = done {
            break done;
        }
        assert!(Instant::now() < deadline, "no finished command reported: {:?}", state.lock().unwrap().results);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    agent.abort();
    server.abort();
    finished
}

struct Loop(PathBuf, tempfile::NamedTempFile);

impl Loop {
    fn new(len: usize) -> Loop {
        let backing = tempfile::NamedTempFile::new_in("/var/tmp").unwrap();
        std::fs::write(backing.path(), vec![0x5a; len]).unwrap();
        let mut losetup = Command::new("losetup");
        losetup.args(["-f", "--show"]).arg(backing.path());
        let device = ferric_runner::run("losetup", &mut losetup).unwrap().stdout.trim().to_owned();
        Loop(PathBuf::from(device), backing)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = ferric_runner::run("losetup -d", Command::new("losetup").arg("-d").arg(&self.0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_step_runs_and_reports_its_result() {
    let device = Loop::new(16 << 20);
    let finished = run_step(&device.0, "erase_devices").await;
    assert_eq!((finished.id.as_str(), finished.command_name.as_str()), ("task-1", "execute_clean_step"));
    assert_eq!(finished.command_status, CommandStatus::Succeeded, "{:?}", finished.command_error);
    let result: CleanStepResult = serde_json::from_value(finished.command_result.unwrap()).unwrap();
    let [erased] = &result.devices[..] else { panic!("{result:?}") };
    assert_eq!((result.step.as_str(), erased.device.as_str()), ("erase_devices", device.0.to_str().unwrap()));
    assert_eq!((erased.method.as_str(), erased.bytes), ("write zeroes", 16 << 20));
    assert!(std::fs::read(device.1.path()).unwrap().iter().all(|byte| *byte == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_step_fails_with_the_reason() {
    let device = Loop::new(1 << 20);
    let finished = run_step(&device.0, "erase_pstore").await;
    assert_eq!(finished.command_status, CommandStatus::Failed);
    assert_eq!(
        finished.command_error.as_deref(),
        Some(
            "clean step deploy.erase_pstore is not supported; this agent runs deploy.erase_devices, \
             deploy.erase_devices_metadata"
        )
    );
    assert!(std::fs::read(device.1.path()).unwrap().iter().all(|byte| *byte == 0x5a), "nothing erased");
}
