//! A plain-text progress line from the agent's `agent_progress`.

use ferric_protocol::Progress;

const BAR_WIDTH: usize = 30;

/// One line: bar and percentage when the total is known, then bytes, rate, ETA and stage.
pub fn render(progress: &Progress) -> String {
    let mut parts = Vec::new();
    match progress.bytes_total.filter(|total| *total > 0) {
        Some(total) => {
            let fraction = (progress.bytes_done as f64 / total as f64).clamp(0.0, 1.0);
            let filled = (fraction * BAR_WIDTH as f64).round() as usize;
            parts.push(format!("[{}{}] {:3.0}%", "#".repeat(filled), "-".repeat(BAR_WIDTH - filled), fraction * 100.0));
            parts.push(format!("{} / {}", bytes(progress.bytes_done as f64), bytes(total as f64)));
        }
        None => parts.push(bytes(progress.bytes_done as f64)),
    }
    parts.push(format!("{}/s", bytes(progress.bytes_per_second)));
    if let Some(eta) = progress.eta_seconds {
        parts.push(format!("ETA {}", duration(eta)));
    }
    if !progress.stage.is_empty() {
        parts.push(progress.stage.clone());
    }
    parts.join("  ")
}

/// Binary units, one decimal.
fn bytes(count: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = count.max(0.0);
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `m:ss`, or `h:mm:ss` past an hour.
fn duration(seconds: f64) -> String {
    let total = seconds.max(0.0).round() as u64;
    let (hours, minutes, seconds) = (total / 3600, total / 60 % 60, total % 60);
    if hours > 0 {
        format!("{hours}:{minutes:02}:{seconds:02}")
    } else {
        format!("{minutes}:{seconds:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_total_draws_a_bar() {
        let progress = Progress {
            stage: "writing image".into(),
            bytes_done: 512 << 20,
            bytes_total: Some(2 << 30),
            bytes_per_second: 12.5 * 1048576.0,
            eta_seconds: Some(3725.0),
        };
        let bar = format!("[{}{}]", "#".repeat(8), "-".repeat(22));
        assert_eq!(
            render(&progress),
            format!("{bar}  25%  512.0 MiB / 2.0 GiB  12.5 MiB/s  ETA 1:02:05  writing image")
        );
    }

    #[test]
    fn an_unknown_total_shows_bytes_only() {
        let progress =
            Progress { stage: String::new(), bytes_done: 100, bytes_per_second: 2048.0, ..Default::default() };
        assert_eq!(render(&progress), "100 B  2.0 KiB/s");
    }
}
