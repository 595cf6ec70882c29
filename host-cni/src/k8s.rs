//! The pod annotations the plugin writes so the controller knows each pod's
//! VF (`dpumesh.io/vf-index`, `dpumesh.io/mac`, `dpumesh.io/representor`,
//! plus `dpumesh.io/sandbox`, the sandbox that holds the VF).
//! Contract: docs/host-cni.md, "Pod annotations".
//!
//! Only used when the config has a `kubernetes` section and the runtime
//! passed `K8S_POD_NAMESPACE` / `K8S_POD_NAME` (kubelet's runtimes do).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{json, Value};

use crate::spec::{code, CniError, CniResult};

pub const VF_INDEX: &str = "dpumesh.io/vf-index";
pub const MAC: &str = "dpumesh.io/mac";
pub const REPRESENTOR: &str = "dpumesh.io/representor";
pub const SANDBOX: &str = "dpumesh.io/sandbox";

/// What ADD writes on the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfAnnotations {
    pub vf_index: u32,
    pub mac: String,
    pub representor: String,
    pub sandbox: String,
}

impl VfAnnotations {
    fn to_map(&self) -> BTreeMap<&'static str, Value> {
        BTreeMap::from([
            (VF_INDEX, Value::String(self.vf_index.to_string())),
            (MAC, Value::String(self.mac.clone())),
            (REPRESENTOR, Value::String(self.representor.clone())),
            (SANDBOX, Value::String(self.sandbox.clone())),
        ])
    }
}

/// A client of the Kubernetes API server, from the config's kubeconfig.
pub struct PodAnnotator {
    rt: tokio::runtime::Runtime,
    client: kube::Client,
    server: String,
    timeout: Duration,
}

impl PodAnnotator {
    /// Reads the kubeconfig and builds the client (no request yet): a bad
    /// file is a config error (7) before anything is allocated.
    pub fn new(kubeconfig: &Path, timeout: Duration) -> CniResult<PodAnnotator> {
        let bad = |what: String| {
            CniError::config(
                format!(
                    "invalid network config: field \"kubernetes.kubeconfig\" = {:?}",
                    kubeconfig.display().to_string()
                ),
                what,
            )
        };
        let kc = Kubeconfig::read_from(kubeconfig).map_err(|e| {
            bad(format!(
                "cannot read the kubeconfig: {e} (the installer writes it; docs/host-cni.md)"
            ))
        })?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                CniError::io("cannot start the Kubernetes client runtime", e.to_string())
            })?;
        let config = rt
            .block_on(kube::Config::from_custom_kubeconfig(
                kc,
                &KubeConfigOptions::default(),
            ))
            .map_err(|e| bad(format!("unusable kubeconfig: {e}")))?;
        let server = config.cluster_url.to_string();
        let client = {
            let _g = rt.enter();
            kube::Client::try_from(config)
                .map_err(|e| bad(format!("cannot build a client from the kubeconfig: {e}")))?
        };
        Ok(PodAnnotator {
            rt,
            client,
            server,
            timeout,
        })
    }

    /// ADD: writes the VF annotations on the pod (JSON merge patch, so other
    /// annotations stay). Every failure is an error: without them the
    /// controller does not know the pod, and the pod would get no mesh config.
    pub fn annotate(&self, namespace: &str, name: &str, vf: &VfAnnotations) -> CniResult<()> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let patch = json!({"metadata": {"annotations": vf.to_map()}});
        let what = format!("annotating pod {namespace}/{name} with its VF");
        self.call(&what, async {
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| ())
        })
    }

    /// DEL: takes the VF annotations off the pod, but only while they still
    /// name `sandbox` (a newer sandbox of the same pod may have written its
    /// own). The patch carries the resourceVersion it read, so a concurrent
    /// change makes it fail (409) instead of removing newer annotations.
    /// A pod that is gone (404) is success.
    pub fn clear(&self, namespace: &str, name: &str, sandbox: &str) -> CniResult<()> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let what = format!("removing the VF annotations of pod {namespace}/{name}");
        self.call(&what, async {
            let pod = match api.get(name).await {
                Ok(p) => p,
                Err(kube::Error::Api(s)) if s.is_not_found() => return Ok(()),
                Err(e) => return Err(e),
            };
            let ann = pod.metadata.annotations.unwrap_or_default();
            if ann.get(SANDBOX).map(String::as_str) != Some(sandbox) {
                return Ok(());
            }
            let nulls: BTreeMap<&str, Value> = [VF_INDEX, MAC, REPRESENTOR, SANDBOX]
                .into_iter()
                .map(|k| (k, Value::Null))
                .collect();
            let patch = json!({"metadata": {
                "resourceVersion": pod.metadata.resource_version,
                "annotations": nulls,
            }});
            match api
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    fn call(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<(), kube::Error>>,
    ) -> CniResult<()> {
        let r = self
            .rt
            .block_on(async { tokio::time::timeout(self.timeout, fut).await });
        match r {
            Ok(Ok(())) => Ok(()),
            Err(_) => Err(CniError::try_later(
                format!("{what}: the Kubernetes API server did not answer"),
                format!(
                    "no answer from {} within {} ms (config \"kubernetes.timeoutMs\"); retry later",
                    self.server,
                    self.timeout.as_millis()
                ),
            )),
            Ok(Err(e)) => Err(self.classify(what, e)),
        }
    }

    fn classify(&self, what: &str, e: kube::Error) -> CniError {
        match e {
            kube::Error::Api(s) => {
                let status = format!("HTTP {} {}: {}", s.code, s.reason, s.message);
                match s.code {
                    // Transient: overloaded, throttled, a conflicting write.
                    409 | 429 | 500..=599 => CniError::try_later(
                        format!("{what}: the Kubernetes API server answered {}", s.code),
                        format!("{status}; retry later"),
                    ),
                    401 | 403 => CniError::new(
                        code::KUBERNETES,
                        format!("{what}: the Kubernetes API server refused ({})", s.code),
                        format!(
                            "{status}; the kubeconfig's user needs get and patch on pods \
                             (the chart's ClusterRole dpumesh-node grants them)"
                        ),
                    ),
                    _ => CniError::new(
                        code::KUBERNETES,
                        format!("{what}: the Kubernetes API server refused ({})", s.code),
                        status,
                    ),
                }
            }
            other => CniError::try_later(
                format!("{what}: the Kubernetes API server is unreachable"),
                format!("{} at {}: {other}", "request failed", self.server),
            ),
        }
    }
}
