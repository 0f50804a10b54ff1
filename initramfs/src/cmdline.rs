//! The kernel command line: where the controller is and which NIC booted.

use ferric_protocol::{normalize_mac, CMDLINE_API_URL, CMDLINE_BOOTIF};

/// What init needs from the kernel command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootParams {
    /// `ferric.api=<URL>`: the controller's base URL, handed to the agent.
    pub api_url: Option<String>,
    /// `BOOTIF=01-aa-bb-..`: the boot NIC's MAC, normalised to `aa:bb:..`.
    pub boot_mac: Option<String>,
    /// A `BOOTIF=` value that is not a MAC address, kept so it can be logged.
    pub malformed_bootif: Option<String>,
}

/// Parses `/proc/cmdline` text. Unknown parameters are ignored; double quotes are
/// dropped the way the kernel does (`ferric.api="http://x"` and `"ferric.api=http://x"`).
/// A later occurrence of a parameter wins, as for the kernel's own parameters.
pub fn parse(text: &str) -> BootParams {
    let mut params = BootParams::default();
    for word in split_words(text) {
        let Some((key, value)) = word.split_once('=') else { continue };
        if key == CMDLINE_API_URL && !value.is_empty() {
            params.api_url = Some(value.to_string());
        } else if key == CMDLINE_BOOTIF {
            params.boot_mac = parse_bootif(value);
            params.malformed_bootif = params.boot_mac.is_none().then(|| value.to_string());
        }
    }
    params
}

/// Splits on whitespace outside double quotes and removes the quotes.
fn split_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    for c in text.chars() {
        match c {
            '"' => in_quotes = !in_quotes,
            c if c.is_whitespace() && !in_quotes => {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

/// PXE's `BOOTIF` is `<hardware type>-<mac>` (`01-` is Ethernet); a bare MAC is accepted too.
fn parse_bootif(value: &str) -> Option<String> {
    let mac = match value.split_once('-') {
        Some((hardware_type, rest)) if value.split('-').count() == 7 && hardware_type.len() == 2 => rest,
        _ => value,
    };
    normalize_mac(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_api_url_and_bootif_among_unknown_params() {
        let params = parse(
            "BOOT_IMAGE=vmlinuz console=ttyS0,115200n8 ferric.api=http://10.0.2.2:8080 \
             BOOTIF=01-52-54-00-12-34-56 quiet\n",
        );
        assert_eq!(
            params,
            BootParams {
                api_url: Some("http://10.0.2.2:8080".into()),
                boot_mac: Some("52:54:00:12:34:56".into()),
                malformed_bootif: None,
            }
        );
    }

    #[test]
    fn tolerates_quotes_around_value_or_whole_param() {
        let params = parse(r#"ferric.api="http://10.0.2.2:80/a b" "BOOTIF=01-52-54-00-AB-CD-EF""#);
        assert_eq!(params.api_url.as_deref(), Some("http://10.0.2.2:80/a b"));
        assert_eq!(params.boot_mac.as_deref(), Some("52:54:00:ab:cd:ef"));
    }

    #[test]
    fn accepts_bare_mac_in_bootif() {
        assert_eq!(parse("BOOTIF=52:54:00:12:34:56").boot_mac.as_deref(), Some("52:54:00:12:34:56"));
    }

    #[test]
    fn keeps_malformed_bootif_for_logging() {
        let params = parse("BOOTIF=01-52-54-00 ferric.api=");
        assert_eq!(params.boot_mac, None);
        assert_eq!(params.malformed_bootif.as_deref(), Some("01-52-54-00"));
        assert_eq!(params.api_url, None, "an empty URL is no URL");
    }

    #[test]
    fn missing_params_are_none() {
        assert_eq!(parse("console=ttyS0 ferric.apix=http://nope BOOTIFX=01-52-54-00-12-34-56"), BootParams::default());
    }

    #[test]
    fn later_occurrence_wins() {
        assert_eq!(parse("ferric.api=http://a ferric.api=http://b").api_url.as_deref(), Some("http://b"));
    }
}
