#!/usr/bin/env bash
# Fuzzes the exposition codec: runs each cargo-fuzz target of agent/fuzz (parse, merge, proto) for N
# seconds (default 30), seeded with the OpenMetrics conformance cases. Installs cargo-fuzz when
# it is missing. Exits non-zero when a target finds a crash (saved under agent/fuzz/artifacts/).
#
#   scripts/fuzz.sh            # 30 s per target (CI: about a minute in all)
#   scripts/fuzz.sh 3600       # an hour per target
#   JOBS=2 scripts/fuzz.sh 600 # more libFuzzer workers
#
# The stable toolchain is used with RUSTC_BOOTSTRAP=1 (cargo-fuzz needs -Z flags; rustup here
# cannot fetch nightly).
set -euo pipefail

secs="${1:-30}"
jobs="${JOBS:-1}"
root="$(cd "$(dirname "$0")/.." && pwd)"
fuzz="$root/agent/fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1

cd "$fuzz"
# Seeds: the bodies kept under seeds/<target>/ (protobuf: a realistic one, one with every
# field; merge: inputs that once failed), and every
# OpenMetrics conformance case's exposition (read from ../shared beside the project,
# never copied into the repository), copied once into the local, ignored corpus.
conformance="${LOUPE_CONFORMANCE_DIR:-$root/../shared/conformance/openmetrics}"
for t in parse merge proto; do
    mkdir -p "corpus/$t"
    # Inputs kept in the repository (agent/fuzz/seeds/<target>/).
    if [ -d "seeds/$t" ]; then
        cp -n seeds/"$t"/* "corpus/$t/"
    fi
    if [ -d "$conformance" ]; then
        for d in "$conformance"/*/; do
            seed="corpus/$t/conformance_$(basename "$d")"
            [ -e "$seed" ] || cp "$d/metrics" "$seed"
        done
    fi
done

extra=()
if [ "$jobs" -gt 1 ]; then
    extra=(-jobs="$jobs" -workers="$jobs")
fi

# AddressSanitizer only while the codec (agent/src/decode) has unsafe code: without it, what
# fuzzing can find there is a panic, an overflow or a failed assertion, which the debug
# assertions catch, and instrumenting every dependency for ASan only makes the build slower.
sanitizer=none
if grep -rqw unsafe "$root/agent/src/decode"; then
    sanitizer=address
fi

status=0
for t in parse merge proto; do
    echo "fuzz.sh: target $t for ${secs}s" >&2
    if ! cargo fuzz run --release --debug-assertions --sanitizer "$sanitizer" "$t" "corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 "${extra[@]}" \
        -print_final_stats=1; then
        echo "fuzz.sh: target $t FAILED; see agent/fuzz/artifacts/$t/" >&2
        status=1
    fi
done
exit "$status"
