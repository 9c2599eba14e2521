//! What BPF programs are attached to an interface of a pod: TCX links (kernel 6.6+, asked with
//! BPF_PROG_QUERY on the interface's ifindex, which is resolved in the caller's network namespace)
//! and netlink clsact filters (`tc filter show`). bpftool 7.1 does not list TCX links, hence this.
//!
//! The query must run inside the pod's namespace, so `in_pod` runs the `loupe-testbed attached`
//! subcommand there with `ip netns exec`.

use aya::programs::tc::TcAttachType;
use aya::programs::SchedClassifier;

use crate::pod::Pod;
use crate::{crate_bin, run, Result};

/// One attachment, as a line: `tcx/egress id=12 name=loupe_tc` or `tc/egress <tc filter line>`.
pub fn query_here(dev: &str) -> std::result::Result<Vec<String>, String> {
    let mut found = Vec::new();
    for (dir, kind) in [
        ("ingress", TcAttachType::Ingress),
        ("egress", TcAttachType::Egress),
    ] {
        match SchedClassifier::query_tcx(dev, kind) {
            Ok((_, progs)) => {
                for p in progs {
                    found.push(format!(
                        "tcx/{dir} id={} name={}",
                        p.id(),
                        p.name_as_str().unwrap_or("?")
                    ));
                }
            }
            // Kernels without TCX answer EINVAL: nothing can be attached that way.
            Err(e)
                if format!("{e:?}").contains("EINVAL") || format!("{e:?}").contains("code: 22") => {
            }
            Err(e) => return Err(format!("querying TCX {dir} programs on {dev}: {e:?}")),
        }
        let filters = run("tc", &["filter", "show", "dev", dev, dir]).map_err(|e| e.to_string())?;
        for line in filters.lines().filter(|l| !l.trim().is_empty()) {
            found.push(format!("tc/{dir} {}", line.trim()));
        }
    }
    Ok(found)
}

/// Every BPF attachment on `dev` inside `pod`.
pub fn in_pod(pod: &Pod, dev: &str) -> Result<Vec<String>> {
    let bin = crate_bin("loupe-testbed")?;
    let out = pod.exec(&bin.to_string_lossy(), &["attached", dev])?;
    Ok(out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect())
}

/// The name of the probe program [`hold_tcx_probe`] attaches.
pub const PROBE_NAME: &str = "loupe_tb_probe";

/// A zeroed `union bpf_attr`, larger than any command needs (the kernel accepts trailing zeros).
#[repr(C, align(8))]
struct BpfAttr([u8; 128]);

impl BpfAttr {
    fn put_u32(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn put_u64(&mut self, off: usize, v: u64) {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    }
}

fn bpf(cmd: libc::c_long, attr: &mut BpfAttr) -> std::result::Result<i32, String> {
    // SAFETY: bpf(2) reads at most `size` bytes of `attr`, which is a valid, aligned buffer of that
    // size; the pointers stored in it point to live buffers of the caller.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BpfAttr,
            std::mem::size_of::<BpfAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    Ok(rc as i32)
}

/// Loads a two-instruction TC program (`return TC_ACT_UNSPEC`) and attaches it as a TCX egress
/// link on `dev` in the current network namespace. The link lives as long as the returned fd,
/// so the process holding it leaves nothing behind when it exits. This is how the testbed proves
/// that [`query_here`] sees TCX attachments.
pub fn hold_tcx_probe(dev: &str) -> std::result::Result<std::os::fd::OwnedFd, String> {
    use std::os::fd::FromRawFd;
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_LINK_CREATE: libc::c_long = 28;
    const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
    const BPF_TCX_EGRESS: u32 = 47;
    // r0 = -1 (TC_ACT_UNSPEC); exit
    let insns: [u8; 16] = [
        0xb7, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, //
        0x95, 0, 0, 0, 0, 0, 0, 0,
    ];
    let license = b"GPL\0";
    let mut load = BpfAttr([0; 128]);
    load.put_u32(0, BPF_PROG_TYPE_SCHED_CLS);
    load.put_u32(4, 2);
    load.put_u64(8, insns.as_ptr() as u64);
    load.put_u64(16, license.as_ptr() as u64);
    load.0[48..48 + PROBE_NAME.len()].copy_from_slice(PROBE_NAME.as_bytes());
    let prog = bpf(BPF_PROG_LOAD, &mut load).map_err(|e| format!("loading the probe: {e}"))?;
    // SAFETY: `prog` is a fresh fd returned by the kernel and owned by nobody else.
    let prog = unsafe { std::os::fd::OwnedFd::from_raw_fd(prog) };
    let ifindex = {
        let name = std::ffi::CString::new(dev).map_err(|e| e.to_string())?;
        // SAFETY: `name` is a valid NUL-terminated string.
        unsafe { libc::if_nametoindex(name.as_ptr()) }
    };
    if ifindex == 0 {
        return Err(format!("no interface {dev}"));
    }
    let mut link = BpfAttr([0; 128]);
    use std::os::fd::AsRawFd;
    link.put_u32(0, prog.as_raw_fd() as u32);
    link.put_u32(4, ifindex);
    link.put_u32(8, BPF_TCX_EGRESS);
    let link = bpf(BPF_LINK_CREATE, &mut link).map_err(|e| format!("attaching the probe: {e}"))?;
    // SAFETY: as above, a fresh fd from the kernel.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(link) })
}
