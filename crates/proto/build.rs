//! Compiles the protos of both planes with a vendored `protoc`, so a build needs nothing
//! installed, and writes the descriptor set that server reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not baked in when it is compiled: a target dir shared by
    // two checkouts may reuse this script, compiled in the other one.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let protos: Vec<PathBuf> = [
        "sluice/control/v1/common.proto",
        "sluice/control/v1/policy.proto",
        "sluice/control/v1/workspace.proto",
        "sluice/control/v1/event_type.proto",
        "sluice/control/v1/subscription.proto",
        "sluice/control/v1/delivery.proto",
        "sluice/control/v1/data_plane.proto",
        "sluice/data/v1/ingest.proto",
        "sluice/data/v1/dispatch.proto",
    ]
    .iter()
    .map(|p| root.join(p))
    .collect();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);

    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("sluice_descriptor.bin"))
        .compile_with_config(
            config,
            &protos,
            &[root.clone(), protoc_bin_vendored::include_path()?],
        )?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
