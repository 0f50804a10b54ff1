//! Downloads against real servers on 127.0.0.1: an axum server that implements `Range`/`If-Range` itself and
//! injects faults (cut connections, stalls, error statuses, ignored ranges, files that change), and
//! `openssl s_server` for HTTPS with a CA bundle.

use std::collections::{HashMap, VecDeque};

use ferric_runner::error_chain as chain;
use std::io::{self, Read};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tokio::runtime::Handle;

use ferric_agent::checksum::{self, Algorithm, ChecksumError, Expected};
use ferric_agent::download::{self, Download, DownloadConfig, DownloadError};
use ferric_protocol::ImageInfo;

/// A file as the server has it.
#[derive(Debug, Clone)]
struct Version {
    data: Vec<u8>,
    etag: Option<String>,
    last_modified: String,
}

impl Version {
    fn new(data: Vec<u8>, etag: &str) -> Self {
        Self { data, etag: Some(etag.to_owned()), last_modified: "Sat, 01 Jan 2000 00:00:00 GMT".to_owned() }
    }

    /// What `If-Range` must carry to get a piece of this version.
    fn validator(&self) -> &str {
        self.etag.as_deref().unwrap_or(&self.last_modified)
    }
}

/// What the server does to one request, in order; requests beyond the script are served normally.
enum Fault {
    /// Sends this many bytes of the body, then breaks the connection.
    Cut(usize),
    /// Sends this many bytes of the body, then goes silent.
    Stall(usize),
    Status(StatusCode),
    /// Answers 200 with the whole file whatever `Range` says.
    IgnoreRange,
    /// The file changes before this request is answered (and `If-Range` is honoured).
    Replace(&'static str, Version),
}

/// The headers of a request the server saw.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    path: String,
    range: Option<String>,
    if_range: Option<String>,
}

#[derive(Default)]
struct ServerState {
    files: HashMap<String, Version>,
    script: VecDeque<Fault>,
    seen: Vec<Seen>,
}

struct TestServer {
    base: String,
    state: Arc<Mutex<ServerState>>,
}

impl TestServer {
    async fn start(files: Vec<(&str, Version)>, script: Vec<Fault>) -> Self {
        let state = Arc::new(Mutex::new(ServerState {
            files: files.into_iter().map(|(path, version)| (path.to_owned(), version)).collect(),
            script: script.into(),
            seen: Vec::new(),
        }));
        let app = axum::Router::new().fallback(serve).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base: format!("http://{addr}"), state }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers.get(name).map(|value| value.to_str().unwrap().to_owned())
}

async fn serve(State(state): State<Arc<Mutex<ServerState>>>, uri: Uri, headers: HeaderMap) -> Response {
    let range = header_text(&headers, header::RANGE);
    let if_range = header_text(&headers, header::IF_RANGE);
    let (version, fault) = {
        let mut state = state.lock().unwrap();
        state.seen.push(Seen { path: uri.path().to_owned(), range: range.clone(), if_range: if_range.clone() });
        let fault = state.script.pop_front();
        if let Some(Fault::Replace(path, version)) = &fault {
            state.files.insert((*path).to_owned(), version.clone());
        }
        (state.files.get(uri.path()).cloned(), fault)
    };
    let Some(version) = version else { return StatusCode::NOT_FOUND.into_response() };
    if let Some(Fault::Status(status)) = fault {
        return status.into_response();
    }
    let honoured = !matches!(fault, Some(Fault::IgnoreRange))
        && if_range.as_deref().is_none_or(|validator| validator == version.validator());
    let start = range.filter(|_| honoured).map(|range| {
        let start = range.strip_prefix("bytes=").and_then(|r| r.strip_suffix('-')).expect("only bytes=N- is sent");
        start.parse::<usize>().unwrap()
    });
    let total = version.data.len();
    let mut response = Response::builder()
        .header(header::LAST_MODIFIED, &version.last_modified)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_LENGTH, total - start.unwrap_or(0));
    if let Some(etag) = &version.etag {
        response = response.header(header::ETAG, etag);
    }
    response = match start {
        Some(start) if start >= total => return StatusCode::RANGE_NOT_SATISFIABLE.into_response(),
        Some(start) => response
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes {start}-{}/{total}", total - 1)),
        None => response.status(StatusCode::OK),
    };
    response.body(body(version.data[start.unwrap_or(0)..].to_vec(), fault)).unwrap()
}

/// The body in 64 KiB pieces, cut or stalled as the fault says.
fn body(data: Vec<u8>, fault: Option<Fault>) -> Body {
    let (sent, ending) = match fault {
        Some(Fault::Cut(n)) => (n, Some(false)),
        Some(Fault::Stall(n)) => (n, Some(true)),
        _ => (data.len(), None),
    };
    let pieces: Vec<io::Result<Vec<u8>>> = data[..sent].chunks(64 << 10).map(|piece| Ok(piece.to_vec())).collect();
    let ending = futures_util::stream::once(async move {
        match ending {
            // Give the bytes time to leave before the connection breaks.
            Some(false) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Some(Err(io::Error::other("injected fault: connection cut")))
            }
            Some(true) => std::future::pending().await,
            None => None,
        }
    })
    .filter_map(|item| async move { item });
    Body::from_stream(futures_util::stream::iter(pieces).chain(ending))
}

/// 1 MiB and a bit of bytes that differ from their neighbours.
fn image() -> Vec<u8> {
    (0..(1 << 20) + 4321).map(|i: u32| (i.wrapping_mul(2654435761) >> 24) as u8).collect()
}

/// Short timeouts and backoffs so that every test takes well under five seconds.
fn config(attempts: u32) -> DownloadConfig {
    DownloadConfig {
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_millis(300),
        attempts,
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(80),
        ca_bundle: None,
    }
}

async fn open(urls: &[String], config: &DownloadConfig) -> Result<Download, DownloadError> {
    download::open(&download::http_client(config).unwrap(), urls, config).await
}

/// Reads the whole body on a blocking thread, the way the image writer does.
async fn read_all(download: Download) -> io::Result<Vec<u8>> {
    let handle = Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut body = Vec::new();
        download.into_reader(handle).read_to_end(&mut body)?;
        Ok(body)
    })
    .await
    .unwrap()
}

/// The download error inside a reader's io::Error.
fn download_error(error: &io::Error) -> &DownloadError {
    error.get_ref().and_then(|inner| inner.downcast_ref::<DownloadError>()).unwrap_or_else(|| panic!("{error:?}"))
}

/// Warnings logged by every test of this binary (tests tell theirs apart by the URL, whose port differs).
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;

impl io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        tracing_subscriber::fmt().with_writer(|| LogWriter).with_ansi(false).with_max_level(tracing::Level::WARN).init()
    });
}

/// The retry lines logged for `url`.
fn retries_logged(url: &str) -> Vec<String> {
    let logs = String::from_utf8(LOGS.lock().unwrap().clone()).unwrap();
    logs.lines().filter(|line| line.contains(url) && line.contains("retrying")).map(str::to_owned).collect()
}

fn seen(path: &str, range: Option<&str>, if_range: Option<&str>) -> Seen {
    Seen { path: path.to_owned(), range: range.map(Into::into), if_range: if_range.map(Into::into) }
}

#[tokio::test]
async fn broken_and_stalled_bodies_resume_from_the_byte_where_they_stopped() {
    let cases = [
        ("cut, ETag", Version::new(image(), "\"v1\""), Fault::Cut(300_000)),
        ("stalled, ETag", Version::new(image(), "\"v1\""), Fault::Stall(700_001)),
        ("cut, Last-Modified only", Version { etag: None, ..Version::new(image(), "") }, Fault::Cut(65_536)),
    ];
    capture_logs();
    for (name, version, fault) in cases {
        let started = Instant::now();
        let at = match fault {
            Fault::Cut(n) | Fault::Stall(n) => n,
            _ => unreachable!(),
        };
        let validator = version.validator().to_owned();
        let server = TestServer::start(vec![("/disk.img", version)], vec![fault]).await;
        let download = open(&[server.url("/disk.img")], &config(3)).await.unwrap();
        assert_eq!(download.content_length(), Some(image().len() as u64), "{name}");
        let body = read_all(download).await.unwrap();
        assert!(body == image(), "{name}: the bytes read differ from the file");
        let range = format!("bytes={at}-");
        assert_eq!(
            server.seen(),
            [seen("/disk.img", None, None), seen("/disk.img", Some(&range), Some(&validator))],
            "{name}"
        );
        let logged = retries_logged(&server.url("/disk.img"));
        assert_eq!(logged.len(), 1, "{name}: {logged:?}");
        for field in [format!("bytes={at}"), "attempt=2".to_owned(), "of=3".to_owned(), "wait_ms=20".to_owned()] {
            assert!(logged[0].contains(&field), "{name}: {field} missing in {logged:?}");
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{name}: {:?}", started.elapsed());
    }
}

#[tokio::test]
async fn a_server_that_ignores_range_is_skipped_to_the_right_byte() {
    let server = TestServer::start(
        vec![("/disk.img", Version::new(image(), "\"v1\""))],
        vec![Fault::Cut(100_000), Fault::IgnoreRange],
    )
    .await;
    let body = read_all(open(&[server.url("/disk.img")], &config(3)).await.unwrap()).await.unwrap();
    assert!(body == image(), "the bytes read differ from the file");
    assert_eq!(server.seen()[1], seen("/disk.img", Some("bytes=100000-"), Some("\"v1\"")));
}

#[tokio::test]
async fn not_found_fails_at_once_naming_url_status_and_bytes() {
    let server = TestServer::start(vec![], vec![]).await;
    let url = server.url("/missing.img");
    let error = open(std::slice::from_ref(&url), &config(5)).await.unwrap_err();
    assert!(
        matches!(&error, DownloadError::Status { url: u, status: 404, bytes: 0, attempts: 1 } if *u == url),
        "{error:?}"
    );
    assert_eq!(error.to_string(), format!("downloading {url} failed: HTTP 404 (0 bytes received, 1 attempt(s))"));
    assert_eq!(server.seen().len(), 1, "a 404 is not retried");
}

#[tokio::test]
async fn service_unavailable_is_retried_then_succeeds() {
    let server = TestServer::start(
        vec![("/disk.img", Version::new(image(), "\"v1\""))],
        vec![Fault::Status(StatusCode::SERVICE_UNAVAILABLE), Fault::Status(StatusCode::TOO_MANY_REQUESTS)],
    )
    .await;
    let body = read_all(open(&[server.url("/disk.img")], &config(3)).await.unwrap()).await.unwrap();
    assert!(body == image());
    assert_eq!(server.seen().len(), 3);
}

#[tokio::test]
async fn exhausted_attempts_report_status_bytes_and_attempts() {
    let image_bytes = Version::new(image(), "\"v1\"");
    let unavailable = || Fault::Status(StatusCode::SERVICE_UNAVAILABLE);

    // Before any byte: every attempt answered 503.
    let server = TestServer::start(vec![("/disk.img", image_bytes.clone())], vec![unavailable(), unavailable()]).await;
    let url = server.url("/disk.img");
    let error = open(std::slice::from_ref(&url), &config(2)).await.unwrap_err();
    assert_eq!(error.to_string(), format!("downloading {url} failed: HTTP 503 (0 bytes received, 2 attempt(s))"));

    // In the middle: the body broke at byte 200000, then every resume failed.
    let script = vec![Fault::Cut(200_000), unavailable(), Fault::Cut(0)];
    let server = TestServer::start(vec![("/disk.img", image_bytes.clone())], script).await;
    let url = server.url("/disk.img");
    let error = read_all(open(std::slice::from_ref(&url), &config(3)).await.unwrap()).await.unwrap_err();
    let error = download_error(&error);
    assert!(
        matches!(error, DownloadError::Transport { bytes: 200_000, attempts: 3, url: u, .. } if *u == url),
        "{error:?}"
    );
    assert!(error.to_string().contains("200000 bytes received, 3 attempt(s)"), "{error}");
    assert_eq!(server.seen().len(), 3, "the first request and two resumes");

    // A client error while resuming is final at once.
    let script = vec![Fault::Cut(200_000), Fault::Status(StatusCode::FORBIDDEN)];
    let server = TestServer::start(vec![("/disk.img", image_bytes)], script).await;
    let error = read_all(open(&[server.url("/disk.img")], &config(5)).await.unwrap()).await.unwrap_err();
    let error = download_error(&error);
    // Two attempts: the one that broke and the resume that was refused.
    assert!(matches!(error, DownloadError::Status { status: 403, bytes: 200_000, attempts: 2, .. }), "{error:?}");
    assert_eq!(server.seen().len(), 2);
}

#[tokio::test]
async fn a_file_that_changed_between_attempts_is_not_spliced() {
    let new = Version::new(image().iter().map(|b| b ^ 0xff).collect(), "\"v2\"");
    let script = vec![Fault::Cut(300_000), Fault::Replace("/disk.img", new)];
    let server = TestServer::start(vec![("/disk.img", Version::new(image(), "\"v1\""))], script).await;
    let url = server.url("/disk.img");
    let download = open(std::slice::from_ref(&url), &config(3)).await.unwrap();
    let handle = Handle::current();
    let (error, read_again) = tokio::task::spawn_blocking(move || {
        let mut reader = download.into_reader(handle);
        let error = reader.read_to_end(&mut Vec::new()).unwrap_err();
        (error, reader.read(&mut [0; 16]))
    })
    .await
    .unwrap();
    let error = download_error(&error);
    assert!(matches!(error, DownloadError::Changed { bytes: 300_000, .. }), "{error:?}");
    let change = r#"ETag "\"v1\"" became "\"v2\"""#;
    assert_eq!(
        error.to_string(),
        format!(
            "{url} changed on the server after 300000 bytes were received ({change}); the download must start over"
        )
    );
    assert!(read_again.is_err(), "reading on after the error must not look like the end of the file");
    assert_eq!(server.seen()[1], seen("/disk.img", Some("bytes=300000-"), Some("\"v1\"")), "If-Range was sent");
}

#[tokio::test]
async fn each_url_is_tried_in_turn() {
    let server = TestServer::start(vec![("/b.img", Version::new(image(), "\"b\""))], vec![]).await;
    let urls = [server.url("/a.img"), server.url("/b.img")];
    let download = open(&urls, &config(2)).await.unwrap();
    assert_eq!(download.url(), urls[1]);
    assert!(read_all(download).await.unwrap() == image());

    let urls = [server.url("/a.img"), server.url("/c.img")];
    let error = open(&urls, &config(2)).await.unwrap_err().to_string();
    assert!(
        error.starts_with("every URL failed: downloading ") && error.contains("/c.img failed: HTTP 404"),
        "{error}"
    );
}

#[tokio::test]
async fn small_files_are_fetched_whole_and_capped() {
    let server = TestServer::start(
        vec![("/meta.json", Version::new(b"{\"a\": 1}".to_vec(), "\"m\""))],
        vec![Fault::Status(StatusCode::BAD_GATEWAY), Fault::Cut(3)],
    )
    .await;
    let client = download::http_client(&config(3)).unwrap();
    let url = server.url("/meta.json");
    let body = download::fetch_small_with(&client, &url, 100, &config(3)).await.unwrap();
    assert_eq!(body, b"{\"a\": 1}");
    assert_eq!(server.seen().len(), 3, "a 502 and a broken body were retried");
    let error = download::fetch_small_with(&client, &url, 5, &config(3)).await.unwrap_err();
    assert_eq!(error.to_string(), format!("{url} is larger than the 5 bytes allowed"));
}

#[tokio::test]
async fn checksum_files_are_fetched_and_searched_for_the_image_name() {
    let sha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let md5 = "D41D8CD98F00B204E9800998ECF8427E";
    let sums = format!("# checksums\n{md5}  other.img\n{sha256} *disk.qcow2\n");
    let bsd = format!("SHA512 (disk.qcow2) = {}\n", "ab".repeat(64));
    let server = TestServer::start(
        vec![
            ("/SHA256SUMS", Version::new(sums.into_bytes(), "\"s\"")),
            ("/BSD", Version::new(bsd.into_bytes(), "\"b\"")),
            ("/bare", Version::new(format!("{md5}\n").into_bytes(), "\"h\"")),
        ],
        vec![],
    )
    .await;
    let client = reqwest::Client::new();
    let info = |image: &str, sums: &str| ImageInfo {
        urls: vec![server.url(image)],
        checksum: Some(server.url(sums)),
        ..Default::default()
    };

    let cases = [
        ("sha256sum style", info("/images/disk.qcow2?x=1", "/SHA256SUMS"), Algorithm::Sha256, sha256.to_owned()),
        ("md5 line", info("/other.img", "/SHA256SUMS"), Algorithm::Md5, md5.to_lowercase()),
        ("BSD style", info("/disk.qcow2", "/BSD"), Algorithm::Sha512, "ab".repeat(64)),
        ("bare hash", info("/whatever.raw", "/bare"), Algorithm::Md5, md5.to_lowercase()),
    ];
    for (name, info, algorithm, hex) in cases {
        assert_eq!(checksum::resolve(&info, &client).await.unwrap(), Expected { algorithm, hex }, "{name}");
    }

    let error = checksum::resolve(&info("/disk.raw", "/SHA256SUMS"), &client).await.unwrap_err();
    assert!(matches!(error, ChecksumError::NotListed { .. }));
    assert_eq!(
        error.to_string(),
        format!(
            r#"checksum file {} has no line for "disk.raw"; it lists "other.img", "disk.qcow2""#,
            server.url("/SHA256SUMS")
        )
    );
    let error = checksum::resolve(&info("/disk.raw", "/MISSING"), &client).await.unwrap_err();
    let text = chain(&error);
    assert!(text.contains("cannot fetch checksum file") && text.contains("/MISSING failed: HTTP 404"), "{text}");
}

/// `openssl s_server -WWW`, serving its working directory; killed when dropped.
struct OpensslServer {
    child: Child,
    port: u16,
}

impl Drop for OpensslServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let mut command = Command::new("openssl");
    command.args(args).current_dir(dir);
    ferric_runner::run(format!("openssl {}", args[0]), &mut command).unwrap();
}

/// A CA (`ca.pem`) and a certificate for 127.0.0.1 signed by it (`server.pem`, `server.key`).
fn make_certificates(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        dir,
        &[
            &["req", "-x509", "-subj", "/CN=Ferric test CA", "-addext", "basicConstraints=critical,CA:TRUE"][..],
            &ec[..],
            &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2"],
        ]
        .concat(),
    );
    openssl(
        dir,
        &[&["req", "-subj", "/CN=127.0.0.1"][..], &ec[..], &["-keyout", "server.key", "-out", "server.csr"]].concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
}

fn start_openssl_server(dir: &Path) -> OpensslServer {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("openssl")
        .args(["s_server", "-WWW", "-quiet", "-accept", &format!("127.0.0.1:{port}")])
        .args(["-cert", "server.pem", "-key", "server.key"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = OpensslServer { child, port };
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "openssl s_server did not listen on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    server
}

#[tokio::test]
async fn https_downloads_trust_the_ca_bundle_and_only_it() {
    capture_logs();
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    std::fs::write(dir.path().join("image.bin"), image()).unwrap();
    let server = start_openssl_server(dir.path());
    let url = format!("https://127.0.0.1:{}/image.bin", server.port);

    let trusted = DownloadConfig { ca_bundle: Some(dir.path().join("ca.pem")), ..config(2) };
    let body = read_all(open(std::slice::from_ref(&url), &trusted).await.unwrap()).await.unwrap();
    assert!(body == image(), "the bytes read over HTTPS differ from the file");
    assert_eq!(retries_logged(&url), Vec::<String>::new(), "the body ended cleanly");

    let error = open(std::slice::from_ref(&url), &config(3)).await.unwrap_err();
    let text = chain(&error);
    assert!(text.contains(&url) && text.contains("certificate"), "{text}");
    assert!(matches!(error, DownloadError::Transport { attempts: 1, bytes: 0, .. }), "not retried: {error:?}");
}

#[test]
fn unusable_ca_bundles_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n").unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "no certificates here\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let cases = [
        (&missing, "cannot read CA bundle"),
        (&garbage, "is not a valid PEM certificate bundle"),
        (&empty, "holds no PEM certificate"),
    ];
    for (path, message) in cases {
        let config = DownloadConfig { ca_bundle: Some(path.clone()), ..config(1) };
        let error = download::http_client(&config).unwrap_err().to_string();
        assert!(error.contains(&path.display().to_string()) && error.contains(message), "{error}");
    }
}
