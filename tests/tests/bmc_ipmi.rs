//! The IPMI driver against OpenIPMI's real `ipmi_sim`, through the BMC traits the conductor uses: a
//! chassis of state files for power and boot device, and one test with a QEMU VM as the chassis.
//!
//! Run: `cargo test -p ferric-tests --test bmc_ipmi -- --test-threads=1` (add `--nocapture` for
//! the measured times).

use std::fs;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferric_controller::bmc::ipmi::IpmiBmc;
use ferric_controller::bmc::{
    BmcError, BmcSettings, BootDevice, BootDeviceSetting, ManagementInterface, PowerAction, PowerInterface, PowerState,
};
use ferric_controller::ipxe::BootMode;
use ferric_controller::model::JsonObject;
use ferric_tests::ipmi_sim::{ChassisVm, IpmiSim};
use ferric_tests::paths;
use ferric_tests::vm::{self, Firmware, NetworkBoot, VmDisk, VmSpec};
use serde_json::json;

const POWER_TIMEOUT: Duration = Duration::from_secs(10);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(6);
const MIN_COMMAND_INTERVAL: Duration = Duration::from_millis(200);
/// What the VM's serial console shows when iPXE starts, and when OVMF tried the (blank) disk.
const IPXE_BANNER: &str = "iPXE 1.0";
const OVMF_DISK: &str = "\"UEFI Misc Device\"";

fn settings() -> BmcSettings {
    BmcSettings {
        power_timeout: POWER_TIMEOUT,
        command_timeout: COMMAND_TIMEOUT,
        min_command_interval: MIN_COMMAND_INTERVAL,
    }
}

fn work_dir(test: &str) -> PathBuf {
    paths::scratch_dir().expect("scratch dir").join("bmc_ipmi").join(test)
}

fn start(test: &str) -> IpmiSim {
    ferric_tests::init_logging();
    IpmiSim::start(&work_dir(test), None).unwrap_or_else(|err| panic!("{err}"))
}

fn driver(info: &JsonObject) -> IpmiBmc {
    IpmiBmc::from_driver_info(info, &settings()).unwrap_or_else(|err| panic!("{err}"))
}

/// Runs the async part of a test, failing it if it takes longer than `bound`.
fn within<F: Future<Output = ()>>(bound: Duration, test: F) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(async {
        if tokio::time::timeout(bound, test).await.is_err() {
            panic!("the test did not finish within {bound:?}");
        }
    });
}

/// Performs `action`, checks the state holds the moment it returns, and returns the chassis calls
/// that changed something meanwhile.
async fn act(sim: &IpmiSim, bmc: &IpmiBmc, action: PowerAction) -> Vec<String> {
    let before = sim.chassis_settings().len();
    let started = Instant::now();
    bmc.set_power_state(action, POWER_TIMEOUT).await.unwrap_or_else(|err| panic!("{action}: {err}"));
    println!("{action}: {:.2} s", started.elapsed().as_secs_f64());
    assert_eq!(bmc.power_state().await.unwrap(), action.resulting_state(), "right after {action}");
    assert_eq!(sim.chassis_power(), action.resulting_state() == PowerState::On, "the chassis after {action}");
    sim.chassis_settings().split_off(before)
}

/// The message names the BMC and shows no password.
fn assert_reported(err: &BmcError, sim: &IpmiSim, secrets: &[&str]) {
    let message = err.to_string();
    assert!(message.contains(&format!("127.0.0.1:{}", sim.port())), "{message}");
    for secret in secrets.iter().chain([&sim.password()]) {
        assert!(!message.contains(secret), "{message}");
    }
}

#[test]
fn power_on_off_and_reboot_drive_the_chassis() {
    let sim = start("power");
    let bmc = driver(&sim.driver_info());
    within(Duration::from_secs(60), async {
        assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
        assert_eq!(act(&sim, &bmc, PowerAction::On).await, ["set power 1"]);
        assert_eq!(act(&sim, &bmc, PowerAction::Reboot).await, ["set power 0", "set power 1"]);
        assert_eq!(act(&sim, &bmc, PowerAction::Off).await, ["set power 0"]);
        // Rebooting an off node powers it on.
        assert_eq!(act(&sim, &bmc, PowerAction::Reboot).await, ["set power 0", "set power 1"]);
    });
    let log = sim.chassis_log();
    assert!(log.iter().filter(|call| *call == "get power").count() >= 6, "{log:?}");
}

#[test]
fn soft_power_off_is_an_acpi_request() {
    let sim = start("soft");
    let bmc = driver(&sim.driver_info());
    within(Duration::from_secs(60), async {
        act(&sim, &bmc, PowerAction::On).await;
        assert_eq!(act(&sim, &bmc, PowerAction::SoftOff).await, ["set shutdown 1"]);
        assert_eq!(act(&sim, &bmc, PowerAction::SoftReboot).await, ["set shutdown 1", "set power 1"]);
    });
}

#[test]
fn boot_devices_round_trip() {
    let sim = start("boot_device");
    let bmc = driver(&sim.driver_info());
    let setting = |device, persistent| BootDeviceSetting { device, persistent };
    within(Duration::from_secs(60), async {
        assert_eq!(bmc.boot_device().await.unwrap(), None, "no override at first");
        // ipmi_sim keeps only the device: it drops the persistence and EFI flags (checked in the
        // driver's unit tests) and always reports a one-time override.
        let cases = [
            (setting(BootDevice::Pxe, false), BootMode::Uefi, "pxe"),
            (setting(BootDevice::Disk, true), BootMode::Uefi, "default"),
            (setting(BootDevice::Pxe, true), BootMode::Bios, "pxe"),
            (setting(BootDevice::Disk, false), BootMode::Bios, "default"),
            (setting(BootDevice::Cdrom, false), BootMode::Uefi, "cdrom"),
            (setting(BootDevice::Bios, true), BootMode::Uefi, "bios"),
        ];
        for (wanted, mode, chassis_device) in cases {
            let started = Instant::now();
            bmc.set_boot_device(wanted, mode).await.unwrap_or_else(|err| panic!("{wanted:?}: {err}"));
            println!("{} ({}): {:.2} s", wanted.device, mode.as_str(), started.elapsed().as_secs_f64());
            assert_eq!(sim.chassis_boot_device(), chassis_device);
            let read = bmc.boot_device().await.unwrap().expect("an override");
            assert_eq!(read.device, wanted.device);
        }
    });
}

#[test]
fn boot_devices_the_bmc_or_the_driver_lacks_are_errors() {
    let sim = start("boot_device_refused");
    let bmc = driver(&sim.driver_info());
    within(Duration::from_secs(30), async {
        let calls = sim.chassis_log().len();
        let unsupported = BootDeviceSetting { device: BootDevice::UefiHttp, persistent: false };
        match bmc.set_boot_device(unsupported, BootMode::Uefi).await {
            Err(err @ BmcError::Unsupported { .. }) => assert_reported(&err, &sim, &[]),
            other => panic!("expected Unsupported, got {other:?}"),
        }
        assert_eq!(sim.chassis_log().len(), calls, "nothing sent for a device the driver lacks");
        // ipmi_sim has no name for "safe" and answers with an error (ipmitool exits with 0 anyway).
        let started = Instant::now();
        let safe = BootDeviceSetting { device: BootDevice::Safe, persistent: false };
        match bmc.set_boot_device(safe, BootMode::Bios).await {
            Err(err @ BmcError::Refused { .. }) => {
                println!("{err} ({:.2} s)", started.elapsed().as_secs_f64());
                assert!(err.to_string().contains("Set Chassis Boot Parameter 5 failed: Unspecified error"), "{err}");
                assert!(started.elapsed() < Duration::from_secs(3), "not retried: {:?}", started.elapsed());
                assert_reported(&err, &sim, &[]);
            }
            other => panic!("expected Refused, got {other:?}"),
        }
    });
}

#[test]
fn a_wrong_password_is_refused_at_once() {
    let sim = start("wrong_password");
    let mut info = sim.driver_info();
    info.insert("ipmi_password".into(), json!("not-the-password"));
    let bmc = driver(&info);
    within(Duration::from_secs(30), async {
        let started = Instant::now();
        let err = bmc.set_power_state(PowerAction::On, POWER_TIMEOUT).await.unwrap_err();
        let took = started.elapsed();
        println!("{err} ({:.2} s)", took.as_secs_f64());
        assert!(matches!(err, BmcError::Refused { .. }), "{err:?}");
        assert!(err.to_string().contains("RAKP 2 HMAC is invalid"), "{err}");
        assert!(took < Duration::from_secs(3), "took {took:?}");
        assert_reported(&err, &sim, &["not-the-password"]);
    });
    assert!(sim.chassis_settings().is_empty(), "{:?}", sim.chassis_settings());
}

#[test]
fn a_hung_bmc_is_unreachable_within_the_command_timeout_and_recovers() {
    let sim = start("hung");
    let bmc = driver(&sim.driver_info());
    within(Duration::from_secs(60), async {
        assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
        sim.freeze().unwrap();
        let started = Instant::now();
        let err = bmc.set_power_state(PowerAction::On, POWER_TIMEOUT).await.unwrap_err();
        let took = started.elapsed();
        println!("{err} ({:.2} s)", took.as_secs_f64());
        match &err {
            BmcError::Unreachable { action, attempts, .. } => {
                assert_eq!(action, "chassis power on");
                assert!(*attempts >= 2, "retried: {err}");
            }
            other => panic!("expected Unreachable, got {other:?}"),
        }
        let margin = Duration::from_secs(2);
        assert!(took >= COMMAND_TIMEOUT - margin && took <= COMMAND_TIMEOUT + margin, "took {took:?}");
        assert!(err.to_string().contains("Get Auth Capabilities error"), "ipmitool's reason: {err}");
        assert_reported(&err, &sim, &[]);
        sim.thaw().unwrap();
        // The queued datagrams are stale; the next command starts afresh.
        bmc.set_power_state(PowerAction::On, POWER_TIMEOUT).await.unwrap_or_else(|err| panic!("after thaw: {err}"));
        assert!(sim.chassis_power());
    });
}

#[test]
fn a_dead_bmc_is_unreachable() {
    let mut sim = start("dead");
    let bmc = driver(&sim.driver_info());
    sim.stop().unwrap();
    within(Duration::from_secs(30), async {
        let started = Instant::now();
        let err = bmc.boot_device().await.unwrap_err();
        let took = started.elapsed();
        println!("{err} ({:.2} s)", took.as_secs_f64());
        assert!(matches!(err, BmcError::Unreachable { .. }), "{err:?}");
        assert!(took <= COMMAND_TIMEOUT + Duration::from_secs(2), "took {took:?}");
        assert_reported(&err, &sim, &[]);
    });
}

#[test]
fn ipmi_1_5_works_too() {
    let sim = start("ipmi15");
    let mut info = sim.driver_info();
    info.insert("ipmi_protocol_version".into(), json!("1.5"));
    info.insert("ipmi_port".into(), json!(sim.port().to_string()));
    let bmc = driver(&info);
    within(Duration::from_secs(30), async {
        assert_eq!(act(&sim, &bmc, PowerAction::On).await, ["set power 1"]);
        let pxe = BootDeviceSetting { device: BootDevice::Pxe, persistent: true };
        bmc.set_boot_device(pxe, BootMode::Bios).await.unwrap();
        assert_eq!(bmc.boot_device().await.unwrap().map(|setting| setting.device), Some(BootDevice::Pxe));
    });
}

#[test]
fn commands_to_one_bmc_are_serialised_and_spaced() {
    let sim = start("spacing");
    // Two drivers of one node (as two conductor tasks would build them) share the spacing.
    let interval = Duration::from_millis(500);
    let spaced = BmcSettings { min_command_interval: interval, ..settings() };
    let first = IpmiBmc::from_driver_info(&sim.driver_info(), &spaced).unwrap();
    let second = IpmiBmc::from_driver_info(&sim.driver_info(), &spaced).unwrap();
    within(Duration::from_secs(30), async {
        // One command first, so that every timed one must wait for its predecessor.
        first.power_state().await.unwrap();
        let started = Instant::now();
        let (a, b, c, d) =
            tokio::join!(first.power_state(), second.power_state(), first.power_state(), second.power_state());
        let took = started.elapsed();
        println!("4 concurrent status reads: {:.2} s", took.as_secs_f64());
        for state in [a, b, c, d] {
            assert_eq!(state.unwrap(), PowerState::Off);
        }
        assert!(took >= interval * 4, "took {took:?}");
    });
    assert_eq!(sim.chassis_log().iter().filter(|call| *call == "get power").count(), 5);
}

#[test]
fn the_chassis_can_be_a_qemu_vm() {
    ferric_tests::init_logging();
    let _qemu = vm::qemu_lock();
    let dir = work_dir("vm");
    fs::create_dir_all(&dir).unwrap();
    // A blank disk and a NIC whose boot file nothing serves (the guest's 10.0.2.2:9 is the host's
    // closed 127.0.0.1:9): enough to see in OVMF's messages which device it tried first.
    let disk = dir.join("blank.img");
    fs::File::create(&disk).unwrap().set_len(16 << 20).unwrap();
    let spec = VmSpec {
        name: "node".into(),
        work_dir: dir.join("vm"),
        firmware: Firmware::Uefi,
        memory_mib: 256,
        network_boot: Some(NetworkBoot {
            boot_url: "http://10.0.2.2:9/boot.ipxe".into(),
            mac: "52:54:00:fe:00:07".into(),
        }),
        disks: vec![VmDisk::virtio(disk)],
        ipmi_bmc_port: None,
    };
    let chassis = ChassisVm::new(&spec).unwrap_or_else(|err| panic!("{err}"));
    let sim = IpmiSim::start(&dir, Some(chassis)).unwrap_or_else(|err| panic!("{err}"));
    let bmc = driver(&sim.driver_info());
    let once = |device| BootDeviceSetting { device, persistent: false };
    within(Duration::from_secs(240), async {
        assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
        bmc.set_boot_device(once(BootDevice::Pxe), BootMode::Uefi).await.unwrap();
        act(&sim, &bmc, PowerAction::On).await;
        let first_pid = sim.vm_pid().expect("QEMU runs");
        let took = sim.wait_for_serial(IPXE_BANNER, Duration::from_secs(90)).unwrap_or_else(|err| panic!("{err}"));
        println!("PXE: iPXE on the serial console after {:.1} s", took.as_secs_f64());
        let serial = sim.serial_log().unwrap();
        let before_ipxe = &serial[..serial.find(IPXE_BANNER).unwrap()];
        assert!(!before_ipxe.contains(OVMF_DISK), "the disk was tried before the NIC:\n{serial}");

        // A guest powering itself off makes QEMU exit: the BMC then reads off.
        ferric_runner::run("end QEMU", std::process::Command::new("kill").arg(first_pid.to_string())).unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);

        // A reboot starts a new QEMU, now from the disk; the serial log keeps the earlier boot.
        let earlier = sim.serial_log().unwrap().len();
        bmc.set_boot_device(once(BootDevice::Disk), BootMode::Uefi).await.unwrap();
        act(&sim, &bmc, PowerAction::Reboot).await;
        let second_pid = sim.vm_pid().expect("QEMU runs");
        assert_ne!(first_pid, second_pid);
        let started = Instant::now();
        let second_boot = loop {
            let serial = sim.serial_log().unwrap();
            if let Some(ipxe) = serial[earlier..].find(IPXE_BANNER) {
                break serial[earlier..earlier + ipxe].to_owned();
            }
            assert!(started.elapsed() < Duration::from_secs(90), "no second boot on the serial console:\n{serial}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        println!("disk: the NIC after the disk, {:.1} s", started.elapsed().as_secs_f64());
        assert!(second_boot.contains(OVMF_DISK), "the disk was not tried first:\n{second_boot}");

        // The firmware ignores the ACPI power button: a soft power off times out.
        let started = Instant::now();
        let soft_timeout = Duration::from_secs(3);
        match bmc.set_power_state(PowerAction::SoftOff, soft_timeout).await {
            Err(BmcError::PowerTimeout { expected, actual, .. }) => {
                assert_eq!((expected, actual.as_str()), (PowerState::Off, "power on"));
                assert!(started.elapsed() < soft_timeout + COMMAND_TIMEOUT, "{:?}", started.elapsed());
            }
            other => panic!("expected PowerTimeout, got {other:?}"),
        }
        assert!(sim.qemu_log().contains("ACPI shutdown request"), "{}", sim.qemu_log());
        assert_eq!(sim.vm_pid(), Some(second_pid));

        act(&sim, &bmc, PowerAction::Off).await;
        assert_eq!(sim.vm_pid(), None);
    });
    let settings = sim.chassis_settings();
    println!("chassis: {settings:?}");
    assert_eq!(
        settings,
        [
            "set boot pxe",
            "set power 1",
            "set boot default",
            "set power 0",
            "set power 1",
            "set shutdown 1",
            "set power 0"
        ]
    );
}
