//! What the backends' sessions (`sqlite`, `postgres`) share: how a sent batch ends, and the
//! conversions between sea-orm's statements and errors and sqlx's. A leaf, so that
//! [`Session`](super::Session) can hold either backend without the backends importing it.

use std::sync::Arc;

use sea_orm::sqlx;
use sea_orm::{DbErr, RuntimeErr, Statement, Values};
use sea_query_sqlx::SqlxValues;

/// What follows the statements a session sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Finish {
    /// Nothing: the transaction stays open for more.
    Open,
    /// The commit.
    Commit,
    /// The commit, and the statements do not depend on each other's effects.
    CommitIndependent,
}

impl Finish {
    pub(super) fn commits(self) -> bool {
        self != Finish::Open
    }
}

pub(super) fn exec_err(err: sqlx::Error) -> DbErr {
    DbErr::Exec(RuntimeErr::SqlxError(Arc::new(err)))
}

pub(super) fn finished() -> DbErr {
    DbErr::Custom("the session has already ended".to_owned())
}

/// A statement's SQL and values as sqlx takes them.
pub(super) fn query(stmt: Statement) -> (String, SqlxValues) {
    (
        stmt.sql,
        SqlxValues(stmt.values.unwrap_or(Values(Vec::new()))),
    )
}
