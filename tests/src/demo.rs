//! The README's demo: the end-to-end deploy, told as a timeline a person can follow.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use crate::paths;
use crate::ramdisk::build_ramdisk;
use crate::scenario::{
    history_timeline, BootOutcome, Budget, IpmiDeployEnv, IpmiDeployOutcome, ScenarioError, TimelineEntry,
};

const MIB: f64 = 1024.0 * 1024.0;

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The VM's MAC address (also the node's port).
    pub mac: String,
    pub budget: Duration,
}

/// What happened, for printing.
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub work_dir: PathBuf,
    pub image_bytes: u64,
    pub image_sha256: String,
    /// As the agent reported it, when the node still shows its `write_image` result.
    pub agent_write_mib_per_second: Option<f64>,
    pub outcome: BootOutcome,
    pub timeline: Vec<TimelineEntry>,
}

impl DemoReport {
    pub fn render(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(text, "Timeline (seconds since the deploy request):");
        for entry in &self.timeline {
            let _ = writeln!(text, "  {:>+8.1}s  {}", entry.seconds, entry.what);
        }
        let _ = writeln!(
            text,
            "Deployed {} bytes (sha256 {}); the disk holds the image byte for byte.",
            self.image_bytes, self.image_sha256
        );
        if let Some(speed) = self.agent_write_mib_per_second {
            let _ = writeln!(text, "The agent wrote {:.1} MiB at {speed:.1} MiB/s.", self.image_bytes as f64 / MIB);
        }
        let _ = writeln!(
            text,
            "Deploy request -> active {:.1}s, -> deployed OS booted {:.1}s, -> powered off {:.1}s.",
            self.outcome.to_active.as_secs_f64(),
            self.outcome.to_marker.as_secs_f64(),
            self.outcome.to_poweroff.as_secs_f64()
        );
        let _ = writeln!(text, "Logs, serial console and disk: {}", self.work_dir.display());
        text
    }
}

/// Builds the ramdisk, enrolls a blank UEFI VM whose BMC is `ipmi_sim`, deploys the test OS through
/// the controller alone (it powers the VM through IPMI), and checks that it booted and that the disk
/// holds the image.
pub fn run(options: &DemoOptions) -> Result<DemoReport, ScenarioError> {
    let budget = Budget::new(options.budget);
    tracing::info!("building the ramdisk");
    let ramdisk = build_ramdisk(&paths::scratch_dir()?.join("ramdisk"))?;
    tracing::info!("starting the controller and a simulated IPMI BMC, enrolling the node");
    let ipmi = IpmiDeployEnv::prepare("demo", &ramdisk, &options.mac, &budget)?;
    let env = &ipmi.env;
    tracing::info!(node = %env.node, "deploying; the controller powers the VM on through IPMI (TCG is slow)");
    let IpmiDeployOutcome { boot: outcome, requested_wall } = ipmi.deploy_and_boot(&budget)?;
    env.check_disk_holds_image()?;

    let mut timeline = history_timeline(&env.client.history(&env.node)?, requested_wall);
    timeline.extend([
        TimelineEntry { seconds: 0.0, what: "deploy requested".into() },
        TimelineEntry { seconds: outcome.to_active.as_secs_f64(), what: "node seen active by the client".into() },
        TimelineEntry {
            seconds: outcome.to_marker.as_secs_f64(),
            what: format!("deployed OS booted: {}", env.image.marker()),
        },
        TimelineEntry { seconds: outcome.to_poweroff.as_secs_f64(), what: "node seen powered off".into() },
    ]);
    timeline.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    Ok(DemoReport {
        work_dir: env.work_dir.clone(),
        image_bytes: env.image.size_bytes,
        image_sha256: env.image.sha256.clone(),
        agent_write_mib_per_second: outcome.agent_write_mib_per_second(),
        outcome,
        timeline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lists_the_timeline_in_order_with_signed_seconds() {
        let report = DemoReport {
            work_dir: "/w/demo".into(),
            image_bytes: 48 * 1024 * 1024,
            image_sha256: "ab".into(),
            agent_write_mib_per_second: Some(38.26),
            outcome: BootOutcome {
                to_active: Duration::from_secs(80),
                to_marker: Duration::from_secs(95),
                to_poweroff: Duration::from_secs(96),
                node: serde_json::json!({}),
            },
            timeline: vec![
                TimelineEntry { seconds: -1.5, what: "available".into() },
                TimelineEntry { seconds: 95.0, what: "booted".into() },
            ],
        };
        let text = report.render();
        let available = text.find("    -1.5s  available").expect(&text);
        let booted = text.find("   +95.0s  booted").expect(&text);
        assert!(available < booted, "{text}");
        assert!(text.contains("-> active 80.0s") && text.contains("/w/demo"), "{text}");
        assert!(text.contains("agent wrote 48.0 MiB at 38.3 MiB/s"), "{text}");
    }
}
