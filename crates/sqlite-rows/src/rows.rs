//! Reading the rows parameter: a JSONB array of arrays, as `sluice_store::hot::JsonRows`
//! writes it. Safe code only; the virtual table in `lib.rs` calls it.
//!
//! JSONB (sqlite.org/jsonb.html): every element is a header and a payload. The header's low
//! four bits are the type; its high four bits are the payload's size (0 to 11) or say that
//! the size follows in 1, 2, 4 or 8 big-endian bytes (12 to 15). Only the types the writer
//! produces are read: null, true, false, INT (decimal digits), TEXT and TEXTRAW (UTF-8
//! without escapes) and ARRAY. Anything else is an error, never a guess.

use std::fmt;

use crate::jsonb::{ARRAY, FALSE, INT, NULL, TEXT, TEXTRAW, TRUE};

/// Why a parameter is not rows this table can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Malformed(pub(crate) &'static str);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sluice_rows: {}", self.0)
    }
}

/// One element: its type and where its payload lies in the parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Element {
    kind: u8,
    start: usize,
    end: usize,
}

/// A field's value, as SQLite gets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field<'a> {
    Null,
    Int(i64),
    /// UTF-8, as the writer took it from a Rust string.
    Text(&'a [u8]),
}

/// The element whose header starts at `at`; its payload must end within `data`.
fn element(data: &[u8], at: usize) -> Result<Element, Malformed> {
    let truncated = Malformed("truncated element");
    let first = *data.get(at).ok_or(truncated.clone())?;
    let kind = first & 0x0f;
    let code = first >> 4;
    let size_bytes = match code {
        0..=11 => 0,
        12 => 1,
        13 => 2,
        14 => 4,
        _ => 8,
    };
    let start = at + 1 + size_bytes;
    let size = if size_bytes == 0 {
        usize::from(code)
    } else {
        let bytes = data.get(at + 1..start).ok_or(truncated.clone())?;
        let size = bytes
            .iter()
            .fold(0u64, |size, b| (size << 8) | u64::from(*b));
        usize::try_from(size).map_err(|_| truncated.clone())?
    };
    let end = start.checked_add(size).ok_or(truncated.clone())?;
    if end > data.len() {
        return Err(truncated);
    }
    Ok(Element { kind, start, end })
}

/// A field, decoded when its row is read: text stays where it is in the parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decoded {
    Null,
    Int(i64),
    Text { start: usize, end: usize },
}

/// Decodes a field element of `data`.
fn decode(data: &[u8], e: Element) -> Result<Decoded, Malformed> {
    let payload = data
        .get(e.start..e.end)
        .ok_or(Malformed("truncated element"))?;
    match e.kind {
        NULL | TRUE | FALSE if !payload.is_empty() => Err(Malformed("a literal with a payload")),
        NULL => Ok(Decoded::Null),
        TRUE => Ok(Decoded::Int(1)),
        FALSE => Ok(Decoded::Int(0)),
        INT => parse_int(payload).map(Decoded::Int),
        TEXT | TEXTRAW => Ok(Decoded::Text {
            start: e.start,
            end: e.end,
        }),
        _ => Err(Malformed("a field type the writer never produces")),
    }
}

/// A JSONB INT: an optional minus and decimal digits, within `i64`.
fn parse_int(digits: &[u8]) -> Result<i64, Malformed> {
    let bad = Malformed("an integer that is not decimal digits within 64 bits");
    let (negative, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() {
        return Err(bad);
    }
    // Accumulated negatively, so that i64::MIN fits.
    let mut n: i64 = 0;
    for d in digits {
        if !d.is_ascii_digit() {
            return Err(bad);
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_sub(i64::from(d - b'0')))
            .ok_or(bad.clone())?;
    }
    if negative {
        Ok(n)
    } else {
        n.checked_neg().ok_or(bad)
    }
}

/// A cursor over the rows of one parameter: the current row's fields, decoded when the
/// cursor reaches it.
#[derive(Debug, Default)]
pub(crate) struct Rows {
    /// The parameter; its outer array ends where it does.
    data: Vec<u8>,
    /// Where the next row's header is.
    next: usize,
    fields: Vec<Decoded>,
    /// 1 for the first row.
    rowid: i64,
    eof: bool,
}

impl Rows {
    /// Starts over on `blob` (copied: SQLite's argument may not outlive the call), at its
    /// first row.
    pub(crate) fn reset(&mut self, blob: &[u8]) -> Result<(), Malformed> {
        self.data.clear();
        self.data.extend_from_slice(blob);
        self.fields.clear();
        self.rowid = 0;
        self.eof = true;
        let outer = element(&self.data, 0)?;
        if outer.kind != ARRAY {
            return Err(Malformed("the parameter is not a JSONB array"));
        }
        if outer.end != self.data.len() {
            return Err(Malformed("bytes after the array"));
        }
        self.next = outer.start;
        self.advance()
    }

    /// Moves to the next row, or to the end.
    pub(crate) fn advance(&mut self) -> Result<(), Malformed> {
        self.fields.clear();
        if self.next >= self.data.len() {
            self.eof = true;
            return Ok(());
        }
        let row = element(&self.data, self.next)?;
        if row.kind != ARRAY {
            return Err(Malformed("a row that is not an array"));
        }
        let row_data = self
            .data
            .get(..row.end)
            .ok_or(Malformed("truncated element"))?;
        let mut at = row.start;
        while at < row.end {
            let field = element(row_data, at)?;
            self.fields.push(decode(row_data, field)?);
            at = field.end;
        }
        self.next = row.end;
        self.rowid += 1;
        self.eof = false;
        Ok(())
    }

    pub(crate) fn eof(&self) -> bool {
        self.eof
    }

    pub(crate) fn rowid(&self) -> i64 {
        self.rowid
    }

    /// Field `i` of the current row; NULL past its last field.
    pub(crate) fn field(&self, i: usize) -> Field<'_> {
        match self.fields.get(i) {
            None | Some(Decoded::Null) => Field::Null,
            Some(Decoded::Int(n)) => Field::Int(*n),
            Some(Decoded::Text { start, end }) => {
                Field::Text(self.data.get(*start..*end).unwrap_or_default())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JSONB header, written the long way round (not with the store's writer, so the two
    /// check each other).
    fn header(kind: u8, size: usize) -> Vec<u8> {
        match size {
            0..=11 => vec![(size as u8) << 4 | kind],
            12..=0xff => vec![0xc0 | kind, size as u8],
            0x100..=0xffff => {
                let mut h = vec![0xd0 | kind];
                h.extend_from_slice(&(size as u16).to_be_bytes());
                h
            }
            _ => {
                let mut h = vec![0xe0 | kind];
                h.extend_from_slice(&(size as u32).to_be_bytes());
                h
            }
        }
    }

    fn el(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = header(kind, payload.len());
        v.extend_from_slice(payload);
        v
    }

    fn array(items: &[Vec<u8>]) -> Vec<u8> {
        el(ARRAY, &items.concat())
    }

    fn read_all(blob: &[u8]) -> Result<Vec<Vec<String>>, Malformed> {
        let mut rows = Rows::default();
        rows.reset(blob)?;
        let mut out = Vec::new();
        while !rows.eof() {
            let mut row = Vec::new();
            for i in 0..rows.fields.len() + 1 {
                row.push(match rows.field(i) {
                    Field::Null => "NULL".to_owned(),
                    Field::Int(n) => n.to_string(),
                    Field::Text(t) => format!("'{}'", String::from_utf8_lossy(t)),
                });
            }
            out.push(row);
            rows.advance()?;
        }
        Ok(out)
    }

    #[test]
    fn rows_read_as_their_fields_with_null_past_the_end() {
        let long = "x".repeat(70_000);
        let blob = array(&[
            array(&[
                el(TEXTRAW, b"att_1"),
                el(INT, b"-9223372036854775808"),
                el(TRUE, b""),
                el(FALSE, b""),
                el(NULL, b""),
            ]),
            array(&[el(TEXT, b"plain"), el(INT, b"9223372036854775807")]),
            array(&[]),
            array(&[el(TEXTRAW, long.as_bytes()), el(TEXTRAW, b"")]),
        ]);
        let rows = read_all(&blob).expect("valid rows");
        assert_eq!(
            rows[0],
            ["'att_1'", "-9223372036854775808", "1", "0", "NULL", "NULL"]
        );
        assert_eq!(rows[1], ["'plain'", "9223372036854775807", "NULL"]);
        assert_eq!(rows[2], ["NULL"]);
        assert_eq!(rows[3][0].len(), 70_002);
        assert_eq!(rows[3][1], "''");
        assert_eq!(rows.len(), 4);
        assert_eq!(
            read_all(&array(&[])).expect("no rows"),
            Vec::<Vec<String>>::new()
        );
    }

    #[test]
    fn rowids_count_the_rows_from_one() {
        let mut rows = Rows::default();
        rows.reset(&array(&[array(&[]), array(&[])]))
            .expect("valid");
        assert_eq!(rows.rowid(), 1);
        rows.advance().expect("valid");
        assert_eq!(rows.rowid(), 2);
        rows.advance().expect("valid");
        assert!(rows.eof());
    }

    #[test]
    fn anything_else_is_an_error_not_a_guess() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "truncated element"),
            (el(TEXTRAW, b"x"), "the parameter is not a JSONB array"),
            ([array(&[]), vec![0]].concat(), "bytes after the array"),
            (array(&[el(INT, b"1")]), "a row that is not an array"),
            (
                array(&[array(&[el(8, b"\\n")])]),
                "a field type the writer never produces",
            ),
            (
                array(&[array(&[el(INT, b"9223372036854775808")])]),
                "an integer that is not decimal digits within 64 bits",
            ),
            (
                array(&[array(&[el(INT, b"1e3")])]),
                "an integer that is not decimal digits within 64 bits",
            ),
            (
                array(&[array(&[el(INT, b"-")])]),
                "an integer that is not decimal digits within 64 bits",
            ),
            (
                array(&[array(&[el(NULL, b"x")])]),
                "a literal with a payload",
            ),
            // A field whose size runs past its row (the row says 2 bytes, the field 5).
            (
                el(ARRAY, &[&header(ARRAY, 2)[..], &[0x5a, b'a']].concat()),
                "truncated element",
            ),
            // A size in 8 bytes that does not fit.
            (
                array(&[array(&[vec![
                    0xf0 | TEXTRAW,
                    0xff,
                    0xff,
                    0xff,
                    0xff,
                    0xff,
                    0xff,
                    0xff,
                    0xff,
                ]])]),
                "truncated element",
            ),
        ];
        for (blob, why) in cases {
            assert_eq!(read_all(&blob), Err(Malformed(why)), "{blob:?}");
        }
    }
}
