//! Generates the gRPC code for proto/moa/embedding/v1/embedding.proto with protox (a pure-Rust
//! protobuf compiler), so that building needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = "../proto";
    let file = "../proto/moa/embedding/v1/embedding.proto";
    println!("cargo:rerun-if-changed={file}");
    let descriptors = protox::compile([file], [proto_root])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
