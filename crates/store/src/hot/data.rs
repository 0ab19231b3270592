//! The data plane's hot statements: a write cycle's new messages and their fan-out rows,
//! the fan-out rows it finished, its outbox row, and the outbox rows the control plane
//! acked.

use sea_orm::{DbBackend, Statement, Value};

use super::rows::{JsonRows, json_ints, json_strings};
use super::sql::{
    Column, insert, is_element, names, param, read_fields, rows_from, rows_param, write_fields,
};

/// A new `dp_messages` row.
pub struct MessageRow<'a> {
    pub id: &'a str,
    pub workspace_id: &'a str,
    pub event_type: &'a str,
    pub envelope: &'a [u8],
    pub idempotency_key: Option<&'a str>,
    pub traceparent: Option<&'a str>,
    pub tracestate: Option<&'a str>,
    pub create_ms: i64,
    /// Comma-separated.
    pub subscription_ids: &'a str,
}

impl<'a> MessageRow<'a> {
    /// The columns that travel in the rows parameter: all but the envelope.
    const COLUMNS: [Column<Self>; 8] = [
        Column::text("id", |r| r.id),
        Column::text("workspace_id", |r| r.workspace_id),
        Column::text("event_type", |r| r.event_type),
        Column::opt_text("idempotency_key", |r| r.idempotency_key),
        Column::opt_text("traceparent", |r| r.traceparent),
        Column::opt_text("tracestate", |r| r.tracestate),
        Column::bigint("create_ms", |r| r.create_ms),
        Column::text("subscription_ids", |r| r.subscription_ids),
    ];
}

/// Where a message's envelope lies in the blob of a statement's envelopes (SQLite).
struct EnvelopePlace {
    /// From 1, as `substr` counts.
    start: i64,
    length: i64,
}

impl EnvelopePlace {
    /// Fields after a message's own on SQLite, in the order `substr` takes them.
    const COLUMNS: [Column<Self>; 2] = [
        Column::bigint("envelope_start", |p| p.start),
        Column::bigint("envelope_length", |p| p.length),
    ];
}

/// A new `dp_fanout` row.
pub struct FanoutRow<'a> {
    pub message_id: &'a str,
    pub workspace_id: &'a str,
    /// When the first attempts are due.
    pub due_ms: i64,
    /// Set when this process holds the first attempts.
    pub lease_until_ms: Option<i64>,
}

impl<'a> FanoutRow<'a> {
    const COLUMNS: [Column<Self>; 4] = [
        Column::text("message_id", |r| r.message_id),
        Column::text("workspace_id", |r| r.workspace_id),
        Column::bigint("due_ms", |r| r.due_ms),
        Column::opt_bigint("lease_until_ms", |r| r.lease_until_ms),
    ];
}

/// Inserts messages. The envelopes travel as one blob (SQLite: cut out with `substr`)
/// or one `bytea[]` (PostgreSQL), not inside the JSON, so they are neither escaped nor
/// parsed.
pub fn insert_messages(backend: DbBackend, rows: &[MessageRow<'_>]) -> Statement {
    let columns = names(&MessageRow::COLUMNS);
    let fields = read_fields(backend, &MessageRow::COLUMNS, 0).join(", ");
    match backend {
        DbBackend::Postgres => {
            let sql = format!(
                "INSERT INTO dp_messages ({columns}, envelope) \
                 SELECT {fields}, b.envelope \
                 FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS e(r, n) \
                 JOIN unnest($2::bytea[]) WITH ORDINALITY AS b(envelope, n) USING (n)",
            );
            let envelopes: Vec<Value> = rows
                .iter()
                .map(|r| Value::Bytes(Some(r.envelope.to_vec())))
                .collect();
            Statement::from_sql_and_values(
                backend,
                sql,
                [
                    rows_param(backend, rows, &MessageRow::COLUMNS),
                    Value::Array(
                        sea_orm::sea_query::ArrayType::Bytes,
                        Some(Box::new(envelopes)),
                    ),
                ],
            )
        }
        _ => {
            let mut json = JsonRows::new(backend);
            let mut blob = Vec::with_capacity(rows.iter().map(|r| r.envelope.len()).sum());
            for row in rows {
                let place = EnvelopePlace {
                    start: i64::try_from(blob.len()).map_or(i64::MAX, |n| n.saturating_add(1)),
                    length: i64::try_from(row.envelope.len()).unwrap_or(i64::MAX),
                };
                blob.extend_from_slice(row.envelope);
                json.row();
                write_fields(&mut json, row, &MessageRow::COLUMNS);
                write_fields(&mut json, &place, &EnvelopePlace::COLUMNS);
            }
            let envelope =
                read_fields(backend, &EnvelopePlace::COLUMNS, MessageRow::COLUMNS.len()).join(", ");
            let sql = format!(
                "INSERT INTO dp_messages ({columns}, envelope) \
                 SELECT {fields}, substr(?, {envelope}) FROM {}",
                rows_from(backend, 0),
            );
            // The blob comes first: its `?` precedes the rows' in the SQL.
            Statement::from_sql_and_values(backend, sql, [Value::Bytes(Some(blob)), json.finish()])
        }
    }
}

/// Inserts fan-out rows.
pub fn insert_fanouts(backend: DbBackend, rows: &[FanoutRow<'_>]) -> Statement {
    insert(backend, "dp_fanout", &FanoutRow::COLUMNS, rows, "")
}

/// Deletes the fan-out rows of these messages.
pub fn delete_fanouts<'a>(
    backend: DbBackend,
    message_ids: impl IntoIterator<Item = &'a str>,
) -> Statement {
    let sql = format!(
        "DELETE FROM dp_fanout WHERE {}",
        is_element(backend, "message_id", 1, "text")
    );
    Statement::from_sql_and_values(
        backend,
        sql,
        [Value::String(Some(json_strings(message_ids)))],
    )
}

/// Adds an outbox row; returns its `seq` as a row.
pub fn insert_outbox(backend: DbBackend, body: Vec<u8>, create_ms: i64) -> Statement {
    let sql = format!(
        "INSERT INTO dp_outbox (body, create_ms) VALUES ({}, {}) RETURNING seq",
        param(backend, 1),
        param(backend, 2)
    );
    Statement::from_sql_and_values(
        backend,
        sql,
        [Value::Bytes(Some(body)), Value::BigInt(Some(create_ms))],
    )
}

/// Deletes outbox rows.
pub fn delete_outbox(backend: DbBackend, seqs: &[i64]) -> Statement {
    let sql = format!(
        "DELETE FROM dp_outbox WHERE {}",
        is_element(backend, "seq", 1, "bigint")
    );
    Statement::from_sql_and_values(
        backend,
        sql,
        [Value::String(Some(json_ints(seqs.iter().copied())))],
    )
}
