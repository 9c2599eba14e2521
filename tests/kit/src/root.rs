//! The one gate for tests that need what an unprivileged or bare machine lacks: root (to create
//! network namespaces, veths, cgroups, to load BPF programs) or a tool, a kernel feature, a data
//! set. Without it a test is skipped with the reason printed, except under `CI=true`, where a
//! skip would hide a missing capability and so fails the test.

/// Whether `test` can run as root. Otherwise skips it (see [`skip`]) naming what root is needed
/// for (`needs`, e.g. "network namespaces, BPF") and returns false.
pub fn require(test: &str, needs: &str) -> bool {
    if is_root() {
        return true;
    }
    skip(test, &format!("needs root ({needs})"))
}

/// Whether the process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Skips `test` because of `reason` (what is missing): prints it and returns false, or panics
/// with it under `CI=true`. Returns a bool so that a gate reads `if !skip(..) { return }` too.
pub fn skip(test: &str, reason: &str) -> bool {
    if in_ci() {
        panic!("{test}: {reason}, and CI=true forbids skipping it");
    }
    eprintln!("SKIPPED {test}: {reason}");
    false
}

fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_is_true_for_root_and_a_skip_otherwise() {
        // The test runner decides which branch runs; both must agree with `is_root`.
        if in_ci() && !is_root() {
            let r = std::panic::catch_unwind(|| require("t", "network namespaces"));
            assert!(r.is_err(), "CI=true must turn a skip into a failure");
        } else {
            assert_eq!(require("t", "network namespaces"), is_root());
        }
    }

    #[test]
    fn a_skip_is_false_or_under_ci_a_panic_naming_the_reason() {
        let r = std::panic::catch_unwind(|| skip("some_test", "needs a kernel with BTF"));
        match r {
            Ok(ran) => {
                assert!(!in_ci());
                assert!(!ran);
            }
            Err(panic) => {
                assert!(in_ci());
                let msg = panic.downcast_ref::<String>().cloned().unwrap_or_default();
                assert!(msg.contains("some_test") && msg.contains("needs a kernel with BTF"));
            }
        }
    }
}
