#!/usr/bin/env python3
"""Lints and renders charts/dpumesh with the Helm v4 engine (PyPI helm-python-sdk) in
both modes (dpu, host) and checks the objects a working install needs. Also checks that
bad values are refused with a clear message. Exit 0 when everything holds; otherwise
every failed check is printed and the exit code is 1.

Usage: .venv/bin/python scripts/helm_check.py [CHART_DIR]
"""
import json
import os
import sys

import helm_python as helm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHART = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "charts", "dpumesh")
BASE = {"cni": {"podCIDR": "10.244.1.0/24", "pf": "ens1f0np0"}}
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
    return cond


def merged(extra):
    out = json.loads(json.dumps(BASE))
    for k, v in extra.items():
        if isinstance(v, dict):
            out.setdefault(k, {}).update(v)
        else:
            out[k] = v
    return out


def render(values):
    chart = helm.Chart.load(CHART)
    chart.validate_schema(values)
    manifests = chart.render(values, name="mesh", namespace="dpumesh-system", is_install=True)
    objects = []
    for path, text in manifests.items():
        if path.endswith("NOTES.txt"):
            continue
        for doc in text.split("\n---"):
            if not doc.strip() or all(l.strip().startswith("#") or not l.strip() for l in doc.splitlines()):
                continue
            obj = helm.values_from_yaml(doc)
            if obj:
                obj["__template"] = path
                objects.append(obj)
    return objects


def find(objects, kind, name):
    for o in objects:
        if o.get("kind") == kind and o.get("metadata", {}).get("name") == name:
            return o
    return None


def containers(ds, init=False):
    spec = ds["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec.get("initContainers" if init else "containers", [])}


def lint(values, mode):
    report = helm.lint(CHART, values, strict=True, namespace="dpumesh-system", kube_version="v1.30.0")
    errors = report.get("errors") or []
    bad = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    check(not errors and not bad, f"lint {mode}: errors {errors} messages {bad}")


def common(objects, mode):
    cr = find(objects, "ClusterRole", "mesh-dpumesh-controller")
    if check(cr is not None, f"{mode}: ClusterRole mesh-dpumesh-controller"):
        granted = {(g, r) for rule in cr["rules"] for g in rule["apiGroups"] for r in rule["resources"]
                   if "watch" in rule["verbs"]}
        for need in [("", "pods"), ("", "nodes"), ("", "services"), ("", "namespaces"),
                     ("discovery.k8s.io", "endpointslices"), ("coordination.k8s.io", "leases")]:
            check(need in granted, f"{mode}: ClusterRole grants watch on {need}")
    crb = find(objects, "ClusterRoleBinding", "mesh-dpumesh-controller")
    check(crb is not None and crb["subjects"][0]["name"] == "mesh-dpumesh-controller"
          and crb["roleRef"]["name"] == "mesh-dpumesh-controller", f"{mode}: ClusterRoleBinding")
    check(find(objects, "ServiceAccount", "mesh-dpumesh-controller") is not None, f"{mode}: ServiceAccount")
    dep = find(objects, "Deployment", "mesh-dpumesh-controller")
    if check(dep is not None, f"{mode}: controller Deployment"):
        c = containers(dep)["controller"]
        check(c["command"] == ["dpumesh-controller"] and "controller" in c["args"], f"{mode}: controller command")
        check(dep["spec"]["template"]["spec"]["serviceAccountName"] == "mesh-dpumesh-controller",
              f"{mode}: controller uses its ServiceAccount")
        for arg in ["--grpc-addr=0.0.0.0:15085", "--lease-namespace=dpumesh-system",
                    "--lease-name=mesh-dpumesh-controller", "--service-cidr=10.96.0.0/16"]:
            check(arg in c["args"], f"{mode}: controller arg {arg}")
        check({e["name"] for e in c["env"]} >= {"POD_NAME"}, f"{mode}: controller identity from POD_NAME")
    svc = find(objects, "Service", "mesh-dpumesh-controller")
    check(svc is not None and svc["spec"]["ports"][0]["port"] == 15085
          and svc["spec"]["selector"].get("app.kubernetes.io/component") == "controller",
          f"{mode}: controller Service for the inventory stream")
    ds = find(objects, "DaemonSet", "mesh-dpumesh-node")
    if check(ds is not None, f"{mode}: node DaemonSet"):
        spec = ds["spec"]["template"]["spec"]
        check(spec.get("hostNetwork") is True, f"{mode}: node DaemonSet uses the host network")
        init = containers(ds, init=True)
        if check("install-cni" in init, f"{mode}: CNI installer init container"):
            c = init["install-cni"]
            env = {e["name"]: e.get("value") for e in c["env"]}
            check(c["command"] == ["dpumesh-cni-install"], f"{mode}: installer command")
            check(env.get("DPUMESH_POD_CIDR") == "10.244.1.0/24", f"{mode}: installer pod CIDR")
            mounts = {m["mountPath"] for m in c["volumeMounts"]}
            check({env.get("CNI_BIN_DIR"), env.get("CNI_CONF_DIR")} <= mounts, f"{mode}: CNI dirs mounted")
            host_paths = {v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
            check({"/opt/cni/bin", "/etc/cni/net.d"} <= host_paths, f"{mode}: CNI host paths")
            # Pod annotations: the installer writes the plugin's kubeconfig from the
            # node ServiceAccount's token Secret, which may get and patch pods.
            token_dir = env.get("DPUMESH_CNI_KUBECONFIG_TOKEN_DIR")
            check(token_dir in mounts and env.get("CNI_HOST_CONF_DIR") == "/etc/cni/net.d",
                  f"{mode}: installer writes the plugin's kubeconfig from a mounted token")
            secrets = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
            tok = find(objects, "Secret", "mesh-dpumesh-cni-token")
            check(tok is not None and tok["type"] == "kubernetes.io/service-account-token"
                  and tok["metadata"]["annotations"]["kubernetes.io/service-account.name"] == spec["serviceAccountName"]
                  and "mesh-dpumesh-cni-token" in secrets.values(),
                  f"{mode}: token Secret of the node ServiceAccount, mounted")
            role = find(objects, "ClusterRole", "mesh-dpumesh-node")
            binding = find(objects, "ClusterRoleBinding", "mesh-dpumesh-node")
            check(role is not None and any("pods" in r["resources"] and {"get", "patch"} <= set(r["verbs"])
                                           for r in role["rules"])
                  and binding is not None
                  and binding["subjects"][0]["name"] == spec["serviceAccountName"],
                  f"{mode}: node ServiceAccount may get and patch pods")
        check("adapter" in containers(ds), f"{mode}: adapter container")
    cm = find(objects, "ConfigMap", "mesh-dpumesh-dashboard")
    if check(cm is not None, f"{mode}: dashboard ConfigMap"):
        check(cm["metadata"]["labels"].get("grafana_dashboard") == "1", f"{mode}: grafana sidecar label")
        with open(os.path.join(CHART, "dashboards", "dpumesh-dpu.json")) as f:
            want = json.load(f)
        got = json.loads(cm["data"]["dpumesh-dpu.json"])
        check(got == want, f"{mode}: ConfigMap holds the dashboard JSON unchanged")
    return ds


def dpu_mode():
    values = merged({"mode": "dpu"})
    lint(values, "dpu")
    objects = render(values)
    ds = common(objects, "dpu")
    if ds:
        adapter = containers(ds)["adapter"]
        check("--proxy-addr=192.168.100.2:15080" in adapter["args"], "dpu: adapter pushes to the DPU's mgmt address")
        check("--dataplane-addr=192.168.100.2:15081" in adapter["args"], "dpu: adapter sets the node network on the DPU's dataplane")
        check("--inventory-addr=http://mesh-dpumesh-controller.dpumesh-system.svc:15085" in adapter["args"],
              "dpu: adapter streams its inventory from the controller Service")
        ctl = containers(find(objects, "Deployment", "mesh-dpumesh-controller"))["controller"]
        check("--dpu-mgmt-addr=192.168.100.2:15080" in ctl["args"], "dpu: controller's node DPU address")
        check(set(containers(ds)) == {"adapter"}, "dpu: no dataplane/proxy on the host")
        env = {e["name"]: e.get("value") for e in containers(ds, init=True)["install-cni"]["env"]}
        check(env.get("DATAPLANE_MGMT_ADDR") == "192.168.100.2:15081", "dpu: CNI talks to the DPU dataplane")
    dpu = find(objects, "DaemonSet", "mesh-dpumesh-dpu")
    if check(dpu is not None, "dpu: DPU-side DaemonSet"):
        cs = containers(dpu)
        check(set(cs) == {"dataplane", "dpu-proxy"}, f"dpu: DPU containers {sorted(cs)}")
        check(dpu["spec"]["template"]["spec"]["nodeSelector"] == {"dpumesh.io/dpu": "true"}, "dpu: on DPU nodes")
        check(dpu["spec"]["template"]["spec"].get("hostNetwork") is True, "dpu: host network on the DPU")
        check(cs["dataplane"]["securityContext"].get("privileged") is True, "dpu: dataplane privileged (eBPF)")
        check("--mgmt-addr=192.168.100.2:15080" in cs["dpu-proxy"]["args"], "dpu: proxy control on mgmt addr")
        identity(objects, dpu, cs["dpu-proxy"], "dpu")
        check(dpu["spec"]["template"]["spec"].get("serviceAccountName") == "mesh-dpumesh-dpu"
              and find(objects, "ServiceAccount", "mesh-dpumesh-dpu") is not None,
              "dpu: DPU pods run as their own ServiceAccount (istiod's trusted node account)")
    return len(objects)


def identity(objects, ds, proxy, mode):
    """dpu-proxy gets certificates from istiod with a projected token and istiod's root."""
    args = proxy["args"]
    for arg in ["--trust-domain=cluster.local", "--ca-addr=https://istiod.istio-system.svc:15012",
                "--ca-token-file=/var/run/secrets/tokens/istio-token",
                "--ca-trust-root-pem=/var/run/secrets/istio/root-cert.pem"]:
        check(arg in args, f"{mode}: dpu-proxy arg {arg}")
    vols = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    token = vols.get("istio-token", {}).get("projected", {}).get("sources", [{}])[0].get("serviceAccountToken", {})
    check(token.get("audience") == "istio-ca" and token.get("path") == "istio-token",
          f"{mode}: projected token for istiod's audience")
    check(vols.get("istio-ca-root", {}).get("configMap", {}).get("name") == "istio-ca-root-cert",
          f"{mode}: istiod's root certificate ConfigMap")
    mounts = {m["name"]: m["mountPath"] for m in proxy.get("volumeMounts", [])}
    check(mounts.get("istio-token") == "/var/run/secrets/tokens"
          and mounts.get("istio-ca-root") == "/var/run/secrets/istio", f"{mode}: dpu-proxy mounts both")
    builtin = render(merged({"mode": mode, "identity": {"ca": "builtin"}}))
    name = "mesh-dpumesh-dpu" if mode == "dpu" else "mesh-dpumesh-node"
    p = containers(find(builtin, "DaemonSet", name))["dpu-proxy"]
    check("--ca-root-file=/run/dpumesh/ca/root.pem" in p["args"]
          and not any(a.startswith("--ca-addr") for a in p["args"]), f"{mode}: identity.ca=builtin")


def host_mode():
    values = merged({"mode": "host", "dataplane": {"uplink": "eth0"}})
    lint(values, "host")
    objects = render(values)
    check(find(objects, "DaemonSet", "mesh-dpumesh-dpu") is None, "host: no DPU-side DaemonSet")
    ds = common(objects, "host")
    if ds:
        cs = containers(ds)
        check(set(cs) == {"adapter", "dataplane", "dpu-proxy"}, f"host: node containers {sorted(cs)}")
        check("--proxy-addr=127.0.0.1:15080" in cs["adapter"]["args"], "host: adapter pushes to 127.0.0.1")
        check("--dataplane-addr=127.0.0.1:15081" in cs["adapter"]["args"], "host: adapter sets the node network on 127.0.0.1")
        ctl = containers(find(objects, "Deployment", "mesh-dpumesh-controller"))["controller"]
        check("--dpu-mgmt-addr=127.0.0.1:15080" in ctl["args"], "host: controller's node proxy address")
        check("--uplink=eth0" in cs["dataplane"]["args"], "host: dataplane uplink from values")
        env = {e["name"]: e.get("value") for e in containers(ds, init=True)["install-cni"]["env"]}
        check(env.get("DATAPLANE_MGMT_ADDR") == "127.0.0.1:15081", "host: CNI talks to the local dataplane")
        identity(objects, ds, cs["dpu-proxy"], "host")
    return len(objects)


def refused(values, words, what):
    try:
        render(values)
    except helm.HelmError as e:
        msg = str(e)
        check(all(w in msg for w in words), f"{what}: error {msg!r} should mention {words}")
        return
    failures.append(f"{what}: was accepted")


def bad_values():
    refused(merged({"mode": "sidecar"}), ["mode"], "mode=sidecar")
    refused({"cni": {"pf": "p0"}}, ["cni.podCIDR is required"], "no podCIDR")
    refused(merged({"cni": {"podCIDR": "10.244.1.0/24", "pf": ""}}), ["cni.pf is required"], "sriov without pf")
    refused(merged({"cni": {"podCIDR": "not-a-cidr"}}), ["podCIDR"], "bad podCIDR")
    refused(merged({"dataplane": {"backend": "dpdk-magic"}}), ["backend"], "bad backend")
    refused(merged({"cluster": {"serviceCIDRs": ["10.96.0.0"]}}), ["serviceCIDRs"], "bad service CIDR")
    refused(merged({"identity": {"ca": "vault"}}), ["identity"], "bad identity.ca")


def commands():
    """Every container's command, args and env names, in both modes (for the caller to
    check against the real binaries' --help)."""
    out = []
    for mode, extra in [("dpu", {"mode": "dpu"}), ("host", {"mode": "host"})]:
        for o in render(merged(extra)):
            if o.get("kind") not in ("Deployment", "DaemonSet"):
                continue
            spec = o["spec"]["template"]["spec"]
            for c in spec.get("initContainers", []) + spec.get("containers", []):
                out.append({"mode": mode, "object": o["metadata"]["name"], "container": c["name"],
                            "command": c.get("command", []), "args": c.get("args", []),
                            "env": [e["name"] for e in c.get("env", [])]})
    return out


def main():
    n_dpu = dpu_mode()
    n_host = host_mode()
    bad_values()
    pm = render(merged({"metrics": {"podMonitor": {"enabled": True}}}))
    mon = find(pm, "PodMonitor", "mesh-dpumesh")
    check(mon is not None and {e["port"] for e in mon["spec"]["podMetricsEndpoints"]} == {"proxy-admin", "dp-admin"},
          "PodMonitor scrapes both admin ports")
    print(json.dumps({"helm_sdk": helm.helm_sdk_version(), "objects_dpu": n_dpu, "objects_host": n_host,
                      "commands": commands(), "failures": failures}, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
