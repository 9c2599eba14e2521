//! `loupe`: load the probe (unless fetch-only), discover pods, attach, serve, wait for a signal.

use clap::Parser;
use loupe_agent::capture::{self, flow::FlowLimits, probe};
use loupe_agent::cli::{Cli, Command, RunArgs};
use loupe_agent::cmd;
use loupe_agent::collect::{Observer, Refresher, Settings, MAX_CONCURRENT_FETCHES};
use loupe_agent::discover::{kubernetes, pods_file, Pod};
use loupe_agent::expose::{ConnectionLimits, Server};
use loupe_agent::fetch::OwnPorts;
use loupe_agent::ingest::Wanted;
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
        Command::Run(args) => run(args).await,
        Command::Doctor => return cmd::doctor::run(),
        Command::Status(args) => return cmd::status::run(&args.url).await,
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
    let settings = Settings {
        freshness: args.freshness,
        fetch_timeout: args.fetch_timeout,
        max_body_bytes: args.max_body_bytes,
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
        let limits = FlowLimits {
            max_body_bytes: args.max_body_bytes,
            ..FlowLimits::default()
        };
        let observer = Observer {
            store: store.clone(),
            wanted,
        };
        capture::spawn_observer(probe, detached_rx, move |e| observer.record(e), limits)?;
    }

    let (pods_tx, mut pods_rx) = watch::channel(Vec::<Pod>::new());
    let discovery = match &args.pods_file {
        Some(path) => tokio::spawn(pods_file::watch(path.clone(), pods_tx)),
        None => {
            let config = kubernetes::KubeConfig {
                node_name: args.node_name.clone().unwrap_or_default(),
                kubeconfig: args.kubeconfig.clone(),
                sidecar_stats: args.sidecar_stats,
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
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    log::info!("serving the node target on http://{}/metrics", args.listen);
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
