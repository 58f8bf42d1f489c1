//! Compiles the .proto files with protox (pure Rust: no protoc needed) and
//! generates prost messages and tonic clients and servers into OUT_DIR.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/chaingate/dpu/v1/dpu.proto",
        "proto/chaingate/agent/v1/agent.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(files, ["proto"])?;
    // Serialize: tools print messages as JSON (`dpu-fw ctl stats`).
    tonic_prost_build::configure()
        .type_attribute(".", "#[derive(serde::Serialize)]")
        .compile_fds(fds)?;
    Ok(())
}
