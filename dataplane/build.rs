//! Compiles the eBPF programs in ../ebpf with clang into OUT_DIR; the
//! dataplane embeds the object (src/bpf/mod.rs), so it ships with the binary.
use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let ebpf = manifest.join("../ebpf");
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    // asm/types.h lives in the multiarch include dir of the build host's arch.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".to_string());
    let multiarch = format!("/usr/include/{arch}-linux-gnu");

    println!("cargo:rerun-if-env-changed=CLANG");
    for entry in [
        "dm_tc.c",
        "include/dm_layout.h",
        "include/dm_maps.h",
        "include/dm_pkt.h",
        "include/dm_steer.h",
    ] {
        println!("cargo:rerun-if-changed={}", ebpf.join(entry).display());
    }

    let obj = out.join("dm_tc.o");
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-I{multiarch}"))
        .arg("-c")
        .arg(ebpf.join("dm_tc.c"))
        .arg("-o")
        .arg(&obj)
        .status()
        .unwrap_or_else(|e| panic!("running {clang} (apt install clang libbpf-dev): {e}"));
    assert!(status.success(), "{clang} failed to compile ebpf/dm_tc.c");
}
