//! The rows of a hot statement as its one parameter: JSON text for PostgreSQL, SQLite's
//! binary JSON (JSONB) for SQLite, written straight from the values with no intermediate
//! JSON tree; and JSON arrays of ids for `= ANY` / `IN` lists.

use std::fmt::Write as _;

use sea_orm::{DbBackend, Value};

/// JSONB element types (sqlite.org/jsonb.html): the low four bits of an element's header.
/// Those [`JsonRows`] writes.
mod jsonb {
    pub(super) const NULL: u8 = 0;
    pub(super) const TRUE: u8 = 1;
    pub(super) const FALSE: u8 = 2;
    pub(super) const INT: u8 = 3;
    /// Text as it is, with nothing escaped.
    pub(super) const TEXTRAW: u8 = 10;
    pub(super) const ARRAY: u8 = 11;
}

/// Rows for a statement's parameter, `[[field, ...], ...]`, built without intermediate
/// values: JSON text for PostgreSQL, SQLite's binary JSON (JSONB) for SQLite.
///
/// SQLite's rows are JSONB because `jsonb_each`, which reads them, has to turn JSON text
/// into JSONB before it can step through it, and JSON text took a visible share of its
/// thread's instructions under `sluice bench`. JSONB also stores strings raw (type
/// TEXTRAW), so they need no escaping on the way in.
///
/// The fields of a row are written in the order of its statement's column list
/// (`sql::Column`), which is also how the statement reads them back.
#[derive(Debug)]
pub struct JsonRows {
    buf: RowsBuf,
    rows: usize,
    fields: usize,
}

/// What [`JsonRows`] writes: PostgreSQL's JSON text or SQLite's JSONB.
#[derive(Debug)]
enum RowsBuf {
    Text(String),
    Jsonb(Jsonb),
}

/// JSONB under construction: the finished rows' elements and the current row's fields.
/// An element's header gives the size of its payload, so a row is encoded once it ends.
#[derive(Debug, Default)]
struct Jsonb {
    rows: Vec<u8>,
    row: Vec<u8>,
}

/// Appends a JSONB element header: the type in the low four bits, the payload's size in
/// the high four (up to 11) or in the 1, 2, 4 or 8 big-endian bytes that follow (12 to 15).
fn push_jsonb_header(buf: &mut Vec<u8>, kind: u8, size: usize) {
    if size <= 11 {
        // `size` fits in four bits here.
        buf.push(((size as u8) << 4) | kind);
    } else if let Ok(size) = u8::try_from(size) {
        buf.extend_from_slice(&[0xc0 | kind, size]);
    } else if let Ok(size) = u16::try_from(size) {
        buf.push(0xd0 | kind);
        buf.extend_from_slice(&size.to_be_bytes());
    } else if let Ok(size) = u32::try_from(size) {
        buf.push(0xe0 | kind);
        buf.extend_from_slice(&size.to_be_bytes());
    } else {
        buf.push(0xf0 | kind);
        buf.extend_from_slice(&(size as u64).to_be_bytes());
    }
}

impl Jsonb {
    fn end_row(&mut self) {
        push_jsonb_header(&mut self.rows, jsonb::ARRAY, self.row.len());
        self.rows.extend_from_slice(&self.row);
        self.row.clear();
    }

    fn str(&mut self, value: &str) {
        // A NUL becomes U+FFFD, as in JSON text (see `push_json_string`): both backends
        // store the same text.
        let value = match memchr::memchr(0, value.as_bytes()) {
            Some(_) => std::borrow::Cow::Owned(value.replace('\0', "\u{fffd}")),
            None => std::borrow::Cow::Borrowed(value),
        };
        push_jsonb_header(&mut self.row, jsonb::TEXTRAW, value.len());
        self.row.extend_from_slice(value.as_bytes());
    }

    fn int(&mut self, value: i64) {
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(value);
        push_jsonb_header(&mut self.row, jsonb::INT, digits.len());
        self.row.extend_from_slice(digits.as_bytes());
    }

    fn finish(mut self, rows: usize) -> Vec<u8> {
        if rows > 0 {
            self.end_row();
        }
        let mut out = Vec::with_capacity(self.rows.len() + 9);
        push_jsonb_header(&mut out, jsonb::ARRAY, self.rows.len());
        out.extend_from_slice(&self.rows);
        out
    }
}

impl JsonRows {
    /// Rows for a statement of `backend`.
    pub fn new(backend: DbBackend) -> Self {
        let buf = match backend {
            DbBackend::Postgres => RowsBuf::Text(String::from("[")),
            _ => RowsBuf::Jsonb(Jsonb::default()),
        };
        JsonRows {
            buf,
            rows: 0,
            fields: 0,
        }
    }

    /// Starts a row; the fields pushed next belong to it.
    pub fn row(&mut self) -> &mut Self {
        match &mut self.buf {
            RowsBuf::Text(text) => {
                if self.rows > 0 {
                    text.push_str("],");
                }
                text.push('[');
            }
            RowsBuf::Jsonb(jsonb) => {
                if self.rows > 0 {
                    jsonb.end_row();
                }
            }
        }
        self.rows += 1;
        self.fields = 0;
        self
    }

    /// Where the next field goes (after a comma, in JSON text).
    fn next_field(&mut self) -> &mut RowsBuf {
        if let RowsBuf::Text(text) = &mut self.buf
            && self.fields > 0
        {
            text.push(',');
        }
        self.fields += 1;
        &mut self.buf
    }

    /// A string field.
    pub fn str(&mut self, value: &str) -> &mut Self {
        match self.next_field() {
            RowsBuf::Text(text) => push_json_string(text, value),
            RowsBuf::Jsonb(jsonb) => jsonb.str(value),
        }
        self
    }

    /// A string field or `null`.
    pub fn opt_str(&mut self, value: Option<&str>) -> &mut Self {
        match value {
            Some(v) => self.str(v),
            None => self.null(),
        }
    }

    /// An integer field.
    pub fn int(&mut self, value: i64) -> &mut Self {
        match self.next_field() {
            RowsBuf::Text(text) => text.push_str(itoa::Buffer::new().format(value)),
            RowsBuf::Jsonb(jsonb) => jsonb.int(value),
        }
        self
    }

    /// An integer field or `null`.
    pub fn opt_int(&mut self, value: Option<i64>) -> &mut Self {
        match value {
            Some(v) => self.int(v),
            None => self.null(),
        }
    }

    /// A boolean field.
    pub fn bool(&mut self, value: bool) -> &mut Self {
        match self.next_field() {
            RowsBuf::Text(text) => text.push_str(if value { "true" } else { "false" }),
            RowsBuf::Jsonb(jsonb) => jsonb
                .row
                .push(if value { jsonb::TRUE } else { jsonb::FALSE }),
        }
        self
    }

    fn null(&mut self) -> &mut Self {
        match self.next_field() {
            RowsBuf::Text(text) => text.push_str("null"),
            RowsBuf::Jsonb(jsonb) => jsonb.row.push(jsonb::NULL),
        }
        self
    }

    /// The statement's parameter: JSON text, or a JSONB blob for SQLite.
    pub fn finish(self) -> Value {
        match self.buf {
            RowsBuf::Text(mut text) => {
                if self.rows > 0 {
                    text.push(']');
                }
                text.push(']');
                Value::String(Some(text))
            }
            RowsBuf::Jsonb(jsonb) => Value::Bytes(Some(jsonb.finish(self.rows))),
        }
    }
}

/// A JSON array of strings.
pub fn json_strings<'a>(values: impl IntoIterator<Item = &'a str>) -> String {
    let mut buf = String::from("[");
    for (i, value) in values.into_iter().enumerate() {
        if i > 0 {
            buf.push(',');
        }
        push_json_string(&mut buf, value);
    }
    buf.push(']');
    buf
}

/// A JSON array of integers.
pub fn json_ints(values: impl IntoIterator<Item = i64>) -> String {
    let mut buf = String::from("[");
    for (i, value) in values.into_iter().enumerate() {
        if i > 0 {
            buf.push(',');
        }
        let _ = write!(buf, "{value}");
    }
    buf.push(']');
    buf
}

/// Whether JSON text must escape `byte`: a quote, a backslash or a control character.
fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// Appends `value` as a JSON string: quotes, backslashes and control characters escaped,
/// everything else as is (JSON text is UTF-8). A NUL becomes U+FFFD, the replacement
/// character: PostgreSQL's text (and `\u0000` in its JSON functions) cannot hold it, and a
/// receiver's answer, stored in the delivery log, may contain one; as `\u0000` it failed
/// the whole statement. Both backends store the same text.
fn push_json_string(buf: &mut String, value: &str) {
    buf.reserve(value.len() + 2);
    buf.push('"');
    // Ids, names and URLs need no escape: checked in one pass without an early exit (which
    // the compiler vectorises) and copied whole.
    if !value.bytes().fold(false, |any, b| any | needs_escape(b)) {
        buf.push_str(value);
        buf.push('"');
        return;
    }
    let mut start = 0;
    for (i, byte) in value.bytes().enumerate() {
        if !needs_escape(byte) {
            continue;
        }
        buf.push_str(&value[start..i]);
        match byte {
            b'"' => buf.push_str("\\\""),
            b'\\' => buf.push_str("\\\\"),
            b'\n' => buf.push_str("\\n"),
            b'\r' => buf.push_str("\\r"),
            b'\t' => buf.push_str("\\t"),
            0 => buf.push('\u{fffd}'),
            _ => {
                let _ = write!(buf, "\\u{byte:04x}");
            }
        }
        start = i + 1;
    }
    buf.push_str(&value[start..]);
    buf.push('"');
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn json_rows_escape_what_json_needs() {
        let mut rows = JsonRows::new(DbBackend::Postgres);
        rows.row()
            .str("a\"b\\c\nd\u{1}é")
            .int(-5)
            .opt_int(None)
            .opt_str(Some(""))
            .bool(true);
        rows.row().str("x");
        let Value::String(Some(json)) = rows.finish() else {
            panic!("PostgreSQL's rows are JSON text");
        };
        assert_eq!(json, r#"[["a\"b\\c\nd\u0001é",-5,null,"",true],["x"]]"#);
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(parsed[0][0], "a\"b\\c\nd\u{1}é");
        assert_eq!(
            JsonRows::new(DbBackend::Postgres).finish(),
            Value::String(Some("[]".to_owned()))
        );
        assert_eq!(json_strings(["a", "b\""]), r#"["a","b\""]"#);
        // One character needing an escape, at either end, is enough to escape it.
        assert_eq!(
            json_strings(["\"", "x\t", "\\y", "https://h.example/p?q=1&r=é", "\u{1f}"]),
            r#"["\"","x\t","\\y","https://h.example/p?q=1&r=é","\u001f"]"#
        );
        assert_eq!(json_ints([1, -2]), "[1,-2]");
    }

    #[test]
    fn sqlite_rows_are_jsonb_with_raw_strings() {
        let mut rows = JsonRows::new(DbBackend::Sqlite);
        rows.row().str("a\"").int(5).opt_int(None).bool(true);
        rows.row().bool(false).opt_str(Some("x\0"));
        // [["a\"", 5, null, true], [false, "x\u{fffd}"]]: a header byte holds the type
        // (low four bits) and a size up to 11 (high four).
        let first = [0x2a, b'a', b'"', 0x13, b'5', 0x00, 0x01];
        let second = [0x02, 0x4a, b'x', 0xef, 0xbf, 0xbd];
        let mut expected = vec![0xcb, 2 + 7 + 6, 0x7b];
        expected.extend_from_slice(&first);
        expected.push(0x6b);
        expected.extend_from_slice(&second);
        assert_eq!(rows.finish(), Value::Bytes(Some(expected)));
        assert_eq!(
            JsonRows::new(DbBackend::Sqlite).finish(),
            Value::Bytes(Some(vec![0x0b]))
        );
    }

    #[test]
    fn jsonb_headers_take_the_shortest_size_form() {
        let header = |size| {
            let mut buf = Vec::new();
            push_jsonb_header(&mut buf, jsonb::TEXTRAW, size);
            buf
        };
        assert_eq!(header(0), [0x0a]);
        assert_eq!(header(11), [0xba]);
        assert_eq!(header(12), [0xca, 12]);
        assert_eq!(header(255), [0xca, 255]);
        assert_eq!(header(256), [0xda, 1, 0]);
        assert_eq!(header(65_536), [0xea, 0, 1, 0, 0]);
        assert_eq!(header(1 << 32), [0xfa, 0, 0, 0, 1, 0, 0, 0, 0]);
    }
}
