//! Keeps the agent's last log lines so every heartbeat can carry them to the controller.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// How many lines the agent keeps and sends.
pub const TAIL_LINES: usize = 40;

/// A bounded ring of formatted log lines, shared with the heartbeat loop.
#[derive(Debug, Clone, Default)]
pub struct LogTail {
    lines: Arc<Mutex<VecDeque<String>>>,
}

impl LogTail {
    pub fn push(&self, line: String) {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() == TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// The kept lines, oldest first.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    /// A tracing layer feeding this tail.
    pub fn layer(&self) -> LogTailLayer {
        LogTailLayer { tail: self.clone() }
    }
}

pub struct LogTailLayer {
    tail: LogTail,
}

struct LineVisitor(String);

impl Visit for LineVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value}");
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for LogTailLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let now = uptime_stamp();
        let mut visitor = LineVisitor(format!("{now} {}", event.metadata().level()));
        event.record(&mut visitor);
        self.tail.push(visitor.0);
    }
}

/// Seconds since boot with millisecond precision: the ramdisk's clock is often unset, uptime is not.
fn uptime_stamp() -> String {
    let uptime = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
        .unwrap_or(0.0);
    format!("[{uptime:10.3}]")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn keeps_the_last_lines_with_fields() {
        let tail = LogTail::default();
        let subscriber = tracing_subscriber::registry().with(tail.layer());
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..TAIL_LINES + 5 {
                tracing::info!(disk = "/dev/vda", "line {i}");
            }
        });
        let lines = tail.lines();
        assert_eq!(lines.len(), TAIL_LINES);
        assert!(lines[0].ends_with("INFO line 5 disk=/dev/vda"), "{}", lines[0]);
        assert!(lines.last().unwrap().contains(&format!("line {}", TAIL_LINES + 4)));
    }
}
