//! iPXE scripts, as pure functions of what they say (checked against golden files).

/// Firmware interface a node boots with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootMode {
    Uefi,
    Bios,
}

impl BootMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BootMode::Uefi => "uefi",
            BootMode::Bios => "bios",
        }
    }

    pub fn parse(text: &str) -> Option<BootMode> {
        match text.trim().to_ascii_lowercase().as_str() {
            "uefi" => Some(BootMode::Uefi),
            "bios" => Some(BootMode::Bios),
            _ => None,
        }
    }
}

/// Seconds between attempts when a download fails.
const RETRY_DELAY_SECS: u32 = 5;
/// Seconds an unknown machine shows its message before leaving iPXE.
const UNKNOWN_MAC_DELAY_SECS: u32 = 10;

/// A script the controller serves to iPXE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootScript {
    /// `/boot.ipxe`: fetch the per-MAC script, retrying until the controller answers.
    Chain { public_url: String },
    /// Boot the Ferric ramdisk, passing the controller URL and the boot NIC to the agent.
    Ramdisk {
        public_url: String,
        node_uuid: String,
        state: String,
        /// Normalised MAC (`aa:bb:cc:dd:ee:ff`).
        mac: String,
        boot_mode: BootMode,
        kernel_args: String,
    },
    /// Leave iPXE so the machine boots from its disk.
    LocalBoot { node_uuid: String, state: String, boot_mode: BootMode },
    /// No port has this MAC: say so and leave iPXE.
    UnknownMac { mac: String },
}

impl BootScript {
    pub fn render(&self) -> String {
        let body = match self {
            BootScript::Chain { public_url } => format!(
                "# Ferric: fetch this machine's boot script, named by the MAC address iPXE booted from.\n\
                 :fetch\n\
                 chain --autofree {public_url}/ipxe/${{mac:hexhyp}} || goto retry\n\
                 # The machine's script returned (local boot): hand back to the firmware's next boot option.\n\
                 exit\n\
                 :retry\n\
                 echo Ferric: fetching {public_url}/ipxe/${{mac:hexhyp}} failed, retrying in {RETRY_DELAY_SECS} seconds\n\
                 sleep {RETRY_DELAY_SECS}\n\
                 goto fetch\n"
            ),
            BootScript::Ramdisk { public_url, node_uuid, state, mac, boot_mode, kernel_args } => {
                let mut args = vec![
                    format!("{}={public_url}", ferric_protocol::CMDLINE_API_URL),
                    format!("{}=01-{}", ferric_protocol::CMDLINE_BOOTIF, mac.replace(':', "-")),
                ];
                args.extend(kernel_args.split_whitespace().map(str::to_owned));
                if *boot_mode == BootMode::Uefi {
                    // An EFI-stub kernel only finds the initramfs iPXE loaded when named on its command line.
                    args.push("initrd=initramfs".to_owned());
                }
                format!(
                    "echo Ferric: node {node_uuid} is {state}: booting the ramdisk ({mode})\n\
                     :load\n\
                     imgfree\n\
                     kernel --name vmlinuz {public_url}/ramdisk/vmlinuz {args} || goto retry\n\
                     initrd --name initramfs {public_url}/ramdisk/initramfs || goto retry\n\
                     boot || goto retry\n\
                     :retry\n\
                     echo Ferric: loading the ramdisk failed, retrying in {RETRY_DELAY_SECS} seconds\n\
                     sleep {RETRY_DELAY_SECS}\n\
                     goto load\n",
                    mode = boot_mode.as_str(),
                    args = args.join(" "),
                )
            }
            BootScript::LocalBoot { node_uuid, state, boot_mode } => {
                let why = if state == "active" { "booting from the local disk" } else { "nothing to do" };
                let leave = match boot_mode {
                    // Leaving iPXE makes UEFI firmware try its next boot option: the disk.
                    BootMode::Uefi => "exit",
                    BootMode::Bios => "sanboot --no-describe --drive 0x80",
                };
                format!("echo Ferric: node {node_uuid} is {state}: {why}\n{leave}\n")
            }
            BootScript::UnknownMac { mac } => format!(
                "echo Ferric: no node is enrolled with MAC {mac}\n\
                 sleep {UNKNOWN_MAC_DELAY_SECS}\n\
                 exit\n"
            ),
        };
        format!("#!ipxe\n{body}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_modes_parse_case_insensitively() {
        assert_eq!(BootMode::parse("UEFI"), Some(BootMode::Uefi));
        assert_eq!(BootMode::parse("bios"), Some(BootMode::Bios));
        assert_eq!(BootMode::parse("legacy"), None);
    }

    #[test]
    fn only_uefi_names_the_initrd_on_the_kernel_line() {
        let script = |boot_mode| {
            BootScript::Ramdisk {
                public_url: "http://h".into(),
                node_uuid: "u".into(),
                state: "wait call-back".into(),
                mac: "52:54:00:12:34:56".into(),
                boot_mode,
                kernel_args: "  console=ttyS0  ".into(),
            }
            .render()
        };
        let uefi = script(BootMode::Uefi);
        let kernel_line = uefi.lines().find(|line| line.starts_with("kernel")).unwrap();
        assert!(kernel_line.contains("BOOTIF=01-52-54-00-12-34-56 console=ttyS0 initrd=initramfs ||"), "{kernel_line}");
        assert!(!script(BootMode::Bios).contains("initrd=initramfs"));
    }
}
