#!/usr/bin/env bash
# The kernel matrix: boots Debian's own kernels (the LTS lines production nodes run) under QEMU
# and runs the release loupe binary inside each, with "pods" (network namespaces) holding an app
# and, for one of them, an in-pod scraper. For every kernel it checks that loupe
#   - observes the scraped pod (source "observed") with a body equal to the app's,
#   - fetches the pod nobody scrapes (source "fetched"),
#   - leaves nothing attached on the pods' loopback after it stops (SIGTERM; and after kill -9 the
#     next start removes what the killed one left),
# and prints a support table (kernel, probe method, attach method, observed/fetched).
#
# Usage: scripts/kernel-matrix.sh [fetch|run] [KERNEL...]   (default: fetch, then run all)
#   KERNEL is one of 5.10 6.1 6.12 sid.
# Kernels are downloaded once into $LOUPE_KERNEL_CACHE (default /var/cache/loupe-kernels), about
# 100 MB; later runs use the cache. Debian's archive is reached through the mirror this machine's
# own apt configuration names. Needs root (apt, qemu), and builds `cargo build --release` first.
# QEMU runs with TCG (no KVM on these machines): about 15-40 s per kernel.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${LOUPE_KERNEL_CACHE:-/var/cache/loupe-kernels}
WORK=${LOUPE_MATRIX_WORK:-$(mktemp -d /tmp/loupe-matrix.XXXXXX)}
ALL_KERNELS=(5.10 6.1 6.12 sid)
# What each kernel is expected to do: observe the scraped pod. 5.10 (like 5.14 and 5.15) has no
# bpf_loop and no netns cookie helper for TC: it runs the per-namespace method with the
# one-record copy. A kernel listed here as "fetched" would be expected to run fetch-only.
expected_source() { echo observed; }
# The capture method each kernel gets: a kernel that falls back to a simpler one (the verifier
# refused the better program: stack, complexity) fails the row, so such a regression shows.
expected_method() {
  case $1 in
    5.10) echo "per-namespace (one or two records)" ;;
    6.1 | 6.12) echo "per-namespace (bpf_loop)" ;;
    *) echo shared ;;
  esac
}

log() { printf 'kernel-matrix: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- Debian archive access, without touching the machine's apt configuration -----------------

# The mirror URIs from this machine's own apt sources (deb822 or one-line format).
mirror_uri() { # $1: debian | debian-security
  local want=$1 uri
  uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null |
    grep -oE '(https?|file)://[^ ]+' | grep -E "/$want/?\$" | head -n1 || true)
  [ -n "$uri" ] || die "no $want archive URI found in this machine's apt sources"
  echo "${uri%/}"
}

# Runs apt-get/apt-cache against a private sources file and state directory for one suite set.
apt_private() { # $1: dir (holds sources.list, lists/, archives/), then the command and arguments
  local dir=$1; shift
  local tool=$1; shift
  "$tool" -o Dir::Etc::SourceList="$dir/sources.list" -o Dir::Etc::SourceParts=/dev/null \
    -o Dir::State::Lists="$dir/lists" -o Dir::Cache::Archives="$dir/archives" \
    -o Dir::Cache="$dir/cache" -o Dir::State::status=/dev/null \
    -o Debug::NoLocking=1 -o APT::Sandbox::User=root "$@"
}

suite_sources() { # $1: kernel name -> sources.list lines
  local main sec
  main=$(mirror_uri debian)
  sec=$(mirror_uri debian-security)
  case $1 in
    5.10) printf 'deb %s bullseye main\ndeb %s bullseye-security main\n' "$main" "$sec" ;;
    6.1 | 6.12) printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s bookworm-security main\n' "$main" "$main" "$sec" ;;
    sid) printf 'deb %s sid main\n' "$main" ;;
    *) die "unknown kernel '$1' (known: ${ALL_KERNELS[*]})" ;;
  esac
}

# Regex (apt-cache search --names-only) of the image package(s) of each kernel line.
image_regex() {
  case $1 in
    5.10) echo '^linux-image-5\.10\.0-[0-9]+-cloud-amd64$' ;;
    6.1) echo '^linux-image-6\.1\.0-[0-9]+-cloud-amd64$' ;;
    6.12) echo '^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64$' ;;
    sid) echo '^linux-(binary|image)-[0-9.]+(-[0-9]+)?(\+[a-z0-9]+)?-cloud-amd64$' ;;
  esac
}

# Newest package matching a regex, by Debian version order of the package names' versions.
newest_package() { # $1: apt dir, $2: regex
  local best="" best_ver="" name ver
  while read -r name _; do
    ver=$(apt_private "$1" apt-cache show "$name" 2>/dev/null | awk '/^Version:/ {print $2; exit}')
    [ -n "$ver" ] || continue
    if [ -z "$best" ] || dpkg --compare-versions "$ver" gt "$best_ver"; then
      best=$name best_ver=$ver
    fi
  done < <(apt_private "$1" apt-cache search --names-only "$2")
  echo "$best"
}

# Downloads and unpacks one kernel line into $CACHE/<kernel>/ (vmlinuz, modules/, version).
fetch_kernel() {
  local k=$1 dest="$CACHE/$1"
  if [ -s "$dest/vmlinuz" ] && [ -s "$dest/release" ]; then
    log "$k: cached ($(cat "$dest/release"))"
    return
  fi
  local dir="$CACHE/.apt-$k"
  mkdir -p "$dir/lists/partial" "$dir/archives/partial" "$dir/cache" "$dest"
  suite_sources "$k" >"$dir/sources.list"
  log "$k: reading the package index"
  apt_private "$dir" apt-get -qq update >/dev/null
  local image
  image=$(newest_package "$dir" "$(image_regex "$k")")
  [ -n "$image" ] || die "$k: no cloud-amd64 kernel package found"
  local pkgs=("$image")
  # Debian unstable splits the image: modules live in a linux-modules-* package.
  if [[ $image == linux-binary-* ]]; then pkgs+=("linux-modules-${image#linux-binary-}"); fi
  log "$k: downloading ${pkgs[*]}"
  (cd "$dir/archives" && apt_private "$dir" apt-get -qq download "${pkgs[@]}")
  local unpacked="$dir/unpacked"
  rm -rf "$unpacked" && mkdir -p "$unpacked"
  local deb
  for deb in "$dir"/archives/*.deb; do dpkg-deb -x "$deb" "$unpacked"; done
  local vmlinuz
  vmlinuz=$(find "$unpacked" -name 'vmlinuz*' -type f | head -n1)
  [ -n "$vmlinuz" ] || die "$k: no vmlinuz in ${pkgs[*]}"
  local release
  release=$(basename "$(find "$unpacked" -path '*/lib/modules/*' -maxdepth 4 -mindepth 3 -type d -name '[0-9]*' | head -n1)")
  [ -n "$release" ] || die "$k: no modules directory in ${pkgs[*]}"
  mkdir -p "$dest/modules"
  local mod f
  for mod in sch_ingress cls_bpf; do
    f=$(find "$unpacked" -name "$mod.ko*" | head -n1)
    [ -n "$f" ] || die "$k: no $mod module in ${pkgs[*]}"
    case $f in
      *.xz) xz -dc "$f" >"$dest/modules/$mod.ko" ;;
      *.zst) zstd -qdc "$f" >"$dest/modules/$mod.ko" ;;
      *) cp "$f" "$dest/modules/$mod.ko" ;;
    esac
  done
  cp "$vmlinuz" "$dest/vmlinuz"
  echo "$release" >"$dest/release"
  rm -rf "$dir"
  log "$k: cached $release"
}

# --- The guest: busybox, loupe, two pods ------------------------------------------------------

# The app's exposition for pod $1: a few families, and enough series that a reply spans several
# 4 KiB records (the probe's chunking).
app_metrics() {
  printf '# HELP matrix_app_requests_total Requests served.\n# TYPE matrix_app_requests_total counter\n'
  printf 'matrix_app_requests_total{code="200",pod_app="%s"} 1027\n' "$1"
  printf 'matrix_app_requests_total{code="500",pod_app="%s"} 3\n' "$1"
  printf '# TYPE matrix_app_temperature gauge\nmatrix_app_temperature 21.5\n'
  printf '# TYPE matrix_app_series gauge\n'
  local i
  for i in $(seq 1 300); do printf 'matrix_app_series{index="%d",pad="abcdefghijklmnop"} %d\n' "$i" "$i"; done
}

# The guest's /init: sets up, runs the pods and loupe, prints MATRIX lines on the console.
guest_init() {
  cat <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mount -t devtmpfs dev /dev
mkdir -p /sys/fs/bpf && mount -t bpf bpf /sys/fs/bpf
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
for m in /modules/*.ko; do insmod "$m" 2>/dev/null; done
ip link set lo up
say() { echo "MATRIX $*"; }
say kernel "$(uname -r)"

# A pod: a network namespace with busybox httpd serving the app's exposition through CGI on
# 127.0.0.1:8080, and (for a scraped pod) an in-pod scraper fetching it every second, beside a
# request for another path (the app's "API" on its metrics port), which loupe must skip.
start_pod() { # name scraped
  unshare -n sh -c "echo \$\$ > /tmp/$1.pid; ip link set lo up
    httpd -p 127.0.0.1:8080 -h /www/$1
    if [ $2 = 1 ]; then
      while :; do
        wget -q -O /dev/null http://127.0.0.1:8080/api/orders 2>/dev/null
        wget -q -O /tmp/$1.scraped http://127.0.0.1:8080/cgi-bin/metrics; sleep 1
      done
    else
      exec sleep 100000
    fi" &
  while [ ! -s /tmp/$1.pid ]; do sleep 0.1; done
}
start_pod scraped 1
start_pod lonely 0
cat > /tmp/pods.yaml <<PODS
pods:
  - namespace: matrix
    name: scraped
    pid: $(cat /tmp/scraped.pid)
    endpoints: [{port: 8080, path: /cgi-bin/metrics}]
  - namespace: matrix
    name: lonely
    pid: $(cat /tmp/lonely.pid)
    endpoints: [{port: 8080, path: /cgi-bin/metrics}]
PODS

say doctor-begin
/loupe doctor >/tmp/doctor.txt 2>&1
cat /tmp/doctor.txt
say doctor-end
# Where the probe cannot load, loupe only fetches: no point waiting long for an observation.
WAIT=60
grep -q 'FAIL\] eBPF' /tmp/doctor.txt && WAIT=8

# loupe's endpoints through nc (HTTP/1.0: the server closes; the header is cut off).
# stdin stays open a while: busybox nc stops reading the socket when stdin ends.
get() { (printf 'GET %s HTTP/1.0\r\nHost: loupe\r\n\r\n' "$1"; sleep 2) | nc 127.0.0.1 9897 2>/dev/null | sed '1,/^\r*$/d'; }
metrics() { get /metrics; }
start_loupe() {
  RUST_LOG=info /loupe run --pods-file /tmp/pods.yaml --listen 127.0.0.1:9897 >>/tmp/loupe.log 2>&1 &
  LOUPE=$!
}
# Waits (up to $1 s) until the scraped pod is served from an observed reply.
wait_observed() {
  i=0
  while [ $i -lt $1 ]; do
    if metrics | grep -q 'loupe_target_info{.*pod="scraped".*source="observed"'; then return 0; fi
    sleep 1; i=$((i + 1))
  done
  return 1
}
leftovers() { /loupe doctor 2>/dev/null | grep 'loupe programs'; }

start_loupe
sleep 3
tail -5 /tmp/loupe.log
if wait_observed $WAIT; then say observed yes; else say observed no; fi
say metrics-begin
metrics
say metrics-end
say targets-begin
get /targets
echo
say targets-end

# kill -9: netlink filters outlive the process; the next start removes them.
kill -9 $LOUPE; wait $LOUPE 2>/dev/null
sleep 1
say after-kill9 "$(leftovers)"
start_loupe
if wait_observed $WAIT; then say observed-after-restart yes; else say observed-after-restart no; fi
kill -TERM $LOUPE; wait $LOUPE 2>/dev/null
sleep 1
say after-sigterm "$(leftovers)"
say log-begin
grep -vE 'INFO' /tmp/loupe.log | tail -20
grep -E 'capture method' /tmp/loupe.log | head -2
say log-end
say done
poweroff -f
INIT
}

# Builds the initramfs for kernel $1 into $WORK/$1.cpio.gz.
build_initramfs() {
  local k=$1 root="$WORK/root-$1"
  rm -rf "$root" && mkdir -p "$root"/{bin,sbin,proc,sys,tmp,run,modules,dev,etc}
  cp "$(command -v busybox)" "$root/bin/busybox"
  "$root/bin/busybox" --help >/dev/null 2>&1 || die "busybox is not static"
  cp "$LOUPE_BIN" "$root/loupe"
  # The loader and the libraries the binary needs, at the same paths.
  local lib
  for lib in $(ldd "$LOUPE_BIN" | grep -oE '/[^ ]+'); do
    mkdir -p "$root$(dirname "$lib")" && cp -L "$lib" "$root$lib"
  done
  cp "$CACHE/$k/modules/"*.ko "$root/modules/"
  local pod
  for pod in scraped lonely; do
    mkdir -p "$root/www/$pod/cgi-bin"
    app_metrics "$pod" >"$root/www/$pod/metrics.txt"
    printf '#!/bin/sh\necho "Content-Type: text/plain; version=0.0.4"\necho ""\ncat /www/%s/metrics.txt\n' "$pod" \
      >"$root/www/$pod/cgi-bin/metrics"
    chmod +x "$root/www/$pod/cgi-bin/metrics"
  done
  guest_init >"$root/init" && chmod +x "$root/init"
  (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$WORK/$k.cpio.gz"
}

# Boots kernel $1; the console goes to $WORK/$1.console. One vCPU by default: under TCG with two,
# Debian unstable's 7.2 once died with "Oops: int3" in __dev_queue_xmit while TCX's static key
# was being patched (cross-vCPU code patching is not coherent under TCG emulation); with one vCPU
# nothing is patched under a running CPU. LOUPE_MATRIX_CPUS=2 brings two back.
boot() {
  local k=$1
  timeout "${LOUPE_MATRIX_BOOT_TIMEOUT:-300}" qemu-system-x86_64 -accel tcg -cpu max -m 1024 -smp "${LOUPE_MATRIX_CPUS:-1}" \
    -nographic -no-reboot -kernel "$CACHE/$k/vmlinuz" -initrd "$WORK/$k.cpio.gz" \
    -append "console=ttyS0 quiet panic=-1" </dev/null >"$WORK/$k.console" 2>&1 || true
}

# --- Checks and the table ---------------------------------------------------------------------

# Checks one kernel's console log; prints "kernel|probe method|attach method|scraped|lonely|result".
check_console() { # $1: kernel, $2: console file, $3: expected app body of each pod (dir), $4: source of the scraped pod (observed|fetched), $5: expected probe method
  python3 - "$1" "$2" "$3" "$4" "$5" <<'PY'
import re, sys, json
kernel, console, bodies, expected, expected_method = sys.argv[1:6]
text = open(console, errors="replace").read().replace("\r", "")
def between(name):
    m = re.search(r"MATRIX %s-begin\n(.*?)MATRIX %s-end" % (name, name), text, re.S)
    return m.group(1) if m else ""
def value(name):
    m = re.search(r"MATRIX %s(?: (.*))?$" % re.escape(name), text, re.M)
    return (m.group(1) or "present").strip() if m else ""
problems = []
release = value("kernel") or "?"
doctor = between("doctor")
method = re.search(r"capture method: (\S+?):", doctor)
method = method.group(1) if method else "none"
chosen = re.search(r"\[ok  \] capture method: (.*)", doctor)
chosen = chosen.group(1) if chosen else ""
if method == "per-namespace":
    if chosen.endswith("(payload copied with bpf_loop)"):
        method += " (bpf_loop)"
    elif "(payload copied in one or two records per packet" in chosen:
        method += " (one or two records)"
if method != expected_method:
    why = re.search(r"does not load: .*?(Verifier output: [^|]*)", chosen)
    problems.append("probe method %s, expected %s%s" % (method, expected_method, ": " + why.group(1).strip() if why else ""))
attach = re.search(r"attach method: (TCX|netlink)", doctor)
attach = attach.group(1) if attach else "none"
if not value("done"):
    problems.append("the guest did not finish (see %s)" % console)
targets = between("targets")
try:
    targets = json.loads(targets.strip() or "{}").get("targets", [])
except ValueError:
    problems.append("/targets is not JSON")
    targets = []
source = {t["pod"]: t.get("source") for t in targets}
if expected == "observed":
    if value("observed") != "yes" or source.get("scraped") != "observed":
        problems.append("scraped pod not observed (source %s)" % source.get("scraped"))
    if value("observed-after-restart") != "yes":
        problems.append("not observed after kill -9 and restart")
elif source.get("scraped") != "fetched":
    problems.append("expected fetch-only on this kernel, scraped pod's source is %s" % source.get("scraped"))
if source.get("lonely") != "fetched":
    problems.append("pod nobody scrapes not fetched (source %s)" % source.get("lonely"))
# Every sample of each app appears in loupe's output, with the pod's identity labels added.
metrics = between("metrics")
ident = re.compile(r'(namespace|pod|container|endpoint|job|instance)="[^"]*",?')
for pod in ("scraped", "lonely"):
    want = set()
    for line in open("%s/%s/metrics.txt" % (bodies, pod)):
        if line.startswith("#") or not line.strip():
            continue
        want.add(line.strip())
    got = set()
    for line in metrics.splitlines():
        if 'pod="%s"' % pod not in line or not line.startswith("matrix_app_"):
            continue
        line = ident.sub("", line).replace(",}", "}").replace("{}", "")
        got.add(line.strip())
    if want != got:
        problems.append("%s: body differs from the app's (%d samples missing, %d extra)" % (pod, len(want - got), len(got - want)))
# The in-pod API requests were skipped in the kernel, not copied (the eBPF program's own check).
skipped = re.search(r"^loupe_capture_skipped_packets_total (\d+)", metrics, re.M)
if expected == "observed" and not (skipped and int(skipped.group(1)) > 0):
    problems.append("API requests on the metrics port not skipped (loupe_capture_skipped_packets_total %s)" % (skipped.group(1) if skipped else "missing"))
for when in ("after-kill9", "after-sigterm"):
    line = value(when)
    m = re.search(r"loupe programs: (none|\d+)", line)
    if not m:
        problems.append("%s: no leftover report" % when)
    elif when == "after-sigterm" and m.group(1) != "none":
        problems.append("programs left after SIGTERM: %s" % line)
served = "observed+fetched" if source.get("scraped") == "observed" else ("fetched only" if source.get("lonely") == "fetched" else "nothing")
print("|".join([kernel, release, method, attach, served, "ok" if not problems else "FAIL: " + "; ".join(problems)]))
PY
}

run_kernel() {
  local k=$1 start=$SECONDS
  build_initramfs "$k"
  boot "$k"
  local row
  row=$(check_console "$k" "$WORK/$k.console" "$WORK/root-$k/www" "$(expected_source "$k")" "$(expected_method "$k")")
  log "$k: $((SECONDS - start)) s: $row"
  echo "$row" >>"$WORK/rows"
}

print_table() {
  printf '\n| kernel | release | probe method | attach method | served | result |\n|---|---|---|---|---|---|\n'
  while IFS='|' read -r k rel method attach served result; do
    printf '| %s | %s | %s | %s | %s | %s |\n' "$k" "$rel" "$method" "$attach" "$served" "$result"
  done <"$WORK/rows"
}

main() {
  local action=all
  case ${1:-} in fetch | run | all) action=$1 && shift ;; esac
  local kernels=("$@")
  [ ${#kernels[@]} -gt 0 ] || kernels=("${ALL_KERNELS[@]}")
  [ "$(id -u)" = 0 ] || die "must run as root (apt, QEMU)"
  local tools=(qemu-system-x86_64 busybox cpio xz zstd)
  local t missing=()
  for t in "${tools[@]}"; do command -v "$t" >/dev/null || missing+=("$t"); done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing qemu-system-x86 busybox-static cpio xz-utils zstd"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      qemu-system-x86 busybox-static cpio xz-utils zstd >/dev/null
  fi
  for k in "${kernels[@]}"; do fetch_kernel "$k"; done
  [ "$action" = fetch ] && return
  LOUPE_BIN=${LOUPE_BIN:-}
  if [ -z "$LOUPE_BIN" ]; then
    log "building the release binary"
    cargo build --release -p loupe-agent --quiet
    LOUPE_BIN=$ROOT/target/release/loupe
  fi
  : >"$WORK/rows"
  for k in "${kernels[@]}"; do run_kernel "$k"; done
  print_table
  log "consoles and initramfs trees are in $WORK; whole matrix: $SECONDS s"
  ! grep -q 'FAIL' "$WORK/rows"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
