#!/usr/bin/env bash
# Runs all of loupe's tests: unit and property tests, the OpenMetrics conformance suite, the eBPF
# probe in real network namespaces, the end-to-end tests (real Envoy with strict mTLS, real
# Prometheus), the Kubernetes discovery tests and the deploy/ manifests, the agent's image under
# podman, the probe on older kernels under QEMU (scripts/kernel-matrix.sh), then a short fuzz run.
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

step "the agent image (static binary, FROM scratch, nothing pulled), for the image tests"
./scripts/image.sh
LOUPE_IMAGE="localhost/loupe:$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)"
export LOUPE_IMAGE

step "tests"
results=$(mktemp)
trap 'rm -f "$results"' EXIT
set +e
cargo test --no-fail-fast 2>&1 | tee "$results"
test_status=${PIPESTATUS[0]}
set -e
passed=$(awk '/^test result:/ { sum += $4 } END { print sum + 0 }' "$results")
failed=$(awk '/^test result:/ { sum += $6 } END { print sum + 0 }' "$results")
if [ "$test_status" -ne 0 ]; then
  step "tests failed"
  echo "tests: $passed passed, $failed failed"
  exit "$test_status"
fi

step "the kernel matrix: the probe under QEMU on Debian's 5.10, 6.1, 6.12 and unstable kernels"
LOUPE_BIN="$PWD/target/static/$(uname -m)-unknown-linux-gnu/release/loupe" ./scripts/kernel-matrix.sh

if [ -x scripts/fuzz.sh ]; then
  step "fuzzing the codec briefly"
  ./scripts/fuzz.sh "${LOUPE_FUZZ_SECONDS:-30}"
fi

step "all tests passed"
echo "tests: $passed passed, $failed failed"
