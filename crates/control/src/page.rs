//! AIP-158 pagination: `page_size` (0 means the default, at most the maximum) and an opaque
//! `page_token` that carries the last key of the previous page.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::{ApiError, ApiResult};

/// Page size when the request says 0.
pub const DEFAULT_PAGE_SIZE: u64 = 50;
/// The largest page a request may ask for.
pub const MAX_PAGE_SIZE: i32 = 1000;

/// A validated page request.
pub struct PageRequest {
    /// Which list the tokens belong to.
    list: &'static str,
    /// How many rows to return.
    pub size: u64,
    /// The key after which (in list order) this page starts, if any.
    pub after: Option<String>,
}

impl PageRequest {
    /// Validates `page_size` and `page_token`; `list` names the list (a token of another
    /// list, or one this server did not make, is refused).
    pub fn parse(list: &'static str, page_size: i32, page_token: &str) -> ApiResult<PageRequest> {
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if (1..=MAX_PAGE_SIZE).contains(&n) => n as u64,
            n => {
                return Err(ApiError::invalid(
                    "page_size",
                    format!(
                        "must be between 0 and {MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE}); got {n}"
                    ),
                ));
            }
        };
        let after = if page_token.is_empty() {
            None
        } else {
            let bytes = URL_SAFE_NO_PAD
                .decode(page_token)
                .map_err(|_| ApiError::invalid("page_token", "not a token this server issued"))?;
            let text = String::from_utf8(bytes)
                .map_err(|_| ApiError::invalid("page_token", "not a token this server issued"))?;
            let key = text
                .strip_prefix(list)
                .and_then(|rest| rest.strip_prefix('|'))
                .filter(|key| !key.is_empty())
                .ok_or_else(|| {
                    ApiError::invalid(
                        "page_token",
                        "not a token of this list; pass next_page_token back unchanged",
                    )
                })?;
            Some(key.to_owned())
        };
        Ok(PageRequest { list, size, after })
    }

    /// How many rows to fetch: one more than the page, to learn whether another follows.
    pub fn fetch(&self) -> u64 {
        self.size + 1
    }

    /// Cuts the fetched rows to the page and makes the next token from the last key.
    pub fn finish<T>(&self, mut rows: Vec<T>, key: impl Fn(&T) -> String) -> (Vec<T>, String) {
        if rows.len() as u64 > self.size {
            rows.truncate(self.size as usize);
            let token = rows
                .last()
                .map(|r| URL_SAFE_NO_PAD.encode(format!("{}|{}", self.list, key(r))))
                .unwrap_or_default();
            (rows, token)
        } else {
            (rows, String::new())
        }
    }
}

#[cfg(test)]
mod properties {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any token and size: an answer (a page or INVALID_ARGUMENT), never a panic.
        #[test]
        fn any_token_is_answered(size in any::<i32>(), token in any::<String>()) {
            let _ = PageRequest::parse("subscriptions", size, &token);
        }

        /// A token made by `finish` reads back as the last key, for its own list only.
        #[test]
        fn tokens_round_trip(key in "\\PC{1,60}", size in 1i32..50) {
            let page = PageRequest::parse("subscriptions", size, "").unwrap();
            let rows: Vec<String> = (0..=size).map(|_| key.clone()).collect();
            let (rows, token) = page.finish(rows, Clone::clone);
            prop_assert_eq!(rows.len(), usize::try_from(size).unwrap());
            let next = PageRequest::parse("subscriptions", size, &token).unwrap();
            prop_assert_eq!(next.after.as_deref(), Some(key.as_str()));
            prop_assert!(PageRequest::parse("workspaces", size, &token).is_err());
        }
    }
}
