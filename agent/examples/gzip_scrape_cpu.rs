//! Agent CPU of one whole gzip scrape's answer (issue 14): `expose::Server::render_answer`, what
//! `/metrics` runs on a blocking thread (loupe's own series, the merge, the gzip members), over a
//! store of `pods` x `series` (default 1,000 x 1,000: the 1M-series node of BENCHMARKS.md),
//! with and without gzip, and making the stored members at the first gzip scrape:
//!
//!     cargo run --release -p loupe-agent --example gzip_scrape_cpu [pods] [series]

use std::io::Read as _;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use loupe_agent::collect::{Refresher, Settings, MAX_CONCURRENT_FETCHES};
use loupe_agent::decode::{Escaping, Format};
use loupe_agent::discover::{Identity, PodKey, TargetKey};
use loupe_agent::expose::{web_config, Server, View};
use loupe_agent::ingest::{self, Origin, Outcome, TargetError, Wanted};
use loupe_agent::resolve::ResolveError;
use loupe_agent::store::Store;
use loupe_testkit::bodies::{body, pod_name, Spec};

/// CPU time of this process (all threads).
fn cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let pods: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let series: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let store = Store::default();
    let targets: Vec<(TargetKey, Identity)> = (0..pods)
        .map(|p| {
            let (namespace, name) = pod_name(p);
            let identity = Identity {
                namespace: namespace.clone(),
                pod: name.clone(),
                container: "app".into(),
                endpoint: "http-metrics".into(),
                ..Default::default()
            };
            let key = TargetKey {
                pod: PodKey { namespace, name },
                port: 8080,
                path: "/metrics".into(),
            };
            (key, identity)
        })
        .collect();
    store.set_targets(
        targets
            .iter()
            .map(|(k, i)| {
                let none = ResolveError::NoProcess(vec!["example".into()]);
                (
                    k.clone(),
                    i.clone(),
                    Default::default(),
                    Err(TargetError::from(none)),
                )
            })
            .collect(),
    );
    let mut input = 0;
    let (mut render_cpu, mut gzip_cpu) = (Duration::ZERO, Duration::ZERO);
    let plain_wanted = Wanted::default();
    let gzip_wanted = Wanted::default();
    gzip_wanted.mark(Format::Text, true);
    for (p, (key, identity)) in targets.iter().enumerate() {
        let b = Bytes::from(body(&Spec::pod(p, series, loupe_testkit::Format::Text)));
        input += b.len();
        let check = |wanted: &Wanted| {
            ingest::check(
                b.clone(),
                Some("text/plain; version=0.0.4"),
                Some(identity),
                &Default::default(),
                ingest::Intake {
                    budget: &Default::default(),
                    freeing: 0,
                },
                wanted,
            )
            .expect("valid")
        };
        // Ingest's cost with and without the members, for the record; the store keeps the
        // plain one (the members are made at the first gzip scrape below).
        let c = cpu();
        let _ = check(&gzip_wanted);
        gzip_cpu += cpu() - c;
        let c = cpu();
        let snapshot = check(&plain_wanted);
        render_cpu += cpu() - c;
        store.record(
            key,
            Outcome {
                at: Instant::now(),
                origin: Origin::Observed,
                duration: Duration::ZERO,
                result: Ok(Arc::new(snapshot)),
            },
        );
    }
    println!(
        "{pods} pods x {series} series, {:.1} MiB of bodies; ingest (check, index, text \
         rendering): {:.1} ms, with gzip members: {:.1} ms, i.e. {:.3} ms more per body",
        input as f64 / 1048576.0,
        render_cpu.as_secs_f64() * 1e3,
        gzip_cpu.as_secs_f64() * 1e3,
        (gzip_cpu.as_secs_f64() - render_cpu.as_secs_f64()) * 1e3 / pods as f64
    );
    let server = Server {
        refresher: Refresher::new(
            store,
            Wanted::default(),
            None,
            Settings {
                freshness: Duration::from_secs(24 * 3600),
                fetch_timeout: Duration::from_secs(10),
                max_body_bytes: 64 << 20,
                limits: Default::default(),
                budget: Default::default(),
            },
            MAX_CONCURRENT_FETCHES,
        ),
        ready: Arc::new(AtomicBool::new(true)),
        connections: Default::default(),
        web: web_config::Current::plain(),
        reviewer: None,
        merges: Default::default(),
    };
    let measure = |what: &str, gzip: bool, runs: usize| {
        let mut best = Duration::MAX;
        let mut size = 0;
        let mut answer = Vec::new();
        for _ in 0..runs {
            let c = cpu();
            let chunks =
                server.render_answer(Format::Text, Escaping::Underscores, &View::Node, gzip);
            best = best.min(cpu() - c);
            size = chunks.iter().map(Bytes::len).sum::<usize>();
            answer = chunks;
        }
        println!(
            "{what}: {:.1} ms of agent CPU (best of {runs}), {size} bytes in {} chunks",
            best.as_secs_f64() * 1e3,
            answer.len()
        );
        answer
    };
    measure("plain scrape (text)", false, 5);
    measure("first gzip scrape (makes the members)", true, 1);
    let zipped = measure("gzip scrape (text)", true, 5);
    // What it holds, and one gzip stream of it for comparison.
    let joined = zipped.concat();
    let mut plain = Vec::new();
    flate2::read::MultiGzDecoder::new(&joined[..])
        .read_to_end(&mut plain)
        .expect("gzip");
    for level in [1, 6] {
        let c = cpu();
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
        std::io::Write::write_all(&mut e, &plain).expect("write");
        let one = e.finish().expect("finish").len();
        println!(
            "one gzip stream at level {level}: {one} bytes ({:.1} ms); the members are {:.3}x it",
            (cpu() - c).as_secs_f64() * 1e3,
            joined.len() as f64 / one as f64
        );
    }
}
