//! The benchmarks against a real controller over HTTP, next to Ironic's figures.
//!
//! Run with `cargo bench -p ferric-controller --bench api`. The sizes default to the issue's
//! and can be shrunk for a quick run:
//! `FERRIC_BENCH_NODES=200 FERRIC_BENCH_LIST_NODES=100 FERRIC_BENCH_PAGED_NODES=500 FERRIC_BENCH_AGENTS=500
//! FERRIC_BENCH_HEARTBEAT_SECS=2 cargo bench -p ferric-controller --bench api`. Also:
//! `FERRIC_BENCH_LIST_RUNS` (listings whose median is reported), `FERRIC_BENCH_CONCURRENCY` (API requests
//! in flight) and `FERRIC_BENCH_AGENT_CONCURRENCY` (heartbeats in flight).

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferric_controller::{serve, Config};
use ferric_protocol::{CommandResult, CommandStatus, Heartbeat, HeartbeatResponse, LookupResponse, Progress, Task};
use reqwest::{Client, Method, RequestBuilder, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;

const API_VERSION: &str = "1.115";
/// Ironic's `[api]max_limit`, the page size of the paged listing.
const PAGE_LIMIT: usize = 1000;

/// Sizes and durations, from the environment (defaults: the figures).
struct Settings {
    created_nodes: usize,
    listed_nodes: usize,
    paged_nodes: usize,
    agents: usize,
    heartbeat_duration: Duration,
    list_runs: usize,
    api_concurrency: usize,
    agent_concurrency: usize,
}

fn env_number(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(text) => text.parse().unwrap_or_else(|_| panic!("{name} must be a whole number, not {text:?}")),
        Err(_) => default,
    }
}

impl Settings {
    fn from_env() -> Settings {
        let settings = Settings {
            created_nodes: env_number("FERRIC_BENCH_NODES", 2000),
            listed_nodes: env_number("FERRIC_BENCH_LIST_NODES", 1000),
            paged_nodes: env_number("FERRIC_BENCH_PAGED_NODES", 10_000),
            agents: env_number("FERRIC_BENCH_AGENTS", 10_000),
            heartbeat_duration: Duration::from_secs(env_number("FERRIC_BENCH_HEARTBEAT_SECS", 10) as u64),
            list_runs: env_number("FERRIC_BENCH_LIST_RUNS", 5),
            api_concurrency: env_number("FERRIC_BENCH_CONCURRENCY", 16),
            agent_concurrency: env_number("FERRIC_BENCH_AGENT_CONCURRENCY", 64),
        };
        assert!(settings.listed_nodes <= PAGE_LIMIT, "FERRIC_BENCH_LIST_NODES is at most one page ({PAGE_LIMIT})");
        settings
    }
}

/// A controller served in this process on 127.0.0.1:0, with its database in a temporary directory.
struct Controller {
    base: String,
    http: Client,
    _dir: TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Controller {
    async fn start() -> Controller {
        let dir = tempfile::tempdir().expect("temporary directory");
        let ramdisk = dir.path().join("ramdisk");
        std::fs::create_dir(&ramdisk).expect("ramdisk directory");
        let config = Config::new(dir.path().join("ferric.sqlite"), "http://127.0.0.1:6385", ramdisk);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let base = format!("http://{}", listener.local_addr().expect("local address"));
        let task = tokio::spawn(async move {
            if let Err(error) = serve(config, listener).await {
                panic!("controller failed: {error:?}");
            }
        });
        let http = Client::builder().pool_max_idle_per_host(256).build().expect("HTTP client");
        Controller { base, http, _dir: dir, task }
    }

    fn api(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base)).header("X-OpenStack-Ironic-API-Version", API_VERSION)
    }

    /// Sends `request`, insisting on `expected`, and returns the JSON body (null when empty).
    async fn expect(request: RequestBuilder, expected: StatusCode) -> Value {
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let text = response.text().await.expect("response body");
        assert_eq!(status, expected, "unexpected answer: {text}");
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).expect("JSON body")
        }
    }

    /// Creates nodes `first..first + count` (named `bench-<i>`) with `concurrency` requests in flight.
    async fn create_nodes(self: &Arc<Self>, first: usize, count: usize, concurrency: usize) -> Vec<String> {
        run_concurrently(count, concurrency, {
            let controller = Arc::clone(self);
            move |index| {
                let controller = Arc::clone(&controller);
                async move {
                    let body = json!({
                        "name": format!("bench-{}", first + index),
                        "driver": "fake-hardware",
                        "automated_clean": false,
                        "properties": {"cpus": 8, "memory_mb": 16384, "local_gb": 100, "cpu_arch": "x86_64"},
                        "driver_info": {"ipmi_address": "127.0.0.1", "ipmi_username": "admin", "ipmi_password": "s"},
                    });
                    let node =
                        Self::expect(controller.api(Method::POST, "/v1/nodes").json(&body), StatusCode::CREATED).await;
                    node["uuid"].as_str().expect("node uuid").to_owned()
                }
            }
        })
        .await
    }
}

/// Runs `job(0..count)` with at most `concurrency` in flight; the results in index order.
async fn run_concurrently<T, F, Fut>(count: usize, concurrency: usize, job: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = T> + Send + 'static,
{
    let job = Arc::new(job);
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (job, next) = (Arc::clone(&job), Arc::clone(&next));
            tokio::spawn(async move {
                let mut done = Vec::new();
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= count {
                        return done;
                    }
                    done.push((index, job(index).await));
                }
            })
        })
        .collect();
    let mut results = Vec::with_capacity(count);
    for worker in workers {
        results.extend(worker.await.expect("worker panicked"));
    }
    results.sort_by_key(|(index, _)| *index);
    results.into_iter().map(|(_, value)| value).collect()
}

/// One listing request: its JSON and the time spent waiting for it (request sent to last byte
/// received, as `curl` times it; the client's own JSON parsing is not counted).
async fn timed_listing(controller: &Controller, url: &str) -> (Value, Duration) {
    let started = Instant::now();
    let response = controller.http.get(url).header("X-OpenStack-Ironic-API-Version", API_VERSION).send().await;
    let response = response.expect("list request sent");
    let status = response.status();
    let body = response.bytes().await.expect("list body");
    let waited = started.elapsed();
    assert_eq!(status, StatusCode::OK, "listing failed: {}", String::from_utf8_lossy(&body));
    (serde_json::from_slice(&body).expect("JSON listing"), waited)
}

fn listed_count(page: &Value) -> usize {
    page["nodes"].as_array().expect("nodes array").len()
}

/// `GET /v1/nodes?detail=True&limit=<limit>` following `next` to the end: the node count and
/// the total time waited.
async fn list_all_pages(controller: &Controller, limit: usize) -> (usize, Duration) {
    let mut url = format!("{}/v1/nodes?detail=True&limit={limit}", controller.base);
    let (mut total, mut waited) = (0, Duration::ZERO);
    loop {
        let (page, took) = timed_listing(controller, &url).await;
        total += listed_count(&page);
        waited += took;
        match page["next"].as_str() {
            Some(next) => url = next.to_owned(),
            None => return (total, waited),
        }
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// One line of the result table.
struct Figure {
    metric: String,
    ferric: String,
    ironic: String,
    ratio: String,
}

fn throughput(metric: String, per_second: f64, ironic: Option<f64>, ironic_text: &str) -> Figure {
    Figure {
        metric,
        ferric: format!("{per_second:.0}/s"),
        ironic: ironic_text.to_owned(),
        ratio: ironic.map_or("n/a".to_owned(), |ironic| format!("{:.0}x better", per_second / ironic)),
    }
}

fn latency(metric: String, took: Duration, ironic_ms: Option<f64>) -> Figure {
    let ms = took.as_secs_f64() * 1000.0;
    Figure {
        metric,
        ferric: format!("{ms:.1} ms"),
        ironic: ironic_ms.map_or("n/a".to_owned(), |ironic| format!("{ironic:.0} ms")),
        ratio: ironic_ms.map_or("n/a".to_owned(), |ironic| format!("{:.1}x better", ironic / ms)),
    }
}

async fn bench_create(settings: &Settings) -> Figure {
    let controller = Arc::new(Controller::start().await);
    let started = Instant::now();
    controller.create_nodes(0, settings.created_nodes, settings.api_concurrency).await;
    let rate = settings.created_nodes as f64 / started.elapsed().as_secs_f64();
    throughput(
        format!("nodes created ({} nodes, {} in flight)", settings.created_nodes, settings.api_concurrency),
        rate,
        Some(37.0),
        "37/s",
    )
}

/// The two listing figures, on one controller grown from `listed_nodes` to `paged_nodes`.
async fn bench_listing(settings: &Settings) -> Vec<Figure> {
    let controller = Arc::new(Controller::start().await);
    controller.create_nodes(0, settings.listed_nodes, settings.api_concurrency).await;
    let mut samples = Vec::new();
    for _ in 0..settings.list_runs.max(1) {
        let (page, took) = timed_listing(&controller, &format!("{}/v1/nodes?detail=True", controller.base)).await;
        samples.push(took);
        assert_eq!(listed_count(&page), settings.listed_nodes);
    }
    let mut figures = vec![latency(
        format!("GET /v1/nodes?detail=True, {} nodes (median of {})", settings.listed_nodes, samples.len()),
        median(samples),
        Some(443.0),
    )];
    let missing = settings.paged_nodes.saturating_sub(settings.listed_nodes);
    controller.create_nodes(settings.listed_nodes, missing, settings.api_concurrency).await;
    let total = settings.listed_nodes + missing;
    let (listed, took) = list_all_pages(&controller, PAGE_LIMIT).await;
    assert_eq!(listed, total);
    figures.push(latency(format!("GET /v1/nodes?detail=True, {total} nodes paged by {PAGE_LIMIT}"), took, None));
    figures
}

/// One simulated agent: its node, its token and the task it reports as running.
struct Agent {
    node: String,
    token: String,
    task: Task,
}

fn running_heartbeat(agent: &Agent, bytes_done: u64) -> Heartbeat {
    Heartbeat {
        agent_token: agent.token.clone(),
        agent_version: "bench".to_owned(),
        command: Some(CommandResult {
            id: agent.task.id.clone(),
            command_name: agent.task.command.name().to_owned(),
            command_status: CommandStatus::Running,
            command_error: None,
            command_result: None,
        }),
        progress: Some(Progress {
            stage: "writing image".to_owned(),
            bytes_done,
            bytes_total: Some(10 << 30),
            bytes_per_second: 200e6,
            eta_seconds: Some(30.0),
        }),
        log_tail: vec!["writing image".to_owned()],
        inventory: None,
    }
}

/// Brings node `index` to `wait call-back`, then looks it up and heartbeats once as its agent would.
async fn deploy_and_boot_agent(controller: Arc<Controller>, node: String, index: usize) -> Agent {
    let mac = format!(
        "52:54:{:02x}:{:02x}:{:02x}:{:02x}",
        (index >> 24) & 0xff,
        (index >> 16) & 0xff,
        (index >> 8) & 0xff,
        index & 0xff
    );
    let port = json!({"address": mac, "node_uuid": node});
    Controller::expect(controller.api(Method::POST, "/v1/ports").json(&port), StatusCode::CREATED).await;
    let provision = |target: &str| {
        controller.api(Method::PUT, &format!("/v1/nodes/{node}/states/provision")).json(&json!({"target": target}))
    };
    for target in ["manage", "provide"] {
        Controller::expect(provision(target), StatusCode::ACCEPTED).await;
    }
    let image = json!([
        {"op": "add", "path": "/instance_info/image_source", "value": "http://127.0.0.1:8080/disk.raw"},
        {"op": "add", "path": "/instance_info/image_checksum", "value": "a".repeat(64)},
        {"op": "add", "path": "/instance_info/image_disk_format", "value": "raw"},
    ]);
    Controller::expect(controller.api(Method::PATCH, &format!("/v1/nodes/{node}")).json(&image), StatusCode::OK).await;
    Controller::expect(provision("active"), StatusCode::ACCEPTED).await;

    let lookup = controller
        .http
        .get(format!("{}{}?addresses={mac}", controller.base, ferric_protocol::LOOKUP_PATH))
        .header(ferric_protocol::API_VERSION_HEADER, ferric_protocol::AGENT_API_VERSION);
    let lookup: LookupResponse =
        serde_json::from_value(Controller::expect(lookup, StatusCode::OK).await).expect("lookup");
    let first = Heartbeat {
        agent_token: lookup.config.agent_token.clone(),
        agent_version: "bench".to_owned(),
        command: None,
        progress: None,
        log_tail: Vec::new(),
        inventory: None,
    };
    let answer: HeartbeatResponse =
        serde_json::from_value(Controller::expect(heartbeat_request(&controller, &node, &first), StatusCode::OK).await)
            .expect("heartbeat answer");
    Agent { node, token: lookup.config.agent_token, task: answer.task.expect("a task in the first heartbeat answer") }
}

fn heartbeat_request(controller: &Controller, node: &str, heartbeat: &Heartbeat) -> RequestBuilder {
    controller
        .http
        .post(format!("{}{}", controller.base, ferric_protocol::heartbeat_path(node)))
        .header(ferric_protocol::API_VERSION_HEADER, ferric_protocol::AGENT_API_VERSION)
        .json(heartbeat)
}

async fn bench_heartbeats(settings: &Settings) -> Figure {
    let controller = Arc::new(Controller::start().await);
    let nodes = controller.create_nodes(0, settings.agents, settings.api_concurrency).await;
    let nodes = Arc::new(nodes);
    let setup_started = Instant::now();
    let agents = run_concurrently(settings.agents, settings.api_concurrency, {
        let (controller, nodes) = (Arc::clone(&controller), Arc::clone(&nodes));
        move |index| deploy_and_boot_agent(Arc::clone(&controller), nodes[index].clone(), index)
    })
    .await;
    eprintln!("  {} agents deployed and booted in {:.1?}", agents.len(), setup_started.elapsed());

    let agents = Arc::new(agents);
    let (accepted, refused, next) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicUsize::new(0)));
    let deadline = Instant::now() + settings.heartbeat_duration;
    let started = Instant::now();
    let workers: Vec<_> = (0..settings.agent_concurrency)
        .map(|_| {
            let (controller, agents) = (Arc::clone(&controller), Arc::clone(&agents));
            let (accepted, refused, next) = (Arc::clone(&accepted), Arc::clone(&refused), Arc::clone(&next));
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let turn = next.fetch_add(1, Ordering::Relaxed);
                    let agent = &agents[turn % agents.len()];
                    let heartbeat = running_heartbeat(agent, (turn / agents.len()) as u64 * (64 << 20));
                    let answered = heartbeat_request(&controller, &agent.node, &heartbeat).send().await;
                    match answered {
                        Ok(response) if response.status().is_success() => {
                            let _ = response.bytes().await;
                            accepted.fetch_add(1, Ordering::Relaxed)
                        }
                        _ => refused.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("heartbeat worker panicked");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (accepted, refused) = (accepted.load(Ordering::Relaxed), refused.load(Ordering::Relaxed));
    throughput(
        format!(
            "heartbeats accepted, {} agents, {} in flight ({accepted} ok, {refused} refused in {elapsed:.1} s)",
            settings.agents, settings.agent_concurrency
        ),
        accepted as f64 / elapsed,
        // Against the top of Ironic's range, so the ratio is not flattered.
        Some(25.0),
        "20-25/s, then 503s",
    )
}

fn print_table(figures: &[Figure]) {
    let headers = ["metric", "Ferric", "Ironic 39.0", "Ferric vs Ironic"];
    let rows: Vec<[&str; 4]> =
        figures.iter().map(|f| [f.metric.as_str(), f.ferric.as_str(), f.ironic.as_str(), f.ratio.as_str()]).collect();
    let widths: Vec<usize> =
        (0..4).map(|c| rows.iter().map(|row| row[c].len()).chain([headers[c].len()]).max().unwrap_or(0)).collect();
    let line = |cells: [&str; 4]| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        println!("| {} |", padded.join(" | "));
    };
    line(headers);
    let rule: Vec<String> = widths.iter().map(|width| "-".repeat(*width)).collect();
    println!("|-{}-|", rule.join("-|-"));
    for row in rows {
        line(row);
    }
}

fn main() {
    let settings = Settings::from_env();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let figures = runtime.block_on(async {
        let mut figures = vec![bench_create(&settings).await];
        eprintln!("  {}: {}", figures[0].metric, figures[0].ferric);
        figures.extend(bench_listing(&settings).await);
        figures.push(bench_heartbeats(&settings).await);
        figures
    });
    println!();
    println!("command: cargo bench -p ferric-controller --bench api");
    let overrides: Vec<String> = std::env::vars()
        .filter(|(name, _)| name.starts_with("FERRIC_BENCH_"))
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    if !overrides.is_empty() {
        println!("with: {}", overrides.join(" "));
    }
    print_table(&figures);
}
