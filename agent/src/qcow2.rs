//! qcow2 (v2 and v3) streamed onto a disk in one sequential pass over the download, with bounded memory.
//!
//! The stream starts with the header; the header locates the L1 table, L1 entries locate L2 tables,
//! L2 entries locate data clusters (plain or deflate/zstd-compressed) or say a cluster reads as zeros.
//! Every entry read becomes a *claim* on a later byte range of the stream, served when the stream gets
//! there. qemu-img writes each L2 table before the clusters it maps, so nothing needs buffering; for
//! other layouts, bytes no claim covered yet are kept in a window (the last [`WINDOW_BYTES`]) in case a
//! table read later refers to them. Whatever refers to older bytes makes the image "not streamable".
//!
//! The inspector ([`inspect`]) refuses, before anything is written, what would make the written disk
//! depend on something outside the image (backing file, external data file), encryption, images marked
//! corrupt, features it does not know, and headers whose sizes or offsets make no sense.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Read;

use flate2::{Decompress, FlushDecompress};
use qcow2_rs::dev::{Qcow2DevParams, Qcow2Info};
use qcow2_rs::meta::{L1Entry, L2Entry, Qcow2Header, TableEntry};
use zstd::stream::raw::{InBuffer, Operation, OutBuffer};

use crate::image::{fill, read_error, DiskWriter, WriteError, CHUNK_BYTES};
use crate::progress::ProgressTracker;
use crate::target::Target;

/// How many recent bytes that no table referred to yet are kept for a table that comes later.
pub const WINDOW_BYTES: usize = 16 << 20;
/// Most ranges (tables, extents of data clusters, compressed clusters) waiting for the stream at once;
/// bounds the bookkeeping (about 40 bytes each) for images whose tables all come first.
const MAX_PENDING: usize = 1 << 19;
/// How to fix images whose layout cannot be streamed.
const REWRITE_HINT: &str = "rewrite it with `qemu-img convert -O qcow2`";
/// qemu's limit on the L1 table.
const MAX_L1_BYTES: u64 = 32 << 20;
const CLUSTER_BITS: std::ops::RangeInclusive<u32> = 9..=21;
const V2_HEADER_BYTES: usize = 72;
const V3_HEADER_BYTES: usize = 104;
/// Host offsets have 56 bits in table entries.
const MAX_HOST_OFFSET: u64 = 1 << 56;

const INCOMPATIBLE_DIRTY: u64 = 1 << 0;
const INCOMPATIBLE_CORRUPT: u64 = 1 << 1;
const INCOMPATIBLE_DATA_FILE: u64 = 1 << 2;
const INCOMPATIBLE_COMPRESSION_TYPE: u64 = 1 << 3;
const INCOMPATIBLE_EXTENDED_L2: u64 = 1 << 4;
const INCOMPATIBLE_KNOWN: u64 = (1 << 5) - 1;

const EXTENSION_END: u32 = 0;
const EXTENSION_FEATURE_NAMES: u32 = 0x6803_f857;
const EXTENSION_CRYPTO: u32 = 0x0537_be77;
const EXTENSION_DATA_FILE: u32 = 0x4441_5441;
const FEATURE_NAME_ENTRY_BYTES: usize = 48;

#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    #[error("qcow2 header is truncated: the image has {available} bytes, the header needs {needed}")]
    TruncatedHeader { available: usize, needed: usize },
    #[error("qcow2 version {0} is not supported (versions 2 and 3 are)")]
    UnsupportedVersion(u32),
    #[error("qcow2 header field {field} = {value} is invalid: {reason}")]
    InvalidHeader { field: &'static str, value: u64, reason: String },
    #[error("qcow2 header extension {kind:#010x} at byte {offset} is invalid: {reason}")]
    InvalidExtension { kind: u32, offset: usize, reason: String },
    #[error("qcow2 header rejected: {0}")]
    Rejected(String),
    #[error("qcow2 image has a backing file ({name:?}); only self-contained images can be written (qemu-img convert it first)")]
    BackingFile { name: String },
    #[error(
        "qcow2 image keeps its data in an external data file ({name:?}); only self-contained images can be written"
    )]
    ExternalDataFile { name: String },
    #[error("qcow2 image is encrypted ({method}); encrypted images are not supported")]
    Encrypted { method: String },
    #[error("qcow2 image is marked corrupt (incompatible feature bit 1); repair it with qemu-img check -r all")]
    MarkedCorrupt,
    #[error("qcow2 image uses extended L2 entries (subclusters), which are not supported")]
    ExtendedL2,
    #[error("qcow2 image uses unknown incompatible features: {features}")]
    UnknownFeatures { features: String },
    #[error("qcow2 compression type {0} is not supported (0 deflate and 1 zstd are)")]
    UnknownCompression(u8),
    #[error("qcow2 {table} entry for guest offset {guest} (at host offset {at}) is invalid: {reason}")]
    InvalidEntry { table: &'static str, guest: u64, at: u64, reason: String },
    #[error(
        "qcow2 image is inconsistent: {what} at host offset {offset} overlaps {other} at host offset {other_offset}"
    )]
    Overlap { what: String, offset: u64, other: String, other_offset: u64 },
    #[error("qcow2 layout not streamable: {what} at host offset {offset} is referenced by the table at host offset {referenced_at}, which comes later in the image, and is not among the last {window_mib} MiB of unreferenced bytes kept; {REWRITE_HINT}")]
    NotStreamable { what: String, offset: u64, referenced_at: u64, window_mib: usize },
    #[error("qcow2 L1 table at host offset {l1_offset} lies beyond the first {window_mib} MiB: this image cannot be streamed; {REWRITE_HINT}")]
    L1BeyondWindow { l1_offset: u64, window_mib: usize },
    #[error("qcow2 layout not streamable: compressed clusters at host offsets {offsets} overlap and would need more than {limit_mib} MiB at once; {REWRITE_HINT}")]
    CompressedOverBudget { offsets: String, limit_mib: usize },
    #[error("qcow2 layout not streamable: more than {limit} ranges are referenced ahead of host offset {position}; {REWRITE_HINT}")]
    TooManyPending { limit: usize, position: u64 },
    #[error("qcow2 image is truncated or inconsistent: {what} at host offset {offset} (referenced at host offset {referenced_at}) lies beyond the end of the image ({image_bytes} bytes)")]
    Truncated { what: String, offset: u64, referenced_at: u64, image_bytes: u64 },
    #[error("qcow2 compressed cluster for guest offset {guest} at host offset {offset} does not decompress to {cluster_bytes} bytes: {reason}")]
    Decompress { guest: u64, offset: u64, cluster_bytes: u64, reason: String },
}

/// How compressed clusters are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Raw deflate (no zlib header), the default.
    Deflate,
    Zstd,
}

/// What the inspector accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub cluster_bits: u32,
    /// Size of the disk the image describes.
    pub virtual_size: u64,
    pub l1_offset: u64,
    pub l1_entries: u64,
    pub compression: Compression,
}

impl Header {
    fn cluster_bytes(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Guest bytes mapped by one L2 table.
    fn l2_coverage(&self) -> u64 {
        self.cluster_bytes() * (self.cluster_bytes() / 8)
    }
}

/// Checks a qcow2 header (`head` holds at least the header cluster, or the whole image if it is
/// shorter) and returns what streaming needs.
pub fn inspect(head: &[u8]) -> Result<Header, Qcow2Error> {
    parse(head).map(|(header, _)| header)
}

/// Streams the qcow2 image `reader` yields onto `target`; returns the held-back head and the virtual size.
pub(crate) fn write(
    mut reader: impl Read,
    target: &mut dyn Target,
    progress: &ProgressTracker,
) -> Result<(Vec<u8>, u64), WriteError> {
    let mut head = vec![0u8; 1 << CLUSTER_BITS.start()];
    let filled = fill(&mut reader, &mut head).map_err(|e| read_error(progress, e))?;
    head.truncate(filled);
    // Read the rest of the header cluster, and not beyond: the stream continues from there.
    if let Some(bits) = head.get(20..24).map(|b| be32(b, 0)).filter(|bits| CLUSTER_BITS.contains(bits)) {
        if head.len() == 1 << CLUSTER_BITS.start() {
            head.resize(1 << bits, 0);
            let more = fill(&mut reader, &mut head[filled..]).map_err(|e| read_error(progress, e))?;
            head.truncate(filled + more);
        }
    }
    let (header, info) = parse(&head)?;
    if header.l1_offset > WINDOW_BYTES as u64 {
        // Everything before the L1 table would have to be kept until it arrives.
        return Err(Qcow2Error::L1BeyondWindow { l1_offset: header.l1_offset, window_mib: WINDOW_BYTES >> 20 }.into());
    }
    if header.virtual_size > target.size() {
        return Err(WriteError::TargetTooSmall {
            target: target.describe(),
            target_bytes: target.size(),
            needed: header.virtual_size,
        });
    }
    tracing::info!(?header, "streaming qcow2 image");
    let position = head.len() as u64;
    let virtual_size = header.virtual_size;
    let (head, ()) =
        DiskWriter::run(target, |writer| Stream::new(reader, position, header, info, writer, progress)?.run())?;
    Ok((head, virtual_size))
}

fn be32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(buf: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

fn invalid(field: &'static str, value: u64, reason: impl Into<String>) -> Qcow2Error {
    Qcow2Error::InvalidHeader { field, value, reason: reason.into() }
}

/// What the header extensions say.
#[derive(Default)]
struct Extensions {
    data_file: Option<String>,
    crypto: bool,
    feature_names: HashMap<(u8, u8), String>,
}

fn parse_extensions(head: &[u8], from: usize, cluster_bytes: usize) -> Result<Extensions, Qcow2Error> {
    let mut extensions = Extensions::default();
    let mut at = from;
    loop {
        let limit = head.len().min(cluster_bytes);
        if at + 8 > limit {
            return Err(if head.len() < cluster_bytes && at + 8 > head.len() {
                Qcow2Error::TruncatedHeader { available: head.len(), needed: at + 8 }
            } else {
                Qcow2Error::InvalidExtension {
                    kind: 0,
                    offset: at,
                    reason: "no end marker in the header cluster".into(),
                }
            });
        }
        let (kind, len) = (be32(head, at), be32(head, at + 4) as usize);
        if kind == EXTENSION_END {
            return Ok(extensions);
        }
        let data = head.get(at + 8..at + 8 + len).filter(|_| at + 8 + len <= cluster_bytes).ok_or_else(|| {
            Qcow2Error::InvalidExtension {
                kind,
                offset: at,
                reason: format!("{len} bytes of data run past the header"),
            }
        })?;
        match kind {
            EXTENSION_CRYPTO => extensions.crypto = true,
            EXTENSION_DATA_FILE => extensions.data_file = Some(String::from_utf8_lossy(data).into_owned()),
            EXTENSION_FEATURE_NAMES => {
                if !len.is_multiple_of(FEATURE_NAME_ENTRY_BYTES) {
                    return Err(Qcow2Error::InvalidExtension {
                        kind,
                        offset: at,
                        reason: format!("feature name table of {len} bytes is not a multiple of 48"),
                    });
                }
                for entry in data.chunks_exact(FEATURE_NAME_ENTRY_BYTES) {
                    let name = String::from_utf8_lossy(&entry[2..]).trim_end_matches('\0').to_owned();
                    extensions.feature_names.insert((entry[0], entry[1]), name);
                }
            }
            _ => {}
        }
        at += 8 + len.next_multiple_of(8);
    }
}

/// The inspector: own checks on the raw header first (qcow2-rs refuses every incompatible feature bit and
/// reads v2 headers as if they had v3 fields), then qcow2-rs parses a normalised copy.
fn parse(head: &[u8]) -> Result<(Header, Qcow2Info), Qcow2Error> {
    if head.len() < 8 {
        return Err(Qcow2Error::TruncatedHeader { available: head.len(), needed: V2_HEADER_BYTES });
    }
    let version = be32(head, 4);
    let fixed_bytes = match version {
        2 => V2_HEADER_BYTES,
        3 => V3_HEADER_BYTES,
        other => return Err(Qcow2Error::UnsupportedVersion(other)),
    };
    if head.len() < fixed_bytes {
        return Err(Qcow2Error::TruncatedHeader { available: head.len(), needed: fixed_bytes });
    }
    let cluster_bits = be32(head, 20);
    if !CLUSTER_BITS.contains(&cluster_bits) {
        return Err(invalid("cluster_bits", cluster_bits.into(), "must be 9 to 21 (512 B to 2 MiB clusters)"));
    }
    let cluster_bytes = 1usize << cluster_bits;
    let (incompatible, refcount_order, header_length) =
        if version == 3 { (be64(head, 72), be32(head, 96), be32(head, 100) as usize) } else { (0, 4, V2_HEADER_BYTES) };
    if version == 3
        && (header_length < V3_HEADER_BYTES || !header_length.is_multiple_of(8) || header_length > cluster_bytes)
    {
        return Err(invalid(
            "header_length",
            header_length as u64,
            "must be a multiple of 8, at least 104 and inside the header cluster",
        ));
    }
    if head.len() < header_length {
        return Err(Qcow2Error::TruncatedHeader { available: head.len(), needed: header_length });
    }
    if refcount_order > 6 {
        return Err(invalid("refcount_order", refcount_order.into(), "must be at most 6"));
    }

    let backing_offset = be64(head, 8);
    if backing_offset != 0 {
        let len = be32(head, 16) as usize;
        let name = usize::try_from(backing_offset)
            .ok()
            .filter(|_| len <= 1023)
            .and_then(|start| head.get(start..start.checked_add(len)?))
            .map_or_else(
                || format!("name of {len} bytes at byte {backing_offset}, unreadable"),
                |name| String::from_utf8_lossy(name).into_owned(),
            );
        return Err(Qcow2Error::BackingFile { name });
    }
    let crypt_method = be32(head, 32);
    if crypt_method != 0 {
        let method = match crypt_method {
            1 => "AES-CBC".to_owned(),
            2 => "LUKS".to_owned(),
            other => format!("method {other}"),
        };
        return Err(Qcow2Error::Encrypted { method });
    }
    let extensions = parse_extensions(head, header_length, cluster_bytes)?;
    if extensions.crypto {
        return Err(Qcow2Error::Encrypted { method: "full disk encryption header extension".into() });
    }
    if incompatible & INCOMPATIBLE_DATA_FILE != 0 || extensions.data_file.is_some() {
        let name = extensions.data_file.unwrap_or_else(|| "name not given".into());
        return Err(Qcow2Error::ExternalDataFile { name });
    }
    if incompatible & INCOMPATIBLE_CORRUPT != 0 {
        return Err(Qcow2Error::MarkedCorrupt);
    }
    if incompatible & INCOMPATIBLE_EXTENDED_L2 != 0 {
        return Err(Qcow2Error::ExtendedL2);
    }
    let unknown = incompatible & !INCOMPATIBLE_KNOWN;
    if unknown != 0 {
        let features = (0..64u8)
            .filter(|bit| unknown & (1 << bit) != 0)
            .map(|bit| match extensions.feature_names.get(&(0, bit)) {
                Some(name) => format!("bit {bit} ({name})"),
                None => format!("bit {bit}"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        return Err(Qcow2Error::UnknownFeatures { features });
    }
    let compression_type = if header_length > V3_HEADER_BYTES { head[V3_HEADER_BYTES] } else { 0 };
    let compression = match (incompatible & INCOMPATIBLE_COMPRESSION_TYPE != 0, compression_type) {
        (false, 0) => Compression::Deflate,
        (true, 1) => Compression::Zstd,
        (true, 0) | (false, _) => {
            return Err(invalid(
                "compression_type",
                compression_type.into(),
                "must be non-zero exactly when incompatible feature bit 3 is set",
            ))
        }
        (true, other) => return Err(Qcow2Error::UnknownCompression(other)),
    };

    let virtual_size = be64(head, 24);
    let l1_entries = u64::from(be32(head, 36));
    let l1_offset = be64(head, 40);
    let cluster = cluster_bytes as u64;
    let l2_coverage = cluster * (cluster / 8);
    if l1_entries < virtual_size.div_ceil(l2_coverage) {
        return Err(invalid(
            "l1_size",
            l1_entries,
            format!("too small to map the virtual size of {virtual_size} bytes"),
        ));
    }
    if l1_entries * 8 > MAX_L1_BYTES {
        return Err(invalid("l1_size", l1_entries, "the L1 table would be larger than 32 MiB"));
    }
    if !l1_offset.is_multiple_of(cluster) {
        return Err(invalid("l1_table_offset", l1_offset, "not aligned to a cluster"));
    }
    if l1_entries > 0 && l1_offset < cluster {
        return Err(invalid("l1_table_offset", l1_offset, "the L1 table would overlap the header cluster"));
    }
    if l1_offset + l1_entries * 8 > MAX_HOST_OFFSET {
        return Err(invalid("l1_table_offset", l1_offset, "beyond the largest host offset (2^56)"));
    }

    let parsed = Qcow2Header::from_buf(&normalised_for_qcow2_rs(head, version, header_length, cluster_bytes))
        .map_err(|e| Qcow2Error::Rejected(e.to_string()))?;
    let params = Qcow2DevParams::new(9, None, Some((cluster_bits as u8, 2 << cluster_bits)), true, false);
    let info = Qcow2Info::new(&parsed, &params).map_err(|e| Qcow2Error::Rejected(e.to_string()))?;
    let header = Header {
        version: parsed.version(),
        cluster_bits: parsed.cluster_bits(),
        virtual_size: parsed.size(),
        l1_offset: parsed.l1_table_offset(),
        l1_entries: parsed.l1_table_entries() as u64,
        compression,
    };
    Ok((header, info))
}

/// A copy of the header cluster that qcow2-rs accepts: incompatible bits handled here cleared (dirty:
/// refcounts do not matter for reading; compression type: read above), and v2 headers given the v3
/// fields qcow2-rs always reads, with their extensions moved behind them.
fn normalised_for_qcow2_rs(head: &[u8], version: u32, header_length: usize, cluster_bytes: usize) -> Vec<u8> {
    let mut copy = if version == 2 {
        let mut copy = head[..V2_HEADER_BYTES].to_vec();
        copy.extend_from_slice(&[0; 24]); // incompatible, compatible, autoclear features
        copy.extend_from_slice(&4u32.to_be_bytes()); // refcount_order
        copy.extend_from_slice(&(V3_HEADER_BYTES as u32).to_be_bytes()); // header_length
        copy.extend_from_slice(&head[V2_HEADER_BYTES..]);
        copy.truncate(cluster_bytes);
        copy
    } else {
        let mut copy = head.to_vec();
        let incompatible = be64(head, 72) & !(INCOMPATIBLE_DIRTY | INCOMPATIBLE_COMPRESSION_TYPE);
        copy[72..80].copy_from_slice(&incompatible.to_be_bytes());
        debug_assert!(header_length <= copy.len());
        copy
    };
    // qcow2-rs reads a fixed 105-byte structure first.
    if copy.len() < V3_HEADER_BYTES + 8 {
        copy.resize(V3_HEADER_BYTES + 8, 0);
    }
    copy
}

/// A range of the stream something is waiting for.
#[derive(Debug, Clone, Copy)]
struct Claim {
    end: u64,
    kind: ClaimKind,
    /// Host offset of the table entry that made the claim (for data, the entry of its first cluster).
    referenced_at: u64,
}

impl Claim {
    /// What remains of the claim `bytes` further on (a multiple of 8 for tables, of clusters for data).
    fn advanced(self, bytes: u64, cluster_bytes: u64) -> Claim {
        let (kind, referenced_at) = match self.kind {
            ClaimKind::L1 { first_index } => {
                (ClaimKind::L1 { first_index: first_index + bytes / 8 }, self.referenced_at)
            }
            ClaimKind::L2 { guest } => (ClaimKind::L2 { guest: guest + bytes / 8 * cluster_bytes }, self.referenced_at),
            ClaimKind::Data { guest } => {
                (ClaimKind::Data { guest: guest + bytes }, self.referenced_at + bytes / cluster_bytes * 8)
            }
        };
        Claim { kind, referenced_at, ..self }
    }
}

#[derive(Debug, Clone, Copy)]
enum ClaimKind {
    L1 {
        first_index: u64,
    },
    /// An L2 table; `guest` is where its first entry maps.
    L2 {
        guest: u64,
    },
    /// Contiguous data clusters for contiguous guest bytes from `guest`.
    Data {
        guest: u64,
    },
}

impl ClaimKind {
    fn is_table(self) -> bool {
        !matches!(self, ClaimKind::Data { .. })
    }

    fn describe(self) -> String {
        match self {
            ClaimKind::L1 { .. } => "the L1 table".into(),
            ClaimKind::L2 { guest } => format!("the L2 table for guest offset {guest}"),
            ClaimKind::Data { guest } => format!("data for guest offset {guest}"),
        }
    }
}

/// The guest clusters that one compressed host range decompresses to: (guest offset, host offset of
/// the L2 entry). Hostile images may point many entries at one range; it is decompressed once.
type Readers = Vec<(u64, u64)>;

/// A compressed host range not reached yet.
struct PendingCompressed {
    /// Upper bound from the L2 entries (the largest of them).
    len: u64,
    readers: Readers,
}

/// Bytes of one compressed cluster being gathered from the stream.
struct Collector {
    start: u64,
    /// Upper bound from the L2 entries; the compressed data may end earlier, or the image before it.
    len: u64,
    readers: Readers,
    /// Holds up to `len` bytes, reserved from the budget shared with the window.
    bytes: Vec<u8>,
}

/// Recent stream bytes that no claim covered when they passed.
#[derive(Default)]
struct Window {
    segments: VecDeque<(u64, Vec<u8>)>,
    bytes: usize,
}

impl Window {
    /// Keeps `data`, dropping the oldest bytes so that at most `limit` bytes are held.
    fn push(&mut self, start: u64, data: &[u8], limit: usize) {
        self.shrink_to(limit.saturating_sub(data.len()));
        let keep = data.len().min(limit);
        if keep == 0 {
            return;
        }
        let skipped = data.len() - keep;
        self.segments.push_back((start + skipped as u64, data[skipped..].to_vec()));
        self.bytes += keep;
    }

    /// Drops the oldest segments until at most `limit` bytes are held.
    fn shrink_to(&mut self, limit: usize) {
        while self.bytes > limit {
            let Some((_, dropped)) = self.segments.pop_front() else { break };
            self.bytes -= dropped.len();
        }
    }

    /// The bytes from `start` towards `end`, as far as the window holds them contiguously.
    fn copy(&self, start: u64, end: u64) -> Option<Vec<u8>> {
        let first = self.segments.iter().position(|(at, data)| *at <= start && start < at + data.len() as u64)?;
        let mut out = Vec::new();
        let mut next = start;
        for (at, data) in self.segments.range(first..) {
            if *at > next || next >= end {
                break;
            }
            let from = (next - at) as usize;
            let to = ((end - at) as usize).min(data.len());
            out.extend_from_slice(&data[from..to]);
            next = at + to as u64;
        }
        Some(out)
    }
}

enum Decompressor {
    Deflate(Box<Decompress>),
    Zstd(Box<zstd::stream::raw::Decoder<'static>>),
}

impl Decompressor {
    fn new(compression: Compression) -> std::io::Result<Self> {
        Ok(match compression {
            Compression::Deflate => Decompressor::Deflate(Box::new(Decompress::new(false))),
            Compression::Zstd => Decompressor::Zstd(Box::new(zstd::stream::raw::Decoder::new()?)),
        })
    }

    /// Fills `out` entirely from the start of `input` (which may continue past the compressed data, as
    /// the L2 entry only gives an upper bound on its length), like qemu.
    fn cluster(&mut self, input: &[u8], out: &mut [u8]) -> Result<(), String> {
        match self {
            Decompressor::Deflate(inflate) => {
                inflate.reset(false);
                inflate.decompress(input, out, FlushDecompress::Finish).map_err(|e| e.to_string())?;
                match inflate.total_out() {
                    n if n == out.len() as u64 => Ok(()),
                    n => Err(format!("deflate data ended after {n} bytes")),
                }
            }
            Decompressor::Zstd(decoder) => {
                decoder.reinit().map_err(|e| e.to_string())?;
                let mut input = InBuffer::around(input);
                let mut output = OutBuffer::around(out);
                while output.pos() < output.capacity() {
                    let (in_before, out_before) = (input.pos(), output.pos());
                    decoder.run(&mut input, &mut output).map_err(|e| e.to_string())?;
                    if input.pos() == in_before && output.pos() == out_before {
                        return Err(format!("zstd data ended after {} bytes", output.pos()));
                    }
                }
                Ok(())
            }
        }
    }
}

/// The single pass over the image.
struct Stream<'w, 'p, R> {
    reader: R,
    progress: &'p ProgressTracker,
    header: Header,
    info: Qcow2Info,
    writer: &'w mut DiskWriter,
    /// Stream offset of the next byte to read; everything before it has been dispatched.
    position: u64,
    /// Claims by start; they never overlap.
    claims: BTreeMap<u64, Claim>,
    /// L1 and L2 tables among the claims: while any is pending, unclaimed bytes go to the window.
    tables_pending: usize,
    /// The range being parsed as a table: nothing may claim it.
    parsing: Option<(u64, u64, ClaimKind)>,
    /// Compressed host ranges not reached yet, by start.
    compressed: BTreeMap<u64, PendingCompressed>,
    collecting: Vec<Collector>,
    /// Bytes reserved by `collecting`; they and the window share [`WINDOW_BYTES`].
    collecting_bytes: usize,
    /// Guest clusters waiting in `compressed` and `collecting`: bounded like the claims.
    compressed_readers: usize,
    window: Window,
    decompressor: Decompressor,
    cluster_buf: Vec<u8>,
}

impl<'w, 'p, R: Read> Stream<'w, 'p, R> {
    fn new(
        reader: R,
        position: u64,
        header: Header,
        info: Qcow2Info,
        writer: &'w mut DiskWriter,
        progress: &'p ProgressTracker,
    ) -> Result<Self, WriteError> {
        let decompressor = Decompressor::new(header.compression).map_err(|e| read_error(progress, e))?;
        Ok(Stream {
            reader,
            progress,
            cluster_buf: vec![0; header.cluster_bytes() as usize],
            header,
            info,
            writer,
            position,
            claims: BTreeMap::new(),
            tables_pending: 0,
            parsing: None,
            compressed: BTreeMap::new(),
            collecting: Vec::new(),
            collecting_bytes: 0,
            compressed_readers: 0,
            window: Window::default(),
            decompressor,
        })
    }

    fn run(mut self) -> Result<(), WriteError> {
        if self.header.l1_entries > 0 {
            let l1_bytes = self.header.l1_entries * 8;
            self.claim(self.header.l1_offset, l1_bytes, ClaimKind::L1 { first_index: 0 }, 0)?;
        }
        while !self.claims.is_empty() || !self.compressed.is_empty() || !self.collecting.is_empty() {
            if !self.step()? {
                break;
            }
        }
        Ok(())
    }

    /// Reads and dispatches the next piece of the stream: up to the next claim boundary. False at the end.
    fn step(&mut self) -> Result<bool, WriteError> {
        let start = self.position;
        let (len, claimed) = match self.claims.first_key_value() {
            Some((&claim_start, claim)) if claim_start == start => (claim.end - start, true),
            Some((&claim_start, _)) => (claim_start - start, false),
            None => (u64::MAX, false),
        };
        let len = len.min(CHUNK_BYTES as u64) as usize;
        let mut buf = self.writer.take_buffer()?;
        let got = match fill(&mut self.reader, &mut buf[..len]) {
            Ok(got) => got,
            Err(e) => {
                self.writer.recycle(buf);
                return Err(read_error(self.progress, e));
            }
        };
        if got == 0 {
            self.writer.recycle(buf);
            self.end_of_image()?;
            return Ok(false);
        }
        let end = start + got as u64;
        let data = &buf[..got];
        if !claimed {
            if self.tables_pending > 0 {
                self.window.push(start, data, WINDOW_BYTES - self.collecting_bytes);
            }
            self.feed_compressed(start, data)?;
            self.position = end;
            self.writer.recycle(buf);
            return Ok(true);
        }
        let (_, claim) = self.claims.pop_first().expect("the claim just looked at");
        if claim.kind.is_table() {
            self.tables_pending -= 1;
        }
        if end < claim.end {
            self.insert(end, claim.advanced(got as u64, self.header.cluster_bytes()))?;
        }
        match claim.kind {
            ClaimKind::Data { guest } => {
                self.feed_compressed(start, data)?;
                self.position = end;
                let len = self.guest_len(guest, got as u64) as usize;
                self.writer.submit(guest, buf, len)
            }
            kind => {
                self.parsing = Some((start, end, kind));
                let parsed = self.parse_table(kind, start, data);
                self.parsing = None;
                parsed?;
                self.feed_compressed(start, data)?;
                self.position = end;
                self.writer.recycle(buf);
                Ok(())
            }
        }?;
        Ok(true)
    }

    /// How many of `len` guest bytes from `guest` lie inside the virtual disk.
    fn guest_len(&self, guest: u64, len: u64) -> u64 {
        len.min(self.header.virtual_size.saturating_sub(guest))
    }

    fn parse_table(&mut self, kind: ClaimKind, at: u64, data: &[u8]) -> Result<(), WriteError> {
        match kind {
            ClaimKind::L1 { first_index } => self.parse_l1(first_index, at, data),
            ClaimKind::L2 { guest } => self.parse_l2(guest, at, data),
            ClaimKind::Data { guest } => {
                let len = self.guest_len(guest, data.len() as u64) as usize;
                self.writer.write(guest, &data[..len])
            }
        }
    }

    fn parse_l1(&mut self, first_index: u64, at: u64, data: &[u8]) -> Result<(), WriteError> {
        let coverage = self.header.l2_coverage();
        for (i, raw) in data.chunks_exact(8).enumerate() {
            let guest = (first_index + i as u64) * coverage;
            if guest >= self.header.virtual_size {
                break;
            }
            let entry_at = at + 8 * i as u64;
            let value = be64(raw, 0);
            let invalid = |reason: String| Qcow2Error::InvalidEntry { table: "L1", guest, at: entry_at, reason };
            let entry = L1Entry::try_from_plain(value, &self.info).map_err(|e| invalid(e.to_string()))?;
            if value & 1 != 0 {
                return Err(invalid(format!("reserved bit 0 set in {value:#x}")).into());
            }
            match entry.l2_offset() {
                0 => self.writer.write_zeros(guest, self.guest_len(guest, coverage))?,
                l2_offset => {
                    let cluster = self.header.cluster_bytes();
                    self.claim(l2_offset, cluster, ClaimKind::L2 { guest }, entry_at)?;
                }
            }
        }
        Ok(())
    }

    fn parse_l2(&mut self, first_guest: u64, at: u64, data: &[u8]) -> Result<(), WriteError> {
        let cluster = self.header.cluster_bytes();
        let mut zeros: Option<(u64, u64)> = None;
        for (i, raw) in data.chunks_exact(8).enumerate() {
            let guest = first_guest + i as u64 * cluster;
            if guest >= self.header.virtual_size {
                break;
            }
            let entry_at = at + 8 * i as u64;
            let value = be64(raw, 0);
            let invalid = |reason: String| Qcow2Error::InvalidEntry { table: "L2", guest, at: entry_at, reason };
            let entry = L2Entry::try_from_plain(value, &self.info).map_err(|e| invalid(e.to_string()))?;
            if let Some((offset, len)) = entry.compressed_range(self.header.cluster_bits) {
                if offset < cluster {
                    return Err(invalid(format!("compressed data at host offset {offset}, inside the header")).into());
                }
                self.claim_compressed(offset, len as u64, guest, entry_at)?;
            } else if entry.is_zero() || entry.cluster_offset() == 0 {
                if entry.is_zero() && self.header.version == 2 {
                    return Err(
                        invalid(format!("zero flag set in {value:#x}, which version 2 images do not have")).into()
                    );
                }
                if !entry.is_zero() && entry.is_copied() {
                    return Err(invalid(format!("{value:#x} maps to host offset 0")).into());
                }
                let len = self.guest_len(guest, cluster);
                zeros = match zeros {
                    Some((start, run)) if start + run == guest => Some((start, run + len)),
                    previous => {
                        self.write_zero_run(previous)?;
                        Some((guest, len))
                    }
                };
                continue;
            } else {
                self.claim(entry.cluster_offset(), cluster, ClaimKind::Data { guest }, entry_at)?;
            }
            self.write_zero_run(zeros.take())?;
        }
        self.write_zero_run(zeros)
    }

    fn write_zero_run(&mut self, run: Option<(u64, u64)>) -> Result<(), WriteError> {
        match run {
            Some((guest, len)) => self.writer.write_zeros(guest, len),
            None => Ok(()),
        }
    }

    /// Registers that `len` bytes at `start` are `kind`: served from the window if the stream passed them.
    fn claim(&mut self, start: u64, len: u64, kind: ClaimKind, referenced_at: u64) -> Result<(), WriteError> {
        let end = start + len;
        if let Some((busy_start, busy_end, busy_kind)) = self.parsing {
            if start < busy_end && busy_start < end {
                return Err(overlap(kind, start, busy_kind, busy_start));
            }
        }
        if start >= self.position {
            return self.insert(start, Claim { end, kind, referenced_at });
        }
        let passed_end = end.min(self.position);
        let bytes = self.window.copy(start, passed_end).filter(|b| b.len() as u64 == passed_end - start);
        let Some(bytes) = bytes else {
            return Err(Qcow2Error::NotStreamable {
                what: kind.describe(),
                offset: start,
                referenced_at,
                window_mib: WINDOW_BYTES >> 20,
            }
            .into());
        };
        self.parse_table(kind, start, &bytes)?;
        if end > passed_end {
            let claim = Claim { end, kind, referenced_at };
            self.insert(passed_end, claim.advanced(passed_end - start, self.header.cluster_bytes()))?;
        }
        Ok(())
    }

    /// Adds a claim on bytes not read yet, merging data clusters that continue the previous claim.
    fn insert(&mut self, start: u64, claim: Claim) -> Result<(), WriteError> {
        if let Some((&next_start, next)) = self.claims.range(start..).next() {
            if next_start < claim.end {
                return Err(overlap(claim.kind, start, next.kind, next_start));
            }
        }
        if let Some((&previous_start, previous)) = self.claims.range_mut(..start).next_back() {
            if previous.end > start {
                return Err(overlap(claim.kind, start, previous.kind, previous_start));
            }
            if let (ClaimKind::Data { guest: previous_guest }, ClaimKind::Data { guest }) = (previous.kind, claim.kind)
            {
                let clusters = (start - previous_start) / self.header.cluster_bytes();
                let continues = previous_guest + (start - previous_start) == guest
                    && previous.referenced_at + clusters * 8 == claim.referenced_at;
                if previous.end == start && continues {
                    previous.end = claim.end;
                    return Ok(());
                }
            }
        }
        self.check_pending()?;
        if claim.kind.is_table() {
            self.tables_pending += 1;
        }
        self.claims.insert(start, claim);
        Ok(())
    }

    fn check_pending(&self) -> Result<(), WriteError> {
        if self.claims.len() + self.compressed_readers >= MAX_PENDING {
            return Err(Qcow2Error::TooManyPending { limit: MAX_PENDING, position: self.position }.into());
        }
        Ok(())
    }

    fn claim_compressed(&mut self, start: u64, len: u64, guest: u64, referenced_at: u64) -> Result<(), WriteError> {
        self.check_pending()?;
        if start >= self.position {
            let pending = self.compressed.entry(start).or_insert(PendingCompressed { len, readers: Vec::new() });
            pending.len = pending.len.max(len);
            pending.readers.push((guest, referenced_at));
            self.compressed_readers += 1;
            return Ok(());
        }
        if let Some(i) = self.collecting.iter().position(|collector| collector.start == start) {
            let grow = len.saturating_sub(self.collecting[i].len);
            self.reserve(start, grow)?;
            let collector = &mut self.collecting[i];
            collector.len += grow;
            collector.readers.push((guest, referenced_at));
            self.compressed_readers += 1;
            return Ok(());
        }
        let passed_end = (start + len).min(self.position);
        let Some(bytes) = self.window.copy(start, passed_end) else {
            return Err(Qcow2Error::NotStreamable {
                what: format!("compressed cluster for guest offset {guest}"),
                offset: start,
                referenced_at,
                window_mib: WINDOW_BYTES >> 20,
            }
            .into());
        };
        let complete = bytes.len() as u64 == len;
        let continues = start + bytes.len() as u64 == self.position;
        let readers = vec![(guest, referenced_at)];
        if complete || !continues {
            // All the window holds: the compressed data may well end before the upper bound.
            return self.decompress(start, &bytes, &readers, false);
        }
        self.reserve(start, len)?;
        let mut reserved = Vec::with_capacity(len as usize);
        reserved.extend_from_slice(&bytes);
        self.compressed_readers += 1;
        self.collecting.push(Collector { start, len, readers, bytes: reserved });
        Ok(())
    }

    /// Takes `len` bytes from the budget collectors share with the window, or fails naming the offsets.
    fn reserve(&mut self, start: u64, len: u64) -> Result<(), WriteError> {
        let available = (WINDOW_BYTES - self.collecting_bytes) as u64;
        if len > available {
            let mut offsets: Vec<String> = self.collecting.iter().take(8).map(|c| c.start.to_string()).collect();
            if self.collecting.len() > offsets.len() {
                offsets.push(format!("{} more", self.collecting.len() - offsets.len()));
            }
            offsets.push(start.to_string());
            return Err(Qcow2Error::CompressedOverBudget {
                offsets: offsets.join(", "),
                limit_mib: WINDOW_BYTES >> 20,
            }
            .into());
        }
        self.collecting_bytes += len as usize;
        self.window.shrink_to(WINDOW_BYTES - self.collecting_bytes);
        Ok(())
    }

    /// Hands `data` (stream bytes from `start`) to the compressed clusters that cover it: those begun
    /// earlier first, then those starting in it, in order, so that finished ones return their budget.
    fn feed_compressed(&mut self, start: u64, data: &[u8]) -> Result<(), WriteError> {
        let end = start + data.len() as u64;
        let mut i = 0;
        while i < self.collecting.len() {
            if self.fill_collector(i, start, data)? {
                i += 1;
            }
        }
        while let Some(entry) = self.compressed.first_entry().filter(|entry| *entry.key() < end) {
            let (cluster_start, PendingCompressed { len, readers }) = entry.remove_entry();
            debug_assert!(cluster_start >= start, "pending compressed data the stream passed");
            if cluster_start + len <= end {
                let bytes = &data[(cluster_start - start) as usize..(cluster_start + len - start) as usize];
                self.compressed_readers -= readers.len();
                self.decompress(cluster_start, bytes, &readers, false)?;
                continue;
            }
            self.reserve(cluster_start, len)?;
            self.collecting.push(Collector {
                start: cluster_start,
                len,
                readers,
                bytes: Vec::with_capacity(len as usize),
            });
            self.fill_collector(self.collecting.len() - 1, start, data)?;
        }
        Ok(())
    }

    /// Adds what `data` holds for collector `i`; decompresses and removes it once complete. True if it
    /// is still collecting.
    fn fill_collector(&mut self, i: usize, start: u64, data: &[u8]) -> Result<bool, WriteError> {
        let end = start + data.len() as u64;
        let collector = &mut self.collecting[i];
        let from = collector.start + collector.bytes.len() as u64;
        let to = (collector.start + collector.len).min(end);
        if from < to {
            collector.bytes.extend_from_slice(&data[(from - start) as usize..(to - start) as usize]);
        }
        if (collector.bytes.len() as u64) < collector.len {
            return Ok(true);
        }
        let collector = self.collecting.swap_remove(i);
        self.finish_collector(collector, false)?;
        Ok(false)
    }

    fn finish_collector(&mut self, collector: Collector, at_end: bool) -> Result<(), WriteError> {
        self.collecting_bytes -= collector.len as usize;
        self.compressed_readers -= collector.readers.len();
        self.decompress(collector.start, &collector.bytes, &collector.readers, at_end)
    }

    /// Decompresses the cluster at host offset `start` once and writes it for every guest cluster that reads it.
    fn decompress(&mut self, start: u64, bytes: &[u8], readers: &[(u64, u64)], at_end: bool) -> Result<(), WriteError> {
        let (guest, referenced_at) = readers[0];
        if let Err(reason) = self.decompressor.cluster(bytes, &mut self.cluster_buf) {
            return Err(if at_end {
                Qcow2Error::Truncated {
                    what: format!("compressed cluster for guest offset {guest}"),
                    offset: start,
                    referenced_at,
                    image_bytes: self.position,
                }
            } else {
                Qcow2Error::Decompress { guest, offset: start, cluster_bytes: self.header.cluster_bytes(), reason }
            }
            .into());
        }
        for &(guest, _) in readers {
            let len = self.guest_len(guest, self.header.cluster_bytes()) as usize;
            self.writer.write(guest, &self.cluster_buf[..len])?;
        }
        Ok(())
    }

    /// The stream ended: compressed clusters may end with it, anything else still awaited is missing.
    fn end_of_image(&mut self) -> Result<(), WriteError> {
        for collector in std::mem::take(&mut self.collecting) {
            self.finish_collector(collector, true)?;
        }
        let image_bytes = self.position;
        if let Some((&offset, claim)) = self.claims.first_key_value() {
            let (what, referenced_at) = (claim.kind.describe(), claim.referenced_at);
            return Err(Qcow2Error::Truncated { what, offset, referenced_at, image_bytes }.into());
        }
        if let Some((&offset, PendingCompressed { readers, .. })) = self.compressed.first_key_value() {
            let (guest, referenced_at) = readers[0];
            let what = format!("compressed cluster for guest offset {guest}");
            return Err(Qcow2Error::Truncated { what, offset, referenced_at, image_bytes }.into());
        }
        Ok(())
    }
}

fn overlap(kind: ClaimKind, offset: u64, other: ClaimKind, other_offset: u64) -> WriteError {
    Qcow2Error::Overlap { what: kind.describe(), offset, other: other.describe(), other_offset }.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::testing::*;
    use crate::image::{WriteReport, HEAD_BYTES};
    use crate::target::Fault;
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    const MIB: u64 = 1 << 20;

    /// xorshift: reproducible bytes that do not compress.
    fn random_bytes(buf: &mut [u8], seed: u64) {
        let mut state = seed | 1;
        for chunk in buf.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
    }

    /// A raw disk of `len` bytes, per MiB in turn: random data, compressible text, a hole with a 4 KiB
    /// island of data off any cluster boundary, explicit zeros; the last bytes are data.
    fn raw_source(path: &Path, len: u64) {
        let file = std::fs::File::create(path).unwrap();
        file.set_len(len).unwrap();
        let mut block = vec![0u8; MIB as usize];
        for (i, start) in (0..len).step_by(MIB as usize).enumerate() {
            let block_len = (len - start).min(MIB) as usize;
            let data = match i % 4 {
                0 => {
                    random_bytes(&mut block[..block_len], start + 1);
                    &block[..block_len]
                }
                1 => {
                    let text: Vec<u8> = (0..)
                        .flat_map(|line| format!("line {line} of MiB {i}: ferric\n").into_bytes())
                        .take(block_len)
                        .collect();
                    block[..block_len].copy_from_slice(&text);
                    &block[..block_len]
                }
                2 => {
                    let island = 4096.min(block_len);
                    random_bytes(&mut block[..island], start + 2);
                    file.write_all_at(&block[..island], start + (300 << 10).min(block_len as u64 - island as u64))
                        .unwrap();
                    continue;
                }
                _ => {
                    block.fill(0);
                    &block[..block_len]
                }
            };
            file.write_all_at(data, start).unwrap();
        }
        let tail = 1000.min(len as usize);
        file.write_all_at(&vec![0x42; tail], len - tail as u64).unwrap();
    }

    use std::os::unix::fs::FileExt;

    fn qemu_img(args: &[&str]) {
        run("qemu-img", Command::new("qemu-img").args(args));
    }

    fn path_str(path: &Path) -> &str {
        path.to_str().unwrap()
    }

    /// `qemu-img convert -O raw`: what the written disk must hold.
    fn reference_raw(image: &Path, dir: &Path) -> PathBuf {
        let raw = dir.join("reference.raw");
        qemu_img(&["convert", "-O", "raw", path_str(image), path_str(&raw)]);
        raw
    }

    fn header_of(image: &Path) -> Header {
        let mut head = vec![0u8; 64 << 10];
        let n = fill(&mut std::fs::File::open(image).unwrap(), &mut head).unwrap();
        inspect(&head[..n]).unwrap()
    }

    fn compress(container: &str, image: &Path) -> PathBuf {
        let data = std::fs::read(image).unwrap();
        let compressed = match container {
            "gzip" => {
                let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(&data).unwrap();
                enc.finish().unwrap()
            }
            "zstd" => zstd::stream::encode_all(&data[..], 3).unwrap(),
            "xz" => {
                let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 1);
                enc.write_all(&data).unwrap();
                enc.finish().unwrap()
            }
            other => panic!("no container {other}"),
        };
        let path = image.with_extension(container);
        std::fs::write(&path, compressed).unwrap();
        path
    }

    /// Writes `image` onto a disk of [`OLD`] bytes 4 MiB larger than the virtual size of `qcow2` (the same
    /// image, or the one `image` is a compressed copy of), compares the disk with qemu-img's raw conversion
    /// of `qcow2` and checks nothing past the image changed.
    fn write_and_compare(image: &Path, qcow2: &Path, dir: &Path, fault: Option<Fault>) -> WriteReport {
        let reference = reference_raw(qcow2, dir);
        let virtual_size = std::fs::metadata(&reference).unwrap().len();
        let disk = old_disk(virtual_size + 4 * MIB);
        let report = write_file(image, disk.path(), fault).unwrap();
        assert_eq!(report.image_bytes, virtual_size);
        assert_same_prefix(disk.path(), &reference, virtual_size);
        let written = std::fs::read(disk.path()).unwrap();
        let untouched = &written[virtual_size.next_multiple_of(4096) as usize..written.len() - HEAD_BYTES];
        assert!(untouched.iter().all(|b| *b == OLD), "bytes past the virtual size changed");
        report
    }

    /// The share of compressed clusters `qemu-img check` reports.
    fn compressed_percent(image: &Path) -> f64 {
        let check = run("qemu-img check", Command::new("qemu-img").arg("check").arg(image));
        let line = check.lines().find(|l| l.contains("compressed clusters")).expect("qemu-img check statistics");
        let percent = line.split(", ").last().and_then(|p| p.split('%').next()).unwrap();
        percent.parse().unwrap()
    }

    #[test]
    fn qemu_img_images_are_written_byte_for_byte() {
        struct Case {
            name: &'static str,
            options: &'static [&'static str],
            version: u32,
            cluster_bits: u32,
            compression: Compression,
            compressed_clusters: bool,
        }
        let case = |name, options, version, cluster_bits, compression, compressed_clusters| Case {
            name,
            options,
            version,
            cluster_bits,
            compression,
            compressed_clusters,
        };
        let cases = [
            case("v2", &["-o", "compat=0.10"], 2, 16, Compression::Deflate, false),
            case("v3", &["-o", "compat=1.1"], 3, 16, Compression::Deflate, false),
            case("v2 deflate", &["-c", "-o", "compat=0.10"], 2, 16, Compression::Deflate, true),
            case("v3 deflate", &["-c"], 3, 16, Compression::Deflate, true),
            case("v3 zstd", &["-c", "-o", "compression_type=zstd"], 3, 16, Compression::Zstd, true),
            case("512 B clusters", &["-o", "cluster_size=512"], 3, 9, Compression::Deflate, false),
            case("4 KiB clusters", &["-o", "cluster_size=4096"], 3, 12, Compression::Deflate, false),
            case("4 KiB deflate", &["-c", "-o", "cluster_size=4096"], 3, 12, Compression::Deflate, true),
            case("2 MiB clusters", &["-o", "cluster_size=2M"], 3, 21, Compression::Deflate, false),
            case("2 MiB zstd", &["-c", "-o", "cluster_size=2M,compression_type=zstd"], 3, 21, Compression::Zstd, true),
        ];
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("source.raw");
        let raw_len = 24 * MIB + 1536;
        raw_source(&raw, raw_len);
        for case in cases {
            let image = dir.path().join("image.qcow2");
            let mut args = vec!["convert", "-O", "qcow2"];
            args.extend_from_slice(case.options);
            args.extend([path_str(&raw), path_str(&image)]);
            qemu_img(&args);
            let header = header_of(&image);
            let expected = (case.version, case.cluster_bits, case.compression, raw_len);
            assert_eq!(
                (header.version, header.cluster_bits, header.compression, header.virtual_size),
                expected,
                "{}",
                case.name
            );
            let image_len = std::fs::metadata(&image).unwrap().len();
            assert_eq!(compressed_percent(&image) > 0.0, case.compressed_clusters, "{}", case.name);
            for fault in [None, Some(Fault::NoFastZeroing)] {
                let report = write_and_compare(&image, &image, dir.path(), fault);
                assert_eq!(report.format, "qcow2", "{}", case.name);
                assert_eq!(report.source_bytes, image_len, "{}", case.name);
            }
        }
    }

    #[test]
    fn compressed_qcow2_images_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("source.raw");
        raw_source(&raw, 8 * MIB);
        let image = dir.path().join("image.qcow2");
        qemu_img(&["convert", "-O", "qcow2", "-c", path_str(&raw), path_str(&image)]);
        for container in ["gzip", "zstd", "xz"] {
            let compressed = compress(container, &image);
            let report = write_and_compare(&compressed, &image, dir.path(), None);
            assert_eq!(report.format, format!("qcow2 ({container})"));
            assert_eq!(report.source_bytes, std::fs::metadata(&compressed).unwrap().len());
        }
    }

    #[test]
    fn zero_clusters_read_as_zeros_even_where_the_disk_held_data() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("zero.qcow2");
        qemu_img(&["create", "-f", "qcow2", path_str(&image), "8M"]);
        let script = ["write -P 0x5a 0 6M", "write -z 1M 1M", "write -z -u 3M 1M"];
        let mut qemu_io = Command::new("qemu-io");
        for command in script {
            qemu_io.args(["-c", command]);
        }
        run("qemu-io", qemu_io.arg(&image));
        let map = run("qemu-img map", Command::new("qemu-img").args(["map", "--output=json"]).arg(&image));
        let zero_ranges =
            map.lines().filter(|l| l.contains("\"zero\": true") && l.contains("\"present\": true")).count();
        assert!(zero_ranges >= 2, "qemu-io made no zero clusters: {map}");
        for fault in [None, Some(Fault::NoFastZeroing)] {
            write_and_compare(&image, &image, dir.path(), fault);
        }
    }

    #[test]
    fn sparse_image_with_several_l2_tables_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("sparse.raw");
        let len = 1100 * MIB;
        let file = std::fs::File::create(&raw).unwrap();
        file.set_len(len).unwrap();
        let mut block = vec![0u8; 256 << 10];
        for (i, offset) in [0, 600 * MIB + 4096, len - block.len() as u64].into_iter().enumerate() {
            random_bytes(&mut block, i as u64 + 7);
            file.write_all_at(&block, offset).unwrap();
        }
        let image = dir.path().join("sparse.qcow2");
        qemu_img(&["convert", "-O", "qcow2", path_str(&raw), path_str(&image)]);
        assert!(header_of(&image).l1_entries >= 3, "one L2 table maps 512 MiB");
        write_and_compare(&image, &image, dir.path(), None);
    }

    /// A 4 MiB image of 0x5a bytes from qemu-img, and where its first L2 table is.
    fn base_image(dir: &Path) -> (Vec<u8>, usize) {
        let raw = dir.join("base.raw");
        std::fs::write(&raw, vec![0x5a; 4 * MIB as usize]).unwrap();
        let image = dir.join("base.qcow2");
        qemu_img(&["convert", "-O", "qcow2", path_str(&raw), path_str(&image)]);
        let bytes = std::fs::read(&image).unwrap();
        let l1 = be64(&bytes, 40) as usize;
        let l2 = (be64(&bytes, l1) & 0x00ff_ffff_ffff_fe00) as usize;
        assert!(l2 > l1, "qemu-img puts the L2 table after the L1 table");
        (bytes, l2)
    }

    fn set_be32(buf: &mut [u8], at: usize, value: u32) {
        buf[at..at + 4].copy_from_slice(&value.to_be_bytes());
    }

    fn set_be64(buf: &mut [u8], at: usize, value: u64) {
        buf[at..at + 8].copy_from_slice(&value.to_be_bytes());
    }

    /// Writes `image` onto a 16 MiB disk and returns the error and the disk afterwards.
    fn write_bytes_expecting_error(image: &[u8]) -> (WriteError, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        std::fs::write(&path, image).unwrap();
        let disk = old_disk(16 * MIB);
        let err = write_file(&path, disk.path(), None).expect_err("the image must be refused");
        (err, std::fs::read(disk.path()).unwrap())
    }

    #[test]
    fn hostile_headers_are_refused_before_anything_is_written() {
        type Patch = fn(&mut Vec<u8>, usize);
        let cases: [(&str, Patch, &str); 19] = [
            (
                "truncated header",
                |h, _| h.truncate(50),
                "header is truncated: the image has 50 bytes, the header needs 104",
            ),
            ("version 4", |h, _| set_be32(h, 4, 4), "version 4 is not supported"),
            ("512 B clusters claimed, 256 B clusters", |h, _| set_be32(h, 20, 8), "cluster_bits = 8"),
            ("4 MiB clusters", |h, _| set_be32(h, 20, 22), "cluster_bits = 22"),
            ("corrupt bit", |h, _| h[79] |= 2, "marked corrupt"),
            ("unknown incompatible bit", |h, _| h[79] |= 1 << 7, "unknown incompatible features: bit 7"),
            ("extended L2 bit", |h, _| h[79] |= 1 << 4, "extended L2 entries"),
            ("external data file bit", |h, _| h[79] |= 1 << 2, "external data file"),
            ("AES encryption", |h, _| set_be32(h, 32, 1), "encrypted (AES-CBC)"),
            (
                "backing file",
                |h, _| {
                    set_be64(h, 8, 4000);
                    set_be32(h, 16, 9);
                    h[4000..4009].copy_from_slice(b"base.img\0");
                },
                "backing file (\"base.img\\0\")",
            ),
            ("header_length not a multiple of 8", |h, _| set_be32(h, 100, 105), "header_length = 105"),
            ("refcount_order 7", |h, _| set_be32(h, 96, 7), "refcount_order = 7"),
            ("compression bit without a type", |h, _| h[79] |= 1 << 3, "compression_type = 0"),
            ("L1 table in the header", |h, _| set_be64(h, 40, 0), "overlap the header cluster"),
            ("L1 table not aligned", |h, _| set_be64(h, 40, 3 << 16 | 512), "not aligned to a cluster"),
            ("L1 table of 4 G entries", |h, _| set_be32(h, 36, u32::MAX), "larger than 32 MiB"),
            ("L1 table too small", |h, _| set_be32(h, 36, 0), "too small to map the virtual size"),
            (
                "extension past the header cluster",
                |h, _| {
                    let at = be32(h, 100) as usize;
                    set_be32(h, at, 0x1234_5678);
                    set_be32(h, at + 4, 1 << 20);
                },
                "header extension 0x12345678",
            ),
            (
                "feature name table of 49 bytes",
                |h, _| {
                    let at = be32(h, 100) as usize;
                    set_be32(h, at, EXTENSION_FEATURE_NAMES);
                    set_be32(h, at + 4, 49);
                },
                "not a multiple of 48",
            ),
        ];
        let dir = tempfile::tempdir().unwrap();
        let (base, l2) = base_image(dir.path());
        for (name, patch, message) in cases {
            let mut image = base.clone();
            patch(&mut image, l2);
            let (err, disk) = write_bytes_expecting_error(&image);
            assert!(matches!(err, WriteError::Qcow2(_)), "{name}: {err}");
            assert!(err.to_string().contains(message), "{name}: {err}");
            assert_only_wiped(&disk);
        }
    }

    #[test]
    fn hostile_tables_are_refused_with_the_offsets_named() {
        type Patch = fn(&mut Vec<u8>, usize);
        // (name, patch, message, whether data of other clusters may have reached the disk)
        let cases: [(&str, Patch, &str, bool); 5] = [
            ("L2 entry with reserved bits", |h, l2| h[l2 + 7] |= 2, "reserved bits set", false),
            (
                "L1 entry past the end",
                |h, _| {
                    let l1 = be64(h, 40) as usize;
                    set_be64(h, l1, 1 << 40)
                },
                "lies beyond the end of the image",
                false,
            ),
            (
                "compressed descriptor past the end",
                |h, l2| set_be64(h, l2 + 8, 1 << 62 | 3 << 54 | 1 << 40),
                "compressed cluster for guest offset 65536 at host offset 1099511627776 (referenced at host offset",
                true,
            ),
            (
                "data mapped onto the L1 table",
                |h, l2| {
                    let l1 = be64(h, 40);
                    set_be64(h, l2, 1 << 63 | l1)
                },
                "data for guest offset 0 at host offset 196608 is referenced by the table at host offset 262144",
                false,
            ),
            (
                "two guest clusters on one host cluster",
                |h, l2| {
                    let first = be64(h, l2 + 16);
                    set_be64(h, l2 + 24, first);
                },
                "data for guest offset 196608 at host offset 458752 overlaps data for guest offset 0 at host offset 327680",
                false,
            ),
        ];
        let dir = tempfile::tempdir().unwrap();
        let (base, l2) = base_image(dir.path());
        assert_eq!((be64(&base, 40), l2), (3 << 16, 4 << 16), "the layout the messages name");
        for (name, patch, message, data_written) in cases {
            let mut image = base.clone();
            patch(&mut image, l2);
            let (err, disk) = write_bytes_expecting_error(&image);
            assert!(matches!(err, WriteError::Qcow2(_)), "{name}: {err}");
            assert!(err.to_string().contains(message), "{name}: {err}");
            assert_no_partition_table(&disk);
            if !data_written {
                assert!(!disk.contains(&0x5a), "{name}: image data reached the disk");
            }
        }
    }

    #[test]
    fn images_needing_other_files_or_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
        qemu_img(&["create", "-f", "qcow2", &p("base.qcow2"), "4M"]);
        let secret = "secret,id=sec0,data=ferric";
        let cases: [(&str, Vec<&str>, &str); 5] = [
            ("backing file", vec!["-b", "base.qcow2", "-F", "qcow2"], "backing file (\"base.qcow2\")"),
            ("external data file", vec!["-o", "data_file=data.raw"], "external data file (\"data.raw\")"),
            (
                "AES encryption",
                vec!["--object", secret, "-o", "encrypt.format=aes,encrypt.key-secret=sec0"],
                "encrypted (AES-CBC)",
            ),
            (
                "LUKS encryption",
                vec!["--object", secret, "-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10"],
                "encrypted (LUKS)",
            ),
            ("extended L2 entries", vec!["-o", "extended_l2=on"], "extended L2 entries"),
        ];
        for (name, options, message) in cases {
            let image = p("image.qcow2");
            // qemu's LUKS key-derivation benchmark often measures 0 ms of CPU time here and gives up.
            for attempt in 1.. {
                let mut create = Command::new("qemu-img");
                create.current_dir(dir.path()).args(["create", "-f", "qcow2"]).args(&options).args([&image, "4M"]);
                match ferric_runner::run("qemu-img create", &mut create) {
                    Ok(_) => break,
                    Err(e) if attempt < 30 && e.to_string().contains("accurate CPU usage") => {}
                    Err(e) => panic!("{name}: {e}"),
                }
            }
            let (err, disk) = write_bytes_expecting_error(&std::fs::read(&image).unwrap());
            assert!(err.to_string().contains(message), "{name}: {err}");
            assert_only_wiped(&disk);
        }
    }

    #[test]
    fn virtual_size_larger_than_the_target_is_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("big.qcow2");
        qemu_img(&["create", "-f", "qcow2", path_str(&image), "17M"]);
        let (err, disk) = write_bytes_expecting_error(&std::fs::read(&image).unwrap());
        assert!(matches!(err, WriteError::TargetTooSmall { needed, .. } if needed == 17 * MIB), "{err}");
        assert_only_wiped(&disk);
    }

    #[test]
    fn write_failures_during_a_qcow2_write_leave_no_partition_table() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("source.raw");
        raw_source(&raw, 12 * MIB);
        for options in [&[][..], &["-c"][..]] {
            let image = dir.path().join("image.qcow2");
            qemu_img(&[&["convert", "-O", "qcow2"], options, &[path_str(&raw), path_str(&image)]].concat());
            for fault in [Fault::EioAfter(2 * MIB), Fault::ShortWriteAfter(2 * MIB + 100)] {
                let disk = old_disk(16 * MIB);
                let err = write_file(&image, disk.path(), Some(fault)).unwrap_err();
                assert!(matches!(err, WriteError::Write { .. }), "{options:?} {fault:?}: {err}");
                assert_no_partition_table(&std::fs::read(disk.path()).unwrap());
            }
        }
    }

    #[test]
    fn corrupted_qcow2_download_fails_the_checksum_and_leaves_no_partition_table() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("source.raw");
        raw_source(&raw, 8 * MIB);
        let image = dir.path().join("image.qcow2");
        qemu_img(&["convert", "-O", "qcow2", path_str(&raw), path_str(&image)]);
        let expected = sha256_file(&image);
        let mut bytes = std::fs::read(&image).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&image, bytes).unwrap();
        let disk = old_disk(16 * MIB);
        let err = write_file_expecting(&image, &expected, disk.path(), None).unwrap_err();
        assert!(matches!(err, WriteError::ChecksumMismatch { .. }), "{err}");
        assert_no_partition_table(&std::fs::read(disk.path()).unwrap());
    }

    /// Hand-made v3 images (64 KiB clusters, 4 MiB virtual) with layouts qemu-img does not produce.
    struct Synthetic {
        bytes: Vec<u8>,
    }

    const CLUSTER: u64 = 64 << 10;

    impl Synthetic {
        fn new(l1_offset: u64) -> Synthetic {
            let mut bytes = vec![0u8; CLUSTER as usize];
            bytes[..4].copy_from_slice(b"QFI\xfb");
            set_be32(&mut bytes, 4, 3);
            set_be32(&mut bytes, 20, 16);
            set_be64(&mut bytes, 24, 4 * MIB);
            set_be32(&mut bytes, 36, 1);
            set_be64(&mut bytes, 40, l1_offset);
            set_be32(&mut bytes, 96, 4);
            set_be32(&mut bytes, 100, 104);
            Synthetic { bytes }
        }

        fn put(&mut self, offset: u64, data: &[u8]) {
            let end = offset as usize + data.len();
            if self.bytes.len() < end {
                self.bytes.resize(end, 0);
            }
            self.bytes[offset as usize..end].copy_from_slice(data);
        }

        fn l1(&mut self, at: u64, l2: u64) {
            self.put(at, &(1 << 63 | l2).to_be_bytes());
        }

        /// An L2 table at `at` mapping guest cluster i to `data[i]` (0: unallocated).
        fn l2(&mut self, at: u64, data: &[u64]) {
            let mut table = vec![0u8; CLUSTER as usize];
            for (i, host) in data.iter().enumerate().filter(|(_, host)| **host != 0) {
                set_be64(&mut table, 8 * i, 1 << 63 | host);
            }
            self.put(at, &table);
        }

        /// A data cluster at `at` filled with `byte`.
        fn data(&mut self, at: u64, byte: u8) {
            self.put(at, &[byte; CLUSTER as usize]);
        }
    }

    /// The guest disk a synthetic image maps: guest cluster i holds `fills[i]`.
    fn expected_guest(fills: &[(usize, u8)]) -> Vec<u8> {
        let mut guest = vec![0u8; 4 * MIB as usize];
        for (cluster, byte) in fills {
            guest[cluster * CLUSTER as usize..(cluster + 1) * CLUSTER as usize].fill(*byte);
        }
        guest
    }

    fn write_synthetic(image: &Synthetic) -> (Result<WriteReport, WriteError>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("synthetic.qcow2");
        std::fs::write(&path, &image.bytes).unwrap();
        let disk = old_disk(8 * MIB);
        let result = write_file(&path, disk.path(), Some(Fault::NoFastZeroing));
        (result, std::fs::read(disk.path()).unwrap())
    }

    #[test]
    fn data_before_its_l2_table_is_kept_within_the_window() {
        // Header, L1, two data clusters, 10 MiB nobody refers to, the L2 table, one more data cluster.
        let mut image = Synthetic::new(CLUSTER);
        let l2 = 4 * CLUSTER + 10 * MIB;
        image.l1(CLUSTER, l2);
        image.data(2 * CLUSTER, 0x11);
        image.data(3 * CLUSTER, 0x22);
        image.put(4 * CLUSTER, &vec![0x99; 10 * MIB as usize]);
        image
            .l2(l2, &[0, 0, 3 * CLUSTER, 2 * CLUSTER, 0, l2 + CLUSTER, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        image.data(l2 + CLUSTER, 0x33);
        let (result, disk) = write_synthetic(&image);
        result.unwrap();
        assert_eq!(&disk[..4 * MIB as usize], &expected_guest(&[(2, 0x22), (3, 0x11), (5, 0x33)])[..]);
    }

    #[test]
    fn l1_table_at_the_end_is_served_from_the_window() {
        let mut image = Synthetic::new(5 * CLUSTER);
        image.l2(CLUSTER, &[2 * CLUSTER, 0, 3 * CLUSTER]);
        image.data(2 * CLUSTER, 0x44);
        image.data(3 * CLUSTER, 0x55);
        image.l1(5 * CLUSTER, CLUSTER);
        let (result, disk) = write_synthetic(&image);
        result.unwrap();
        assert_eq!(&disk[..4 * MIB as usize], &expected_guest(&[(0, 0x44), (2, 0x55)])[..]);
    }

    #[test]
    fn data_too_far_before_its_l2_table_is_not_streamable() {
        let mut image = Synthetic::new(CLUSTER);
        let l2 = 3 * CLUSTER + WINDOW_BYTES as u64 + CLUSTER;
        image.l1(CLUSTER, l2);
        image.data(2 * CLUSTER, 0x11);
        image.put(3 * CLUSTER, &vec![0x99; WINDOW_BYTES + CLUSTER as usize]);
        image.l2(l2, &[2 * CLUSTER]);
        let (result, disk) = write_synthetic(&image);
        let err = result.unwrap_err();
        let message = format!(
            "qcow2 layout not streamable: data for guest offset 0 at host offset 131072 is referenced by the table at host offset {l2}"
        );
        assert!(err.to_string().contains(&message), "{err}");
        assert_only_wiped(&disk);
    }

    #[test]
    fn missing_clusters_at_the_end_are_reported() {
        let mut image = Synthetic::new(CLUSTER);
        image.l1(CLUSTER, 2 * CLUSTER);
        image.l2(2 * CLUSTER, &[3 * CLUSTER, 4 * CLUSTER]);
        image.data(3 * CLUSTER, 0x11);
        let (result, disk) = write_synthetic(&image);
        let err = result.unwrap_err();
        let message = format!(
            "data for guest offset 65536 at host offset 262144 (referenced at host offset {}) lies beyond the end of the image (262144 bytes)",
            2 * CLUSTER + 8
        );
        assert!(err.to_string().contains(&message), "{err}");
        assert_no_partition_table(&disk);
    }

    /// An L2 entry for compressed data at `offset` with `sectors` sectors after the first.
    fn compressed_entry(cluster_bits: u32, offset: u64, sectors: u64) -> u64 {
        1 << 62 | sectors << (62 - (cluster_bits - 8)) | offset
    }

    #[test]
    fn compressed_range_read_by_many_guest_clusters_is_decompressed_once() {
        // 512-byte clusters: 100k guest clusters in 1563 L2 tables, all mapped to one compressed range.
        const GUESTS: u64 = 100_000;
        let (bits, cluster) = (9, 512u64);
        let tables = GUESTS.div_ceil(cluster / 8);
        let l1 = cluster;
        let first_l2 = l1 + (tables * 8).next_multiple_of(cluster);
        let compressed_at = first_l2 + tables * cluster;
        let pattern: Vec<u8> = (0..cluster).map(|i| (i % 7) as u8 + 1).collect();
        let mut deflate = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        deflate.write_all(&pattern).unwrap();
        let deflated = deflate.finish().unwrap();
        let mut image = vec![0u8; (compressed_at + cluster) as usize];
        image[..4].copy_from_slice(b"QFI\xfb");
        set_be32(&mut image, 4, 3);
        set_be32(&mut image, 20, bits);
        set_be64(&mut image, 24, GUESTS * cluster);
        set_be32(&mut image, 36, tables as u32);
        set_be64(&mut image, 40, l1);
        set_be32(&mut image, 96, 4);
        set_be32(&mut image, 100, 104);
        for table in 0..tables {
            set_be64(&mut image, (l1 + 8 * table) as usize, 1 << 63 | (first_l2 + table * cluster));
        }
        for guest in 0..GUESTS {
            set_be64(&mut image, (first_l2 + 8 * guest) as usize, compressed_entry(bits, compressed_at, 0));
        }
        image[compressed_at as usize..compressed_at as usize + deflated.len()].copy_from_slice(&deflated);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("many-readers.qcow2");
        std::fs::write(&path, &image).unwrap();
        let disk = old_disk(GUESTS * cluster + 2 * MIB);
        let started = std::time::Instant::now();
        let report = write_file(&path, disk.path(), None).unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "took {:?}", started.elapsed());
        assert_eq!(report.image_bytes, GUESTS * cluster);
        let written = std::fs::read(disk.path()).unwrap();
        for (i, guest) in written[..(GUESTS * cluster) as usize].chunks(cluster as usize).enumerate() {
            assert_eq!(guest, &pattern[..], "guest cluster {i}");
        }
    }

    #[test]
    fn overlapping_compressed_ranges_beyond_the_memory_budget_are_refused() {
        // 200 compressed ranges of 128 KiB, starting a byte apart, all begun before a data cluster ends
        // the stream's read: holding them all would take 25 MiB.
        const READERS: u64 = 200;
        let mut image = Synthetic::new(CLUSTER);
        set_be64(&mut image.bytes, 24, (READERS + 1) * CLUSTER);
        let data_at = 4 * CLUSTER;
        let mut l2 = vec![data_at];
        l2.extend((0..READERS).map(|i| compressed_entry(16, data_at - READERS + i, 255)));
        image.l1(CLUSTER, 2 * CLUSTER);
        let mut table = vec![0u8; CLUSTER as usize];
        for (i, entry) in l2.iter().enumerate() {
            set_be64(&mut table, 8 * i, *entry | if i == 0 { 1 << 63 } else { 0 });
        }
        image.put(2 * CLUSTER, &table);
        image.data(data_at, 0x11);
        image.put(data_at + CLUSTER, &vec![0x22; 4 * CLUSTER as usize]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("overlapping.qcow2");
        std::fs::write(&path, &image.bytes).unwrap();
        let disk = old_disk(16 * MIB);
        let err = write_file(&path, disk.path(), None).unwrap_err();
        let message = format!("compressed clusters at host offsets {}, {}", data_at - READERS, data_at - READERS + 1);
        assert!(err.to_string().contains(&message), "{err}");
        assert!(err.to_string().contains("more than 16 MiB at once"), "{err}");
        assert_no_partition_table(&std::fs::read(disk.path()).unwrap());
    }

    #[test]
    fn l1_table_beyond_the_window_is_refused_before_reading_on() {
        let l1 = WINDOW_BYTES as u64 + CLUSTER;
        let mut image = Synthetic::new(l1);
        image.l1(l1, CLUSTER);
        let (result, disk) = write_synthetic(&image);
        let err = result.unwrap_err();
        let message = format!(
            "qcow2 L1 table at host offset {l1} lies beyond the first 16 MiB: this image cannot be streamed; rewrite it with `qemu-img convert -O qcow2`"
        );
        assert!(err.to_string().contains(&message), "{err}");
        assert_only_wiped(&disk);
    }

    #[test]
    fn inspect_reports_what_streaming_needs() {
        let image = Synthetic::new(CLUSTER);
        let header = inspect(&image.bytes).unwrap();
        let expected = Header {
            version: 3,
            cluster_bits: 16,
            virtual_size: 4 * MIB,
            l1_offset: CLUSTER,
            l1_entries: 1,
            compression: Compression::Deflate,
        };
        assert_eq!(header, expected);
    }
}
