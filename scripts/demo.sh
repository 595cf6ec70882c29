#!/usr/bin/env bash
# README command one: install what is missing, build, and run the demo on the local
# simulator (a cluster of nodes with simulated DPUs). Extra arguments go to `dpumesh demo`
# (e.g. --keep to leave the cluster running).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
./scripts/setup.sh
echo "== building dpumesh"
cargo build --workspace --bins --locked
export PATH="$PWD/target/debug:$PATH"
exec dpumesh demo "$@"
