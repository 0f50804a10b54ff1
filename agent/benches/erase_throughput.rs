//! Disk erase throughput, measured in one run on one loop device.
//!
//! `cargo bench -p ferric-agent --bench erase_throughput` (as root: it creates a loop device).
//! Erases the same loop device (1 GiB; 128 MiB with BENCH_SMALL=1) over a file in FERRIC_BENCH_DIR
//! (/var/tmp) with: `dd if=/dev/zero bs=4M oflag=direct conv=fsync`; the agent's zero fill alone (the
//! engine, as dd measures); the whole `erase_devices` step forced to zero fill (engine plus the sampled
//! read-back of 66 MiB); the step in its default order, which on a loop device is write zeroes (holes
//! punched in the backing file: the offload path, no data written); and discard followed by the full
//! read-back that trusts it. Before each run the device is filled with non-zero data (a disk full of
//! the last tenant's data), synced and the page cache dropped; after it, the device must read zero.
//! Rounds interleave the runs (best and median reported: the machine may be shared).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use ferric_agent::clean::erase::overwrite;
use ferric_agent::clean::{execute_clean_step, CleanEnv, EraseMethod};
use ferric_agent::progress::ProgressTracker;
use ferric_agent::target::FileTarget;
use ferric_protocol::CleanStep;

const MIB: u64 = 1 << 20;
const SETTLE_MS: u64 = 1000;

/// One way of erasing the device; returns the method the agent reported, if any.
type Eraser<'a> = &'a dyn Fn() -> anyhow::Result<Option<String>>;

fn main() -> anyhow::Result<()> {
    let small = std::env::var_os("BENCH_SMALL").is_some_and(|v| v != "0");
    let (mib, rounds): (u64, usize) = if small { (128, 2) } else { (1024, 3) };
    let base = std::env::var_os("FERRIC_BENCH_DIR").map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from);
    let dir = tempfile::tempdir_in(&base).with_context(|| format!("temporary directory in {}", base.display()))?;
    let started = Instant::now();
    let device = LoopDevice::new(&dir.path().join("device"), mib * MIB)?;
    println!("target: {} ({mib} MiB loop device over a file in {})\n", device.path.display(), base.display());

    let dd = || {
        let mut dd = Command::new("dd");
        dd.arg("if=/dev/zero").arg(format!("of={}", device.path.display()));
        dd.args(["bs=4M", "oflag=direct", "conv=fsync", "status=none"]).arg(format!("count={}", mib / 4));
        ferric_runner::run("dd", &mut dd)?;
        Ok(None)
    };
    let engine = || {
        let mut target = FileTarget::open(&device.path)?;
        let used = overwrite(&mut target, &[EraseMethod::ZeroFill], &|_| {})?;
        Ok(Some(used.iter().map(ToString::to_string).collect::<Vec<_>>().join(" + ")))
    };
    let step = |methods: &[EraseMethod]| -> anyhow::Result<Option<String>> {
        let mut env = CleanEnv::new("/");
        env.devices = Some(vec![device.path.clone()]);
        env.methods = methods.to_vec();
        let step = CleanStep { interface: "deploy".into(), step: "erase_devices".into(), args: Default::default() };
        let result = execute_clean_step(&step, &[], &env, &ProgressTracker::default())?;
        Ok(result.devices.first().map(|erased| erased.method.clone()))
    };
    let zero_fill_step = || step(&[EraseMethod::ZeroFill]);
    let default_step = || step(&EraseMethod::ALL);
    let discard_step = || step(&[EraseMethod::Discard, EraseMethod::ZeroFill]);
    let runs: [(&str, Eraser); 5] = [
        ("dd if=/dev/zero bs=4M oflag=direct conv=fsync", &dd),
        ("agent zero fill, engine only", &engine),
        ("agent erase_devices, zero fill + read-back", &zero_fill_step),
        ("agent erase_devices, default order", &default_step),
        ("agent erase_devices, discard + read-back", &discard_step),
    ];
    let mut seconds = vec![Vec::new(); runs.len()];
    let mut methods = vec![None; runs.len()];
    for _ in 0..rounds {
        for (((name, erase), times), method) in runs.iter().zip(&mut seconds).zip(&mut methods) {
            device.fill()?;
            let timer = Instant::now();
            *method = erase().with_context(|| name.to_string())?;
            times.push(timer.elapsed().as_secs_f64());
            anyhow::ensure!(device.reads_zero()?, "{name}: the device does not read zero");
        }
    }
    for times in &mut seconds {
        times.sort_by(f64::total_cmp);
    }
    let best: Vec<f64> = seconds.iter().map(|times| times[0]).collect();
    let median: Vec<f64> = seconds.iter().map(|times| times[times.len() / 2]).collect();
    let rate = |s: f64| mib as f64 / s;
    println!("{rounds} rounds; MiB/s of the {mib} MiB device erased");
    println!("{:<46} {:<22} {:>8} {:>8} {:>9}", "run", "method reported", "best s", "MiB/s", "median s");
    for (i, (name, _)) in runs.iter().enumerate() {
        let method = methods[i].as_deref().unwrap_or("-");
        println!("{name:<46} {method:<22} {:>8.2} {:>8.0} {:>9.2}", best[i], rate(best[i]), median[i]);
    }
    println!();
    for (label, agent) in [("agent zero fill engine / dd", 1), ("agent zero fill step (with read-back) / dd", 2)] {
        let ratio = |times: &[f64]| times[0] / times[agent] * 100.0;
        println!("{label:<44} best {:>4.0} %   median {:>4.0} %", ratio(&best), ratio(&median));
    }
    println!("\nbench took {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// A loop device over a file, detached on drop.
struct LoopDevice {
    path: PathBuf,
    len: u64,
}

impl LoopDevice {
    fn new(backing: &Path, len: u64) -> anyhow::Result<LoopDevice> {
        File::create(backing)?.set_len(len)?;
        let attached = ferric_runner::run("losetup", Command::new("losetup").args(["-f", "--show"]).arg(backing))?;
        Ok(LoopDevice { path: PathBuf::from(attached.stdout.trim()), len })
    }

    /// The same starting point for every run: every byte written with non-zero data (the backing file
    /// fully allocated), nothing dirty, nothing cached.
    fn fill(&self) -> anyhow::Result<()> {
        let device = File::options().write(true).open(&self.path)?;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut block = vec![0u8; 16 * MIB as usize];
        for word in block.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&(state | 1).to_le_bytes());
        }
        for offset in (0..self.len).step_by(block.len()) {
            let piece = (self.len - offset).min(block.len() as u64) as usize;
            device.write_all_at(&block[..piece], offset)?;
        }
        device.sync_all()?;
        ferric_runner::run("sync", &mut Command::new("sync"))?;
        std::fs::write("/proc/sys/vm/drop_caches", "3").context("dropping the page cache (run as root)")?;
        std::thread::sleep(std::time::Duration::from_millis(SETTLE_MS));
        Ok(())
    }

    fn reads_zero(&self) -> anyhow::Result<bool> {
        let mut device = File::open(&self.path)?;
        let mut block = vec![0u8; 16 * MIB as usize];
        loop {
            let n = device.read(&mut block)?;
            if n == 0 {
                return Ok(true);
            }
            if block[..n].iter().any(|byte| *byte != 0) {
                return Ok(false);
            }
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = ferric_runner::run("losetup -d", Command::new("losetup").arg("-d").arg(&self.path));
    }
}
