//! The clean steps on loop devices (as root): what they erase, what they prove, what they leave alone.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use ferric_agent::clean::metadata::plan;
use ferric_agent::clean::{execute_clean_step, CleanEnv, CleanError, EraseMethod};
use ferric_agent::disklabel::{self, DiskLabel};
use ferric_agent::progress::ProgressTracker;
use ferric_agent::target::FileTarget;
use ferric_protocol::{CleanStep, CleanStepResult};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;

fn run(program: &str, args: &[&str]) -> String {
    let mut command = Command::new(program);
    command.args(args);
    ferric_runner::run(format!("test: {program}"), &mut command).unwrap().stdout
}

/// A loop device, detached when dropped.
struct Loop(String);

impl Loop {
    fn attach(file: &Path, options: &[&str]) -> Loop {
        let mut args = vec!["-f", "--show"];
        args.extend(options);
        args.push(file.to_str().unwrap());
        Loop(run("losetup", &args).trim().to_owned())
    }

    /// `len` bytes of `file` from `start`: how partitions are reached, the kernel here does not scan
    /// partition tables on loop devices.
    fn over(file: &Path, start: u64, len: u64) -> Loop {
        Loop::attach(file, &["-o", &start.to_string(), "--sizelimit", &len.to_string()])
    }

    fn path(&self) -> &Path {
        Path::new(&self.0)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = ferric_runner::run("losetup -d", Command::new("losetup").args(["-d", &self.0]));
    }
}

fn backing_file(len: u64) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new_in("/var/tmp").unwrap();
    file.as_file().set_len(len).unwrap();
    file
}

/// A file of `len` pseudo-random bytes, every one of them non-zero.
fn random_file(len: u64, seed: u64) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new_in("/var/tmp").unwrap();
    let mut state = seed | 1;
    let mut block = vec![0u8; MIB as usize];
    for offset in (0..len).step_by(MIB as usize) {
        for word in block.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&(state | 0x8080_8080_8080_8080).to_le_bytes());
        }
        file.as_file().write_all_at(&block, offset).unwrap();
    }
    file
}

fn sha256(path: &Path) -> String {
    let mut hasher = Sha256::new();
    std::io::copy(&mut File::open(path).unwrap(), &mut hasher).unwrap();
    hex::encode(hasher.finalize())
}

/// What `blkid -p` finds on `device` (low-level probe, no cache), or None (exit status 2).
fn blkid(device: &Path) -> Option<String> {
    let mut command = Command::new("blkid");
    command.args(["-p", "-o", "export"]).arg(device);
    match ferric_runner::run("test: blkid -p", &mut command) {
        Ok(found) => Some(found.stdout),
        Err(ferric_runner::CommandError::Failed { status, .. }) if status.ends_with("exit status: 2") => None,
        Err(error) => panic!("{error}"),
    }
}

/// Every signature `wipefs` would erase on `device` (empty when none).
fn wipefs(device: &Path) -> String {
    run("wipefs", &["--no-act", device.to_str().unwrap()])
}

fn step(name: &str) -> CleanStep {
    CleanStep { interface: "deploy".into(), step: name.into(), args: json!({}) }
}

fn env_for(devices: &[&Loop], methods: &[EraseMethod]) -> CleanEnv {
    let mut env = CleanEnv::new("/");
    env.devices = Some(devices.iter().map(|device| device.path().to_owned()).collect());
    env.methods = methods.to_vec();
    env
}

fn clean(name: &str, env: &CleanEnv, skip: &[Value]) -> (Result<CleanStepResult, CleanError>, ProgressTracker) {
    let progress = ProgressTracker::default();
    (execute_clean_step(&step(name), skip, env, &progress), progress)
}

/// An md 1.x superblock as mdadm writes it for a two-disk RAID1 with one member missing (the kernel
/// here has no md driver, so `mdadm --create` cannot run): `mdadm --examine` accepts it, checksum included.
fn md_superblock(super_offset: u64, data_offset: u64, data_size: u64) -> Vec<u8> {
    let mut sb = vec![0u8; 256 + 2 * 2];
    let put = |sb: &mut Vec<u8>, offset: usize, bytes: &[u8]| sb[offset..offset + bytes.len()].copy_from_slice(bytes);
    put(&mut sb, 0, &0xa92b_4efcu32.to_le_bytes());
    put(&mut sb, 4, &1u32.to_le_bytes());
    put(&mut sb, 16, &[0x11; 16]);
    put(&mut sb, 32, b"ferric:clean-test");
    put(&mut sb, 64, &1_700_000_000u64.to_le_bytes());
    put(&mut sb, 72, &1u32.to_le_bytes());
    put(&mut sb, 80, &data_size.to_le_bytes());
    put(&mut sb, 92, &2u32.to_le_bytes());
    put(&mut sb, 128, &data_offset.to_le_bytes());
    put(&mut sb, 136, &data_size.to_le_bytes());
    put(&mut sb, 144, &super_offset.to_le_bytes());
    put(&mut sb, 168, &[0x22; 16]);
    put(&mut sb, 192, &1_700_000_000u64.to_le_bytes());
    put(&mut sb, 200, &1u64.to_le_bytes());
    put(&mut sb, 208, &u64::MAX.to_le_bytes());
    put(&mut sb, 220, &2u32.to_le_bytes());
    put(&mut sb, 256, &[0, 0, 0xff, 0xff]);
    let sum: u64 = sb.chunks_exact(4).map(|word| u64::from(u32::from_le_bytes(word.try_into().unwrap()))).sum();
    let checksum = ((sum & 0xffff_ffff) + (sum >> 32)) as u32;
    put(&mut sb, 216, &checksum.to_le_bytes());
    sb
}

/// How each partition of the test disk is set up, and what `blkid -p` must then report on it.
#[derive(Clone, Copy)]
enum Content {
    Ext4,
    Xfs,
    Swap,
    /// md superblock 1.0 (at the end) or 1.2 (4 KiB from the start).
    Md10,
    Md12,
    LvmPv,
}

impl Content {
    fn blkid_lines(self) -> &'static [&'static str] {
        match self {
            Content::Ext4 => &["TYPE=ext4"],
            Content::Xfs => &["TYPE=xfs"],
            Content::Swap => &["TYPE=swap"],
            Content::Md10 => &["TYPE=linux_raid_member", "VERSION=1.0"],
            Content::Md12 => &["TYPE=linux_raid_member", "VERSION=1.2"],
            Content::LvmPv => &["TYPE=LVM2_member"],
        }
    }

    fn create(self, disk: &Path, start: u64, len: u64) {
        let part = Loop::over(disk, start, len);
        let device = part.0.as_str();
        match self {
            Content::Ext4 => drop(run("mkfs.ext4", &["-q", "-F", device])),
            Content::Xfs => drop(run("mkfs.xfs", &["-q", "-f", device])),
            Content::Swap => drop(run("mkswap", &[device])),
            Content::LvmPv => {
                drop(run("pvcreate", &["-ff", "-y", "--config", "devices { use_devicesfile = 0 }", device]))
            }
            Content::Md10 | Content::Md12 => {
                let sectors = len / 512;
                let (super_offset, data_offset, data_size) = match self {
                    Content::Md10 => {
                        let super_offset = ((len & !4095) - 8192) / 512;
                        (super_offset, 0, super_offset)
                    }
                    _ => (8, 2048, sectors - 2048),
                };
                let sb = md_superblock(super_offset, data_offset, data_size);
                File::options().write(true).open(disk).unwrap().write_all_at(&sb, start + super_offset * 512).unwrap();
                let examined = run("mdadm", &["--examine", device]);
                assert!(examined.contains("Checksum : ") && examined.contains(" - correct"), "{examined}");
            }
        }
    }
}

fn label_of(path: &Path) -> DiskLabel {
    disklabel::read(&mut FileTarget::open(path).unwrap()).unwrap()
}

/// Bytes that differ between `before` and `after`, as half-open ranges (compared MiB by MiB).
fn differences(before: &Path, after: &Path) -> Vec<(u64, u64)> {
    let (mut a, mut b) = (File::open(before).unwrap(), File::open(after).unwrap());
    let (mut x, mut y) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let mut offset = 0u64;
    loop {
        let n = a.read(&mut x).unwrap();
        b.read_exact(&mut y[..n]).unwrap();
        if n == 0 {
            return ranges;
        }
        if x[..n] == y[..n] {
            offset += n as u64;
            continue;
        }
        for (index, (left, right)) in x[..n].iter().zip(&y[..n]).enumerate() {
            if left != right {
                let position = offset + index as u64;
                match ranges.last_mut() {
                    Some(last) if last.1 == position => last.1 += 1,
                    _ => ranges.push((position, position + 1)),
                }
            }
        }
        offset += n as u64;
    }
}

#[test]
fn metadata_erase_leaves_no_signature_on_the_disk_or_its_partitions() {
    let disk = backing_file(512 * MIB);
    let path = disk.path().to_str().unwrap();
    run(
        "sgdisk",
        &[
            "-n",
            "1:0:+32M",
            "-t",
            "1:8300",
            "-n",
            "2:0:+300M",
            "-t",
            "2:8300",
            "-n",
            "3:0:+16M",
            "-t",
            "3:8200",
            "-n",
            "4:0:+16M",
            "-t",
            "4:fd00",
            "-n",
            "5:0:+16M",
            "-t",
            "5:fd00",
            "-n",
            "6:0:+16M",
            "-t",
            "6:8e00",
            path,
        ],
    );
    let label = label_of(disk.path());
    let contents = [Content::Ext4, Content::Xfs, Content::Swap, Content::Md10, Content::Md12, Content::LvmPv];
    assert_eq!(label.partitions.len(), contents.len());
    for (partition, content) in label.partitions.iter().zip(contents) {
        content.create(disk.path(), partition.start, partition.size);
        let part = Loop::over(disk.path(), partition.start, partition.size);
        let found = blkid(part.path()).unwrap_or_default();
        for line in content.blkid_lines() {
            assert!(found.lines().any(|l| l == *line), "partition {}: {line} in {found}", partition.number);
        }
    }
    let bystander_file = random_file(32 * MIB, 7);
    let bystander = Loop::attach(bystander_file.path(), &[]);
    let bystander_before = sha256(bystander.path());
    let copy = tempfile::NamedTempFile::new_in("/var/tmp").unwrap();
    run("cp", &["--sparse=always", path, copy.path().to_str().unwrap()]);

    let device = Loop::attach(disk.path(), &[]);
    assert!(blkid(device.path()).is_some_and(|found| found.contains("PTTYPE=gpt")));
    let env = env_for(&[&device], &EraseMethod::ALL);
    let (result, progress) = clean("erase_devices_metadata", &env, &[]);
    let result = result.unwrap();
    drop(device);

    let [erased] = &result.devices[..] else { panic!("{result:?}") };
    let planned = plan(512 * MIB, Some(&label));
    let planned_bytes: u64 = planned.iter().map(|range| range.end - range.start).sum();
    assert_eq!(result.step, "erase_devices_metadata");
    assert_eq!((erased.method.as_str(), erased.bytes, erased.samples_verified), ("metadata", planned_bytes, 0));
    assert!(erased.seconds > 0.0 && erased.mib_per_second > 0.0, "{erased:?}");
    assert_eq!(progress.bytes_done(), planned_bytes);

    // Nothing recognisable is left: not on the disk (no table, primary or backup), not where the
    // partitions were.
    let device = Loop::attach(disk.path(), &[]);
    assert_eq!(blkid(device.path()), None);
    assert_eq!(wipefs(device.path()), "");
    for partition in &label.partitions {
        let part = Loop::over(disk.path(), partition.start, partition.size);
        assert_eq!(blkid(part.path()), None, "partition {}", partition.number);
        assert_eq!(wipefs(part.path()), "", "partition {}", partition.number);
    }
    // Only the planned ranges changed, and the disk that was not listed is untouched.
    for (start, end) in differences(copy.path(), disk.path()) {
        assert!(planned.iter().any(|range| range.start <= start && end <= range.end), "{start}..{end} changed");
    }
    assert_eq!(sha256(bystander.path()), bystander_before);
}

fn all_zero(path: &Path) -> bool {
    let mut file = File::open(path).unwrap();
    let mut block = vec![0u8; MIB as usize];
    loop {
        let n = file.read(&mut block).unwrap();
        if n == 0 {
            return true;
        }
        if block[..n].iter().any(|byte| *byte != 0) {
            return false;
        }
    }
}

#[test]
fn erase_devices_zeroes_the_disk_with_each_method_and_proves_it() {
    use EraseMethod::*;
    let cases = [
        ("default order: a loop device offers write zeroes", EraseMethod::ALL.to_vec(), "write zeroes"),
        ("discard, trusted after the read-back", vec![Discard, ZeroFill], "discard"),
        ("zero fill", vec![ZeroFill], "zero fill"),
    ];
    for (name, methods, method) in cases {
        let file = random_file(64 * MIB, 3);
        let device = Loop::attach(file.path(), &[]);
        let (result, progress) = clean("erase_devices", &env_for(&[&device], &methods), &[]);
        let result = result.unwrap();
        let [erased] = &result.devices[..] else { panic!("{name}: {result:?}") };
        assert_eq!((erased.device.as_str(), erased.method.as_str()), (device.0.as_str(), method), "{name}");
        assert_eq!(erased.bytes, 64 * MIB, "{name}");
        // Both ends and up to 64 distinct random MiB of the 64 MiB device.
        assert!((24..=64).contains(&erased.samples_verified), "{name}: {}", erased.samples_verified);
        assert!(all_zero(file.path()), "{name}: the whole device reads zero");
        let snapshot = progress.snapshot();
        assert_eq!((snapshot.bytes_done, snapshot.bytes_total), (64 * MIB, Some(64 * MIB)), "{name}");
        assert_eq!(snapshot.stage, "erase_devices done", "{name}");
    }
}

#[test]
fn erase_devices_erases_several_disks_at_once_in_their_order() {
    let files = [random_file(24 * MIB, 11), random_file(40 * MIB, 12), random_file(8 * MIB, 13)];
    let devices: Vec<Loop> = files.iter().map(|file| Loop::attach(file.path(), &[])).collect();
    let (result, _) =
        clean("erase_devices", &env_for(&devices.iter().collect::<Vec<_>>(), &[EraseMethod::ZeroFill]), &[]);
    let result = result.unwrap();
    let reported: Vec<(&str, u64)> = result.devices.iter().map(|d| (d.device.as_str(), d.bytes)).collect();
    let expected: Vec<(&str, u64)> =
        devices.iter().zip([24, 40, 8]).map(|(d, mib)| (d.0.as_str(), mib * MIB)).collect();
    assert_eq!(reported, expected);
    assert!(files.iter().all(|file| all_zero(file.path())));
}

#[test]
fn erase_devices_leaves_a_skipped_disk_untouched() {
    let (kept_file, erased_file) = (random_file(16 * MIB, 5), random_file(16 * MIB, 6));
    let (kept, erased) = (Loop::attach(kept_file.path(), &[]), Loop::attach(erased_file.path(), &[]));
    let before = sha256(kept_file.path());
    let skip = [json!({"name": kept.0})];
    let (result, _) = clean("erase_devices", &env_for(&[&kept, &erased], &EraseMethod::ALL), &skip);
    let result = result.unwrap();
    let names: Vec<&str> = result.devices.iter().map(|d| d.device.as_str()).collect();
    assert_eq!(names, [erased.0.as_str()]);
    assert!(all_zero(erased_file.path()));
    assert_eq!(sha256(kept_file.path()), before);
}

#[test]
fn a_read_only_disk_fails_the_step_before_anything_is_erased() {
    let (writable_file, read_only_file) = (random_file(8 * MIB, 8), random_file(8 * MIB, 9));
    let writable = Loop::attach(writable_file.path(), &[]);
    let read_only = Loop::attach(read_only_file.path(), &["-r"]);
    let before = sha256(writable_file.path());
    for step in ["erase_devices", "erase_devices_metadata"] {
        let (result, _) = clean(step, &env_for(&[&writable, &read_only], &EraseMethod::ALL), &[]);
        let error = result.unwrap_err().to_string();
        let name = PathBuf::from(&read_only.0).file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(
            error,
            format!(
                "{} is read-only (/sys/block/{name}/ro is 1): it cannot be cleaned, and it is not skipped silently",
                read_only.0
            ),
            "{step}"
        );
        assert_eq!(sha256(writable_file.path()), before, "{step}: the writable disk is untouched");
    }
}
