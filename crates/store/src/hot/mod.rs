//! The hot path's writes: one round trip per write cycle where the database allows it, and
//! statements whose SQL never changes.
//!
//! The data plane's writer and the control plane's outcome intake write many rows per
//! transaction, many times a second. Going through sea-orm's query builder for them cost
//! more than the database's own work: every statement is built and its values copied
//! several times, and a multi-row `INSERT` with a different row count is a different
//! statement for SQLite to prepare. Here the rows of a statement travel as one JSON
//! parameter (a JSONB blob read by `jsonb_each` on SQLite, text read by
//! `jsonb_array_elements` on PostgreSQL), so each statement has one fixed SQL text,
//! prepared once and cached by the driver; and on SQLite a whole cycle (`BEGIN`, the
//! statements, `COMMIT`) is sent to its connection's thread as one multi-statement query
//! instead of one hand-off per statement.
//!
//! [`Session`] is a transaction on one pooled connection that runs such statements and,
//! implementing sea-orm's `ConnectionTrait`, any sea-orm query too, so the rare writes of a
//! cycle (a failed delivery's row, a disabled subscription) keep using the entities.
//!
//! By concern: `session` (the [`Session`]) with its commit paths per backend (`sqlite`,
//! `postgres`) and what they share (`finish`); `rows` (the [`JsonRows`] writer of the rows parameter); `sql` (the named
//! columns of a statement's rows and the SQL fragments that read them); and the
//! statements of each plane, [`data`] and [`control`].

pub mod control;
pub mod data;
mod finish;
mod postgres;
mod rows;
mod session;
mod sql;
mod sqlite;

pub use rows::{JsonRows, json_ints, json_strings};
pub use session::Session;
