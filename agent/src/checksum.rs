//! Image checksums: which algorithm, and hashing while the bytes stream past.
//!
//! The expected digest is a value (IPA's `checksum`, or the `os_hash_algo` + `os_hash_value` pair) or the
//! URL of a checksum file such as `SHA256SUMS`, in which the line for the image's file name is looked up.

use md5::Md5;
use sha2::{Digest, Sha256, Sha512};
use std::fmt;

use ferric_protocol::ImageInfo;

use crate::download::{self, DownloadError};

/// Checksum files larger than this are refused: listings of whole mirrors are a few hundred KiB.
const CHECKSUM_FILE_LIMIT: u64 = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Sha256,
    Sha512,
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Algorithm::Md5 => "md5",
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        })
    }
}

impl Algorithm {
    /// `MD5`, `sha256`, `SHA-512`... as written in BSD-style checksum lines and `os_hash_algo`.
    fn from_name(name: &str) -> Result<Self, ChecksumError> {
        match name.to_ascii_lowercase().replace('-', "").as_str() {
            "md5" => Ok(Algorithm::Md5),
            "sha256" => Ok(Algorithm::Sha256),
            "sha512" => Ok(Algorithm::Sha512),
            _ => Err(ChecksumError::UnsupportedAlgorithm(name.to_owned())),
        }
    }

    fn from_hex_length(value: &str) -> Result<Self, ChecksumError> {
        match value.len() {
            32 => Ok(Algorithm::Md5),
            64 => Ok(Algorithm::Sha256),
            128 => Ok(Algorithm::Sha512),
            _ => Err(ChecksumError::Unrecognised(value.to_owned())),
        }
    }

    fn hex_length(self) -> usize {
        match self {
            Algorithm::Md5 => 32,
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// The digest an image must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub algorithm: Algorithm,
    /// Lower-case hex.
    pub hex: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ChecksumError {
    #[error("image_info has no checksum: set image_checksum or image_os_hash_algo and image_os_hash_value")]
    Missing,
    #[error("unsupported hash algorithm {0:?} (supported: md5, sha256, sha512)")]
    UnsupportedAlgorithm(String),
    #[error("checksum {0:?} is not hex of a known length (32 md5, 64 sha256, 128 sha512)")]
    Unrecognised(String),
    #[error("checksum {value:?} is not a digest of {algorithm} ({} hex digits)", .algorithm.hex_length())]
    NotDigestOf { algorithm: Algorithm, value: String },
    #[error("cannot fetch checksum file {url}")]
    Fetch {
        url: String,
        #[source]
        source: DownloadError,
    },
    #[error("checksum file {url} has no line for {name:?}; it lists {}", listed_names(.listed))]
    NotListed { url: String, name: String, listed: Vec<String> },
    #[error("checksum file {url}, line for {name:?}")]
    BadEntry {
        url: String,
        name: String,
        #[source]
        source: Box<ChecksumError>,
    },
}

fn listed_names(names: &[String]) -> String {
    if names.is_empty() {
        "no file names".to_owned()
    } else {
        names.iter().map(|name| format!("{name:?}")).collect::<Vec<_>>().join(", ")
    }
}

/// The expected digest of the image: [`Expected::from_image_info`], except that a `checksum` that is an
/// http(s) URL is fetched and searched for the file name of `urls[0]`.
pub async fn resolve(info: &ImageInfo, client: &reqwest::Client) -> Result<Expected, ChecksumError> {
    let checksum = info.checksum.as_deref().map(str::trim).unwrap_or_default();
    let has_os_hash = info.os_hash_algo.is_some() && info.os_hash_value.is_some();
    if has_os_hash || !(checksum.starts_with("http://") || checksum.starts_with("https://")) {
        return Expected::from_image_info(info);
    }
    let url = checksum;
    let body = download::fetch_small(client, url, CHECKSUM_FILE_LIMIT)
        .await
        .map_err(|source| ChecksumError::Fetch { url: url.to_owned(), source })?;
    let name = info.urls.first().map(|image_url| file_name_of(image_url)).unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    let entry = find_entry(&text, name).map_err(|listed| ChecksumError::NotListed {
        url: url.to_owned(),
        name: name.to_owned(),
        listed,
    })?;
    let bad_entry =
        |source| ChecksumError::BadEntry { url: url.to_owned(), name: name.to_owned(), source: Box::new(source) };
    let algorithm = match entry.algorithm {
        Some(algorithm) => Algorithm::from_name(algorithm),
        None => Algorithm::from_hex_length(entry.hex),
    }
    .map_err(bad_entry)?;
    Expected::checked(algorithm, entry.hex).map_err(bad_entry)
}

/// The last path segment of a URL, without query or fragment.
fn file_name_of(url: &str) -> &str {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    path.rsplit('/').next().unwrap_or_default()
}

/// One digest found in a checksum file.
#[derive(Debug, PartialEq, Eq)]
struct Entry<'a> {
    /// Stated by BSD-style lines (`SHA256 (name) = hex`); inferred from the length otherwise.
    algorithm: Option<&'a str>,
    hex: &'a str,
}

/// The digest for `name` in a checksum file: a file holding one bare hash, or `sha256sum`-style lines
/// (`<hex>  name`, `<hex> *name`) or BSD-style lines (`ALGO (name) = <hex>`), `#` comments skipped. Listed
/// names match by their last path segment (`./name`, `dir/name`). Without a match: the names listed.
fn find_entry<'a>(text: &'a str, name: &str) -> Result<Entry<'a>, Vec<String>> {
    let lines: Vec<&str> =
        text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#')).collect();
    if let [only] = lines[..] {
        if !only.contains(char::is_whitespace) {
            return Ok(Entry { algorithm: None, hex: only });
        }
    }
    let mut listed = Vec::new();
    for line in lines {
        let Some((listed_name, entry)) = parse_line(line) else { continue };
        if listed_name.rsplit('/').next() == Some(name) {
            return Ok(entry);
        }
        listed.push(listed_name.to_owned());
    }
    Err(listed)
}

/// (file name, entry) of one checksum line, if it has one of the known shapes.
fn parse_line(line: &str) -> Option<(&str, Entry<'_>)> {
    if let Some((head, hex)) = line.rsplit_once(") = ") {
        let (algorithm, name) = head.split_once(" (")?;
        return Some((name, Entry { algorithm: Some(algorithm.trim()), hex: hex.trim() }));
    }
    let (hex, rest) = line.split_once(char::is_whitespace)?;
    // sha256sum writes two spaces (text mode) or a space and '*' (binary mode) before the name.
    let name = rest.strip_prefix([' ', '*']).unwrap_or(rest);
    Some((name, Entry { algorithm: None, hex }))
}

impl Expected {
    /// IPA's rule: `os_hash_algo` + `os_hash_value` when given, else `checksum` with the
    /// algorithm inferred from its length. Checksum-file URLs need [`resolve`].
    pub fn from_image_info(info: &ImageInfo) -> Result<Self, ChecksumError> {
        if let (Some(algo), Some(value)) = (&info.os_hash_algo, &info.os_hash_value) {
            return Self::checked(Algorithm::from_name(algo)?, value);
        }
        let value = info.checksum.as_deref().ok_or(ChecksumError::Missing)?.trim();
        Self::checked(Algorithm::from_hex_length(value)?, value)
    }

    fn checked(algorithm: Algorithm, value: &str) -> Result<Self, ChecksumError> {
        let hex = value.trim().to_ascii_lowercase();
        if hex.len() != algorithm.hex_length() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(ChecksumError::NotDigestOf { algorithm, value: value.to_owned() });
        }
        Ok(Self { algorithm, hex })
    }
}

/// A running digest in one of the supported algorithms.
pub(crate) enum Hasher {
    Md5(Md5),
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    pub(crate) fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Md5 => Hasher::Md5(Md5::new()),
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub(crate) fn finalize_hex(self) -> String {
        match self {
            Hasher::Md5(h) => hex::encode(h.finalize()),
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha512(h) => hex::encode(h.finalize()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(checksum: Option<&str>, algo: Option<&str>, value: Option<&str>) -> ImageInfo {
        ImageInfo {
            checksum: checksum.map(Into::into),
            os_hash_algo: algo.map(Into::into),
            os_hash_value: value.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn algorithm_is_inferred_from_length() {
        let cases = [(32, Algorithm::Md5), (64, Algorithm::Sha256), (128, Algorithm::Sha512)];
        for (len, algorithm) in cases {
            let value = "A".repeat(len);
            let expected = Expected::from_image_info(&info(Some(&value), None, None)).unwrap();
            assert_eq!(expected, Expected { algorithm, hex: "a".repeat(len) });
        }
    }

    #[test]
    fn os_hash_pair_wins_over_checksum() {
        let e = Expected::from_image_info(&info(Some(&"0".repeat(64)), Some("SHA512"), Some(&"f".repeat(128))));
        assert_eq!(e.unwrap().algorithm, Algorithm::Sha512);
    }

    #[test]
    fn bad_checksums_are_named() {
        let cases = [
            ("missing", info(None, None, None), "image_info has no checksum"),
            ("short", info(Some("abc"), None, None), r#"checksum "abc" is not hex"#),
            ("sha3", info(None, Some("sha3_256"), Some("00")), r#"unsupported hash algorithm "sha3_256""#),
            ("not hex", info(Some(&"g".repeat(64)), None, None), "is not a digest of sha256 (64 hex digits)"),
            (
                "wrong length for algo",
                info(None, Some("md5"), Some(&"0".repeat(64))),
                "is not a digest of md5 (32 hex digits)",
            ),
            ("url needs resolve", info(Some("http://h/SHA256SUMS"), None, None), "is not hex"),
        ];
        for (name, info, message) in cases {
            let error = Expected::from_image_info(&info).unwrap_err().to_string();
            assert!(error.contains(message), "{name}: {error}");
        }
    }

    #[test]
    fn checksum_file_lines_are_found_by_file_name() {
        let md5 = "d41d8cd98f00b204e9800998ecf8427e";
        let sha = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let gnu = format!("# comment\n{md5}  other.img\n{sha}  disk.qcow2\n");
        let binary = format!("{md5} *other.img\r\n{sha} *disk.qcow2\r\n");
        let bsd = format!("MD5 (other.img) = {md5}\nSHA256 (disk.qcow2) = {sha}\n");
        let paths = format!("{md5}  ./other.img\n{sha}  images/disk.qcow2\n");
        let bare = format!("\n# just the hash\n  {sha}  \n");
        type Case<'a> = (&'a str, &'a str, Result<Entry<'a>, Vec<String>>);
        let cases: [Case; 8] = [
            ("sha256sum text mode", &gnu, Ok(Entry { algorithm: None, hex: sha })),
            ("sha256sum binary mode, CRLF", &binary, Ok(Entry { algorithm: None, hex: sha })),
            ("BSD style", &bsd, Ok(Entry { algorithm: Some("SHA256"), hex: sha })),
            ("listed with a path", &paths, Ok(Entry { algorithm: None, hex: sha })),
            ("single bare hash", &bare, Ok(Entry { algorithm: None, hex: sha })),
            ("not listed", &gnu.replace("disk.qcow2", "disk.raw"), Err(vec!["other.img".into(), "disk.raw".into()])),
            ("prefix is no match", &format!("{sha}  old-disk.qcow2\n"), Err(vec!["old-disk.qcow2".into()])),
            ("comments only", "# nothing\n\n", Err(vec![])),
        ];
        for (name, text, expected) in cases {
            assert_eq!(find_entry(text, "disk.qcow2"), expected, "{name}");
        }
    }

    #[test]
    fn image_file_name_ignores_query_and_fragment() {
        let cases = [
            ("http://h/images/disk.qcow2", "disk.qcow2"),
            ("https://h/a/disk.raw?token=1/2", "disk.raw"),
            ("http://h/disk.img#part", "disk.img"),
            ("http://h/dir/", ""),
        ];
        for (url, name) in cases {
            assert_eq!(file_name_of(url), name, "{url}");
        }
    }

    #[tokio::test]
    async fn resolve_takes_values_without_fetching() {
        let client = reqwest::Client::new();
        let sha = "A".repeat(64);
        let expected = resolve(&info(Some(&sha), None, None), &client).await.unwrap();
        assert_eq!(expected, Expected { algorithm: Algorithm::Sha256, hex: "a".repeat(64) });
        // The os_hash pair wins even over a checksum URL: nothing is fetched (nothing listens there).
        let pair = info(Some("http://127.0.0.1:9/SUMS"), Some("md5"), Some(&"B".repeat(32)));
        assert_eq!(resolve(&pair, &client).await.unwrap().algorithm, Algorithm::Md5);
    }

    #[test]
    fn hasher_digests_data_given_in_pieces() {
        let data = b"hello world, in three pieces";
        for (algorithm, whole) in [
            (Algorithm::Md5, hex::encode(Md5::digest(data))),
            (Algorithm::Sha256, hex::encode(Sha256::digest(data))),
            (Algorithm::Sha512, hex::encode(Sha512::digest(data))),
        ] {
            let mut hasher = Hasher::new(algorithm);
            for piece in [&data[..5], &data[5..6], &data[6..]] {
                hasher.update(piece);
            }
            assert_eq!(hasher.finalize_hex(), whole, "{algorithm:?}");
        }
    }
}
