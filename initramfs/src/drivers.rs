//! Loads the drivers for the hardware present, the way udev would: every device in sysfs
//! publishes a `modalias`; the modules whose alias patterns match it are loaded, with
//! their dependencies first. Loading a bus driver (virtio_pci) makes new devices appear
//! (virtio net/blk), so passes repeat until one loads nothing new; later passes (while the
//! network step polls for NICs) catch devices that appear after that.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};

use crate::error_chain;
use crate::modindex::{ModIndexError, Module, ModuleIndex};

/// Pause between passes, so that devices created by the last pass's drivers show up.
const PASS_PAUSE: Duration = Duration::from_millis(200);
/// Bound on passes; each bus level needs one (PCI, then virtio, then maybe one more).
const MAX_PASSES: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("could not read the kernel release from {path}")]
    Release {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not list devices in {path}")]
    ListDevices {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Index(#[from] ModIndexError),
}

/// Why one module did not load.
#[derive(Debug, thiserror::Error)]
pub enum InsertError {
    #[error("could not open {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("finit_module({path}) failed")]
    Init {
        path: PathBuf,
        #[source]
        source: Errno,
    },
}

/// How modules get into the kernel: [`insert_module`], or a fake in tests.
type InsertFn = fn(&Path) -> Result<(), InsertError>;

/// The driver step's state, kept after it succeeds so that later passes load drivers for
/// devices that show up late (a NIC still probing when the step ran).
pub struct HardwareDrivers {
    /// `None` when there are no modules for this kernel: built-in drivers are all there is.
    loader: Option<DriverLoader<InsertFn>>,
    sys_root: PathBuf,
}

impl HardwareDrivers {
    /// Loads drivers for the devices under `<root>/sys`, from `<root>/lib/modules/<release>`
    /// (the running kernel's release, from `<root>/proc`), until a pass loads nothing new.
    /// Without a modules directory the kernel's built-in drivers are all there is, which is
    /// not an error.
    pub fn load_present(root: &Path) -> Result<Self, DriverError> {
        let release_path = root.join("proc/sys/kernel/osrelease");
        let release = std::fs::read_to_string(&release_path)
            .map_err(|source| DriverError::Release { path: release_path, source })?;
        let release = release.trim();
        let sys_root = root.join("sys");
        if !ModuleIndex::modules_dir(root, release).is_dir() {
            log!("no modules for kernel {release}; relying on built-in drivers");
            return Ok(Self { loader: None, sys_root });
        }
        let index = ModuleIndex::load(root, release)?;
        let mut loader = DriverLoader::new(index, insert_module as InsertFn);
        let loaded = loader.load_until_settled(|| scan_for_drivers(&sys_root), PASS_PAUSE)?;
        log!("drivers: {loaded} modules loaded");
        Ok(Self { loader: Some(loader), sys_root })
    }

    /// One more pass over the devices present now; modaliases seen before are skipped, so
    /// it is cheap enough to run while polling for NICs. Errors are logged.
    pub fn load_new(&mut self) {
        let Some(loader) = &mut self.loader else { return };
        match scan_for_drivers(&self.sys_root) {
            Ok(modaliases) => {
                let loaded = loader.load_pass(&modaliases);
                if loaded > 0 {
                    log!("drivers: {loaded} more modules loaded for devices that appeared");
                }
            }
            Err(error) => log!("{}", error_chain(&error)),
        }
    }
}

/// Filesystems the agent mounts (a deployed root to copy its EFI files, an ESP), and crc32c, which
/// ext4 needs at mount time but names only as a soft dependency that modules.dep leaves out. The
/// ramdisk has no modprobe for the kernel to call, so init loads them up front; absent ones are skipped.
pub const AGENT_FILESYSTEM_ALIASES: &[&str] = &["fs-ext4", "crypto-crc32c", "fs-vfat"];

/// Modules loaded by name on every machine: nothing asks for them by modalias. ipmi_devintf gives
/// the BMC that ipmi_si finds (through its ACPI, SMBIOS or PCI modalias) the /dev/ipmi0 the agent reads
/// the BMC's address through; without a BMC it only costs its memory. Absent ones are skipped.
pub const ALWAYS_LOADED_MODULES: &[&str] = &["ipmi_devintf"];

/// The modaliases drivers are wanted for: every device's, efivarfs's on UEFI machines, the
/// filesystems the agent mounts, and the names of the modules loaded on every machine.
fn scan_for_drivers(sys_root: &Path) -> Result<BTreeSet<String>, DriverError> {
    let mut modaliases = scan_modaliases(sys_root)?;
    modaliases.extend(efivarfs_modalias(sys_root));
    modaliases.extend(AGENT_FILESYSTEM_ALIASES.iter().map(|alias| alias.to_string()));
    modaliases.extend(ALWAYS_LOADED_MODULES.iter().map(|name| name.to_string()));
    Ok(modaliases)
}

/// Loads one module file into the kernel, without parameters.
pub fn insert_module(path: &Path) -> Result<(), InsertError> {
    let file = File::open(path).map_err(|source| InsertError::Open { path: path.to_path_buf(), source })?;
    finit_module(&file, c"", ModuleInitFlags::empty())
        .map_err(|source| InsertError::Init { path: path.to_path_buf(), source })
}

/// The modaliases of all devices on all buses (`<sys_root>/bus/*/devices/*/modalias`).
/// Devices without one, or whose file cannot be read, are skipped.
pub fn scan_modaliases(sys_root: &Path) -> Result<BTreeSet<String>, DriverError> {
    let buses = sys_root.join("bus");
    let list = |path: &Path| {
        std::fs::read_dir(path).map_err(|source| DriverError::ListDevices { path: path.to_path_buf(), source })
    };
    let mut modaliases = BTreeSet::new();
    for bus in list(&buses)?.flatten() {
        let Ok(devices) = std::fs::read_dir(bus.path().join("devices")) else { continue };
        for device in devices.flatten() {
            if let Ok(text) = std::fs::read_to_string(device.path().join("modalias")) {
                let modalias = text.trim();
                if !modalias.is_empty() {
                    modaliases.insert(modalias.to_string());
                }
            }
        }
    }
    Ok(modaliases)
}

/// The alias (`fs-efivarfs`, as the kernel's own request_module uses) of efivarfs, which
/// init mounts on UEFI machines and which is often a module.
pub fn efivarfs_modalias(sys_root: &Path) -> Option<String> {
    sys_root.join("firmware/efi").is_dir().then(|| "fs-efivarfs".to_string())
}

/// Loads modules for modaliases, remembering each module's outcome so that it is
/// attempted once (a failure is logged, not retried forever).
pub struct DriverLoader<Insert> {
    index: ModuleIndex,
    insert: Insert,
    /// Module name -> whether it is in the kernel now.
    outcomes: HashMap<String, bool>,
    /// Modaliases already handled: what matches them does not change.
    handled: HashSet<String>,
}

/// What became of one module.
enum Outcome {
    Loaded,
    AlreadyThere,
    Failed,
}

impl<Insert: FnMut(&Path) -> Result<(), InsertError>> DriverLoader<Insert> {
    pub fn new(index: ModuleIndex, insert: Insert) -> Self {
        Self { index, insert, outcomes: HashMap::new(), handled: HashSet::new() }
    }

    /// Runs passes over `scan()`'s modaliases, pausing between them, until a pass loads
    /// nothing new or [`MAX_PASSES`] is reached. Returns how many modules were loaded.
    pub fn load_until_settled(
        &mut self,
        mut scan: impl FnMut() -> Result<BTreeSet<String>, DriverError>,
        pause: Duration,
    ) -> Result<usize, DriverError> {
        let mut total = 0;
        for _ in 0..MAX_PASSES {
            let loaded = self.load_pass(&scan()?);
            if loaded == 0 {
                break;
            }
            total += loaded;
            std::thread::sleep(pause);
        }
        Ok(total)
    }

    /// Loads the modules matching `modaliases` not handled before, dependencies first; a
    /// module whose dependency failed is not tried. As with modprobe, a module's name that no
    /// alias matches stands for that module. Returns how many were newly loaded.
    pub fn load_pass(&mut self, modaliases: &BTreeSet<String>) -> usize {
        let Self { index, insert, outcomes, handled } = self;
        let mut loaded = 0;
        for modalias in modaliases {
            if !handled.insert(modalias.clone()) {
                continue;
            }
            let mut targets = index.modules_for_modalias(modalias);
            if targets.is_empty() {
                targets.extend(index.module(modalias).map(|module| module.name.as_str()));
            }
            for target in targets {
                if outcomes.contains_key(target) {
                    continue;
                }
                let order = index.load_order(target);
                if order.is_empty() {
                    let builtin = index.is_builtin(target);
                    if !builtin {
                        log!("no module file for {target} (wanted by {modalias})");
                    }
                    outcomes.insert(target.to_string(), builtin);
                    continue;
                }
                for module in order {
                    match load_once(index, insert, outcomes, module) {
                        Outcome::Loaded => loaded += 1,
                        Outcome::AlreadyThere => {}
                        Outcome::Failed => break,
                    }
                }
            }
        }
        loaded
    }
}

fn load_once(
    index: &ModuleIndex,
    insert: &mut impl FnMut(&Path) -> Result<(), InsertError>,
    outcomes: &mut HashMap<String, bool>,
    module: &Module,
) -> Outcome {
    match outcomes.get(&module.name) {
        Some(true) => return Outcome::AlreadyThere,
        Some(false) => return Outcome::Failed,
        None => {}
    }
    let outcome = match insert(&index.path_of(module)) {
        Ok(()) => {
            log!("loaded {}", module.name);
            Outcome::Loaded
        }
        Err(InsertError::Init { source: Errno::EEXIST, .. }) => Outcome::AlreadyThere,
        Err(error) => {
            log!("could not load {}: {}", module.name, error_chain(&error));
            Outcome::Failed
        }
    };
    outcomes.insert(module.name.clone(), !matches!(outcome, Outcome::Failed));
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const VIRTIO_NET_PCI: &str = "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00";
    const VIRTIO_NET: &str = "virtio:d00000001v00001AF4";

    fn fixture_index() -> ModuleIndex {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/modules");
        ModuleIndex::load(&root, "6.1.0-56-amd64").unwrap()
    }

    fn file_name(path: &Path) -> String {
        path.file_name().unwrap().to_string_lossy().into_owned()
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// A sysfs-like tree: devices under `devices/`, reached through `bus/*/devices/*` symlinks.
    #[test]
    fn scans_modaliases_of_bus_devices_through_symlinks() {
        let sys = tempfile::tempdir().unwrap();
        let pci_device = sys.path().join("devices/pci0000:00/0000:00:03.0");
        write(&pci_device.join("modalias"), &format!("{VIRTIO_NET_PCI}\n"));
        write(&pci_device.join("virtio0/modalias"), &format!("{VIRTIO_NET}\n"));
        write(&sys.path().join("devices/platform/serial8250/driver_override"), "(null)\n");
        write(&sys.path().join("devices/system/cpu/cpu0/modalias"), "");
        for (bus, name, target) in [
            ("pci", "0000:00:03.0", pci_device.clone()),
            ("virtio", "virtio0", pci_device.join("virtio0")),
            ("platform", "serial8250", sys.path().join("devices/platform/serial8250")),
            ("cpu", "cpu0", sys.path().join("devices/system/cpu/cpu0")),
        ] {
            std::fs::create_dir_all(sys.path().join("bus").join(bus).join("devices")).unwrap();
            symlink(target, sys.path().join("bus").join(bus).join("devices").join(name)).unwrap();
        }
        std::fs::create_dir_all(sys.path().join("bus/empty")).unwrap();

        let found = scan_modaliases(sys.path()).unwrap();
        assert_eq!(found, BTreeSet::from([VIRTIO_NET_PCI.to_string(), VIRTIO_NET.to_string()]));
    }

    #[test]
    fn efivarfs_is_wanted_on_uefi_machines_only() {
        let sys = tempfile::tempdir().unwrap();
        assert_eq!(efivarfs_modalias(sys.path()), None);
        std::fs::create_dir_all(sys.path().join("firmware/efi")).unwrap();
        let alias = efivarfs_modalias(sys.path()).unwrap();
        assert_eq!(fixture_index().modules_for_modalias(&alias), ["efivarfs"]);
    }

    #[test]
    fn scan_without_bus_directory_is_an_error() {
        let sys = tempfile::tempdir().unwrap();
        assert!(matches!(scan_modaliases(sys.path()), Err(DriverError::ListDevices { .. })));
    }

    #[test]
    fn later_passes_load_drivers_for_devices_that_appeared() {
        let mut inserted = Vec::new();
        let mut loader = DriverLoader::new(fixture_index(), |path: &Path| {
            inserted.push(file_name(path));
            Ok(())
        });
        // The virtio device only shows up once virtio_pci is loaded (the second scan).
        let mut scans = 0;
        let total = loader
            .load_until_settled(
                || {
                    scans += 1;
                    let mut modaliases = BTreeSet::from([VIRTIO_NET_PCI.to_string()]);
                    if scans > 1 {
                        modaliases.insert(VIRTIO_NET.to_string());
                    }
                    Ok(modaliases)
                },
                Duration::ZERO,
            )
            .unwrap();
        assert_eq!(scans, 3, "the third pass loads nothing new and ends the loop");
        assert_eq!(total, 8);
        drop(loader);
        assert_eq!(
            inserted,
            [
                "virtio_ring.ko",
                "virtio.ko",
                "virtio_pci_modern_dev.ko",
                "virtio_pci_legacy_dev.ko",
                "virtio_pci.ko",
                "failover.ko",
                "net_failover.ko",
                "virtio_net.ko",
            ]
        );
    }

    #[test]
    fn already_loaded_counts_as_success_and_failures_stop_the_chain_once() {
        let mut inserted = Vec::new();
        let mut loader = DriverLoader::new(fixture_index(), |path: &Path| {
            let name = file_name(path);
            inserted.push(name.clone());
            match name.as_str() {
                "virtio_ring.ko" | "virtio.ko" => {
                    Err(InsertError::Init { path: path.to_path_buf(), source: Errno::EEXIST })
                }
                "failover.ko" => Err(InsertError::Init { path: path.to_path_buf(), source: Errno::ENOEXEC }),
                _ => Ok(()),
            }
        });
        let modaliases = BTreeSet::from([VIRTIO_NET.to_string(), "virtio:d00000002v00001AF4".to_string()]);
        assert_eq!(loader.load_pass(&modaliases), 1, "only virtio_blk is new");
        assert_eq!(loader.load_pass(&modaliases), 0, "nothing is tried twice");
        drop(loader);
        assert_eq!(inserted, ["virtio_ring.ko", "virtio.ko", "failover.ko", "virtio_blk.ko"]);
    }

    #[test]
    fn a_module_name_without_a_matching_alias_loads_that_module_after_its_dependencies() {
        let index = ModuleIndex::parse(
            PathBuf::from("/m"),
            "alias acpi*:IPI0001:* ipmi_si\n",
            "kernel/drivers/char/ipmi/ipmi_devintf.ko: kernel/drivers/char/ipmi/ipmi_msghandler.ko\n\
             kernel/drivers/char/ipmi/ipmi_msghandler.ko:\n\
             kernel/drivers/char/ipmi/ipmi_si.ko: kernel/drivers/char/ipmi/ipmi_msghandler.ko\n",
            "",
        );
        let mut inserted = Vec::new();
        let mut loader = DriverLoader::new(index, |path: &Path| {
            inserted.push(file_name(path));
            Ok(())
        });
        let wanted = ALWAYS_LOADED_MODULES.iter().map(|name| name.to_string());
        let modaliases: BTreeSet<String> =
            wanted.chain(["acpi:IPI0001:".to_string(), "no_such_module".to_string()]).collect();
        assert_eq!(loader.load_pass(&modaliases), 3);
        drop(loader);
        assert_eq!(inserted, ["ipmi_msghandler.ko", "ipmi_si.ko", "ipmi_devintf.ko"]);
    }

    #[test]
    fn builtin_targets_count_as_present_without_inserting_anything() {
        let index = ModuleIndex::parse(
            PathBuf::from("/m"),
            "alias fs-efivarfs efivarfs\nalias virtio:d00000001v* virtio_net\n",
            "kernel/drivers/net/virtio_net.ko:\n",
            "kernel/fs/efivarfs/efivarfs.ko\n",
        );
        let mut inserted = Vec::new();
        let mut loader = DriverLoader::new(index, |path: &Path| {
            inserted.push(file_name(path));
            Ok(())
        });
        let modaliases = BTreeSet::from(["fs-efivarfs".to_string(), VIRTIO_NET.to_string()]);
        assert_eq!(loader.load_pass(&modaliases), 1);
        assert_eq!(loader.outcomes.get("efivarfs"), Some(&true), "built in, so in the kernel");
        drop(loader);
        assert_eq!(inserted, ["virtio_net.ko"]);
    }
}
