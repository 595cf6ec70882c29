fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // Relative relocations packed (DT_RELR): the loader reads ~11 KB of
    // them at start instead of ~0.9 MB of .rela.dyn, pages that stayed
    // resident (≈ 2 MB less file-backed RSS with fault-around). Needs glibc
    // >= 2.36 where the binary runs (Debian 12, Ubuntu 22.10); linkers
    // older than binutils 2.38 ignore it. DPU_PROXY_NO_RELR=1 builds without.
    println!("cargo:rerun-if-env-changed=DPU_PROXY_NO_RELR");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu")
        && std::env::var_os("DPU_PROXY_NO_RELR").is_none()
    {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    // istiod's IstioCertificateService (vendored, see proto/README.md).
    // google.protobuf.Struct maps to prost_types (prost's default).
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["proto/istio/security/v1alpha1/ca.proto"], &["proto"])?;
    Ok(())
}
