//! The agent's image engine end to end (issue 5): each case deploys through IPMI (ipmi_sim powering a
//! UEFI QEMU VM, the real controller and the ramdisk built from the current agent) and boots what the
//! agent wrote.
//!
//! - a qcow2 with compressed clusters, with a config drive given as JSON in the provision request: the
//!   deployed test OS prints a value it read from `meta_data.json` on the config-2 partition;
//! - a partition image (an ext4 root file system) under UEFI: the VM boots through the boot entry the
//!   agent created, not the removable-media fallback, and the disk is laid out as asked, with an ext4
//!   ephemeral partition made by the ramdisk's mkfs.ext4;
//! - a zstd-compressed raw image larger than the VM's 512 MiB of RAM, written byte for byte;
//! - a download that the image server cuts once, mid-file, resumed with a Range request.
//!
//! Needs the workspace binaries: `cargo build --release --workspace --bins` (scripts/test.sh does it),
//! then `cargo test --release -p ferric-tests --test e2e_images -- --test-threads=1 --nocapture`.
//! The run's files (controller log, serial log, disk, images) stay in target/<profile>/ferric-tests/runs/<case>.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ferric_tests::images::{self, GptPartition};
use ferric_tests::ramdisk::shared_ramdisk;
use ferric_tests::scenario::{
    Budget, DeployRequest, DeploySetup, IpmiDeployEnv, IpmiDeployOutcome, DISK_BYTES, IMAGE_NAME, IPMI_CONTROLLER_FLAGS,
};
use ferric_tests::testos::{self, TestOsOptions, CONFIG_DRIVE_PROBE_KEY};
use ferric_tests::vm::qemu_lock;
use ferric_tests::{disk, init_logging, ok};
use serde_json::json;

/// Each case takes well under two minutes under TCG; this bounds a hung one.
const CASE_BUDGET: Duration = Duration::from_secs(8 * 60);
const MIB: u64 = 1024 * 1024;
const SECTOR: u64 = 512;
/// Ironic's limit for a config drive partition.
const CONFIG_DRIVE_MAX_BYTES: u64 = 64 * MIB;

/// TIMING lines of a deploy, prefixed with `case`.
fn print_timing(case: &str, outcome: &IpmiDeployOutcome) {
    println!("TIMING {case}_request_to_active_seconds={:.1}", outcome.boot.to_active.as_secs_f64());
    println!("TIMING {case}_request_to_marker_seconds={:.1}", outcome.boot.to_marker.as_secs_f64());
    println!("TIMING {case}_request_to_poweroff_seconds={:.1}", outcome.boot.to_poweroff.as_secs_f64());
    if let Some(speed) = outcome.boot.agent_write_mib_per_second() {
        println!("TIMING {case}_agent_write_mib_per_second={speed:.1}");
    }
    let result = &outcome.boot.node["driver_internal_info"]["agent_command"]["command_result"];
    if !result.is_null() {
        println!("{case}: the agent's write_image result: {result}");
    }
}

/// The serial console of the deployed VM's boots, for assertion messages.
fn serial_tail(ipmi: &IpmiDeployEnv, lines: usize) -> String {
    ferric_runner::tail_lines(&ipmi.bmc.serial_log().unwrap_or_default(), lines)
}

#[test]
fn qcow2_whole_disk_with_config_drive_from_json() {
    init_logging();
    let _qemu = qemu_lock();
    let budget = Budget::new(CASE_BUDGET);
    let ramdisk = shared_ramdisk();
    let probing = TestOsOptions { config_drive_probe: Some(ramdisk.kernel_package.clone()) };
    let setup = ok(DeploySetup::with_test_os(
        "e2e-qcow2-configdrive",
        ramdisk,
        "52:54:00:fe:00:21",
        IPMI_CONTROLLER_FLAGS,
        &probing,
    ));
    // Compressed clusters for the kernel and initrd, unallocated (zero) clusters for the rest of the ESP.
    let qcow2 = ok(images::qcow2_compressed(&setup.image.path, &setup.work_dir.join("testos.qcow2")));
    assert!(qcow2.size_bytes < setup.image.size_bytes / 2, "qcow2 of {} bytes: not compressed", qcow2.size_bytes);
    setup.image_server.add("testos.qcow2", qcow2.path.clone());
    let ipmi = ok(IpmiDeployEnv::enroll(setup, &budget));
    let env = &ipmi.env;

    let probe = format!("cd-{}", uuid::Uuid::new_v4().simple());
    let request = DeployRequest {
        configdrive: Some(json!({
            "meta_data": {"meta": {CONFIG_DRIVE_PROBE_KEY: probe}},
            "user_data": "#cloud-config\nhostname: ferric-e2e\n",
        })),
        ..DeployRequest::image("testos.qcow2", &qcow2.sha256).with("image_disk_format", json!("qcow2"))
    };
    let outcome = ok(ipmi.deploy_and_boot_with(&request, &budget));
    print_timing("qcow2_configdrive", &outcome);
    assert_eq!(outcome.boot.node["provision_state"], "active");

    // The deployed OS found the config drive and read this deploy's value from meta_data.json.
    let serial = ipmi.bmc.serial_log().unwrap_or_default();
    let reports = testos::config_drive_reports(&serial);
    assert!(
        !reports.is_empty() && reports.iter().all(|value| *value == probe),
        "the deployed OS read {reports:?}, not [{probe:?}]\n{}",
        serial_tail(&ipmi, 30)
    );

    // QEMU has exited: the image's ESP is on the disk as converted from qcow2, and the config drive is a
    // partition of its own at the end of the disk, with the backup GPT moved to the disk's real end.
    let image_partitions = ok(images::gpt_partitions(&env.image.path));
    let partitions = ok(images::gpt_partitions(&env.disk));
    assert_eq!(partitions.len(), image_partitions.len() + 1, "{partitions:?}");
    let esp = &partitions[0];
    assert_eq!(esp, &image_partitions[0], "the image's ESP moved or changed type");
    let differs =
        ok(disk::first_difference_in(&env.disk, esp.offset(), &env.image.path, esp.offset(), esp.size_bytes()));
    assert_eq!(differs, None, "the deployed ESP differs from the image's");
    let config_drive = partitions.last().unwrap();
    let volume = ok(disk::iso9660_volume_id(&env.disk, config_drive.offset()));
    assert_eq!(volume.as_deref(), Some("config-2"), "no config-2 ISO in the last partition {config_drive:?}");
    assert!(config_drive.size_bytes() <= CONFIG_DRIVE_MAX_BYTES, "{config_drive:?}");
    let disk_sectors = DISK_BYTES / SECTOR;
    assert!(
        config_drive.last_lba + 34 + 2048 >= disk_sectors,
        "the config drive {config_drive:?} is not at the end of a disk of {disk_sectors} sectors"
    );
    let found = ok(disk::boot_structures(&env.disk));
    assert!(found.primary_gpt && found.backup_gpt && found.mbr_signature, "{found:?}");
    // The node records the partitions' PARTUUIDs as the agent reported them, matching the disk.
    let internal = &outcome.boot.node["driver_internal_info"];
    for (key, partition) in [("efi system partition uuid", esp), (ferric_protocol::CONFIG_DRIVE_UUID_KEY, config_drive)]
    {
        let uuid = internal["partition_uuids"][key].as_str().unwrap_or_default().to_ascii_uppercase();
        let info = ok(ferric_runner::run(
            "read a partition's GUID",
            std::process::Command::new("sgdisk").arg("-i").arg(partition.number.to_string()).arg(&env.disk),
        ));
        assert!(
            !uuid.is_empty() && info.stdout.contains(&uuid),
            "{key} {uuid:?} is not partition {partition:?}: {internal}"
        );
    }
    assert_eq!(internal["efi_system_partition_uuid"], internal["partition_uuids"]["efi system partition uuid"]);
    let verified = ok(images::gpt_verify(&env.disk));
    assert!(
        verified.contains("No problems found") && !verified.contains("Caution") && !verified.contains("Warning"),
        "sgdisk --verify: {verified}"
    );
}

#[test]
fn partition_image_boots_through_the_agents_uefi_boot_entry() {
    init_logging();
    let _qemu = qemu_lock();
    let budget = Budget::new(CASE_BUDGET);
    let setup =
        ok(DeploySetup::new("e2e-partition-uefi", shared_ramdisk(), "52:54:00:fe:00:22", IPMI_CONTROLLER_FLAGS));
    // The root file system of an OS whose boot loader lives in /boot/efi/EFI/<vendor>/: the agent copies
    // that tree into the new ESP and creates a boot entry for the one loader in EFI/ferric/.
    let staging = setup.work_dir.join("root");
    let vendor_dir = staging.join("boot/efi/EFI/ferric");
    fs::create_dir_all(&vendor_dir).unwrap();
    fs::copy(&setup.image.uki, vendor_dir.join("testos.efi")).unwrap();
    fs::create_dir_all(staging.join("etc")).unwrap();
    fs::write(staging.join("etc/ferric-root"), format!("{}\n", setup.image.token)).unwrap();
    let root = ok(images::ext4_filesystem(&staging, &setup.work_dir.join("root.ext4"), 64 * MIB, "root"));
    setup.image_server.add("root.ext4", root.path.clone());
    let ipmi = ok(IpmiDeployEnv::enroll(setup, &budget));
    let env = &ipmi.env;

    let request = DeployRequest::image("root.ext4", &root.sha256)
        .with("image_disk_format", json!("raw"))
        .with("image_type", json!("partition"))
        .with("root_gb", json!(1))
        .with("swap_mb", json!(64))
        .with("ephemeral_mb", json!(64))
        .with("ephemeral_format", json!("ext4"))
        .with("deploy_boot_mode", json!("uefi"));
    let outcome = ok(ipmi.deploy_and_boot_with(&request, &budget));
    print_timing("partition_uefi", &outcome);
    assert_eq!(outcome.boot.node["provision_state"], "active");

    // OVMF says which boot option it ran: the agent's entry, by its label, from the ESP's partition.
    let serial = ipmi.bmc.serial_log().unwrap_or_default();
    let loaded = |option: &str| {
        serial.lines().any(|line| {
            let line = line.to_ascii_lowercase();
            line.contains(&format!("bdsdxe: {option} boot"))
                && line.contains("\"ferric\" from hd(")
                && line.contains(r"\efi\ferric\testos.efi")
        })
    };
    let bds_lines: Vec<&str> = serial.lines().filter(|line| line.contains("BdsDxe:")).collect();
    assert!(loaded("loading") && loaded("starting"), "OVMF did not boot the agent's entry: {bds_lines:#?}");

    // QEMU has exited: IPA's order (ESP, ephemeral, swap, root last), sized as asked.
    let partitions = ok(images::gpt_partitions(&env.disk));
    let codes: Vec<&str> = partitions.iter().map(|p| p.type_code.as_str()).collect();
    assert_eq!(codes.len(), 4, "{partitions:#?}");
    assert_eq!(&codes[..3], ["EF00", "8300", "8200"], "{partitions:#?}");
    assert!(["8300", "8304"].contains(&codes[3]), "root is not a Linux partition: {partitions:#?}");
    let [esp, ephemeral, swap, root_partition] = [0, 1, 2, 3].map(|index| &partitions[index]);
    assert!(
        esp.last_lba < ephemeral.first_lba
            && ephemeral.last_lba < swap.first_lba
            && swap.last_lba < root_partition.first_lba,
        "{partitions:#?}"
    );
    assert_eq!((ephemeral.name.as_str(), ephemeral.size_bytes()), ("ephemeral0", 64 * MIB), "{ephemeral:?}");
    assert_eq!(swap.size_bytes(), 64 * MIB, "{swap:?}");
    assert_eq!(root_partition.size_bytes(), 1024 * MIB, "{root_partition:?}");
    check_swap_signature(&env.disk, swap);
    check_ephemeral_ext4(&env.disk, ephemeral);

    // The ESP holds the loader copied from the root file system, and no fallback loader.
    let paths: Vec<String> = ok(images::fat_paths(&env.disk, esp.offset())).iter().map(|p| p.to_lowercase()).collect();
    assert!(paths.iter().any(|p| p == "::/efi/ferric/testos.efi"), "{paths:?}");
    assert!(!paths.iter().any(|p| p == "::/efi/boot/bootx64.efi"), "the ESP has the fallback loader: {paths:?}");
    let loader = env.work_dir.join("esp-testos.efi");
    ok(images::fat_copy_out(&env.disk, esp.offset(), "::/EFI/ferric/testos.efi", &loader));
    assert!(fs::read(&loader).unwrap() == fs::read(&env.image.uki).unwrap(), "the ESP's loader differs");

    // The root partition holds the image, and the entry is in the VM's NVRAM (kept across power cycles).
    let differs = ok(disk::first_difference_in(&env.disk, root_partition.offset(), &root.path, 0, u64::MAX));
    assert_eq!(differs, None, "the root partition differs from the image");
    let vars = fs::read(env.work_dir.join("vm").join("node-OVMF_VARS.fd")).unwrap();
    let label: Vec<u8> = "ferric".encode_utf16().flat_map(u16::to_le_bytes).collect();
    assert!(vars.windows(label.len()).any(|window| window == label), "no \"ferric\" boot entry in the VM's NVRAM");
}

/// A swap partition starts with a page whose last 10 bytes say `SWAPSPACE2` (mkswap's format, 4 KiB pages).
fn check_swap_signature(disk_path: &Path, swap: &GptPartition) {
    let mut file = fs::File::open(disk_path).unwrap();
    file.seek(SeekFrom::Start(swap.offset() + 4096 - 10)).unwrap();
    let mut signature = [0u8; 10];
    file.read_exact(&mut signature).unwrap();
    assert_eq!(&signature, b"SWAPSPACE2", "no swap signature in {swap:?}");
}

/// The ephemeral partition holds an ext4 file system labelled ephemeral0 (what the ramdisk's mkfs.ext4
/// makes; blkid tells ext4 from ext2/3 by its features) that fills the partition exactly: the superblock's
/// block count times block size (`s_blocks_count_lo` at 4, `s_log_block_size` at 24) is the partition size.
fn check_ephemeral_ext4(disk_path: &Path, ephemeral: &GptPartition) {
    let mut blkid = Command::new("blkid");
    blkid.args(["-p", "-o", "export", "-O"]).arg(ephemeral.offset().to_string()).arg(disk_path);
    let probed = ok(ferric_runner::run("probe the ephemeral partition", &mut blkid)).stdout;
    for wanted in ["TYPE=ext4", "LABEL=ephemeral0"] {
        assert!(probed.lines().any(|line| line == wanted), "{wanted} not in blkid's report: {probed}");
    }
    let mut file = fs::File::open(disk_path).unwrap();
    file.seek(SeekFrom::Start(ephemeral.offset() + 1024)).unwrap();
    let mut superblock = [0u8; 1024];
    file.read_exact(&mut superblock).unwrap();
    let field = |at: usize| u32::from_le_bytes(superblock[at..at + 4].try_into().unwrap());
    assert_eq!(
        u64::from(field(4)) * (1024 << field(24)),
        ephemeral.size_bytes(),
        "ext4 size differs from {ephemeral:?}"
    );
}

#[test]
fn image_larger_than_ram_streams_on_a_512_mib_vm() {
    init_logging();
    let _qemu = qemu_lock();
    let budget = Budget::new(CASE_BUDGET);
    let mut setup =
        ok(DeploySetup::new("e2e-larger-than-ram", shared_ramdisk(), "52:54:00:fe:00:23", IPMI_CONTROLLER_FLAGS));
    setup.memory_mib = 512;
    // The test OS, then noise: no compressor shrinks it and no zero detection skips it.
    let raw = ok(images::padded_with_noise(&setup.image.path, &setup.work_dir.join("big.raw"), 640 * MIB, 0xfe23));
    let zst = ok(images::zstd_compressed(&raw.path, &setup.work_dir.join("big.raw.zst")));
    assert!(zst.size_bytes > 512 * MIB, "the download ({} bytes) is not larger than the VM's RAM", zst.size_bytes);
    setup.image_server.add("big.raw.zst", zst.path.clone());
    let ipmi = ok(IpmiDeployEnv::enroll(setup, &budget));
    let env = &ipmi.env;

    let outcome = ok(ipmi.deploy_and_boot_with(&DeployRequest::image("big.raw.zst", &zst.sha256), &budget));
    print_timing("larger_than_ram", &outcome);
    assert_eq!(outcome.boot.node["provision_state"], "active");
    // QEMU has exited: every byte of the decompressed image is on the disk, and nothing after it.
    ok(env.check_disk_holds(&raw.path, raw.size_bytes));
}

#[test]
fn a_download_cut_mid_file_resumes_with_a_range_request() {
    init_logging();
    let _qemu = qemu_lock();
    let budget = Budget::new(CASE_BUDGET);
    let ipmi = ok(IpmiDeployEnv::prepare("e2e-resume", shared_ramdisk(), "52:54:00:fe:00:24", &budget));
    let env = &ipmi.env;
    let cut_after = env.image.size_bytes / 3;
    env.image_server.cut_once(IMAGE_NAME, cut_after);

    let outcome = ok(ipmi.deploy_and_boot(&budget));
    print_timing("resume", &outcome);
    assert_eq!(outcome.boot.node["provision_state"], "active");
    let served: Vec<_> = env.image_server.served().into_iter().filter(|r| r.path == format!("/{IMAGE_NAME}")).collect();
    assert!(served.first().is_some_and(|first| first.cut && first.status == 200), "{served:#?}");
    // The agent asked for the rest from where it was cut (it may have kept less than was sent).
    let resumed = served.iter().skip(1).find(|r| r.status == 206).unwrap_or_else(|| panic!("no 206: {served:#?}"));
    let start: u64 = resumed
        .range
        .as_deref()
        .and_then(|range| range.strip_prefix("bytes="))
        .and_then(|range| range.split('-').next())
        .and_then(|start| start.parse().ok())
        .unwrap_or_else(|| panic!("unexpected Range in {resumed:?}"));
    assert!(start > 0 && start <= cut_after, "resumed from byte {start}, the cut was after {cut_after}");
    ok(env.check_disk_holds_image());
}
