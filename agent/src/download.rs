//! Downloads that survive: retries with backoff, resuming with `Range` from the last byte handed on.
//!
//! Retry policy (IPA's): each URL is tried in turn; a 4xx answer other than 408/429 is final for that URL,
//! while 5xx, 408, 429, refused connections, timeouts and broken bodies are retried with exponential backoff.
//! Unlike IPA, a body that breaks is not downloaded again from byte zero: the reader asks for the rest with
//! `Range` + `If-Range`, so a multi-gigabyte image survives a flaky link.

use std::error::Error as _;

use ferric_runner::error_chain as chain;
use std::future::Future;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, CONTENT_RANGE, ETAG, IF_RANGE, LAST_MODIFIED, RANGE};
use reqwest::{Client, Response, StatusCode};
use tokio::runtime::Handle;
use tokio_util::bytes::Bytes;

/// Timeouts, retries and trust for image and checksum downloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadConfig {
    /// Time allowed to establish the TCP connection (and TLS session).
    pub connect_timeout: Duration,
    /// Longest silence while waiting for the response or the next body bytes; a stalled server counts as a
    /// broken connection and the download resumes.
    pub read_timeout: Duration,
    /// Tries per URL, the first included. While a download makes progress the count starts over, so a long
    /// download on a flaky link is not limited to this many interruptions in total.
    pub attempts: u32,
    /// Wait before the first retry; doubled for each further consecutive failure...
    pub backoff_initial: Duration,
    /// ...up to this.
    pub backoff_max: Duration,
    /// PEM file whose certificates are trusted in addition to the built-in roots (an in-house image server).
    pub ca_bundle: Option<PathBuf>,
}

impl Default for DownloadConfig {
    /// IPA-like: 60 s connect and read timeouts, 10 attempts, backoff from 1 s to 30 s.
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(60),
            read_timeout: Duration::from_secs(60),
            attempts: 10,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            ca_bundle: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("cannot read CA bundle {path}")]
    CaBundleRead {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("CA bundle {path} is not a valid PEM certificate bundle")]
    CaBundleInvalid {
        path: PathBuf,
        #[source]
        source: reqwest::Error,
    },
    #[error("CA bundle {path} holds no PEM certificate")]
    CaBundleEmpty { path: PathBuf },
    #[error("cannot set up the HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("no URL to download from")]
    NoUrl,
    #[error("downloading {url} failed: HTTP {status} ({bytes} bytes received, {attempts} attempt(s))")]
    Status { url: String, status: u16, bytes: u64, attempts: u32 },
    #[error("downloading {url} failed ({bytes} bytes received, {attempts} attempt(s))")]
    Transport {
        url: String,
        bytes: u64,
        attempts: u32,
        #[source]
        source: reqwest::Error,
    },
    #[error("downloading {url} failed: the body ended after {bytes} of {total} bytes ({attempts} attempt(s))")]
    Truncated { url: String, bytes: u64, total: u64, attempts: u32 },
    #[error("resuming {url} at byte {bytes} failed: the server sent 206 with Content-Range {content_range:?}")]
    BadContentRange { url: String, bytes: u64, content_range: String },
    #[error("{url} changed on the server after {bytes} bytes were received ({change}); the download must start over")]
    Changed { url: String, bytes: u64, change: String },
    #[error("{url} is larger than the {limit} bytes allowed")]
    TooLarge { url: String, limit: u64 },
    #[error("every URL failed: {}", .failures.iter().map(|e| chain(e)).collect::<Vec<_>>().join("; "))]
    EveryUrlFailed { failures: Vec<DownloadError> },
}

/// A client with the configured timeouts that also trusts every certificate of `config.ca_bundle`.
pub fn http_client(config: &DownloadConfig) -> Result<Client, DownloadError> {
    let mut builder = Client::builder()
        .user_agent(concat!("ferric-agent/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(config.connect_timeout)
        .read_timeout(config.read_timeout);
    let Some(path) = &config.ca_bundle else {
        return builder.build().map_err(DownloadError::Client);
    };
    for certificate in read_ca_bundle(path)? {
        builder = builder.add_root_certificate(certificate);
    }
    // Certificates are only parsed as DER when the client is built.
    builder.build().map_err(|source| DownloadError::CaBundleInvalid { path: path.clone(), source })
}

fn read_ca_bundle(path: &Path) -> Result<Vec<reqwest::Certificate>, DownloadError> {
    let pem = std::fs::read(path).map_err(|source| DownloadError::CaBundleRead { path: path.into(), source })?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|source| DownloadError::CaBundleInvalid { path: path.into(), source })?;
    if certificates.is_empty() {
        return Err(DownloadError::CaBundleEmpty { path: path.into() });
    }
    Ok(certificates)
}

/// An answered GET: headers received, body not yet read.
#[derive(Debug)]
pub struct Download {
    client: Client,
    url: String,
    config: DownloadConfig,
    response: Response,
}

impl Download {
    /// The URL that answered.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The announced body length, for progress; `None` for a chunked body.
    pub fn content_length(&self) -> Option<u64> {
        self.response.content_length()
    }

    /// A blocking reader of the body that resumes where it broke. Its reads block on `handle`, so use it only
    /// on a thread outside the runtime (`tokio::task::spawn_blocking`), never from async code.
    pub fn into_reader(self, handle: Handle) -> DownloadReader {
        let headers = self.response.headers();
        DownloadReader {
            total: self.response.content_length(),
            if_range: if_range_validator(headers),
            identity: Identity::of(headers, self.response.content_length()),
            handle,
            client: self.client,
            url: self.url,
            config: self.config,
            response: Some(self.response),
            chunk: Bytes::new(),
            position: 0,
            failed: false,
        }
    }
}

/// GETs the first URL that answers with success, retrying each as [`DownloadConfig`] says.
pub async fn open(client: &Client, urls: &[String], config: &DownloadConfig) -> Result<Download, DownloadError> {
    let mut failures = Vec::new();
    for url in urls {
        let answered = with_retries(url, config, || async {
            let response = client.get(url).send().await.map_err(|e| Stop::failed(Failure::Transport(e), 0))?;
            match response.status() {
                status if status.is_success() => Ok(response),
                status => Err(Stop::failed(Failure::Status(status), 0)),
            }
        })
        .await;
        match answered {
            Ok(response) => {
                return Ok(Download { client: client.clone(), url: url.clone(), config: config.clone(), response })
            }
            Err(error) => {
                tracing::warn!(%url, error = %chain(&error), "giving up on this URL");
                failures.push(error);
            }
        }
    }
    match failures.len() {
        0 => Err(DownloadError::NoUrl),
        1 => Err(failures.remove(0)),
        _ => Err(DownloadError::EveryUrlFailed { failures }),
    }
}

/// The whole body of a small file (checksum file, config drive), refusing more than `limit` bytes; retried
/// with the default policy.
pub async fn fetch_small(client: &Client, url: &str, limit: u64) -> Result<Vec<u8>, DownloadError> {
    fetch_small_with(client, url, limit, &DownloadConfig::default()).await
}

/// [`fetch_small`] with the retry policy of `config` (its timeouts and CA bundle are the client's business).
pub async fn fetch_small_with(
    client: &Client,
    url: &str,
    limit: u64,
    config: &DownloadConfig,
) -> Result<Vec<u8>, DownloadError> {
    let too_large = || Stop::Fatal(DownloadError::TooLarge { url: url.to_owned(), limit });
    with_retries(url, config, || async {
        let mut response = client.get(url).send().await.map_err(|e| Stop::failed(Failure::Transport(e), 0))?;
        if !response.status().is_success() {
            return Err(Stop::failed(Failure::Status(response.status()), 0));
        }
        if response.content_length().is_some_and(|length| length > limit) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) =
            response.chunk().await.map_err(|e| Stop::failed(Failure::Transport(e), body.len() as u64))?
        {
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    })
    .await
}

/// Blocking reader of a [`Download`]'s body; after a broken connection or a read timeout it asks for the rest
/// (`Range: bytes=<bytes handed on>-`), so what it yields is the file, byte for byte, or an error.
#[derive(Debug)]
pub struct DownloadReader {
    handle: Handle,
    client: Client,
    url: String,
    config: DownloadConfig,
    /// `None` once the body ended or broke.
    response: Option<Response>,
    /// Received but not yet handed on.
    chunk: Bytes,
    /// Bytes handed on: where a resumed request starts.
    position: u64,
    total: Option<u64>,
    /// Sent as `If-Range` so that a server whose file changed answers with the whole new file instead of a
    /// piece of it.
    if_range: Option<HeaderValue>,
    identity: Identity,
    /// Set once an error was returned, so that a caller reading on gets errors, not an end of file.
    failed: bool,
}

impl Read for DownloadReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.failed {
            return Err(io::Error::other(format!("downloading {} failed earlier", self.url)));
        }
        if self.chunk.is_empty() {
            match self.next_chunk().map_err(io::Error::other)? {
                Some(chunk) => self.chunk = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        self.position += n as u64;
        Ok(n)
    }
}

impl DownloadReader {
    /// The next non-empty piece of the body, resuming as often as the policy allows; `None` at the end.
    fn next_chunk(&mut self) -> Result<Option<Bytes>, DownloadError> {
        // Consecutive failures without a byte of progress.
        let mut failures = 0;
        loop {
            let Some(response) = self.response.as_mut() else { return Ok(None) };
            let mut failure = match self.handle.block_on(response.chunk()) {
                Ok(Some(chunk)) if chunk.is_empty() => continue,
                Ok(Some(chunk)) => return Ok(Some(chunk)),
                Ok(None) => match self.total {
                    Some(total) if self.position < total => Failure::Truncated { total },
                    _ => {
                        self.response = None;
                        return Ok(None);
                    }
                },
                Err(error) => Failure::Transport(error),
            };
            self.response = None;
            loop {
                failures += 1;
                let wait = retry_after(&self.url, &self.config, failures, self.position, failure)
                    .inspect_err(|_| self.failed = true)?;
                std::thread::sleep(wait);
                match self.handle.block_on(self.resume()) {
                    Ok((response, first)) => {
                        self.response = Some(response);
                        if !first.is_empty() {
                            return Ok(Some(first));
                        }
                        break;
                    }
                    Err(Stop::Fatal(error)) => {
                        self.failed = true;
                        return Err(error);
                    }
                    Err(Stop::Failed { failure: next, .. }) => failure = next,
                }
            }
        }
    }

    /// Asks for the bytes from `position` on. Returns the response and the first bytes of the rest (non-empty
    /// only when a server that ignored `Range` sent the whole file and the part already handed on was skipped).
    async fn resume(&self) -> Result<(Response, Bytes), Stop> {
        let mut request = self.client.get(&self.url).header(RANGE, format!("bytes={}-", self.position));
        if let Some(validator) = &self.if_range {
            request = request.header(IF_RANGE, validator.clone());
        }
        let failed = |failure| Stop::failed(failure, self.position);
        let mut response = request.send().await.map_err(|e| failed(Failure::Transport(e)))?;
        match response.status() {
            StatusCode::PARTIAL_CONTENT => {
                self.check_content_range(response.headers())?;
                Ok((response, Bytes::new()))
            }
            StatusCode::OK => {
                let identity = Identity::of(response.headers(), response.content_length());
                if let Some(change) = self.identity.change_to(&identity) {
                    return Err(Stop::Fatal(DownloadError::Changed {
                        url: self.url.clone(),
                        bytes: self.position,
                        change,
                    }));
                }
                tracing::warn!(
                    url = %self.url,
                    skip = self.position,
                    "server ignored Range; skipping the bytes already received"
                );
                let mut to_skip = self.position;
                loop {
                    let chunk = response.chunk().await.map_err(|e| failed(Failure::Transport(e)))?;
                    let Some(mut chunk) = chunk else {
                        return Err(failed(Failure::Truncated { total: self.total.unwrap_or(self.position) }));
                    };
                    if (chunk.len() as u64) > to_skip {
                        return Ok((response, chunk.split_off(to_skip as usize)));
                    }
                    to_skip -= chunk.len() as u64;
                }
            }
            status => Err(failed(Failure::Status(status))),
        }
    }

    /// A 206 must continue exactly at `position` and describe the same file length.
    fn check_content_range(&self, headers: &HeaderMap) -> Result<(), Stop> {
        let value = headers.get(CONTENT_RANGE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let fits = match parse_content_range(value) {
            Some((start, total)) => {
                start == self.position
                    && match (total, self.total) {
                        (Some(theirs), Some(ours)) => theirs == ours,
                        _ => true,
                    }
            }
            None => false,
        };
        if fits {
            return Ok(());
        }
        Err(Stop::Fatal(DownloadError::BadContentRange {
            url: self.url.clone(),
            bytes: self.position,
            content_range: value.to_owned(),
        }))
    }
}

/// `bytes <start>-<end>/<total or *>` → (start, total).
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let (range, total) = value.strip_prefix("bytes ")?.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let total = if total == "*" { None } else { Some(total.parse().ok()?) };
    Some((start.parse().ok()?, total))
}

/// A strong ETag, else Last-Modified: what `If-Range` may carry (weak ETags are not allowed there).
fn if_range_validator(headers: &HeaderMap) -> Option<HeaderValue> {
    headers.get(ETAG).filter(|etag| !etag.as_bytes().starts_with(b"W/")).or_else(|| headers.get(LAST_MODIFIED)).cloned()
}

/// What tells two versions of a file apart.
#[derive(Debug, PartialEq, Eq)]
struct Identity {
    etag: Option<HeaderValue>,
    last_modified: Option<HeaderValue>,
    length: Option<u64>,
}

impl Identity {
    fn of(headers: &HeaderMap, length: Option<u64>) -> Self {
        Self { etag: headers.get(ETAG).cloned(), last_modified: headers.get(LAST_MODIFIED).cloned(), length }
    }

    /// How `newer` differs from this, if it does (attributes only one side has are not compared).
    fn change_to(&self, newer: &Identity) -> Option<String> {
        if let (Some(old), Some(new)) = (&self.etag, &newer.etag) {
            if old != new {
                return Some(format!("ETag {old:?} became {new:?}"));
            }
        }
        if let (Some(old), Some(new)) = (&self.last_modified, &newer.last_modified) {
            if old != new {
                return Some(format!("Last-Modified {old:?} became {new:?}"));
            }
        }
        match (self.length, newer.length) {
            (Some(old), Some(new)) if old != new => Some(format!("length {old} became {new}")),
            _ => None,
        }
    }
}

/// Why one attempt failed.
#[derive(Debug)]
enum Failure {
    Transport(reqwest::Error),
    Status(StatusCode),
    /// The body ended cleanly but short of its announced length.
    Truncated {
        total: u64,
    },
}

impl Failure {
    /// IPA's rule: client errors are final, except timeouts (408) and rate limits (429); so are invalid URLs and
    /// refused TLS handshakes (an untrusted certificate does not become trusted by waiting).
    fn is_retryable(&self) -> bool {
        match self {
            Failure::Status(status) => {
                status.is_server_error()
                    || *status == StatusCode::REQUEST_TIMEOUT
                    || *status == StatusCode::TOO_MANY_REQUESTS
            }
            Failure::Transport(error) => !error.is_builder() && !is_tls_rejection(error),
            Failure::Truncated { .. } => true,
        }
    }

    fn into_error(self, url: &str, bytes: u64, attempts: u32) -> DownloadError {
        let url = url.to_owned();
        match self {
            Failure::Transport(source) => DownloadError::Transport { url, bytes, attempts, source },
            Failure::Status(status) => DownloadError::Status { url, status: status.as_u16(), bytes, attempts },
            Failure::Truncated { total } => DownloadError::Truncated { url, bytes, total, attempts },
        }
    }

    fn describe(&self) -> String {
        match self {
            Failure::Transport(error) => chain(error),
            Failure::Status(status) => format!("HTTP {status}"),
            Failure::Truncated { total } => format!("body ended before byte {total}"),
        }
    }
}

/// rustls reports a refused handshake (unknown issuer, name mismatch, expired certificate) to the connector as
/// an `io::ErrorKind::InvalidData` error, which the connector wraps in another `io::Error`; nothing else on the
/// connect path uses that kind.
fn is_tls_rejection(error: &reqwest::Error) -> bool {
    let mut source = error.source();
    while let Some(error) = source {
        // `io::Error::source` skips the error it wraps, so wrapped io errors are unpacked by hand.
        let mut io_error = error.downcast_ref::<io::Error>();
        while let Some(error) = io_error {
            if error.kind() == io::ErrorKind::InvalidData {
                return true;
            }
            io_error = error.get_ref().and_then(|inner| inner.downcast_ref::<io::Error>());
        }
        source = error.source();
    }
    false
}

/// How an attempt ended without a result.
enum Stop {
    /// Retry if the failure allows and attempts remain; `bytes` were received in this attempt (for the error).
    Failed { failure: Failure, bytes: u64 },
    /// No retry.
    Fatal(DownloadError),
}

impl Stop {
    fn failed(failure: Failure, bytes: u64) -> Self {
        Stop::Failed { failure, bytes }
    }
}

/// Runs `attempt` until it succeeds, fails finally, or the attempts are used up.
async fn with_retries<T, F, Fut>(url: &str, config: &DownloadConfig, mut attempt: F) -> Result<T, DownloadError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Stop>>,
{
    let mut failures = 0;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(Stop::Fatal(error)) => return Err(error),
            Err(Stop::Failed { failure, bytes }) => {
                failures += 1;
                tokio::time::sleep(retry_after(url, config, failures, bytes, failure)?).await;
            }
        }
    }
}

/// After the `failures`-th consecutive failure: the wait before the next attempt (logged), or the final error.
fn retry_after(
    url: &str,
    config: &DownloadConfig,
    failures: u32,
    bytes: u64,
    failure: Failure,
) -> Result<Duration, DownloadError> {
    if !failure.is_retryable() || failures >= config.attempts {
        return Err(failure.into_error(url, bytes, failures));
    }
    let wait = config.backoff_initial.saturating_mul(1 << (failures - 1).min(16)).min(config.backoff_max);
    tracing::warn!(
        %url,
        bytes,
        attempt = failures + 1,
        of = config.attempts,
        wait_ms = wait.as_millis() as u64,
        error = %failure.describe(),
        "download failed; retrying"
    );
    Ok(wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_is_parsed() {
        let cases = [
            ("complete", "bytes 100-199/200", Some((100, Some(200)))),
            ("unknown total", "bytes 0-9/*", Some((0, None))),
            ("no unit", "100-199/200", None),
            ("garbage total", "bytes 1-2/x", None),
            ("empty", "", None),
        ];
        for (name, value, expected) in cases {
            assert_eq!(parse_content_range(value), expected, "{name}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_attempts_run_out() {
        let config = DownloadConfig {
            attempts: 6,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(500),
            ..DownloadConfig::default()
        };
        let waits: Vec<u128> = (1..6)
            .map(|n| retry_after("u", &config, n, 0, Failure::Status(StatusCode::BAD_GATEWAY)).unwrap().as_millis())
            .collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
        let error = retry_after("u", &config, 6, 7, Failure::Status(StatusCode::BAD_GATEWAY)).unwrap_err();
        assert_eq!(error.to_string(), "downloading u failed: HTTP 502 (7 bytes received, 6 attempt(s))");
    }

    #[test]
    fn only_server_errors_timeouts_and_rate_limits_are_retried() {
        let cases = [(404, false), (403, false), (416, false), (408, true), (429, true), (500, true), (503, true)];
        for (status, retried) in cases {
            let failure = Failure::Status(StatusCode::from_u16(status).unwrap());
            assert_eq!(failure.is_retryable(), retried, "{status}");
        }
    }

    #[test]
    fn identity_changes_are_named() {
        let identity = |etag: Option<&'static str>, length| Identity {
            etag: etag.map(HeaderValue::from_static),
            last_modified: None,
            length,
        };
        let old = identity(Some("\"a\""), Some(10));
        assert_eq!(old.change_to(&identity(Some("\"a\""), Some(10))), None);
        assert_eq!(old.change_to(&identity(None, Some(10))), None);
        assert_eq!(old.change_to(&identity(Some("\"b\""), Some(10))).unwrap(), r#"ETag "\"a\"" became "\"b\"""#);
        assert_eq!(old.change_to(&identity(Some("\"a\""), Some(11))).unwrap(), "length 10 became 11");
    }

    #[test]
    fn weak_etags_are_not_used_for_if_range() {
        let mut headers = HeaderMap::new();
        headers.insert(ETAG, HeaderValue::from_static("W/\"weak\""));
        assert_eq!(if_range_validator(&headers), None);
        headers.insert(LAST_MODIFIED, HeaderValue::from_static("Sat, 01 Jan 2000 00:00:00 GMT"));
        assert_eq!(if_range_validator(&headers).unwrap(), "Sat, 01 Jan 2000 00:00:00 GMT");
        headers.insert(ETAG, HeaderValue::from_static("\"strong\""));
        assert_eq!(if_range_validator(&headers).unwrap(), "\"strong\"");
    }
}
