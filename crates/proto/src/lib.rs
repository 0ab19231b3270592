//! Generated protobuf messages and gRPC stubs for both planes, and the encoded descriptor
//! set that the servers register for gRPC reflection. No logic lives here.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// The control plane's API, `sluice.control.v1`.
pub mod control {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("sluice.control.v1");
    }
}

/// The data plane's API, `sluice.data.v1`.
pub mod data {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("sluice.data.v1");
    }
}

pub mod json;

/// The encoded `FileDescriptorSet` of every Sluice proto (with their imports), for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("sluice_descriptor");

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn descriptor_set_decodes_and_names_every_service() {
        let set = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set is valid");
        let services: Vec<String> = set
            .file
            .iter()
            .flat_map(|f| {
                let package = f.package().to_string();
                f.service
                    .iter()
                    .map(move |s| format!("{package}.{}", s.name()))
            })
            .collect();
        for expected in [
            "sluice.control.v1.WorkspaceService",
            "sluice.control.v1.EventTypeService",
            "sluice.control.v1.SubscriptionService",
            "sluice.control.v1.DeliveryService",
            "sluice.control.v1.DataPlaneService",
            "sluice.data.v1.IngestService",
            "sluice.data.v1.DispatchService",
        ] {
            assert!(
                services.iter().any(|s| s == expected),
                "{expected} missing from {services:?}"
            );
        }
    }
}
