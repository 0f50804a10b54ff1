//! Disk identities from the SCSI VPD pages the kernel caches in sysfs (`vpd_pg80`, `vpd_pg83`,
//! `vpd_pg89`), decoded the way udev's `scsi_id` and `ata_id` decode them, so the values match what
//! IPA reads from udev (`ID_WWN`, `ID_WWN_WITH_EXTENSION`, `ID_WWN_VENDOR_EXTENSION`).

/// World wide name as udev reports it: lower-case hex with a `0x` prefix.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Wwn {
    /// The first 8 bytes of the NAA designator (`ID_WWN`).
    pub wwn: Option<String>,
    /// The whole designator (`ID_WWN_WITH_EXTENSION`).
    pub with_extension: Option<String>,
    /// Bytes 9-16 of an NAA 6 (IEEE Registered Extended) designator (`ID_WWN_VENDOR_EXTENSION`).
    pub vendor_extension: Option<String>,
}

/// NAA designator hex (16 or 32 digits) split as `scsi_id` does.
fn wwn_from_naa_hex(hex: &str) -> Option<Wwn> {
    let hex = hex.to_ascii_lowercase();
    if hex.len() < 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let (wwn, extension) = hex.split_at(16);
    let extension = &extension[..extension.len().min(16)];
    Some(Wwn {
        wwn: Some(format!("0x{wwn}")),
        with_extension: Some(format!("0x{wwn}{extension}")),
        vendor_extension: (!extension.is_empty()).then(|| format!("0x{extension}")),
    })
}

/// From the kernel's `wwid` attribute of a SCSI device (`naa.5000c500a1b2c3d4`), for kernels without
/// `vpd_pg83` in sysfs. Only NAA names are WWNs for udev: `eui.`, `t10.` and `name.` give none.
pub(crate) fn wwn_from_wwid(wwid: &str) -> Option<Wwn> {
    wwn_from_naa_hex(wwid.trim().strip_prefix("naa.")?)
}

/// One identification descriptor of VPD page 0x83.
struct Designator<'a> {
    ascii: bool,
    /// 0 = the logical unit; 1 = the target port; 2 = the target device.
    association: u8,
    kind: u8,
    value: &'a [u8],
}

const DESIGNATOR_NAA: u8 = 3;

fn designators(page: &[u8]) -> Vec<Designator<'_>> {
    let mut found = Vec::new();
    if page.len() < 4 || page[1] != 0x83 {
        return found;
    }
    let end = (4 + usize::from(u16::from_be_bytes([page[2], page[3]]))).min(page.len());
    let mut at = 4;
    while at + 4 <= end {
        let len = usize::from(page[at + 3]);
        let Some(value) = page.get(at + 4..at + 4 + len) else { break };
        found.push(Designator {
            ascii: page[at] & 0x0f == 2,
            association: (page[at + 1] >> 4) & 0x03,
            kind: page[at + 1] & 0x0f,
            value,
        });
        at += 4 + len;
    }
    found
}

/// The WWN `scsi_id` picks from VPD page 0x83: the first logical-unit NAA designator in its order
/// of preference (IEEE Registered Extended, IEEE Registered, IEEE Extended, then any NAA; binary
/// before ASCII for each).
pub(crate) fn wwn_from_page83(page: &[u8]) -> Option<Wwn> {
    let naa: Vec<(u8, bool, String)> = designators(page)
        .into_iter()
        .filter(|d| d.kind == DESIGNATOR_NAA && d.association == 0)
        .filter_map(|d| {
            let hex = if d.ascii { String::from_utf8(d.value.to_vec()).ok()? } else { hex::encode(d.value) };
            let naa_type = u8::from_str_radix(hex.get(..1)?, 16).ok()?;
            Some((naa_type, d.ascii, hex))
        })
        .collect();
    let preference = [(6, false), (6, true), (5, false), (5, true), (2, false), (2, true)];
    preference
        .iter()
        .find_map(|want| naa.iter().find(|(t, ascii, _)| (*t, *ascii) == *want))
        .or_else(|| naa.iter().find(|(_, ascii, _)| !ascii))
        .or_else(|| naa.first())
        .and_then(|(_, _, hex)| wwn_from_naa_hex(hex))
}

/// The unit serial number of VPD page 0x80, trimmed.
pub(crate) fn serial_from_page80(page: &[u8]) -> Option<String> {
    if page.len() < 4 || page[1] != 0x80 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([page[2], page[3]]));
    let serial = page.get(4..(4 + len).min(page.len()))?;
    let serial = String::from_utf8_lossy(serial);
    let serial = serial.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!serial.is_empty()).then(|| serial.to_owned())
}

/// The full ATA model (IDENTIFY DEVICE words 27-46) from VPD page 0x89 (ATA Information, which
/// libata fills with the IDENTIFY data at offset 60), as `ata_id` reports it in `ID_MODEL`; the
/// SCSI `model` attribute only holds its first 16 characters.
pub(crate) fn ata_model_from_page89(page: &[u8]) -> Option<String> {
    const IDENTIFY: usize = 60;
    if page.len() < 4 || page[1] != 0x89 {
        return None;
    }
    let words = page.get(IDENTIFY + 27 * 2..IDENTIFY + 47 * 2)?;
    // ATA strings are big-endian 16-bit words: swap each byte pair.
    let bytes: Vec<u8> = words.chunks_exact(2).flat_map(|pair| [pair[1], pair[0]]).collect();
    let model = String::from_utf8_lossy(&bytes);
    let model = model.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!model.is_empty()).then(|| model.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wwn(wwn: &str, with: &str, ext: Option<&str>) -> Option<Wwn> {
        Some(Wwn {
            wwn: Some(wwn.to_owned()),
            with_extension: Some(with.to_owned()),
            vendor_extension: ext.map(str::to_owned),
        })
    }

    /// A page 0x83 of `(code set, association << 4 | type, value)` descriptors.
    fn page83(descriptors: &[(u8, u8, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (code_set, piv_assoc_type, value) in descriptors {
            body.extend([*code_set, *piv_assoc_type, 0, value.len() as u8]);
            body.extend(*value);
        }
        let mut page = vec![0, 0x83];
        page.extend((body.len() as u16).to_be_bytes());
        page.extend(body);
        page
    }

    #[test]
    fn wwid_attribute_mapping() {
        let cases = [
            ("NAA 5 registered", "naa.5000c500a1b2c3d4", wwn("0x5000c500a1b2c3d4", "0x5000c500a1b2c3d4", None)),
            (
                "NAA 6 registered extended",
                "naa.600508b1001c4d8e9f0a1b2c3d4e5f60",
                wwn("0x600508b1001c4d8e", "0x600508b1001c4d8e9f0a1b2c3d4e5f60", Some("0x9f0a1b2c3d4e5f60")),
            ),
            ("upper-case hex", "naa.5000C500A1B2C3D4\n", wwn("0x5000c500a1b2c3d4", "0x5000c500a1b2c3d4", None)),
            ("EUI-64 is not a WWN for udev", "eui.0025385b71b2c3d4", None),
            ("T10 vendor id", "t10.ATA     QEMU HARDDISK   QM00001", None),
            ("too short", "naa.5000", None),
        ];
        for (case, wwid, expected) in cases {
            assert_eq!(wwn_from_wwid(wwid), expected, "{case}");
        }
    }

    #[test]
    fn page83_prefers_registered_extended_lun_designators() {
        let naa5 = [0x50, 0x00, 0xc5, 0x00, 0xa1, 0xb2, 0xc3, 0xd4];
        let naa6 = [0x60, 0x05, 0x08, 0xb1, 0, 0x1c, 0x4d, 0x8e, 0x9f, 0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f, 0x60];
        let port = [0x50, 0x01, 0x43, 0x80, 0x12, 0x34, 0x56, 0x78];
        let cases: [(&str, Vec<u8>, Option<Wwn>); 5] = [
            (
                "QEMU scsi-hd: vendor specific ASCII then NAA 5",
                page83(&[(2, 0x00, b"FERRIC-SCSI-1"), (1, 0x03, &naa5)]),
                wwn("0x5000c500a1b2c3d4", "0x5000c500a1b2c3d4", None),
            ),
            (
                "NAA 6 wins over an earlier NAA 5",
                page83(&[(1, 0x03, &naa5), (1, 0x03, &naa6)]),
                wwn("0x600508b1001c4d8e", "0x600508b1001c4d8e9f0a1b2c3d4e5f60", Some("0x9f0a1b2c3d4e5f60")),
            ),
            ("a target port NAA (association 1) is not the disk's", page83(&[(1, 0x93, &port)]), None),
            (
                "ASCII NAA",
                page83(&[(2, 0x03, b"5000C500A1B2C3D4")]),
                wwn("0x5000c500a1b2c3d4", "0x5000c500a1b2c3d4", None),
            ),
            (
                "libata without a WWN: serial and T10 ids only",
                page83(&[(2, 0x00, b"QM00001"), (2, 0x01, b"ATA     X")]),
                None,
            ),
        ];
        for (case, page, expected) in cases {
            assert_eq!(wwn_from_page83(&page), expected, "{case}");
        }
    }

    #[test]
    fn page83_survives_truncation() {
        let mut page = page83(&[(1, 0x03, &[0x50, 0, 0, 0, 0, 0, 0, 1])]);
        page.truncate(page.len() - 3);
        assert_eq!(wwn_from_page83(&page), None);
        assert_eq!(wwn_from_page83(&[]), None);
    }

    #[test]
    fn page80_serial() {
        let cases: [(&str, &[u8], Option<&str>); 4] = [
            ("QEMU scsi-hd", b"\x00\x80\x00\x0dFERRIC-SCSI-1", Some("FERRIC-SCSI-1")),
            ("libata pads with spaces", b"\x00\x80\x00\x14QM00001             ", Some("QM00001")),
            ("empty", b"\x00\x80\x00\x00", None),
            ("another page", b"\x00\x83\x00\x02ab", None),
        ];
        for (case, page, expected) in cases {
            assert_eq!(serial_from_page80(page).as_deref(), expected, "{case}");
        }
    }

    #[test]
    fn page89_model_is_byte_swapped_identify_data() {
        let mut page = vec![0u8; 572];
        page[1] = 0x89;
        let model = format!("{:<40}", "SAMSUNG MZ7LH480HAHQ-00005");
        for (i, pair) in model.as_bytes().chunks(2).enumerate() {
            page[60 + 54 + 2 * i] = pair[1];
            page[60 + 54 + 2 * i + 1] = pair[0];
        }
        assert_eq!(ata_model_from_page89(&page).as_deref(), Some("SAMSUNG MZ7LH480HAHQ-00005"));
        assert_eq!(ata_model_from_page89(&page[..100]), None, "truncated page");
    }
}
