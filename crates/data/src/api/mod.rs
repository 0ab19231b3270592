//! The data plane's gRPC services: `IngestService` for publishers (`ingest`) and
//! `DispatchService` for the control plane (`dispatch`: test sends, redelivery, replay).
//! They authenticate and validate, then hand the work to the tasks.

pub(crate) mod dispatch;
pub(crate) mod ingest;
pub(crate) mod quota;
