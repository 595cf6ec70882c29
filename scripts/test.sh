#!/usr/bin/env bash
# The whole test suite: lint, build once, run every test (unit, integration,
# netns/eBPF tests as root). Used by the README and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR=never

./scripts/setup.sh

leftovers_before=$(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^dm-' | sort || true)

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== build"
cargo build --workspace --all-targets --locked

echo "== tests"
status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast || status=$?
else
  cargo test --workspace --locked --no-fail-fast || status=$?
fi

# Tests must leave nothing behind: compare simulator namespaces before and after.
leftovers_after=$(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^dm-' | sort || true)
leaked=$(comm -13 <(echo "$leftovers_before") <(echo "$leftovers_after") | grep . || true)
if [ -n "$leaked" ]; then
  echo "tests leaked network namespaces:" $leaked >&2
  for ns in $leaked; do ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true; ip netns del "$ns" 2>/dev/null || true; done
  status=1
fi
exit $status
