//! Ironic's root-device hints (`properties.root_device`, also the entries of `skip_block_devices`):
//! parsing, validation and matching against the agent's disks.
//!
//! The semantics are IPA's `device_hints.py` over oslo's `specs_matcher`: an expression is stripped
//! and lower-cased; string values are URL-quoted (`urllib.parse.quote`, `/` kept) on the hint side
//! and on the device side before comparing; a hint without an operator means `s==` (strings) or
//! `==` (size); `size` is in GiB, compared as a float with the device's bytes / 2^30; a device whose
//! hinted field is empty never matches; a device must match every hint.
//!
//! Ironic accepts some expressions that can never work in IPA (string operators or `<in>` on `size`,
//! numeric operators on strings: they never match or raise at deploy time). Ferric rejects them when
//! parsing, so the controller refuses them when they are set. Two operators Ironic lists but whose
//! IPA path is broken get their evident meaning: `<range-in>` on `size` (IPA's parser rejects every
//! range) and `<or>` on `size` (IPA compares a float with a string, so it never matches); `<all-in>`
//! on strings means "contains every listed word".

use std::fmt;

use serde_json::Value;

use crate::inventory::Disk;

const GIB: f64 = (1u64 << 30) as f64;

/// A root-device hint that Ironic would refuse (or that could never match).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("invalid root device hint {hint}: {reason}")]
pub struct HintError {
    pub hint: String,
    pub reason: String,
}

impl HintError {
    fn new(hint: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { hint: hint.into(), reason: reason.into() }
    }
}

/// Parsed and normalised hints; matches a disk when every hint does.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RootDeviceHints {
    hints: Vec<Hint>,
}

/// Parses Ironic's `root_device` dict (validates names, types, operators; lower-cases, url-quotes).
/// `null` and `{}` mean no hints.
pub fn parse_root_device_hints(value: &Value) -> Result<RootDeviceHints, HintError> {
    let map = match value {
        Value::Null => return Ok(RootDeviceHints::default()),
        Value::Object(map) => map,
        other => return Err(HintError::new("root_device", format!("must be a JSON object of hints, got {other}"))),
    };
    let mut unknown: Vec<&str> =
        map.keys().map(String::as_str).filter(|name| Field::from_name(name).is_none()).collect();
    unknown.sort_unstable();
    if !unknown.is_empty() {
        let valid: Vec<&str> = Field::ALL.iter().map(|f| f.name()).collect();
        return Err(HintError::new(unknown.join(", "), format!("unknown hint; valid hints are {}", valid.join(", "))));
    }
    let mut hints: Vec<Hint> = map
        .iter()
        .filter_map(|(name, value)| Field::from_name(name).map(|field| (field, value)))
        .map(|(field, value)| {
            let test = match field.kind() {
                Kind::Size => parse_size(value),
                Kind::Text => parse_text(value),
                Kind::Bool => parse_bool(value)
                    .map(Test::Rotational)
                    .ok_or_else(|| format!("{value} is not a boolean (true/false, yes/no, on/off, y/n, t/f, 1/0)")),
            };
            test.map(|test| Hint { field, test }).map_err(|reason| HintError::new(field.name(), reason))
        })
        .collect::<Result<_, _>>()?;
    hints.sort_by_key(|hint| hint.field);
    Ok(RootDeviceHints { hints })
}

/// Every disk matching all hints, in list order (IPA's `find_devices_by_hints`).
pub fn find_devices<'a>(disks: &'a [Disk], hints: &RootDeviceHints) -> Vec<&'a Disk> {
    disks.iter().filter(|disk| hints.matches(disk)).collect()
}

impl RootDeviceHints {
    pub fn is_empty(&self) -> bool {
        self.hints.is_empty()
    }

    pub fn matches(&self, disk: &Disk) -> bool {
        self.hints.iter().all(|hint| hint.matches(disk))
    }
}

/// Ironic's normalised form, e.g. `size: >= 10, model: s== foo%20bar`: what is actually compared.
impl fmt::Display for RootDeviceHints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, hint) in self.hints.iter().enumerate() {
            let separator = if i == 0 { "" } else { ", " };
            write!(f, "{separator}{}: {}", hint.field.name(), hint.test)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Size,
    Text,
    Bool,
}

/// The hints Ironic accepts (`VALID_ROOT_DEVICE_HINTS`). IPA also knows `tran`; Ironic refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Field {
    Size,
    Model,
    Vendor,
    Serial,
    Wwn,
    WwnWithExtension,
    WwnVendorExtension,
    Name,
    Hctl,
    ByPath,
    Rotational,
}

impl Field {
    const ALL: [Field; 11] = [
        Field::Size,
        Field::Model,
        Field::Vendor,
        Field::Serial,
        Field::Wwn,
        Field::WwnWithExtension,
        Field::WwnVendorExtension,
        Field::Name,
        Field::Hctl,
        Field::ByPath,
        Field::Rotational,
    ];

    fn name(self) -> &'static str {
        match self {
            Field::Size => "size",
            Field::Model => "model",
            Field::Vendor => "vendor",
            Field::Serial => "serial",
            Field::Wwn => "wwn",
            Field::WwnWithExtension => "wwn_with_extension",
            Field::WwnVendorExtension => "wwn_vendor_extension",
            Field::Name => "name",
            Field::Hctl => "hctl",
            Field::ByPath => "by_path",
            Field::Rotational => "rotational",
        }
    }

    fn from_name(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|field| field.name() == name)
    }

    fn kind(self) -> Kind {
        match self {
            Field::Size => Kind::Size,
            Field::Rotational => Kind::Bool,
            _ => Kind::Text,
        }
    }

    /// The disk's value of a string field.
    fn text(self, disk: &Disk) -> Option<&str> {
        match self {
            Field::Model => disk.model.as_deref(),
            Field::Vendor => disk.vendor.as_deref(),
            Field::Serial => disk.serial.as_deref(),
            Field::Wwn => disk.wwn.as_deref(),
            Field::WwnWithExtension => disk.wwn_with_extension.as_deref(),
            Field::WwnVendorExtension => disk.wwn_vendor_extension.as_deref(),
            Field::Name => Some(&disk.name),
            Field::Hctl => disk.hctl.as_deref(),
            Field::ByPath => disk.by_path.as_deref(),
            Field::Size | Field::Rotational => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Hint {
    field: Field,
    test: Test,
}

impl Hint {
    fn matches(&self, disk: &Disk) -> bool {
        let gib = disk.size as f64 / GIB;
        // IPA skips a device whose hinted field is empty.
        let device = || {
            let value = self.field.text(disk)?.trim().to_lowercase();
            (!value.is_empty()).then(|| quote(&value))
        };
        match &self.test {
            Test::Rotational(wanted) => disk.rotational == *wanted,
            Test::Size(op, value) => op.holds(gib, *value as f64),
            Test::SizeOr(values) => values.iter().any(|value| gib == *value as f64),
            Test::SizeRange { low, low_inclusive, high, high_inclusive } => {
                let (low, high) = (*low as f64, *high as f64);
                let above = if *low_inclusive { gib >= low } else { gib > low };
                let below = if *high_inclusive { gib <= high } else { gib < high };
                above && below
            }
            Test::Text(op, wanted) => device().is_some_and(|value| op.holds(&value, wanted)),
            Test::TextOr(any) => device().is_some_and(|value| any.contains(&value)),
            Test::TextAllIn(all) => device().is_some_and(|value| all.iter().all(|word| value.contains(word.as_str()))),
        }
    }
}

/// A parsed hint expression; string values are already lower-cased and quoted.
#[derive(Debug, Clone, PartialEq)]
enum Test {
    Rotational(bool),
    Size(NumOp, u64),
    SizeOr(Vec<u64>),
    SizeRange { low: u64, low_inclusive: bool, high: u64, high_inclusive: bool },
    Text(StrOp, String),
    TextOr(Vec<String>),
    TextAllIn(Vec<String>),
}

impl fmt::Display for Test {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let or = |values: Vec<String>| values.iter().map(|v| format!("<or> {v}")).collect::<Vec<_>>().join(" ");
        match self {
            Test::Rotational(value) => write!(f, "{value}"),
            Test::Size(op, value) => write!(f, "{} {value}", op.token()),
            Test::SizeOr(values) => f.write_str(&or(values.iter().map(u64::to_string).collect())),
            Test::SizeRange { low, low_inclusive, high, high_inclusive } => {
                let open = if *low_inclusive { '[' } else { '(' };
                let close = if *high_inclusive { ']' } else { ')' };
                write!(f, "<range-in> {open} {low} {high} {close}")
            }
            Test::Text(op, value) => write!(f, "{} {value}", op.token()),
            Test::TextOr(values) => f.write_str(&or(values.clone())),
            Test::TextAllIn(words) => write!(f, "<all-in> {}", words.join(" ")),
        }
    }
}

/// specs_matcher's numeric operators; `=` is its legacy spelling of `>=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumOp {
    Eq,
    Ne,
    Ge,
    Le,
    Gt,
    Lt,
    LegacyGe,
}

impl NumOp {
    fn holds(self, device: f64, hint: f64) -> bool {
        match self {
            NumOp::Eq => device == hint,
            NumOp::Ne => device != hint,
            NumOp::Ge | NumOp::LegacyGe => device >= hint,
            NumOp::Le => device <= hint,
            NumOp::Gt => device > hint,
            NumOp::Lt => device < hint,
        }
    }

    fn token(self) -> &'static str {
        match self {
            NumOp::Eq => "==",
            NumOp::Ne => "!=",
            NumOp::Ge => ">=",
            NumOp::Le => "<=",
            NumOp::Gt => ">",
            NumOp::Lt => "<",
            NumOp::LegacyGe => "=",
        }
    }
}

/// specs_matcher's string operators (code-point order, like Python's), plus `<in>` (substring).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StrOp {
    Eq,
    Ne,
    Ge,
    Gt,
    Le,
    Lt,
    In,
}

impl StrOp {
    fn holds(self, device: &str, hint: &str) -> bool {
        match self {
            StrOp::Eq => device == hint,
            StrOp::Ne => device != hint,
            StrOp::Ge => device >= hint,
            StrOp::Gt => device > hint,
            StrOp::Le => device <= hint,
            StrOp::Lt => device < hint,
            StrOp::In => device.contains(hint),
        }
    }

    fn token(self) -> &'static str {
        match self {
            StrOp::Eq => "s==",
            StrOp::Ne => "s!=",
            StrOp::Ge => "s>=",
            StrOp::Gt => "s>",
            StrOp::Le => "s<=",
            StrOp::Lt => "s<",
            StrOp::In => "<in>",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    Num(NumOp),
    Str(StrOp),
    Or,
    AllIn,
    RangeIn,
}

impl Operator {
    fn token(self) -> &'static str {
        match self {
            Operator::Num(op) => op.token(),
            Operator::Str(op) => op.token(),
            Operator::Or => "<or>",
            Operator::AllIn => "<all-in>",
            Operator::RangeIn => "<range-in>",
        }
    }
}

/// Longest tokens first, so that `<=` is not read as `<` nor `==` as `=`.
const OPERATORS: [Operator; 17] = [
    Operator::RangeIn,
    Operator::AllIn,
    Operator::Or,
    Operator::Str(StrOp::In),
    Operator::Str(StrOp::Eq),
    Operator::Str(StrOp::Ne),
    Operator::Str(StrOp::Ge),
    Operator::Str(StrOp::Le),
    Operator::Str(StrOp::Gt),
    Operator::Str(StrOp::Lt),
    Operator::Num(NumOp::Eq),
    Operator::Num(NumOp::Ne),
    Operator::Num(NumOp::Ge),
    Operator::Num(NumOp::Le),
    Operator::Num(NumOp::Gt),
    Operator::Num(NumOp::Lt),
    Operator::Num(NumOp::LegacyGe),
];

const SIZE_OPERATORS: &str = "==, !=, >=, <=, >, <, = (meaning >=), <or> and <range-in>";
const STRING_OPERATORS: &str = "s==, s!=, s>=, s>, s<=, s<, <in>, <or> and <all-in>";

/// The stripped, lower-cased expression split into its leading operator (if any) and the rest.
fn split_operator(expression: &str) -> Result<(Option<Operator>, String), String> {
    let lowered = expression.trim().to_lowercase();
    if lowered.is_empty() {
        return Err("the expression is empty".to_owned());
    }
    let found = OPERATORS.into_iter().find(|op| lowered.starts_with(op.token()));
    let rest = match found {
        Some(op) => lowered[op.token().len()..].trim().to_owned(),
        None => lowered,
    };
    if rest.is_empty() {
        return Err(format!("{:?} has an operator but no value", expression.trim()));
    }
    Ok((found, rest))
}

/// The `<or>` alternatives after the first `<or>`.
fn alternatives(rest: &str) -> impl Iterator<Item = &str> {
    rest.split("<or>").map(str::trim).filter(|v| !v.is_empty())
}

fn nonempty<T>(values: Vec<T>, expression: &str) -> Result<Vec<T>, String> {
    if values.is_empty() {
        return Err(format!("{:?} has an operator but no value", expression.trim()));
    }
    Ok(values)
}

fn parse_size(value: &Value) -> Result<Test, String> {
    let expression = match value {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        other => return Err(format!("{other} is not a positive integer (GiB) or an expression such as \">= 10\"")),
    };
    let (found, rest) = split_operator(&expression)?;
    let int = |text: &str| positive_int(text).map_err(|why| format!("{:?} {why}", expression.trim()));
    match found {
        None => Ok(Test::Size(NumOp::Eq, int(&rest)?)),
        Some(Operator::Num(op)) => Ok(Test::Size(op, int(&rest)?)),
        Some(Operator::Or) => {
            let values = alternatives(&rest).map(int).collect::<Result<Vec<_>, _>>()?;
            nonempty(values, &expression).map(Test::SizeOr)
        }
        Some(Operator::RangeIn) => parse_range(&rest)
            .map_err(|why| format!("{:?} is not a range such as \"<range-in> [ 10 20 )\": {why}", expression.trim())),
        Some(op @ (Operator::Str(_) | Operator::AllIn)) => {
            Err(format!("operator {} does not apply to size, which takes {SIZE_OPERATORS}", op.token()))
        }
    }
}

/// A size in GiB: a decimal integer above 0 (Ironic's `int(v) > 0`).
fn positive_int(text: &str) -> Result<u64, String> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(digits) => (true, digits),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("is not an integer".to_owned());
    }
    match digits.parse::<u64>() {
        _ if negative => Err("is not a positive integer".to_owned()),
        Ok(0) => Err("is not a positive integer".to_owned()),
        Ok(value) => Ok(value),
        Err(_) => Err("is too large".to_owned()),
    }
}

/// `[ 10 20 ]`, `( 10 20 ]`, ...: `[`/`]` include the bound, `(`/`)` exclude it.
fn parse_range(rest: &str) -> Result<Test, String> {
    let low_inclusive = match rest.chars().next() {
        Some('[') => true,
        Some('(') => false,
        _ => return Err("it must open with [ or (".to_owned()),
    };
    let high_inclusive = match rest.chars().last() {
        Some(']') if rest.len() > 1 => true,
        Some(')') if rest.len() > 1 => false,
        _ => return Err("it must close with ] or )".to_owned()),
    };
    let bounds: Vec<&str> = rest[1..rest.len() - 1].split([' ', '\t', ',']).filter(|b| !b.is_empty()).collect();
    let [low, high] = bounds[..] else {
        return Err(format!("it needs two bounds, got {}", bounds.len()));
    };
    let bound = |text: &str| positive_int(text).map_err(|why| format!("{text:?} {why}"));
    let (low, high) = (bound(low)?, bound(high)?);
    if low > high {
        return Err(format!("the lower bound {low} is above the upper bound {high}"));
    }
    Ok(Test::SizeRange { low, low_inclusive, high, high_inclusive })
}

fn parse_text(value: &Value) -> Result<Test, String> {
    let Value::String(expression) = value else {
        return Err(format!("{value} is not a string"));
    };
    let (found, rest) = split_operator(expression)?;
    match found {
        None => Ok(Test::Text(StrOp::Eq, quote(&rest))),
        Some(Operator::Str(op)) => Ok(Test::Text(op, quote(&rest))),
        Some(Operator::Or) => nonempty(alternatives(&rest).map(quote).collect(), expression).map(Test::TextOr),
        Some(Operator::AllIn) => Ok(Test::TextAllIn(rest.split_whitespace().map(quote).collect())),
        Some(op @ (Operator::Num(_) | Operator::RangeIn)) => {
            Err(format!("operator {} applies only to size; string hints take {STRING_OPERATORS}", op.token()))
        }
    }
}

/// oslo's `bool_from_string(strict=True)`: a JSON bool, or one of its words (or 1/0) in any case.
fn parse_bool(value: &Value) -> Option<bool> {
    let text = match value {
        Value::Bool(value) => return Some(*value),
        Value::String(text) => text.trim().to_lowercase(),
        Value::Number(number) => number.to_string(),
        _ => return None,
    };
    match text.as_str() {
        "1" | "t" | "true" | "on" | "y" | "yes" => Some(true),
        "0" | "f" | "false" | "off" | "n" | "no" => Some(false),
        _ => None,
    }
}

/// Python's `urllib.parse.quote(text)` (safe `/`): UTF-8 bytes other than letters, digits, `_.-~/`
/// become `%XX`.
fn quote(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"_.-~/".contains(&byte) {
            quoted.push(byte as char);
        } else {
            quoted.push_str(&format!("%{byte:02X}"));
        }
    }
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Five disks covering every hinted field, in kernel order.
    fn disks() -> Vec<Disk> {
        let text = |s: &str| Some(s.to_owned());
        vec![
            Disk {
                name: "/dev/nvme0n1".into(),
                size: (100 << 30) + 512,
                model: text("Samsung SSD 970 EVO 1TB"),
                serial: text("S4EWNX0N"),
                wwn: text("eui.0025385b71b0a6d2"),
                by_path: text("/dev/disk/by-path/pci-0000:03:00.0-nvme-1"),
                rotational: false,
                ..Default::default()
            },
            Disk {
                name: "/dev/sda".into(),
                size: 3 << 30,
                model: text("TinyUSB Drive"),
                vendor: text("Super Vendor"),
                serial: text("serial0"),
                wwn: text("wwn0"),
                wwn_with_extension: text("wwn0ven0"),
                wwn_vendor_extension: text("ven0"),
                hctl: text("1:0:0:0"),
                by_path: text("/dev/disk/by-path/pci-0000:00:14.0-usb-0:1:1.0-scsi-0:0:0:0"),
                rotational: false,
                ..Default::default()
            },
            Disk {
                name: "/dev/sdb".into(),
                size: 10 << 30,
                model: text("Fastable SD131 7"),
                vendor: text("fake-vendor"),
                serial: text("SERIAL-B"),
                wwn: text("0x5000c500a1b2c3d4"),
                wwn_with_extension: text("0x5000c500a1b2c3d4ven1"),
                wwn_vendor_extension: text("ven1"),
                hctl: text("2:0:0:0"),
                by_path: text("/dev/disk/by-path/pci-0000:00:1f.2-ata-1"),
                rotational: true,
                ..Default::default()
            },
            Disk {
                name: "/dev/sdc".into(),
                size: 10 << 30,
                model: text("QEMU HARDDISK"),
                vendor: text("QEMU"),
                serial: text("   "),
                hctl: text("0:0:1:0"),
                rotational: true,
                ..Default::default()
            },
            Disk {
                name: "/dev/vda".into(),
                size: 20 << 30,
                serial: text("VIRTIO-1"),
                by_path: text("/dev/disk/by-path/pci-0000:00:05.0"),
                rotational: true,
                ..Default::default()
            },
        ]
    }

    const NVME: &str = "/dev/nvme0n1";
    const SDA: &str = "/dev/sda";
    const SDB: &str = "/dev/sdb";
    const SDC: &str = "/dev/sdc";
    const VDA: &str = "/dev/vda";

    /// Every hint with every operator it takes: the disks each one selects, in list order.
    #[test]
    fn every_hint_and_operator_selects_the_expected_disks() {
        let cases: Vec<(&str, Value, Vec<&str>)> = vec![
            // size: GiB, compared as a float with bytes / 2^30.
            ("size json integer", json!({"size": 10}), vec![SDB, SDC]),
            ("size string without operator", json!({"size": "10"}), vec![SDB, SDC]),
            ("size ==", json!({"size": "== 10"}), vec![SDB, SDC]),
            ("size == without space", json!({"size": "==10"}), vec![SDB, SDC]),
            ("size == is exact on a float", json!({"size": 100}), vec![]),
            ("size !=", json!({"size": "!= 10"}), vec![NVME, SDA, VDA]),
            ("size >=", json!({"size": ">= 20"}), vec![NVME, VDA]),
            ("size >= on a fraction of a GiB", json!({"size": ">= 100"}), vec![NVME]),
            ("size <=", json!({"size": "<= 10"}), vec![SDA, SDB, SDC]),
            ("size >", json!({"size": "> 10"}), vec![NVME, VDA]),
            ("size <", json!({"size": "< 10"}), vec![SDA]),
            ("size legacy = means >=", json!({"size": "= 20"}), vec![NVME, VDA]),
            ("size surrounding spaces", json!({"size": "  >= 20  "}), vec![NVME, VDA]),
            ("size explicit plus sign", json!({"size": "+20"}), vec![VDA]),
            ("size <or>", json!({"size": "<or> 3 <or> 20"}), vec![SDA, VDA]),
            ("size <range-in> [ ]", json!({"size": "<range-in> [ 10 20 ]"}), vec![SDB, SDC, VDA]),
            ("size <range-in> ( ]", json!({"size": "<range-in> ( 10 20 ]"}), vec![VDA]),
            ("size <range-in> [ ) without spaces", json!({"size": "<range-in> [10 20)"}), vec![SDB, SDC]),
            ("size <range-in> ( )", json!({"size": "<range-in> (10 20)"}), vec![]),
            ("size <range-in> equal bounds", json!({"size": "<range-in> [3 3]"}), vec![SDA]),
            // model: lower-cased, url-quoted on both sides.
            ("model without operator", json!({"model": "fastable sd131 7"}), vec![SDB]),
            ("model ignores case", json!({"model": "FASTABLE SD131 7"}), vec![SDB]),
            ("model s==", json!({"model": "s== QEMU HARDDISK"}), vec![SDC]),
            ("model s== without space", json!({"model": "s==qemu harddisk"}), vec![SDC]),
            ("model s!= skips disks without a model", json!({"model": "s!= QEMU HARDDISK"}), vec![NVME, SDA, SDB]),
            ("model s<", json!({"model": "s< m"}), vec![SDB]),
            ("model s<=", json!({"model": "s<= qemu harddisk"}), vec![SDB, SDC]),
            ("model s>", json!({"model": "s> samsung"}), vec![NVME, SDA]),
            ("model s>=", json!({"model": "s>= tinyusb drive"}), vec![SDA]),
            ("model <in>", json!({"model": "<in> ssd"}), vec![NVME]),
            ("model <in> with a space", json!({"model": "<in> sd131 7"}), vec![SDB]),
            ("model <or>", json!({"model": "<or> QEMU harddisk <or> tinyusb drive"}), vec![SDA, SDC]),
            ("model <or> trailing operator", json!({"model": "<or> qemu harddisk <or>"}), vec![SDC]),
            ("model <all-in>", json!({"model": "<all-in> samsung evo"}), vec![NVME]),
            ("model <all-in> needs every word", json!({"model": "<all-in> samsung qemu"}), vec![]),
            // vendor
            ("vendor", json!({"vendor": "QEMU"}), vec![SDC]),
            ("vendor <in>", json!({"vendor": "<in> vendor"}), vec![SDA, SDB]),
            // serial: an empty (whitespace) serial never matches.
            ("serial", json!({"serial": "serial0"}), vec![SDA]),
            ("serial ignores case", json!({"serial": "s4ewnx0n"}), vec![NVME]),
            ("serial s!= skips the blank serial", json!({"serial": "s!= serial0"}), vec![NVME, SDB, VDA]),
            ("serial <or>", json!({"serial": "<or> virtio-1 <or> SERIAL-B"}), vec![SDB, VDA]),
            // wwn and its extensions
            ("wwn", json!({"wwn": "0x5000C500A1B2C3D4"}), vec![SDB]),
            ("wwn <in>", json!({"wwn": "<in> eui."}), vec![NVME]),
            ("wwn_with_extension", json!({"wwn_with_extension": "wwn0ven0"}), vec![SDA]),
            ("wwn_with_extension s!=", json!({"wwn_with_extension": "s!= wwn0ven0"}), vec![SDB]),
            ("wwn_vendor_extension", json!({"wwn_vendor_extension": "ven1"}), vec![SDB]),
            // name: the full device path, as IPA compares it.
            ("name", json!({"name": "/dev/nvme0n1"}), vec![NVME]),
            ("name <or>", json!({"name": "<or> /dev/sda <or> /dev/vda"}), vec![SDA, VDA]),
            ("name without /dev/ matches nothing", json!({"name": "nvme0n1"}), vec![]),
            // hctl: colons are quoted on both sides.
            ("hctl", json!({"hctl": "2:0:0:0"}), vec![SDB]),
            ("hctl <in>", json!({"hctl": "<in> :0:1:"}), vec![SDC]),
            ("hctl s<", json!({"hctl": "s< 1:0:0:1"}), vec![SDA, SDC]),
            // by_path: the full /dev/disk/by-path/ link.
            ("by_path", json!({"by_path": "/dev/disk/by-path/pci-0000:00:05.0"}), vec![VDA]),
            ("by_path <in>", json!({"by_path": "<in> -nvme-"}), vec![NVME]),
            ("by_path without the prefix matches nothing", json!({"by_path": "pci-0000:00:05.0"}), vec![]),
            // rotational: strict booleans.
            ("rotational true", json!({"rotational": true}), vec![SDB, SDC, VDA]),
            ("rotational false", json!({"rotational": false}), vec![NVME, SDA]),
            ("rotational yes", json!({"rotational": "yes"}), vec![SDB, SDC, VDA]),
            ("rotational No", json!({"rotational": "No"}), vec![NVME, SDA]),
            ("rotational on", json!({"rotational": "on"}), vec![SDB, SDC, VDA]),
            ("rotational off", json!({"rotational": "off"}), vec![NVME, SDA]),
            ("rotational y", json!({"rotational": "y"}), vec![SDB, SDC, VDA]),
            ("rotational n", json!({"rotational": "n"}), vec![NVME, SDA]),
            ("rotational t", json!({"rotational": "T"}), vec![SDB, SDC, VDA]),
            ("rotational f", json!({"rotational": "f"}), vec![NVME, SDA]),
            ("rotational TRUE", json!({"rotational": " TRUE "}), vec![SDB, SDC, VDA]),
            ("rotational false string", json!({"rotational": "false"}), vec![NVME, SDA]),
            ("rotational string 1", json!({"rotational": "1"}), vec![SDB, SDC, VDA]),
            ("rotational string 0", json!({"rotational": "0"}), vec![NVME, SDA]),
            ("rotational json 1", json!({"rotational": 1}), vec![SDB, SDC, VDA]),
            ("rotational json 0", json!({"rotational": 0}), vec![NVME, SDA]),
            // several hints: all must match.
            ("size and rotational", json!({"size": ">= 10", "rotational": false}), vec![NVME]),
            ("three hints", json!({"size": "<= 10", "model": "<in> qemu", "rotational": "true"}), vec![SDC]),
            ("hints that exclude each other", json!({"serial": "serial0", "size": ">= 10"}), vec![]),
            // no hints: every disk.
            ("empty dict", json!({}), vec![NVME, SDA, SDB, SDC, VDA]),
            ("null", Value::Null, vec![NVME, SDA, SDB, SDC, VDA]),
        ];
        let disks = disks();
        for (name, hints, expected) in cases {
            let parsed = parse_root_device_hints(&hints).unwrap_or_else(|e| panic!("case {name}: {e}"));
            let got: Vec<&str> = find_devices(&disks, &parsed).iter().map(|d| d.name.as_str()).collect();
            assert_eq!(got, expected, "case {name} ({parsed})");
        }
    }

    #[test]
    fn invalid_hints_are_refused_naming_the_hint() {
        let cases: Vec<(&str, Value, &str, &str)> = vec![
            ("unknown hint", json!({"colour": "red"}), "colour", "unknown hint; valid hints are size, model"),
            ("ipa-only tran hint", json!({"tran": "sas"}), "tran", "unknown hint"),
            ("several unknown hints", json!({"b": 1, "a": 2, "size": 1}), "a, b", "unknown hint"),
            ("size not an integer", json!({"size": "big"}), "size", "\"big\" is not an integer"),
            ("size with a fraction", json!({"size": "10.5"}), "size", "\"10.5\" is not an integer"),
            ("size json float", json!({"size": 10.5}), "size", "\"10.5\" is not an integer"),
            ("size json bool", json!({"size": true}), "size", "true is not a positive integer"),
            ("size null", json!({"size": null}), "size", "null is not a positive integer"),
            ("size zero", json!({"size": 0}), "size", "\"0\" is not a positive integer"),
            ("size zero string", json!({"size": "0"}), "size", "\"0\" is not a positive integer"),
            ("size > 0", json!({"size": "> 0"}), "size", "\"> 0\" is not a positive integer"),
            ("size negative", json!({"size": -5}), "size", "\"-5\" is not a positive integer"),
            ("size negative with operator", json!({"size": ">= -5"}), "size", "\">= -5\" is not a positive integer"),
            ("size <or> member", json!({"size": "<or> 10 <or> x"}), "size", "\"<or> 10 <or> x\" is not an integer"),
            ("size too large", json!({"size": "99999999999999999999999"}), "size", "is too large"),
            ("size empty", json!({"size": ""}), "size", "the expression is empty"),
            ("size operator alone", json!({"size": ">="}), "size", "\">=\" has an operator but no value"),
            ("size s==", json!({"size": "s== 10"}), "size", "operator s== does not apply to size"),
            ("size s<", json!({"size": "s< 10"}), "size", "operator s< does not apply to size"),
            ("size <in>", json!({"size": "<in> 10"}), "size", "operator <in> does not apply to size"),
            ("size <all-in>", json!({"size": "<all-in> 10 20"}), "size", "operator <all-in> does not apply"),
            (
                "range bound not a number",
                json!({"size": "<range-in> [a 4]"}),
                "size",
                "\"<range-in> [a 4]\" is not a range such as \"<range-in> [ 10 20 )\": \"a\" is not an integer",
            ),
            ("range without brackets", json!({"size": "<range-in> 10 20"}), "size", "it must open with [ or ("),
            ("range unclosed", json!({"size": "<range-in> [10 20"}), "size", "it must close with ] or )"),
            ("range one bound", json!({"size": "<range-in> [10]"}), "size", "it needs two bounds, got 1"),
            ("range three bounds", json!({"size": "<range-in> [1 2 3]"}), "size", "it needs two bounds, got 3"),
            ("range reversed", json!({"size": "<range-in> [20 10]"}), "size", "lower bound 20 is above the upper"),
            ("range zero bound", json!({"size": "<range-in> [0 10]"}), "size", "\"0\" is not a positive integer"),
            ("range lone bracket", json!({"size": "<range-in> ["}), "size", "it must close with ] or )"),
            ("string hint not a string", json!({"serial": 123}), "serial", "123 is not a string"),
            ("string hint null", json!({"name": null}), "name", "null is not a string"),
            ("string hint empty", json!({"model": ""}), "model", "the expression is empty"),
            ("string hint blank", json!({"model": "   "}), "model", "the expression is empty"),
            ("string operator alone", json!({"model": "s=="}), "model", "\"s==\" has an operator but no value"),
            ("string <or> alone", json!({"vendor": "<or>"}), "vendor", "\"<or>\" has an operator but no value"),
            ("string <or> only operators", json!({"vendor": "<or> <or>"}), "vendor", "has an operator but no value"),
            ("size <or> only operators", json!({"size": "<or> <or>"}), "size", "has an operator but no value"),
            ("string numeric ==", json!({"serial": "== abc"}), "serial", "operator == applies only to size"),
            ("string numeric >=", json!({"model": ">= 10"}), "model", "operator >= applies only to size"),
            ("string legacy =", json!({"hctl": "= 1:0:0:0"}), "hctl", "operator = applies only to size"),
            ("string <range-in>", json!({"wwn": "<range-in> [1 2]"}), "wwn", "operator <range-in> applies only"),
            ("rotational maybe", json!({"rotational": "maybe"}), "rotational", "\"maybe\" is not a boolean"),
            ("rotational 2", json!({"rotational": 2}), "rotational", "2 is not a boolean"),
            ("rotational null", json!({"rotational": null}), "rotational", "null is not a boolean"),
            ("rotational with operator", json!({"rotational": "s== true"}), "rotational", "is not a boolean"),
            ("not an object", json!(["size", 10]), "root_device", "must be a JSON object of hints"),
            ("a bare string", json!("serial0"), "root_device", "must be a JSON object of hints"),
        ];
        for (name, hints, hint, reason) in cases {
            let err = parse_root_device_hints(&hints).expect_err(name);
            assert_eq!(err.hint, hint, "case {name}: {err}");
            assert!(err.reason.contains(reason), "case {name}: {:?} lacks {reason:?}", err.reason);
        }
    }

    #[test]
    fn error_message_names_the_hint() {
        let err = parse_root_device_hints(&json!({"size": "<range-in> [a 4]"})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid root device hint size: \"<range-in> [a 4]\" is not a range such as \"<range-in> [ 10 20 )\": \
             \"a\" is not an integer"
        );
    }

    #[test]
    fn empty_dict_and_null_mean_no_hints() {
        for (name, value) in [("empty dict", json!({})), ("null", Value::Null)] {
            assert!(parse_root_device_hints(&value).unwrap().is_empty(), "case {name}");
        }
        assert!(!parse_root_device_hints(&json!({"size": 1})).unwrap().is_empty());
    }

    /// The normalised expressions IPA's own tests expect from `parse_root_device_hints`.
    #[test]
    fn normalises_like_ironic() {
        let cases: Vec<(&str, Value, &str)> = vec![
            ("string without operator", json!({"model": "FOO model"}), "model: s== foo%20model"),
            ("int without operator", json!({"size": 12345}), "size: == 12345"),
            ("int string without operator", json!({"size": "12345"}), "size: == 12345"),
            (
                "vendor with spaces",
                json!({"vendor": "foo VENDOR with space"}),
                "vendor: s== foo%20vendor%20with%20space",
            ),
            ("hctl colons", json!({"hctl": "1:0:0:0"}), "hctl: s== 1%3A0%3A0%3A0"),
            (
                "by_path",
                json!({"by_path": "/dev/disk/by-path/1:0:0:0"}),
                "by_path: s== /dev/disk/by-path/1%3A0%3A0%3A0",
            ),
            ("name keeps slashes", json!({"name": "/dev/sda"}), "name: s== /dev/sda"),
            ("operator kept", json!({"serial": "s!= SpongeBob"}), "serial: s!= spongebob"),
            (
                "or with spaces",
                json!({"model": "<or> foo <or> foo bar <or> bar"}),
                "model: <or> foo <or> foo%20bar <or> bar",
            ),
            ("int or", json!({"size": "<or> 123 <or> 456 <or> 789"}), "size: <or> 123 <or> 456 <or> 789"),
            ("in with spaces", json!({"model": "<in> foo bar"}), "model: <in> foo%20bar"),
            ("all-in words", json!({"model": "<all-in> Aes MMX"}), "model: <all-in> aes mmx"),
            ("range", json!({"size": "<range-in> (10 20]"}), "size: <range-in> ( 10 20 ]"),
            ("legacy equal", json!({"size": "= 5"}), "size: = 5"),
            ("rotational yes", json!({"rotational": "yes"}), "rotational: true"),
            ("rotational off", json!({"rotational": "off"}), "rotational: false"),
            ("in hint order", json!({"model": "x", "size": ">= 10"}), "size: >= 10, model: s== x"),
        ];
        for (name, hints, expected) in cases {
            assert_eq!(parse_root_device_hints(&hints).unwrap().to_string(), expected, "case {name}");
        }
    }

    #[test]
    fn quotes_like_python_urllib() {
        let cases = [
            ("letters digits and _.-~/ stay", "az09_.-~/dev", "az09_.-~/dev"),
            ("space", "a b", "a%20b"),
            ("colon", "0:0:1:0", "0%3A0%3A1%3A0"),
            ("percent", "100%", "100%25"),
            ("utf-8 bytes", "ü", "%C3%BC"),
            ("brackets", "[x]", "%5Bx%5D"),
        ];
        for (name, text, expected) in cases {
            assert_eq!(quote(text), expected, "case {name}");
        }
    }
}
