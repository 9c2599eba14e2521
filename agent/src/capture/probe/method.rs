//! How the capture program tells pod namespaces apart, chosen per kernel by trying.
//!
//! - [`ProbeMethod::Shared`]: one program for all namespaces; the namespace comes from
//!   `bpf_get_netns_cookie`, which TC programs may call from about Linux 6.14, and payload is
//!   copied with `bpf_loop` (5.17+). One load, whatever the number of pods.
//! - [`ProbeMethod::PerNamespace`]: one instance of the program per pod namespace, each with the
//!   namespace's identity written into its read-only data before load (Linux 5.10+). All
//!   instances share the first one's maps (ring buffer, watched ports, own flows, drop counters,
//!   log ring): each instance is loaded with those maps pinned in a private directory of a bpf
//!   filesystem for the duration of the load only, so nothing stays pinned (not even after
//!   `kill -9`, short of a kill during a load; such a directory is removed by the next start).

use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use aya::maps::MapData;
use aya::programs::ProgramType;
use aya::sys::{is_helper_supported, BpfHelper};
use aya::{Ebpf, EbpfLoader};
use loupe_common::NETNS_ID_GLOBAL;

use super::{classifier, ProbeError};

/// Chooses the probe method: `auto` (default), `shared` or `per-namespace`.
pub const METHOD_ENV: &str = "LOUPE_PROBE_METHOD";
/// `statfs` magic of a bpf filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where loupe mounts its own bpf filesystem when `/sys/fs/bpf` is not one.
const OWN_BPFFS: &str = "/run/loupe/bpffs";
/// Prefix of the per-load pin directories (`loupe-<pid>-<n>`).
const PIN_DIR_PREFIX: &str = "loupe-";

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
    /// The shared program when the kernel loads it, else one instance per namespace.
    #[default]
    Auto,
    Shared,
    /// One instance per namespace, with `bpf_loop` where the kernel has it.
    PerNamespace,
    /// One instance per namespace with the bounded loop, as kernels before 5.17 get (tests).
    PerNamespaceBounded,
}

impl std::str::FromStr for MethodChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" | "" => Ok(MethodChoice::Auto),
            "shared" => Ok(MethodChoice::Shared),
            "per-namespace" => Ok(MethodChoice::PerNamespace),
            "per-namespace-bounded" => Ok(MethodChoice::PerNamespaceBounded),
            other => Err(format!(
                "unknown probe method {other:?} (expected auto, shared, per-namespace or per-namespace-bounded)"
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

/// Loads per-namespace instances that share the first instance's maps.
pub(super) struct InstanceLoader {
    /// Second handles on the shared maps (by their names in the object).
    maps: Vec<(String, MapData)>,
    bpffs: PathBuf,
    /// The program each instance loads.
    program: &'static str,
}

/// Numbers the pin directories of all loads in this process (several probes may coexist).
static LOADS: AtomicU64 = AtomicU64::new(0);

impl InstanceLoader {
    /// Takes handles on every map of `template` that is not global data (`.rodata`, `.bss`,
    /// `.data`, which stay per instance), and finds or mounts a bpf filesystem.
    pub(super) fn new(template: &Ebpf, program: &'static str) -> Result<Self, ProbeError> {
        let mut maps = Vec::new();
        for (name, map) in template.maps() {
            if name.starts_with('.') {
                continue;
            }
            let data = map_data(map).ok_or_else(|| ProbeError::Instance {
                what: format!("map {name} cannot be shared"),
            })?;
            let fd = data
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| ProbeError::Instance {
                    what: format!("duplicating map {name}: {e}"),
                })?;
            let dup = MapData::from_fd(fd).map_err(|e| ProbeError::Instance {
                what: format!("reopening map {name}: {e}"),
            })?;
            maps.push((name.to_owned(), dup));
        }
        let bpffs = bpf_filesystem()?;
        remove_stale_pin_dirs(&bpffs);
        Ok(Self {
            maps,
            bpffs,
            program,
        })
    }

    pub(super) fn program(&self) -> &'static str {
        self.program
    }

    /// Loads a new instance whose records and map keys carry `netns_id`; its program is
    /// loaded (verified), not attached.
    pub(super) fn load(&self, object: &[u8], netns_id: u64) -> Result<Ebpf, ProbeError> {
        let n = LOADS.fetch_add(1, Ordering::Relaxed);
        let dir = self
            .bpffs
            .join(format!("{PIN_DIR_PREFIX}{}-{n}", std::process::id()));
        let pins = PinDir::create(dir)?;
        let mut loader = EbpfLoader::new();
        loader.override_global(NETNS_ID_GLOBAL, &netns_id, true);
        let mut paths = Vec::new();
        for (name, map) in &self.maps {
            let path = pins.dir.join(name);
            map.pin(&path).map_err(|e| ProbeError::Instance {
                what: format!("pinning map {name} at {}: {e}", path.display()),
            })?;
            paths.push((name.as_str(), path));
        }
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(object).map_err(ProbeError::Load)?;
        drop(pins);
        classifier(&mut ebpf, self.program)?
            .load()
            .map_err(|source| ProbeError::Program {
                what: "load (verifier)",
                source,
            })?;
        Ok(ebpf)
    }
}

fn map_data(map: &aya::maps::Map) -> Option<&MapData> {
    use aya::maps::Map;
    Some(match map {
        Map::Array(m) | Map::HashMap(m) | Map::PerCpuArray(m) | Map::RingBuf(m) => m,
        Map::PerCpuHashMap(m) | Map::PerfEventArray(m) | Map::LruHashMap(m) => m,
        _ => return None,
    })
}

/// A directory of pins, removed (pins first) when dropped.
struct PinDir {
    dir: PathBuf,
}

impl PinDir {
    fn create(dir: PathBuf) -> Result<Self, ProbeError> {
        std::fs::create_dir(&dir).map_err(|e| ProbeError::Instance {
            what: format!("creating pin directory {}: {e}", dir.display()),
        })?;
        Ok(Self { dir })
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        remove_pin_dir(&self.dir);
    }
}

fn remove_pin_dir(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        log::warn!("removing pin directory {}: {e}", dir.display());
    }
}

/// Pin directories of loupe processes that no longer run (killed during a load).
fn remove_stale_pin_dirs(bpffs: &Path) {
    let Ok(entries) = std::fs::read_dir(bpffs) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(PIN_DIR_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            log::info!(
                "removing {} left by an earlier loupe process",
                entry.path().display()
            );
            remove_pin_dir(&entry.path());
        }
    }
}

fn is_bpffs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct; the path is NUL-terminated.
    unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        libc::statfs(c_path.as_ptr(), &mut stat) == 0 && stat.f_type as i64 == BPF_FS_MAGIC
    }
}

/// `/sys/fs/bpf` when it is a bpf filesystem, else loupe's own mount at [`OWN_BPFFS`].
fn bpf_filesystem() -> Result<PathBuf, ProbeError> {
    let system = Path::new("/sys/fs/bpf");
    if is_bpffs(system) {
        return Ok(system.to_owned());
    }
    let own = Path::new(OWN_BPFFS);
    if is_bpffs(own) {
        return Ok(own.to_owned());
    }
    let fail = |what: String| ProbeError::Instance {
        what: format!("the per-namespace method needs a bpf filesystem: {what}"),
    };
    std::fs::create_dir_all(own).map_err(|e| fail(format!("creating {OWN_BPFFS}: {e}")))?;
    let c_path = std::ffi::CString::new(OWN_BPFFS).map_err(|e| fail(e.to_string()))?;
    // SAFETY: NUL-terminated strings; mounting a new bpf filesystem instance changes nothing
    // else (it is empty and only loupe uses it).
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c_path.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(fail(format!(
            "/sys/fs/bpf is not one and mounting one at {OWN_BPFFS} failed: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(own.to_owned())
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
            "per-namespace-bounded".parse(),
            Ok(MethodChoice::PerNamespaceBounded)
        );
        let err = "fast".parse::<MethodChoice>().unwrap_err();
        assert!(
            err.contains("fast") && err.contains("per-namespace"),
            "{err}"
        );
    }

    #[test]
    fn stale_pin_dirs_of_dead_processes_are_removed_and_live_ones_kept() {
        let base = std::env::temp_dir().join(format!("loupe-pins-test-{}", std::process::id()));
        // pid 0 never names a running process in /proc; our own pid does.
        let dead = base.join(format!("{PIN_DIR_PREFIX}{}-0", u32::MAX));
        let live = base.join(format!("{PIN_DIR_PREFIX}{}-0", std::process::id()));
        let other = base.join("unrelated");
        for dir in [&dead, &live, &other] {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(dead.join("SEGMENTS"), b"").unwrap();
        remove_stale_pin_dirs(&base);
        assert!(!dead.exists(), "dead process's pins kept");
        assert!(live.exists() && other.exists(), "live or unrelated removed");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
