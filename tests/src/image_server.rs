//! A minimal HTTP file server on 127.0.0.1 for deploy images (the VM fetches `http://10.0.2.2:PORT/<name>`).
//!
//! Plain `GET`/`HEAD` with `Content-Length`, one request per connection; every socket operation has a
//! timeout so a stuck client cannot hang a test. It records each request so tests can tell whether (and how
//! often) the agent fetched the image.

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

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
}

/// Serves a fixed set of files by name until dropped.
#[derive(Debug)]
pub struct ImageServer {
    port: u16,
    stop: Arc<AtomicBool>,
    served: Arc<Mutex<Vec<ServedRequest>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl ImageServer {
    /// Serves each `(name, file)` as `/<name>`.
    pub fn start(files: impl IntoIterator<Item = (String, PathBuf)>) -> io::Result<ImageServer> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let files: Arc<HashMap<String, PathBuf>> = Arc::new(files.into_iter().collect());
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let (stop, served) = (stop.clone(), served.clone());
            std::thread::spawn(move || accept_loop(listener, files, stop, served))
        };
        Ok(ImageServer { port, stop, served, acceptor: Some(acceptor) })
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
        self.served.lock().unwrap_or_else(PoisonError::into_inner).clone()
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

fn accept_loop(
    listener: TcpListener,
    files: Arc<HashMap<String, PathBuf>>,
    stop: Arc<AtomicBool>,
    served: Arc<Mutex<Vec<ServedRequest>>>,
) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let (files, served) = (files.clone(), served.clone());
                // Connection threads end by themselves: every read and write is bounded by SOCKET_TIMEOUT.
                std::thread::spawn(move || {
                    if let Err(e) = handle(stream, &files, &served) {
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

fn handle(
    mut stream: TcpStream,
    files: &HashMap<String, PathBuf>,
    served: &Mutex<Vec<ServedRequest>>,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(SOCKET_TIMEOUT))?;
    stream.set_write_timeout(Some(SOCKET_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Headers are read and ignored: the server needs none of them.
    for _ in 0..MAX_HEADER_LINES {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default().to_string();
    let file = files.get(path.trim_start_matches('/'));

    let content = match (method.as_str(), file) {
        ("GET" | "HEAD", Some(file)) => Some(fs::File::open(file)?),
        _ => None,
    };
    let status = match (method.as_str(), &content) {
        (_, Some(_)) => 200,
        ("GET" | "HEAD", None) => 404,
        _ => 405,
    };
    // Recorded before answering, so a client that has its answer also finds its request recorded.
    served.lock().unwrap_or_else(PoisonError::into_inner).push(ServedRequest { method: method.clone(), path, status });

    match content {
        Some(mut content) => {
            let length = content.metadata()?.len();
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
            )?;
            if method == "GET" {
                io::copy(&mut content, &mut stream)?;
            }
        }
        None => {
            let reason = if status == 404 { "Not Found" } else { "Method Not Allowed" };
            write!(stream, "HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        }
    }
    stream.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_known_files_with_length_and_refuses_others() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk.img");
        let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
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
        assert_eq!(served[0], ServedRequest { method: "GET".into(), path: "/disk.img".into(), status: 200 });
        assert_eq!(server.guest_url("disk.img"), format!("http://10.0.2.2:{}/disk.img", server.port()));
    }

    #[test]
    fn stops_listening_when_dropped() {
        let server = ImageServer::start([]).unwrap();
        let url = server.local_url("x");
        drop(server);
        assert!(reqwest::blocking::get(url).is_err());
    }
}
