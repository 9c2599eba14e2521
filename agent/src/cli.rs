//! The command line (clap). Every flag also reads a `LOUPE_...` environment variable, as
//! Kubernetes users expect; `NODE_NAME` is read too since the downward API sets it.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "loupe",
    version = concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("LOUPE_GIT_REVISION"), ")"),
    about = "Collects pods' application metrics from inside their network namespaces and serves one merged Prometheus target per node."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent.
    Run(Box<RunArgs>),
    /// Check what will and will not work on this node (kernel, BTF, capabilities, bpffs, cgroups).
    Doctor,
    /// Ask a running agent for its targets: one line each, with the reason of the down ones.
    Status(StatusArgs),
    /// Watch one port in one pod's network namespace for a while and print every reply the
    /// eBPF probe observes there (what `loupe run` would store), then detach.
    Capture(CaptureArgs),
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("pod").required(true).args(["netns", "pid"]))]
pub struct CaptureArgs {
    /// The pod's network namespace, as a path (e.g. /var/run/netns/NAME or /proc/PID/ns/net).
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// A process of the pod: its network namespace is watched.
    #[arg(long)]
    pub pid: Option<u32>,
    /// The app's metrics port on the pod's loopback.
    #[arg(long)]
    pub port: u16,
    /// The metrics path: only exchanges whose request is a GET of it are copied (repeat for
    /// several).
    #[arg(long, default_value = "/metrics")]
    pub path: Vec<String>,
    /// How long to watch (seconds); Ctrl-C stops earlier.
    #[arg(long, default_value = "10", value_parser = parse_seconds)]
    pub seconds: Duration,
    /// Size of the eBPF ring buffer in bytes (as for `loupe run`).
    #[arg(long, default_value = "16777216", value_parser = parse_ring_bytes)]
    pub ring_bytes: u32,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The agent's address (its --listen), as `http://HOST:PORT`, `https://HOST:PORT` or
    /// `HOST:PORT`. Over https to a loopback address the certificate is not verified (the
    /// agent's own pod); to another address it must chain to --ca-file.
    #[arg(
        long,
        env = "LOUPE_STATUS_URL",
        default_value = "http://127.0.0.1:9897"
    )]
    pub url: String,
    /// A file holding the bearer token to send (an agent with --authz kubernetes needs one
    /// allowed `get` on /targets, e.g. the pod's service-account token).
    #[arg(long, env = "LOUPE_STATUS_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM CA certificates the agent's certificate must chain to (https, not loopback).
    #[arg(long, env = "LOUPE_STATUS_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Discover pods from this YAML file (reloaded when it changes).
    #[arg(
        long,
        env = "LOUPE_PODS_FILE",
        required_unless_present = "kubernetes",
        conflicts_with = "kubernetes"
    )]
    pub pods_file: Option<PathBuf>,

    /// Discover this node's pods from the Kubernetes API.
    #[arg(long, env = "LOUPE_KUBERNETES")]
    pub kubernetes: bool,

    /// This node's name (with --kubernetes); defaults to the NODE_NAME environment variable.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// Kubeconfig to use instead of the in-cluster configuration.
    #[arg(long, env = "LOUPE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Also collect the mesh sidecar's own stats (Envoy's :15090/stats/prometheus).
    #[arg(long, env = "LOUPE_SIDECAR_STATS")]
    pub sidecar_stats: bool,

    /// How each pod's `job` is chosen: `default` (the `loupe.dev/job` annotation, else the
    /// `app.kubernetes.io/name` label, else `app`, else the controlling owner, a Deployment's
    /// name for its pods, else the pod's name), `annotation:KEY` or `label:KEY` (that value, else
    /// the default rule), or `value:JOB` (one job for every pod).
    #[arg(long, env = "LOUPE_JOB_FROM", default_value = "default", value_parser = parse_job_rule)]
    pub job_from: crate::discover::target_labels::JobRule,

    /// Pod labels copied onto the pod's series, as comma-separated patterns over label keys
    /// (`*` matches any run of characters), e.g. `app.kubernetes.io/*,team`; names sanitised as
    /// Prometheus' `labelmap` of `__meta_kubernetes_pod_label_*` gives them. None by default.
    #[arg(long, env = "LOUPE_POD_LABELS", default_value = "")]
    pub pod_labels: String,

    /// Address the merged node target is served on.
    #[arg(long, env = "LOUPE_LISTEN", default_value = "0.0.0.0:9897")]
    pub listen: SocketAddr,

    /// An observed reply younger than this (seconds) is served as is; older ones are fetched.
    #[arg(long, env = "LOUPE_FRESHNESS", default_value = "15", value_parser = parse_seconds)]
    pub freshness: Duration,

    /// Time limit (seconds) for one fetch from an app, and the scrape timeout when the scraper
    /// sends none.
    #[arg(long, env = "LOUPE_FETCH_TIMEOUT", default_value = "10", value_parser = parse_seconds)]
    pub fetch_timeout: Duration,

    /// Whether to observe replies with the eBPF probe: `auto` falls back to fetching only when
    /// the probe cannot load (with a warning naming why), `on` makes that failure fatal, `off`
    /// never loads it.
    #[arg(long, env = "LOUPE_CAPTURE", value_enum, default_value_t = CaptureMode::Auto)]
    pub capture: CaptureMode,

    /// Size of the eBPF ring buffer in bytes (rounded up to a power of two, at least one page,
    /// at most 2 GiB).
    #[arg(long, env = "LOUPE_RING_BYTES", default_value = "16777216", value_parser = parse_ring_bytes)]
    pub ring_bytes: u32,

    /// Largest response body (after decompression) loupe keeps, in bytes.
    #[arg(long, env = "LOUPE_MAX_BODY_BYTES", default_value_t = 64 << 20)]
    pub max_body_bytes: usize,

    /// TLS, client certificates, basic-auth users and response headers, in the web
    /// configuration format of Prometheus' exporter-toolkit (reloaded when it or its
    /// certificates change).
    #[arg(long, env = "LOUPE_WEB_CONFIG_FILE")]
    pub web_config_file: Option<PathBuf>,

    /// Serve TLS with a certificate made in memory at start: encrypted, but scrapers cannot
    /// verify it (use --web-config-file with a real certificate for that).
    #[arg(long, env = "LOUPE_TLS_SELF_SIGNED")]
    pub tls_self_signed: bool,

    /// Who may read /metrics and /targets: `none` (anyone who reaches the port), or
    /// `kubernetes` (a bearer token the API server reviews, and RBAC allows for the view asked).
    #[arg(long, env = "LOUPE_AUTHZ", value_enum, default_value_t = Authz::None)]
    pub authz: Authz,

    /// Per endpoint, as Prometheus' scrape config means them (0: none); a pod overrides each
    /// with `loupe.dev/sample-limit`, ... An endpoint past one is down, with the limit named.
    #[arg(long, env = "LOUPE_SAMPLE_LIMIT", default_value_t = 0)]
    pub sample_limit: usize,
    /// Labels of a series: its name, the app's labels, loupe's identity labels, job and instance.
    #[arg(long, env = "LOUPE_LABEL_LIMIT", default_value_t = 0)]
    pub label_limit: usize,
    #[arg(long, env = "LOUPE_LABEL_NAME_LENGTH_LIMIT", default_value_t = 0)]
    pub label_name_length_limit: usize,
    #[arg(long, env = "LOUPE_LABEL_VALUE_LENGTH_LIMIT", default_value_t = 0)]
    pub label_value_length_limit: usize,
    /// Bytes of a body after decompression (at most --max-body-bytes, which bounds every body).
    #[arg(long, env = "LOUPE_BODY_SIZE_LIMIT", default_value_t = 0)]
    pub body_size_limit: usize,

    /// The memory loupe may use, in bytes; half of it is the budget for pods' kept bodies (a
    /// body that does not fit is refused, its endpoint down with the reason). Default: the
    /// memory limit of loupe's own cgroup (v2 `memory.max`, v1 `memory.limit_in_bytes`); 0: no
    /// budget.
    #[arg(long, env = "LOUPE_MEMORY_LIMIT")]
    pub memory_limit: Option<usize>,
}

fn parse_job_rule(s: &str) -> Result<crate::discover::target_labels::JobRule, String> {
    s.parse()
}

impl RunArgs {
    /// How pods get their `job` and copied labels; the `--pod-labels` patterns left out are
    /// logged and counted here.
    pub fn target_labels(&self) -> crate::discover::target_labels::Rules {
        use crate::discover::target_labels::{label_error, PodLabels, Rules};
        let (pod_labels, refused) = PodLabels::parse(&self.pod_labels);
        for why in refused {
            label_error(&why);
        }
        Rules {
            job: self.job_from.clone(),
            pod_labels,
        }
    }

    /// The agent's default scrape limits.
    pub fn limits(&self) -> crate::ingest::Limits {
        crate::ingest::Limits {
            sample_limit: self.sample_limit,
            label_limit: self.label_limit,
            label_name_length_limit: self.label_name_length_limit,
            label_value_length_limit: self.label_value_length_limit,
            body_size_limit: self.body_size_limit,
        }
    }
}

/// `--authz`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Authz {
    None,
    /// TokenReview, then SubjectAccessReview, as the kubelet and kube-rbac-proxy do.
    Kubernetes,
}

/// Whether the eBPF probe is loaded (`--capture`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CaptureMode {
    /// Load it; if that fails, warn and serve fetched bodies only.
    Auto,
    /// Load it; if that fails, exit.
    On,
    /// Never load it: serve fetched bodies only.
    Off,
}

/// Rounds up to the power of two the kernel wants for a ring buffer.
fn parse_ring_bytes(s: &str) -> Result<u32, String> {
    let bytes: u32 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of bytes up to 2^31"))?;
    bytes
        .max(4096)
        .checked_next_power_of_two()
        .ok_or_else(|| format!("'{s}' is above the largest ring buffer, 2^31 bytes"))
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("'{s}' must be a positive number of seconds"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("'{s}' is too many seconds"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_with_pods_file_has_defaults() {
        let cli = Cli::try_parse_from(["loupe", "run", "--pods-file", "/tmp/p.yaml"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("expected run")
        };
        assert_eq!(args.listen, "0.0.0.0:9897".parse().unwrap());
        assert_eq!(args.freshness, Duration::from_secs(15));
        assert_eq!(args.capture, CaptureMode::Auto);
        assert_eq!(args.ring_bytes, 16 << 20);
        assert_eq!(
            args.pods_file.as_deref(),
            Some(std::path::Path::new("/tmp/p.yaml"))
        );
    }

    #[test]
    fn run_needs_a_discovery_source() {
        let err = Cli::try_parse_from(["loupe", "run"]).unwrap_err();
        assert!(err.to_string().contains("--pods-file"), "{err}");
    }

    #[test]
    fn capture_modes_parse() {
        let cli =
            Cli::try_parse_from(["loupe", "run", "--pods-file", "p", "--capture", "off"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("expected run")
        };
        assert_eq!(args.capture, CaptureMode::Off);
        let err = Cli::try_parse_from(["loupe", "run", "--pods-file", "p", "--capture", "maybe"])
            .unwrap_err();
        assert!(err.to_string().contains("auto"), "{err}");
    }

    #[test]
    fn target_label_flags_parse() {
        use crate::discover::target_labels::{JobRule, PodLabels, TARGET_LABEL_ERRORS};
        let cli = Cli::try_parse_from(["loupe", "run", "--pods-file", "p"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("expected run")
        };
        assert_eq!(args.target_labels(), Default::default());
        let before = TARGET_LABEL_ERRORS.get();
        let cli = Cli::try_parse_from([
            "loupe",
            "run",
            "--pods-file",
            "p",
            "--job-from",
            "label:team",
            "--pod-labels",
            "team,*",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("expected run")
        };
        let rules = args.target_labels();
        assert_eq!(rules.job, JobRule::Label("team".into()));
        // `*` is left out, logged and counted.
        assert_eq!(rules.pod_labels, PodLabels::parse("team").0);
        assert!(TARGET_LABEL_ERRORS.get() > before);
        let err = Cli::try_parse_from(["loupe", "run", "--pods-file", "p", "--job-from", "team"])
            .unwrap_err();
        assert!(err.to_string().contains("label:KEY"), "{err}");
    }

    #[test]
    fn ring_bytes_round_up_to_a_power_of_two_within_u32() {
        assert_eq!(parse_ring_bytes("0").unwrap(), 4096);
        assert_eq!(parse_ring_bytes("5000").unwrap(), 8192);
        assert_eq!(parse_ring_bytes("2147483648").unwrap(), 1 << 31);
        assert!(parse_ring_bytes("2147483649").is_err());
        assert!(parse_ring_bytes("lots").is_err());
    }

    #[test]
    fn access_flags_parse_and_default_to_open() {
        let cli = Cli::try_parse_from(["loupe", "run", "--pods-file", "p"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("expected run")
        };
        assert_eq!(args.authz, Authz::None);
        assert!(!args.tls_self_signed && args.web_config_file.is_none());
        let cli = Cli::try_parse_from([
            "loupe",
            "run",
            "--pods-file",
            "p",
            "--authz",
            "kubernetes",
            "--tls-self-signed",
            "--web-config-file",
            "/etc/web.yml",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("expected run")
        };
        assert_eq!(args.authz, Authz::Kubernetes);
        assert!(args.tls_self_signed);
        let err = Cli::try_parse_from(["loupe", "run", "--pods-file", "p", "--authz", "rbac"])
            .unwrap_err();
        assert!(err.to_string().contains("kubernetes"), "{err}");
    }

    #[test]
    fn seconds_must_be_positive() {
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("abc").is_err());
        assert!(parse_seconds("1e30").is_err(), "no panic on a huge value");
        assert_eq!(parse_seconds("1.5s").unwrap(), Duration::from_millis(1500));
    }
}
