//! Event names (`conversation.created`) and the event filters that subscriptions use to pick
//! which events they receive.
//!
//! Publishers come from several code bases: some already say `conversation.created`, some say
//! `CONVERSATION_CREATED`, some `Conversation.Created`. Everything is normalised to one stored
//! form, lowercase and dotted, so that a filter written in one style matches events published
//! in another, and so that matching on the hot path is a plain byte comparison.

use thiserror::Error;

/// The longest accepted event name, in bytes.
pub const MAX_EVENT_NAME_BYTES: usize = 128;
/// The fewest dot-separated segments of an event name (family and action).
pub const MIN_EVENT_NAME_SEGMENTS: usize = 2;
/// The most dot-separated segments of an event name (`a.b.c.d.e`).
pub const MAX_EVENT_NAME_SEGMENTS: usize = 5;
/// The most patterns one event filter may hold.
pub const MAX_FILTER_PATTERNS: usize = 100;

/// Why a string is not an acceptable event name. Each message says what to change.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum EventNameError {
    #[error("event name is empty; use a name such as `conversation.created`")]
    Empty,
    #[error("event name is {len} bytes long; the limit is {max} bytes")]
    TooLong { len: usize, max: usize },
    #[error(
        "event name contains whitespace; use a name such as `conversation.created` with no spaces"
    )]
    Whitespace,
    #[error(
        "event name contains {ch:?}, which is not allowed; use only ASCII letters, digits, `_` and `.`"
    )]
    InvalidCharacter { ch: char },
    #[error(
        "event name `{name}` is a single word; name the family and the action, such as `{suggestion}`"
    )]
    SingleWord { name: String, suggestion: String },
    #[error(
        "event name `{name}` has an empty segment; separate segments with a single `.` and do not start or end with one"
    )]
    EmptySegment { name: String },
    #[error(
        "event name `{name}` has {count} segments; use 2 to 5 dot-separated segments, such as `conversation.created` or `billing.invoice.paid`"
    )]
    TooManySegments { name: String, count: usize },
    #[error("segment `{segment}` of event name `{name}` must start with a letter")]
    SegmentStart { name: String, segment: String },
    #[error(
        "event name `{name}` mixes the dotted and upper-snake forms; write `{dotted}` or `{upper}`"
    )]
    MixedForm {
        name: String,
        dotted: String,
        upper: String,
    },
}

/// Normalises an event name to its stored form, lowercase and dotted.
///
/// Accepts dotted names in any case (`Conversation.Created` becomes `conversation.created`)
/// and upper snake case, where the first `_` separates the family from the action and later
/// ones stay (`CONVERSATION_STATUS_CHANGED` becomes `conversation.status_changed`).
pub fn normalize_event_name(s: &str) -> Result<String, EventNameError> {
    check_characters(s)?;
    if s.contains('.') {
        let lower = s.to_ascii_lowercase();
        check_segments(&lower, MIN_EVENT_NAME_SEGMENTS, MAX_EVENT_NAME_SEGMENTS)?;
        Ok(lower)
    } else if s.contains('_') {
        normalize_upper_snake(s)
    } else {
        let family = s.to_ascii_lowercase();
        Err(EventNameError::SingleWord {
            suggestion: format!("{family}.created"),
            name: s.to_owned(),
        })
    }
}

/// Why an event filter was refused.
///
/// `index` is the position of the offending pattern in the list given to
/// [`EventFilter::parse`], so an API layer can point at the exact field; it is `None` when the
/// list as a whole is wrong (empty, or too long).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{message}")]
pub struct FilterError {
    pub index: Option<usize>,
    pub message: String,
}

/// A set of event-name patterns: exact names, prefix wildcards such as `conversation.*`, or
/// `*` for everything.
///
/// A wildcard `family.*` matches every name that starts with `family.` and has at least one
/// more segment, so `billing.*` matches `billing.invoice.paid` too.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EventFilter {
    /// The normalised patterns, sorted and without duplicates: what the API shows back.
    patterns: Vec<String>,
    /// Whether `*` is among the patterns; then it is the only one.
    all: bool,
    /// The exact names, sorted, for a binary search.
    exact: Vec<String>,
    /// The wildcard prefixes with their trailing dot (`conversation.`), for `starts_with`.
    prefixes: Vec<String>,
}

impl EventFilter {
    /// Parses and normalises a list of patterns. See the type's documentation for the forms.
    pub fn parse<I, S>(patterns: I) -> Result<EventFilter, FilterError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut normalized = Vec::new();
        for (index, pattern) in patterns.into_iter().enumerate() {
            if index >= MAX_FILTER_PATTERNS {
                return Err(FilterError {
                    index: None,
                    message: format!(
                        "event filter has more than {MAX_FILTER_PATTERNS} patterns; use family wildcards such as `conversation.*` to cover many events"
                    ),
                });
            }
            let pattern = normalize_pattern(pattern.as_ref()).map_err(|message| FilterError {
                index: Some(index),
                message,
            })?;
            normalized.push(pattern);
        }
        if normalized.is_empty() {
            return Err(FilterError {
                index: None,
                message: "event filter is empty; list event names such as `conversation.created`, family wildcards such as `conversation.*`, or `*` for every event".to_owned(),
            });
        }
        Ok(EventFilter::from_normalized(normalized))
    }

    /// A filter that matches every event.
    pub fn all() -> EventFilter {
        EventFilter::from_normalized(vec!["*".to_owned()])
    }

    /// The normalised patterns, sorted and deduplicated; just `["*"]` when `*` was given.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether this filter matches every event.
    pub fn is_all(&self) -> bool {
        self.all
    }

    /// Whether an event, by its normalised name, passes this filter. Does not allocate.
    pub fn matches(&self, normalized_event_name: &str) -> bool {
        if self.all {
            return true;
        }
        let name = normalized_event_name;
        if self
            .exact
            .binary_search_by(|exact| exact.as_str().cmp(name))
            .is_ok()
        {
            return true;
        }
        self.prefixes
            .iter()
            .any(|prefix| name.len() > prefix.len() && name.starts_with(prefix.as_str()))
    }

    fn from_normalized(mut patterns: Vec<String>) -> EventFilter {
        if patterns.iter().any(|p| p == "*") {
            patterns = vec!["*".to_owned()];
        }
        patterns.sort();
        patterns.dedup();
        let all = patterns.first().is_some_and(|p| p == "*");
        let mut exact = Vec::new();
        let mut prefixes = Vec::new();
        for pattern in &patterns {
            match pattern.strip_suffix('*') {
                // Keep the dot so `conversation.` cannot match `conversations.created`.
                Some(prefix) => prefixes.push(prefix.to_owned()),
                None => exact.push(pattern.clone()),
            }
        }
        EventFilter {
            patterns,
            all,
            exact,
            prefixes,
        }
    }
}

/// Normalises one filter pattern, or says what is wrong with it.
fn normalize_pattern(pattern: &str) -> Result<String, String> {
    if pattern == "*" {
        return Ok("*".to_owned());
    }
    let Some(star) = pattern.find('*') else {
        return normalize_event_name(pattern).map_err(|e| e.to_string());
    };
    if star + 1 != pattern.len() {
        return Err(format!(
            "pattern `{}` has `*` in the middle; `*` may only end a pattern, as in `conversation.*`, or stand alone",
            printable(pattern)
        ));
    }
    let stem = &pattern[..star];
    if let Some(prefix) = stem.strip_suffix('.') {
        check_characters(prefix).map_err(|e| wildcard_error(pattern, &e))?;
        if prefix.contains('.') || !prefix.contains('_') || has_lowercase(prefix) {
            let lower = prefix.to_ascii_lowercase();
            check_segments(&lower, 1, MAX_EVENT_NAME_SEGMENTS - 1)
                .map_err(|e| wildcard_error(pattern, &e))?;
            return Ok(format!("{lower}.*"));
        }
        // `CONVERSATION_STATUS.*` is neither form; say so rather than guess.
        return Err(format!(
            "pattern `{pattern}` mixes the upper-snake and dotted forms; write `{}.*`",
            prefix.to_ascii_lowercase()
        ));
    }
    if let Some(family) = stem.strip_suffix('_') {
        check_characters(family).map_err(|e| wildcard_error(pattern, &e))?;
        if family.contains('.') {
            return Err(format!(
                "pattern `{pattern}` mixes the dotted and upper-snake forms; write `{}.*`",
                family.to_ascii_lowercase()
            ));
        }
        if has_lowercase(family) {
            return Err(format!(
                "pattern `{pattern}` mixes cases; write `{}.*` or `{}_*`",
                family.to_ascii_lowercase(),
                family.to_ascii_uppercase()
            ));
        }
        if family.contains('_') {
            // In upper snake case only the first `_` separates segments, so a deeper prefix
            // such as `BILLING_INVOICE_*` cannot be told apart from an action prefix.
            return Err(format!(
                "pattern `{pattern}` names more than a family; upper-snake wildcards take one word, as in `CONVERSATION_*`; for deeper prefixes use the dotted form, as in `{}.*`",
                family.to_ascii_lowercase().replace('_', ".")
            ));
        }
        let lower = family.to_ascii_lowercase();
        check_segments(&lower, 1, 1).map_err(|e| wildcard_error(pattern, &e))?;
        return Ok(format!("{lower}.*"));
    }
    Err(format!(
        "pattern `{}` is not a valid wildcard; use `family.*` (such as `conversation.*`), `FAMILY_*`, or `*` alone",
        printable(pattern)
    ))
}

/// Rewords an event-name error about a wildcard's prefix so it names the whole pattern.
fn wildcard_error(pattern: &str, error: &EventNameError) -> String {
    match error {
        EventNameError::Empty => format!(
            "pattern `{pattern}` has nothing before the wildcard; write a family such as `conversation.*`, or `*` alone for every event"
        ),
        EventNameError::TooManySegments { .. } => format!(
            "pattern `{pattern}` is too deep; event names have at most {MAX_EVENT_NAME_SEGMENTS} segments, so a wildcard prefix has at most {}",
            MAX_EVENT_NAME_SEGMENTS - 1
        ),
        EventNameError::EmptySegment { .. } => format!(
            "pattern `{}` has an empty segment; separate segments with a single `.`",
            printable(pattern)
        ),
        EventNameError::SegmentStart { segment, .. } => {
            format!("segment `{segment}` of pattern `{pattern}` must start with a letter")
        }
        other => format!("wildcard pattern is invalid: {other}"),
    }
}

/// Checks the rules every form shares: not empty, not too long, only `[A-Za-z0-9_.]`.
fn check_characters(s: &str) -> Result<(), EventNameError> {
    if s.is_empty() {
        return Err(EventNameError::Empty);
    }
    if s.len() > MAX_EVENT_NAME_BYTES {
        return Err(EventNameError::TooLong {
            len: s.len(),
            max: MAX_EVENT_NAME_BYTES,
        });
    }
    if s.chars().any(char::is_whitespace) {
        return Err(EventNameError::Whitespace);
    }
    // ASCII only: Unicode case folding would let look-alikes (the Kelvin sign lowercases to
    // `k`) produce the same stored name from different bytes.
    if let Some(ch) = s
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
    {
        return Err(EventNameError::InvalidCharacter { ch });
    }
    Ok(())
}

/// Checks a lowercase dotted name (or wildcard prefix): segment count within `min..=max`,
/// each segment `[a-z][a-z0-9_]*`.
fn check_segments(lower: &str, min: usize, max: usize) -> Result<(), EventNameError> {
    if lower.split('.').any(str::is_empty) {
        return Err(EventNameError::EmptySegment {
            name: lower.to_owned(),
        });
    }
    let count = lower.split('.').count();
    if count > max {
        return Err(EventNameError::TooManySegments {
            name: lower.to_owned(),
            count,
        });
    }
    if count < min {
        return Err(EventNameError::SingleWord {
            name: lower.to_owned(),
            suggestion: format!("{lower}.created"),
        });
    }
    for segment in lower.split('.') {
        check_segment(lower, segment)?;
    }
    Ok(())
}

fn check_segment(name: &str, segment: &str) -> Result<(), EventNameError> {
    if segment.starts_with(|c: char| c.is_ascii_lowercase()) {
        // The caller has already allowed only `[a-z0-9_.]` after lowercasing.
        Ok(())
    } else {
        Err(EventNameError::SegmentStart {
            name: name.to_owned(),
            segment: segment.to_owned(),
        })
    }
}

/// `CONVERSATION_STATUS_CHANGED` to `conversation.status_changed`.
fn normalize_upper_snake(s: &str) -> Result<String, EventNameError> {
    if has_lowercase(s) {
        let lower = s.to_ascii_lowercase();
        return Err(EventNameError::MixedForm {
            name: s.to_owned(),
            dotted: lower.replacen('_', ".", 1),
            upper: s.to_ascii_uppercase(),
        });
    }
    let lower = s.to_ascii_lowercase();
    let Some((family, action)) = lower.split_once('_') else {
        // Unreachable for callers that checked for `_`, but an error beats a panic.
        return Err(EventNameError::SingleWord {
            suggestion: format!("{lower}.created"),
            name: s.to_owned(),
        });
    };
    if family.is_empty() || action.is_empty() {
        return Err(EventNameError::EmptySegment { name: s.to_owned() });
    }
    check_segment(s, family).map_err(|_| EventNameError::SegmentStart {
        name: s.to_owned(),
        segment: family.to_ascii_uppercase(),
    })?;
    check_segment(s, action).map_err(|_| EventNameError::SegmentStart {
        name: s.to_owned(),
        segment: action.to_ascii_uppercase(),
    })?;
    Ok(format!("{family}.{action}"))
}

fn has_lowercase(s: &str) -> bool {
    s.bytes().any(|b| b.is_ascii_lowercase())
}

/// A pattern shortened and escaped for an error message, since it has not been validated.
fn printable(s: &str) -> String {
    let short: String = s.chars().take(MAX_EVENT_NAME_BYTES).collect();
    short.escape_debug().to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn normalizes_accepted_forms() {
        let cases = [
            ("conversation.created", "conversation.created"),
            ("Conversation.Created", "conversation.created"),
            ("CONVERSATION.CREATED", "conversation.created"),
            ("CONVERSATION_UPDATED", "conversation.updated"),
            ("CONVERSATION_STATUS_CHANGED", "conversation.status_changed"),
            ("CALL_HANDLED", "call.handled"),
            ("billing.invoice.paid", "billing.invoice.paid"),
            ("a.b.c.d.e", "a.b.c.d.e"),
            ("conversation.status_changed", "conversation.status_changed"),
            ("Conversation.Status_Changed", "conversation.status_changed"),
            ("v2.thing2", "v2.thing2"),
            ("A2_B3", "a2.b3"),
            ("call.handled_", "call.handled_"),
        ];
        for (input, want) in cases {
            assert_eq!(
                normalize_event_name(input).as_deref(),
                Ok(want),
                "input {input:?}"
            );
            // Normalising is idempotent.
            assert_eq!(normalize_event_name(want).as_deref(), Ok(want));
        }
    }

    #[test]
    fn length_limit_is_inclusive() {
        let at_limit = format!("a.{}", "b".repeat(MAX_EVENT_NAME_BYTES - 2));
        assert!(normalize_event_name(&at_limit).is_ok());
        let over = format!("a.{}", "b".repeat(MAX_EVENT_NAME_BYTES - 1));
        assert_eq!(
            normalize_event_name(&over),
            Err(EventNameError::TooLong { len: 129, max: 128 })
        );
    }

    #[test]
    fn rejects_bad_names() {
        use EventNameError as E;
        let s = |v: &str| v.to_owned();
        let cases: Vec<(&str, EventNameError)> = vec![
            ("", E::Empty),
            ("conversation created", E::Whitespace),
            (" conversation.created", E::Whitespace),
            ("conversation.created\n", E::Whitespace),
            ("conversation.created\u{a0}", E::Whitespace),
            ("conversation-created", E::InvalidCharacter { ch: '-' }),
            ("conversation.créated", E::InvalidCharacter { ch: 'é' }),
            ("conversation.created\0", E::InvalidCharacter { ch: '\0' }),
            ("conversation.*", E::InvalidCharacter { ch: '*' }),
            // The Kelvin sign lowercases to `k` under Unicode rules.
            ("\u{212a}ey.created", E::InvalidCharacter { ch: '\u{212a}' }),
            (
                "conversation",
                E::SingleWord {
                    name: s("conversation"),
                    suggestion: s("conversation.created"),
                },
            ),
            (
                "CONVERSATION",
                E::SingleWord {
                    name: s("CONVERSATION"),
                    suggestion: s("conversation.created"),
                },
            ),
            ("a..b", E::EmptySegment { name: s("a..b") }),
            (".a", E::EmptySegment { name: s(".a") }),
            ("a.", E::EmptySegment { name: s("a.") }),
            (".", E::EmptySegment { name: s(".") }),
            (
                "a.b.c.d.e.f",
                E::TooManySegments {
                    name: s("a.b.c.d.e.f"),
                    count: 6,
                },
            ),
            (
                "conversation.2fa",
                E::SegmentStart {
                    name: s("conversation.2fa"),
                    segment: s("2fa"),
                },
            ),
            (
                "conversation._x",
                E::SegmentStart {
                    name: s("conversation._x"),
                    segment: s("_x"),
                },
            ),
            (
                "Conversation_created",
                E::MixedForm {
                    name: s("Conversation_created"),
                    dotted: s("conversation.created"),
                    upper: s("CONVERSATION_CREATED"),
                },
            ),
            (
                "conversation_created",
                E::MixedForm {
                    name: s("conversation_created"),
                    dotted: s("conversation.created"),
                    upper: s("CONVERSATION_CREATED"),
                },
            ),
            (
                "CONVERSATION_",
                E::EmptySegment {
                    name: s("CONVERSATION_"),
                },
            ),
            (
                "_CREATED",
                E::EmptySegment {
                    name: s("_CREATED"),
                },
            ),
            (
                "CONVERSATION__CREATED",
                E::SegmentStart {
                    name: s("CONVERSATION__CREATED"),
                    segment: s("_CREATED"),
                },
            ),
            (
                "2FA_ENABLED",
                E::SegmentStart {
                    name: s("2FA_ENABLED"),
                    segment: s("2FA"),
                },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_event_name(input), Err(want), "input {input:?}");
        }
    }

    #[test]
    fn error_messages_say_what_to_do() {
        let cases = [
            (
                "",
                "event name is empty; use a name such as `conversation.created`",
            ),
            (
                "conversation",
                "event name `conversation` is a single word; name the family and the action, such as `conversation.created`",
            ),
            (
                "Conversation_created",
                "event name `Conversation_created` mixes the dotted and upper-snake forms; write `conversation.created` or `CONVERSATION_CREATED`",
            ),
            (
                "a..b",
                "event name `a..b` has an empty segment; separate segments with a single `.` and do not start or end with one",
            ),
            (
                "conv-created",
                "event name contains '-', which is not allowed; use only ASCII letters, digits, `_` and `.`",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                normalize_event_name(input).unwrap_err().to_string(),
                want,
                "input {input:?}"
            );
        }
    }

    #[test]
    fn filter_parses_and_normalizes() {
        let cases: &[(&[&str], &[&str])] = &[
            (&["conversation.created"], &["conversation.created"]),
            (&["CONVERSATION_CREATED"], &["conversation.created"]),
            (&["conversation.*"], &["conversation.*"]),
            (&["Conversation.*"], &["conversation.*"]),
            (&["CONVERSATION_*"], &["conversation.*"]),
            (&["billing.invoice.*"], &["billing.invoice.*"]),
            (&["a.b.c.d.*"], &["a.b.c.d.*"]),
            (&["*"], &["*"]),
            (
                &[
                    "conversation.created",
                    "conversation.*",
                    "*",
                    "call.handled",
                ],
                &["*"],
            ),
            (
                &[
                    "conversation.updated",
                    "CONVERSATION_UPDATED",
                    "Conversation.Updated",
                    "call.handled",
                    "CONVERSATION_*",
                    "conversation.*",
                ],
                &["call.handled", "conversation.*", "conversation.updated"],
            ),
        ];
        for (input, want) in cases {
            let filter = EventFilter::parse(input.iter()).unwrap();
            assert_eq!(filter.patterns(), *want, "input {input:?}");
            // Parsing the normalised form again gives the same filter.
            assert_eq!(EventFilter::parse(filter.patterns()).unwrap(), filter);
        }
    }

    #[test]
    fn filter_rejects_bad_patterns() {
        let too_many: Vec<String> = (0..=MAX_FILTER_PATTERNS)
            .map(|i| format!("family.event{i}"))
            .collect();
        let at_limit = &too_many[..MAX_FILTER_PATTERNS];
        assert!(EventFilter::parse(at_limit).is_ok());

        let cases: Vec<(Vec<String>, Option<usize>, &str)> = vec![
            (vec![], None, "event filter is empty"),
            (too_many, None, "more than 100 patterns"),
            (
                vec!["call.handled".into(), "conversation".into()],
                Some(1),
                "single word",
            ),
            (vec!["".into()], Some(0), "event name is empty"),
            (vec!["**".into()], Some(0), "`*` in the middle"),
            (vec!["*.created".into()], Some(0), "`*` in the middle"),
            (vec!["conv*.x".into()], Some(0), "`*` in the middle"),
            (
                vec!["conversation*".into()],
                Some(0),
                "not a valid wildcard",
            ),
            (vec![".*".into()], Some(0), "nothing before the wildcard"),
            (vec!["_*".into()], Some(0), "nothing before the wildcard"),
            (vec!["a..b.*".into()], Some(0), "empty segment"),
            (vec!["a.b.c.d.e.*".into()], Some(0), "too deep"),
            (vec!["2fa.*".into()], Some(0), "must start with a letter"),
            (vec!["2FA_*".into()], Some(0), "must start with a letter"),
            (vec!["Conversation_*".into()], Some(0), "mixes cases"),
            (vec!["conversation_*".into()], Some(0), "mixes cases"),
            (
                vec!["BILLING_INVOICE_*".into()],
                Some(0),
                "`billing.invoice.*`",
            ),
            (vec!["CONVERSATION_STATUS.*".into()], Some(0), "mixes"),
            (vec!["billing.invoice_*".into()], Some(0), "mixes"),
            (vec!["con versation.*".into()], Some(0), "whitespace"),
            (vec!["a-b.*".into()], Some(0), "'-'"),
        ];
        for (input, index, message_part) in cases {
            let error = EventFilter::parse(&input).unwrap_err();
            assert_eq!(error.index, index, "input {input:?}");
            assert!(
                error.message.contains(message_part),
                "input {input:?}: {:?} lacks {message_part:?}",
                error.message
            );
            assert_eq!(error.to_string(), error.message);
        }
    }

    #[test]
    fn filter_matching() {
        let filter = EventFilter::parse([
            "conversation.created",
            "billing.*",
            "CALL_HANDLED",
            "a.b.c.*",
        ])
        .unwrap();
        let cases = [
            ("conversation.created", true),
            ("conversation.updated", false),
            ("conversation.created.x", false),
            ("conversation", false),
            ("billing.invoice.paid", true),
            ("billing.paid", true),
            ("billing", false),
            ("billing.", false),
            ("billings.paid", false),
            ("call.handled", true),
            ("call.handled_late", false),
            ("a.b.c.d", true),
            ("a.b.c", false),
            ("a.b.d.e", false),
            ("", false),
        ];
        for (event, want) in cases {
            assert_eq!(filter.matches(event), want, "event {event:?}");
        }

        let all = EventFilter::parse(["*"]).unwrap();
        assert_eq!(all, EventFilter::all());
        assert!(all.is_all());
        assert!(!filter.is_all());
        for (event, _) in cases {
            assert!(all.matches(event));
        }
    }
}
