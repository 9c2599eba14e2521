//! Builds the eBPF object (`ebpf/`, target `bpfel-unknown-none`) so that a plain `cargo build`
//! on the stable toolchain builds everything; `capture::probe` embeds the result from
//! `$OUT_DIR/loupe`.
//!
//! rustup cannot provide `rust-src` here, so the eBPF crate is built with Debian's toolchain
//! (`/usr/bin/cargo`, `/usr/bin/rustc`), which ships a prebuilt `core` for the BPF targets, and
//! linked with bpf-linker (see shared notes `ebpf-toolchain.md`). The child build gets a clean
//! environment so the outer build's flags, wrappers (clippy) and target dir don't leak into it.

use std::env;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const BPF_TARGET: &str = "bpfel-unknown-none";
const OBJECT_NAME: &str = "loupe";
/// Variables passed through to the child build; everything else is dropped.
const KEPT_VARS: &[&str] = &[
    "HOME",
    "CARGO_HOME",
    "CARGO_NET_OFFLINE",
    // Shares the outer build's jobserver, so the child doesn't add its own parallelism.
    "CARGO_MAKEFLAGS",
    "TMPDIR",
    "LANG",
    "http_proxy",
    "https_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "no_proxy",
    "NO_PROXY",
];

struct BuildError(String);

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn main() -> ExitCode {
    git_revision();
    // The codec alone (no `agent` feature, as the fuzz targets build it) embeds no eBPF object.
    if env::var_os("CARGO_FEATURE_AGENT").is_none() {
        return ExitCode::SUCCESS;
    }
    match build_ebpf() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: building the eBPF object (ebpf/) failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `LOUPE_GIT_REVISION` for `loupe --version` and the image's labels: the variable when set (an
/// image build from a source tree without `.git`), else `git rev-parse --short=12 HEAD`, else
/// "unknown".
fn git_revision() {
    println!("cargo:rerun-if-env-changed=LOUPE_GIT_REVISION");
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let revision = env::var("LOUPE_GIT_REVISION")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(|| {
            // Rerun when HEAD moves: HEAD, the branch it points to, packed refs. Only files that
            // exist: cargo reruns on every build for a missing one.
            let branch = git(&["symbolic-ref", "-q", "HEAD"]);
            let files = ["HEAD", "packed-refs"]
                .into_iter()
                .map(str::to_string)
                .chain(branch);
            for file in files {
                if let Some(path) = git(&["rev-parse", "--git-path", &file]) {
                    if Path::new(&path).exists() {
                        println!("cargo:rerun-if-changed={path}");
                    }
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"])
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=LOUPE_GIT_REVISION={revision}");
}

fn var(name: &str) -> Result<PathBuf, BuildError> {
    env::var_os(name)
        .map(PathBuf::from)
        .ok_or_else(|| BuildError(format!("cargo did not set {name}")))
}

fn build_ebpf() -> Result<(), BuildError> {
    let manifest_dir = var("CARGO_MANIFEST_DIR")?;
    let out_dir = var("OUT_DIR")?;
    let workspace = manifest_dir
        .parent()
        .ok_or_else(|| BuildError(format!("{} has no parent", manifest_dir.display())))?;
    let ebpf_dir = workspace.join("ebpf");
    let common_dir = workspace.join("common");
    for path in [
        ebpf_dir.join("src"),
        ebpf_dir.join("Cargo.toml"),
        common_dir.join("src"),
        common_dir.join("Cargo.toml"),
        workspace.join("Cargo.toml"),
        workspace.join("Cargo.lock"),
    ] {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    println!("cargo:rerun-if-env-changed=BPF_LINKER");

    let linker = bpf_linker()?;
    for tool in [DEBIAN_CARGO, DEBIAN_RUSTC] {
        if !Path::new(tool).exists() {
            return Err(BuildError(format!(
                "{tool} (Debian's rustc-web toolchain, which has a prebuilt core for {BPF_TARGET}) \
                 is missing: run scripts/setup.sh"
            )));
        }
    }

    let target_dir = out_dir.join("ebpf-target");
    let mut cmd = Command::new(DEBIAN_CARGO);
    cmd.env_clear();
    for name in KEPT_VARS {
        if let Some(value) = env::var_os(name) {
            cmd.env(name, value);
        }
    }
    cmd.env("PATH", child_path())
        .env("RUSTC", DEBIAN_RUSTC)
        // aya-ebpf needs `asm_experimental_arch`; scoped to that crate so nothing else (and no
        // build-std) is switched on.
        .env("RUSTC_BOOTSTRAP", "aya_ebpf")
        .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", &linker)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Cdebuginfo=2\u{1f}-Clink-arg=--btf",
        )
        .arg("build")
        .arg("--release")
        .arg("--locked")
        .arg("--target")
        .arg(BPF_TARGET)
        .arg("--manifest-path")
        .arg(ebpf_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&ebpf_dir);
    let status = cmd
        .status()
        .map_err(|e| BuildError(format!("cannot run {DEBIAN_CARGO}: {e}")))?;
    if !status.success() {
        return Err(BuildError(format!(
            "{DEBIAN_CARGO} build --target {BPF_TARGET} in {} exited with {status}",
            ebpf_dir.display()
        )));
    }

    let built = target_dir
        .join(BPF_TARGET)
        .join("release")
        .join(OBJECT_NAME);
    let dest = out_dir.join(OBJECT_NAME);
    std::fs::copy(&built, &dest).map_err(|e| {
        BuildError(format!(
            "cannot copy {} to {}: {e}",
            built.display(),
            dest.display()
        ))
    })?;
    Ok(())
}

/// bpf-linker from `$BPF_LINKER`, else `$CARGO_HOME/bin`, else `~/.cargo/bin`.
fn bpf_linker() -> Result<PathBuf, BuildError> {
    let mut candidates = Vec::new();
    if let Some(path) = env::var_os("BPF_LINKER") {
        candidates.push(PathBuf::from(path));
    }
    if let Some(home) = env::var_os("CARGO_HOME") {
        candidates.push(PathBuf::from(home).join("bin/bpf-linker"));
    }
    if let Some(home) = env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/bpf-linker"));
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            BuildError(format!(
                "bpf-linker not found (looked at: {}): run scripts/setup.sh",
                looked.join(", ")
            ))
        })
}

/// `/usr/bin` first and no directory holding rustup's proxies, so nothing the child runs by
/// name resolves to the rustup toolchain.
fn child_path() -> OsString {
    let mut dirs = vec![PathBuf::from("/usr/bin")];
    if let Some(path) = env::var_os("PATH") {
        dirs.extend(
            env::split_paths(&path)
                .filter(|dir| !dir.join("rustup").exists() && dir != Path::new("/usr/bin")),
        );
    }
    env::join_paths(dirs).unwrap_or_else(|_| OsString::from("/usr/bin:/bin"))
}
