//! Ironic API microversions: negotiation from request headers, and the versions features need.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};

use crate::error::Error;

pub const MIN_MINOR: u32 = 1;
pub const MAX_MINOR: u32 = 115;

pub const VERSION_HEADER: &str = "X-OpenStack-Ironic-API-Version";
pub const MIN_VERSION_HEADER: &str = "X-OpenStack-Ironic-API-Minimum-Version";
pub const MAX_VERSION_HEADER: &str = "X-OpenStack-Ironic-API-Maximum-Version";
/// The standard header, `OpenStack-API-Version: baremetal 1.NN`; preferred when it names baremetal.
pub const STANDARD_HEADER: &str = "OpenStack-API-Version";
const SERVICE_TYPE: &str = "baremetal";

/// Versions at which behaviour changes (Ironic's `versions.MINOR_*`).
pub const AVAILABLE_STATE: u32 = 2;
pub const NODE_NAME: u32 = 5;
pub const FETCH_FIELDS: u32 = 8;
pub const PROVISION_STATE_FILTER: u32 = 9;
pub const UNRESTRICTED_NODE_NAME: u32 = 10;
pub const ENROLL_STATE: u32 = 11;
pub const RAID_CONFIG: u32 = 12;
pub const STATES_LINK: u32 = 14;
pub const DRIVER_FILTER: u32 = 16;
pub const RESOURCE_CLASS: u32 = 21;
pub const LOOKUP_HEARTBEAT: u32 = 22;
pub const SOFT_POWER_OFF: u32 = 27;
pub const DYNAMIC_DRIVER_INTERFACES: u32 = 30;
pub const REBUILD_CONFIGDRIVE: u32 = 35;
pub const INSPECT_WAIT: u32 = 39;
pub const DETAIL_QUERY: u32 = 43;
pub const CONFIGDRIVE_DICT: u32 = 56;
pub const CONFIGDRIVE_VENDOR_DATA: u32 = 59;
pub const NODE_BOOT_MODE: u32 = 75;
pub const NODE_HISTORY: u32 = 78;
pub const NODE_INVENTORY: u32 = 81;
pub const ABORT_DEPLOY_WAIT: u32 = 110;

/// The negotiated version of a request (major is always 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiVersion {
    pub minor: u32,
}

impl ApiVersion {
    pub const MIN: ApiVersion = ApiVersion { minor: MIN_MINOR };
    pub const MAX: ApiVersion = ApiVersion { minor: MAX_MINOR };

    pub fn at_least(self, minor: u32) -> bool {
        self.minor >= minor
    }

    /// Ironic's `NotAcceptable` unless the version is at least `minor`.
    pub fn require(self, minor: u32) -> Result<(), Error> {
        if self.at_least(minor) {
            Ok(())
        } else {
            Err(Error::not_acceptable())
        }
    }

    pub fn header_value(self) -> String {
        format!("1.{}", self.minor)
    }

    /// The version as an HTTP header value.
    pub fn to_header(self) -> HeaderValue {
        HeaderValue::from_str(&self.header_value()).expect("digits and a dot are valid in a header")
    }
}

/// Why a requested version was refused; `requested` is echoed in the response's version header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRefused {
    pub message: String,
    pub requested: Option<String>,
}

/// The version a request asks for: the standard header if it names baremetal, else the
/// legacy one, else the minimum.
pub fn negotiate(headers: &HeaderMap) -> Result<ApiVersion, VersionRefused> {
    let standard = headers.get_all(STANDARD_HEADER).iter().filter_map(|value| value.to_str().ok()).find_map(|value| {
        value.split(',').find_map(|entry| {
            let mut words = entry.split_whitespace();
            (words.next()?.eq_ignore_ascii_case(SERVICE_TYPE)).then(|| words.next().unwrap_or("").to_owned())
        })
    });
    let requested = match standard {
        Some(version) => version,
        None => match headers.get(VERSION_HEADER) {
            None => return Ok(ApiVersion::MIN),
            Some(value) => match value.to_str() {
                Ok(text) => text.trim().to_owned(),
                Err(_) => {
                    return Err(VersionRefused {
                        message: format!("Invalid value for {VERSION_HEADER} header: it is not ASCII"),
                        requested: None,
                    })
                }
            },
        },
    };
    parse(&requested)
}

fn parse(requested: &str) -> Result<ApiVersion, VersionRefused> {
    if requested.eq_ignore_ascii_case("latest") {
        return Ok(ApiVersion::MAX);
    }
    let (major, minor) = requested.split_once('.').ok_or_else(|| malformed(requested))?;
    let (Ok(major), Ok(minor)) = (major.parse::<u32>(), minor.parse::<u32>()) else {
        return Err(malformed(requested));
    };
    if major == 1 && (MIN_MINOR..=MAX_MINOR).contains(&minor) {
        return Ok(ApiVersion { minor });
    }
    // Ironic's `_check_version` wordings, naming the version as parsed.
    let version = format!("{major}.{minor}");
    let problem = if major != 1 {
        format!("Mutually exclusive versions requested. Version {version} requested but not supported by this service.")
    } else {
        format!("Version {version} was requested but the minor version is not supported by this service.")
    };
    Err(VersionRefused {
        message: format!("{problem} The supported version range is: [1.{MIN_MINOR}, 1.{MAX_MINOR}]."),
        requested: Some(requested.to_owned()),
    })
}

fn malformed(requested: &str) -> VersionRefused {
    VersionRefused {
        message: format!("Invalid value for {VERSION_HEADER} header: {requested}"),
        requested: Some(requested.to_owned()),
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ApiVersion {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<ApiVersion>().copied().unwrap_or(ApiVersion::MIN))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn missing_header_means_the_minimum() {
        assert_eq!(negotiate(&HeaderMap::new()), Ok(ApiVersion { minor: 1 }));
    }

    #[test]
    fn legacy_standard_and_latest_headers() {
        assert_eq!(negotiate(&headers(&[(VERSION_HEADER, "1.62")])), Ok(ApiVersion { minor: 62 }));
        assert_eq!(negotiate(&headers(&[(VERSION_HEADER, "latest")])), Ok(ApiVersion::MAX));
        let both = headers(&[(STANDARD_HEADER, "compute 2.1, baremetal 1.73"), (VERSION_HEADER, "1.5")]);
        assert_eq!(negotiate(&both), Ok(ApiVersion { minor: 73 }));
        let other_service = headers(&[(STANDARD_HEADER, "compute 2.1"), (VERSION_HEADER, "1.5")]);
        assert_eq!(negotiate(&other_service), Ok(ApiVersion { minor: 5 }));
    }

    #[test]
    fn out_of_range_and_malformed_versions_are_refused() {
        let refused = negotiate(&headers(&[(VERSION_HEADER, "1.200")])).unwrap_err();
        assert_eq!(
            refused.message,
            "Version 1.200 was requested but the minor version is not supported by this service. \
             The supported version range is: [1.1, 1.115]."
        );
        assert_eq!(refused.requested.as_deref(), Some("1.200"));
        assert_eq!(
            negotiate(&headers(&[(VERSION_HEADER, "2.1")])).unwrap_err().message,
            "Mutually exclusive versions requested. Version 2.1 requested but not supported by this service. \
             The supported version range is: [1.1, 1.115]."
        );
        assert!(negotiate(&headers(&[(VERSION_HEADER, "1.0")])).is_err());
        assert!(negotiate(&headers(&[(VERSION_HEADER, "one")])).unwrap_err().message.contains("Invalid value"));
    }
}
