//! Live progress of the running task, read by the heartbeat loop.

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ferric_protocol::Progress;

/// Shared between the worker (which advances it) and the heartbeat (which reports it).
#[derive(Debug)]
pub struct ProgressTracker {
    stage: Mutex<String>,
    done: AtomicU64,
    /// 0 when unknown.
    total: AtomicU64,
    started: Instant,
}

impl Default for ProgressTracker {
    fn default() -> Self {
        Self {
            stage: Mutex::new(String::new()),
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            started: Instant::now(),
        }
    }
}

impl ProgressTracker {
    pub fn set_stage(&self, stage: &str) {
        *self.stage.lock().unwrap_or_else(|e| e.into_inner()) = stage.to_owned();
    }

    pub fn set_total(&self, total: Option<u64>) {
        self.total.store(total.unwrap_or(0), Ordering::Relaxed);
    }

    pub fn advance(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn bytes_done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> Progress {
        let bytes_done = self.bytes_done();
        let total = self.total.load(Ordering::Relaxed);
        let elapsed = self.started.elapsed().as_secs_f64();
        let bytes_per_second = if elapsed > 0.0 { bytes_done as f64 / elapsed } else { 0.0 };
        let bytes_total = (total > 0).then_some(total);
        let eta_seconds = bytes_total
            .filter(|_| bytes_per_second > 0.0)
            .map(|total| total.saturating_sub(bytes_done) as f64 / bytes_per_second);
        Progress {
            stage: self.stage.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            bytes_done,
            bytes_total,
            bytes_per_second,
            eta_seconds,
        }
    }
}

/// Counts the bytes read through it into a [`ProgressTracker`].
pub struct ProgressReader<R> {
    inner: R,
    tracker: Arc<ProgressTracker>,
}

impl<R> ProgressReader<R> {
    pub fn new(inner: R, tracker: Arc<ProgressTracker>) -> Self {
        Self { inner, tracker }
    }
}

impl<R: Read> Read for ProgressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.tracker.advance(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_advances_tracker_and_snapshot_reports_totals() {
        let tracker = Arc::new(ProgressTracker::default());
        tracker.set_stage("writing image");
        tracker.set_total(Some(10));
        let mut reader = ProgressReader::new(&b"0123456789"[..4], tracker.clone());
        io::copy(&mut reader, &mut io::sink()).unwrap();
        let p = tracker.snapshot();
        assert_eq!((p.stage.as_str(), p.bytes_done, p.bytes_total), ("writing image", 4, Some(10)));
    }
}
