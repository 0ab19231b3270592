//! sea-orm migrations for both planes. Each plane has its own migrator and its own
//! migration-history table, so the planes can share one PostgreSQL database or use
//! separate files on SQLite. One module per change, each with `up` and `down`.
//!
//! Times are stored as unix milliseconds (BIGINT): portable across SQLite and PostgreSQL,
//! exact to compare and sort, and cheap to write on the hot path.

pub use sea_orm_migration::prelude::*;

mod m0001_control_initial;
mod m0001_data_initial;
mod m0002_control_log_tables;
mod m0002_data_fanout;
mod m0003_control_log_keys;
mod m0004_control_retention;
mod m0004_data_retention;
mod m0005_control_events;
mod m0006_control_trust;
mod m0007_control_policy;
mod m0007_data_policy;
mod m0008_control_ordering;
mod m0008_data_ordering;
mod m0009_control_concurrency;
mod m0009_data_fair_claims;
mod m0010_control_verification;
mod m0011_data_fanout_workspace;
mod m0012_control_publish_quota;
mod m0012_data_publish_quota;

/// Migrations of the control plane's database.
pub struct ControlMigrator;

#[async_trait::async_trait]
impl MigratorTrait for ControlMigrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m0001_control_initial::Migration),
            Box::new(m0002_control_log_tables::Migration),
            Box::new(m0003_control_log_keys::Migration),
            Box::new(m0004_control_retention::Migration),
            Box::new(m0005_control_events::Migration),
            Box::new(m0006_control_trust::Migration),
            Box::new(m0007_control_policy::Migration),
            Box::new(m0008_control_ordering::Migration),
            Box::new(m0009_control_concurrency::Migration),
            Box::new(m0010_control_verification::Migration),
            Box::new(m0012_control_publish_quota::Migration),
        ]
    }

    fn migration_table_name() -> DynIden {
        "sluice_control_migrations".into_iden()
    }
}

/// Migrations of the data plane's database.
pub struct DataMigrator;

#[async_trait::async_trait]
impl MigratorTrait for DataMigrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m0001_data_initial::Migration),
            Box::new(m0002_data_fanout::Migration),
            Box::new(m0004_data_retention::Migration),
            Box::new(m0007_data_policy::Migration),
            Box::new(m0008_data_ordering::Migration),
            Box::new(m0009_data_fair_claims::Migration),
            Box::new(m0011_data_fanout_workspace::Migration),
            Box::new(m0012_data_publish_quota::Migration),
        ]
    }

    fn migration_table_name() -> DynIden {
        "sluice_data_migrations".into_iden()
    }
}
