//! A minimal HTTP file server on 127.0.0.1 for deploy images (the VM fetches `http://10.0.2.2:PORT/<name>`).
//!
//! `GET`/`HEAD` with `Content-Length`, an `ETag` and a `Last-Modified`, single byte ranges (`Range`,
//! honouring `If-Range`) as web servers answer them, one request per connection; every socket operation
//! has a timeout so a stuck client cannot hang a test. It records each request so tests can tell whether
//! (and how) the agent fetched the image, and it can cut a download once, mid-body, so that a test sees
//! the client resume.

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, UNIX_EPOCH};

use crate::controller::HOST_FROM_GUEST;

const SOCKET_TIMEOUT: Duration = Duration::from_secs(60);
const ACCEPT_POLL: Duration = Duration::from_millis(50);
const MAX_HEADER_LINES: usize = 100;

/// One answered request: `GET /testos.img -> 200`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedRequest {
    pub method: String,
    pub path: String,
    pub status: u16,
    /// The request's `Range` header, as sent.
    pub range: Option<String>,
    /// The server closed the connection on purpose before the whole body was sent ([`ImageServer::cut_once`]).
    pub cut: bool,
}

/// What the connection threads share with the server.
#[derive(Debug, Default)]
struct Shared {
    files: RwLock<HashMap<String, PathBuf>>,
    /// File name -> body bytes to send before cutting the next download of that file.
    cuts: Mutex<HashMap<String, u64>>,
    served: Mutex<Vec<ServedRequest>>,
}

/// Serves a set of files by name until dropped.
#[derive(Debug)]
pub struct ImageServer {
    port: u16,
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl ImageServer {
    /// Serves each `(name, file)` as `/<name>`.
    pub fn start(files: impl IntoIterator<Item = (String, PathBuf)>) -> io::Result<ImageServer> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared { files: RwLock::new(files.into_iter().collect()), ..Shared::default() });
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (stop, shared) = (stop.clone(), shared.clone());
            std::thread::spawn(move || accept_loop(listener, shared, stop))
        };
        Ok(ImageServer { port, stop, shared, acceptor: Some(acceptor) })
    }

    /// Serves `file` as `/<name>` from now on (replacing a file of that name).
    pub fn add(&self, name: &str, file: PathBuf) {
        self.shared.files.write().unwrap_or_else(PoisonError::into_inner).insert(name.to_owned(), file);
    }

    /// The next `GET` of `/<name>` announces the whole length but sends only `after_bytes` of the body,
    /// then the server closes the connection: a download broken mid-file. Later requests are answered whole.
    pub fn cut_once(&self, name: &str, after_bytes: u64) {
        self.shared.cuts.lock().unwrap_or_else(PoisonError::into_inner).insert(name.to_owned(), after_bytes);
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The file's URL as a VM on QEMU's user network sees it.
    pub fn guest_url(&self, name: &str) -> String {
        format!("http://{HOST_FROM_GUEST}:{}/{name}", self.port)
    }

    /// The file's URL from the host.
    pub fn local_url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    /// Requests answered so far, oldest first.
    pub fn served(&self) -> Vec<ServedRequest> {
        self.shared.served.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Drop for ImageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let shared = shared.clone();
                // Connection threads end by themselves: every read and write is bounded by SOCKET_TIMEOUT.
                std::thread::spawn(move || {
                    if let Err(e) = handle(stream, &shared) {
                        tracing::debug!(error = %e, "image server connection ended with an error");
                    }
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(ACCEPT_POLL),
            Err(e) => {
                tracing::warn!(error = %e, "image server accept failed");
                std::thread::sleep(ACCEPT_POLL);
            }
        }
    }
}

/// The request line and the headers the server looks at.
#[derive(Debug, Default)]
struct Request {
    method: String,
    path: String,
    range: Option<String>,
    if_range: Option<String>,
}

fn read_request(reader: &mut impl BufRead) -> io::Result<Request> {
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let mut request = Request {
        method: parts.next().unwrap_or_default().to_string(),
        path: parts.next().unwrap_or_default().split('?').next().unwrap_or_default().to_string(),
        ..Request::default()
    };
    for _ in 0..MAX_HEADER_LINES {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = Some(value.trim().to_string());
        match name.trim().to_ascii_lowercase().as_str() {
            "range" => request.range = value,
            "if-range" => request.if_range = value,
            _ => {}
        }
    }
    Ok(request)
}

/// How a `GET` or `HEAD` of an existing file is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Whole,
    /// Bytes `start..=end` (206).
    Part {
        start: u64,
        end: u64,
    },
    /// 416: the range starts past the end.
    Unsatisfiable,
}

/// The answer to a `Range` header for a file of `length` bytes: one `bytes=` range (`a-`, `a-b` or `-n`);
/// anything else (several ranges, other units, garbage) is ignored, as servers may, with the whole file.
fn answer_range(range: Option<&str>, length: u64) -> Answer {
    let Some(spec) = range.and_then(|range| range.trim().strip_prefix("bytes=")) else { return Answer::Whole };
    let Some((first, last)) = spec.trim().split_once('-') else { return Answer::Whole };
    if spec.contains(',') {
        return Answer::Whole;
    }
    let (first, last) = (first.trim(), last.trim());
    let (start, end) = match (first.parse::<u64>(), last.parse::<u64>()) {
        (Ok(start), Ok(end)) if start <= end => (start, end.min(length.saturating_sub(1))),
        (Ok(start), Err(_)) if last.is_empty() => (start, length.saturating_sub(1)),
        (Err(_), Ok(suffix)) if first.is_empty() && suffix > 0 => (length.saturating_sub(suffix), length - 1),
        _ => return Answer::Whole,
    };
    if start >= length {
        Answer::Unsatisfiable
    } else {
        Answer::Part { start, end }
    }
}

/// The validators of a file's current version: an entity tag and its HTTP-date modification time.
fn validators(metadata: &fs::Metadata) -> (String, String) {
    let modified = metadata.modified().unwrap_or(UNIX_EPOCH);
    let nanos = modified.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    let etag = format!("\"{:x}-{nanos:x}\"", metadata.len());
    let last_modified = chrono::DateTime::<chrono::Utc>::from(modified).format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    (etag, last_modified)
}

fn handle(mut stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(SOCKET_TIMEOUT))?;
    stream.set_write_timeout(Some(SOCKET_TIMEOUT))?;
    let request = read_request(&mut BufReader::new(stream.try_clone()?))?;
    let name = request.path.trim_start_matches('/').to_string();
    let file = shared.files.read().unwrap_or_else(PoisonError::into_inner).get(&name).cloned();
    let method = request.method.as_str();

    let content = match (method, file) {
        ("GET" | "HEAD", Some(file)) => Some(fs::File::open(file)?),
        _ => None,
    };
    let Some(mut content) = content else {
        let (status, reason) =
            if matches!(method, "GET" | "HEAD") { (404, "Not Found") } else { (405, "Method Not Allowed") };
        record(shared, &request, status, false);
        write!(stream, "HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        return stream.flush();
    };

    let metadata = content.metadata()?;
    let length = metadata.len();
    let (etag, last_modified) = validators(&metadata);
    // If-Range: the range applies only to the version the client already has part of.
    let same_version = request.if_range.as_deref().is_none_or(|v| v == etag || v == last_modified);
    let answer = if same_version { answer_range(request.range.as_deref(), length) } else { Answer::Whole };
    let cut_after = match method {
        "GET" if answer != Answer::Unsatisfiable => {
            shared.cuts.lock().unwrap_or_else(PoisonError::into_inner).remove(&name)
        }
        _ => None,
    };
    let (status, reason, start, body_len) = match answer {
        Answer::Whole => (200, "OK", 0, length),
        Answer::Part { start, end } => (206, "Partial Content", start, end - start + 1),
        Answer::Unsatisfiable => (416, "Range Not Satisfiable", 0, 0),
    };
    // Recorded before answering, so a client that has its answer also finds its request recorded.
    record(shared, &request, status, cut_after.is_some_and(|after| after < body_len));

    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/octet-stream\r\nContent-Length: {body_len}\r\n\
         Accept-Ranges: bytes\r\nETag: {etag}\r\nLast-Modified: {last_modified}\r\nConnection: close\r\n"
    );
    match answer {
        Answer::Part { start, end } => head.push_str(&format!("Content-Range: bytes {start}-{end}/{length}\r\n")),
        Answer::Unsatisfiable => head.push_str(&format!("Content-Range: bytes */{length}\r\n")),
        Answer::Whole => {}
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if method == "GET" && body_len > 0 {
        content.seek(SeekFrom::Start(start))?;
        let send = cut_after.map_or(body_len, |after| after.min(body_len));
        io::copy(&mut content.take(send), &mut stream)?;
        if send < body_len {
            stream.flush()?;
            return stream.shutdown(Shutdown::Both);
        }
    }
    stream.flush()
}

fn record(shared: &Shared, request: &Request, status: u16, cut: bool) {
    shared.served.lock().unwrap_or_else(PoisonError::into_inner).push(ServedRequest {
        method: request.method.clone(),
        path: request.path.clone(),
        status,
        range: request.range.clone(),
        cut,
    });
}

#[cfg(test)]
mod tests {
    use reqwest::header::{CONTENT_RANGE, ETAG, IF_RANGE, LAST_MODIFIED, RANGE};

    use super::*;

    fn served(method: &str, path: &str, status: u16, range: Option<&str>, cut: bool) -> ServedRequest {
        ServedRequest { method: method.into(), path: path.into(), status, range: range.map(str::to_owned), cut }
    }

    fn content(len: u32) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn serves_known_files_with_length_and_refuses_others() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk.img");
        let content = content(300_000);
        fs::write(&file, &content).unwrap();
        let server = ImageServer::start([("disk.img".to_string(), file)]).unwrap();
        let http = reqwest::blocking::Client::new();

        let response = http.get(server.local_url("disk.img")).send().unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.content_length(), Some(content.len() as u64));
        assert_eq!(response.bytes().unwrap().as_ref(), content.as_slice());
        assert_eq!(http.get(server.local_url("other.img")).send().unwrap().status(), 404);
        assert_eq!(http.post(server.local_url("disk.img")).send().unwrap().status(), 405);

        let served = server.served();
        assert_eq!(served.len(), 3, "{served:?}");
        assert_eq!(served[0], self::served("GET", "/disk.img", 200, None, false));
        assert_eq!(server.guest_url("disk.img"), format!("http://10.0.2.2:{}/disk.img", server.port()));
    }

    #[test]
    fn files_added_later_are_served() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("late.img");
        fs::write(&file, b"late").unwrap();
        let server = ImageServer::start([]).unwrap();
        assert_eq!(reqwest::blocking::get(server.local_url("late.img")).unwrap().status(), 404);
        server.add("late.img", file);
        assert_eq!(reqwest::blocking::get(server.local_url("late.img")).unwrap().bytes().unwrap().as_ref(), b"late");
    }

    #[test]
    fn ranges_are_answered_as_web_servers_do() {
        let length = 1000;
        let cases = [
            ("open-ended", Some("bytes=100-"), Answer::Part { start: 100, end: 999 }),
            ("closed", Some("bytes=0-9"), Answer::Part { start: 0, end: 9 }),
            ("end past the file", Some("bytes=990-5000"), Answer::Part { start: 990, end: 999 }),
            ("suffix", Some("bytes=-10"), Answer::Part { start: 990, end: 999 }),
            ("start at the end", Some("bytes=1000-"), Answer::Unsatisfiable),
            ("no header", None, Answer::Whole),
            ("several ranges", Some("bytes=0-1,5-6"), Answer::Whole),
            ("other unit", Some("items=0-1"), Answer::Whole),
            ("reversed", Some("bytes=9-0"), Answer::Whole),
            ("garbage", Some("bytes=x-"), Answer::Whole),
        ];
        for (name, range, expected) in cases {
            assert_eq!(answer_range(range, length), expected, "{name}");
        }
    }

    #[test]
    fn a_range_request_gets_206_with_content_range_unless_if_range_names_another_version() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk.img");
        let content = content(100_000);
        fs::write(&file, &content).unwrap();
        let server = ImageServer::start([("disk.img".to_string(), file)]).unwrap();
        let http = reqwest::blocking::Client::new();
        let url = server.local_url("disk.img");

        let whole = http.head(&url).send().unwrap();
        let etag = whole.headers()[ETAG].to_str().unwrap().to_owned();
        let last_modified = whole.headers()[LAST_MODIFIED].to_str().unwrap().to_owned();
        for validator in [etag.as_str(), last_modified.as_str()] {
            let part = http.get(&url).header(RANGE, "bytes=60000-").header(IF_RANGE, validator).send().unwrap();
            assert_eq!(part.status(), 206, "If-Range {validator}");
            assert_eq!(part.headers()[CONTENT_RANGE], "bytes 60000-99999/100000");
            assert_eq!(part.bytes().unwrap().as_ref(), &content[60000..]);
        }
        let stale = http.get(&url).header(RANGE, "bytes=60000-").header(IF_RANGE, "\"other\"").send().unwrap();
        assert_eq!(stale.status(), 200);
        assert_eq!(stale.bytes().unwrap().len(), content.len());
        let past_end = http.get(&url).header(RANGE, "bytes=100000-").send().unwrap();
        assert_eq!(past_end.status(), 416);
        assert_eq!(past_end.headers()[CONTENT_RANGE], "bytes */100000");
        assert_eq!(server.served()[1], served("GET", "/disk.img", 206, Some("bytes=60000-"), false));
    }

    #[test]
    fn a_cut_download_breaks_once_and_can_be_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk.img");
        let content = content(2_000_000);
        fs::write(&file, &content).unwrap();
        let server = ImageServer::start([("disk.img".to_string(), file)]).unwrap();
        server.cut_once("disk.img", 123_456);
        let http = reqwest::blocking::Client::new();
        let url = server.local_url("disk.img");

        let mut received = Vec::new();
        let mut response = http.get(&url).send().unwrap();
        assert_eq!(response.content_length(), Some(content.len() as u64));
        let broken = response.read_to_end(&mut received);
        assert!(broken.is_err(), "the body was not cut");
        assert_eq!(received, &content[..received.len()]);
        assert!(received.len() <= 123_456, "{} bytes received", received.len());

        let rest = http.get(&url).header(RANGE, format!("bytes={}-", received.len())).send().unwrap();
        assert_eq!(rest.status(), 206);
        received.extend_from_slice(&rest.bytes().unwrap());
        assert!(received == content, "the resumed download differs");
        let served = server.served();
        assert!(served[0].cut && served[0].status == 200, "{served:?}");
        assert!(!served[1].cut && served[1].status == 206, "{served:?}");
    }

    #[test]
    fn stops_listening_when_dropped() {
        let server = ImageServer::start([]).unwrap();
        let url = server.local_url("x");
        drop(server);
        assert!(reqwest::blocking::get(url).is_err());
    }
}
