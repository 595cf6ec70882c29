//! A cluster's `UpstreamTlsContext` and the SDS secrets it names → NodeConfig
//! `clusters[].tls` / `tlsOrigination` and `secrets[]`.
//!
//! istiod (`pilot/pkg/networking/core/cluster_tls.go`) writes:
//! * `ISTIO_MUTUAL`: certificate `default`, validation `ROOTCA` (the sidecar
//!   agent's SDS): the workload identity, which dpu-proxy holds itself.
//! * DestinationRule `tls.mode: SIMPLE|MUTUAL` with `credentialName`:
//!   validation `kubernetes://<name>-cacert`, for MUTUAL certificate
//!   `kubernetes://<name>`, both fetched over ADS (istiod serves them as SDS
//!   `Secret`s) — carried as `secrets[]` entries of those names.
//! * with file paths (`caCertificates`, `clientCertificate`): `file-root:<path>`
//!   and `file-cert:<cert>~<key>`, which the agent reads from the pod's own
//!   filesystem. A node proxy cannot read a pod's files: an error naming them,
//!   except `file-root:system` (no `caCertificates`: the OS trust store,
//!   Istio's `VERIFY_CERTIFICATE_AT_CLIENT`), which is dpu-proxy's own store.
//! * `insecureSkipVerify`: an empty validation context.
//! * `sni`, `subjectAltNames` (exact matchers) as given.

use std::collections::{BTreeMap, BTreeSet};

use dpumesh_api::config::{self as dp, TlsMode, TlsOrigination};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{
    config_source::ConfigSourceSpecifier, data_source::Specifier, transport_socket::ConfigType,
    DataSource,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, secret::Type as SecretType,
    CertificateValidationContext, SdsSecretConfig, Secret, UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};
use prost::Name;

use super::util::unpack;

/// Istio's SDS names for the workload certificate and its root.
const ISTIO_CERT: &str = "default";
const ISTIO_ROOT: &str = "ROOTCA";
/// The root name istiod uses when a DestinationRule names no CA.
const SYSTEM_ROOT: &str = "file-root:system";

/// Why a cluster's TLS cannot be translated.
#[derive(Debug, Clone, PartialEq)]
pub enum TlsError {
    /// Something in the cluster itself.
    Cluster(String),
    /// The named SDS secret is unusable.
    Secret { name: String, message: String },
}

/// The SDS names a cluster asks for on the ADS stream: those whose
/// `sds_config` is ADS, and every `kubernetes://` name (istiod serves them);
/// the agent's names (`default`, `ROOTCA`, `file-*`) are never fetched.
pub fn ads_secret_names(c: &Cluster) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for ctx in contexts(c).into_iter().flatten() {
        if is_istio(&ctx) {
            continue;
        }
        for sds in sds_configs(&ctx) {
            let ads = sds.sds_config.as_ref().is_some_and(|s| {
                matches!(
                    s.config_source_specifier,
                    Some(ConfigSourceSpecifier::Ads(_))
                )
            });
            let agent =
                sds.name == ISTIO_CERT || sds.name == ISTIO_ROOT || sds.name.starts_with("file-");
            if (ads || sds.name.starts_with("kubernetes://")) && !agent {
                names.insert(sds.name.clone());
            }
        }
    }
    names
}

/// The cluster's TLS mode and origination settings, and the secrets those
/// name (from `secrets`, the pod's SDS resources; a name not among them is
/// added without content: not available, dpu-proxy fails its handshakes).
pub fn origination(
    c: &Cluster,
    secrets: &BTreeMap<String, Secret>,
) -> Result<(TlsMode, Option<TlsOrigination>, Vec<dp::Secret>), TlsError> {
    let mut mode = TlsMode::Disable;
    let mut origination = None;
    for ctx in contexts(c) {
        let ctx = ctx.map_err(TlsError::Cluster)?;
        if is_istio(&ctx) {
            return Ok((TlsMode::IstioMutual, None, Vec::new()));
        }
        if origination.is_none() {
            origination = Some(ctx);
        }
    }
    let Some(ctx) = origination else {
        return Ok((mode, None, Vec::new()));
    };
    mode = TlsMode::Simple;
    let common = ctx.common_tls_context.unwrap_or_default();
    let mut out = TlsOrigination {
        sni: ctx.sni,
        ..TlsOrigination::default()
    };
    let mut used = Vec::new();
    if !common.tls_certificates.is_empty() {
        return Err(TlsError::Cluster(
            "inline tls_certificates are not supported (istiod uses SDS)".to_string(),
        ));
    }
    if let Some(sds) = common.tls_certificate_sds_secret_configs.first() {
        if sds.name.starts_with("file-cert:") {
            return Err(pod_file(&sds.name));
        }
        mode = TlsMode::Mutual;
        used.push(secret(secrets, &sds.name, Part::Certificate)?);
        out.client_certificate = Some(sds.name.clone());
    }
    let (default, root) = match common.validation_context_type {
        None => (None, None),
        Some(ValidationContextType::ValidationContext(v)) => (Some(v), None),
        Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) => (None, Some(s)),
        Some(ValidationContextType::CombinedValidationContext(cv)) => (
            cv.default_validation_context,
            cv.validation_context_sds_secret_config,
        ),
        Some(_) => {
            return Err(TlsError::Cluster(
                "validation by certificate provider is not supported".to_string(),
            ))
        }
    };
    if let Some(v) = &default {
        out.subject_alt_names = subject_alt_names(v).map_err(TlsError::Cluster)?;
        if v.trusted_ca.is_some() {
            return Err(TlsError::Cluster(
                "an inline trusted_ca is not supported (istiod uses SDS)".to_string(),
            ));
        }
    }
    match root {
        // No CA to verify against: Envoy does not verify (insecureSkipVerify).
        None => out.insecure_skip_verify = true,
        Some(s) if s.name == SYSTEM_ROOT || s.name == "file-root:SYSTEM" => {}
        Some(s) if s.name.starts_with("file-root:") => return Err(pod_file(&s.name)),
        Some(s) => {
            used.push(secret(secrets, &s.name, Part::Ca)?);
            out.ca_certificates = Some(s.name);
        }
    }
    Ok((mode, Some(out), used))
}

fn pod_file(name: &str) -> TlsError {
    TlsError::Cluster(format!(
        "SDS secret {name:?} names files in the pod's sidecar, which the node proxy \
         cannot read; use the DestinationRule's credentialName (a Kubernetes secret) instead"
    ))
}

/// The `UpstreamTlsContext`s of the cluster's transport sockets (and matches).
fn contexts(c: &Cluster) -> Vec<Result<UpstreamTlsContext, String>> {
    c.transport_socket_matches
        .iter()
        .filter_map(|m| m.transport_socket.as_ref())
        .chain(c.transport_socket.as_ref())
        .filter_map(|socket| match &socket.config_type {
            Some(ConfigType::TypedConfig(any))
                if any.type_url == UpstreamTlsContext::type_url() =>
            {
                Some(unpack(any).map_err(|e| format!("transport socket {:?}: {e}", socket.name)))
            }
            _ => None, // raw_buffer and friends: plaintext
        })
        .collect()
}

fn sds_configs(ctx: &UpstreamTlsContext) -> Vec<&SdsSecretConfig> {
    let Some(common) = &ctx.common_tls_context else {
        return Vec::new();
    };
    let mut out: Vec<&SdsSecretConfig> = common.tls_certificate_sds_secret_configs.iter().collect();
    match &common.validation_context_type {
        Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) => out.push(s),
        Some(ValidationContextType::CombinedValidationContext(cv)) => {
            out.extend(cv.validation_context_sds_secret_config.as_ref())
        }
        _ => {}
    }
    out
}

/// istiod's auto-mTLS context: the workload certificate `default` (or
/// `ROOTCA`), or ALPN `istio*`.
fn is_istio(ctx: &UpstreamTlsContext) -> bool {
    ctx.common_tls_context.as_ref().is_some_and(|common| {
        common
            .tls_certificate_sds_secret_configs
            .iter()
            .any(|s| s.name == ISTIO_CERT)
            || sds_configs(ctx).iter().any(|s| s.name == ISTIO_ROOT)
            || common.alpn_protocols.iter().any(|p| p.starts_with("istio"))
    })
}

/// The exact SAN matchers (istiod writes only those).
fn subject_alt_names(v: &CertificateValidationContext) -> Result<Vec<String>, String> {
    let exact = |m: &StringMatcher| match &m.match_pattern {
        Some(MatchPattern::Exact(s)) if !m.ignore_case => Ok(s.clone()),
        other => Err(format!(
            "subject alt name matcher {other:?}: only exact matchers are supported"
        )),
    };
    #[allow(deprecated)]
    let old = v.match_subject_alt_names.iter().map(exact);
    let typed = v
        .match_typed_subject_alt_names
        .iter()
        .map(|m| m.matcher.as_ref().map_or(Ok(String::new()), exact));
    old.chain(typed)
        .filter(|r| r.as_ref().map_or(true, |s| !s.is_empty()))
        .collect()
}

#[derive(Clone, Copy, PartialEq)]
enum Part {
    Ca,
    Certificate,
}

/// The named SDS secret as a NodeConfig secret; a name the pod has not
/// received is an entry without content (not available).
fn secret(
    secrets: &BTreeMap<String, Secret>,
    name: &str,
    part: Part,
) -> Result<dp::Secret, TlsError> {
    let mut out = dp::Secret {
        name: name.to_string(),
        ..dp::Secret::default()
    };
    let Some(s) = secrets.get(name) else {
        return Ok(out);
    };
    let fail = |message: String| TlsError::Secret {
        name: name.to_string(),
        message,
    };
    match (&s.r#type, part) {
        (Some(SecretType::ValidationContext(v)), Part::Ca) => {
            let ca = v
                .trusted_ca
                .as_ref()
                .ok_or_else(|| fail("validation context without trusted_ca".to_string()))?;
            out.ca_certificates = data(ca).map_err(|e| fail(format!("trusted_ca: {e}")))?;
        }
        (Some(SecretType::TlsCertificate(t)), Part::Certificate) => {
            let chain = t
                .certificate_chain
                .as_ref()
                .ok_or_else(|| fail("tls_certificate without certificate_chain".to_string()))?;
            let key = t
                .private_key
                .as_ref()
                .ok_or_else(|| fail("tls_certificate without private_key".to_string()))?;
            out.certificate_chain =
                data(chain).map_err(|e| fail(format!("certificate_chain: {e}")))?;
            out.private_key = data(key).map_err(|e| fail(format!("private_key: {e}")))?;
        }
        (other, part) => {
            let want = match part {
                Part::Ca => "a validation_context (CA certificates)",
                Part::Certificate => "a tls_certificate (certificate and key)",
            };
            let got = match other {
                None => "nothing",
                Some(SecretType::TlsCertificate(_)) => "a tls_certificate",
                Some(SecretType::ValidationContext(_)) => "a validation_context",
                Some(SecretType::SessionTicketKeys(_)) => "session ticket keys",
                Some(SecretType::GenericSecret(_)) => "a generic secret",
            };
            return Err(fail(format!(
                "the cluster needs {want}, the secret holds {got}"
            )));
        }
    }
    Ok(out)
}

/// The PEM text of an inline data source (istiod inlines secrets' bytes).
fn data(d: &DataSource) -> Result<String, String> {
    let bytes = match &d.specifier {
        Some(Specifier::InlineBytes(b)) => b.clone(),
        Some(Specifier::InlineString(s)) => s.clone().into_bytes(),
        Some(Specifier::Filename(f)) => {
            return Err(format!(
                "a file ({f:?}) on the proxy's host is not supported"
            ))
        }
        Some(Specifier::EnvironmentVariable(v)) => {
            return Err(format!("an environment variable ({v:?}) is not supported"))
        }
        None => return Err("empty data source".to_string()),
    };
    let text = String::from_utf8(bytes).map_err(|_| "not PEM text (not UTF-8)".to_string())?;
    if !text.contains("-----BEGIN ") {
        return Err("not PEM (no BEGIN line)".to_string());
    }
    Ok(text)
}
