//! QEMU virtual machines for the tests: UEFI (OVMF) or legacy BIOS (SeaBIOS) firmware, optional iPXE network
//! boot, raw disks on virtio-blk, SCSI, NVMe or SATA with the identities root-device hints select by, serial
//! console to a log file.
//!
//! Always `-accel tcg`: a KVM guest hangs on this kind of machine. No `-no-reboot`: the agent reboots the
//! VM into the deployed OS, and the test OS ends the run by powering off, which makes QEMU exit.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use ferric_runner::{tail_lines, CommandError};

use crate::path_io::PathIoError;

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// iPXE for virtio-net as a UEFI driver, so OVMF network-boots through iPXE (which speaks HTTP).
pub const IPXE_EFI_VIRTIO_ROM: &str = "/usr/lib/ipxe/qemu/efi-virtio.rom";
/// iPXE for virtio-net as a legacy PXE option ROM, so SeaBIOS network-boots through iPXE.
pub const IPXE_PXE_VIRTIO_ROM: &str = "/usr/lib/ipxe/qemu/pxe-virtio.rom";
/// How many serial lines an error shows.
pub const SERIAL_TAIL_LINES: usize = 40;

const POLL_INTERVAL: Duration = Duration::from_millis(200);

static QEMU_LOCK: Mutex<()> = Mutex::new(());

/// Serialises VMs within a test process: a TCG guest keeps a core busy, and the machine has two.
/// A panicking test poisons nothing: the guard is taken back from a poisoned lock.
pub fn qemu_lock() -> MutexGuard<'static, ()> {
    QEMU_LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Io(#[from] PathIoError),
    #[error(transparent)]
    Spawn(#[from] CommandError),
    #[error("VM {name}: {pattern:?} not on the serial console after {timeout:?}; last serial lines:\n{tail}")]
    SerialTimeout { name: String, pattern: String, timeout: Duration, tail: String },
    #[error("VM {name}: QEMU exited ({status}) before {pattern:?} appeared on the serial console; QEMU said: {qemu_log}\nlast serial lines:\n{tail}")]
    ExitedBeforeSerial { name: String, pattern: String, status: ExitStatus, qemu_log: String, tail: String },
    #[error("VM {name}: QEMU still running after {timeout:?}; last serial lines:\n{tail}")]
    ExitTimeout { name: String, timeout: Duration, tail: String },
    #[error("VM {name}: QEMU exited with {status}; QEMU said: {qemu_log}\nlast serial lines:\n{tail}")]
    ExitedWithFailure { name: String, status: ExitStatus, qemu_log: String, tail: String },
    #[error("VM {name}: waiting for QEMU failed")]
    Wait {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// Network boot through QEMU's user network: its DHCP server hands iPXE `boot_url` as the boot file.
#[derive(Debug, Clone)]
pub struct NetworkBoot {
    /// As the guest sees it, e.g. `http://10.0.2.2:PORT/boot.ipxe` (10.0.2.2 is the host's 127.0.0.1).
    pub boot_url: String,
    /// The NIC's MAC address, e.g. `52:54:00:fe:00:01`.
    pub mac: String,
}

/// The firmware a VM starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// OVMF from pflash, with a writable variable store of the VM's own.
    Uefi,
    /// SeaBIOS, QEMU's default firmware, with its console on the serial port.
    Bios,
}

/// How a disk is attached, with the identity the guest sees (what root-device hints select by).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskBus {
    /// virtio-blk-pci (`vdX`); the serial shows in `/sys/block/vdX/serial`.
    VirtioBlk { serial: Option<String> },
    /// scsi-hd on the VM's one virtio-scsi-pci controller (`sdX`): the WWN (an NAA identifier such as
    /// `0x5000c500a1b2c3d4`, in VPD page 0x83) and the unit serial (VPD page 0x80).
    ScsiHd { wwn: Option<u64>, serial: Option<String> },
    /// An NVMe controller with one namespace (`nvmeXn1`); QEMU requires the serial.
    Nvme { serial: String },
    /// ide-hd on a port of q35's ICH9 AHCI controller (`ide.0`..`ide.5`): a SATA disk (`sdX`) with the
    /// model its ATA IDENTIFY reports.
    IdeHd { model: Option<String> },
}

/// A raw disk image file and how the VM attaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDisk {
    pub path: PathBuf,
    pub bus: DiskBus,
}

impl VmDisk {
    /// A virtio-blk disk without a serial, as most tests want.
    pub fn virtio(path: impl Into<PathBuf>) -> VmDisk {
        VmDisk { path: path.into(), bus: DiskBus::VirtioBlk { serial: None } }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub name: String,
    /// Holds the VM's firmware variables, serial log and QEMU's own output.
    pub work_dir: PathBuf,
    pub firmware: Firmware,
    pub memory_mib: u32,
    /// When set, the NIC boots first; otherwise the VM has no network at all.
    pub network_boot: Option<NetworkBoot>,
    /// Raw disk image files, attached in this order (after the NIC in the boot order).
    pub disks: Vec<VmDisk>,
    /// A BMC the guest reaches in band, through a KCS system interface (`isa-ipmi-kcs`, announced by ACPI
    /// and SMBIOS) backed by `ipmi-bmc-extern`, which connects to this TCP port of 127.0.0.1: an external
    /// BMC such as ipmi_sim's `serial kcs ... codec VM` listener.
    pub ipmi_bmc_port: Option<u16>,
}

impl VmSpec {
    /// The UEFI variable store the VM's arguments name (in `work_dir`); none under BIOS.
    pub fn firmware_vars(&self) -> Option<PathBuf> {
        match self.firmware {
            Firmware::Uefi => Some(self.work_dir.join(format!("{}-OVMF_VARS.fd", self.name))),
            Firmware::Bios => None,
        }
    }

    /// Creates `work_dir` and, under UEFI, a fresh copy of [`OVMF_VARS`] as the VM's variable store.
    pub fn prepare_firmware(&self) -> Result<(), PathIoError> {
        fs::create_dir_all(&self.work_dir).map_err(PathIoError::at("create directory", &self.work_dir))?;
        if let Some(vars) = self.firmware_vars() {
            fs::copy(OVMF_VARS, &vars).map_err(PathIoError::at("copy the OVMF variable store to", &vars))?;
        }
        Ok(())
    }
}

/// A running QEMU; killed on drop.
#[derive(Debug)]
pub struct Vm {
    name: String,
    child: Child,
    started: Instant,
    serial_log: PathBuf,
    qemu_log_path: PathBuf,
    exit_status: Option<ExitStatus>,
}

impl Vm {
    pub fn start(spec: VmSpec) -> Result<Vm, VmError> {
        spec.prepare_firmware()?;
        let serial_log = spec.work_dir.join(format!("{}-serial.log", spec.name));
        let qemu_log = spec.work_dir.join(format!("{}-qemu.log", spec.name));
        let qemu_output = fs::File::create(&qemu_log).map_err(PathIoError::at("create", &qemu_log))?;
        let qemu_stderr = qemu_output.try_clone().map_err(PathIoError::at("duplicate the handle of", &qemu_log))?;

        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(qemu_args(&spec, &serial_log)).stdin(Stdio::null()).stdout(qemu_output).stderr(qemu_stderr);
        let child = ferric_runner::spawn(format!("start VM {}", spec.name), &mut cmd)?;
        Ok(Vm {
            name: spec.name,
            child,
            started: Instant::now(),
            serial_log,
            qemu_log_path: qemu_log,
            exit_status: None,
        })
    }

    /// Waits until `pattern` appears on the serial console; returns the time since the VM started.
    pub fn wait_for_serial(&mut self, pattern: &str, timeout: Duration) -> Result<Duration, VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.serial_log().contains(pattern) {
                return Ok(self.started.elapsed());
            }
            if let Some(status) = self.poll_exit()? {
                // The last output may have landed between the read and the exit.
                if self.serial_log().contains(pattern) {
                    return Ok(self.started.elapsed());
                }
                return Err(VmError::ExitedBeforeSerial {
                    name: self.name.clone(),
                    pattern: pattern.to_string(),
                    status,
                    qemu_log: self.qemu_log(),
                    tail: self.serial_tail(SERIAL_TAIL_LINES),
                });
            }
            if Instant::now() >= deadline {
                return Err(VmError::SerialTimeout {
                    name: self.name.clone(),
                    pattern: pattern.to_string(),
                    timeout,
                    tail: self.serial_tail(SERIAL_TAIL_LINES),
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits until QEMU exits by itself with success (the guest powered off); returns the time since the
    /// VM started.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Duration, VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.poll_exit()? {
                if !status.success() {
                    return Err(VmError::ExitedWithFailure {
                        name: self.name.clone(),
                        status,
                        qemu_log: self.qemu_log(),
                        tail: self.serial_tail(SERIAL_TAIL_LINES),
                    });
                }
                return Ok(self.started.elapsed());
            }
            if Instant::now() >= deadline {
                return Err(VmError::ExitTimeout {
                    name: self.name.clone(),
                    timeout,
                    tail: self.serial_tail(SERIAL_TAIL_LINES),
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Everything the guest wrote to its serial port so far.
    pub fn serial_log(&self) -> String {
        fs::read(&self.serial_log).map(|bytes| String::from_utf8_lossy(&bytes).into_owned()).unwrap_or_default()
    }

    /// The last `lines` serial lines, without the firmware's terminal escape sequences.
    pub fn serial_tail(&self, lines: usize) -> String {
        tail_lines(&strip_terminal_escapes(&self.serial_log()), lines)
    }

    /// What QEMU itself printed (errors about its arguments, warnings).
    pub fn qemu_log(&self) -> String {
        fs::read_to_string(&self.qemu_log_path).unwrap_or_default().trim().to_string()
    }

    /// Stops QEMU now (idempotent).
    pub fn kill(&mut self) -> Result<(), VmError> {
        if self.poll_exit()?.is_none() {
            // An error here means it exited meanwhile; `wait` below reaps it either way.
            let _ = self.child.kill();
            let status = self.child.wait().map_err(|source| VmError::Wait { name: self.name.clone(), source })?;
            self.exit_status = Some(status);
        }
        Ok(())
    }

    fn poll_exit(&mut self) -> Result<Option<ExitStatus>, VmError> {
        if self.exit_status.is_none() {
            self.exit_status =
                self.child.try_wait().map_err(|source| VmError::Wait { name: self.name.clone(), source })?;
        }
        Ok(self.exit_status)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            tracing::warn!(vm = %self.name, error = %e, "could not stop QEMU");
        }
    }
}

fn qemu_args(spec: &VmSpec, serial_log: &Path) -> Vec<String> {
    let serial = vec!["-serial".into(), format!("file:{}", serial_log.display())];
    machine_args(spec, serial, BootFirst::Network)
}

/// Which device a VM tries first; the other follows in the boot order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootFirst {
    Network,
    Disk,
}

/// QEMU's arguments for `spec` without starting it, for a launcher that runs QEMU itself and starts it
/// again on every power-on (the simulated BMC of [`crate::ipmi_sim`]). Under UEFI the caller prepares the
/// variable store once ([`VmSpec::prepare_firmware`]) and keeps it across power cycles, as a real machine
/// keeps its NVRAM; the serial console is appended to `serial_log`, so that one log holds every boot.
pub fn qemu_argv(spec: &VmSpec, serial_log: &Path, boot_first: BootFirst) -> Vec<String> {
    let serial = vec![
        "-chardev".into(),
        format!("file,id=serial0,path={},append=on", qemu_path(serial_log)),
        "-serial".into(),
        "chardev:serial0".into(),
    ];
    machine_args(spec, serial, boot_first)
}

fn machine_args(spec: &VmSpec, serial: Vec<String>, boot_first: BootFirst) -> Vec<String> {
    let machine = match spec.firmware {
        Firmware::Uefi => "q35",
        // Without a display SeaBIOS then puts its console, and the int 10h output of option ROMs such
        // as iPXE, on the serial port.
        Firmware::Bios => "q35,graphics=off",
    };
    let mut args: Vec<String> = [
        "-name",
        spec.name.as_str(),
        "-accel",
        "tcg",
        "-machine",
        machine,
        "-smp",
        "1",
        // No default devices (VGA, NIC, monitor, serial...): the firmware and iPXE need none of them, and
        // the defaults would add a second NIC that network-boots too.
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    args.extend(["-m".into(), spec.memory_mib.to_string()]);
    // Under BIOS no pflash: QEMU loads SeaBIOS.
    if let Some(vars) = spec.firmware_vars() {
        args.extend([
            "-drive".into(),
            format!("if=pflash,format=raw,readonly=on,file={}", qemu_path(Path::new(OVMF_CODE))),
        ]);
        args.extend(["-drive".into(), format!("if=pflash,format=raw,file={}", qemu_path(&vars))]);
    }
    args.extend(serial);
    let (nic_boot_index, first_disk_boot_index) = match boot_first {
        BootFirst::Network => (1, 2),
        BootFirst::Disk => (spec.disks.len() + 1, 1),
    };
    if let Some(net) = &spec.network_boot {
        args.extend(["-netdev".into(), format!("user,id=n0,bootfile={}", net.boot_url)]);
        let rom = match spec.firmware {
            Firmware::Uefi => format!("romfile={IPXE_EFI_VIRTIO_ROM}"),
            // SeaBIOS runs a PCI option ROM only when its IDs match the device's. iPXE's ROMs name the
            // modern virtio-net device (1af4:1041), and QEMU rewrites the IDs of its default ROM only, not
            // of one given with romfile=: so the NIC is modern-only.
            Firmware::Bios => format!("disable-legacy=on,romfile={IPXE_PXE_VIRTIO_ROM}"),
        };
        args.extend([
            "-device".into(),
            format!("virtio-net-pci,netdev=n0,mac={},{rom},bootindex={nic_boot_index}", net.mac),
        ]);
    }
    args.extend(disk_args(&spec.disks, first_disk_boot_index));
    if let Some(port) = spec.ipmi_bmc_port {
        // reconnect: QEMU retries in the background while the BMC is not (yet) listening.
        args.extend([
            "-chardev".into(),
            format!("socket,id=ipmi0,host=127.0.0.1,port={port},reconnect=1"),
            "-device".into(),
            "ipmi-bmc-extern,id=bmc0,chardev=ipmi0".into(),
            "-device".into(),
            "isa-ipmi-kcs,bmc=bmc0".into(),
        ]);
    }
    args
}

/// The `-drive` and `-device` arguments of `disks`, numbered in boot order from `first_boot_index`.
///
/// Default (writeback) cache: QEMU writes through to the host file, so the test reads the final bytes
/// once QEMU has exited or been killed. `discard=unmap` turns the guest's discards (virtio discard, SCSI
/// UNMAP, NVMe deallocate, ATA TRIM) into holes punched in the host file, and `detect-zeroes=unmap` does
/// the same with writes of zeroes: an erase by discard or by zero-filling then writes nothing to the host
/// disk and leaves the file sparse, which keeps erasing fast and the host's reads of the file (which skip
/// holes) short. What the guest reads back is zeroes either way.
fn disk_args(disks: &[VmDisk], first_boot_index: usize) -> Vec<String> {
    let mut args = Vec::new();
    if disks.iter().any(|disk| matches!(disk.bus, DiskBus::ScsiHd { .. })) {
        args.extend(["-device".into(), "virtio-scsi-pci,id=scsi0".into()]);
    }
    let mut ahci_port = 0;
    for (index, disk) in disks.iter().enumerate() {
        args.extend([
            "-drive".into(),
            format!("if=none,id=d{index},format=raw,file={},discard=unmap,detect-zeroes=unmap", qemu_path(&disk.path)),
        ]);
        let optional = |name: &str, value: &Option<String>| {
            value.as_deref().map(|value| format!(",{name}={}", qemu_escape(value))).unwrap_or_default()
        };
        let device = match &disk.bus {
            DiskBus::VirtioBlk { serial } => format!("virtio-blk-pci,drive=d{index}{}", optional("serial", serial)),
            DiskBus::ScsiHd { wwn, serial } => format!(
                "scsi-hd,bus=scsi0.0,drive=d{index}{}{}",
                wwn.map(|wwn| format!(",wwn={wwn:#018x}")).unwrap_or_default(),
                optional("serial", serial)
            ),
            DiskBus::Nvme { serial } => format!("nvme,drive=d{index},serial={}", qemu_escape(serial)),
            // A seventh SATA disk finds no `ide.6` bus, which QEMU reports when it starts.
            DiskBus::IdeHd { model } => {
                let port = ahci_port;
                ahci_port += 1;
                format!("ide-hd,bus=ide.{port},drive=d{index}{}", optional("model", model))
            }
        };
        args.extend(["-device".into(), format!("{device},bootindex={}", index + first_boot_index)]);
    }
    args
}

/// QEMU option values escape a comma by doubling it.
fn qemu_path(path: &Path) -> String {
    qemu_escape(&path.display().to_string())
}

fn qemu_escape(value: &str) -> String {
    value.replace(',', ",,")
}

/// Removes CSI escape sequences (`ESC [ ... letter`) and carriage returns that the firmware's console emits.
fn strip_terminal_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(network_boot: Option<NetworkBoot>) -> VmSpec {
        VmSpec {
            name: "n1".into(),
            work_dir: "/w".into(),
            firmware: Firmware::Uefi,
            memory_mib: 1024,
            network_boot,
            disks: vec![VmDisk::virtio("/w/disk,a.img"), VmDisk::virtio("/w/b.img")],
            ipmi_bmc_port: None,
        }
    }

    #[test]
    fn network_boots_first_then_disks_in_order() {
        let net = NetworkBoot { boot_url: "http://10.0.2.2:8080/boot.ipxe".into(), mac: "52:54:00:fe:00:01".into() };
        let args = qemu_args(&spec(Some(net)), Path::new("/w/serial.log")).join(" ");
        assert!(args.contains("-accel tcg") && args.contains("-machine q35 "), "{args}");
        assert!(!args.contains("-no-reboot"), "{args}");
        assert!(args.contains(&format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}")), "{args}");
        assert!(args.contains("if=pflash,format=raw,file=/w/n1-OVMF_VARS.fd"), "{args}");
        assert!(args.contains("user,id=n0,bootfile=http://10.0.2.2:8080/boot.ipxe"), "{args}");
        assert!(args.contains(&format!("mac=52:54:00:fe:00:01,romfile={IPXE_EFI_VIRTIO_ROM},bootindex=1")), "{args}");
        assert!(args.contains("id=d0,format=raw,file=/w/disk,,a.img,discard=unmap,detect-zeroes=unmap"), "{args}");
        assert!(args.contains("drive=d0,bootindex=2") && args.contains("drive=d1,bootindex=3"), "{args}");
        assert!(args.contains("-serial file:/w/serial.log"), "{args}");
    }

    #[test]
    fn without_network_boot_there_is_no_nic() {
        let args = qemu_args(&spec(None), Path::new("/w/serial.log")).join(" ");
        assert!(!args.contains("netdev") && !args.contains("virtio-net"), "{args}");
        assert!(args.contains("-nodefaults"), "{args}");
        assert!(!args.contains("ipmi"), "{args}");
    }

    #[test]
    fn an_external_bmc_is_a_kcs_interface_connected_to_its_port() {
        let spec = VmSpec { ipmi_bmc_port: Some(9002), ..spec(None) };
        let args = qemu_args(&spec, Path::new("/w/serial.log")).join(" ");
        assert!(
            args.contains(
                "-chardev socket,id=ipmi0,host=127.0.0.1,port=9002,reconnect=1 \
                 -device ipmi-bmc-extern,id=bmc0,chardev=ipmi0 -device isa-ipmi-kcs,bmc=bmc0"
            ),
            "{args}"
        );
    }

    #[test]
    fn a_launcher_vm_can_boot_its_disks_first_and_appends_its_serial_log() {
        let net = NetworkBoot { boot_url: "http://10.0.2.2:8080/boot.ipxe".into(), mac: "52:54:00:fe:00:01".into() };
        let spec = spec(Some(net));
        let serial = Path::new("/w/serial,1.log");
        let disk_first = qemu_argv(&spec, serial, BootFirst::Disk).join(" ");
        assert!(
            disk_first.contains("drive=d0,bootindex=1") && disk_first.contains("drive=d1,bootindex=2"),
            "{disk_first}"
        );
        assert!(disk_first.contains(&format!("romfile={IPXE_EFI_VIRTIO_ROM},bootindex=3")), "{disk_first}");
        assert!(disk_first.contains("-chardev file,id=serial0,path=/w/serial,,1.log,append=on -serial chardev:serial0"));
        let network_first = qemu_argv(&spec, serial, BootFirst::Network).join(" ");
        let fixed = qemu_args(&spec, serial).join(" ");
        assert_eq!(
            network_first
                .replace("-chardev file,id=serial0,path=/w/serial,,1.log,append=on -serial chardev:serial0", ""),
            fixed.replace("-serial file:/w/serial,1.log", "")
        );
    }

    #[test]
    fn a_bios_vm_has_seabios_on_the_serial_port_and_the_pxe_rom_on_a_modern_nic() {
        let net = NetworkBoot { boot_url: "http://10.0.2.2:8080/boot.ipxe".into(), mac: "52:54:00:fe:00:01".into() };
        let spec = VmSpec { firmware: Firmware::Bios, ..spec(Some(net)) };
        assert_eq!(spec.firmware_vars(), None);
        let args = qemu_argv(&spec, Path::new("/w/serial.log"), BootFirst::Network).join(" ");
        assert!(!args.contains("pflash") && !args.contains("OVMF"), "{args}");
        assert!(args.contains("-machine q35,graphics=off "), "{args}");
        let nic = format!("mac=52:54:00:fe:00:01,disable-legacy=on,romfile={IPXE_PXE_VIRTIO_ROM},bootindex=1");
        assert!(args.contains(&format!("virtio-net-pci,netdev=n0,{nic}")), "{args}");
        assert!(args.contains("drive=d0,bootindex=2") && args.contains("drive=d1,bootindex=3"), "{args}");
        let disk_first = qemu_argv(&spec, Path::new("/w/serial.log"), BootFirst::Disk).join(" ");
        assert!(disk_first.contains("drive=d0,bootindex=1"), "{disk_first}");
        assert!(disk_first.contains(&format!("romfile={IPXE_PXE_VIRTIO_ROM},bootindex=3")), "{disk_first}");
    }

    #[test]
    fn each_bus_gets_its_device_and_identity_in_boot_order() {
        let disk = |name: &str, bus| VmDisk { path: PathBuf::from(format!("/w/{name}")), bus };
        let disks = [
            disk("v", DiskBus::VirtioBlk { serial: Some("FERRIC-VIRTIO-1".into()) }),
            disk("s", DiskBus::ScsiHd { wwn: Some(0x5000c500a1b2c3d4), serial: Some("S,1".into()) }),
            disk("n", DiskBus::Nvme { serial: "FERRIC-NVME-1".into() }),
            disk("i", DiskBus::IdeHd { model: Some("FERRIC IDE DISK".into()) }),
            disk("i2", DiskBus::IdeHd { model: None }),
            disk("s2", DiskBus::ScsiHd { wwn: None, serial: None }),
        ];
        let args = disk_args(&disks, 2);
        let devices: Vec<&str> = args
            .iter()
            .zip(args.iter().skip(1))
            .filter(|(flag, _)| *flag == "-device")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(
            devices,
            [
                "virtio-scsi-pci,id=scsi0",
                "virtio-blk-pci,drive=d0,serial=FERRIC-VIRTIO-1,bootindex=2",
                "scsi-hd,bus=scsi0.0,drive=d1,wwn=0x5000c500a1b2c3d4,serial=S,,1,bootindex=3",
                "nvme,drive=d2,serial=FERRIC-NVME-1,bootindex=4",
                "ide-hd,bus=ide.0,drive=d3,model=FERRIC IDE DISK,bootindex=5",
                "ide-hd,bus=ide.1,drive=d4,bootindex=6",
                "scsi-hd,bus=scsi0.0,drive=d5,bootindex=7",
            ]
        );
        let drives = args.iter().filter(|arg| arg.starts_with("if=none,")).count();
        assert_eq!(drives, disks.len(), "{args:?}");
        assert!(args.contains(&"if=none,id=d3,format=raw,file=/w/i,discard=unmap,detect-zeroes=unmap".to_string()));
        assert!(disk_args(&[VmDisk::virtio("/w/v")], 1).iter().all(|arg| !arg.contains("scsi")));
    }

    #[test]
    fn serial_tail_drops_escapes_and_keeps_the_last_lines() {
        let text = "\u{1b}[2J\u{1b}[01;01Hfirst\r\nsecond\r\n\u{1b}[0mthird\n";
        assert_eq!(tail_lines(&strip_terminal_escapes(text), 2), "second\nthird");
    }

    #[test]
    fn poisoned_lock_is_still_handed_out() {
        let _ = std::thread::spawn(|| {
            let _guard = qemu_lock();
            panic!("poison the lock");
        })
        .join();
        drop(qemu_lock());
    }
}
