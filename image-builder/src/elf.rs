//! Just enough ELF64 to read a kernel module's `.modinfo` section: the NUL-separated
//! `key=value` strings where modules declare, among others, the firmware files they load.

const SECTION_HEADER_SIZE: usize = 64;
const SHT_NOBITS: u32 = 8;

#[derive(Debug, thiserror::Error)]
#[error("malformed ELF file: {reason}")]
pub struct ElfError {
    reason: &'static str,
}

fn malformed(reason: &'static str) -> ElfError {
    ElfError { reason }
}

fn read_u16(bytes: &[u8], at: usize) -> Result<u16, ElfError> {
    let field = bytes.get(at..at + 2).ok_or_else(|| malformed("truncated"))?;
    Ok(u16::from_le_bytes([field[0], field[1]]))
}

fn read_u32(bytes: &[u8], at: usize) -> Result<u32, ElfError> {
    let field = bytes.get(at..at + 4).ok_or_else(|| malformed("truncated"))?;
    Ok(u32::from_le_bytes(field.try_into().expect("4 bytes")))
}

fn read_usize(bytes: &[u8], at: usize) -> Result<usize, ElfError> {
    let field = bytes.get(at..at + 8).ok_or_else(|| malformed("truncated"))?;
    usize::try_from(u64::from_le_bytes(field.try_into().expect("8 bytes"))).map_err(|_| malformed("offset too large"))
}

struct SectionHeader {
    name_offset: usize,
    kind: u32,
    offset: usize,
    size: usize,
}

fn section_header(elf: &[u8], table: usize, index: usize) -> Result<SectionHeader, ElfError> {
    let at = index.checked_mul(SECTION_HEADER_SIZE).and_then(|o| o.checked_add(table)).ok_or(malformed("overflow"))?;
    Ok(SectionHeader {
        name_offset: read_u32(elf, at)? as usize,
        kind: read_u32(elf, at + 4)?,
        offset: read_usize(elf, at + 24)?,
        size: read_usize(elf, at + 32)?,
    })
}

fn section_data<'a>(elf: &'a [u8], header: &SectionHeader) -> Result<&'a [u8], ElfError> {
    if header.kind == SHT_NOBITS {
        return Ok(&[]);
    }
    let end = header.offset.checked_add(header.size).ok_or(malformed("overflow"))?;
    elf.get(header.offset..end).ok_or(malformed("section beyond end of file"))
}

/// The content of the section called `name`, if the file has one.
pub fn section<'a>(elf: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, ElfError> {
    if elf.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return Err(malformed("not a little-endian 64-bit ELF file"));
    }
    let table = read_usize(elf, 0x28)?;
    let entry_size = read_u16(elf, 0x3a)? as usize;
    let count = read_u16(elf, 0x3c)? as usize;
    let names_index = read_u16(elf, 0x3e)? as usize;
    if count == 0 {
        return Ok(None);
    }
    if entry_size != SECTION_HEADER_SIZE || names_index >= count {
        return Err(malformed("unexpected section header table layout"));
    }
    let names = section_data(elf, &section_header(elf, table, names_index)?)?;
    for index in 0..count {
        let header = section_header(elf, table, index)?;
        let name_bytes = names.get(header.name_offset..).ok_or(malformed("section name out of range"))?;
        let end = name_bytes.iter().position(|&b| b == 0).ok_or(malformed("unterminated section name"))?;
        if &name_bytes[..end] == name.as_bytes() {
            return section_data(elf, &header).map(Some);
        }
    }
    Ok(None)
}

/// The values of every `key=value` entry for `key` in the module's `.modinfo` section.
pub fn modinfo_values(elf: &[u8], key: &str) -> Result<Vec<String>, ElfError> {
    let Some(modinfo) = section(elf, ".modinfo")? else {
        return Ok(Vec::new());
    };
    let prefix = format!("{key}=");
    Ok(modinfo
        .split(|&b| b == 0)
        .filter_map(|entry| std::str::from_utf8(entry).ok())
        .filter_map(|entry| entry.strip_prefix(&prefix))
        .map(str::to_string)
        .collect())
}

/// A minimal relocatable ELF64 holding only `.modinfo` and the section name table, the way a
/// kernel module stores its metadata; tests use it as a stand-in for real modules.
#[cfg(test)]
pub fn fake_module(modinfo: &[&str]) -> Vec<u8> {
    let mut info = Vec::new();
    for entry in modinfo {
        info.extend_from_slice(entry.as_bytes());
        info.push(0);
    }
    let names = b"\0.modinfo\0.shstrtab\0";
    let info_offset = 64;
    let names_offset = info_offset + info.len();
    let table_offset = (names_offset + names.len()).next_multiple_of(8);

    let mut elf = vec![0u8; 64];
    elf[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
    elf[16..18].copy_from_slice(&1u16.to_le_bytes()); // ET_REL
    elf[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    elf[20..24].copy_from_slice(&1u32.to_le_bytes());
    elf[0x28..0x30].copy_from_slice(&(table_offset as u64).to_le_bytes());
    elf[52..54].copy_from_slice(&64u16.to_le_bytes());
    elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
    elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
    elf[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
    elf.extend_from_slice(&info);
    elf.extend_from_slice(names);
    elf.resize(table_offset, 0);

    let mut header = |name: u32, kind: u32, offset: usize, size: usize| {
        let mut entry = [0u8; SECTION_HEADER_SIZE];
        entry[0..4].copy_from_slice(&name.to_le_bytes());
        entry[4..8].copy_from_slice(&kind.to_le_bytes());
        entry[24..32].copy_from_slice(&(offset as u64).to_le_bytes());
        entry[32..40].copy_from_slice(&(size as u64).to_le_bytes());
        entry[48..56].copy_from_slice(&1u64.to_le_bytes());
        elf.extend_from_slice(&entry);
    };
    header(0, 0, 0, 0);
    header(1, 1, info_offset, info.len()); // .modinfo, SHT_PROGBITS
    header(10, 3, names_offset, names.len()); // .shstrtab, SHT_STRTAB
    elf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_firmware_entries_from_fake_module() {
        let module = fake_module(&["license=GPL", "firmware=tigon/tg3.bin", "firmware=tigon/tg3_tso.bin"]);
        assert_eq!(modinfo_values(&module, "firmware").unwrap(), ["tigon/tg3.bin", "tigon/tg3_tso.bin"]);
        assert_eq!(modinfo_values(&module, "license").unwrap(), ["GPL"]);
        assert!(modinfo_values(&module, "depends").unwrap().is_empty());
        assert!(section(&module, ".text").unwrap().is_none());
    }

    #[test]
    fn agrees_with_modinfo_on_fake_module() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fake.ko");
        std::fs::write(&path, fake_module(&["firmware=a/b.bin", "firmware=c.fw"])).unwrap();
        let mut modinfo = std::process::Command::new("modinfo");
        modinfo.args(["-F", "firmware"]).arg(&path);
        let listed = ferric_runner::run("modinfo fake module", &mut modinfo).unwrap().stdout;
        assert_eq!(listed.lines().collect::<Vec<_>>(), ["a/b.bin", "c.fw"]);
    }

    #[test]
    fn rejects_non_elf_and_truncated_files() {
        assert!(section(b"hello world", ".modinfo").is_err());
        let module = fake_module(&["firmware=x"]);
        assert!(section(&module[..module.len() - 40], ".modinfo").is_err());
    }
}
