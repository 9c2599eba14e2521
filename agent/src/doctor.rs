//! `loupe doctor`: what will and will not work on this node, and why.

use crate::capture::probe::{Probe, ProbeConfig};
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
    let release = release.trim();
    match kernel_version(release) {
        Some(v) if v >= (6, 6) => r.line(Level::Ok, "kernel", &format!("{release}: TCX attachments (released when loupe exits, even on kill -9)")),
        Some(v) if v >= (5, 8) => r.line(Level::Warn, "kernel", &format!("{release}: no TCX before 6.6; netlink TC filters are used and removed by loupe on start")),
        _ => r.line(Level::Fail, "kernel", &format!("{release}: loupe needs at least 5.8 (ring buffer)")),
    }
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        r.line(Level::Ok, "BTF", "/sys/kernel/btf/vmlinux present");
    } else {
        r.line(Level::Warn, "BTF", "no /sys/kernel/btf/vmlinux; loupe's programs do not need CO-RE, but diagnostics are poorer");
    }
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
    match Probe::load(&ProbeConfig {
        ring_bytes: 1 << 16,
        ..Default::default()
    }) {
        Ok(_) => r.line(
            Level::Ok,
            "eBPF",
            "loupe's programs load and pass the verifier",
        ),
        Err(e) => r.line(
            Level::Fail,
            "eBPF",
            &format!(
                "loading loupe's programs failed: {}; `loupe run` falls back to fetch-only mode with --capture auto (the default): every pod is still served, by fetching, and loupe_capture_active is 0 (--capture on exits instead)",
                crate::telemetry::with_causes(&e)
            ),
        ),
    }
    if r.failed {
        println!("loupe cannot observe pods on this node; see the FAIL lines");
        ExitCode::FAILURE
    } else {
        println!("loupe can observe and fetch on this node");
        ExitCode::SUCCESS
    }
}

fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_kernel_releases() {
        assert_eq!(super::kernel_version("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(super::kernel_version("5.15.0"), Some((5, 15)));
        assert_eq!(super::kernel_version("garbage"), None);
    }
}
