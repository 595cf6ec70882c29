//! `dpumesh config dump --node N`: the NodeConfig a node's dpu-proxy serves now,
//! as YAML, with the xDS versions (`sources`) it was built from — what
//! `istioctl proxy-config all` is for a sidecar.
//!
//! The proxy's control API (`GetConfig`, docs/control-api.md) listens on the
//! DPU's management address; it is reached from the node's host netns, through
//! the simulator library (never from the root netns).

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use dpumesh_api::config::NodeConfig;
use dpumesh_api::proto::v1::GetConfigRequest;
use dpumesh_sim::{Place, Sim};
use serde_json::Value;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print a node's current NodeConfig (from dpu-proxy's GetConfig) and its xDS sources.
    Dump(DumpArgs),
}

#[derive(Debug, Args)]
pub struct DumpArgs {
    /// Simulator cluster name.
    #[arg(short = 'c', long, env = "DPUMESH_CLUSTER", default_value = "demo")]
    pub cluster: String,
    /// The node: `node-<i>` or `<i>` (from 1).
    #[arg(long)]
    pub node: String,
    /// dpu-proxy's control address, as seen from the node's host.
    #[arg(long, default_value = "192.168.100.2:15080")]
    pub proxy_addr: String,
    /// Print JSON instead of YAML.
    #[arg(long)]
    pub json: bool,
}

pub fn run(command: ConfigCommand) -> Result<()> {
    match command {
        ConfigCommand::Dump(args) => dump(args),
    }
}

/// `node-3` or `3` → 3.
pub fn parse_node(node: &str) -> Result<usize> {
    let digits = node.strip_prefix("node-").unwrap_or(node);
    match digits.parse::<usize>() {
        Ok(i) if i > 0 => Ok(i),
        _ => bail!("--node {node:?}: expected node-<i> or <i>, with i from 1"),
    }
}

fn dump(args: DumpArgs) -> Result<()> {
    let index = parse_node(&args.node)?;
    let sim = Sim::attach(&args.cluster)
        .with_context(|| format!("simulator cluster {:?}", args.cluster))?;
    let node = sim.node(index)?;
    let addr = args.proxy_addr.clone();
    let (serving, json) = node
        .netns(Place::Host)
        .run(move || -> Result<(u64, Vec<u8>)> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("client runtime")?;
            runtime.block_on(async {
                let mut client = dpumesh_api::client::proxy_config(&addr).await?;
                let reply = client
                    .get_config(GetConfigRequest {})
                    .await
                    .with_context(|| format!("GetConfig on {addr}"))?
                    .into_inner();
                Ok((reply.serving_version, reply.node_config_json))
            })
        })
        .context("entering the node's host netns")??;
    let text = render(&args.node, &args.proxy_addr, serving, &json, args.json)?;
    print!("{text}");
    Ok(())
}

/// The dump: a header, the sources (xDS type/pod → version), then the config.
pub fn render(node: &str, addr: &str, serving: u64, json: &[u8], as_json: bool) -> Result<String> {
    if json.is_empty() {
        bail!("{node}: dpu-proxy at {addr} serves no config yet (serving version {serving})");
    }
    let config: NodeConfig = serde_json::from_slice(json)
        .with_context(|| format!("{node}: the config dpu-proxy returned is not a NodeConfig"))?;
    let value = serde_json::to_value(&config).context("re-encoding the config")?;
    if as_json {
        return Ok(serde_json::to_string_pretty(&value)? + "\n");
    }
    let mut out = format!(
        "# node {node}: dpu-proxy {addr} serves version {serving}\n# sources: where each part came from (xDS type of each pod's proxy → version)\n"
    );
    let sources = Value::Object(
        config
            .sources
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    );
    out.push_str("sources:");
    yaml(&sources, 1, &mut out);
    out.push_str("config:");
    yaml(&value, 1, &mut out);
    Ok(out)
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => {
            const WORDS: [&str; 12] = [
                "true", "false", "null", "yes", "no", "on", "off", "y", "n", "~", ".inf", ".nan",
            ];
            // Numbers, dates and the like (but not IPs/CIDRs: "10.96.0.10", "10.96.0.0/16").
            let numberish = s.starts_with(|c: char| c.is_ascii_digit())
                && s.matches('.').count() < 2
                && !s.contains('/');
            let plain = !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./|@".contains(c))
                && !s.starts_with(['-', '.', '|', '@'])
                && !WORDS.iter().any(|w| s.eq_ignore_ascii_case(w))
                && !numberish;
            if plain {
                s.clone()
            } else {
                // A JSON string is a valid YAML double-quoted scalar.
                Value::String(s.clone()).to_string()
            }
        }
        other => other.to_string(),
    }
}

/// Block-style YAML for `v`, starting right after a `key:` (or `-`) already written.
fn yaml(v: &Value, depth: usize, out: &mut String) {
    let pad = "  ".repeat(depth);
    match v {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            for (k, val) in map {
                out.push_str(&format!("{pad}{}:", scalar(&Value::String(k.clone()))));
                yaml(val, depth + 1, out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            for item in items {
                let mut nested = String::new();
                yaml(item, depth + 1, &mut nested);
                // A non-empty map starts on the dash's line: "- key: v" / "  key2: w".
                match nested.strip_prefix(&format!("\n{pad}  ")) {
                    Some(rest) if item.is_object() => out.push_str(&format!("{pad}- {rest}")),
                    _ => out.push_str(&format!("{pad}-{nested}")),
                }
            }
        }
        Value::Object(_) => out.push_str(" {}\n"),
        Value::Array(_) => out.push_str(" []\n"),
        other => out.push_str(&format!(" {}\n", scalar(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        assert_eq!(parse_node("node-2").unwrap(), 2);
        assert_eq!(parse_node("3").unwrap(), 3);
        for bad in ["node-0", "0", "node-x", "", "n1"] {
            let e = parse_node(bad).unwrap_err().to_string();
            assert!(e.contains("expected node-<i> or <i>"), "{bad}: {e}");
        }
    }

    #[test]
    fn no_config_yet_and_garbage_are_errors() {
        let e = render("node-1", "a:1", 0, b"", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("serves no config yet"), "{e}");
        let e = render("node-1", "a:1", 3, b"{}", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a NodeConfig"), "{e}");
    }

    #[test]
    fn scalars_that_yaml_would_misread_are_quoted() {
        for (s, quoted) in [
            ("reviews", false),
            ("outbound|9080|v1|reviews.default.svc.cluster.local", false),
            ("true", true),
            ("9080", true),
            ("1.5", true),
            ("", true),
            ("a: b", true),
            ("- x", true),
            ("#x", true),
            ("10.96.0.0/16", false),
            ("10.96.0.10", false),
            ("0x1F", true),
            ("2024-06-01", true),
            ("Yes", true),
            ("local-4f2a", false),
        ] {
            let out = scalar(&Value::String(s.to_string()));
            assert_eq!(out.starts_with('"'), quoted, "{s:?} → {out}");
        }
    }
}
