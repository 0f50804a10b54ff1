//! ATA Security Erase through `hdparm`, as IPA does: the drive erases every user-addressable sector
//! itself (and, with the enhanced erase, reallocated ones too).

use std::path::Path;
use std::process::Command;

use ferric_runner::CommandError;

/// The temporary user password, IPA's too, so an operator (or IPA) can unlock a drive an interrupted
/// erase left locked. This agent skips a drive that has a password set; it does not unlock it.
pub const TEMPORARY_PASSWORD: &str = "NULL";

/// The "Security:" section of `hdparm -I`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Security {
    pub supported: bool,
    pub enabled: bool,
    pub locked: bool,
    pub frozen: bool,
    pub enhanced_erase: bool,
    /// The drive's estimates.
    pub erase_minutes: Option<u32>,
    pub enhanced_erase_minutes: Option<u32>,
}

/// Parses the "Security:" section of `hdparm -I` output: hdparm prints one line per bit of the security
/// status word, `\t<"not" or nothing>\t<name>`, then the erase time estimates. None without the section
/// (devices that do not report the feature set).
pub fn parse_security(identify: &str) -> Option<Security> {
    let mut lines = identify.lines().skip_while(|line| !line.starts_with("Security:"));
    lines.next()?;
    let mut security = Security::default();
    for line in lines.take_while(|line| line.starts_with(char::is_whitespace)) {
        let line = line.trim();
        let (set, name) = match line.strip_prefix("not") {
            Some(rest) if rest.starts_with(char::is_whitespace) => (false, rest.trim()),
            _ => (true, line),
        };
        match name {
            "supported" => security.supported = set,
            "enabled" => security.enabled = set,
            "locked" => security.locked = set,
            "frozen" => security.frozen = set,
            "supported: enhanced erase" => security.enhanced_erase = set,
            _ if name.contains("for SECURITY ERASE UNIT") || name.contains("for ENHANCED SECURITY ERASE UNIT") => {
                security.erase_minutes = minutes_before(name, "min for SECURITY ERASE UNIT");
                security.enhanced_erase_minutes = minutes_before(name, "min for ENHANCED SECURITY ERASE UNIT");
            }
            _ => {}
        }
    }
    Some(security)
}

/// The number just before `marker` in `text` ("2min for SECURITY ERASE UNIT").
fn minutes_before(text: &str, marker: &str) -> Option<u32> {
    let before = &text[..text.find(marker)?];
    let digits: String = before.chars().rev().take_while(char::is_ascii_digit).collect();
    digits.chars().rev().collect::<String>().parse().ok()
}

/// Which erase a drive in state `security` gets, or why none (IPA's preconditions).
pub fn erase_option(security: Option<&Security>) -> Result<&'static str, &'static str> {
    let Some(security) = security else {
        return Err("hdparm -I shows no security section");
    };
    if !security.supported {
        Err("the drive does not support the ATA security feature set")
    } else if security.frozen {
        Err("security is frozen (firmware freezes it at boot; a suspend/resume or hot-plug unfreezes it)")
    } else if security.enabled || security.locked {
        Err("a security password is already set")
    } else if security.enhanced_erase {
        Ok("--security-erase-enhanced")
    } else {
        Ok("--security-erase")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AtaError {
    #[error("running hdparm failed")]
    Hdparm(#[source] CommandError),
    #[error("setting the temporary password did not enable security")]
    PasswordNotSet,
    #[error("the erase command failed (disabling the temporary password {TEMPORARY_PASSWORD:?} was tried)")]
    Erase(#[source] CommandError),
    #[error("security is still enabled after the erase (user password {TEMPORARY_PASSWORD:?})")]
    StillEnabled,
}

/// What [`secure_erase`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Erased {
        enhanced: bool,
    },
    /// Not done, and why (the caller moves on to the next method).
    Unsupported(String),
}

/// The erase as reported in `ErasedDevice::method`.
pub fn method_name(enhanced: bool) -> &'static str {
    if enhanced {
        "ata secure erase (enhanced)"
    } else {
        "ata secure erase"
    }
}

/// Secure-erases `device`: checks the security state, sets the temporary password, erases (enhanced
/// when supported), checks that security is disabled again.
pub fn secure_erase(device: &Path) -> Result<Outcome, AtaError> {
    let security = match identify(device) {
        Ok(security) => security,
        Err(CommandError::Spawn { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Outcome::Unsupported("hdparm is not installed".into()));
        }
        Err(error) => return Ok(Outcome::Unsupported(super::chain(&error))),
    };
    let option = match erase_option(security.as_ref()) {
        Ok(option) => option,
        Err(reason) => return Ok(Outcome::Unsupported(reason.into())),
    };
    let estimate = security.and_then(|s| if s.enhanced_erase { s.enhanced_erase_minutes } else { s.erase_minutes });
    hdparm(
        "setting the temporary ATA password",
        device,
        &["--user-master", "u", "--security-set-pass", TEMPORARY_PASSWORD],
    )
    .map_err(AtaError::Hdparm)?;
    if !identify(device).map_err(AtaError::Hdparm)?.is_some_and(|s| s.enabled) {
        return Err(AtaError::PasswordNotSet);
    }
    tracing::info!(device = %device.display(), option, estimate_minutes = ?estimate, "ATA secure erase");
    if let Err(error) = hdparm("ATA secure erase", device, &["--user-master", "u", option, TEMPORARY_PASSWORD]) {
        let disable_args = ["--user-master", "u", "--security-disable", TEMPORARY_PASSWORD];
        let disable = hdparm("removing the temporary ATA password", device, &disable_args);
        if let Err(disable) = disable {
            tracing::error!(device = %device.display(), "removing the temporary password failed: {disable}");
        }
        return Err(AtaError::Erase(error));
    }
    if identify(device).map_err(AtaError::Hdparm)?.is_none_or(|s| s.enabled) {
        return Err(AtaError::StillEnabled);
    }
    Ok(Outcome::Erased { enhanced: option == "--security-erase-enhanced" })
}

fn identify(device: &Path) -> Result<Option<Security>, CommandError> {
    Ok(parse_security(&hdparm("hdparm -I", device, &["-I"])?.stdout))
}

fn hdparm(description: &str, device: &Path, args: &[&str]) -> Result<ferric_runner::Finished, CommandError> {
    let mut command = Command::new("hdparm");
    command.args(args).arg(device);
    ferric_runner::run(description, &mut command)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `hdparm -I` of a SATA SSD as the firmware leaves it after boot: security frozen.
    const SSD_FROZEN: &str = "
/dev/sda:

ATA device, with non-removable media
\tModel Number:       Samsung SSD 860 EVO 500GB               
\tSerial Number:      S3Z2NB0K123456A     
\tFirmware Revision:  RVT02B6Q
\tTransport:          Serial, ATA8-AST, SATA 1.0a, SATA II Extensions, SATA Rev 2.5, SATA Rev 2.6, SATA Rev 3.0
Standards:
\tUsed: unknown (minor revision code 0x005e) 
\tSupported: 11 8 7 6 5 
Configuration:
\tLogical Sector size:                   512 bytes
\tdevice size with M = 1000*1000:      500107 MBytes (500 GB)
\tNominal Media Rotation Rate: Solid State Device
Commands/features:
\tEnabled\tSupported:
\t   *\tSMART feature set
\t    \tSecurity Mode feature set
\t   *\tPower Management feature set
Security: 
\tMaster password revision code = 65534
\t\tsupported
\tnot\tenabled
\tnot\tlocked
\t\tfrozen
\tnot\texpired: security count
\t\tsupported: enhanced erase
\t2min for SECURITY ERASE UNIT. 8min for ENHANCED SECURITY ERASE UNIT.
Logical Unit WWN Device Identifier: 5002538e40a1b2c3
\tNAA\t\t: 5
\tIEEE OUI\t: 002538
Checksum: correct
";

    /// A hard disk after a suspend/resume cycle: not frozen, no enhanced erase, long estimate.
    const HDD_READY: &str = "
/dev/sdb:

ATA device, with non-removable media
\tModel Number:       WDC WD40EFRX-68N32N0
\tSerial Number:      WD-WCC7K1234567
Commands/features:
\tEnabled\tSupported:
\t    \tSecurity Mode feature set
Security: 
\tMaster password revision code = 65534
\t\tsupported
\tnot\tenabled
\tnot\tlocked
\tnot\tfrozen
\tnot\texpired: security count
\tnot\tsupported: enhanced erase
\t508min for SECURITY ERASE UNIT. 
Logical Unit WWN Device Identifier: 50014ee2b1234567
Checksum: correct
";

    /// After an interrupted erase and a power cycle: a password is set and the drive is locked.
    const LOCKED: &str = "
/dev/sdc:
Security: 
\tMaster password revision code = 65534
\t\tsupported
\t\tenabled
\t\tlocked
\tnot\tfrozen
\tnot\texpired: security count
\t\tsupported: enhanced erase
\tSecurity level high
\t60min for SECURITY ERASE UNIT. 60min for ENHANCED SECURITY ERASE UNIT.
Checksum: correct
";

    /// A drive without the security feature set (hdparm still prints the section header).
    const UNSUPPORTED: &str = "
/dev/sdd:
Security: 
\tnot\tsupported
\tnot\tenabled
\tnot\tlocked
\tnot\tfrozen
\tnot\texpired: security count
\tnot\tsupported: enhanced erase
Checksum: correct
";

    /// QEMU's ide-hd: no security words at all, no section.
    const NO_SECTION: &str = "
/dev/sde:

ATA device, with non-removable media
\tModel Number:       QEMU HARDDISK
\tSerial Number:      QM00001
Commands/features:
\tEnabled\tSupported:
\t   *\tSMART feature set
Checksum: correct
";

    fn security(supported: bool, enabled: bool, locked: bool, frozen: bool, enhanced: bool) -> Security {
        Security { supported, enabled, locked, frozen, enhanced_erase: enhanced, ..Security::default() }
    }

    #[test]
    fn parses_hdparm_security_sections() {
        let cases = [
            (
                "SSD frozen at boot",
                SSD_FROZEN,
                Some(Security {
                    erase_minutes: Some(2),
                    enhanced_erase_minutes: Some(8),
                    ..security(true, false, false, true, true)
                }),
            ),
            (
                "HDD ready",
                HDD_READY,
                Some(Security { erase_minutes: Some(508), ..security(true, false, false, false, false) }),
            ),
            (
                "locked",
                LOCKED,
                Some(Security {
                    erase_minutes: Some(60),
                    enhanced_erase_minutes: Some(60),
                    ..security(true, true, true, false, true)
                }),
            ),
            ("unsupported", UNSUPPORTED, Some(security(false, false, false, false, false))),
            ("no section", NO_SECTION, None),
        ];
        for (name, output, expected) in cases {
            assert_eq!(parse_security(output), expected, "{name}");
        }
    }

    #[test]
    fn erase_option_follows_ipa_preconditions() {
        let cases = [
            ("SSD frozen at boot", SSD_FROZEN, Err("frozen")),
            ("HDD ready", HDD_READY, Ok("--security-erase")),
            ("locked", LOCKED, Err("password is already set")),
            ("unsupported", UNSUPPORTED, Err("does not support")),
            ("no section", NO_SECTION, Err("no security section")),
        ];
        for (name, output, expected) in cases {
            match (erase_option(parse_security(output).as_ref()), expected) {
                (Ok(option), Ok(wanted)) => assert_eq!(option, wanted, "{name}"),
                (Err(reason), Err(wanted)) => assert!(reason.contains(wanted), "{name}: {reason}"),
                (got, _) => panic!("{name}: got {got:?}, expected {expected:?}"),
            }
        }
        let ready_ssd = security(true, false, false, false, true);
        assert_eq!(erase_option(Some(&ready_ssd)), Ok("--security-erase-enhanced"));
    }

    #[test]
    fn a_device_hdparm_cannot_identify_is_unsupported_not_an_error() {
        // hdparm exists here; a regular file is no ATA device, so `hdparm -I` fails: the next method runs.
        let file = tempfile::NamedTempFile::new().unwrap();
        match secure_erase(file.path()).unwrap() {
            Outcome::Unsupported(reason) => assert!(reason.contains("hdparm -I"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
}
