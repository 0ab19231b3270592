//! The SQL both planes' hot statements are made of: the named columns a statement's rows
//! carry, where the rows parameter is read (`sluice_rows` on SQLite,
//! `jsonb_array_elements` on PostgreSQL) and how a field is taken out of it, id lists, and the multi-row insert
//! most of the statements are.

use sea_orm::{DbBackend, Statement, Value};

use super::rows::JsonRows;

/// A column of a hot statement's rows: the table's column it fills, its type on
/// PostgreSQL (the cast of its JSON field there), and where a row holds its value.
///
/// A statement lists its columns once. Each row's fields are written in the list's order
/// ([`rows_param`]) and read back by their place in the same list ([`read_fields`]), so a
/// row is built and read by its columns' names and no field has a position written by
/// hand.
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

/// The rows of a JSON parameter as a relation `e` (the `n`th parameter on PostgreSQL).
/// On PostgreSQL its column `r` is one row (an array) whose fields [`field`] takes out; on
/// SQLite, `sluice_rows(?)` (the `sluice-sqlite-rows` crate) reads the JSONB of
/// [`JsonRows`] and gives each row's fields as columns `c0`, `c1`, ... PostgreSQL parses
/// the text once as `jsonb`, so finding a field skips the fields before it instead of
/// parsing them: rows of `json` made every `->> i` lex the row's text again from its start
/// (a 15-field attempt row was lexed about eight times over), and JSON lexing was a fifth
/// of the server's CPU in `sluice bench` on PostgreSQL; with `jsonb` the server's CPU per
/// event fell from 100-106 µs to 67-83 µs (4 interleaved rounds of `--events 100000`).
pub(super) fn rows_from(backend: DbBackend, n: usize) -> String {
    match backend {
        DbBackend::Postgres => format!("jsonb_array_elements(${n}::jsonb) AS e(r)"),
        _ => "sluice_rows(?) AS e".to_owned(),
    }
}

/// Field `i` of a row, as SQL of type `pg_type` (SQLite needs no cast: strings come out as
/// text, numbers as integers, `true` and `false` as 1 and 0, `null` as NULL).
///
/// On SQLite this was `json_extract(e.r, '$[i]')` over `jsonb_each`: every field an SQL
/// function call that copied its row out of `jsonb_each` and parsed its path, 5.2% of the
/// planes' CPU with ten subscriptions (perf, `sluice bench --subscriptions 10`); read
/// through `sluice_rows` a row is decoded once and a field is a column, 1.0%. Bound
/// parameters were slower than JSON, even with the statement cached (about 5 µs a row
/// against 4, through sqlx).
pub(super) fn field(backend: DbBackend, i: usize, pg_type: &str) -> String {
    match backend {
        DbBackend::Postgres => format!("(e.r ->> {i})::{pg_type}"),
        _ => format!("e.c{i}"),
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
