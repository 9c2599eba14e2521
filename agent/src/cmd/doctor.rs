//! `loupe doctor`: what will and will not work on this node, and why.

use crate::capture::probe::{AttachedVia, Probe, ProbeConfig, CAPTURE_PROGRAM_NAMES};
use aya::maps::MapType;
use aya::programs::ProgramType;
use aya::sys::{is_helper_supported, is_map_supported, is_program_supported, BpfHelper};
use std::path::Path;
use std::process::ExitCode;

/// Linux capability numbers (include/uapi/linux/capability.h).
const CAPS: &[(u32, &str, &str)] = &[
    (
        21,
        "CAP_SYS_ADMIN",
        "entering pods' network namespaces (setns)",
    ),
    (
        12,
        "CAP_NET_ADMIN",
        "attaching TC programs to a pod's loopback",
    ),
    (39, "CAP_BPF", "loading eBPF programs and maps"),
    (38, "CAP_PERFMON", "eBPF programs that read packet memory"),
    (
        19,
        "CAP_SYS_PTRACE",
        "opening /proc/PID/ns/net of other users' processes",
    ),
];

enum Level {
    Ok,
    Warn,
    Fail,
}

struct Report {
    failed: bool,
}

impl Report {
    fn line(&mut self, level: Level, what: &str, detail: &str) {
        let tag = match level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => {
                self.failed = true;
                "FAIL"
            }
        };
        println!("[{tag}] {what}: {detail}");
    }
}

/// Prints one line per check; exits non-zero when loupe cannot observe anything here.
pub fn run() -> ExitCode {
    let mut r = Report { failed: false };
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    r.line(
        Level::Ok,
        "kernel",
        &format!(
            "{}: features below are probed, not inferred from the version",
            release.trim()
        ),
    );
    kernel_features(&mut r);
    let cap_eff = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0);
    for (bit, name, why) in CAPS {
        // The kernel accepts CAP_SYS_ADMIN for CAP_BPF and CAP_PERFMON (bpf_capable(),
        // perfmon_capable()); the DaemonSet adds SYS_ADMIN only.
        let stands_in = matches!(bit, 38 | 39) && cap_eff & (1 << 21) != 0;
        if cap_eff & (1 << bit) != 0 {
            r.line(Level::Ok, name, why);
        } else if stands_in {
            r.line(
                Level::Ok,
                name,
                &format!("{why} (CAP_SYS_ADMIN stands for it)"),
            );
        } else {
            r.line(Level::Fail, name, &format!("missing: needed for {why}"));
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if mounts.lines().any(|l| l.split(' ').nth(2) == Some("bpf")) {
        r.line(
            Level::Ok,
            "bpffs",
            "mounted (not required: loupe pins nothing)",
        );
    } else {
        r.line(
            Level::Ok,
            "bpffs",
            "not mounted; not required, loupe pins nothing",
        );
    }
    let v2 = mounts
        .lines()
        .filter(|l| l.split(' ').nth(2) == Some("cgroup2"))
        .count();
    let v1 = mounts
        .lines()
        .filter(|l| l.split(' ').nth(2) == Some("cgroup"))
        .count();
    r.line(
        Level::Ok,
        "cgroups",
        &format!("{v2} cgroup2 and {v1} cgroup v1 mounts; container IDs are found in /proc/PID/cgroup for either"),
    );
    leftover_programs(&mut r);
    capture_method(&mut r);
    if r.failed {
        println!("loupe cannot observe pods on this node; see the FAIL lines");
        ExitCode::FAILURE
    } else {
        println!("loupe can observe and fetch on this node");
        ExitCode::SUCCESS
    }
}

/// BTF, the `bpf()` call, ring buffers and the helpers the shared method needs.
fn kernel_features(r: &mut Report) {
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        r.line(Level::Ok, "BTF", "/sys/kernel/btf/vmlinux present");
    } else {
        r.line(Level::Fail, "BTF", "no /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF): loupe observes only on kernels with BTF; it fetches instead");
    }
    match is_program_supported(ProgramType::SchedClassifier) {
        Ok(true) => r.line(Level::Ok, "bpf()", "TC classifier programs can be loaded"),
        Ok(false) => r.line(Level::Fail, "bpf()", "the kernel has no TC classifier programs (CONFIG_NET_CLS_BPF)"),
        Err(e) => r.line(Level::Fail, "bpf()", &format!("denied or failing ({e}): no eBPF here (seccomp, missing CAP_BPF/CAP_SYS_ADMIN, or kernel.unprivileged_bpf_disabled for non-root)")),
    }
    match is_map_supported(MapType::RingBuf) {
        Ok(true) => r.line(Level::Ok, "ring buffer", "BPF ring buffers available"),
        Ok(false) => r.line(
            Level::Fail,
            "ring buffer",
            "no BPF ring buffer (Linux 5.8+)",
        ),
        Err(e) => r.line(Level::Fail, "ring buffer", &format!("probe failed: {e}")),
    }
    let tc = ProgramType::SchedClassifier;
    for (helper, name, what) in [
        (
            BpfHelper::BPF_FUNC_get_netns_cookie,
            "bpf_get_netns_cookie",
            "one program for every namespace",
        ),
        (
            BpfHelper::BPF_FUNC_loop,
            "bpf_loop",
            "payload copied with bpf_loop",
        ),
    ] {
        match is_helper_supported(tc, helper) {
            Ok(true) => r.line(Level::Ok, name, &format!("available to TC programs ({what})")),
            Ok(false) => r.line(Level::Ok, name, &format!("not available to TC programs: loupe uses one program instance per pod namespace instead of {what}")),
            Err(e) => r.line(Level::Warn, name, &format!("probe failed: {e}")),
        }
    }
    r.line(
        Level::Ok,
        "namespace identity",
        &format!("{}", crate::resolve::netns::identity_kind()),
    );
}

/// loupe's programs loaded in the kernel right now (before this check loads its own): a running
/// loupe's, or programs held by netlink filters a killed loupe left (removed by its next start).
/// After loupe stops this is "none" when it left nothing attached.
fn leftover_programs(r: &mut Report) {
    let mut count = 0usize;
    for info in aya::programs::loaded_programs() {
        match info {
            Ok(info) => {
                if info
                    .name_as_str()
                    .is_some_and(|name| CAPTURE_PROGRAM_NAMES.contains(&name))
                {
                    count += 1;
                }
            }
            Err(e) => {
                r.line(
                    Level::Warn,
                    "loupe programs",
                    &format!("cannot list loaded programs: {e}"),
                );
                return;
            }
        }
    }
    let detail = if count == 0 {
        "none loaded in the kernel".to_owned()
    } else {
        format!("{count} loaded in the kernel (a running loupe's, or netlink filters a killed loupe left: its next start removes those of its pods)")
    };
    r.line(Level::Ok, "loupe programs", &detail);
}

/// Loads the probe as `loupe run` would: names the capture method and attachment chosen, and why.
fn capture_method(r: &mut Report) {
    match Probe::load(&ProbeConfig {
        ring_bytes: 1 << 16,
        ..Default::default()
    }) {
        Ok(probe) => {
            r.line(
                Level::Ok,
                "capture method",
                &format!("{}: {}", probe.method(), probe.method_reason()),
            );
            let detail = match probe.attach_support() {
                AttachedVia::Tcx => "TCX links on each pod's lo (released when loupe exits, even on kill -9)",
                AttachedVia::Netlink => "netlink clsact filters on each pod's lo (no TCX here; filters a killed loupe leaves are removed by the next start)",
            };
            r.line(Level::Ok, "attach method", detail);
        }
        Err(e) => r.line(
            Level::Fail,
            "eBPF",
            &format!(
                "loading loupe's programs failed: {}; `loupe run` falls back to fetch-only mode with --capture auto (the default): every pod is still served, by fetching, and loupe_capture_active is 0 (--capture on exits instead)",
                crate::telemetry::with_causes(&e)
            ),
        ),
    }
}
