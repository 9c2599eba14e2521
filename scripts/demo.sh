#!/usr/bin/env bash
# The main job: loupe collecting the metrics of three "pods" that sit behind a strict-mTLS Envoy
# sidecar. Creates the pods (network namespace + veth, metrics app on 127.0.0.1, real Envoy requiring
# client certificates on the pod's address), shows that scraping from outside the pod fails without
# the mesh's certificate, starts loupe on the pods, prints what its merged /metrics has of each pod,
# and leaves loupe serving until Ctrl-C. Everything is removed on exit.
#
#   sudo scripts/demo.sh      (env: LOUPE_DEMO_LISTEN=127.0.0.1:9897, LOUPE_DEMO_PODS=3,
#                              LOUPE_BIN=another loupe binary than target/debug/loupe)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
LISTEN=${LOUPE_DEMO_LISTEN:-127.0.0.1:9897}
PODS=${LOUPE_DEMO_PODS:-3}

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
  echo "demo: must run as root (network namespaces, veths, eBPF)" >&2
  exit 1
fi

scripts/setup.sh

say "building loupe, the test app and the testbed (cargo build)"
cargo build

WORK=$(mktemp -d /tmp/loupe-demo.XXXXXX)
TESTBED_PID=""
LOUPE_PID=""
CLIENT_PID=""
cleanup() {
  trap - EXIT INT TERM
  say "stopping loupe and removing the pods"
  if [ -n "$CLIENT_PID" ]; then
    kill -TERM "$CLIENT_PID" 2>/dev/null || true
    wait "$CLIENT_PID" 2>/dev/null || true
  fi
  if [ -n "$LOUPE_PID" ] && kill -0 "$LOUPE_PID" 2>/dev/null; then
    kill -TERM "$LOUPE_PID" 2>/dev/null || true
    wait "$LOUPE_PID" 2>/dev/null || true
  fi
  if [ -n "$TESTBED_PID" ] && kill -0 "$TESTBED_PID" 2>/dev/null; then
    kill -TERM "$TESTBED_PID" 2>/dev/null || true
    wait "$TESTBED_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits up to $1 seconds for the command after it to succeed.
wait_until() {
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then return 1; fi
    sleep 0.2
  done
}

say "creating $PODS pods: metrics app on the pod's 127.0.0.1, Envoy with strict mTLS on the pod's address"
"$ROOT/target/debug/loupe-testbed" up --pods "$PODS" --pods-file "$WORK/pods.yaml" >"$WORK/testbed.out" 2>&1 &
TESTBED_PID=$!
if ! wait_until 60 grep -q '^READY$' "$WORK/testbed.out"; then
  cat "$WORK/testbed.out" >&2
  echo "demo: the pods did not come up" >&2
  exit 1
fi
grep -v '^READY$' "$WORK/testbed.out"

say "the pods file loupe reads ($WORK/pods.yaml)"
cat "$WORK/pods.yaml"

say "starting loupe on $LISTEN"
RUST_LOG=${RUST_LOG:-info} "${LOUPE_BIN:-$ROOT/target/debug/loupe}" run --pods-file "$WORK/pods.yaml" --listen "$LISTEN" \
  >"$WORK/loupe.log" 2>&1 &
LOUPE_PID=$!
if ! wait_until 30 curl -sf "http://$LISTEN/readyz"; then
  cat "$WORK/loupe.log" >&2
  echo "demo: loupe did not become ready" >&2
  exit 1
fi
have_all_pods() {
  local body
  body=$(curl -sf --max-time 20 "http://$LISTEN/metrics") || return 1
  for i in $(seq 0 $((PODS - 1))); do
    grep -q "^app_[a-z_]*{.*pod=\"cart-$i\"" <<<"$body" || return 1
  done
}
if ! wait_until 60 have_all_pods; then
  echo "demo: loupe's /metrics does not have every pod yet; its log:" >&2
  tail -n 30 "$WORK/loupe.log" >&2
fi

say "a client inside pod cart-0 scrapes its app every 2 s (as a sidecar or a local agent would): loupe observes those replies with eBPF instead of asking the app again"
CART0_NETNS=$(awk '/name: cart-0$/ { found = 1 } found && /netns:/ { print $2; exit }' "$WORK/pods.yaml")
nsenter --net="$CART0_NETNS" sh -c \
  'while :; do curl -s -o /dev/null http://127.0.0.1:8080/metrics; sleep 2; done' &
CLIENT_PID=$!
observed() {
  curl -sf --max-time 20 "http://$LISTEN/metrics" | grep -q '^loupe_target_info{.*pod="cart-0".*source="observed"'
}
if wait_until 30 observed; then
  echo "loupe_target_info for cart-0 now says source=\"observed\"; the other pods stay \"fetched\""
else
  echo "demo: no observed reply for cart-0 within 30 s (is the probe loaded? see $WORK/loupe.log)" >&2
fi

say "loupe's merged /metrics (http://$LISTEN/metrics), a few lines per pod"
curl -sf --max-time 20 "http://$LISTEN/metrics" >"$WORK/metrics.txt" || true
for i in $(seq 0 $((PODS - 1))); do
  echo "-- pod shop/cart-$i: $(grep -c "^app_[a-z_]*{.*pod=\"cart-$i\"" "$WORK/metrics.txt" || true) app samples"
  grep "^app_[a-z_]*{.*pod=\"cart-$i\"" "$WORK/metrics.txt" | head -n 3 || true
  grep "^loupe_target_\(up\|info\){.*pod=\"cart-$i\"" "$WORK/metrics.txt" || true
done
echo "-- agent counters"
grep '^loupe_capture_active\|^loupe_responses_\(observed\|fetched\)_total' "$WORK/metrics.txt" || true
if promtool check metrics <"$WORK/metrics.txt" >/dev/null 2>&1; then
  echo "-- promtool check metrics: OK"
else
  echo "-- promtool check metrics: FAILED"
fi

say "loupe status: every target, where its latest answer came from, and why it is down if it is"
"${LOUPE_BIN:-$ROOT/target/debug/loupe}" status --url "http://$LISTEN" || true

say "loupe is serving on http://$LISTEN/metrics (log: $WORK/loupe.log). Ctrl-C to stop and clean up."
wait "$LOUPE_PID" || true
