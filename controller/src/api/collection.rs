//! What Ironic's collections share: `limit`, `marker`, `sort_key`, `sort_dir` and the `next`
//! link that carries them (with the request's filters) to the following page.

use super::QueryParams;
use crate::error::Error;

/// Ironic's `[api]max_limit`.
pub const MAX_LIMIT: usize = 1000;

/// The paging parameters of a collection request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paging {
    pub limit: usize,
    /// UUID of the last item of the previous page.
    pub marker: Option<String>,
    /// A column of the resource's sortable list; `None` is creation order (Ironic's `id`).
    pub sort_key: Option<&'static str>,
    pub descending: bool,
}

impl Paging {
    /// Reads the paging parameters as Ironic checks them: a positive `limit` (capped), `asc`
    /// or `desc`, and a `sort_key` among `sortable` (JSON fields in `unsortable` get Ironic's
    /// other message).
    pub fn parse(query: &QueryParams, sortable: &'static [&'static str], unsortable: &[&str]) -> Result<Paging, Error> {
        let limit = match query.get("limit") {
            Some(text) => match text.parse::<usize>() {
                Ok(limit) if limit > 0 => limit.min(MAX_LIMIT),
                _ => return Err(Error::Invalid("Limit must be positive".to_owned())),
            },
            None => MAX_LIMIT,
        };
        let descending = match query.get("sort_dir").unwrap_or("asc") {
            "asc" => false,
            "desc" => true,
            other => {
                return Err(Error::Invalid(format!(
                    "Invalid sort direction: {other}. Acceptable values are 'asc' or 'desc'"
                )))
            }
        };
        let sort_key = match query.get("sort_key") {
            None | Some("id") => None,
            Some(key) if unsortable.contains(&key) => {
                return Err(Error::Invalid(format!("The sort_key value {key} is an invalid field for sorting")))
            }
            Some(key) => Some(sortable.iter().copied().find(|known| *known == key).ok_or_else(|| {
                Error::Invalid(format!("The sort_key value \"{key}\" is an invalid field for sorting"))
            })?),
        };
        Ok(Paging { limit, marker: query.get("marker").map(str::to_owned), sort_key, descending })
    }

    /// The URL of the page after one that ended with `last_uuid`, if `shown` items filled this
    /// one: the same query and order with `limit` and a new `marker`.
    pub fn next_url(
        &self,
        base: &str,
        path: &str,
        query: &QueryParams,
        shown: usize,
        last_uuid: &str,
    ) -> Option<String> {
        if shown < self.limit {
            return None;
        }
        let mut parameters = query.0.clone();
        parameters.insert("limit".to_owned(), self.limit.to_string());
        parameters.insert("marker".to_owned(), last_uuid.to_owned());
        parameters.insert("sort_key".to_owned(), self.sort_key.unwrap_or("id").to_owned());
        parameters.insert("sort_dir".to_owned(), if self.descending { "desc" } else { "asc" }.to_owned());
        let encoded: Vec<String> = parameters
            .iter()
            .map(|(name, value)| format!("{}={}", percent_encode(name), percent_encode(value)))
            .collect();
        Some(format!("{base}{path}?{}", encoded.join("&")))
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (byte as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SORTABLE: &[&str] = &["name", "uuid"];

    fn query(pairs: &[(&str, &str)]) -> QueryParams {
        QueryParams(pairs.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect())
    }

    fn parse(pairs: &[(&str, &str)]) -> Result<Paging, Error> {
        Paging::parse(&query(pairs), SORTABLE, &["extra"])
    }

    #[test]
    fn paging_parameters_are_checked() {
        let default = parse(&[]).unwrap();
        assert_eq!(default, Paging { limit: MAX_LIMIT, marker: None, sort_key: None, descending: false });
        let named = parse(&[("sort_key", "name"), ("sort_dir", "desc"), ("limit", "5000")]).unwrap();
        assert_eq!((named.sort_key, named.descending, named.limit), (Some("name"), true, MAX_LIMIT));
        assert!(parse(&[("sort_key", "bogus")]).unwrap_err().to_string().contains("\"bogus\""));
        assert!(parse(&[("sort_key", "extra")]).unwrap_err().to_string().contains("value extra is"));
        assert!(parse(&[("sort_dir", "up")]).unwrap_err().to_string().contains("'asc' or 'desc'"));
        assert!(parse(&[("limit", "0")]).is_err());
    }

    #[test]
    fn next_links_keep_the_query_and_order_and_encode_them() {
        let query = query(&[("fields", "uuid,name"), ("limit", "2")]);
        let paging = Paging::parse(&query, SORTABLE, &[]).unwrap();
        assert_eq!(paging.next_url("http://h", "/v1/nodes", &query, 1, "m-1"), None);
        assert_eq!(
            paging.next_url("http://h", "/v1/nodes", &query, 2, "m-1").unwrap(),
            "http://h/v1/nodes?fields=uuid%2Cname&limit=2&marker=m-1&sort_dir=asc&sort_key=id"
        );
    }
}
