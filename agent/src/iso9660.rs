//! A minimal ISO 9660 writer with Joliet names, for config drives: the agent builds the
//! `config-2` volume itself instead of carrying genisoimage in the ramdisk.
//!
//! The image has two directory trees over the same file data: the primary one with ISO 9660
//! level 1 names (upper-case 8.3, for readers without Joliet) and a Joliet one with the exact
//! names (`meta_data.json`, `2012-08-10`), which Linux uses by default. The output depends only
//! on the input: every timestamp is the same fixed date.

use std::collections::{BTreeMap, HashSet, VecDeque};

/// ISO 9660 logical sector (and block) size.
pub const SECTOR: usize = 2048;
/// Where the volume descriptors start: sectors 0..16 are the system area.
const FIRST_DESCRIPTOR_SECTOR: usize = 16;
/// Byte offset of the standard identifier `CD001` in the first volume descriptor.
pub const MAGIC_OFFSET: usize = FIRST_DESCRIPTOR_SECTOR * SECTOR + 1;
pub const MAGIC: &[u8; 5] = b"CD001";
/// Every timestamp: 1980-01-01 00:00:00 UTC, so equal inputs give equal images.
const RECORD_DATE: [u8; 7] = [80, 1, 1, 0, 0, 0, 0];
const DESCRIPTOR_DATE: &[u8; 16] = b"1980010100000000";
/// Joliet's escape sequence for UCS-2 level 3.
const JOLIET_ESCAPE: &[u8; 3] = b"%/E";
/// Identifier lengths: level 1 names are 8.3; Joliet allows 64 UCS-2 characters.
const LEVEL1_BASE: usize = 8;
const LEVEL1_EXTENSION: usize = 3;
const JOLIET_CHARS: usize = 64;
const FLAG_DIRECTORY: u8 = 0x02;

/// Builds an ISO 9660 image holding `files` (paths like `openstack/latest/meta_data.json`,
/// directories implied). A later entry with the same path replaces an earlier one; a file
/// whose path is also a directory of another entry is left out.
pub fn build(volume_id: &str, files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let tree = Tree::from_paths(files);
    let views = [View::new(&tree, Flavour::Primary), View::new(&tree, Flavour::Joliet)];

    // Layout: descriptors (primary, Joliet, terminator), the four path tables, the directories
    // of both views, then the file data shared by both.
    let mut next_sector = FIRST_DESCRIPTOR_SECTOR + 3;
    let mut allocate = |bytes: usize| {
        let start = next_sector;
        next_sector += bytes.div_ceil(SECTOR);
        start as u32
    };
    let path_tables: Vec<[u32; 2]> =
        views.iter().map(|view| [allocate(view.path_table_len()), allocate(view.path_table_len())]).collect();
    let directory_sectors: Vec<Vec<u32>> = views
        .iter()
        .map(|view| view.path_order.iter().map(|dir| allocate(view.directory_len(*dir))).collect())
        .collect();
    let mut file_sectors = vec![0; tree.contents.len()];
    for (index, data) in tree.contents.iter().enumerate() {
        // An empty file takes no sector; it points where the next data starts, as genisoimage does.
        file_sectors[index] = allocate(data.len());
    }
    let total_sectors = next_sector;

    let mut image = vec![0u8; total_sectors * SECTOR];
    for (index, view) in views.iter().enumerate() {
        let located = Located { view, dir_sectors: &directory_sectors[index], file_sectors: &file_sectors };
        let [little, big] = path_tables[index];
        let table_len = view.path_table_len();
        for (sector, big_endian) in [(little, false), (big, true)] {
            let start = sector as usize * SECTOR;
            image[start..start + table_len].copy_from_slice(&located.path_table(big_endian));
        }
        for (position, dir) in view.path_order.iter().enumerate() {
            let start = directory_sectors[index][position] as usize * SECTOR;
            let extent = located.directory_extent(*dir);
            image[start..start + extent.len()].copy_from_slice(&extent);
        }
        let descriptor = located.volume_descriptor(volume_id, total_sectors as u32, path_tables[index]);
        let start = (FIRST_DESCRIPTOR_SECTOR + index) * SECTOR;
        image[start..start + SECTOR].copy_from_slice(&descriptor);
    }
    let terminator = (FIRST_DESCRIPTOR_SECTOR + 2) * SECTOR;
    image[terminator] = 255;
    image[terminator + 1..terminator + 6].copy_from_slice(MAGIC);
    image[terminator + 6] = 1;
    for (index, data) in tree.contents.iter().enumerate() {
        let start = file_sectors[index] as usize * SECTOR;
        image[start..start + data.len()].copy_from_slice(data);
    }
    image
}

/// The directory hierarchy, independent of how names are encoded. Index 0 is the root.
struct Tree<'a> {
    dirs: Vec<Dir>,
    contents: Vec<&'a [u8]>,
}

struct Dir {
    parent: usize,
    subdirs: BTreeMap<String, usize>,
    /// File name → index in [`Tree::contents`].
    files: BTreeMap<String, usize>,
}

impl<'a> Tree<'a> {
    fn from_paths(files: &'a [(String, Vec<u8>)]) -> Tree<'a> {
        let root = Dir { parent: 0, subdirs: BTreeMap::new(), files: BTreeMap::new() };
        let mut tree = Tree { dirs: vec![root], contents: Vec::new() };
        // Directories first, so that a file never shadows a directory of the same path.
        for (path, _) in files {
            let components: Vec<&str> = path.split('/').filter(|part| !part.is_empty()).collect();
            if let Some((_, parents)) = components.split_last() {
                tree.directory(parents);
            }
        }
        for (path, data) in files {
            let components: Vec<&str> = path.split('/').filter(|part| !part.is_empty()).collect();
            let Some((name, parents)) = components.split_last() else { continue };
            let dir = tree.directory(parents);
            if tree.dirs[dir].subdirs.contains_key(*name) {
                continue;
            }
            match tree.dirs[dir].files.get(*name) {
                Some(index) => tree.contents[*index] = data,
                None => {
                    tree.dirs[dir].files.insert((*name).to_owned(), tree.contents.len());
                    tree.contents.push(data);
                }
            }
        }
        tree
    }

    /// The directory at `components`, created with its parents when missing.
    fn directory(&mut self, components: &[&str]) -> usize {
        let mut current = 0;
        for component in components {
            current = match self.dirs[current].subdirs.get(*component) {
                Some(existing) => *existing,
                None => {
                    let index = self.dirs.len();
                    self.dirs.push(Dir { parent: current, subdirs: BTreeMap::new(), files: BTreeMap::new() });
                    self.dirs[current].subdirs.insert((*component).to_owned(), index);
                    index
                }
            };
        }
        current
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavour {
    /// ISO 9660 level 1: `META_DAT.JSO;1`.
    Primary,
    /// Joliet: UCS-2 big-endian, the exact name.
    Joliet,
}

#[derive(Debug, Clone, Copy)]
enum Entry {
    Dir(usize),
    File(usize),
}

/// One directory tree as encoded by a flavour: identifiers, their order, and directory numbering.
struct View<'t, 'a> {
    tree: &'t Tree<'a>,
    flavour: Flavour,
    /// Per directory: its records, sorted by identifier as ISO 9660 requires.
    records: Vec<Vec<(Vec<u8>, Entry)>>,
    /// Per directory: its identifier in its parent (the root's is `\0`).
    dir_identifiers: Vec<Vec<u8>>,
    /// Directories in path-table order (breadth first, siblings by identifier); a directory's
    /// number is its position + 1.
    path_order: Vec<usize>,
}

impl<'t, 'a> View<'t, 'a> {
    fn new(tree: &'t Tree<'a>, flavour: Flavour) -> View<'t, 'a> {
        let mut records = Vec::with_capacity(tree.dirs.len());
        let mut dir_identifiers = vec![vec![0u8]; tree.dirs.len()];
        for dir in &tree.dirs {
            let mut used = HashSet::new();
            let mut entries = Vec::new();
            let named = dir
                .subdirs
                .iter()
                .map(|(name, index)| (name, Entry::Dir(*index)))
                .chain(dir.files.iter().map(|(name, index)| (name, Entry::File(*index))));
            for (name, entry) in named {
                let is_dir = matches!(entry, Entry::Dir(_));
                let identifier = (0..)
                    .map(|attempt| identifier(flavour, name, is_dir, attempt))
                    .find(|candidate| !used.contains(candidate))
                    .expect("numbered candidates are unbounded");
                used.insert(identifier.clone());
                if let Entry::Dir(index) = entry {
                    dir_identifiers[index] = identifier.clone();
                }
                entries.push((identifier, entry));
            }
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            records.push(entries);
        }
        let mut path_order = Vec::with_capacity(tree.dirs.len());
        let mut queue = VecDeque::from([0usize]);
        while let Some(dir) = queue.pop_front() {
            path_order.push(dir);
            queue.extend(records[dir].iter().filter_map(|(_, entry)| match entry {
                Entry::Dir(index) => Some(*index),
                Entry::File(_) => None,
            }));
        }
        View { tree, flavour, records, dir_identifiers, path_order }
    }

    fn path_table_len(&self) -> usize {
        self.path_order.iter().map(|dir| path_record_len(&self.dir_identifiers[*dir])).sum()
    }

    /// Bytes of a directory's extent: whole sectors, as records never cross a sector boundary.
    fn directory_len(&self, dir: usize) -> usize {
        let lengths = self.record_lengths(dir);
        let end = lengths.fold(0, |position, len| record_position(position, len) + len);
        end.div_ceil(SECTOR) * SECTOR
    }

    fn record_lengths(&self, dir: usize) -> impl Iterator<Item = usize> + '_ {
        let dots = [directory_record_len(1), directory_record_len(1)];
        dots.into_iter().chain(self.records[dir].iter().map(|(identifier, _)| directory_record_len(identifier.len())))
    }
}

/// A view with its sectors assigned, able to write its structures.
struct Located<'v, 't, 'a> {
    view: &'v View<'t, 'a>,
    /// Sector of each directory, in path-table order.
    dir_sectors: &'v [u32],
    file_sectors: &'v [u32],
}

impl Located<'_, '_, '_> {
    fn dir_sector(&self, dir: usize) -> u32 {
        let position = self.view.path_order.iter().position(|candidate| *candidate == dir).expect("every dir numbered");
        self.dir_sectors[position]
    }

    fn dir_record(&self, dir: usize, identifier: &[u8]) -> Vec<u8> {
        directory_record(identifier, self.dir_sector(dir), self.view.directory_len(dir) as u32, FLAG_DIRECTORY)
    }

    fn directory_extent(&self, dir: usize) -> Vec<u8> {
        let tree = self.view.tree;
        let mut records = vec![self.dir_record(dir, &[0]), self.dir_record(tree.dirs[dir].parent, &[1])];
        for (identifier, entry) in &self.view.records[dir] {
            records.push(match entry {
                Entry::Dir(index) => self.dir_record(*index, identifier),
                Entry::File(index) => {
                    let len = tree.contents[*index].len() as u32;
                    directory_record(identifier, self.file_sectors[*index], len, 0)
                }
            });
        }
        let mut extent = vec![0u8; self.view.directory_len(dir)];
        let mut position = 0;
        for record in records {
            position = record_position(position, record.len());
            extent[position..position + record.len()].copy_from_slice(&record);
            position += record.len();
        }
        extent
    }

    fn path_table(&self, big_endian: bool) -> Vec<u8> {
        let mut table = Vec::with_capacity(self.view.path_table_len());
        for (position, dir) in self.view.path_order.iter().enumerate() {
            let identifier = &self.view.dir_identifiers[*dir];
            let parent = self.view.tree.dirs[*dir].parent;
            let parent_number = self.view.path_order.iter().position(|candidate| *candidate == parent).unwrap_or(0) + 1;
            let (sector, parent_number) = (self.dir_sectors[position], parent_number as u16);
            table.push(identifier.len() as u8);
            table.push(0);
            if big_endian {
                table.extend_from_slice(&sector.to_be_bytes());
                table.extend_from_slice(&parent_number.to_be_bytes());
            } else {
                table.extend_from_slice(&sector.to_le_bytes());
                table.extend_from_slice(&parent_number.to_le_bytes());
            }
            table.extend_from_slice(identifier);
            if identifier.len() % 2 == 1 {
                table.push(0);
            }
        }
        table
    }

    /// The primary (type 1) or Joliet supplementary (type 2) volume descriptor.
    fn volume_descriptor(&self, volume_id: &str, total_sectors: u32, path_tables: [u32; 2]) -> Vec<u8> {
        let joliet = self.view.flavour == Flavour::Joliet;
        let mut sector = vec![0u8; SECTOR];
        sector[0] = if joliet { 2 } else { 1 };
        sector[1..6].copy_from_slice(MAGIC);
        sector[6] = 1;
        let text = |field: &mut [u8], value: &str| {
            if joliet {
                fill_ucs2(field, value)
            } else {
                fill_ascii(field, value)
            }
        };
        text(&mut sector[8..40], "LINUX");
        text(&mut sector[40..72], volume_id);
        sector[80..88].copy_from_slice(&both_u32(total_sectors));
        if joliet {
            sector[88..91].copy_from_slice(JOLIET_ESCAPE);
        }
        sector[120..124].copy_from_slice(&both_u16(1));
        sector[124..128].copy_from_slice(&both_u16(1));
        sector[128..132].copy_from_slice(&both_u16(SECTOR as u16));
        sector[132..140].copy_from_slice(&both_u32(self.view.path_table_len() as u32));
        sector[140..144].copy_from_slice(&path_tables[0].to_le_bytes());
        sector[148..152].copy_from_slice(&path_tables[1].to_be_bytes());
        sector[156..190].copy_from_slice(&self.dir_record(0, &[0]));
        for field in [190..318, 318..446, 446..574, 574..702, 702..739, 739..776, 776..813] {
            text(&mut sector[field], "");
        }
        text(&mut sector[574..702], "FERRIC");
        for field in [813..829, 830..846] {
            sector[field].copy_from_slice(DESCRIPTOR_DATE);
        }
        // Expiration and effective dates "not specified": digits zero, offset zero.
        for field in [847..863, 864..880] {
            sector[field].fill(b'0');
        }
        sector[881] = 1;
        sector
    }
}

/// The identifier of `name` in `flavour`; `attempt` > 0 numbers it to avoid a clash with a
/// sibling whose name encodes the same way.
fn identifier(flavour: Flavour, name: &str, is_dir: bool, attempt: u32) -> Vec<u8> {
    let suffix = if attempt == 0 { String::new() } else { attempt.to_string() };
    match flavour {
        Flavour::Primary => {
            let d_chars = |text: &str| -> String {
                text.chars()
                    .map(|c| c.to_ascii_uppercase())
                    .map(|c| if c.is_ascii_uppercase() || c.is_ascii_digit() { c } else { '_' })
                    .collect()
            };
            let (base, extension) = match name.rsplit_once('.') {
                Some((base, extension)) if !is_dir => (d_chars(base), d_chars(extension)),
                _ => (d_chars(name), String::new()),
            };
            let base = if base.is_empty() { "_".to_owned() } else { base };
            let keep = LEVEL1_BASE.saturating_sub(suffix.len());
            let base: String = base.chars().take(keep).chain(suffix.chars()).collect();
            let text = if is_dir {
                base
            } else {
                let extension: String = extension.chars().take(LEVEL1_EXTENSION).collect();
                format!("{base}.{extension};1")
            };
            text.into_bytes()
        }
        Flavour::Joliet => {
            // No `;1` version, as genisoimage writes Joliet names.
            let suffix = if attempt == 0 { String::new() } else { format!("~{suffix}") };
            let keep = JOLIET_CHARS - suffix.len();
            let chars = name.chars().map(joliet_char).take(keep).chain(suffix.chars());
            chars.flat_map(|c| (c as u16).to_be_bytes()).collect()
        }
    }
}

/// Joliet forbids control characters and `* / : ; ? \`, and UCS-2 has no characters beyond the BMP.
fn joliet_char(c: char) -> char {
    let forbidden = c < ' ' || matches!(c, '*' | '/' | ':' | ';' | '?' | '\\') || c as u32 > 0xFFFF;
    if forbidden {
        '_'
    } else {
        c
    }
}

/// Where a record of `len` bytes goes when the extent has `position` bytes: in the next sector
/// if it would cross a sector boundary.
fn record_position(position: usize, len: usize) -> usize {
    if position % SECTOR + len > SECTOR {
        position.div_ceil(SECTOR) * SECTOR
    } else {
        position
    }
}

fn directory_record_len(identifier_len: usize) -> usize {
    33 + identifier_len + (identifier_len + 1) % 2
}

fn path_record_len(identifier: &[u8]) -> usize {
    8 + identifier.len() + identifier.len() % 2
}

fn directory_record(identifier: &[u8], sector: u32, len: u32, flags: u8) -> Vec<u8> {
    let mut record = vec![0u8; directory_record_len(identifier.len())];
    record[0] = record.len() as u8;
    record[2..10].copy_from_slice(&both_u32(sector));
    record[10..18].copy_from_slice(&both_u32(len));
    record[18..25].copy_from_slice(&RECORD_DATE);
    record[25] = flags;
    record[28..32].copy_from_slice(&both_u16(1));
    record[32] = identifier.len() as u8;
    record[33..33 + identifier.len()].copy_from_slice(identifier);
    record
}

/// ISO 9660's "both-byte order": little-endian then big-endian.
fn both_u32(value: u32) -> [u8; 8] {
    let mut bytes = [0u8; 8];
    bytes[..4].copy_from_slice(&value.to_le_bytes());
    bytes[4..].copy_from_slice(&value.to_be_bytes());
    bytes
}

fn both_u16(value: u16) -> [u8; 4] {
    let mut bytes = [0u8; 4];
    bytes[..2].copy_from_slice(&value.to_le_bytes());
    bytes[2..].copy_from_slice(&value.to_be_bytes());
    bytes
}

/// Space-padded ASCII, truncated to the field.
fn fill_ascii(field: &mut [u8], value: &str) {
    field.fill(b' ');
    for (slot, byte) in field.iter_mut().zip(value.bytes()) {
        *slot = byte;
    }
}

/// Space-padded UCS-2 big-endian, truncated to the field.
fn fill_ucs2(field: &mut [u8], value: &str) {
    let units: Vec<u16> = value.chars().map(joliet_char).map(|c| c as u16).collect();
    for (index, pair) in field.chunks_exact_mut(2).enumerate() {
        pair.copy_from_slice(&units.get(index).copied().unwrap_or(0x20).to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// Bytes that differ at every offset class, so a misplaced extent shows.
    fn pattern(len: usize, seed: u32) -> Vec<u8> {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (state >> 16) as u8
            })
            .collect()
    }

    fn sample_files() -> Vec<(String, Vec<u8>)> {
        vec![
            ("openstack/latest/meta_data.json".into(), br#"{"uuid": "x"}"#.to_vec()),
            ("openstack/latest/user_data".into(), vec![]),
            ("openstack/2012-08-10/meta_data.json".into(), b"1".to_vec()),
            ("openstack/2012-08-10/network_data.json".into(), pattern(2048, 1)),
            ("openstack/content/0000".into(), pattern(3 << 20, 2)),
            ("ec2/latest/deeper/still/a.txt".into(), pattern(2049, 3)),
            ("top-level.file".into(), pattern(2047, 4)),
        ]
    }

    fn run(description: &str, command: &mut Command) -> String {
        ferric_runner::run(description, command).unwrap().stdout
    }

    #[test]
    fn linux_mounts_the_exact_names_through_joliet_and_level1_names_without() {
        let sample = sample_files();
        let level1 = vec![
            ("openstack/2012-08-10/meta_data.json".to_owned(), b"a".to_vec()),
            ("openstack/2012-08-10/meta_data.jsonl".to_owned(), b"b".to_vec()),
            ("openstack/2012-08-10/user_data".to_owned(), b"c".to_vec()),
            ("openstack/latest/vendor_data2.json".to_owned(), pattern(5000, 5)),
        ];
        let replaced = vec![
            ("a/b".to_owned(), b"file shadowed by the directory".to_vec()),
            ("a/b/c".to_owned(), b"old".to_vec()),
            ("a/b/c".to_owned(), b"new".to_vec()),
        ];
        let dir = tempfile::tempdir().unwrap();
        let images: Vec<PathBuf> = [&sample, &level1, &replaced, &vec![]]
            .iter()
            .enumerate()
            .map(|(index, files)| {
                let path = dir.path().join(format!("{index}.iso"));
                std::fs::write(&path, build("config-2", files)).unwrap();
                path
            })
            .collect();
        let mounts =
            [("vda", "", "sample"), ("vdb", ",nojoliet", "level1"), ("vdc", "", "replaced"), ("vdd", "", "empty")];
        let script: Vec<String> = mounts
            .iter()
            .map(|(disk, options, tag)| {
                let listing = linux_check::list_tree(&format!("/mnt/{tag}"), tag);
                format!("mkdir /mnt/{tag} && mount -t iso9660 -o ro{options} /dev/{disk} /mnt/{tag} && {listing}")
            })
            .collect();
        let disks: Vec<&Path> = images.iter().map(PathBuf::as_path).collect();
        let output = linux_check::run(&disks, &script.join("\n"));
        let mut expected = linux_check::expected_listing("sample", &sample);
        // Without Joliet, Linux shows level 1 names in lower case, without `;1` nor a bare final dot;
        // the second `meta_data.json*` is numbered to stay distinct.
        let level1_seen: Vec<(String, Vec<u8>)> = [
            ("openstac/2012_08_/meta_dat.jso", b"a".to_vec()),
            ("openstac/2012_08_/meta_da1.jso", b"b".to_vec()),
            ("openstac/2012_08_/user_dat", b"c".to_vec()),
            ("openstac/latest/vendor_d.jso", pattern(5000, 5)),
        ]
        .into_iter()
        .map(|(path, data)| (path.to_owned(), data))
        .collect();
        expected.extend(linux_check::expected_listing("level1", &level1_seen));
        expected.extend(linux_check::expected_listing("replaced", &[("a/b/c".to_owned(), b"new".to_vec())]));
        let seen: Vec<&str> = output.lines().collect();
        assert_eq!(seen, expected, "full output:\n{output}");
    }

    #[test]
    fn isoinfo_reads_the_descriptors_path_tables_and_joliet_listing() {
        let files = sample_files();
        let iso = build("config-2", &files);
        let image = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(image.path(), &iso).unwrap();
        let descriptors = run("isoinfo -d", Command::new("isoinfo").arg("-d").arg("-i").arg(image.path()));
        for expected in [
            "Volume id: config-2".to_owned(),
            "Joliet with UCS level 3 found".to_owned(),
            "Logical block size is: 2048".to_owned(),
            format!("Volume size is: {}", iso.len() / SECTOR),
        ] {
            assert!(descriptors.contains(&expected), "{expected:?} missing from:\n{descriptors}");
        }
        let listing = run("isoinfo -J -l", Command::new("isoinfo").args(["-J", "-l", "-i"]).arg(image.path()));
        for name in ["meta_data.json", "network_data.json", "2012-08-10", "user_data", "top-level.file", "0000"] {
            assert!(listing.lines().any(|line| line.trim_end().ends_with(name)), "{name} missing from:\n{listing}");
        }
        assert!(listing.contains("3145728"), "the 3 MiB file's size is missing from:\n{listing}");
        // The path table lists every directory of the primary tree, parents before children.
        let paths = run("isoinfo -p", Command::new("isoinfo").args(["-p", "-i"]).arg(image.path()));
        let dirs: Vec<&str> = paths.lines().filter_map(|line| line.split_whitespace().last()).collect();
        for dir in ["OPENSTAC", "EC2", "2012_08_", "CONTENT", "LATEST", "DEEPER", "STILL"] {
            assert!(dirs.contains(&dir), "{dir} missing from the path table:\n{paths}");
        }
    }

    #[test]
    fn xorriso_finds_every_name_without_complaint() {
        let files = sample_files();
        let image = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(image.path(), build("config-2", &files)).unwrap();
        let mut find = Command::new("xorriso");
        find.arg("-abort_on").arg("FAILURE").arg("-indev").arg(image.path()).args(["-find", "/", "-type", "f"]);
        let finished = ferric_runner::run("xorriso -find", &mut find).unwrap();
        let found: Vec<String> =
            finished.stdout.lines().map(|line| line.trim_matches('\'').trim_start_matches('/').to_owned()).collect();
        let mut expected: Vec<String> = files.iter().map(|(path, _)| path.clone()).collect();
        expected.sort();
        let mut found_sorted = found.clone();
        found_sorted.sort();
        assert_eq!(found_sorted, expected);
        for complaint in ["SORRY", "FAILURE", "WARNING"] {
            assert!(!finished.stderr_tail.contains(complaint), "xorriso: {}", finished.stderr_tail);
        }
    }

    #[test]
    fn blkid_sees_an_iso9660_volume_labelled_config_2() {
        let image = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(image.path(), build("config-2", &sample_files())).unwrap();
        let probe = run("blkid", Command::new("blkid").args(["-o", "export"]).arg(image.path()));
        assert!(probe.lines().any(|line| line == "LABEL=config-2"), "{probe}");
        assert!(probe.lines().any(|line| line == "TYPE=iso9660"), "{probe}");
    }

    #[test]
    fn equal_inputs_give_equal_images() {
        let files = sample_files();
        assert_eq!(build("config-2", &files), build("config-2", &files));
        let mut changed = files.clone();
        changed[0].1.push(b'!');
        assert_ne!(build("config-2", &files), build("config-2", &changed));
    }
}

/// Test support: runs a shell script under a real Linux kernel (Debian's, from the repository's
/// `.cache/kernel`) in QEMU, with given disk images as `/dev/vda`, `/dev/vdb`... This host's kernel
/// has neither isofs nor vfat, so mounting what we built is checked in a VM.
#[cfg(test)]
pub(crate) mod linux_check {
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::OnceLock;
    use std::time::Duration;

    /// Loaded in this order (each after its dependencies).
    const MODULES: &[&str] = &[
        "drivers/virtio/virtio_ring.ko",
        "drivers/virtio/virtio.ko",
        "drivers/virtio/virtio_pci_modern_dev.ko",
        "drivers/virtio/virtio_pci_legacy_dev.ko",
        "drivers/virtio/virtio_pci.ko",
        "drivers/block/virtio_blk.ko",
        "drivers/cdrom/cdrom.ko",
        "fs/isofs/isofs.ko",
    ];
    const BEGIN: &str = "FERRIC-CHECK-BEGIN";
    const END: &str = "FERRIC-CHECK-END";

    struct Kernel {
        _dir: tempfile::TempDir,
        vmlinuz: PathBuf,
        modules: Vec<PathBuf>,
    }

    fn sh(description: &str, script: &str) {
        ferric_runner::run(description, Command::new("sh").arg("-c").arg(script)).unwrap();
    }

    /// The kernel and the modules above, extracted once per test process.
    fn kernel() -> &'static Kernel {
        static KERNEL: OnceLock<Kernel> = OnceLock::new();
        KERNEL.get_or_init(|| {
            let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/kernel");
            let mut debs: Vec<PathBuf> = std::fs::read_dir(&cache)
                .unwrap_or_else(|error| {
                    panic!("{}: {error} (image-builder downloads the kernel there)", cache.display())
                })
                .map(|entry| entry.unwrap().path())
                .filter(|path| path.file_name().unwrap().to_string_lossy().starts_with("linux-image-"))
                .collect();
            debs.sort();
            let deb = debs.pop().unwrap_or_else(|| panic!("no linux-image-*.deb in {}", cache.display()));
            let dir = tempfile::tempdir().unwrap();
            let patterns: Vec<String> = MODULES.iter().map(|module| format!("'*/kernel/{module}'")).collect();
            sh(
                "extract the kernel and modules",
                &format!(
                    "dpkg-deb --fsys-tarfile '{}' | tar -x -C '{}' --wildcards './boot/vmlinuz-*' {}",
                    deb.display(),
                    dir.path().display(),
                    patterns.join(" ")
                ),
            );
            let find = |suffix: &str| -> PathBuf {
                let mut found = Vec::new();
                let mut stack = vec![dir.path().to_owned()];
                while let Some(current) = stack.pop() {
                    for entry in std::fs::read_dir(&current).unwrap() {
                        let path = entry.unwrap().path();
                        if path.is_dir() {
                            stack.push(path);
                        } else if path.to_string_lossy().ends_with(suffix) {
                            found.push(path);
                        }
                    }
                }
                assert_eq!(found.len(), 1, "{suffix} in {}: {found:?}", deb.display());
                found.pop().unwrap()
            };
            let boot = dir.path().join("boot");
            let vmlinuz = std::fs::read_dir(&boot).unwrap().next().unwrap().unwrap().path();
            let modules = MODULES.iter().map(|module| find(&format!("/kernel/{module}"))).collect();
            Kernel { _dir: dir, vmlinuz, modules }
        })
    }

    /// Boots the kernel with `disks` attached read-only as virtio disks and returns what `script`
    /// printed (stdout and stderr, `\r` removed). Busybox's applets are on the PATH.
    pub(crate) fn run(disks: &[&Path], script: &str) -> String {
        let kernel = kernel();
        let work = tempfile::tempdir().unwrap();
        let root = work.path().join("root");
        for dir in ["bin", "proc", "sys", "dev", "mnt", "modules"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        let mut insmods = String::new();
        for (index, module) in kernel.modules.iter().enumerate() {
            std::fs::copy(module, root.join(format!("modules/{index}.ko"))).unwrap();
            insmods.push_str(&format!("insmod /modules/{index}.ko\n"));
        }
        let init = format!(
            "#!/bin/busybox sh\n/bin/busybox --install -s /bin\nexport PATH=/bin\n\
             mount -t proc proc /proc\nmount -t sysfs sys /sys\nmount -t devtmpfs dev /dev\n{insmods}\
             for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; sleep 0.5; done\n\
             echo {BEGIN}\n(\n{script}\n) 2>&1\necho {END}\npoweroff -f\n"
        );
        let init_path = root.join("init");
        std::fs::write(&init_path, init).unwrap();
        sh("make /init executable", &format!("chmod 755 '{}'", init_path.display()));
        let initrd = work.path().join("initrd.cpio");
        sh(
            "pack the check initrd",
            &format!("cd '{}' && find . | cpio -o -H newc --quiet > '{}'", root.display(), initrd.display()),
        );
        let mut qemu = Command::new("qemu-system-x86_64");
        qemu.args(["-accel", "tcg", "-m", "256", "-display", "none", "-monitor", "none", "-serial", "stdio"])
            .args(["-no-reboot", "-nodefaults"])
            .arg("-kernel")
            .arg(&kernel.vmlinuz)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", "console=ttyS0 panic=-1 quiet"]);
        for disk in disks {
            qemu.arg("-drive").arg(format!("file={},if=virtio,format=raw,readonly=on", disk.display()));
        }
        let output = ferric_runner::run_with_timeout("boot the check VM", &mut qemu, Duration::from_secs(300))
            .unwrap()
            .stdout
            .replace('\r', "");
        let begin = output.find(BEGIN).unwrap_or_else(|| panic!("the check VM never ran the script:\n{output}"));
        let end = output.rfind(END).unwrap_or_else(|| panic!("the check script did not finish:\n{output}"));
        output[begin + BEGIN.len()..end].trim_matches('\n').to_owned()
    }

    /// A script fragment listing what is mounted at `dir` as `<tag> D <dir>` and
    /// `<tag> F <file> <sha256>` lines (paths relative, sorted).
    pub(crate) fn list_tree(dir: &str, tag: &str) -> String {
        format!(
            "(cd {dir} && find . -mindepth 1 -type d | sort | sed 's|^\\./|{tag} D |' && \
             find . -type f | sort | while read f; do echo \"{tag} F ${{f#./}} $(sha256sum < \"$f\" | cut -d' ' -f1)\"; done)"
        )
    }

    /// The lines [`list_tree`] prints for `files` (paths relative to the mount point).
    pub(crate) fn expected_listing(tag: &str, files: &[(String, Vec<u8>)]) -> Vec<String> {
        use sha2::Digest;
        let mut dirs = std::collections::BTreeSet::new();
        let mut lines = Vec::new();
        for (path, data) in files {
            let parts: Vec<&str> = path.split('/').collect();
            for end in 1..parts.len() {
                dirs.insert(parts[..end].join("/"));
            }
            lines.push(format!("{tag} F {path} {}", hex::encode(sha2::Sha256::digest(data))));
        }
        let mut all: Vec<String> = dirs.into_iter().map(|dir| format!("{tag} D {dir}")).collect();
        lines.sort();
        all.extend(lines);
        all
    }
}
