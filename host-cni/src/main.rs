//! dpumesh-cni: invoked by the container runtime per the CNI spec.
//! Environment and stdin in, a result or a spec error on stdout.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};

fn main() {
    // Logs go to stderr (runtimes capture it); stdout is the spec's.
    let filter = std::env::var("DPUMESH_CNI_LOG").unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();

    let vars: BTreeMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| k.starts_with("CNI_"))
        .collect();
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let outcome = match read {
        Ok(_) => dpumesh_cni::commands::run(&vars, &stdin),
        Err(e) => Err((
            dpumesh_cni::spec::CniError::io("cannot read stdin", e.to_string()),
            dpumesh_cni::spec::LATEST_VERSION.to_string(),
        )),
    };
    let mut out = std::io::stdout().lock();
    let code = match outcome {
        Ok(s) => {
            let _ = out.write_all(s.as_bytes());
            0
        }
        Err((e, version)) => {
            let _ = out.write_all(e.to_json(&version).as_bytes());
            1
        }
    };
    let _ = out.flush();
    std::process::exit(code);
}
