//! `loupe`: load the probe (unless fetch-only), discover pods, attach, serve, wait for a signal.

use clap::Parser;
use loupe_agent::capture::{self, flow::FlowLimits, probe};
use loupe_agent::cli::{Authz, Cli, Command, RunArgs};
use loupe_agent::cmd;
use loupe_agent::collect::{Observer, Refresher, Settings, MAX_CONCURRENT_FETCHES};
use loupe_agent::discover::{kubernetes, pods_file, Pod};
use loupe_agent::expose::{authz, tls, web_config, ConnectionLimits, Server};
use loupe_agent::fetch::OwnPorts;
use loupe_agent::ingest::Wanted;
use loupe_agent::memory::Budget;
use loupe_agent::node::{self, Node};
use loupe_agent::store::Store;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// Pods are re-resolved this often even without a discovery change (a process may have died).
const REAPPLY: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(*args).await,
        Command::Doctor => return cmd::doctor::run(),
        Command::Status(args) => return cmd::status::run(&args).await,
        Command::Capture(args) => return cmd::capture::run(&args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> Result<(), Box<dyn std::error::Error>> {
    // Who may read comes first: a broken web config stops the agent before it touches a pod.
    let reviewer = match args.authz {
        Authz::None => None,
        Authz::Kubernetes => {
            let client = kubernetes::client(args.kubeconfig.as_deref()).await?;
            Some(Arc::new(authz::Reviewer::new(client)))
        }
    };
    let self_signed = match args.tls_self_signed {
        true => Some(
            tls::self_signed(certificate_names())
                .map_err(|e| format!("--tls-self-signed: cannot make a certificate: {e}"))?,
        ),
        false => None,
    };
    let (web, reloader) = web_config::Current::load(web_config::Sources {
        file: args.web_config_file.clone(),
        self_signed,
        bearer_tokens: reviewer.is_some(),
    })?;
    tokio::spawn(reloader.run());
    let probe_config = probe::ProbeConfig {
        ring_bytes: args.ring_bytes,
        ..Default::default()
    };
    let mut probe = node::load_probe(args.capture, &probe_config)?;
    let capturing = probe.is_some();
    let store = Store::default();
    let wanted = Wanted::default();
    let own = probe
        .as_ref()
        .map(|p| Arc::new(p.own_flows()) as Arc<dyn OwnPorts>);
    let budget = Budget::new(node::memory_budget(args.memory_limit));
    log::info!(
        "memory budget for pods' bodies: {} bytes{}",
        budget.limit(),
        if budget.limit() == 0 {
            " (none: no memory limit found)"
        } else {
            ""
        }
    );
    let settings = Settings {
        freshness: args.freshness,
        fetch_timeout: args.fetch_timeout,
        max_body_bytes: args.max_body_bytes,
        limits: args.limits(),
        budget: budget.clone(),
    };
    let refresher = Refresher::new(
        store.clone(),
        wanted.clone(),
        own,
        settings,
        MAX_CONCURRENT_FETCHES,
    );
    let (detached_tx, detached_rx) = tokio::sync::mpsc::channel(node::DETACH_QUEUE);
    if let Some(probe) = &mut probe {
        let limits = FlowLimits::within(&budget, args.max_body_bytes);
        let observer = Observer {
            store: store.clone(),
            wanted,
            limits: args.limits(),
            budget,
        };
        capture::spawn_observer(probe, detached_rx, move |e| observer.record(e), limits)?;
    }

    let (pods_tx, mut pods_rx) = watch::channel(Vec::<Pod>::new());
    let target_labels = args.target_labels();
    let discovery = match &args.pods_file {
        Some(path) => tokio::spawn(pods_file::watch(path.clone(), target_labels, pods_tx)),
        None => {
            let config = kubernetes::KubeConfig {
                node_name: args.node_name.clone().unwrap_or_default(),
                kubeconfig: args.kubeconfig.clone(),
                sidecar_stats: args.sidecar_stats,
                target_labels,
            };
            tokio::spawn(async move {
                if let Err(e) = kubernetes::run(config, pods_tx).await {
                    log::error!("kubernetes discovery: {e}");
                }
            })
        }
    };

    let ready = Arc::new(AtomicBool::new(false));
    let server = Arc::new(Server {
        refresher,
        ready: ready.clone(),
        connections: ConnectionLimits::default(),
        web: web.clone(),
        reviewer,
        merges: Default::default(),
    });
    let listener = loupe_agent::expose::listen(args.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let scheme = if web.get().tls.is_some() {
        "https"
    } else {
        "http"
    };
    log::info!(
        "serving the node target on {scheme}://{}/metrics (authz: {:?})",
        args.listen,
        args.authz
    );
    tokio::spawn(server.serve(listener));

    let mut node = Node::new(probe, store, detached_tx);
    let mut reapply = tokio::time::interval(REAPPLY);
    // The ring-buffer drop counters live in the kernel; with a probe, loupe's copies are brought
    // up to date every second.
    let mut ring_drops = tokio::time::interval(Duration::from_secs(1));
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            changed = pods_rx.changed() => {
                if changed.is_err() {
                    discovery.abort();
                    return Err("discovery stopped (see the error above)".into());
                }
                let pods = pods_rx.borrow_and_update().clone();
                tokio::task::block_in_place(|| node.apply(&pods));
                ready.store(true, Ordering::Relaxed);
            }
            _ = reapply.tick() => {
                let pods = pods_rx.borrow().clone();
                tokio::task::block_in_place(|| node.apply(&pods));
            }
            _ = ring_drops.tick(), if capturing => node.count_ring_drops(),
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    log::info!("stopping: detaching from every pod namespace");
    drop(node);
    Ok(())
}

/// The names the self-signed certificate is for: loopback, the pod's name and IP (downward API).
fn certificate_names() -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    for var in ["HOSTNAME", "POD_IP", "NODE_NAME"] {
        if let Ok(value) = std::env::var(var) {
            if !value.is_empty() && !names.contains(&value) {
                names.push(value);
            }
        }
    }
    names
}
