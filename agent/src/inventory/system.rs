//! CPU, memory, DMI and boot facts, as IPA gets them from lscpu, psutil, lshw and `/sys/firmware`.

use std::collections::BTreeSet;
use std::fs;

use ferric_protocol::inventory::{Boot, Cpu, Firmware, Memory, SystemVendor};

use super::sysfs::{read_trimmed, read_u64, sorted_entries, Sysfs};

/// `SecureBoot` in the EFI global variable namespace: 4 attribute bytes, then 1 = enabled.
const SECURE_BOOT_VAR: &str = "sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";

pub(crate) fn cpu(sys: &Sysfs) -> Cpu {
    let text = fs::read_to_string(sys.path("proc/cpuinfo")).unwrap_or_default();
    let processors: Vec<Vec<(&str, &str)>> = text
        .split("\n\n")
        .map(|block| block.lines().filter_map(|line| line.split_once(':')).map(|(k, v)| (k.trim(), v.trim())).collect())
        .filter(|fields: &Vec<(&str, &str)>| fields.iter().any(|(k, _)| *k == "processor"))
        .collect();
    let field = |key: &str| processors.iter().flatten().find(|(k, _)| *k == key).map(|(_, v)| (*v).to_owned());
    let cpus = sys.path("sys/devices/system/cpu");
    let cpu_dirs: Vec<String> = sorted_entries(&cpus)
        .into_iter()
        .filter(|n| n.strip_prefix("cpu").is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit())))
        .collect();
    // lscpu's "CPU max MHz" (cpufreq, kHz), else its "CPU MHz" (the cpuinfo value).
    let max_khz = cpu_dirs.iter().filter_map(|c| read_u64(&cpus.join(c).join("cpufreq/cpuinfo_max_freq"))).max();
    let frequency = match max_khz {
        Some(khz) => Some(format!("{:.4}", khz as f64 / 1000.0)),
        None => field("cpu MHz"),
    };
    let mut sockets: BTreeSet<String> =
        processors.iter().flatten().filter(|(k, _)| *k == "physical id").map(|(_, v)| (*v).to_owned()).collect();
    if sockets.is_empty() {
        sockets =
            cpu_dirs.iter().filter_map(|c| read_trimmed(&cpus.join(c).join("topology/physical_package_id"))).collect();
    }
    Cpu {
        model_name: field("model name"),
        frequency,
        count: processors.len() as u32,
        architecture: std::env::consts::ARCH.to_owned(),
        flags: field("flags").map(|f| f.split_whitespace().map(str::to_owned).collect()).unwrap_or_default(),
        socket_count: (sockets.len() as u32).max(1),
    }
}

pub(crate) fn memory(sys: &Sysfs) -> Memory {
    let text = fs::read_to_string(sys.path("proc/meminfo")).unwrap_or_default();
    let total_kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Memory { total: total_kib * 1024, physical_mb: physical_mb(sys).unwrap_or(total_kib.div_ceil(1024)) }
}

/// Installed memory from the memory-block view, which (unlike MemTotal) includes what the kernel and
/// firmware reserved: close to lshw's sum of DIMMs that IPA reports.
fn physical_mb(sys: &Sysfs) -> Option<u64> {
    let dir = sys.path("sys/devices/system/memory");
    let block = u64::from_str_radix(&read_trimmed(&dir.join("block_size_bytes"))?, 16).ok()?;
    let online = sorted_entries(&dir)
        .iter()
        .filter(|n| n.starts_with("memory"))
        .filter(|n| read_trimmed(&dir.join(n).join("online")).as_deref() == Some("1"))
        .count() as u64;
    (online > 0).then_some(online * block / (1 << 20))
}

pub(crate) fn system_vendor(sys: &Sysfs) -> SystemVendor {
    let dmi = sys.path("sys/class/dmi/id");
    let read = |attr: &str| read_trimmed(&dmi.join(attr));
    SystemVendor {
        product_name: read("product_name"),
        serial_number: read("product_serial"),
        manufacturer: read("sys_vendor"),
        firmware: Firmware {
            vendor: read("bios_vendor"),
            version: read("bios_version"),
            build_date: read("bios_date"),
        },
    }
}

pub(crate) fn boot(sys: &Sysfs, boot_mac: Option<&str>) -> Boot {
    let uefi = sys.path("sys/firmware/efi").exists();
    Boot {
        current_boot_mode: if uefi { "uefi" } else { "bios" }.to_owned(),
        pxe_interface: boot_mac.map(str::to_owned),
        secure_boot: uefi.then(|| secure_boot(sys)).flatten(),
    }
}

/// `None` when efivarfs is not mounted (nothing to tell); off when mounted without the variable
/// (firmware without Secure Boot).
fn secure_boot(sys: &Sysfs) -> Option<bool> {
    match fs::read(sys.path(SECURE_BOOT_VAR)) {
        Ok(value) => value.get(4).map(|enabled| *enabled == 1),
        Err(_) => {
            let mounted = fs::read_dir(sys.path("sys/firmware/efi/efivars")).is_ok_and(|mut d| d.next().is_some());
            mounted.then_some(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn put(root: &Path, rel: &str, content: &[u8]) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    /// Files to create: (path, content).
    type Files = &'static [(&'static str, &'static [u8])];

    #[test]
    fn secure_boot_states() {
        const OTHER_VAR: &str = "sys/firmware/efi/efivars/BootOrder-8be4df61-93ca-11d2-aa0d-00e098032b8c";
        let cases: [(&str, Files, Option<bool>); 5] = [
            ("enabled", &[(SECURE_BOOT_VAR, &[6, 0, 0, 0, 1])], Some(true)),
            ("disabled", &[(SECURE_BOOT_VAR, &[6, 0, 0, 0, 0])], Some(false)),
            ("truncated variable", &[(SECURE_BOOT_VAR, &[6, 0, 0, 0])], None),
            ("efivarfs without the variable", &[(OTHER_VAR, &[7, 0, 0, 0, 0, 0])], Some(false)),
            ("efivarfs not mounted", &[("sys/firmware/efi/systab", b"")], None),
        ];
        for (case, files, expected) in cases {
            let root = tempfile::tempdir().unwrap();
            for (path, content) in files {
                put(root.path(), path, content);
            }
            let boot = boot(&Sysfs::new(root.path()), Some("52:54:00:12:34:56"));
            assert_eq!((boot.current_boot_mode.as_str(), boot.secure_boot), ("uefi", expected), "{case}");
            assert_eq!(boot.pxe_interface.as_deref(), Some("52:54:00:12:34:56"), "{case}");
        }
    }

    #[test]
    fn cpu_frequency_prefers_cpufreq_max_and_sockets_fall_back_to_topology() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        put(r, "proc/cpuinfo", b"processor\t: 0\nmodel name\t: Neoverse\ncpu MHz\t\t: 1200.000\n\nprocessor\t: 1\n");
        for (cpu, package, khz) in [(0, "0", "2600000"), (1, "1", "3500000")] {
            put(r, &format!("sys/devices/system/cpu/cpu{cpu}/topology/physical_package_id"), package.as_bytes());
            put(r, &format!("sys/devices/system/cpu/cpu{cpu}/cpufreq/cpuinfo_max_freq"), khz.as_bytes());
        }
        fs::create_dir_all(r.join("sys/devices/system/cpu/cpufreq")).unwrap();
        let cpu = cpu(&Sysfs::new(r));
        assert_eq!(cpu.frequency.as_deref(), Some("3500.0000"));
        assert_eq!((cpu.count, cpu.socket_count), (2, 2));
        assert!(cpu.flags.is_empty());
    }
}
