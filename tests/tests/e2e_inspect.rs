//! Inspection for real: a UEFI VM network-boots Ferric's ramdisk from the real controller, the agent
//! sends its inventory with its first heartbeat, the node returns to `manageable` with its properties
//! set, and the agent powers the VM off.
//!
//! Needs the workspace binaries: `cargo build --release --workspace --bins`, then
//! `cargo test --release -p ferric-tests --test e2e_inspect -- --test-threads=1`.
//! The run's files (controller log, serial log) stay in target/<profile>/ferric-tests/runs/e2e-inspect.

use std::fs;
use std::time::{Duration, Instant};

use ferric_tests::controller::{Controller, API_VERSION};
use ferric_tests::disk;
use ferric_tests::ramdisk::shared_ramdisk;
use ferric_tests::scenario::{DISK_BYTES, VM_MEMORY_MIB};
use ferric_tests::vm::{qemu_lock, Firmware, NetworkBoot, Vm, VmDisk, VmSpec, SERIAL_TAIL_LINES};
use ferric_tests::{init_logging, ok, paths};
use serde_json::Value;

const MAC: &str = "52:54:00:fe:00:11";
/// TCG is slow, but booting the ramdisk and reporting takes far less than a deploy.
const INSPECTION_TIMEOUT: Duration = Duration::from_secs(8 * 60);
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(60);
const STATE_TIMEOUT: Duration = Duration::from_secs(60);
const GIB: u64 = 1 << 30;

/// `GET path` at `version` on the controller's API.
fn get(controller: &Controller, path: &str, version: &str) -> Value {
    let response = reqwest::blocking::Client::new()
        .get(format!("{}{path}", controller.base_url()))
        .header(ferric_protocol::API_VERSION_HEADER, version)
        .send()
        .unwrap();
    assert!(response.status().is_success(), "GET {path}: {}", response.status());
    response.json().unwrap()
}

#[test]
fn inspection_reports_the_vms_hardware_and_powers_it_off() {
    init_logging();
    let _qemu = qemu_lock();
    let work_dir = ok(paths::scratch_dir()).join("runs").join("e2e-inspect");
    if work_dir.exists() {
        fs::remove_dir_all(&work_dir).unwrap();
    }
    fs::create_dir_all(&work_dir).unwrap();
    let ramdisk = shared_ramdisk();
    let controller = ok(Controller::start(&work_dir.join("controller"), &ramdisk.dir));
    let client = ok(controller.client());
    let disk = work_dir.join("disk.raw");
    ok(disk::create_sparse(&disk, DISK_BYTES));

    let node = ok(client.create_node("e2e-inspect"));
    ok(client.create_port(MAC, &node));
    ok(client.set_provision_state(&node, "manage"));
    ok(client.wait_for_provision_state(&node, &["manageable"], &[], STATE_TIMEOUT));
    let requested = Instant::now();
    ok(client.set_provision_state(&node, "inspect"));
    let mut vm = ok(Vm::start(VmSpec {
        name: "node".into(),
        work_dir: work_dir.join("vm"),
        firmware: Firmware::Uefi,
        memory_mib: VM_MEMORY_MIB,
        network_boot: Some(NetworkBoot { boot_url: controller.boot_url(), mac: MAC.into() }),
        disks: vec![VmDisk::virtio(disk)],
        ipmi_bmc_port: None,
    }));

    let inspected = client.wait_for_provision_state(&node, &["manageable"], &["inspect failed"], INSPECTION_TIMEOUT);
    let inspected = inspected.unwrap_or_else(|e| {
        panic!(
            "{:#}\n--- serial ---\n{}\n--- controller ---\n{}",
            anyhow::Error::new(e),
            vm.serial_tail(SERIAL_TAIL_LINES),
            controller.log_tail()
        )
    });
    println!("TIMING inspect_request_to_manageable_seconds={:.1}", requested.elapsed().as_secs_f64());
    ok(vm.wait_exit(POWEROFF_TIMEOUT));
    println!("TIMING inspect_request_to_poweroff_seconds={:.1}", requested.elapsed().as_secs_f64());

    let properties = &inspected["properties"];
    let memory_mb = properties["memory_mb"].as_u64().unwrap_or_else(|| panic!("no memory_mb in {properties}"));
    assert!(
        memory_mb > u64::from(VM_MEMORY_MIB) * 3 / 4 && memory_mb <= u64::from(VM_MEMORY_MIB),
        "memory_mb {memory_mb} for a VM of {VM_MEMORY_MIB} MiB"
    );
    assert_eq!(properties["cpu_arch"], "x86_64");
    assert!(properties["cpus"].as_u64().is_some_and(|cpus| cpus >= 1), "{properties}");
    assert_eq!(properties["local_gb"], DISK_BYTES / GIB - 1);

    let stored = get(&controller, &format!("/v1/nodes/{node}/inventory"), "1.81");
    let inventory = &stored["inventory"];
    let macs: Vec<&str> =
        inventory["interfaces"].as_array().unwrap().iter().filter_map(|i| i["mac_address"].as_str()).collect();
    assert!(macs.contains(&MAC), "VM's MAC not among {macs:?}");
    let disks = inventory["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 1, "{disks:?}");
    assert_eq!(disks[0]["size"], DISK_BYTES);
    // The node's own view agrees with the latest microversion too.
    assert_eq!(get(&controller, &format!("/v1/nodes/{node}"), API_VERSION)["provision_state"], "manageable");
}
