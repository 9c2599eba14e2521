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
