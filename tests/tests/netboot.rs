//! Proves the VM's network-boot path on its own, the way the controller will use it: UEFI firmware loads
//! iPXE from the NIC's option ROM, QEMU's DHCP hands it an HTTP script URL on the host, and the script
//! boots a kernel and initrd over HTTP (the ramdisk's kernel with the test OS's initrd, which prints a
//! marker and powers off). Needs the workspace binaries for the ramdisk build:
//! `cargo build --release --workspace --bins` (scripts/test.sh does it).

use std::time::Duration;

use ferric_tests::image_server::ImageServer;
use ferric_tests::ramdisk::build_ramdisk;
use ferric_tests::vm::{qemu_lock, Firmware, NetworkBoot, Vm, VmSpec};
use ferric_tests::{init_logging, paths, testos};

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn uefi_vm_network_boots_an_ipxe_script_from_the_host() {
    init_logging();
    let _qemu = qemu_lock();
    let work = tempfile::tempdir().unwrap();
    let ramdisk = build_ramdisk(&paths::scratch_dir().unwrap().join("ramdisk"))
        .unwrap_or_else(|e| panic!("building the ramdisk failed: {:#}", anyhow::Error::new(e)));
    let vmlinuz = ramdisk.vmlinuz;
    let token = format!("netboot-{}", uuid::Uuid::new_v4().simple());
    let image = testos::build(&work.path().join("testos"), &vmlinuz, &token).unwrap();
    // Relative names resolve against the script's URL. Under UEFI the kernel line must name the initrd,
    // or the kernel boots without it.
    let script = work.path().join("boot.ipxe");
    std::fs::write(
        &script,
        format!("#!ipxe\nkernel vmlinuz initrd=initrd.cpio.gz {}\ninitrd initrd.cpio.gz\nboot\n", testos::CMDLINE),
    )
    .unwrap();
    let server = ImageServer::start([
        ("boot.ipxe".to_string(), script),
        ("vmlinuz".to_string(), vmlinuz),
        ("initrd.cpio.gz".to_string(), image.initrd.clone()),
    ])
    .unwrap();

    let mut vm = Vm::start(VmSpec {
        name: "netboot".into(),
        work_dir: work.path().join("vm"),
        firmware: Firmware::Uefi,
        memory_mib: 512,
        network_boot: Some(NetworkBoot { boot_url: server.guest_url("boot.ipxe"), mac: "52:54:00:fe:00:09".into() }),
        disks: Vec::new(),
        ipmi_bmc_port: None,
    })
    .unwrap();
    let marker_at = vm.wait_for_serial(&image.marker(), BOOT_TIMEOUT).unwrap();
    vm.wait_exit(POWEROFF_TIMEOUT).unwrap();
    println!("TIMING netboot_vm_start_to_marker_seconds={:.1}", marker_at.as_secs_f64());

    let fetched: Vec<String> = server.served().iter().filter(|r| r.status == 200).map(|r| r.path.clone()).collect();
    assert_eq!(fetched, ["/boot.ipxe", "/vmlinuz", "/initrd.cpio.gz"]);
}
