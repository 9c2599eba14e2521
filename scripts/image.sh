#!/usr/bin/env bash
# Builds loupe's image, localhost/loupe:<version>, from deploy/Dockerfile with podman,
# pulling nothing: a statically linked binary is built here with cargo, then the Dockerfile's
# `from-host` stage (FROM scratch + COPY) packs it with the version and git revision as
# org.opencontainers.image.* labels. Prints the image's size.
#
#   ./scripts/image.sh                 # this machine's architecture: localhost/loupe:VERSION
#   ./scripts/image.sh --arch arm64    # aarch64 (Debian's cross gcc): localhost/loupe:VERSION-arm64
#   ./scripts/image.sh --arch all      # both, plus the manifest list localhost/loupe:VERSION-multiarch
#
# The binary: target/static/<triple>/release/loupe (a target dir of its own, so the normal build's
# cache is untouched). Prints `image: NAME size: BYTES` lines last.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'image: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

arch=native
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch=${2:?--arch needs amd64, arm64 or all}; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
[ -n "$version" ] || die "no [workspace.package] version in Cargo.toml"
# The same revision agent/build.rs embeds for `loupe --version`.
revision=${LOUPE_GIT_REVISION:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}
export LOUPE_GIT_REVISION=$revision

# --no-cache: buildah 1.28 (under podman 4.3) reuses a cached LABEL step even when the build-arg
# in it changed, leaving a stale revision label; with no RUN step the build takes a second anyway.
command -v podman >/dev/null || die "podman is not installed (scripts/setup.sh installs it)"
builder=(podman build --pull=never --no-cache)
images_cmd=podman

native=$(uname -m)
case "$arch" in
  native) arches=("$native") ;;
  amd64|x86_64) arches=(x86_64) ;;
  arm64|aarch64) arches=(aarch64) ;;
  all) arches=(x86_64 aarch64) ;;
  *) die "--arch: amd64, arm64 or all, not $arch" ;;
esac

# Builds the static binary for one architecture (uname -m spelling); prints its path.
build_binary() {
  local a=$1 triple="$1-unknown-linux-gnu" upper
  upper=$(tr 'a-z-' 'A-Z_' <<<"$triple")
  if [ "$a" != "$native" ]; then
    if ! command -v "$a-linux-gnu-gcc" >/dev/null; then
      log "installing Debian's cross toolchain for $a"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "gcc-$a-linux-gnu" "libc6-dev-${a/aarch64/arm64}-cross" >/dev/null \
        || die "cannot install gcc-$a-linux-gnu (needs root and Debian's packages)"
    fi
    if ! rustup target list --installed 2>/dev/null | grep -qx "$triple"; then
      log "adding the Rust standard library for $triple"
      rustup target add "$triple" >&2 || die "rustup target add $triple failed"
    fi
    # The linker, and the C compiler for ring's assembly and C parts.
    export "CARGO_TARGET_${upper}_LINKER=$a-linux-gnu-gcc" "CC_${triple//-/_}=$a-linux-gnu-gcc"
  fi
  log "building a static loupe for $triple (revision $revision)"
  # --target: RUSTFLAGS then apply to loupe only, not to build scripts (agent/build.rs builds
  # the eBPF object, the same for every architecture).
  RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --locked --quiet \
    --target "$triple" --target-dir target/static -p loupe-agent --bin loupe >&2
  echo "target/static/$triple/release/loupe"
}

# Packs one binary; prints the image name.
build_image() {
  local a=$1 bin=$2 name platform strip
  # Not local: the EXIT trap below runs after this function returned.
  case "$a" in x86_64) platform=linux/amd64 ;; aarch64) platform=linux/arm64 ;; esac
  name="localhost/loupe:$version"
  [ "$a" = "$native" ] && [ "$arch" != all ] || name="localhost/loupe:$version-${platform#linux/}"
  if readelf -l "$bin" | grep -q 'program interpreter'; then
    die "$bin is dynamically linked; it would not run FROM scratch"
  fi
  strip=strip
  [ "$a" = "$native" ] || strip="$a-linux-gnu-strip"
  context=$(mktemp -d)
  # build_image runs in a command substitution: this is that subshell's exit.
  trap 'rm -rf "$context"' EXIT
  "$strip" -o "$context/loupe" "$bin"
  log "packing $bin ($(stat -c %s "$context/loupe") bytes stripped) into $name"
  old=$("$images_cmd" image inspect --format '{{.Id}}' "$name" 2>/dev/null || true)
  "${builder[@]}" --platform "$platform" --target from-host \
    --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
    -f deploy/Dockerfile -t "$name" "$context" >&2
  # The image it replaces, and the intermediate images of this and earlier builds.
  [ -z "$old" ] || "$images_cmd" rmi "$old" >/dev/null 2>&1 || true
  "$images_cmd" image prune -f --filter label=org.opencontainers.image.title=loupe >/dev/null 2>&1 || true
  # With --arch all the native image is also the plain localhost/loupe:VERSION.
  [ "$a" != "$native" ] || [ "$arch" != all ] || "$images_cmd" tag "$name" "localhost/loupe:$version" >&2
  echo "$name"
}

start=$SECONDS
images=()
for a in "${arches[@]}"; do
  bin=$(build_binary "$a")
  images+=("$(build_image "$a" "$bin")")
done
if [ "$arch" = all ]; then
  list="localhost/loupe:$version-multiarch"
  podman manifest exists "$list" 2>/dev/null && podman manifest rm "$list" >/dev/null
  podman manifest create "$list" >/dev/null
  for image in "${images[@]}"; do
    podman manifest add "$list" "containers-storage:$image" >/dev/null
  done
  log "manifest list $list: ${images[*]} (push with: podman manifest push --all $list docker://REGISTRY/loupe:$version)"
fi
log "done in $((SECONDS - start)) s"
for image in "${images[@]}"; do
  size=$(podman image inspect --format '{{.Size}}' "$image")
  echo "image: $image size: $size bytes ($((size / 1024 / 1024)) MiB) version: $version revision: $revision"
done
