//! Compiles `proto/telemetry.proto` (issue 15) with prost. protox parses the schema in Rust,
//! so no `protoc` binary is needed to build the gateway.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../proto/telemetry.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["../proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
