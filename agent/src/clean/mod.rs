//! Cleaning: IPA's `erase_devices_metadata` and `erase_devices` clean steps, run on every disk of the
//! inventory except the skipped ones.
//!
//! Disks are cleaned concurrently, up to [`CleanEnv::concurrency`] at a time (IPA's
//! `disk_erasure_concurrency`, 4): each disk is its own device with its own queue, so erasing them one
//! after the other would make cleaning as slow as the sum of the disks instead of the slowest one. A
//! disk that fails does not stop the others (less of the last tenant's data is left); the step then
//! fails naming every failed disk.

pub mod ata;
pub mod erase;
pub mod metadata;
pub mod nvme;
pub mod verify;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use ferric_protocol::inventory::Disk;
use ferric_protocol::{CleanStep, CleanStepResult, ErasedDevice, DEPLOY_CLEAN_STEPS};
use serde_json::Value;

pub use erase::{EraseError, EraseMethod};

use crate::inventory::{self, sysfs::read_trimmed};
use crate::progress::ProgressTracker;
use crate::root_disk::{self, RootDiskError};
use crate::target::{FileTarget, Target};

/// IPA's `disk_erasure_concurrency` default.
pub const DEFAULT_CONCURRENCY: usize = 4;
/// Pseudo-random 1 MiB blocks read back after an erase, besides the first and the last MiB.
pub const DEFAULT_VERIFY_SAMPLES: u32 = 64;

/// Where the disks are and how to erase them.
#[derive(Debug, Clone)]
pub struct CleanEnv {
    /// Root of the system whose inventory lists the disks, and of `sys/block` (`/`; fixtures in tests).
    pub root: PathBuf,
    /// Where the inventory's `/dev/NAME` nodes are (`/dev`).
    pub dev_dir: PathBuf,
    /// These devices instead of the inventory's disks (the agent's `--target-disk`; loop devices in
    /// tests). Their names are their paths.
    pub devices: Option<Vec<PathBuf>>,
    /// `erase_devices` methods, in the order tried ([`EraseMethod::ALL`]).
    pub methods: Vec<EraseMethod>,
    pub verify_samples: u32,
    pub concurrency: usize,
}

impl CleanEnv {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            dev_dir: PathBuf::from("/dev"),
            devices: None,
            methods: EraseMethod::ALL.to_vec(),
            verify_samples: DEFAULT_VERIFY_SAMPLES,
            concurrency: DEFAULT_CONCURRENCY,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CleanError {
    #[error("clean step {interface}.{step} is not supported; this agent runs {}", supported_steps())]
    UnknownStep { interface: String, step: String },
    #[error("choosing the disks to clean failed")]
    Disks(#[source] Box<RootDiskError>),
    #[error("{device} is read-only ({} is 1): it cannot be cleaned, and it is not skipped silently", flag.display())]
    ReadOnly { device: String, flag: PathBuf },
    #[error("cleaning {device} failed")]
    Device {
        device: String,
        #[source]
        source: EraseError,
    },
    #[error("{} disks failed: {}", .0.len(), .0.iter().map(|error| chain(error)).collect::<Vec<_>>().join("; "))]
    Several(Vec<CleanError>),
}

pub(crate) use ferric_runner::error_chain as chain;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    EraseDevicesMetadata,
    EraseDevices,
}

impl Step {
    fn parse(step: &CleanStep) -> Result<Self, CleanError> {
        match (step.interface.as_str(), step.step.as_str()) {
            ("deploy", "erase_devices_metadata") => Ok(Step::EraseDevicesMetadata),
            ("deploy", "erase_devices") => Ok(Step::EraseDevices),
            _ => Err(CleanError::UnknownStep { interface: step.interface.clone(), step: step.step.clone() }),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Step::EraseDevicesMetadata => "erase_devices_metadata",
            Step::EraseDevices => "erase_devices",
        }
    }
}

/// One disk to clean.
pub(crate) struct DiskJob {
    /// As reported and in errors, e.g. `/dev/sda`.
    pub device: String,
    pub path: PathBuf,
    /// Its `sys/block/<kernel name>` directory under the root.
    pub sysfs: PathBuf,
    pub size: u64,
}

impl DiskJob {
    fn new(disk: &Disk, env: &CleanEnv) -> Self {
        let path = match (&env.devices, disk.name.strip_prefix("/dev/")) {
            (None, Some(relative)) => env.dev_dir.join(relative),
            _ => PathBuf::from(&disk.name),
        };
        // The kernel's name: that of the node (symlinks resolved), else the inventory's with `/` as `!`.
        let kernel_name = std::fs::canonicalize(&path)
            .ok()
            .and_then(|real| real.file_name().map(|name| name.to_string_lossy().into_owned()))
            .unwrap_or_else(|| disk.name.trim_start_matches("/dev/").replace('/', "!"));
        let sysfs = env.root.join("sys/block").join(kernel_name);
        Self { device: disk.name.clone(), path, sysfs, size: disk.size }
    }

    fn is_nvme(&self) -> bool {
        self.sysfs.file_name().is_some_and(|name| name.to_string_lossy().starts_with("nvme"))
    }

    /// A SCSI disk behind libata (SATA, PATA): the only kind ATA security commands reach.
    fn is_ata(&self) -> bool {
        read_trimmed(&self.sysfs.join("device/vendor")).as_deref() == Some("ATA")
    }

    fn read_only_flag(&self) -> Option<PathBuf> {
        let flag = self.sysfs.join("ro");
        (read_trimmed(&flag).as_deref() == Some("1")).then_some(flag)
    }
}

/// The step's progress as heartbeats show it: `erase_devices: /dev/sda zero fill; /dev/sdb ...`.
pub(crate) struct StepProgress<'a> {
    step: &'static str,
    tracker: &'a ProgressTracker,
    stages: Mutex<BTreeMap<String, String>>,
}

impl<'a> StepProgress<'a> {
    fn new(step: &'static str, tracker: &'a ProgressTracker) -> Self {
        tracker.set_stage(step);
        Self { step, tracker, stages: Mutex::new(BTreeMap::new()) }
    }

    pub fn set(&self, device: &str, what: &str) {
        let mut stages = self.stages.lock().unwrap_or_else(|e| e.into_inner());
        stages.insert(device.to_owned(), what.to_owned());
        self.publish(&stages);
    }

    fn finish(&self, device: &str) {
        let mut stages = self.stages.lock().unwrap_or_else(|e| e.into_inner());
        stages.remove(device);
        self.publish(&stages);
    }

    pub fn advance(&self, bytes: u64) {
        self.tracker.advance(bytes);
    }

    fn publish(&self, stages: &BTreeMap<String, String>) {
        let parts: Vec<String> = stages.iter().map(|(device, what)| format!("{device} {what}")).collect();
        let stage =
            if parts.is_empty() { self.step.to_owned() } else { format!("{}: {}", self.step, parts.join("; ")) };
        self.tracker.set_stage(&stage);
    }
}

/// The steps this agent runs, as `deploy.step, ...`.
fn supported_steps() -> String {
    DEPLOY_CLEAN_STEPS.map(|step| format!("deploy.{step}")).join(", ")
}

/// Runs one clean step on every disk of `env` minus `skip` (hint dicts); progress through `progress`.
pub fn execute_clean_step(
    step: &CleanStep,
    skip: &[Value],
    env: &CleanEnv,
    progress: &ProgressTracker,
) -> Result<CleanStepResult, CleanError> {
    let kind = Step::parse(step)?;
    let disks = match &env.devices {
        Some(paths) => paths.iter().map(|path| explicit_disk(path)).collect::<Result<Vec<_>, _>>()?,
        // Software RAID devices are cleaned through their member disks: erasing both would write
        // everything twice, and a skipped member's array would still be wiped through the md device.
        None => inventory::scan(&env.root, None)
            .disks
            .into_iter()
            .filter(|disk| !disk.name.starts_with("/dev/md"))
            .collect(),
    };
    let disks = root_disk::without_skipped(disks, skip).map_err(|error| CleanError::Disks(Box::new(error)))?;
    let jobs: Vec<DiskJob> = disks.iter().map(|disk| DiskJob::new(disk, env)).collect();
    // Checked before anything is written, so a refused step leaves every disk as it was.
    if let Some((job, flag)) = jobs.iter().find_map(|job| job.read_only_flag().map(|flag| (job, flag))) {
        return Err(CleanError::ReadOnly { device: job.device.clone(), flag });
    }
    let names: Vec<&str> = jobs.iter().map(|job| job.device.as_str()).collect();
    tracing::info!(step = kind.name(), disks = %names.join(", "), skipped = skip.len(), "cleaning");
    let step_progress = StepProgress::new(kind.name(), progress);
    if kind == Step::EraseDevices {
        progress.set_total(Some(jobs.iter().map(|job| job.size).sum()));
    }
    let results = for_each_concurrently(&jobs, env.concurrency, |job| {
        let outcome = match FileTarget::open(&job.path) {
            Ok(mut target) => clean_disk(kind, job, &mut target, env, &step_progress),
            Err(source) => Err(CleanError::Device { device: job.device.clone(), source: EraseError::Open(source) }),
        };
        step_progress.finish(&job.device);
        outcome
    });
    let (mut devices, mut errors) = (Vec::new(), Vec::new());
    for result in results {
        match result {
            Ok(device) => devices.push(device),
            Err(error) => errors.push(error),
        }
    }
    progress.set_stage(&format!("{} done", kind.name()));
    match errors.len() {
        0 => Ok(CleanStepResult { step: step.step.clone(), devices }),
        1 => Err(errors.remove(0)),
        _ => Err(CleanError::Several(errors)),
    }
}

/// Cleans one disk through `target` (a fault-injecting one in tests); errors name the disk.
fn clean_disk(
    kind: Step,
    job: &DiskJob,
    target: &mut dyn Target,
    env: &CleanEnv,
    progress: &StepProgress,
) -> Result<ErasedDevice, CleanError> {
    let result = match kind {
        Step::EraseDevicesMetadata => metadata::erase(job, target, progress),
        Step::EraseDevices => erase::erase(job, target, &env.methods, env.verify_samples, progress),
    };
    result.map_err(|source| CleanError::Device { device: job.device.clone(), source })
}

/// A device given by path: its name is the path, its size what seeking to its end says.
fn explicit_disk(path: &Path) -> Result<Disk, CleanError> {
    let device = path.display().to_string();
    let size = File::open(path)
        .and_then(|mut file| file.seek(SeekFrom::End(0)))
        .map_err(|source| CleanError::Device { device: device.clone(), source: EraseError::Open(source) })?;
    Ok(Disk { name: device, size, ..Disk::default() })
}

/// Runs `work` on every job, at most `concurrency` at a time; results in the jobs' order.
fn for_each_concurrently<T: Send>(jobs: &[DiskJob], concurrency: usize, work: impl Fn(&DiskJob) -> T + Sync) -> Vec<T> {
    let next = AtomicUsize::new(0);
    let workers = concurrency.clamp(1, jobs.len().max(1));
    let mut done: Vec<(usize, T)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some(job) = jobs.get(index) else { return mine };
                        mine.push((index, work(job)));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    });
    done.sort_by_key(|(index, _)| *index);
    done.into_iter().map(|(_, result)| result).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::{Fault, FaultyTarget};

    fn step(interface: &str, name: &str) -> CleanStep {
        CleanStep { interface: interface.into(), step: name.into(), args: Value::Null }
    }

    #[test]
    fn unknown_steps_are_refused_naming_the_supported_ones() {
        let env = CleanEnv::new(tempfile::tempdir().unwrap().path());
        let cases = [
            ("another step", step("deploy", "erase_pstore"), "deploy.erase_pstore"),
            ("a known step on another interface", step("raid", "erase_devices"), "raid.erase_devices"),
        ];
        for (name, step, shown) in cases {
            let error = execute_clean_step(&step, &[], &env, &ProgressTracker::default()).unwrap_err();
            assert_eq!(
                error.to_string(),
                format!(
                    "clean step {shown} is not supported; this agent runs deploy.erase_devices, \
                     deploy.erase_devices_metadata"
                ),
                "{name}"
            );
        }
    }

    fn put(root: &Path, relative: &str, text: &str) {
        let path = root.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn disk_jobs_from_the_inventory_and_from_paths() {
        let root = tempfile::tempdir().unwrap();
        put(root.path(), "sys/block/sda/device/vendor", "ATA     \n");
        put(root.path(), "sys/block/sdb/device/vendor", "QEMU    \n");
        put(root.path(), "sys/block/sdb/ro", "1\n");
        put(root.path(), "sys/block/nvme0n1/ro", "0\n");
        let mut env = CleanEnv::new(root.path());
        env.dev_dir = PathBuf::from("/fixture/dev");
        let disk = |name: &str| Disk { name: name.into(), size: 1 << 30, ..Disk::default() };
        let cases = [
            ("SATA disk", disk("/dev/sda"), "/fixture/dev/sda", "sda", (false, true, false)),
            ("read-only SCSI disk", disk("/dev/sdb"), "/fixture/dev/sdb", "sdb", (false, false, true)),
            ("NVMe namespace", disk("/dev/nvme0n1"), "/fixture/dev/nvme0n1", "nvme0n1", (true, false, false)),
            (
                "name with a directory",
                disk("/dev/cciss/c0d0"),
                "/fixture/dev/cciss/c0d0",
                "cciss!c0d0",
                (false, false, false),
            ),
        ];
        for (name, disk, path, kernel_name, (nvme, ata, read_only)) in cases {
            let job = DiskJob::new(&disk, &env);
            assert_eq!((job.device.as_str(), job.path.as_path()), (disk.name.as_str(), Path::new(path)), "{name}");
            assert_eq!(job.sysfs, root.path().join("sys/block").join(kernel_name), "{name}");
            assert_eq!((job.is_nvme(), job.is_ata(), job.read_only_flag().is_some()), (nvme, ata, read_only), "{name}");
        }
        env.devices = Some(vec![PathBuf::from("/fixture/dev/sda")]);
        let job = DiskJob::new(&disk("/fixture/dev/sda"), &env);
        assert_eq!(job.path, Path::new("/fixture/dev/sda"), "explicit devices are used as given");
    }

    #[test]
    fn eio_during_zero_fill_fails_the_disk_naming_it() {
        let file = tempfile::NamedTempFile::new_in("/var/tmp").unwrap();
        std::fs::write(file.path(), vec![0xa5u8; 48 << 20]).unwrap();
        let mut env = CleanEnv::new(tempfile::tempdir().unwrap().path());
        env.methods = vec![EraseMethod::WriteZeroes, EraseMethod::ZeroFill];
        let disk = Disk { name: file.path().display().to_string(), size: 48 << 20, ..Disk::default() };
        let job = DiskJob::new(&disk, &env);
        let tracker = ProgressTracker::default();
        let progress = StepProgress::new("erase_devices", &tracker);
        // No write-zeroes support, and the device fails once 20 MiB were written.
        let target = FaultyTarget::new(FileTarget::open(file.path()).unwrap(), Fault::EioAfter(20 << 20));
        let mut target = FaultyTarget::new(target, Fault::NoFastZeroing);
        let error = clean_disk(Step::EraseDevices, &job, &mut target, &env, &progress).unwrap_err();
        assert_eq!(
            chain(&error),
            format!(
                "cleaning {} failed: zero fill at byte {} failed: Input/output error (os error 5)",
                disk.name,
                16 << 20
            )
        );
        assert_eq!(tracker.bytes_done(), 16 << 20, "progress counts what was written before the failure");
    }

    #[test]
    fn several_failures_are_all_named() {
        let error = |device: &str| CleanError::Device {
            device: device.into(),
            source: EraseError::Sync(std::io::Error::from_raw_os_error(5)),
        };
        let several = CleanError::Several(vec![error("/dev/sda"), error("/dev/sdb")]);
        assert_eq!(
            several.to_string(),
            "2 disks failed: cleaning /dev/sda failed: syncing it failed: Input/output error (os error 5); \
             cleaning /dev/sdb failed: syncing it failed: Input/output error (os error 5)"
        );
    }

    #[test]
    fn progress_names_each_disk_at_work() {
        let tracker = ProgressTracker::default();
        let progress = StepProgress::new("erase_devices", &tracker);
        assert_eq!(tracker.snapshot().stage, "erase_devices");
        progress.set("/dev/sdb", "zero fill");
        progress.set("/dev/sda", "nvme format");
        assert_eq!(tracker.snapshot().stage, "erase_devices: /dev/sda nvme format; /dev/sdb zero fill");
        progress.finish("/dev/sda");
        progress.advance(4096);
        let snapshot = tracker.snapshot();
        assert_eq!((snapshot.stage.as_str(), snapshot.bytes_done), ("erase_devices: /dev/sdb zero fill", 4096));
    }

    #[test]
    fn concurrent_work_keeps_the_jobs_order_and_its_limit() {
        let jobs: Vec<DiskJob> = (0..7)
            .map(|index| DiskJob { device: format!("d{index}"), path: PathBuf::new(), sysfs: PathBuf::new(), size: 0 })
            .collect();
        for concurrency in [1, 3, 16] {
            let running = AtomicUsize::new(0);
            let peak = AtomicUsize::new(0);
            let results = for_each_concurrently(&jobs, concurrency, |job| {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(20));
                running.fetch_sub(1, Ordering::SeqCst);
                job.device.clone()
            });
            assert_eq!(results, ["d0", "d1", "d2", "d3", "d4", "d5", "d6"], "concurrency {concurrency}");
            assert!(peak.load(Ordering::SeqCst) <= concurrency.min(7), "concurrency {concurrency}");
            assert!(concurrency == 1 || peak.load(Ordering::SeqCst) > 1, "concurrency {concurrency}: ran in parallel");
        }
    }
}
