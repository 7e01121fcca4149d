//! Compiles the .proto files with protox (no `protoc` needed) and generates tonic/prost code
//! plus the encoded descriptor set that gRPC server reflection serves.

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/cairn/v2/records.proto",
        "proto/cairn/v2/errors.proto",
        "proto/cairn/v2/api.proto",
        "proto/cairn/v2/peer.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("cairn_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().bytes(".").compile_fds(fds)?;
    Ok(())
}
