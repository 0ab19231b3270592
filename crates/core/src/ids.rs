//! Prefixed, time-sortable resource ids such as `msg_01hq3k8w0y5x2v7n4m6p9r1t3s`.
//!
//! An id is a type prefix plus a lowercase ULID. The prefix lets a person (and the API)
//! tell a subscription id from a message id at a glance; the ULID makes ids sort by creation
//! time, so "list newest first" is an index scan on the primary key. Ids made by one process
//! are strictly increasing even within the same millisecond, which keeps pagination by id
//! stable for a burst of publishes.

use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use thiserror::Error;
use ulid::Ulid;

/// Number of characters of the ULID part of an id.
pub const ULID_CHARS: usize = 26;

/// The kinds of resource that carry a prefixed id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IdKind {
    Workspace,
    ApiKey,
    Subscription,
    Message,
    Delivery,
    Attempt,
}

impl IdKind {
    /// Every kind, for tests and for recognising an id of unknown kind.
    pub const ALL: [IdKind; 6] = [
        IdKind::Workspace,
        IdKind::ApiKey,
        IdKind::Subscription,
        IdKind::Message,
        IdKind::Delivery,
        IdKind::Attempt,
    ];

    /// The prefix of this kind's ids, underscore included.
    pub fn prefix(self) -> &'static str {
        match self {
            IdKind::Workspace => "wrk_",
            IdKind::ApiKey => "key_",
            IdKind::Subscription => "sub_",
            IdKind::Message => "msg_",
            IdKind::Delivery => "dlv_",
            IdKind::Attempt => "att_",
        }
    }

    /// A short noun for error messages ("a subscription id").
    pub fn noun(self) -> &'static str {
        match self {
            IdKind::Workspace => "workspace",
            IdKind::ApiKey => "API key",
            IdKind::Subscription => "subscription",
            IdKind::Message => "message",
            IdKind::Delivery => "delivery",
            IdKind::Attempt => "attempt",
        }
    }

    /// The kind whose prefix `id` starts with, if any. Does not validate the rest.
    pub fn of(id: &str) -> Option<IdKind> {
        IdKind::ALL
            .into_iter()
            .find(|kind| id.starts_with(kind.prefix()))
    }
}

/// A new id of the given kind: the prefix and a lowercase ULID.
pub fn new_id(kind: IdKind) -> String {
    let ulid = next_ulid();
    let mut buffer = [0u8; ULID_CHARS];
    let encoded = ulid.array_to_str(&mut buffer);
    let mut id = String::with_capacity(kind.prefix().len() + ULID_CHARS);
    id.push_str(kind.prefix());
    // Lowercase because ids appear in URLs and logs, where mixed case is easy to mistype; the
    // ULID alphabet has no letters whose lowercase forms collide.
    id.extend(encoded.chars().map(|c| c.to_ascii_lowercase()));
    id
}

/// Whether `s` is a well-formed id of `kind`: the exact prefix and 26 lowercase Crockford
/// base32 characters, the first of which is at most `7` (a ULID is 128 bits, and 26
/// characters hold 130, so a larger first character cannot be a ULID).
pub fn is_valid_id(kind: IdKind, s: &str) -> bool {
    match s.strip_prefix(kind.prefix()) {
        Some(rest) => is_lower_ulid(rest),
        None => false,
    }
}

/// The creation time of a valid id of `kind`, in unix milliseconds.
pub fn id_timestamp_ms(kind: IdKind, s: &str) -> Option<u64> {
    if !is_valid_id(kind, s) {
        return None;
    }
    let rest = s.get(kind.prefix().len()..)?;
    Ulid::from_string(rest).ok().map(|ulid| ulid.timestamp_ms())
}

/// The lowest id of `kind` made at `ms` (unix milliseconds) or later: every id made before
/// `ms` sorts below it, every id made at or after it does not. Retention deletes by id
/// ranges with it, on the primary key, where a time column would need an index of its own.
pub fn lowest_id_at(kind: IdKind, ms: u64) -> String {
    let ulid = Ulid::from_parts(ms.min((1 << 48) - 1), 0);
    let mut buffer = [0u8; ULID_CHARS];
    let encoded = ulid.array_to_str(&mut buffer);
    let mut id = String::with_capacity(kind.prefix().len() + ULID_CHARS);
    id.push_str(kind.prefix());
    id.extend(encoded.chars().map(|c| c.to_ascii_lowercase()));
    id
}

/// Why a string is not an id of the expected kind.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum IdError {
    #[error("is empty; expected {article} {noun} id like `{prefix}01hq3k8w0y5x2v7n4m6p9r1t3s`", article = article(.kind.noun()), noun = .kind.noun(), prefix = .kind.prefix())]
    Empty { kind: IdKind },
    #[error("`{value}` is not {article} {noun} id; those start with `{prefix}` followed by 26 lowercase letters and digits", value = .value, article = article(.kind.noun()), noun = .kind.noun(), prefix = .kind.prefix())]
    Malformed { kind: IdKind, value: String },
}

/// Checks that `s` is an id of `kind`, with an error message fit for an API caller.
pub fn check_id(kind: IdKind, s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if is_valid_id(kind, s) {
        return Ok(());
    }
    // Echo at most a short prefix of the bad value so a huge input cannot bloat the error.
    let value: String = s.chars().take(64).collect();
    Err(IdError::Malformed { kind, value })
}

fn article(noun: &str) -> &'static str {
    match noun.as_bytes().first() {
        Some(b'a' | b'e' | b'i' | b'o' | b'u' | b'A' | b'E' | b'I' | b'O' | b'U') => "an",
        _ => "a",
    }
}

fn is_lower_ulid(s: &str) -> bool {
    let bytes = s.as_bytes();
    bytes.len() == ULID_CHARS
        && matches!(bytes[0], b'0'..=b'7')
        && bytes.iter().all(|&b| is_lower_crockford(b))
}

/// Crockford base32 in lowercase: digits and letters except i, l, o and u.
fn is_lower_crockford(b: u8) -> bool {
    matches!(b, b'0'..=b'9' | b'a'..=b'h' | b'j' | b'k' | b'm' | b'n' | b'p'..=b't' | b'v'..=b'z')
}

/// The last ULID handed out by this process, so the next one can be made larger.
static LAST_ULID: Mutex<Ulid> = Mutex::new(Ulid::nil());

/// A ULID larger than every earlier one from this process.
///
/// In a new millisecond it is fresh randomness; within the same millisecond (or if the clock
/// stepped back) it is the previous ULID plus one, as the ULID spec's monotonic mode does. If
/// the random part would overflow (about one chance in 2^80) the time part moves forward one
/// millisecond instead of failing.
fn next_ulid() -> Ulid {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    // A poisoned lock only means another thread panicked while holding it; the Ulid inside is
    // still a valid value, so carry on with it.
    let mut last = LAST_ULID.lock().unwrap_or_else(PoisonError::into_inner);
    let next = if now_ms > last.timestamp_ms() {
        Ulid::from_parts(now_ms, rand::random::<u128>())
    } else {
        last.increment().unwrap_or_else(|| {
            Ulid::from_parts(
                last.timestamp_ms().saturating_add(1),
                rand::random::<u128>(),
            )
        })
    };
    *last = next;
    next
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn lowest_id_at_splits_ids_by_creation_time() {
        let before = new_id(IdKind::Message);
        let ms = id_timestamp_ms(IdKind::Message, &before).unwrap();
        let bound = lowest_id_at(IdKind::Message, ms + 1);
        assert!(is_valid_id(IdKind::Message, &bound), "{bound}");
        assert!(before < bound);
        assert!(lowest_id_at(IdKind::Message, ms) <= before);
        assert_eq!(id_timestamp_ms(IdKind::Message, &bound), Some(ms + 1));
    }

    #[test]
    fn prefixes() {
        let cases = [
            (IdKind::Workspace, "wrk_"),
            (IdKind::ApiKey, "key_"),
            (IdKind::Subscription, "sub_"),
            (IdKind::Message, "msg_"),
            (IdKind::Delivery, "dlv_"),
            (IdKind::Attempt, "att_"),
        ];
        for (kind, prefix) in cases {
            assert_eq!(kind.prefix(), prefix);
            let id = new_id(kind);
            assert!(id.starts_with(prefix), "{id}");
            assert_eq!(id.len(), prefix.len() + 26, "{id}");
            assert!(is_valid_id(kind, &id), "{id}");
            assert_eq!(IdKind::of(&id), Some(kind));
            assert_eq!(check_id(kind, &id), Ok(()));
        }
    }

    #[test]
    fn new_ids_are_lowercase_ulids() {
        let id = new_id(IdKind::Message);
        let ulid_part = &id[4..];
        assert_eq!(ulid_part, ulid_part.to_ascii_lowercase());
        let parsed = Ulid::from_string(ulid_part).unwrap();
        let now_ms = u64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap();
        // Within a minute of now: the time part really is the creation time.
        assert!(now_ms.abs_diff(parsed.timestamp_ms()) < 60_000);
        assert_eq!(
            id_timestamp_ms(IdKind::Message, &id),
            Some(parsed.timestamp_ms())
        );
    }

    #[test]
    fn ids_sort_in_creation_order_even_within_a_millisecond() {
        let ids: Vec<String> = (0..10_000).map(|_| new_id(IdKind::Delivery)).collect();
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1], "{} !< {}", pair[0], pair[1]);
        }
    }

    #[test]
    fn ids_are_unique_and_ordered_across_threads() {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    let ids: Vec<String> = (0..2_000).map(|_| new_id(IdKind::Attempt)).collect();
                    for pair in ids.windows(2) {
                        assert!(pair[0] < pair[1]);
                    }
                    ids
                })
            })
            .collect();
        let mut all: Vec<String> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let count = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), count);
    }

    #[test]
    fn validation() {
        let good = "01hq3k8w0y5x2v7n4m6p9r1t3s";
        let cases: &[(IdKind, String, bool)] = &[
            (IdKind::Message, format!("msg_{good}"), true),
            (IdKind::Workspace, format!("wrk_{good}"), true),
            (
                IdKind::Workspace,
                "wrk_7zzzzzzzzzzzzzzzzzzzzzzzzz".into(),
                true,
            ),
            (
                IdKind::Workspace,
                "wrk_00000000000000000000000000".into(),
                true,
            ),
            // Wrong prefix for the kind.
            (IdKind::Subscription, format!("msg_{good}"), false),
            (IdKind::Message, format!("MSG_{good}"), false),
            (IdKind::Message, format!("msg{good}"), false),
            (IdKind::Message, good.into(), false),
            // Uppercase ULID.
            (
                IdKind::Message,
                format!("msg_{}", good.to_uppercase()),
                false,
            ),
            // Too short, too long.
            (IdKind::Message, format!("msg_{}", &good[..25]), false),
            (IdKind::Message, format!("msg_{good}0"), false),
            // Letters outside Crockford's alphabet.
            (
                IdKind::Message,
                "msg_01hq3k8w0y5x2v7n4m6p9r1t3i".into(),
                false,
            ),
            (
                IdKind::Message,
                "msg_01hq3k8w0y5x2v7n4m6p9r1t3l".into(),
                false,
            ),
            (
                IdKind::Message,
                "msg_01hq3k8w0y5x2v7n4m6p9r1t3o".into(),
                false,
            ),
            (
                IdKind::Message,
                "msg_01hq3k8w0y5x2v7n4m6p9r1t3u".into(),
                false,
            ),
            (
                IdKind::Message,
                "msg_01hq3k8w0y5x2v7n4m6p9r1t3-".into(),
                false,
            ),
            // First character beyond 7 overflows 128 bits.
            (
                IdKind::Message,
                "msg_8zzzzzzzzzzzzzzzzzzzzzzzzz".into(),
                false,
            ),
            // Non-ASCII of the right byte length.
            (
                IdKind::Message,
                "msg_01hq3k8w0y5x2v7n4m6p9r1té".into(),
                false,
            ),
            (IdKind::Message, String::new(), false),
            (IdKind::Message, "msg_".into(), false),
        ];
        for (kind, id, want) in cases {
            assert_eq!(is_valid_id(*kind, id), *want, "{kind:?} {id:?}");
            assert_eq!(check_id(*kind, id).is_ok(), *want, "{kind:?} {id:?}");
        }
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            check_id(IdKind::Subscription, "").unwrap_err().to_string(),
            "is empty; expected a subscription id like `sub_01hq3k8w0y5x2v7n4m6p9r1t3s`"
        );
        assert_eq!(
            check_id(IdKind::ApiKey, "nope").unwrap_err().to_string(),
            "`nope` is not an API key id; those start with `key_` followed by 26 lowercase letters and digits"
        );
        let long = "x".repeat(1000);
        let message = check_id(IdKind::Attempt, &long).unwrap_err().to_string();
        assert!(message.len() < 200, "{message}");
    }

    #[test]
    fn kind_of_unknown_prefix() {
        assert_eq!(IdKind::of("evt_01hq3k8w0y5x2v7n4m6p9r1t3s"), None);
        assert_eq!(IdKind::of(""), None);
        assert_eq!(id_timestamp_ms(IdKind::Message, "msg_bad"), None);
    }
}
