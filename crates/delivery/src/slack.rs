//! The message body for Slack incoming webhooks, which accept `{"text": ...}` and no envelope.
//!
//! A Slack channel is read by people, so the message names the event and a handful of the
//! payload's fields rather than dumping the JSON. Slack's mrkdwn treats `&`, `<` and `>` as
//! control characters (links, mentions), so every piece of event data is escaped: a payload
//! must not be able to ping `<!channel>` or forge a link.

use serde_json::Value;

/// How many payload fields the message lists; the rest are counted, not shown.
const MAX_FIELDS: usize = 10;
/// Longest value shown for one field, in characters.
const MAX_VALUE_CHARS: usize = 200;

/// The JSON body of a Slack incoming-webhook message for one event, e.g.
///
/// ```text
/// *conversation.created* · msg_2Vt… · wrk_xyz789
/// • conversation.id: cnv_abc123
/// • conversation.contactId: cnt_def456
/// ```
///
/// Fields are the scalar leaves of `payload` as dotted paths (array items by index), in the
/// payload's order, at most ten.
pub fn slack_message(event: &str, msg_id: &str, workspace_id: &str, payload: &Value) -> Vec<u8> {
    let mut fields = Vec::new();
    let mut total = 0;
    collect_leaves(payload, &mut String::new(), &mut fields, &mut total);

    let mut text = format!(
        "*{}* · {} · {}",
        escape(event),
        escape(msg_id),
        escape(workspace_id)
    );
    for (path, value) in &fields {
        text.push_str("\n• ");
        text.push_str(&escape(path));
        text.push_str(": ");
        text.push_str(&escape(value));
    }
    if total > fields.len() {
        text.push_str(&format!("\n…and {} more fields", total - fields.len()));
    }
    // Display of a `Value` cannot fail, unlike `to_vec`'s Result.
    serde_json::json!({ "text": text }).to_string().into_bytes()
}

/// Walks `value` depth first, keeping the first `MAX_FIELDS` scalar leaves and counting all.
fn collect_leaves(
    value: &Value,
    path: &mut String,
    fields: &mut Vec<(String, String)>,
    total: &mut usize,
) {
    let mut descend = |key: &str, child: &Value, path: &mut String| {
        let restore = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
        collect_leaves(child, path, fields, total);
        path.truncate(restore);
    };
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                descend(key, child, path);
            }
        }
        Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                descend(&index.to_string(), child, path);
            }
        }
        scalar => {
            *total += 1;
            if fields.len() < MAX_FIELDS {
                let label = if path.is_empty() { "payload" } else { path };
                fields.push((label.to_owned(), render(scalar)));
            }
        }
    }
}

/// One line per field: strings unquoted, newlines flattened, long values shortened.
fn render(scalar: &Value) -> String {
    let raw = match scalar {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let flat: String = raw
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() > MAX_VALUE_CHARS {
        let mut short: String = flat.chars().take(MAX_VALUE_CHARS).collect();
        short.push('…');
        short
    } else {
        flat
    }
}

/// Slack's escaping for message text: exactly these three characters.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            other => escaped.push(other),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text_of(body: &[u8]) -> String {
        let value: Value = serde_json::from_slice(body).expect("valid JSON");
        let object = value.as_object().expect("an object");
        assert_eq!(object.len(), 1, "only the text field: {value}");
        object["text"]
            .as_str()
            .expect("text is a string")
            .to_owned()
    }

    #[test]
    fn names_event_and_fields() {
        let payload = json!({"conversation": {"id": "cnv_abc123", "contactId": "cnt_def456",
            "tags": ["vip", 3], "open": true, "assignee": null}});
        let text = text_of(&slack_message(
            "conversation.created",
            "msg_1",
            "wrk_xyz789",
            &payload,
        ));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "*conversation.created* · msg_1 · wrk_xyz789");
        for expected in [
            "• conversation.id: cnv_abc123",
            "• conversation.contactId: cnt_def456",
            "• conversation.tags.0: vip",
            "• conversation.tags.1: 3",
            "• conversation.open: true",
            "• conversation.assignee: null",
        ] {
            assert!(lines.contains(&expected), "{expected:?} missing in {text}");
        }
        assert_eq!(lines.len(), 7, "{text}");
    }

    #[test]
    fn escapes_slack_control_characters() {
        let payload = json!({"subject": "<!channel> Tom & Jerry <http://evil|click>"});
        let text = text_of(&slack_message("a<b>&c", "msg_1", "wrk_1", &payload));
        assert!(text.starts_with("*a&lt;b&gt;&amp;c*"), "{text}");
        assert!(
            text.contains("• subject: &lt;!channel&gt; Tom &amp; Jerry &lt;http://evil|click&gt;"),
            "{text}"
        );
        assert!(!text.contains('<') && !text.contains('>'), "{text}");
    }

    #[test]
    fn caps_the_number_of_fields() {
        let payload: serde_json::Map<String, Value> =
            (0..25).map(|i| (format!("k{i:02}"), json!(i))).collect();
        let text = text_of(&slack_message("e", "m", "w", &Value::Object(payload)));
        assert_eq!(text.matches("\n• ").count(), MAX_FIELDS, "{text}");
        assert!(text.ends_with("\n…and 15 more fields"), "{text}");
    }

    #[test]
    fn scalar_and_empty_payloads() {
        let text = text_of(&slack_message("e", "m", "w", &json!("hello\nworld")));
        assert!(text.ends_with("\n• payload: hello world"), "{text}");
        let text = text_of(&slack_message("e", "m", "w", &json!({})));
        assert_eq!(text, "*e* · m · w");
    }

    #[test]
    fn shortens_long_values() {
        let long = "x".repeat(1000);
        let text = text_of(&slack_message("e", "m", "w", &json!({ "body": long })));
        let line = text.lines().nth(1).expect("a field line");
        assert!(line.chars().count() < 220, "{line}");
        assert!(line.ends_with('…'));
    }
}
