//! How the capture program tells pod namespaces apart, chosen per kernel by trying.
//!
//! - [`ProbeMethod::Shared`]: one program for all namespaces; the namespace comes from
//!   `bpf_get_netns_cookie`, which TC programs may call from about Linux 6.14, and payload is
//!   copied with `bpf_loop` (5.17+). One load, whatever the number of pods.
//! - [`ProbeMethod::PerNamespace`]: the program is still loaded once, but attached as one netlink
//!   filter per pod namespace, whose classid carries a slot the agent assigns; the kernel hands
//!   the slot to the program (`__sk_buff::tc_classid`), which maps it to the namespace's identity
//!   (`NETNS_SLOTS`). Payload is copied with `bpf_loop` where the kernel has it (5.17+), else as
//!   one or two records per packet (5.8+). Attaching a pod costs a netlink request, not a load.

use aya::programs::ProgramType;
use aya::sys::{is_helper_supported, BpfHelper};

/// Chooses the probe method: `auto` (default), `shared`, `per-namespace` or `per-namespace-flat`.
pub const METHOD_ENV: &str = "LOUPE_PROBE_METHOD";

/// How the program tells namespaces apart (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeMethod {
    Shared,
    PerNamespace,
}

impl std::fmt::Display for ProbeMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProbeMethod::Shared => "shared",
            ProbeMethod::PerNamespace => "per-namespace",
        })
    }
}

/// Which method [`super::Probe::load`] may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MethodChoice {
    /// The shared program when the kernel loads it, else one filter per namespace.
    #[default]
    Auto,
    Shared,
    /// One filter per namespace, payload copied with `bpf_loop` where the kernel has it.
    PerNamespace,
    /// One filter per namespace, one or two records per packet, as kernels before 5.17 get.
    PerNamespaceFlat,
}

impl std::str::FromStr for MethodChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" | "" => Ok(MethodChoice::Auto),
            "shared" => Ok(MethodChoice::Shared),
            "per-namespace" => Ok(MethodChoice::PerNamespace),
            "per-namespace-flat" => Ok(MethodChoice::PerNamespaceFlat),
            other => Err(format!(
                "unknown probe method {other:?} (expected auto, shared, per-namespace or per-namespace-flat)"
            )),
        }
    }
}

impl MethodChoice {
    /// From [`METHOD_ENV`]; an unknown value is reported and treated as `auto`.
    pub fn from_env() -> Self {
        let Ok(value) = std::env::var(METHOD_ENV) else {
            return MethodChoice::Auto;
        };
        value.parse().unwrap_or_else(|e| {
            log::warn!("{METHOD_ENV}: {e}; using auto");
            MethodChoice::Auto
        })
    }
}

/// Why the kernel cannot run the shared program, from helper probes (no version parsing);
/// `None` when both helpers are there (the load itself may still fail).
pub(super) fn shared_missing_helpers() -> Option<String> {
    let missing: Vec<String> = [
        BpfHelper::BPF_FUNC_get_netns_cookie,
        BpfHelper::BPF_FUNC_loop,
    ]
    .into_iter()
    .filter_map(helper_missing)
    .collect();
    (!missing.is_empty()).then(|| missing.join("; "))
}

/// Why TC programs cannot call `helper` here, or `None` when they can.
pub(super) fn helper_missing(helper: BpfHelper) -> Option<String> {
    let (name, since) = match helper {
        BpfHelper::BPF_FUNC_get_netns_cookie => ("bpf_get_netns_cookie", "about 6.14"),
        BpfHelper::BPF_FUNC_loop => ("bpf_loop", "5.17"),
        _ => ("this helper", "a newer kernel"),
    };
    match is_helper_supported(ProgramType::SchedClassifier, helper) {
        Ok(true) => None,
        Ok(false) => Some(format!(
            "{name} is not available to TC programs (Linux {since}+)"
        )),
        Err(e) => Some(format!("probing {name} failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_choice_parses_the_documented_values() {
        assert_eq!("auto".parse(), Ok(MethodChoice::Auto));
        assert_eq!("shared".parse(), Ok(MethodChoice::Shared));
        assert_eq!("per-namespace".parse(), Ok(MethodChoice::PerNamespace));
        assert_eq!(
            "per-namespace-flat".parse(),
            Ok(MethodChoice::PerNamespaceFlat)
        );
        let err = "fast".parse::<MethodChoice>().unwrap_err();
        assert!(
            err.contains("fast") && err.contains("per-namespace"),
            "{err}"
        );
    }
}
