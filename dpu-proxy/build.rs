fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // istiod's IstioCertificateService (vendored, see proto/README.md).
    // google.protobuf.Struct maps to prost_types (prost's default).
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["proto/istio/security/v1alpha1/ca.proto"], &["proto"])?;
    Ok(())
}
