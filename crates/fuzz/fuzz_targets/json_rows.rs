//! The hot path's rows parameter (`sluice-store`'s `JsonRows`) for PostgreSQL: rows of any
//! strings and numbers are JSON text that reads back as them (NUL as U+FFFD). (SQLite's
//! JSONB form is read back by SQLite itself in crates/store/tests/json_rows.rs.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_store::hot::{JsonRows, json_strings};
use sluice_store::sea_orm::{DbBackend, Value};

fuzz_target!(|rows: Vec<Vec<(String, i64, bool)>>| {
    let mut out = JsonRows::new(DbBackend::Postgres);
    let mut want = Vec::new();
    for row in &rows {
        out.row();
        let mut fields = Vec::new();
        for (text, int, as_text) in row {
            if *as_text {
                out.str(text);
                fields.push(serde_json::json!(text.replace('\0', "\u{fffd}")));
            } else {
                out.int(*int);
                fields.push(serde_json::json!(int));
            }
        }
        want.push(serde_json::Value::Array(fields));
    }
    let Value::String(Some(text)) = out.finish() else {
        panic!("PostgreSQL's rows are JSON text");
    };
    let read: serde_json::Value = serde_json::from_str(&text).expect("JSON text");
    assert_eq!(read, serde_json::Value::Array(want));
    let strings: Vec<&str> = rows.iter().flatten().map(|(t, _, _)| t.as_str()).collect();
    let read: Vec<String> =
        serde_json::from_str(&json_strings(strings.iter().copied())).expect("JSON");
    assert_eq!(read.len(), strings.len());
});
