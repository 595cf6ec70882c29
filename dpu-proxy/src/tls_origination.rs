//! TLS origination to the upstreams of `SIMPLE` and `MUTUAL` clusters (Istio
//! DestinationRule `trafficPolicy.tls`), as a sidecar's Envoy does with an
//! `UpstreamTlsContext`: SNI, the server verified against the cluster's CA (or
//! the DPU's system trust store) and its SANs (or the SNI), a client
//! certificate for `MUTUAL`, ALPN `h2` only for HTTP/2 upstreams (istiod sets
//! no ALPN for other `SIMPLE`/`MUTUAL` clusters).
//!
//! Compiled once per config ([`TlsOrigin::compile`]); a handshake is one call
//! ([`TlsOrigin::connect`]). A failed handshake is a connect failure of the
//! request (503, flag UF), counted per cluster (`tls_handshake_failures`).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::client::verify_server_name;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use dpumesh_api::config::{Cluster, Secret, TlsMode};

use crate::compiled::ClusterRt;
use crate::identity::tls::{provider, verify_chain, ServerCertCheck, ServerVerifier};
use crate::proxy::upstream;
use crate::proxy::Io;

/// How one cluster originates TLS.
pub struct TlsOrigin {
    /// Distinguishes connections of different TLS settings in the pool
    /// (a hash of everything below; equal settings share connections).
    pub key: u64,
    server_name: ServerName<'static>,
    /// SNI from each request's host (Envoy's `auto_sni`).
    auto_sni: bool,
    /// Client configs without ALPN (HTTP/1.1 and TCP upstreams) and with
    /// `h2` (HTTP/2 upstreams); or why there are none: a secret the control
    /// plane has not provided (every handshake fails, never plaintext).
    configs: Result<(Arc<ClientConfig>, Arc<ClientConfig>), String>,
}

impl std::fmt::Debug for TlsOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOrigin")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsOrigin {
    /// The cluster's TLS origination, `None` unless `tls` is `SIMPLE` or
    /// `MUTUAL`. Errors (a PEM that does not parse, a key that does not fit)
    /// name the secret.
    pub fn compile(
        c: &Cluster,
        secrets: &HashMap<&str, &Secret>,
    ) -> Result<Option<TlsOrigin>, String> {
        if !matches!(c.tls, TlsMode::Simple | TlsMode::Mutual) {
            return Ok(None);
        }
        let settings = c.tls_origination.clone().unwrap_or_default();
        let secret = |name: &str| {
            secrets
                .get(name)
                .copied()
                .ok_or_else(|| format!("{name:?} is not the name of any secrets entry"))
        };
        let mut key = std::hash::DefaultHasher::new();
        c.service.hash(&mut key);
        settings.hash(&mut key);
        let unavailable = [&settings.ca_certificates, &settings.client_certificate]
            .into_iter()
            .flatten()
            .find(|name| secret(name).is_ok_and(|s| s.is_unavailable()));

        let sni = if settings.sni.is_empty() {
            c.service.as_str()
        } else {
            settings.sni.as_str()
        };
        let server_name = ServerName::try_from(sni.to_string())
            .map_err(|e| format!("sni {sni:?} is not a valid server name: {e}"))?;
        let mut sans = Vec::new();
        for san in &settings.subject_alt_names {
            sans.push(
                ServerName::try_from(san.clone())
                    .map_err(|e| format!("subjectAltNames {san:?}: {e}"))?,
            );
        }
        if let Some(name) = unavailable {
            return Ok(Some(TlsOrigin {
                key: key.finish(),
                server_name,
                auto_sni: settings.auto_sni,
                configs: Err(format!("secret {name:?} is not available")),
            }));
        }
        let roots = match &settings.ca_certificates {
            Some(name) => {
                let s = secret(name)?;
                s.ca_certificates.hash(&mut key);
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(s.ca_certificates.as_bytes()) {
                    let cert = cert.map_err(|e| format!("secret {name:?} caCertificates: {e}"))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("secret {name:?} caCertificates: {e}"))?;
                }
                if roots.is_empty() {
                    return Err(format!(
                        "secret {name:?} caCertificates holds no certificate"
                    ));
                }
                Arc::new(roots)
            }
            None => system_roots(),
        };
        let verifier = Arc::new(ServerVerifier(OriginVerifier {
            roots,
            sans,
            skip: settings.insecure_skip_verify,
        }));
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS versions: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match (&settings.client_certificate, c.tls) {
            (Some(name), TlsMode::Mutual) => {
                let s = secret(name)?;
                s.certificate_chain.hash(&mut key);
                s.private_key.hash(&mut key);
                let chain = CertificateDer::pem_slice_iter(s.certificate_chain.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("secret {name:?} certificateChain: {e}"))?;
                if chain.is_empty() {
                    return Err(format!(
                        "secret {name:?} certificateChain holds no certificate"
                    ));
                }
                let key = PrivateKeyDer::from_pem_slice(s.private_key.as_bytes())
                    .map_err(|e| format!("secret {name:?} privateKey: {e}"))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("secret {name:?}: {e}"))?
            }
            (None, TlsMode::Mutual) => {
                return Err("MUTUAL needs tlsOrigination.clientCertificate".to_string())
            }
            _ => builder.with_no_client_auth(),
        };
        let plain = Arc::new(config.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Some(TlsOrigin {
            key: key.finish(),
            server_name,
            auto_sni: settings.auto_sni,
            configs: Ok((plain, Arc::new(config))),
        }))
    }

    /// The pool key part for a request to `authority`: with `auto_sni`, a
    /// connection serves one SNI only, so the host is part of the key.
    pub fn key_for(&self, authority: &str) -> u64 {
        if !self.auto_sni {
            return self.key;
        }
        let mut h = std::hash::DefaultHasher::new();
        self.key.hash(&mut h);
        sni_host(authority).hash(&mut h);
        h.finish()
    }

    /// The server name a request to `authority` is sent with: the host with
    /// `auto_sni` (when it is a valid name), else the configured one.
    fn server_name_for(&self, authority: Option<&str>) -> ServerName<'static> {
        match authority.filter(|_| self.auto_sni).map(sni_host) {
            Some(host) if !host.is_empty() => {
                ServerName::try_from(host.to_string()).unwrap_or_else(|_| self.server_name.clone())
            }
            _ => self.server_name.clone(),
        }
    }

    /// The TLS handshake over `io` for a request to `authority` (its host
    /// is the SNI with `auto_sni`); `h2` offers ALPN `h2`. Failures read
    /// `TLS error: <reason>` (Envoy's transport failure reason).
    pub async fn connect<IO>(
        &self,
        io: IO,
        h2: bool,
        authority: Option<&str>,
    ) -> io::Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let (plain, with_h2) = self.configs.as_ref().map_err(|e| {
            io::Error::new(io::ErrorKind::ConnectionAborted, format!("TLS error: {e}"))
        })?;
        let config = if h2 { with_h2 } else { plain };
        TlsConnector::from(config.clone())
            .connect(self.server_name_for(authority), io)
            .await
            .map_err(|e| {
                io::Error::new(io::ErrorKind::ConnectionAborted, format!("TLS error: {e}"))
            })
    }
}

/// The host of an authority (`host[:port]`, `[v6]:port`), the SNI of
/// `auto_sni`.
fn sni_host(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// Connects to `dst` (from `src` when given) and originates TLS with the
/// cluster's settings for a request to `authority`, within `timeout` for
/// both. A failed handshake is counted on the cluster and logged.
pub(crate) async fn connect(
    cluster: &ClusterRt,
    src: Option<IpAddr>,
    dst: SocketAddr,
    h2: bool,
    authority: Option<&str>,
    timeout: Duration,
) -> io::Result<Io> {
    let Some(origin) = &cluster.tls_origin else {
        return Err(io::Error::other("cluster has no TLS origination"));
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let tcp = upstream::connect(src, dst, timeout).await?;
    let result = match tokio::time::timeout_at(deadline, origin.connect(tcp, h2, authority)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "TLS error: handshake timeout",
        )),
    };
    match result {
        Ok(tls) => Ok(Io::Tls(Box::new(tls))),
        Err(e) => {
            cluster
                .state
                .tls_handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(cluster = %cluster.name, %dst, error = %e, "TLS origination failed");
            Err(e)
        }
    }
}

/// The DPU's system trust store (what Istio's `VERIFY_CERTIFICATE_AT_CLIENT`
/// uses when a DestinationRule names no CA), loaded once.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let loaded = rustls_native_certs::load_native_certs();
            for e in &loaded.errors {
                tracing::warn!(error = %e, "reading the system trust store");
            }
            let mut roots = RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(loaded.certs);
            if added == 0 {
                tracing::warn!(
                    ignored,
                    "the system trust store holds no certificate: TLS origination without \
                     caCertificates will fail every handshake"
                );
            }
            Arc::new(roots)
        })
        .clone()
}

/// Verifies the upstream as Envoy's `CertificateValidationContext` does for
/// istiod's output: the chain against `roots`; the leaf must be valid for one
/// of `sans` (Envoy `match_subject_alt_names`), or for the SNI when there are
/// none (`auto_san_validation`). `skip`: no verification (`insecureSkipVerify`).
#[derive(Debug)]
struct OriginVerifier {
    roots: Arc<RootCertStore>,
    sans: Vec<ServerName<'static>>,
    skip: bool,
}

impl ServerCertCheck for OriginVerifier {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        if self.skip {
            return Ok(());
        }
        let parsed = verify_chain(end_entity, intermediates, &self.roots, now)?;
        let valid = if self.sans.is_empty() {
            verify_server_name(&parsed, server_name).is_ok()
        } else {
            self.sans
                .iter()
                .any(|n| verify_server_name(&parsed, n).is_ok())
        };
        if valid {
            Ok(())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sni_host;

    #[test]
    fn the_sni_of_an_authority_is_its_host_without_the_port() {
        assert_eq!(sni_host("api.example.com"), "api.example.com");
        assert_eq!(sni_host("api.example.com:8443"), "api.example.com");
        assert_eq!(sni_host("[2001:db8::1]:443"), "2001:db8::1");
        assert_eq!(sni_host("[2001:db8::1]"), "2001:db8::1");
        assert_eq!(sni_host("10.0.0.1:80"), "10.0.0.1");
        // Not a port: left as it is (not a valid server name, so the
        // configured SNI is sent instead).
        assert_eq!(sni_host("odd:name"), "odd:name");
        assert_eq!(sni_host(""), "");
    }
}
