//! Root-device hints, the inventory's disks and cleaning, end to end on a VM with four kinds of disk:
//! virtio-blk with a serial, scsi-hd (virtio-scsi) with a WWN and a serial, NVMe with a serial, and a
//! SATA disk (q35's AHCI) with a model. ipmi_sim is the node's BMC, out of band for the controller and in
//! band for the VM (a KCS interface), the VM boots with SeaBIOS (faster than OVMF under TCG), and the
//! controller drives everything:
//!
//! a. inspection: the stored inventory lists the four disks with their identities, by-path links, HCTL
//!    and transport;
//! b. four deploys of a small raw image, each with a hint that names one disk (serial, WWN, a size range,
//!    by-path): the image lands on that disk and the other three are byte for byte as they were;
//! c. a hint that matches no disk: the deploy fails, the error lists the disks seen, nothing is written;
//! d. automated cleaning on undeploy (erase_devices_metadata, then erase_devices): afterwards no disk
//!    carries a partition table, a file system signature or any data;
//! e. the inventory's BMC address is ipmi_sim's, read through the VM's in-band KCS interface.
//!
//! Needs the workspace binaries: `cargo build --release --workspace --bins`, then
//! `cargo test --release -p ferric-tests --test e2e_disks -- --test-threads=1 --nocapture`.
//! The run's files stay in target/<profile>/ferric-tests/runs/e2e-disks.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferric_runner::tail_lines;
use ferric_tests::controller::{free_loopback_port, ClientError};
use ferric_tests::disks::{self, Fingerprint, Table, MIB};
use ferric_tests::images::{self, ImageFile};
use ferric_tests::ipmi_sim::{self, ChassisVm, IpmiSim};
use ferric_tests::ramdisk::shared_ramdisk;
use ferric_tests::scenario::{Budget, DeployEnv, DeployRequest, DeploySetup, IPMI_CONTROLLER_FLAGS};
use ferric_tests::vm::{qemu_lock, DiskBus, Firmware, VmDisk, VmSpec, SERIAL_TAIL_LINES};
use ferric_tests::{disk, init_logging, ok};
use reqwest::Method;
use serde_json::{json, Value};

const MAC: &str = "52:54:00:fe:00:31";
const GIB: u64 = 1 << 30;
const WWN: u64 = 0x5000_c500_a1b2_c3d4;
/// The deployed image: small, so that a deploy is mostly the ramdisk's boot.
const IMAGE_BYTES: u64 = 16 * MIB;
/// A bound on the whole case; each step has its own, tighter one.
const CASE_BUDGET: Duration = Duration::from_secs(20 * 60);
/// Power on, SeaBIOS, iPXE, the ramdisk, the inventory (about 40 s under TCG).
const INSPECT_TIMEOUT: Duration = Duration::from_secs(240);
/// The same, plus the download and the write, and the power cycle into the disk.
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(240);
/// The agent waits for a disk that matches (IPA's 10 × 3 s) before it gives up.
const FAILED_DEPLOY_TIMEOUT: Duration = Duration::from_secs(300);
/// Both erase steps over 14 GiB of disks.
const CLEAN_TIMEOUT: Duration = Duration::from_secs(420);
const STATE_TIMEOUT: Duration = Duration::from_secs(90);
const POWER_OFF_TIMEOUT: Duration = Duration::from_secs(60);

/// One of the VM's disks: its file and how the VM and the inventory know it.
struct TestDisk {
    label: &'static str,
    path: PathBuf,
    size: u64,
    bus: DiskBus,
    /// The partition table the cleaning case puts on it.
    table: Table,
}

impl TestDisk {
    /// Whether the inventory's `disk` is this one, by the identity the VM gave it.
    fn is(&self, disk: &Value) -> bool {
        match &self.bus {
            DiskBus::VirtioBlk { serial } | DiskBus::ScsiHd { serial, .. } => {
                disk["serial"].as_str() == serial.as_deref()
            }
            DiskBus::Nvme { serial } => disk["serial"].as_str() == Some(serial.as_str()),
            DiskBus::IdeHd { model } => disk["model"].as_str().map(str::trim) == model.as_deref(),
        }
    }

    /// What an error listing the disks seen must say about this one.
    fn identity(&self) -> &str {
        match &self.bus {
            DiskBus::VirtioBlk { serial } | DiskBus::ScsiHd { serial, .. } => serial.as_deref().unwrap_or_default(),
            DiskBus::Nvme { serial } => serial,
            DiskBus::IdeHd { model } => model.as_deref().unwrap_or_default(),
        }
    }
}

fn four_disks(dir: &std::path::Path) -> Vec<TestDisk> {
    let disk = |label: &'static str, gib: u64, bus, table| TestDisk {
        label,
        path: dir.join(format!("{label}.raw")),
        size: gib * GIB,
        bus,
        table,
    };
    vec![
        disk("virtio", 3, DiskBus::VirtioBlk { serial: Some("FERRIC-VIRTIO-1".into()) }, Table::Gpt),
        disk("scsi", 4, DiskBus::ScsiHd { wwn: Some(WWN), serial: Some("FERRIC-SCSI-1".into()) }, Table::Gpt),
        disk("nvme", 5, DiskBus::Nvme { serial: "FERRIC-NVME-1".into() }, Table::Gpt),
        disk("ide", 2, DiskBus::IdeHd { model: Some("FERRIC IDE DISK".into()) }, Table::Dos),
    ]
}

/// The node, its BMC and VM, its disks and the image it deploys.
struct Case {
    env: DeployEnv,
    bmc: IpmiSim,
    disks: Vec<TestDisk>,
    image: ImageFile,
    budget: Budget,
}

impl Case {
    /// The VM's serial tail, the BMC's chassis calls and the controller's log tail, for failures.
    fn diagnostics(&self) -> String {
        format!(
            "--- serial ---\n{}\n--- chassis ---\n{:?}\n--- controller ---\n{}",
            tail_lines(&self.bmc.serial_log().unwrap_or_default(), SERIAL_TAIL_LINES),
            self.bmc.chassis_log(),
            self.env.controller.log_tail()
        )
    }

    fn set_state(&self, target: &str) {
        ok(self.env.client.set_provision_state(&self.env.node, target));
    }

    /// Waits (at most `timeout`, and within the case's budget) for one of `wanted`; returns the node.
    fn wait_state(&self, wanted: &[&str], fail: &[&str], timeout: Duration, step: &'static str) -> Value {
        let timeout = timeout.min(ok(self.budget.remaining(step)));
        let waited = self.env.client.wait_for_provision_state(&self.env.node, wanted, fail, timeout);
        waited.unwrap_or_else(|error| panic!("{step}: {error}\n{}", self.diagnostics()))
    }

    fn patch(&self, patch: Value) -> Value {
        ok(self.env.client.send_json(Method::PATCH, &format!("/v1/nodes/{}", self.env.node), Some(patch)))
    }

    /// Powers the node off through the controller (retrying while another action holds the node) and
    /// waits until QEMU is gone, so that the disk files are final.
    fn power_off(&self) {
        let deadline = Instant::now() + POWER_OFF_TIMEOUT;
        loop {
            match self.env.client.set_power_state(&self.env.node, "power off") {
                Ok(()) => break,
                Err(ClientError::Status { status, .. }) if status == 409 && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(error) => panic!("power off: {error}\n{}", self.diagnostics()),
            }
        }
        self.wait_vm_gone();
    }

    fn wait_vm_gone(&self) {
        let off = self.env.client.wait_for_node(&self.env.node, "powered off", POWER_OFF_TIMEOUT, |node| {
            node["power_state"] == "power off" && node["target_power_state"].is_null()
        });
        off.unwrap_or_else(|error| panic!("{error}\n{}", self.diagnostics()));
        let deadline = Instant::now() + POWER_OFF_TIMEOUT;
        while self.bmc.vm_pid().is_some() {
            assert!(Instant::now() < deadline, "QEMU still runs after power off\n{}", self.diagnostics());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Fills every disk with marks of `round` and returns their fingerprints.
    fn mark_disks(&self, round: &str) -> Vec<Fingerprint> {
        self.disks
            .iter()
            .map(|disk| {
                ok(disks::write_marks(&disk.path, disk.size, &format!("{} {round}", disk.label)));
                ok(Fingerprint::of(&disk.path))
            })
            .collect()
    }

    /// Every disk but `except` has the content `before` says.
    fn check_unchanged(&self, before: &[Fingerprint], except: Option<usize>, step: &str) {
        for (index, (disk, before)) in self.disks.iter().zip(before).enumerate() {
            if Some(index) == except {
                continue;
            }
            let after = ok(Fingerprint::of(&disk.path));
            let changed = after.differing_blocks(before);
            assert!(
                changed.is_empty() && after.size == before.size,
                "{step}: the {} disk changed: {} blocks differ, the first at byte offsets {:?}",
                disk.label,
                changed.len(),
                &changed[..changed.len().min(8)]
            );
            println!("{step}: {} disk unchanged (content sha256 {})", disk.label, after.digest());
        }
    }
}

#[test]
fn hints_choose_the_disk_and_cleaning_erases_all_four() {
    init_logging();
    let _qemu = qemu_lock();
    let started = Instant::now();
    let budget = Budget::new(CASE_BUDGET);
    let ramdisk = shared_ramdisk();
    println!("TIMING disks_ramdisk_ready_seconds={:.1}", started.elapsed().as_secs_f64());

    let setup = ok(DeploySetup::new("e2e-disks", ramdisk, MAC, IPMI_CONTROLLER_FLAGS));
    let disks = four_disks(&setup.work_dir);
    for test_disk in &disks {
        ok(disk::create_sparse(&test_disk.path, test_disk.size));
    }
    // A header sector without a boot signature (SeaBIOS must not run noise as a boot sector), then noise.
    let header = setup.work_dir.join("image-header");
    std::fs::write(&header, [b"FERRIC-E2E-DISKS image\n".as_slice(), &[0u8; 489]].concat()).unwrap();
    let image = ok(images::padded_with_noise(&header, &setup.work_dir.join("disks.img"), IMAGE_BYTES, 0xd15c));
    setup.image_server.add("disks.img", image.path.clone());
    let bmc_port = ok(free_loopback_port());
    let spec = VmSpec {
        firmware: Firmware::Bios,
        disks: disks.iter().map(|d| VmDisk { path: d.path.clone(), bus: d.bus.clone() }).collect(),
        ipmi_bmc_port: Some(bmc_port),
        ..setup.vm_spec()
    };
    let bmc = ok(IpmiSim::start(&setup.work_dir.join("bmc"), Some(ok(ChassisVm::new(&spec)))));
    let fields = json!({
        "driver": "ipmi",
        "boot_mode": "bios",
        "automated_clean": false,
        "driver_info": Value::Object(bmc.driver_info()),
    });
    let env = ok(setup.enroll(fields, &budget));
    let case = Case { env, bmc, disks, image, budget };
    println!("TIMING disks_setup_seconds={:.1}", started.elapsed().as_secs_f64());

    let inventory = inspect(&case);
    let by_path = check_inventory(&case, &inventory);
    deploy_by_hints(&case, &inventory, &by_path);
    deploy_with_a_hint_that_matches_nothing(&case);
    clean_on_undeploy(&case, &inventory);
    check_in_band_bmc(&inventory);
    println!("TIMING disks_total_seconds={:.1}", started.elapsed().as_secs_f64());
}

/// e. The VM's KCS interface reaches ipmi_sim, which reports its LAN channel's address: the inventory's
/// BMC address is the one the controller talks to. (Checked last: the disk cases do not depend on it.)
fn check_in_band_bmc(inventory: &Value) {
    assert_eq!(inventory["bmc_address"], ipmi_sim::ADDRESS, "the inventory's BMC address");
    assert_eq!(inventory["bmc_mac"], ipmi_sim::LAN_MAC, "the inventory's BMC MAC address");
}

/// a. Inspection through the controller; returns the stored inventory.
fn inspect(case: &Case) -> Value {
    case.set_state("manage");
    case.wait_state(&["manageable"], &[], STATE_TIMEOUT, "manage");
    let requested = Instant::now();
    case.set_state("inspect");
    case.wait_state(&["manageable"], &["inspect failed"], INSPECT_TIMEOUT, "inspection");
    println!("TIMING disks_inspect_request_to_manageable_seconds={:.1}", requested.elapsed().as_secs_f64());
    case.wait_vm_gone();
    let stored = ok(case.env.client.send_json(Method::GET, &format!("/v1/nodes/{}/inventory", case.env.node), None));
    let inventory = stored["inventory"].clone();
    println!("inventory disks:\n{}", serde_json::to_string_pretty(&inventory["disks"]).unwrap());
    println!(
        "inventory bmc_address={} bmc_mac={} bmc_v6address={}",
        inventory["bmc_address"], inventory["bmc_mac"], inventory["bmc_v6address"]
    );
    case.set_state("provide");
    case.wait_state(&["available"], &["clean failed"], STATE_TIMEOUT, "provide");
    inventory
}

/// The four disks are in the inventory with their identities; returns the SATA disk's by_path.
fn check_inventory(case: &Case, inventory: &Value) -> String {
    let listed = inventory["disks"].as_array().cloned().unwrap_or_default();
    let mut problems = Vec::new();
    if listed.len() != case.disks.len() {
        problems.push(format!("{} disks listed, not {}", listed.len(), case.disks.len()));
    }
    for test_disk in &case.disks {
        let Some(found) = listed.iter().find(|disk| test_disk.is(disk)) else {
            problems.push(format!("no disk is the {} disk ({})", test_disk.label, test_disk.identity()));
            continue;
        };
        let mut expect = |what: &str, ok: bool| {
            if !ok {
                problems.push(format!("{} disk: {what}: {found}", test_disk.label));
            }
        };
        expect("size", found["size"].as_u64() == Some(test_disk.size));
        let by_path = found["by_path"].as_str().unwrap_or_default();
        expect("by_path", by_path.starts_with("/dev/disk/by-path/pci-"));
        match &test_disk.bus {
            DiskBus::ScsiHd { wwn, .. } => {
                expect("wwn", found["wwn"].as_str() == wwn.map(|wwn| format!("{wwn:#018x}")).as_deref());
                expect("hctl", found["hctl"].as_str().is_some_and(|hctl| hctl.split(':').count() == 4));
            }
            DiskBus::IdeHd { .. } => {
                expect("hctl", found["hctl"].as_str().is_some_and(|hctl| hctl.split(':').count() == 4));
                expect("tran", found["tran"] == "sata");
            }
            DiskBus::Nvme { .. } => expect("tran", found["tran"] == "nvme"),
            DiskBus::VirtioBlk { .. } => {}
        }
    }
    assert!(problems.is_empty(), "inventory problems:\n{}\n{}", problems.join("\n"), inventory["disks"]);
    let ide = case.disks.iter().find(|d| matches!(d.bus, DiskBus::IdeHd { .. })).unwrap();
    let found = listed.iter().find(|disk| ide.is(disk)).unwrap();
    found["by_path"].as_str().unwrap().to_owned()
}

/// b. One deploy per disk, each chosen by another kind of hint.
fn deploy_by_hints(case: &Case, inventory: &Value, ide_by_path: &str) {
    let rounds = [
        ("serial", json!({"serial": "FERRIC-VIRTIO-1"}), "virtio"),
        ("wwn", json!({"wwn": format!("{WWN:#018x}")}), "scsi"),
        ("size", json!({"size": "<range-in> [5 5]"}), "nvme"),
        ("by_path", json!({"by_path": ide_by_path}), "ide"),
    ];
    for (hint_name, hint, label) in rounds {
        let target = case.disks.iter().position(|d| d.label == label).unwrap();
        let before = case.mark_disks(&format!("before the {hint_name} deploy"));
        case.patch(json!([{"op": "add", "path": "/properties/root_device", "value": hint}]));
        let requested = Instant::now();
        ok(case.env.request(&DeployRequest::image("disks.img", &case.image.sha256)));
        let active = case.wait_state(&["active"], &["deploy failed", "error"], DEPLOY_TIMEOUT, "a deploy by hint");
        println!("TIMING disks_deploy_{hint_name}_request_to_active_seconds={:.1}", requested.elapsed().as_secs_f64());
        let result = &active["driver_internal_info"]["agent_command"]["command_result"];
        if !result.is_null() {
            println!("deploy by {hint_name}: the agent's write_image result: {result}");
        }
        case.power_off();

        let disk = &case.disks[target];
        let differs = ok(disk::first_difference(&disk.path, &case.image.path));
        assert_eq!(differs, None, "deploy by {hint_name} ({hint}): the {label} disk does not start with the image");
        if let Some(written) = result["root_device"].as_str() {
            let name = inventory["disks"].as_array().unwrap().iter().find(|d| disk.is(d)).unwrap()["name"].clone();
            assert_eq!(json!(written), name, "deploy by {hint_name}: the agent wrote another disk");
        }
        case.check_unchanged(&before, Some(target), &format!("deploy by {hint_name}"));
        println!("deploy by {hint_name}: the image is on the {label} disk; the others are untouched");

        let requested = Instant::now();
        case.set_state("deleted");
        case.wait_state(&["available"], &["clean failed", "error"], STATE_TIMEOUT, "undeploy");
        println!("TIMING disks_undeploy_{hint_name}_seconds={:.1}", requested.elapsed().as_secs_f64());
        let differs = ok(disk::first_difference(&disk.path, &case.image.path));
        assert_eq!(differs, None, "the undeploy after the {hint_name} deploy erased the disk with cleaning off");
    }
}

/// c. A hint no disk matches: the deploy fails naming the disks seen, and writes nothing.
fn deploy_with_a_hint_that_matches_nothing(case: &Case) {
    let before = case.mark_disks("before the failing deploy");
    case.patch(json!([{"op": "add", "path": "/properties/root_device", "value": {"serial": "NO-SUCH-DISK"}}]));
    let requested = Instant::now();
    ok(case.env.request(&DeployRequest::image("disks.img", &case.image.sha256)));
    let failed = case.wait_state(&["deploy failed"], &["active"], FAILED_DEPLOY_TIMEOUT, "a deploy without a disk");
    println!("TIMING disks_unmatched_hint_request_to_deploy_failed_seconds={:.1}", requested.elapsed().as_secs_f64());
    let last_error = failed["last_error"].as_str().unwrap_or_default();
    println!("deploy with an unmatched hint: last_error: {last_error}");
    for test_disk in &case.disks {
        assert!(
            last_error.contains(test_disk.identity()),
            "last_error does not name the {} disk ({}): {last_error}",
            test_disk.label,
            test_disk.identity()
        );
    }
    case.power_off();
    case.check_unchanged(&before, None, "deploy with an unmatched hint");
}

/// d. Automated cleaning when the failed deployment is torn down: no signature and no data remain.
fn clean_on_undeploy(case: &Case, inventory: &Value) {
    let scratch = case.env.work_dir.join("signatures");
    let mut signatures = Vec::new();
    for test_disk in &case.disks {
        let placed = ok(disks::write_signatures(&test_disk.path, test_disk.size, test_disk.table, &scratch));
        // Data in the middle too, where no metadata erase looks.
        ok(disks::write_mark(
            &test_disk.path,
            test_disk.size / 2 / MIB * MIB,
            &format!("{} tenant data", test_disk.label),
        ));
        for signature in &placed {
            let found = ok(disks::probe_at(&test_disk.path, signature.offset));
            assert!(found.contains(&format!("TYPE={}", signature.kind)), "{}: {found}", test_disk.label);
        }
        let listed = ok(disks::wipefs_signatures(&test_disk.path));
        println!("before cleaning, the {} disk: {listed:?} and {placed:?}", test_disk.label);
        signatures.push(placed);
    }
    case.patch(json!([{"op": "replace", "path": "/automated_clean", "value": true}]));
    let requested = Instant::now();
    case.set_state("deleted");
    let cleaned = case.wait_state(&["available"], &["clean failed", "error"], CLEAN_TIMEOUT, "automated cleaning");
    println!("TIMING disks_clean_request_to_available_seconds={:.1}", requested.elapsed().as_secs_f64());
    check_clean_results(&cleaned, inventory, case);
    case.wait_vm_gone();

    for (test_disk, placed) in case.disks.iter().zip(&signatures) {
        let left = ok(disks::wipefs_signatures(&test_disk.path));
        assert!(left.is_empty(), "after cleaning, wipefs finds on the {} disk: {left:?}", test_disk.label);
        for offset in std::iter::once(0).chain(placed.iter().map(|signature| signature.offset)) {
            let found = ok(disks::probe_at(&test_disk.path, offset));
            assert!(
                found.is_empty(),
                "after cleaning, blkid finds at byte {offset} of the {} disk: {found}",
                test_disk.label
            );
        }
        let structures = ok(disk::boot_structures(&test_disk.path));
        assert!(
            !structures.mbr_signature && !structures.primary_gpt && !structures.backup_gpt,
            "after cleaning, the {} disk has {structures:?}",
            test_disk.label
        );
        let content = ok(Fingerprint::of(&test_disk.path));
        let nonzero: Vec<u64> = content.nonzero_blocks().take(8).collect();
        assert!(
            nonzero.is_empty(),
            "after cleaning, the {} disk still holds {} bytes of data, from byte offsets {nonzero:?}",
            test_disk.label,
            content.nonzero_bytes()
        );
        println!("after cleaning, the {} disk holds no signature and no data", test_disk.label);
    }
}

/// What the agent reported for each clean step and disk (method, throughput), as the controller keeps it:
/// both steps covered all four disks, and the full erase read samples back.
fn check_clean_results(node: &Value, inventory: &Value, case: &Case) {
    let internal = &node["driver_internal_info"];
    let steps =
        internal["clean_step_results"].as_array().unwrap_or_else(|| panic!("no clean_step_results: {internal}"));
    let listed = inventory["disks"].as_array().cloned().unwrap_or_default();
    let label = |device: &str| {
        let found = listed.iter().find(|disk| disk["name"] == device);
        found.and_then(|found| case.disks.iter().find(|d| d.is(found)).map(|d| d.label)).unwrap_or("unknown")
    };
    for step_name in ["deploy.erase_devices_metadata", "deploy.erase_devices"] {
        let step = steps.iter().find(|step| step["step"] == step_name);
        let step = step.unwrap_or_else(|| panic!("no result of {step_name}: {}", Value::Array(steps.clone())));
        let devices = step["devices"].as_array().cloned().unwrap_or_default();
        let mut erased: Vec<&str> = Vec::new();
        for device in &devices {
            let name = device["device"].as_str().unwrap_or_default();
            let (method, speed) = (device["method"].as_str().unwrap_or_default(), device["mib_per_second"].as_f64());
            println!(
                "CLEAN {step_name} {name} ({} disk): {method} over {} bytes in {:.2} s, {:.1} MiB/s, {} samples verified",
                label(name),
                device["bytes"],
                device["seconds"].as_f64().unwrap_or_default(),
                speed.unwrap_or_default(),
                device["samples_verified"]
            );
            if step_name == "deploy.erase_devices" {
                println!("TIMING disks_erase_{}_mib_per_second={:.1}", label(name), speed.unwrap_or_default());
                assert!(device["samples_verified"].as_u64() > Some(0), "{name} was not read back: {device}");
            }
            erased.push(label(name));
        }
        erased.sort_unstable();
        assert_eq!(erased, ["ide", "nvme", "scsi", "virtio"], "the disks {step_name} reports: {devices:?}");
    }
}
