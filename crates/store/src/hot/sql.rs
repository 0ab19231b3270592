//! The SQL both planes' hot statements are made of: the named columns a statement's rows
//! carry, where the rows parameter is read (`jsonb_each` on SQLite, `jsonb_array_elements`
//! on PostgreSQL) and how a field is taken out of it, id lists, and the multi-row insert
//! most of the statements are.

use sea_orm::{DbBackend, Statement, Value};

use super::rows::JsonRows;

/// A column of a hot statement's rows: the table's column it fills, its type on
/// PostgreSQL (the cast of its JSON field there), and where a row holds its value.
///
/// A statement lists its columns once. Each row's fields are written in the list's order
/// ([`rows_param`]) and read back by their place in the same list ([`read_fields`]), so a
/// row is built and read by its columns' names and no field has a position written by
/// hand. The fields stay a JSON array rather than an object keyed by name: SQLite finds
/// an object's member by comparing the keys before it and copies the larger row for every
/// field it reads, which made each field markedly dearer than an array's (see
/// `docs/benchmarks.md`).
pub(super) struct Column<R> {
    name: &'static str,
    pg_type: &'static str,
    value: Get<R>,
}

/// How a row gives a column's value.
enum Get<R> {
    Text(fn(&R) -> &str),
    OptText(fn(&R) -> Option<&str>),
    Int(fn(&R) -> i64),
    OptInt(fn(&R) -> Option<i64>),
    Bool(fn(&R) -> bool),
}

impl<R> Column<R> {
    /// A `text` column.
    pub(super) const fn text(name: &'static str, value: fn(&R) -> &str) -> Self {
        Column {
            name,
            pg_type: "text",
            value: Get::Text(value),
        }
    }

    /// A `text` column that may be NULL.
    pub(super) const fn opt_text(name: &'static str, value: fn(&R) -> Option<&str>) -> Self {
        Column {
            name,
            pg_type: "text",
            value: Get::OptText(value),
        }
    }

    /// A `bigint` column.
    pub(super) const fn bigint(name: &'static str, value: fn(&R) -> i64) -> Self {
        Column {
            name,
            pg_type: "bigint",
            value: Get::Int(value),
        }
    }

    /// A `bigint` column that may be NULL.
    pub(super) const fn opt_bigint(name: &'static str, value: fn(&R) -> Option<i64>) -> Self {
        Column {
            name,
            pg_type: "bigint",
            value: Get::OptInt(value),
        }
    }

    /// An `integer` column (32 bits on PostgreSQL).
    pub(super) const fn integer(name: &'static str, value: fn(&R) -> i64) -> Self {
        Column {
            name,
            pg_type: "integer",
            value: Get::Int(value),
        }
    }

    /// A `boolean` column (an integer, 1 or 0, on SQLite).
    pub(super) const fn boolean(name: &'static str, value: fn(&R) -> bool) -> Self {
        Column {
            name,
            pg_type: "boolean",
            value: Get::Bool(value),
        }
    }
}

/// Appends `row`'s value of each of `columns`, in order, to the current row of `json`.
pub(super) fn write_fields<R>(json: &mut JsonRows, row: &R, columns: &[Column<R>]) {
    for column in columns {
        match column.value {
            Get::Text(value) => json.str(value(row)),
            Get::OptText(value) => json.opt_str(value(row)),
            Get::Int(value) => json.int(value(row)),
            Get::OptInt(value) => json.opt_int(value(row)),
            Get::Bool(value) => json.bool(value(row)),
        };
    }
}

/// The parameter of `rows`, each row's fields those of `columns`.
pub(super) fn rows_param<R>(backend: DbBackend, rows: &[R], columns: &[Column<R>]) -> Value {
    let mut json = JsonRows::new(backend);
    for row in rows {
        json.row();
        write_fields(&mut json, row, columns);
    }
    json.finish()
}

/// The names of `columns`, for an `INSERT`'s column list.
pub(super) fn names<R>(columns: &[Column<R>]) -> String {
    let names: Vec<&str> = columns.iter().map(|c| c.name).collect();
    names.join(", ")
}

/// `columns` read from a row of [`rows_from`] whose fields from the `first` on are theirs
/// (in order): SQL expressions, one per column.
pub(super) fn read_fields<R>(
    backend: DbBackend,
    columns: &[Column<R>],
    first: usize,
) -> Vec<String> {
    columns
        .iter()
        .enumerate()
        .map(|(i, column)| field(backend, first + i, column.pg_type))
        .collect()
}

/// `?` on SQLite (positional across the statements of a multi-statement query), `$n` on
/// PostgreSQL (each statement is sent alone).
pub(super) fn param(backend: DbBackend, n: usize) -> String {
    match backend {
        DbBackend::Postgres => format!("${n}"),
        _ => "?".to_owned(),
    }
}

/// The rows of a rows parameter (the `n`th on PostgreSQL) as a relation `e`, one row per
/// element, whose fields [`field`] takes out: `e.r` on PostgreSQL, `e.value` on SQLite.
///
/// PostgreSQL parses the text once as `jsonb`, so finding a field skips the fields before
/// it instead of parsing them: with rows of `json` every `->> i` lexed the row's text
/// again from its start, and JSON lexing became a large share of the server's CPU. SQLite
/// steps through the JSONB of [`JsonRows`] as it is, with nothing to parse.
pub(super) fn rows_from(backend: DbBackend, n: usize) -> String {
    match backend {
        DbBackend::Postgres => format!("jsonb_array_elements(${n}::jsonb) AS e(r)"),
        _ => "jsonb_each(?) AS e".to_owned(),
    }
}

/// Field `i` of a row of [`rows_from`], as SQL of type `pg_type` (SQLite needs no cast:
/// strings come out as text, numbers as integers, `true` and `false` as 1 and 0, `null`
/// as NULL).
///
/// On SQLite each field is a `json_extract` call on its row: SQLite's own functions, with
/// no code of Sluice running inside SQLite. `json_extract` with a `$[i]` path was the
/// fastest of SQLite's ways to read a field (`->>` builds the path anew for every call,
/// and an object's member is found by comparing keys); binding every field as a
/// parameter of a multi-row `VALUES` was slower still through sqlx, and made a new
/// statement of every row count. What a table-valued function of Sluice's own, decoding
/// each row once, would save is in `docs/benchmarks.md`.
pub(super) fn field(backend: DbBackend, i: usize, pg_type: &str) -> String {
    match backend {
        DbBackend::Postgres => format!("(e.r ->> {i})::{pg_type}"),
        _ => format!("json_extract(e.value, '$[{i}]')"),
    }
}

/// `column` is one of the elements of a JSON array parameter of scalars (the `n`th on
/// PostgreSQL). On PostgreSQL the elements become an array first (`= ANY (ARRAY(...))`),
/// which the planner probes through the column's index from a few thousand rows up (only
/// a table of a page or two is read whole): as `IN (SELECT ...)` it saw a set function
/// of 100 rows, chose a hash join over a full scan of the table for tables up to about
/// ten thousand rows, and kept such a plan while the table grew, a cost that grows with
/// the delivery log.
pub(super) fn is_element(backend: DbBackend, column: &str, n: usize, pg_type: &str) -> String {
    match backend {
        DbBackend::Postgres => format!(
            "{column} = ANY (ARRAY(SELECT x::{pg_type} \
             FROM json_array_elements_text(${n}::json) AS t(x)))"
        ),
        _ => format!("{column} IN (SELECT value FROM json_each(?))"),
    }
}

/// Inserts `rows` into `table`, each filling `columns`, with `tail` after the rows (an
/// `ON CONFLICT` clause, or nothing).
pub(super) fn insert<R>(
    backend: DbBackend,
    table: &str,
    columns: &[Column<R>],
    rows: &[R],
    tail: &str,
) -> Statement {
    // `WHERE true` keeps SQLite from reading ON CONFLICT as a join's ON.
    let sql = format!(
        "INSERT INTO {table} ({}) SELECT {} FROM {} WHERE true {tail}",
        names(columns),
        read_fields(backend, columns, 0).join(", "),
        rows_from(backend, 1),
    );
    Statement::from_sql_and_values(backend, sql, [rows_param(backend, rows, columns)])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use sea_orm::ConnectionTrait;

    use super::*;

    /// A row with a column of every kind.
    struct Every<'a> {
        text: &'a str,
        number: i64,
        flag: bool,
        maybe_text: Option<&'a str>,
        maybe_number: Option<i64>,
    }

    impl<'a> Every<'a> {
        const COLUMNS: [Column<Self>; 5] = [
            Column::text("text", |r| r.text),
            Column::bigint("number", |r| r.number),
            Column::boolean("flag", |r| r.flag),
            Column::opt_text("maybe_text", |r| r.maybe_text),
            Column::opt_bigint("maybe_number", |r| r.maybe_number),
        ];
    }

    /// SQLite reads each field of the rows parameter as the SQL value the column needs:
    /// strings as text (a NUL as U+FFFD, strings of every JSONB size form whole), integers
    /// at both ends of 64 bits as integers, booleans as 1 and 0, nulls as NULL.
    #[tokio::test]
    async fn sqlite_reads_every_kind_of_column_by_its_place_in_the_list() {
        let dir = std::env::temp_dir().join(format!("sluice-hot-sql-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = crate::open(
            &crate::sqlite_url(&dir, crate::Plane::Data),
            crate::Plane::Data,
        )
        .await
        .unwrap();
        let long = "é".repeat(35_000);
        let twelve = "x".repeat(12);
        let rows = [
            Every {
                text: "nul \0 here",
                number: i64::MIN,
                flag: true,
                maybe_text: None,
                maybe_number: Some(7),
            },
            Every {
                text: &long,
                number: i64::MAX,
                flag: false,
                maybe_text: Some(&twelve),
                maybe_number: None,
            },
        ];
        let backend = DbBackend::Sqlite;
        let reads: Vec<String> = read_fields(backend, &Every::COLUMNS, 0)
            .into_iter()
            .zip(Every::COLUMNS.iter().map(|c| c.name))
            .map(|(read, name)| format!("{read} AS {name}, typeof({read}) AS {name}_type"))
            .collect();
        let found = db
            .query_all_raw(Statement::from_sql_and_values(
                backend,
                format!(
                    "SELECT {} FROM {} ORDER BY e.key",
                    reads.join(", "),
                    rows_from(backend, 1)
                ),
                [rows_param(backend, &rows, &Every::COLUMNS)],
            ))
            .await
            .unwrap();
        let read = |r: &sea_orm::QueryResult| {
            let kind = |name: &str| r.try_get::<String>("", &format!("{name}_type")).unwrap();
            (
                r.try_get::<String>("", "text").unwrap(),
                r.try_get::<i64>("", "number").unwrap(),
                r.try_get::<i64>("", "flag").unwrap(),
                r.try_get::<Option<String>>("", "maybe_text").unwrap(),
                r.try_get::<Option<i64>>("", "maybe_number").unwrap(),
                [
                    kind("text"),
                    kind("number"),
                    kind("flag"),
                    kind("maybe_text"),
                    kind("maybe_number"),
                ],
            )
        };
        assert_eq!(found.len(), 2);
        assert_eq!(
            read(&found[0]),
            (
                "nul \u{fffd} here".to_owned(),
                i64::MIN,
                1,
                None,
                Some(7),
                ["text", "integer", "integer", "null", "integer"].map(str::to_owned)
            )
        );
        assert_eq!(
            read(&found[1]),
            (
                long.clone(),
                i64::MAX,
                0,
                Some(twelve.clone()),
                None,
                ["text", "integer", "integer", "text", "null"].map(str::to_owned)
            )
        );
        db.close().await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
