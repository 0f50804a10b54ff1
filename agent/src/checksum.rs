//! Image checksums: which algorithm, and hashing while the bytes stream past.

use md5::Md5;
use sha2::{Digest, Sha256, Sha512};
use std::fmt;
use std::io::{self, Read};

use ferric_protocol::ImageInfo;

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

/// The digest an image must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub algorithm: Algorithm,
    /// Lower-case hex.
    pub hex: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChecksumError {
    #[error("image_info has no checksum: set image_checksum or image_os_hash_algo and image_os_hash_value")]
    Missing,
    #[error("unsupported hash algorithm {0:?} (supported: md5, sha256, sha512)")]
    UnsupportedAlgorithm(String),
    #[error("checksum {0:?} is not hex of a known length (32 md5, 64 sha256, 128 sha512)")]
    Unrecognised(String),
    #[error("checksum URLs are not supported yet: {0}")]
    Url(String),
}

impl Expected {
    /// IPA's rule: `os_hash_algo` + `os_hash_value` when given, else `checksum` with the
    /// algorithm inferred from its length.
    pub fn from_image_info(info: &ImageInfo) -> Result<Self, ChecksumError> {
        if let (Some(algo), Some(value)) = (&info.os_hash_algo, &info.os_hash_value) {
            let algorithm = match algo.to_ascii_lowercase().as_str() {
                "md5" => Algorithm::Md5,
                "sha256" => Algorithm::Sha256,
                "sha512" => Algorithm::Sha512,
                other => return Err(ChecksumError::UnsupportedAlgorithm(other.to_owned())),
            };
            return Self::checked(algorithm, value);
        }
        let value = info.checksum.as_deref().ok_or(ChecksumError::Missing)?.trim();
        if value.contains("://") {
            return Err(ChecksumError::Url(value.to_owned()));
        }
        let algorithm = match value.len() {
            32 => Algorithm::Md5,
            64 => Algorithm::Sha256,
            128 => Algorithm::Sha512,
            _ => return Err(ChecksumError::Unrecognised(value.to_owned())),
        };
        Self::checked(algorithm, value)
    }

    fn checked(algorithm: Algorithm, value: &str) -> Result<Self, ChecksumError> {
        let hex = value.trim().to_ascii_lowercase();
        let expected_len = match algorithm {
            Algorithm::Md5 => 32,
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        };
        if hex.len() != expected_len || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(ChecksumError::Unrecognised(value.to_owned()));
        }
        Ok(Self { algorithm, hex })
    }
}

enum Hasher {
    Md5(Md5),
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Md5 => Hasher::Md5(Md5::new()),
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    fn finalize_hex(self) -> String {
        match self {
            Hasher::Md5(h) => hex::encode(h.finalize()),
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha512(h) => hex::encode(h.finalize()),
        }
    }
}

/// Hashes every byte read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R, algorithm: Algorithm) -> Self {
        Self { inner, hasher: Hasher::new(algorithm) }
    }

    /// Reads what is left (a decompressor may stop before its input's end) and returns the hex digest.
    pub fn finish(mut self) -> io::Result<String> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(self.hasher.finalize_hex())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
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
        assert_eq!(Expected::from_image_info(&info(None, None, None)), Err(ChecksumError::Missing));
        assert_eq!(
            Expected::from_image_info(&info(Some("abc"), None, None)),
            Err(ChecksumError::Unrecognised("abc".into()))
        );
        assert_eq!(
            Expected::from_image_info(&info(None, Some("sha3_256"), Some("00"))),
            Err(ChecksumError::UnsupportedAlgorithm("sha3_256".into()))
        );
        assert!(matches!(
            Expected::from_image_info(&info(Some(&"g".repeat(64)), None, None)),
            Err(ChecksumError::Unrecognised(_))
        ));
    }

    #[test]
    fn hashing_reader_hashes_what_passes_and_the_rest() {
        let data = b"hello world".to_vec();
        let mut reader = HashingReader::new(&data[..], Algorithm::Sha256);
        let mut first = [0u8; 5];
        reader.read_exact(&mut first).unwrap();
        let digest = reader.finish().unwrap();
        assert_eq!(digest, hex::encode(Sha256::digest(&data)));
    }
}
