//! Compiles the gRPC contract in `proto/` with protox, so no system
//! `protoc` is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let files = ["coldstream/v1/gateway.proto", "coldstream/v1/log.proto"];
    for file in files {
        println!("cargo:rerun-if-changed=../proto/{file}");
    }
    let descriptors = protox::compile(files, ["../proto"])?;
    // The encoded descriptors serve gRPC reflection.
    std::fs::write(out_dir.join("coldstream_descriptor.bin"), prost::Message::encode_to_vec(&descriptors))?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
