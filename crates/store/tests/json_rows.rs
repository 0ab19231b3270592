//! Property tests of the hot path's rows parameter (`hot::JsonRows`): rows of any strings
//! (quotes, control characters, NUL, any Unicode), any integers, booleans and nulls, written
//! as the statements write them and read back by the database itself: SQLite's `json()` of
//! the JSONB blob, PostgreSQL's `jsonb` of the JSON text. Both read the same rows, NUL as
//! U+FFFD. Cases: `PROPTEST_CASES` (CI bounds it), at most 128 a backend.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use sea_orm::{ConnectionTrait, DbBackend, Statement, Value};
use serde_json::json;
use sluice_store::Plane;
use sluice_store::hot::{JsonRows, json_ints, json_strings};
use sluice_testkit::database::{TestDatabase, backends};

#[derive(Clone, Debug)]
enum Field {
    Str(String),
    OptStr(Option<String>),
    Int(i64),
    OptInt(Option<i64>),
    Bool(bool),
}

fn field() -> impl Strategy<Value = Field> {
    let text = prop_oneof![any::<String>(), "[\\x00-\\x20\"\\\\]{0,12}", ".{200,300}"];
    prop_oneof![
        text.clone().prop_map(Field::Str),
        proptest::option::of(text).prop_map(Field::OptStr),
        any::<i64>().prop_map(Field::Int),
        proptest::option::of(any::<i64>()).prop_map(Field::OptInt),
        any::<bool>().prop_map(Field::Bool),
    ]
}

/// What a field reads back as.
fn expected(field: &Field) -> serde_json::Value {
    let text = |s: &str| json!(s.replace('\0', "\u{fffd}"));
    match field {
        Field::Str(s) | Field::OptStr(Some(s)) => text(s),
        Field::OptStr(None) | Field::OptInt(None) => serde_json::Value::Null,
        Field::Int(i) | Field::OptInt(Some(i)) => json!(i),
        Field::Bool(b) => json!(b),
    }
}

fn write(backend: DbBackend, rows: &[Vec<Field>]) -> Value {
    let mut out = JsonRows::new(backend);
    for row in rows {
        out.row();
        for field in row {
            match field {
                Field::Str(s) => out.str(s),
                Field::OptStr(s) => out.opt_str(s.as_deref()),
                Field::Int(i) => out.int(*i),
                Field::OptInt(i) => out.opt_int(*i),
                Field::Bool(b) => out.bool(*b),
            };
        }
    }
    out.finish()
}

#[test]
fn rows_read_back_as_written_on_both_backends() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for backend in backends() {
        let database = runtime.block_on(TestDatabase::create(&backend));
        let db = runtime.block_on(database.open(Plane::Data));
        let kind = db.get_database_backend();
        let sql = match kind {
            DbBackend::Postgres => "SELECT ($1::text)::jsonb::text AS j",
            _ => "SELECT json(?) AS j",
        };
        let mut runner = TestRunner::new(Config {
            cases: Config::default().cases.min(128),
            ..Config::default()
        });
        let result = runner.run(
            &proptest::collection::vec(proptest::collection::vec(field(), 0..5), 0..4),
            |rows| {
                let want = serde_json::Value::Array(
                    rows.iter()
                        .map(|r| serde_json::Value::Array(r.iter().map(expected).collect()))
                        .collect(),
                );
                let value = write(kind, &rows);
                if let Value::String(Some(text)) = &value {
                    let parsed: serde_json::Value = serde_json::from_str(text).unwrap();
                    prop_assert_eq!(&parsed, &want);
                }
                let row = runtime
                    .block_on(db.query_one_raw(Statement::from_sql_and_values(kind, sql, [value])))
                    .expect("the database reads the rows")
                    .expect("one row");
                let text: String = row.try_get("", "j").unwrap();
                let read: serde_json::Value = serde_json::from_str(&text).unwrap();
                prop_assert_eq!(read, want);
                Ok(())
            },
        );
        runtime.block_on(database.drop_database());
        if let Err(e) = result {
            panic!("{}: {e}", backend.label());
        }
    }
}

proptest! {
    /// The id lists: JSON arrays of exactly the values.
    #[test]
    fn id_lists_are_json_arrays(strings in proptest::collection::vec(any::<String>(), 0..5), ints in proptest::collection::vec(any::<i64>(), 0..5)) {
        let parsed: Vec<String> = serde_json::from_str(&json_strings(strings.iter().map(String::as_str))).unwrap();
        let want: Vec<String> = strings.iter().map(|s| s.replace('\0', "\u{fffd}")).collect();
        prop_assert_eq!(parsed, want);
        let parsed: Vec<i64> = serde_json::from_str(&json_ints(ints.iter().copied())).unwrap();
        prop_assert_eq!(parsed, ints);
    }
}
