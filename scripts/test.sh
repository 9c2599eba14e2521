#!/usr/bin/env bash
# Runs all of loupe's tests: unit and property tests, the OpenMetrics conformance suite, the eBPF
# probe in real network namespaces, the end-to-end tests (real Envoy with strict mTLS, real
# Prometheus), the Kubernetes discovery tests and the deploy/ manifests, then a short fuzz run.
# Needs root (eBPF, network namespaces, cgroups). Installs whatever is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh

step() { printf '\n==> [%ds] %s\n' "$SECONDS" "$*" >&2; }

step "format and lints"
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings

step "build (the eBPF object and the loupe binary the end-to-end tests start)"
cargo build --all-targets --quiet

step "tests"
cargo test --no-fail-fast

if [ -x scripts/fuzz.sh ]; then
  step "fuzzing the codec briefly"
  ./scripts/fuzz.sh "${LOUPE_FUZZ_SECONDS:-30}"
fi

step "all tests passed"
