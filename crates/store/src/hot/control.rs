//! The control plane's delivery-log statements: a batch of outcomes' messages, attempts,
//! deliveries and endpoint health, and the question which attempts are stored already.

use sea_orm::{DbBackend, Statement, Value};

use super::rows::json_strings;
use super::sql::{Column, insert, is_element, names, read_fields, rows_from, rows_param};

/// A `messages` row.
pub struct MessageRow<'a> {
    pub id: &'a str,
    pub workspace_id: &'a str,
    pub event_type: &'a str,
    pub create_ms: i64,
    pub delivery_count: i64,
    /// Set for events ordered on some subscription.
    pub ordering_key: Option<&'a str>,
}

impl<'a> MessageRow<'a> {
    const COLUMNS: [Column<Self>; 5] = [
        Column::text("id", |r| r.id),
        Column::text("workspace_id", |r| r.workspace_id),
        Column::text("event_type", |r| r.event_type),
        Column::bigint("create_ms", |r| r.create_ms),
        Column::integer("delivery_count", |r| r.delivery_count),
    ];

    /// Those of a message with an ordering key (m0008): its own statement, so the others
    /// carry nothing more.
    const KEYED_COLUMNS: [Column<Self>; 6] = [
        Column::text("id", |r| r.id),
        Column::text("workspace_id", |r| r.workspace_id),
        Column::text("event_type", |r| r.event_type),
        Column::bigint("create_ms", |r| r.create_ms),
        Column::integer("delivery_count", |r| r.delivery_count),
        Column::opt_text("ordering_key", |r| r.ordering_key),
    ];
}

/// An `attempts` row.
pub struct AttemptRow<'a> {
    pub id: &'a str,
    pub workspace_id: &'a str,
    pub message_id: &'a str,
    pub subscription_id: &'a str,
    pub event_type: &'a str,
    pub attempt_number: i64,
    pub attempt_ms: i64,
    pub success: bool,
    pub status_code: i64,
    pub error_kind: &'a str,
    pub error_message: &'a str,
    pub latency_us: i64,
    pub response_excerpt: &'a str,
    pub trigger: &'a str,
    pub url: &'a str,
}

impl<'a> AttemptRow<'a> {
    const COLUMNS: [Column<Self>; 15] = [
        Column::text("id", |r| r.id),
        Column::text("workspace_id", |r| r.workspace_id),
        Column::text("message_id", |r| r.message_id),
        Column::text("subscription_id", |r| r.subscription_id),
        Column::text("event_type", |r| r.event_type),
        Column::integer("attempt_number", |r| r.attempt_number),
        Column::bigint("attempt_ms", |r| r.attempt_ms),
        Column::boolean("success", |r| r.success),
        Column::integer("status_code", |r| r.status_code),
        Column::text("error_kind", |r| r.error_kind),
        Column::text("error_message", |r| r.error_message),
        Column::bigint("latency_us", |r| r.latency_us),
        Column::text("response_excerpt", |r| r.response_excerpt),
        Column::text("trigger", |r| r.trigger),
        Column::text("url", |r| r.url),
    ];
}

/// A `deliveries` row.
pub struct DeliveryRow<'a> {
    pub message_id: &'a str,
    pub subscription_id: &'a str,
    pub workspace_id: &'a str,
    pub event_type: &'a str,
    pub status: &'a str,
    pub attempt_count: i64,
    pub last_attempt_ms: Option<i64>,
    pub next_attempt_ms: Option<i64>,
    pub last_status_code: i64,
    pub last_error_kind: &'a str,
    pub create_ms: i64,
}

impl<'a> DeliveryRow<'a> {
    const COLUMNS: [Column<Self>; 11] = [
        Column::text("message_id", |r| r.message_id),
        Column::text("subscription_id", |r| r.subscription_id),
        Column::text("workspace_id", |r| r.workspace_id),
        Column::text("event_type", |r| r.event_type),
        Column::text("status", |r| r.status),
        Column::integer("attempt_count", |r| r.attempt_count),
        Column::opt_bigint("last_attempt_ms", |r| r.last_attempt_ms),
        Column::opt_bigint("next_attempt_ms", |r| r.next_attempt_ms),
        Column::integer("last_status_code", |r| r.last_status_code),
        Column::text("last_error_kind", |r| r.last_error_kind),
        Column::bigint("create_ms", |r| r.create_ms),
    ];
}

/// An `endpoint_health` row: what a batch of attempts adds.
pub struct HealthRow<'a> {
    pub subscription_id: &'a str,
    pub workspace_id: &'a str,
    /// Failures after the batch's last success (all of them if it had none).
    pub consecutive_failures: i64,
    /// Set if and only if the batch had a success.
    pub last_success_ms: Option<i64>,
    pub last_failure_ms: Option<i64>,
    /// The batch's last reported concurrency limit, if any.
    pub concurrency_limit: Option<i64>,
}

impl<'a> HealthRow<'a> {
    const COLUMNS: [Column<Self>; 6] = [
        Column::text("subscription_id", |r| r.subscription_id),
        Column::text("workspace_id", |r| r.workspace_id),
        Column::bigint("consecutive_failures", |r| r.consecutive_failures),
        Column::opt_bigint("last_success_ms", |r| r.last_success_ms),
        Column::opt_bigint("last_failure_ms", |r| r.last_failure_ms),
        Column::opt_bigint("concurrency_limit", |r| r.concurrency_limit),
    ];
}

/// Inserts messages, leaving those already stored; their `ordering_key`s are not written
/// (see [`insert_keyed_messages`]).
pub fn insert_messages(backend: DbBackend, rows: &[MessageRow<'_>]) -> Statement {
    insert(
        backend,
        "messages",
        &MessageRow::COLUMNS,
        rows,
        "ON CONFLICT (workspace_id, id) DO NOTHING",
    )
}

/// Inserts messages with their `ordering_key`s, leaving those already stored.
pub fn insert_keyed_messages(backend: DbBackend, rows: &[MessageRow<'_>]) -> Statement {
    insert(
        backend,
        "messages",
        &MessageRow::KEYED_COLUMNS,
        rows,
        "ON CONFLICT (workspace_id, id) DO NOTHING",
    )
}

/// The ids among `ids` of attempts already stored (a batch sent again after a lost
/// ack), as rows with column `id`. Asking first returns only the repeats, where
/// `INSERT ... RETURNING` would return every new row, which on SQLite is a hand-off
/// between threads per row.
pub fn existing_attempts<'a>(
    backend: DbBackend,
    ids: impl IntoIterator<Item = &'a str>,
) -> Statement {
    let sql = format!(
        "SELECT id FROM attempts WHERE {}",
        is_element(backend, "id", 1, "text")
    );
    Statement::from_sql_and_values(backend, sql, [Value::String(Some(json_strings(ids)))])
}

/// Inserts attempts, leaving those already stored, each with its log position (migration
/// m0005): PostgreSQL's column defaults give it; on SQLite, whose one writer makes numbering
/// order commit order, the insert numbers the rows after the highest number stored (one
/// probe of the position index per statement; a row left out leaves a harmless gap).
pub fn insert_attempts(backend: DbBackend, rows: &[AttemptRow<'_>]) -> Statement {
    match backend {
        DbBackend::Postgres => insert(
            backend,
            "attempts",
            &AttemptRow::COLUMNS,
            rows,
            "ON CONFLICT (id) DO NOTHING",
        ),
        _ => {
            let sql = format!(
                "INSERT INTO attempts ({}, log_txid, log_seq) \
                 SELECT {}, 0, \
                   (SELECT COALESCE(MAX(log_seq), 0) FROM attempts WHERE log_txid = 0) + 1 + e.key \
                 FROM {} WHERE true ON CONFLICT (id) DO NOTHING",
                names(&AttemptRow::COLUMNS),
                read_fields(backend, &AttemptRow::COLUMNS, 0).join(", "),
                rows_from(backend, 1),
            );
            Statement::from_sql_and_values(
                backend,
                sql,
                [rows_param(backend, rows, &AttemptRow::COLUMNS)],
            )
        }
    }
}

/// Like [`insert_attempts`], returning the id of each attempt it stored (rows with column
/// `id`), none of those already there. For PostgreSQL, where control-plane replicas store
/// side by side: an insert waits for another transaction's uncommitted row with the same id
/// and skips it once that commits, so of two replicas storing the same batch at once (one of
/// them a resend), exactly one gets each attempt back, where asking first
/// ([`existing_attempts`]) cannot see the other's uncommitted rows.
pub fn insert_attempts_returning_id(backend: DbBackend, rows: &[AttemptRow<'_>]) -> Statement {
    let mut statement = insert_attempts(backend, rows);
    statement.sql.push_str(" RETURNING id");
    statement
}

/// Inserts deliveries or updates them, but a stored row only takes a state at least as
/// late as its own: outcomes of different replicas may arrive out of order, and a row
/// without an attempt never overwrites one with.
pub fn upsert_deliveries(backend: DbBackend, rows: &[DeliveryRow<'_>]) -> Statement {
    insert(
        backend,
        "deliveries",
        &DeliveryRow::COLUMNS,
        rows,
        "ON CONFLICT (workspace_id, message_id, subscription_id) DO UPDATE SET \
           status = excluded.status, attempt_count = excluded.attempt_count, \
           last_attempt_ms = excluded.last_attempt_ms, \
           next_attempt_ms = excluded.next_attempt_ms, \
           last_status_code = excluded.last_status_code, \
           last_error_kind = excluded.last_error_kind \
         WHERE deliveries.last_attempt_ms IS NULL \
           OR deliveries.last_attempt_ms <= excluded.last_attempt_ms",
    )
}

/// Adds a batch's attempts to each endpoint's health: a batch with a success restarts
/// the failure count, one without adds its failures to it.
pub fn upsert_health(backend: DbBackend, rows: &[HealthRow<'_>]) -> Statement {
    insert(
        backend,
        "endpoint_health",
        &HealthRow::COLUMNS,
        rows,
        "ON CONFLICT (subscription_id) DO UPDATE SET \
           consecutive_failures = CASE WHEN excluded.last_success_ms IS NULL \
             THEN endpoint_health.consecutive_failures + excluded.consecutive_failures \
             ELSE excluded.consecutive_failures END, \
           last_success_ms = COALESCE(excluded.last_success_ms, endpoint_health.last_success_ms), \
           last_failure_ms = COALESCE(excluded.last_failure_ms, endpoint_health.last_failure_ms), \
           concurrency_limit = COALESCE(excluded.concurrency_limit, endpoint_health.concurrency_limit)",
    )
}
