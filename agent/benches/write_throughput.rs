//! Image write throughput and memory, measured in one run on one loop device.
//!
//! `cargo bench -p ferric-agent --bench write_throughput` (as root: it creates loop devices).
//! Writes the same image (random data, compressible text and zero runs; 1 GiB, 128 MiB with
//! BENCH_SMALL=1) to the same loop device as raw, raw.gz, raw.zst and qcow2 with the agent's
//! `write_image` (reading a local file: this measures the engine, not the network), against
//! `dd oflag=direct` (raw) and `qemu-img convert -t none` (raw and qcow2), in interleaved rounds
//! (best and median reported: the machine may be shared). Before each run the device is discarded,
//! dirty pages are synced and the device's page cache is dropped, while the image file is read into
//! the page cache (it arrives at memory speed, as from a fast network, for every contender); after
//! the run, the device content is checked. IPA's way with qcow2 (checksum the downloaded file, then
//! qemu-img convert) is timed too.
//! The agent uses O_DIRECT for its aligned writes (all but the head and unaligned tails), flushes
//! behind its writes every 16 MiB and fsyncs at the end, like dd conv=fsync; it also computes
//! sha256, which dd and qemu-img do not: one core hashing the download is the agent's limit, and
//! each agent run is also compared with it.
//! Then the peak RSS of a child process writing a 4 GiB-virtual qcow2 that holds the image's data.
//! FERRIC_BENCH_DIR chooses where the image files and the loop devices' backing files go (/var/tmp).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use ferric_agent::checksum::{Algorithm, Expected};
use ferric_agent::image::{write_image, WriteReport};
use ferric_agent::progress::ProgressTracker;
use ferric_agent::target::{FileTarget, Target};
use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;
const RSS_CHILD: &str = "--peak-rss-child";
const RSS_GOAL_MIB: f64 = 64.0;
const VIRTUAL_GIB: u64 = 4;
const SETTLE_MS: u64 = 1000;
/// Write speed of the throttled runs: slower than one core's sha256, like most single disks.
const THROTTLED_MIB_S: u64 = 1024;
const BLKIO_ROOT: &str = "/sys/fs/cgroup/blkio";

/// One way of putting an image onto the device.
type Writer<'a> = &'a dyn Fn(&Path) -> anyhow::Result<()>;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, image, device] = &args[..] {
        if flag == RSS_CHILD {
            return peak_rss_child(Path::new(image), Path::new(device));
        }
    }
    let small = std::env::var_os("BENCH_SMALL").is_some_and(|v| v != "0");
    let (image_mib, rounds): (u64, usize) = if small { (128, 2) } else { (1024, 3) };
    let base = std::env::var_os("FERRIC_BENCH_DIR").map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from);
    let dir = tempfile::tempdir_in(&base).with_context(|| format!("temporary directory in {}", base.display()))?;
    let started = Instant::now();

    println!("preparing a {image_mib} MiB image in {}", dir.path().display());
    let raw = dir.path().join("image.raw");
    make_image(&raw, image_mib)?;
    let gz = compress(&raw, "gz", |file| {
        let mut encoder = flate2::write::GzEncoder::new(file, flate2::Compression::new(6));
        std::io::copy(&mut File::open(&raw)?, &mut encoder)?;
        encoder.finish()?.flush()
    })?;
    let zst = compress(&raw, "zst", |file| {
        let mut encoder = zstd::stream::write::Encoder::new(file, 3)?;
        std::io::copy(&mut File::open(&raw)?, &mut encoder)?;
        encoder.finish()?.flush()
    })?;
    let qcow2 = dir.path().join("image.qcow2");
    run("qemu-img convert to qcow2", Command::new("qemu-img").args(["convert", "-O", "qcow2"]).arg(&raw).arg(&qcow2))?;

    let device = LoopDevice::new(&dir.path().join("device"), (image_mib + 64) * MIB)?;
    println!("target: {} (loop device over a sparse file in {})", device.path.display(), base.display());
    println!(
        "agent: write_image reading a local file, sha256-verified, O_DIRECT for aligned writes, fsync at the end\n"
    );

    let dd = |image: &Path| {
        let mut dd = Command::new("dd");
        dd.arg(format!("if={}", image.display())).arg(format!("of={}", device.path.display()));
        run("dd", dd.args(["bs=4M", "oflag=direct", "conv=fsync", "status=none"]))
    };
    // What dd costs when it must verify too, as the agent does: sha256sum on a tee of the stream.
    let dd_verified = |image: &Path| {
        let script = format!(
            "dd if={} bs=4M status=none | tee >(sha256sum >/dev/null) \\
             | dd of={} bs=4M iflag=fullblock oflag=direct conv=fsync status=none",
            image.display(),
            device.path.display()
        );
        run("dd with sha256sum", Command::new("bash").arg("-c").arg(script))
    };
    let qemu_img = |image: &Path| {
        let mut convert = Command::new("qemu-img");
        convert.args(["convert", "-n", "-O", "raw", "-t", "none"]).arg(image).arg(&device.path);
        run("qemu-img convert onto the device", &mut convert)
    };
    // How IPA verifies a qcow2: the downloaded file's checksum first, then the conversion.
    let qemu_img_verified = |image: &Path| {
        run("sha256sum", Command::new("sha256sum").arg(image))?;
        qemu_img(image)
    };
    let expected = [&gz, &zst, &qcow2]
        .into_iter()
        .map(|p| Ok((p.clone(), checksum_of(p)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let reference = checksum_of(&raw)?;
    let agent = |image: &Path| {
        let expected = expected.iter().find(|(p, _)| p == image).map_or(&reference, |(_, e)| e);
        let report = agent_write(image, expected, &device.path)?;
        anyhow::ensure!(report.image_bytes == image_mib * MIB, "wrote {} bytes", report.image_bytes);
        Ok(())
    };
    let runs: [(&str, Writer, &Path); 9] = [
        ("dd raw (bs=4M oflag=direct conv=fsync)", &dd, &raw),
        ("qemu-img convert -n -t none raw", &qemu_img, &raw),
        ("qemu-img convert -n -t none qcow2", &qemu_img, &qcow2),
        ("agent raw", &agent, &raw),
        ("agent raw.gz", &agent, &gz),
        ("agent raw.zst", &agent, &zst),
        ("agent qcow2", &agent, &qcow2),
        ("dd raw | tee >(sha256sum) | dd (verified)", &dd_verified, &raw),
        ("sha256sum, then qemu-img convert qcow2", &qemu_img_verified, &qcow2),
    ];
    let check = |name: &str| {
        let written = device_checksum(&device.path, image_mib * MIB)?;
        anyhow::ensure!(written == reference, "{name}: the device does not hold the image");
        Ok(())
    };
    let (best, median) = time_runs(&runs, rounds, &device, &check)?;

    let rate = |s: f64| image_mib as f64 / s;
    println!("{rounds} rounds; MiB/s of the {image_mib} MiB disk image written");
    println!("{:<44} {:>9} {:>9} {:>9} {:>9}", "image written", "file MiB", "best s", "MiB/s", "median s");
    for (i, (name, _, image)) in runs.iter().enumerate() {
        let file_mib = std::fs::metadata(image)?.len() as f64 / MIB as f64;
        println!("{name:<44} {file_mib:>9.1} {:>9.2} {:>9.0} {:>9.2}", best[i], rate(best[i]), median[i]);
    }
    let hash_rate = sha256_speed();
    println!("{:<44} {:>9} {:>9} {:>9.0}", "(sha256 alone, in memory, one core)", "", "", hash_rate);
    println!();
    for (label, (agent, baseline), goal) in [
        ("agent raw     / dd raw", (3, 0), "  (goal >= 95 %)"),
        ("agent raw     / dd raw verified", (3, 7), ""),
        ("agent raw     / qemu-img raw", (3, 1), ""),
        ("agent qcow2   / qemu-img qcow2", (6, 2), "  (goal >= 100 %)"),
        ("agent qcow2   / sha256sum, qemu-img", (6, 8), ""),
        ("agent raw.gz  / dd raw", (4, 0), ""),
        ("agent raw.zst / dd raw", (5, 0), ""),
    ] {
        let ratio = |times: &[f64]| times[baseline] / times[agent] * 100.0;
        println!("{label:<32} best {:>4.0} %   median {:>4.0} %{goal}", ratio(&best), ratio(&median));
    }
    // The agent cannot be faster than one core hashing its download: how close each run came.
    println!("\nagent / the checksum's limit (the file's size at {hash_rate:.0} MiB/s, one core):");
    for (i, (name, _, image)) in runs.iter().enumerate().filter(|(_, (name, ..))| name.starts_with("agent")) {
        let floor = std::fs::metadata(image)?.len() as f64 / MIB as f64 / hash_rate;
        println!(
            "{name:<32} floor {floor:>5.2} s   best {:>4.0} %   median {:>4.0} %",
            floor / best[i] * 100.0,
            floor / median[i] * 100.0
        );
    }

    // Where the disk, not the checksum, is the limit (most real disks): the same device throttled.
    println!("\nthe same device throttled to {THROTTLED_MIB_S} MiB/s of writes (a fast SATA or NVMe disk)");
    match Throttle::new(&device.path, THROTTLED_MIB_S)? {
        None => println!("skipped: no blkio cgroup (v1) to throttle writes with"),
        Some(throttle) => {
            let pick = [0, 2, 3, 6];
            let throttled: Vec<_> = pick.iter().map(|&i| runs[i]).collect();
            let (best, median) = time_runs(&throttled, rounds, &device, &check)?;
            drop(throttle);
            for (i, (name, ..)) in throttled.iter().enumerate() {
                println!("{name:<44} {:>9} {:>9.2} {:>9.0} {:>9.2}", "", best[i], rate(best[i]), median[i]);
            }
            for (label, (agent, baseline)) in
                [("agent raw     / dd raw", (2, 0)), ("agent qcow2   / qemu-img qcow2", (3, 1))]
            {
                let ratio = |times: &[f64]| times[baseline] / times[agent] * 100.0;
                println!("{label:<32} best {:>4.0} %   median {:>4.0} %", ratio(&best), ratio(&median));
            }
        }
    }
    drop(device);

    println!("\npeak RSS: the agent writing a {VIRTUAL_GIB} GiB-virtual qcow2 with {image_mib} MiB of data and 3 more islands");
    let big_raw = dir.path().join("big.raw");
    make_sparse_copy(&raw, &big_raw, VIRTUAL_GIB << 30)?;
    let big_qcow2 = dir.path().join("big.qcow2");
    let mut convert = Command::new("qemu-img");
    run("qemu-img convert to qcow2", convert.args(["convert", "-O", "qcow2"]).arg(&big_raw).arg(&big_qcow2))?;
    std::fs::remove_file(&big_raw)?;
    let big_device = LoopDevice::new(&dir.path().join("big-device"), VIRTUAL_GIB << 30)?;
    big_device.reset()?;
    let output =
        Command::new(std::env::current_exe()?).arg(RSS_CHILD).arg(&big_qcow2).arg(&big_device.path).output()?;
    anyhow::ensure!(output.status.success(), "child failed: {}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout)?;
    let peak_kib: f64 = stdout.trim().parse().with_context(|| format!("child printed {stdout:?}"))?;
    let peak_mib = peak_kib / 1024.0;
    let verdict = if peak_mib < RSS_GOAL_MIB { "meets" } else { "MISSES" };
    println!("peak RSS (VmHWM of the child) {peak_mib:.1} MiB: {verdict} the goal of < {RSS_GOAL_MIB} MiB");
    println!("\nbench took {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Times each run `rounds` times on `device`, checking the device after each; returns the best and
/// the median seconds of each run. Rounds interleave the runs so that load from other processes
/// spreads over all of them.
fn time_runs(
    runs: &[(&str, Writer, &Path)],
    rounds: usize,
    device: &LoopDevice,
    check: &dyn Fn(&str) -> anyhow::Result<()>,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let mut seconds = vec![Vec::new(); runs.len()];
    for _ in 0..rounds {
        for ((name, write, image), times) in runs.iter().zip(&mut seconds) {
            device.reset()?;
            // The image arrives at memory speed, as from a fast network: in the page cache.
            std::io::copy(&mut File::open(image)?, &mut std::io::sink())?;
            let timer = Instant::now();
            write(image).with_context(|| name.to_string())?;
            times.push(timer.elapsed().as_secs_f64());
            check(name)?;
        }
    }
    for times in &mut seconds {
        times.sort_by(f64::total_cmp);
    }
    let best = seconds.iter().map(|times| times[0]).collect();
    let median = seconds.iter().map(|times| times[times.len() / 2]).collect();
    Ok((best, median))
}

/// This process (and the commands it starts) in a blkio cgroup limiting writes to one device; back
/// in the root cgroup on drop.
struct Throttle {
    cgroup: PathBuf,
}

impl Throttle {
    /// `None` without cgroup v1's blkio controller.
    fn new(device: &Path, mib_per_second: u64) -> anyhow::Result<Option<Throttle>> {
        let root = Path::new(BLKIO_ROOT);
        if !root.join("cgroup.procs").exists() {
            return Ok(None);
        }
        let rdev = std::os::unix::fs::MetadataExt::rdev(&std::fs::metadata(device)?);
        let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
        let cgroup = root.join(format!("ferric-bench-{}", std::process::id()));
        std::fs::create_dir_all(&cgroup)?;
        let limit = format!("{major}:{minor} {}", mib_per_second * MIB);
        std::fs::write(cgroup.join("blkio.throttle.write_bps_device"), limit)?;
        std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())?;
        Ok(Some(Throttle { cgroup }))
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        let _ = std::fs::write(Path::new(BLKIO_ROOT).join("cgroup.procs"), std::process::id().to_string());
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

/// MiB/s of sha256 over data in memory: the ceiling for any verified write on this CPU.
fn sha256_speed() -> f64 {
    let data = vec![0x5au8; 64 << 20];
    let timer = Instant::now();
    let mut hasher = Sha256::new();
    for _ in 0..8 {
        hasher.update(&data);
    }
    std::hint::black_box(hasher.finalize());
    512.0 / timer.elapsed().as_secs_f64()
}

/// Run in a child process so its peak RSS is the write's alone: writes `image` and prints VmHWM in KiB.
fn peak_rss_child(image: &Path, device: &Path) -> anyhow::Result<()> {
    let report = agent_write(image, &checksum_of(image)?, device)?;
    anyhow::ensure!(report.image_bytes == VIRTUAL_GIB << 30, "wrote {} bytes", report.image_bytes);
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM in /proc/self/status")?;
    println!("{}", line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim());
    Ok(())
}

fn agent_write(image: &Path, expected: &Expected, device: &Path) -> anyhow::Result<WriteReport> {
    let mut target = FileTarget::open(device)?;
    let progress = Arc::new(ProgressTracker::default());
    Ok(write_image(File::open(image)?, expected, &mut target, &progress)?)
}

fn checksum_of(path: &Path) -> anyhow::Result<Expected> {
    let mut hasher = Sha256::new();
    std::io::copy(&mut File::open(path)?, &mut hasher)?;
    Ok(Expected { algorithm: Algorithm::Sha256, hex: hex::encode(hasher.finalize()) })
}

/// sha256 of the first `len` bytes of the device.
fn device_checksum(device: &Path, len: u64) -> anyhow::Result<Expected> {
    let mut hasher = Sha256::new();
    std::io::copy(&mut std::io::Read::take(File::open(device)?, len), &mut hasher)?;
    Ok(Expected { algorithm: Algorithm::Sha256, hex: hex::encode(hasher.finalize()) })
}

/// A disk-like image: per 8 MiB, 3.5 MiB of random data (binaries, compressed files), 2 MiB of text,
/// 2.5 MiB of zeros (free space); a boot sector at the start.
fn make_image(path: &Path, mib: u64) -> anyhow::Result<()> {
    let mut file = BufWriter::with_capacity(4 << 20, File::create(path)?);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut block = vec![0u8; 512 << 10];
    for half_mib in 0..mib * 2 {
        match half_mib % 16 {
            0..=6 => {
                for chunk in block.chunks_mut(8) {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    chunk.copy_from_slice(&state.to_le_bytes());
                }
            }
            7..=10 => {
                let text =
                    (0..).flat_map(|line| format!("{half_mib}:{line} lorem ipsum dolor sit amet\n").into_bytes());
                for (byte, t) in block.iter_mut().zip(text) {
                    *byte = t;
                }
            }
            _ => block.fill(0),
        }
        if half_mib == 0 {
            block[510] = 0x55;
            block[511] = 0xaa;
        }
        file.write_all(&block)?;
    }
    file.flush()?;
    Ok(())
}

fn compress(raw: &Path, extension: &str, encode: impl FnOnce(File) -> std::io::Result<()>) -> anyhow::Result<PathBuf> {
    let path = raw.with_extension(format!("raw.{extension}"));
    encode(File::create(&path)?).with_context(|| format!("compressing to {}", path.display()))?;
    Ok(path)
}

/// A sparse file of `len` bytes holding `raw` at its start and 1 MiB islands at 1/3, 2/3 and the end.
fn make_sparse_copy(raw: &Path, out: &Path, len: u64) -> anyhow::Result<()> {
    let file = File::create(out)?;
    file.set_len(len)?;
    std::io::copy(&mut File::open(raw)?, &mut &file)?;
    let island = vec![0xa5u8; MIB as usize];
    for offset in [len / 3, len / 3 * 2, len - MIB] {
        file.write_all_at(&island, offset)?;
    }
    Ok(())
}

fn run(description: &str, command: &mut Command) -> anyhow::Result<()> {
    ferric_runner::run(description, command)?;
    Ok(())
}

/// A loop device over a sparse file, detached on drop.
struct LoopDevice {
    path: PathBuf,
}

impl LoopDevice {
    fn new(backing: &Path, len: u64) -> anyhow::Result<LoopDevice> {
        File::create(backing)?.set_len(len)?;
        let attached = ferric_runner::run("losetup", Command::new("losetup").args(["-f", "--show"]).arg(backing))?;
        Ok(LoopDevice { path: PathBuf::from(attached.stdout.trim()) })
    }

    /// The same starting point for every run: device discarded (backing file deallocated), nothing
    /// dirty, nothing of the device cached.
    fn reset(&self) -> anyhow::Result<()> {
        let mut target = FileTarget::open(&self.path)?;
        let size = target.size();
        anyhow::ensure!(target.zero_fast(0, size)?, "{} cannot discard", self.path.display());
        target.drop_cache()?;
        run("sync", &mut Command::new("sync"))?;
        // Let background work from the previous run (discards of the freed blocks, writeback) finish.
        std::thread::sleep(std::time::Duration::from_millis(SETTLE_MS));
        Ok(())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = ferric_runner::run("losetup -d", Command::new("losetup").arg("-d").arg(&self.path));
    }
}
