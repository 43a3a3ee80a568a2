//! Compiles `proto/tandem/v1` with protox, so a fresh machine needs no system `protoc`.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "tandem/v1/auth.proto",
        "tandem/v1/registry.proto",
        "tandem/v1/ledger.proto",
        "tandem/v1/linking.proto",
        "tandem/v1/partner_gateway.proto",
        "tandem/v1/exchange.proto",
        "tandem/v1/settlement.proto",
        "tandem/sim/v1/partner_sim.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={}", proto_root.join(file).display());
    }

    let descriptors = protox::compile(files, [&proto_root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // Reflection serves this set, so grpcurl and `buf curl` can call the server without files.
    std::fs::write(
        out_dir.join("tandem_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
