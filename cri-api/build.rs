//! Compiles ../proto/cri/runtime/v1/api.proto with Debian's `protoc` (package
//! protobuf-compiler; `PROTOC` overrides the path) into client and server code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../proto/cri/runtime/v1/api.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure()
        // Pod and container records persist PodSandboxConfig / ContainerConfig as JSON.
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        // A record written before a field existed still loads (the field takes its default).
        .message_attribute(".", "#[serde(default)]")
        // Written as a string, as it was while the field was a string (before 1.36.3).
        .field_attribute(
            ".runtime.v1.KeyValue.value",
            "#[serde(with = \"crate::bytes_as_str\")]",
        )
        // Secrets are redacted by a hand-written Debug in lib.rs.
        .skip_debug([".runtime.v1.AuthConfig"])
        .compile_protos(&[proto], &["../proto"])?;
    Ok(())
}
