fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["proto/dpumesh/controller/v1/inventory.proto"], &["proto"])?;
    // Istio's workload API (proto/istio/README.md): messages only.
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(false)
        .compile_protos(
            &[
                "proto/istio/workload/workload.proto",
                "proto/istio/security/authorization.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}
