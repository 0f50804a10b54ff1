//! `erase_devices_metadata`: zero every place a partition table, filesystem, RAID, LVM or swap signature
//! lives, on the disk and on each of its partitions, so nothing recognises the last tenant's layout. IPA
//! runs `wipefs --all` per partition and on the disk, then zeroes both GPT copies; this does the same
//! through byte ranges of the whole disk (the kernel need not have partition devices for them).

use std::ops::Range;
use std::time::Instant;

use ferric_protocol::ErasedDevice;
use nix::errno::Errno;

use super::erase::{mib_per_second, EraseError};
use super::{DiskJob, StepProgress};
use crate::disklabel::{self, DiskLabel, DiskLabelError, LabelKind, GPT_ALTERNATE_LBA, MBR_SECTOR};
use crate::partition::{self, PartitionError};
use crate::target::{AlignedBuffer, Target};

const MIB: u64 = 1 << 20;

/// Where a signature lies in a device (a disk or a partition).
#[derive(Debug, Clone, Copy)]
enum Position {
    FromStart(u64),
    FromEnd(u64),
}

/// A signature outside the first and the last MiB of a device, where `blkid` and its own tools look.
struct FarSignature {
    position: Position,
    bytes: u64,
    /// Only looked for on whole disks (firmware RAID metadata).
    whole_disk_only: bool,
}

const FAR_SIGNATURES: [FarSignature; 6] = [
    // LUKS2 secondary headers (also VMFS volume info at 1 MiB and VMFS file system info at 2 MiB).
    far(Position::FromStart(MIB), 4096, false),
    far(Position::FromStart(2 * MIB), 4096, false),
    far(Position::FromStart(4 * MIB), 4096, false),
    // btrfs superblock mirrors.
    far(Position::FromStart(64 * MIB), 4096, false),
    far(Position::FromStart(256 << 30), 4096, false),
    // Promise FastTrak RAID metadata, the farthest of its places from the end.
    far(Position::FromEnd(3087 * MBR_SECTOR), MBR_SECTOR, true),
];

const fn far(position: Position, bytes: u64, whole_disk_only: bool) -> FarSignature {
    FarSignature { position, bytes, whole_disk_only }
}

/// The byte ranges to zero on a disk of `size` bytes carrying `label`, merged, from the end of the disk
/// to its start: the partition table goes last, so an interrupted run leaves a table a rerun still
/// finds the partitions through.
///
/// Per device (each partition, each msdos extended container, the disk): the first and the last MiB
/// (MBR and primary GPT; ext, xfs, swap, LVM, md 1.1/1.2, LUKS, bcache and most others at the start; md
/// 0.90/1.0, ZFS's last labels, hardware RAID metadata and the backup GPT at the end) and
/// [`FAR_SIGNATURES`] that fall inside. With a GPT also the MiB before the first usable LBA and the
/// MiB after the last one, and the backup at the header's alternate LBA (it stays in the middle when a
/// disk image was written to a larger disk).
pub fn plan(size: u64, label: Option<&DiskLabel>) -> Vec<Range<u64>> {
    let mut ranges = device_ranges(0..size, true);
    if let Some(label) = label {
        for partition in label.partitions.iter().rev() {
            ranges.extend(device_ranges(partition.start..partition.end(), false));
        }
        match &label.kind {
            LabelKind::Gpt(gpt) => {
                let sector = label.sector_size;
                let entries_sectors = (gpt.entries.len() as u64).div_ceil(sector);
                // Bounded to a MiB each: an image written to a larger disk without growing its GPT
                // leaves a last usable LBA far before the end, and the gap behind it is not metadata.
                let first_usable = gpt.first_usable_lba.saturating_mul(sector);
                ranges.push(0..first_usable.min(MIB));
                let after_last = gpt.last_usable_lba.saturating_add(1).saturating_mul(sector);
                ranges.push(after_last..after_last.saturating_add(MIB));
                let alternate = disklabel::le_u64(&gpt.header[GPT_ALTERNATE_LBA..]);
                if let Some(first) = alternate.checked_sub(entries_sectors) {
                    ranges.push(first.saturating_mul(sector)..alternate.saturating_add(1).saturating_mul(sector));
                }
            }
            LabelKind::Mbr { .. } => {
                // The first extended boot record; the later ones are unreachable once it is gone.
                for entry in disklabel::mbr_entries(&label.mbr).iter().filter(|entry| entry.is_extended()) {
                    let start = u64::from(entry.start_lba) * MBR_SECTOR;
                    ranges.extend(device_ranges(start..entry.end_lba() * MBR_SECTOR, false).into_iter().take(1));
                }
            }
        }
    }
    merge(ranges, size)
}

/// The head, the tail and the far signatures of the device spanning `extent` of the disk.
fn device_ranges(extent: Range<u64>, whole_disk: bool) -> Vec<Range<u64>> {
    let (start, end) = (extent.start, extent.end.max(extent.start));
    let len = end - start;
    let mut ranges = vec![start..start + len.min(MIB), end - len.min(MIB)..end];
    for signature in FAR_SIGNATURES.iter().filter(|signature| whole_disk || !signature.whole_disk_only) {
        let offset = match signature.position {
            Position::FromStart(offset) => Some(offset),
            Position::FromEnd(offset) => len.checked_sub(offset),
        };
        if let Some(offset) = offset.filter(|offset| offset.saturating_add(signature.bytes) <= len) {
            ranges.push(start + offset..start + offset + signature.bytes);
        }
    }
    ranges
}

/// Clamps to the disk, merges overlapping and touching ranges, and orders them from the end.
fn merge(mut ranges: Vec<Range<u64>>, size: u64) -> Vec<Range<u64>> {
    ranges.iter_mut().for_each(|range| *range = range.start.min(size)..range.end.min(size));
    ranges.retain(|range| range.start < range.end);
    ranges.sort_by_key(|range| range.start);
    let mut merged: Vec<Range<u64>> = Vec::new();
    for range in ranges {
        match merged.last_mut() {
            Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
            _ => merged.push(range),
        }
    }
    merged.reverse();
    merged
}

/// Zeroes the metadata of one disk, `target` opened on it, syncs and makes the kernel re-read its (now
/// absent) partition table.
pub(super) fn erase(
    job: &DiskJob,
    target: &mut dyn Target,
    progress: &StepProgress,
) -> Result<ErasedDevice, EraseError> {
    let started = Instant::now();
    progress.set(&job.device, "reading the partition table");
    let label = match disklabel::read(target) {
        Ok(label) => Some(label),
        Err(DiskLabelError::NoPartitionTable { .. }) => None,
        Err(error @ DiskLabelError::Read { .. }) => return Err(EraseError::DiskLabel(error)),
        Err(error) => {
            // A damaged table: its partitions are unknown, their signatures stay; the disk's own go.
            tracing::warn!(device = %job.device, "{}; erasing the disk's own metadata only", super::chain(&error));
            None
        }
    };
    let ranges = plan(target.size(), label.as_ref());
    let partitions = label.as_ref().map_or(0, |label| label.partitions.len());
    progress.set(&job.device, &format!("zeroing metadata of the disk and {partitions} partitions"));
    let zeros = AlignedBuffer::new(MIB as usize);
    let mut bytes = 0;
    for range in &ranges {
        let mut offset = range.start;
        while offset < range.end {
            let len = (range.end - offset).min(MIB);
            target.write_at(offset, &zeros[..len as usize]).map_err(|source| EraseError::Write {
                method: "metadata",
                offset,
                source,
            })?;
            offset += len;
            bytes += len;
            progress.advance(len);
        }
    }
    target.sync().map_err(EraseError::Sync)?;
    match partition::reread_partition_table(&job.path) {
        // Loop devices without partition scanning refuse BLKRRPART with EINVAL.
        Ok(_) | Err(PartitionError::Reread { source: Errno::EINVAL, .. }) => {}
        Err(error) => return Err(EraseError::Reread(Box::new(error))),
    }
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(device = %job.device, bytes, ranges = ranges.len(), partitions, seconds, "metadata erased");
    Ok(ErasedDevice {
        device: job.device.clone(),
        method: "metadata".into(),
        bytes,
        seconds,
        mib_per_second: mib_per_second(bytes, seconds),
        samples_verified: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disklabel::{Gpt, MbrEntry, PartUuid, Partition, PartitionType, MBR_ENTRIES_OFFSET};

    const GIB: u64 = 1 << 30;

    fn partition(number: u32, start: u64, size: u64) -> Partition {
        Partition {
            number,
            start,
            size,
            kind: PartitionType::Mbr(0x83),
            uuid: PartUuid::Mbr { disk_id: 0, number },
            name: None,
        }
    }

    fn gpt_label(sector: u64, last_usable: u64, alternate: u64, partitions: Vec<Partition>) -> DiskLabel {
        let mut header = vec![0u8; 92];
        header[GPT_ALTERNATE_LBA..GPT_ALTERNATE_LBA + 8].copy_from_slice(&alternate.to_le_bytes());
        let first_usable = if sector == 512 { 34 } else { 6 };
        let gpt = Gpt {
            disk_guid: uuid::Uuid::nil(),
            header,
            first_usable_lba: first_usable,
            last_usable_lba: last_usable,
            entries_lba: 2,
            entry_size: 128,
            entries: vec![0; 128 * 128],
        };
        DiskLabel { kind: LabelKind::Gpt(gpt), sector_size: sector, partitions, mbr: [0; 512] }
    }

    fn mbr_label(entries: &[MbrEntry], partitions: Vec<Partition>) -> DiskLabel {
        let mut mbr = [0u8; 512];
        for (index, entry) in entries.iter().enumerate() {
            let raw = &mut mbr[MBR_ENTRIES_OFFSET + 16 * index..][..16];
            raw[4] = entry.kind;
            raw[8..12].copy_from_slice(&entry.start_lba.to_le_bytes());
            raw[12..16].copy_from_slice(&entry.sectors.to_le_bytes());
        }
        DiskLabel { kind: LabelKind::Mbr { disk_id: 0 }, sector_size: 512, partitions, mbr }
    }

    /// Ranges in ascending order, as `(start, end)` in bytes.
    fn ascending(ranges: Vec<Range<u64>>) -> Vec<(u64, u64)> {
        ranges.into_iter().rev().map(|range| (range.start, range.end)).collect()
    }

    #[test]
    fn plans_table() {
        let size = 64 * MIB;
        let promise = size - 3087 * 512;
        type Case = (&'static str, u64, Option<DiskLabel>, Vec<(u64, u64)>);
        let cases: Vec<Case> = vec![
            (
                "blank disk: ends, LUKS2/VMFS copies, Promise metadata",
                size,
                None,
                vec![
                    (0, MIB + 4096),
                    (2 * MIB, 2 * MIB + 4096),
                    (4 * MIB, 4 * MIB + 4096),
                    (promise, promise + 512),
                    (size - MIB, size),
                ],
            ),
            ("disk smaller than a MiB", 600 << 10, None, vec![(0, 600 << 10)]),
            (
                "GPT (512-byte sectors) with two partitions; the table's own ranges fall in the disk's ends",
                size,
                Some(gpt_label(
                    512,
                    size / 512 - 34,
                    size / 512 - 1,
                    vec![partition(1, MIB, 8 * MIB), partition(2, 9 * MIB, 54 * MIB)],
                )),
                vec![
                    (0, 2 * MIB + 4096),
                    (3 * MIB, 3 * MIB + 4096),
                    (4 * MIB, 4 * MIB + 4096),
                    (5 * MIB, 5 * MIB + 4096),
                    (8 * MIB, 10 * MIB + 4096),
                    (11 * MIB, 11 * MIB + 4096),
                    (13 * MIB, 13 * MIB + 4096),
                    // Partition 2's tail, the disk's Promise sector and tail, the backup GPT.
                    (62 * MIB, size),
                ],
            ),
            (
                "4Kn GPT whose backup was left mid-disk by a smaller image, with a btrfs-sized partition",
                2 * GIB,
                Some(gpt_label(4096, (2 * GIB) / 4096 - 6, (GIB / 4096) - 1, vec![partition(1, MIB, 1023 * MIB)])),
                vec![
                    (0, 2 * MIB + 4096),
                    (3 * MIB, 3 * MIB + 4096),
                    (4 * MIB, 4 * MIB + 4096),
                    (5 * MIB, 5 * MIB + 4096),
                    (64 * MIB, 64 * MIB + 4096),
                    (65 * MIB, 65 * MIB + 4096),
                    // Partition 1's tail, holding the stale backup GPT.
                    (GIB - MIB, GIB),
                    (2 * GIB - 3087 * 512, 2 * GIB - 3087 * 512 + 512),
                    (2 * GIB - MIB, 2 * GIB),
                ],
            ),
            (
                "msdos with an extended container: its first MiB (the first EBR) too",
                size,
                Some(mbr_label(
                    &[
                        MbrEntry { kind: 0x83, start_lba: 2048, sectors: 8192 },
                        MbrEntry { kind: 0x05, start_lba: 20480, sectors: 40960 },
                    ],
                    vec![partition(1, MIB, 4 * MIB), partition(5, 11 * MIB, 8 * MIB)],
                )),
                vec![
                    (0, 2 * MIB + 4096),
                    (3 * MIB, 3 * MIB + 4096),
                    (4 * MIB, 5 * MIB),
                    (10 * MIB, 12 * MIB + 4096),
                    (13 * MIB, 13 * MIB + 4096),
                    (15 * MIB, 15 * MIB + 4096),
                    (18 * MIB, 19 * MIB),
                    (promise, promise + 512),
                    (size - MIB, size),
                ],
            ),
        ];
        for (name, size, label, expected) in cases {
            let ranges = plan(size, label.as_ref());
            assert!(ranges.windows(2).all(|pair| pair[0].start > pair[1].end), "{name}: descending, disjoint");
            assert_eq!(ascending(ranges), expected, "{name}");
        }
    }

    #[test]
    fn a_small_image_on_a_big_disk_costs_a_few_mib_not_the_gap_behind_it() {
        // A 2 GiB image's GPT (never grown) on a 4 TiB disk: last usable LBA and backup at 2 GiB.
        let (image, disk) = (2 * GIB, 4 << 40);
        let image_sectors = image / 512;
        let label = gpt_label(512, image_sectors - 34, image_sectors - 1, vec![partition(1, MIB, image - 2 * MIB)]);
        let ranges = plan(disk, Some(&label));
        let total: u64 = ranges.iter().map(|range| range.end - range.start).sum();
        assert!(total < 16 * MIB, "{total} bytes: {:?}", ascending(ranges.clone()));
        let backup = (image_sectors - 33) * 512..image;
        assert!(ranges.iter().any(|range| range.start <= backup.start && backup.end <= range.end), "backup GPT kept");
    }

    #[test]
    fn hostile_labels_cannot_push_ranges_past_the_disk() {
        let label = gpt_label(512, u64::MAX - 1, u64::MAX, vec![]);
        let ranges = plan(64 * MIB, Some(&label));
        assert!(ranges.iter().all(|range| range.end <= 64 * MIB), "{ranges:?}");
    }
}
