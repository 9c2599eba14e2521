//! Collect: the two ways results reach the store, both through [`crate::ingest`]: replies that
//! capture observed ([`Observer`]), and fetches of the targets without a fresh result when a
//! scrape asks ([`Refresher`], which also keeps fetches of one target from overlapping).

use crate::capture::Exchange;
use crate::discover::{PodKey, TargetKey};
use crate::fetch::{self, OwnPorts, Request};
use crate::ingest::{self, Origin, Outcome, Wanted};
use crate::store::Store;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bodies above this size are validated on the blocking pool, so the capture loop keeps draining
/// the ring buffer meanwhile, and the server's workers keep answering.
const INLINE_DECODE_BYTES: usize = 256 << 10;

/// Takes capture's exchanges into the store.
#[derive(Clone)]
pub struct Observer {
    pub store: Store,
    pub wanted: Wanted,
    /// The agent's default scrape limits.
    pub limits: ingest::Limits,
    pub budget: crate::memory::Budget,
}

impl Observer {
    /// Stores an observed reply for every target it answers (usually one).
    pub fn record(&self, exchange: Exchange) {
        if exchange.method != "GET" {
            return;
        }
        let port = exchange.flow.server.port();
        let keys = self
            .store
            .match_observed(exchange.flow.netns, port, &exchange.path);
        if keys.is_empty() {
            return;
        }
        let this = self.clone();
        let large = exchange.body.len() > INLINE_DECODE_BYTES;
        let work = move || {
            // Rendered with the first target's identity; another target answered by the same
            // reply (rare) has its rendering made at scrape time.
            let target = keys.first().and_then(|k| this.store.identity(k));
            let limits = target
                .as_ref()
                .map_or(this.limits, |(_, pod)| this.limits.for_pod(pod));
            // Replacing every answered target's body: what the first holds is freed (the
            // others' bodies, rarer, are freed too but not counted in advance).
            let intake = ingest::Intake {
                budget: &this.budget,
                freeing: keys.first().map_or(0, |k| this.store.held_by(k)),
            };
            let result = ingest::observed(
                exchange.status,
                exchange.body,
                exchange.content_type.as_deref(),
                target.as_ref().map(|(identity, _)| identity),
                &limits,
                intake,
                &this.wanted,
            );
            for key in &keys {
                this.store.record(
                    key,
                    Outcome {
                        at: exchange.completed_at,
                        origin: Origin::Observed,
                        duration: Duration::ZERO,
                        result: result.clone(),
                    },
                );
            }
        };
        if large {
            tokio::task::spawn_blocking(work);
        } else {
            work();
        }
    }
}

/// How stale targets are fetched.
#[derive(Clone, Debug)]
pub struct Settings {
    /// A result younger than this is served without asking the app.
    pub freshness: Duration,
    pub fetch_timeout: Duration,
    pub max_body_bytes: usize,
    /// The agent's default scrape limits.
    pub limits: ingest::Limits,
    /// The node's memory budget, for bodies being fetched and kept.
    pub budget: crate::memory::Budget,
}

/// What the refresh of stale targets needs.
#[derive(Clone)]
pub struct Refresher {
    pub store: Store,
    pub wanted: Wanted,
    /// The probe's own-flow registry; `None` when running without the probe.
    pub own: Option<Arc<dyn OwnPorts>>,
    pub settings: Settings,
    /// Bounds the fetches in flight (each briefly needs a thread to enter a namespace).
    slots: Arc<tokio::sync::Semaphore>,
    /// Per pod: at most [`POD_SHARE`] of the slots, so that one pod's slow endpoints cannot
    /// hold every slot while other pods wait.
    pod_slots: Arc<Mutex<HashMap<PodKey, Arc<tokio::sync::Semaphore>>>>,
    per_pod: usize,
    /// One per target: serialises fetches of it, so concurrent scrapes wait for the one in
    /// flight and then find its fresh result, instead of each asking the app.
    locks: Arc<Mutex<HashMap<TargetKey, Arc<tokio::sync::Mutex<()>>>>>,
}

/// At most this many fetches run at once, node-wide.
pub const MAX_CONCURRENT_FETCHES: usize = 64;
/// A pod's fetches in flight are at most this part of the slots (4 of 64): at least 16 pods
/// fetch at once whatever the others do.
pub const POD_SHARE: usize = 16;

impl Refresher {
    /// `slots` bounds the fetches in flight ([`MAX_CONCURRENT_FETCHES`] in the agent).
    pub fn new(
        store: Store,
        wanted: Wanted,
        own: Option<Arc<dyn OwnPorts>>,
        settings: Settings,
        slots: usize,
    ) -> Self {
        Refresher {
            store,
            wanted,
            own,
            settings,
            slots: Arc::new(tokio::sync::Semaphore::new(slots)),
            pod_slots: Arc::default(),
            per_pod: (slots / POD_SHARE).max(1),
            locks: Arc::default(),
        }
    }

    /// Fetches every target without a fresh result, in parallel, and waits until `deadline` at
    /// most. Fetches still running then go on and land for the next scrape. Concurrent callers
    /// share the fetches in flight: each target's fetch holds its lock, and a caller that got the
    /// lock after another finds the result fresh and does not ask again.
    pub async fn refresh_stale(
        &self,
        deadline: tokio::time::Instant,
        wanted: impl Fn(&TargetKey) -> bool,
    ) {
        let freshness = self.settings.freshness;
        let mut stale = self.store.stale(Instant::now(), freshness);
        stale.retain(|key| wanted(key));
        let locks = self.locks_of(&stale);
        let pod_slots = self.pod_slots_of(&stale);
        let mut handles = Vec::with_capacity(stale.len());
        for ((key, lock), pod_slots) in stale.into_iter().zip(locks).zip(pod_slots) {
            let this = self.clone();
            handles.push(tokio::spawn(async move {
                let _guard = lock.lock().await;
                if this.store.is_fresh(&key, Instant::now(), freshness) {
                    return;
                }
                // The pod's share first: waiting for it holds none of the node's slots.
                let Ok(_pod_slot) = pod_slots.acquire().await else {
                    return;
                };
                let Ok(_slot) = this.slots.acquire().await else {
                    return;
                };
                this.fetch_one(&key).await;
            }));
        }
        let _ = tokio::time::timeout_at(deadline, async {
            for handle in handles {
                let _ = handle.await;
            }
        })
        .await;
    }

    /// The fetch locks of `keys`; locks of targets that left the store are dropped.
    fn locks_of(&self, keys: &[TargetKey]) -> Vec<Arc<tokio::sync::Mutex<()>>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        if locks.len() > self.store.len() {
            locks.retain(|key, _| self.store.contains(key));
        }
        keys.iter()
            .map(|key| locks.entry(key.clone()).or_default().clone())
            .collect()
    }

    /// The pods' shares of the slots for `keys`; those of pods with no fetch waiting are dropped.
    fn pod_slots_of(&self, keys: &[TargetKey]) -> Vec<Arc<tokio::sync::Semaphore>> {
        let mut pods = self.pod_slots.lock().unwrap_or_else(|e| e.into_inner());
        if pods.len() > self.store.len() {
            pods.retain(|_, share| Arc::strong_count(share) > 1);
        }
        keys.iter()
            .map(|key| {
                pods.entry(key.pod.clone())
                    .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.per_pod)))
                    .clone()
            })
            .collect()
    }

    async fn fetch_one(&self, key: &TargetKey) {
        let Some(resolved) = self.store.resolved(key) else {
            return; // the target went away meanwhile
        };
        let at = Instant::now();
        let (origin, result) = match resolved {
            Err(reason) => (Origin::Unresolved, Err(reason)),
            Ok((netns, cookie)) => {
                let request = Request {
                    netns: &netns,
                    cookie,
                    port: key.port,
                    path: &key.path,
                    timeout: self.settings.fetch_timeout,
                    max_body_bytes: self.settings.max_body_bytes,
                    budget: &self.settings.budget,
                };
                let fetched = fetch::fetch(request, self.own.as_deref()).await;
                let large = fetched
                    .as_ref()
                    .is_ok_and(|f| f.body.len() > INLINE_DECODE_BYTES);
                let this = self.clone();
                let freeing = self.store.held_by(key);
                let target = self.store.identity(key);
                let work = move || {
                    let limits = target.as_ref().map_or(this.settings.limits, |(_, pod)| {
                        this.settings.limits.for_pod(pod)
                    });
                    let identity = target.as_ref().map(|(identity, _)| identity);
                    let intake = ingest::Intake {
                        budget: &this.settings.budget,
                        freeing,
                    };
                    ingest::fetched(fetched, identity, &limits, intake, &this.wanted)
                };
                // A large body is checked on the blocking pool, never on the workers that
                // answer `/healthz`.
                let result = if large {
                    match tokio::task::spawn_blocking(work).await {
                        Ok(result) => result,
                        // As if it had run inline.
                        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                        Err(_) => return, // the runtime is shutting down
                    }
                } else {
                    work()
                };
                (Origin::Fetched, result)
            }
        };
        let outcome = Outcome {
            at,
            origin,
            duration: at.elapsed(),
            result,
        };
        self.store.record(key, outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::{Identity, PodKey};
    use crate::ingest::TargetError;
    use crate::resolve::netns::{testing::scratch, Netns};
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A one-response-per-connection HTTP app inside `netns` on `address`, answering `reply`
    /// after `delay`.
    fn app(
        netns: &Netns,
        address: &'static str,
        reply: Vec<u8>,
        delay: Duration,
    ) -> (u16, Arc<AtomicUsize>) {
        let listener = netns
            .run(|| std::net::TcpListener::bind(address))
            .unwrap()
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                counter.fetch_add(1, Ordering::SeqCst);
                let reply = reply.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let _ = conn.read(&mut buf);
                    std::thread::sleep(delay);
                    let _ = conn.write_all(&reply);
                });
            }
        });
        (port, requests)
    }

    fn response(status: &str, headers: &str, body: &[u8]) -> Vec<u8> {
        let mut r = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    }

    fn setup(reply: Vec<u8>, delay: Duration) -> (Refresher, TargetKey, Arc<AtomicUsize>) {
        setup_on("127.0.0.1:0", reply, delay)
    }

    fn setup_on(
        address: &'static str,
        reply: Vec<u8>,
        delay: Duration,
    ) -> (Refresher, TargetKey, Arc<AtomicUsize>) {
        let netns = scratch();
        let (port, requests) = app(&netns, address, reply, delay);
        let cookie = netns.cookie().unwrap();
        let store = Store::default();
        let key = TargetKey {
            pod: PodKey {
                namespace: "ns".into(),
                name: "pod".into(),
            },
            port,
            path: "/metrics".into(),
        };
        let identity = Identity {
            namespace: "ns".into(),
            pod: "pod".into(),
            container: "app".into(),
            endpoint: "http".into(),
            ..Default::default()
        };
        store.set_targets(vec![(
            key.clone(),
            identity,
            Default::default(),
            Ok((Arc::new(netns), cookie)),
        )]);
        let refresher = Refresher::new(
            store,
            Wanted::default(),
            None,
            Settings {
                freshness: Duration::from_secs(60),
                fetch_timeout: Duration::from_secs(2),
                max_body_bytes: 1 << 20,
                limits: ingest::Limits::default(),
                budget: crate::memory::Budget::default(),
            },
            4,
        );
        (refresher, key, requests)
    }

    fn latest(refresher: &Refresher) -> Outcome {
        refresher.store.view()[0].2.clone().expect("an outcome")
    }

    fn deadline(secs: u64) -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(secs)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pod_with_slow_endpoints_cannot_hold_every_fetch_slot() {
        if !loupe_testkit::root::require(
            "a_pod_with_slow_endpoints_cannot_hold_every_fetch_slot",
            "network namespaces",
        ) {
            return;
        }
        let ok = response("200 OK", "", b"a 1\n");
        let netns = Arc::new(scratch());
        let (slow, _) = app(&netns, "127.0.0.1:0", ok.clone(), Duration::from_secs(4));
        let (quick, _) = app(&netns, "127.0.0.1:0", ok, Duration::ZERO);
        let cookie = netns.cookie().unwrap();
        let target = |pod: &str, port: u16, path: String| {
            let key = TargetKey {
                pod: PodKey {
                    namespace: "ns".into(),
                    name: pod.into(),
                },
                port,
                path,
            };
            let identity = Identity::of_test_pod(pod);
            (
                key,
                identity,
                Default::default(),
                Ok((netns.clone(), cookie)),
            )
        };
        // The greedy pod sorts first: its eight slow endpoints ask first.
        let mut targets: Vec<_> = (0..8)
            .map(|i| target("greedy", slow, format!("/metrics/{i}")))
            .collect();
        targets.push(target("modest", quick, "/metrics".into()));
        let store = Store::default();
        store.set_targets(targets);
        let settings = Settings {
            freshness: Duration::from_secs(60),
            fetch_timeout: Duration::from_secs(10),
            max_body_bytes: 1 << 20,
            limits: ingest::Limits::default(),
            budget: crate::memory::Budget::default(),
        };
        // Four slots: a pod gets one of them.
        let refresher = Refresher::new(store, Wanted::default(), None, settings, 4);
        let started = tokio::time::Instant::now();
        refresher
            .refresh_stale(started + Duration::from_secs(2), |_| true)
            .await;
        let view = refresher.store.view();
        let modest = view
            .iter()
            .find(|(key, _, _)| key.pod.name == "modest")
            .and_then(|(_, _, outcome)| outcome.clone())
            .expect("the modest pod was fetched while the greedy one's endpoints hung");
        assert!(modest.result.is_ok());
        let greedy_done = view
            .iter()
            .filter(|(key, _, outcome)| key.pod.name == "greedy" && outcome.is_some())
            .count();
        assert_eq!(greedy_done, 0, "the slow endpoints were still answering");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_scrapes_share_one_fetch() {
        if !loupe_testkit::root::require("concurrent_scrapes_share_one_fetch", "network namespaces")
        {
            return;
        }
        let reply = response(
            "200 OK",
            "Content-Type: text/plain; version=0.0.4\r\n",
            b"a 1\n",
        );
        let (refresher, _, requests) = setup(reply, Duration::from_millis(200));
        let scrapes: Vec<_> = (0..5)
            .map(|_| {
                let r = refresher.clone();
                tokio::spawn(async move { r.refresh_stale(deadline(5), |_| true).await })
            })
            .collect();
        for s in scrapes {
            s.await.unwrap();
        }
        assert_eq!(
            requests.load(Ordering::SeqCst),
            1,
            "one fetch for five scrapes"
        );
        let outcome = latest(&refresher);
        assert_eq!(outcome.origin, Origin::Fetched);
        let snapshot = outcome.result.expect("good body");
        assert_eq!(&snapshot.body[..], b"a 1\n");
        // Fresh now: another scrape asks nothing.
        refresher.refresh_stale(deadline(5), |_| true).await;
        assert_eq!(requests.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_app_on_the_ipv6_loopback_only_is_fetched_there() {
        if !loupe_testkit::root::require(
            "an_app_on_the_ipv6_loopback_only_is_fetched_there",
            "network namespaces",
        ) {
            return;
        }
        let reply = response("200 OK", "", b"a 1\n");
        let (refresher, _, requests) = setup_on("[::1]:0", reply, Duration::ZERO);
        refresher.refresh_stale(deadline(5), |_| true).await;
        let outcome = latest(&refresher);
        assert_eq!(&outcome.result.expect("good body").body[..], b"a 1\n");
        assert_eq!(requests.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nothing_listening_names_both_loopbacks() {
        if !loupe_testkit::root::require(
            "nothing_listening_names_both_loopbacks",
            "network namespaces",
        ) {
            return;
        }
        let (refresher, key, _) = setup(Vec::new(), Duration::ZERO);
        // Another port of the same namespace, where nothing listens.
        let (_, identity, _) = refresher.store.view().remove(0);
        let resolved = refresher.store.resolved(&key).unwrap();
        let port = if key.port == 1 { 2 } else { 1 };
        let key = TargetKey { port, ..key };
        refresher
            .store
            .set_targets(vec![(key, identity, Default::default(), resolved)]);
        refresher.refresh_stale(deadline(5), |_| true).await;
        let err = latest(&refresher).result.unwrap_err().to_string();
        assert_eq!(
            err,
            format!("nothing listens on 127.0.0.1:{port} or [::1]:{port} (connection refused)")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_error_status_is_a_failed_target() {
        if !loupe_testkit::root::require("an_error_status_is_a_failed_target", "network namespaces")
        {
            return;
        }
        let (refresher, _, _) = setup(
            response("500 Internal Server Error", "", b"oops"),
            Duration::ZERO,
        );
        refresher.refresh_stale(deadline(5), |_| true).await;
        let err = latest(&refresher).result.unwrap_err();
        assert!(matches!(err, TargetError::Status(500)), "{err:?}");
        assert_eq!(err.to_string(), "HTTP status 500");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hanging_app_times_out() {
        if !loupe_testkit::root::require("a_hanging_app_times_out", "network namespaces") {
            return;
        }
        let (mut refresher, _, _) = setup(Vec::new(), Duration::from_secs(3600));
        refresher.settings.fetch_timeout = Duration::from_millis(300);
        refresher.refresh_stale(deadline(5), |_| true).await;
        let err = latest(&refresher).result.unwrap_err().to_string();
        assert!(err.contains("no complete response"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn gzip_bodies_are_decoded_and_oversized_ones_refused() {
        if !loupe_testkit::root::require(
            "gzip_bodies_are_decoded_and_oversized_ones_refused",
            "network namespaces",
        ) {
            return;
        }
        let mut body = b"# TYPE a gauge\n".to_vec();
        for i in 0..1000 {
            body.extend_from_slice(format!("a{{i=\"{i}\"}} 1\n").as_bytes());
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&body).unwrap();
        let reply = response(
            "200 OK",
            "Content-Encoding: gzip\r\n",
            &gz.finish().unwrap(),
        );
        let (mut refresher, _, _) = setup(reply, Duration::ZERO);
        refresher.refresh_stale(deadline(5), |_| true).await;
        assert_eq!(latest(&refresher).result.unwrap().body.len(), body.len());

        refresher.settings.max_body_bytes = 1000;
        refresher.settings.freshness = Duration::ZERO;
        refresher.refresh_stale(deadline(5), |_| true).await;
        let err = latest(&refresher).result.unwrap_err().to_string();
        assert!(err.contains("1000 bytes"), "{err}");
    }
}
