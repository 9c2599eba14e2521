//! Store: the latest result per (pod, endpoint) target, with its age, source, size and error.
//!
//! Serving rule: a target's samples are served while its latest result is good; once a response
//! fails (error status, unparsable body, timeout) the target reports `loupe_target_up 0` and its
//! samples are withheld, as Prometheus itself drops a failed target's series.

use crate::capture::NetnsCookie;
use crate::decode::{self, Format, Rendered};
use crate::discover::PodKey;
use crate::resolve::netns::Netns;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU8, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// One endpoint of one pod.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetKey {
    pub pod: PodKey,
    pub port: u16,
    pub path: String,
}

/// The identity labels every sample of a target gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub endpoint: String,
}

impl Identity {
    /// The labels as the merge takes them.
    pub fn labels(&self) -> decode::IdentityLabels<'_> {
        decode::IdentityLabels {
            namespace: &self.namespace,
            pod: &self.pod,
            container: &self.container,
            endpoint: &self.endpoint,
        }
    }
}

/// Where a body came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Observed on the pod's loopback, answering some other client.
    Observed,
    /// Asked for by loupe itself.
    Fetched,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Observed => "observed",
            Origin::Fetched => "fetched",
        }
    }
}

/// A validated body with its merge index, made once when the body arrives, and its renderings
/// for the merged target (`decode::render_source`: every sample line with the target's identity
/// labels, grouped by family), so that a scrape only decides the merging rules per family and
/// sends slices of these blocks (`decode::merge`), copying none of them.
///
/// Memory: the index is about 32 bytes per sample; a rendering about 1.6x to 1.9x the body (the
/// identity labels repeat on every line), bounded at [`RENDERED_LIMIT_FACTOR`] times the body
/// (plus 64 KiB): a body whose rendering would be larger is rendered at every scrape instead,
/// and counted in `loupe_rendered_oversize_total`. The format scrapers last asked for
/// ([`note_format`]) is rendered when the body arrives, the other one at the first scrape that
/// asks for it; both go with the snapshot when the next body replaces it.
#[derive(Debug)]
pub struct Snapshot {
    pub body: Bytes,
    pub prepared: decode::Prepared,
    /// The identity the renderings are made with.
    identity: Option<Identity>,
    text: OnceLock<Option<Rendered>>,
    open_metrics: OnceLock<Option<Rendered>>,
}

/// A rendering may take this many times its body's size (plus 64 KiB).
pub const RENDERED_LIMIT_FACTOR: usize = 4;

/// The format of the latest scrape of the node target (0 text, 1 OpenMetrics): rendered eagerly
/// when a body arrives.
static LAST_FORMAT: AtomicU8 = AtomicU8::new(0);

/// Records the format a scraper asked for, so that bodies arriving next are rendered for it.
pub fn note_format(format: Format) {
    LAST_FORMAT.store(
        match format {
            Format::Text => 0,
            Format::OpenMetrics => 1,
        },
        AtomicOrdering::Relaxed,
    );
}

fn last_format() -> Format {
    match LAST_FORMAT.load(AtomicOrdering::Relaxed) {
        0 => Format::Text,
        _ => Format::OpenMetrics,
    }
}

impl Snapshot {
    /// Checks a 200 response's body and renders it with `identity` (the target's) for the
    /// format scrapers last asked for. Observed and fetched bodies both come through here.
    pub fn decode(
        body: Bytes,
        content_type: Option<&str>,
        identity: Option<&Identity>,
    ) -> Result<Snapshot, String> {
        let format = Format::from_content_type(content_type);
        let prepared =
            decode::prepare(&body, format).map_err(|e| format!("unparsable body: {e}"))?;
        let snapshot = Snapshot {
            body,
            prepared,
            identity: identity.cloned(),
            text: OnceLock::new(),
            open_metrics: OnceLock::new(),
        };
        snapshot.render(last_format());
        Ok(snapshot)
    }

    pub fn samples(&self) -> usize {
        self.prepared.summary().samples
    }

    /// The rendering for `format` with `identity`, made now if it was not yet. `None` when the
    /// snapshot was made for another identity (the target's changed, or one observed reply
    /// answered several targets) or the rendering would pass the bound: the merge then renders
    /// the body itself.
    pub fn rendered(&self, identity: &Identity, format: Format) -> Option<&Rendered> {
        if self.identity.as_ref() != Some(identity) {
            return None;
        }
        self.render(format)
    }

    fn render(&self, format: Format) -> Option<&Rendered> {
        let identity = self.identity.as_ref()?;
        let cell = match format {
            Format::Text => &self.text,
            Format::OpenMetrics => &self.open_metrics,
        };
        cell.get_or_init(|| {
            decode::render_within(
                &self.body,
                &self.prepared,
                Some(identity.labels()),
                format,
                self.body.len() * RENDERED_LIMIT_FACTOR + 64 * 1024,
            )
        })
        .as_ref()
    }
}

/// Where a target's namespace is, or why it could not be found.
pub type Resolved = Result<(Arc<Netns>, NetnsCookie), String>;

/// The latest response of a target, good or not.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub at: Instant,
    pub origin: Origin,
    /// How long the request took (fetched), or zero when only the reply was observed.
    pub duration: Duration,
    pub result: Result<Arc<Snapshot>, String>,
}

#[derive(Debug)]
pub struct Target {
    pub identity: Identity,
    pub resolved: Resolved,
    pub latest: Option<Outcome>,
    /// Serialises fetches of this target: concurrent scrapes wait for the one in flight and then
    /// find its fresh result, instead of each asking the app.
    pub fetch_lock: Arc<tokio::sync::Mutex<()>>,
}

impl Target {
    fn cookie(&self) -> Option<NetnsCookie> {
        self.resolved.as_ref().ok().map(|(_, c)| *c)
    }

    pub fn is_fresh(&self, now: Instant, freshness: Duration) -> bool {
        self.latest
            .as_ref()
            .is_some_and(|o| now.saturating_duration_since(o.at) < freshness)
    }
}

#[derive(Default)]
struct Inner {
    targets: BTreeMap<TargetKey, Target>,
    /// (namespace cookie, server port) -> targets on that port, for matching observed replies.
    by_port: HashMap<(NetnsCookie, u16), Vec<TargetKey>>,
}

/// Shared by the capture loop, the fetch path and the HTTP server.
#[derive(Clone, Default)]
pub struct Store {
    inner: Arc<Mutex<Inner>>,
}

impl Store {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `targets` the complete set of targets; results of targets that stay are kept,
    /// and targets that are gone vanish with their series at once.
    pub fn set_targets(&self, targets: Vec<(TargetKey, Identity, Resolved)>) {
        let mut inner = self.lock();
        let mut old = std::mem::take(&mut inner.targets);
        inner.by_port.clear();
        for (key, identity, resolved) in targets {
            let cookie = resolved.as_ref().ok().map(|(_, c)| *c);
            let target = match old.remove(&key) {
                Some(mut t) if t.cookie() == cookie && cookie.is_some() => {
                    t.identity = identity;
                    t.resolved = resolved;
                    t
                }
                // New target, or the pod's namespace changed (restarted pod): start afresh.
                _ => Target {
                    identity,
                    resolved,
                    latest: None,
                    fetch_lock: Arc::default(),
                },
            };
            if let Some(cookie) = cookie {
                inner
                    .by_port
                    .entry((cookie, key.port))
                    .or_default()
                    .push(key.clone());
            }
            inner.targets.insert(key, target);
        }
    }

    /// The identity labels of a target.
    pub fn identity(&self, key: &TargetKey) -> Option<Identity> {
        self.lock().targets.get(key).map(|t| t.identity.clone())
    }

    /// The namespace to fetch a target from.
    pub fn resolved(&self, key: &TargetKey) -> Option<Resolved> {
        self.lock().targets.get(key).map(|t| t.resolved.clone())
    }

    /// Targets listening on `port` in the namespace `cookie` whose path is `path`.
    pub fn match_observed(&self, cookie: NetnsCookie, port: u16, path: &str) -> Vec<TargetKey> {
        let path = path.split('?').next().unwrap_or(path);
        let inner = self.lock();
        inner
            .by_port
            .get(&(cookie, port))
            .map(|keys| keys.iter().filter(|k| k.path == path).cloned().collect())
            .unwrap_or_default()
    }

    /// Records a response. An observed reply never replaces a newer result.
    pub fn record(&self, key: &TargetKey, outcome: Outcome) {
        let mut inner = self.lock();
        if let Some(target) = inner.targets.get_mut(key) {
            if target.latest.as_ref().is_some_and(|l| l.at > outcome.at) {
                return;
            }
            let previous = target.latest.as_ref().map(|l| l.result.as_ref().err());
            match (&outcome.result, previous) {
                // Log changes of state only, not every failed scrape of a broken app.
                (Err(reason), prev) if prev != Some(Some(reason)) => log::warn!(
                    "pod {} endpoint {} ({}:{}{}): {} response failed: {reason}",
                    key.pod,
                    target.identity.endpoint,
                    target.identity.container,
                    key.port,
                    key.path,
                    outcome.origin.as_str(),
                ),
                (Ok(_), Some(Some(_))) => log::info!(
                    "pod {} endpoint {}: recovered",
                    key.pod,
                    target.identity.endpoint
                ),
                _ => {}
            }
            target.latest = Some(outcome);
        }
    }

    /// Keys of targets without a result younger than `freshness`, with their fetch locks.
    pub fn stale(
        &self,
        now: Instant,
        freshness: Duration,
    ) -> Vec<(TargetKey, Arc<tokio::sync::Mutex<()>>)> {
        let inner = self.lock();
        inner
            .targets
            .iter()
            .filter(|(_, t)| !t.is_fresh(now, freshness))
            .map(|(k, t)| (k.clone(), t.fetch_lock.clone()))
            .collect()
    }

    pub fn is_fresh(&self, key: &TargetKey, now: Instant, freshness: Duration) -> bool {
        let inner = self.lock();
        inner
            .targets
            .get(key)
            .is_some_and(|t| t.is_fresh(now, freshness))
    }

    /// A copy of every target's identity and latest result, in stable order.
    pub fn view(&self) -> Vec<(TargetKey, Identity, Option<Outcome>)> {
        let inner = self.lock();
        inner
            .targets
            .iter()
            .map(|(k, t)| (k.clone(), t.identity.clone(), t.latest.clone()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.lock().targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(pod: &str, port: u16) -> TargetKey {
        TargetKey {
            pod: PodKey {
                namespace: "ns".into(),
                name: pod.into(),
            },
            port,
            path: "/metrics".into(),
        }
    }

    fn identity(pod: &str) -> Identity {
        Identity {
            namespace: "ns".into(),
            pod: pod.into(),
            container: String::new(),
            endpoint: "8080".into(),
        }
    }

    fn ns(cookie: NetnsCookie) -> Resolved {
        Ok((Arc::new(Netns::current().unwrap()), cookie))
    }

    fn good(at: Instant, origin: Origin) -> Outcome {
        Outcome {
            at,
            origin,
            duration: Duration::ZERO,
            result: Ok(Arc::new(
                Snapshot::decode(Bytes::from_static(b"a 1\n"), None, Some(&identity("a"))).unwrap(),
            )),
        }
    }

    #[test]
    fn snapshots_render_for_their_identity_only() {
        let body = Bytes::from_static(b"# TYPE a gauge\na{x=\"1\"} 1\n");
        let snap = Snapshot::decode(body.clone(), None, Some(&identity("a"))).unwrap();
        for format in [Format::Text, Format::OpenMetrics] {
            let r = snap.rendered(&identity("a"), format).expect("rendered");
            assert_eq!(r.format(), format);
            assert!(r.heap_bytes() > 0);
        }
        assert!(snap.rendered(&identity("b"), Format::Text).is_none());
        let anonymous = Snapshot::decode(body, None, None).unwrap();
        assert!(anonymous.rendered(&identity("a"), Format::Text).is_none());
        // A rendering past the bound is not kept: short lines, a long identity.
        let mut long = identity("a");
        long.pod = "p".repeat(70_000);
        let tiny = Snapshot::decode(Bytes::from_static(b"a 1\n"), None, Some(&long)).unwrap();
        assert!(tiny.rendered(&long, Format::Text).is_none());
    }

    #[test]
    fn observed_replies_match_by_namespace_port_and_path() {
        let store = Store::default();
        store.set_targets(vec![
            (key("a", 8080), identity("a"), ns(1)),
            (key("b", 8080), identity("b"), ns(2)),
        ]);
        assert_eq!(
            store.match_observed(1, 8080, "/metrics?x=1"),
            vec![key("a", 8080)]
        );
        assert!(store.match_observed(1, 8080, "/other").is_empty());
        assert!(store.match_observed(3, 8080, "/metrics").is_empty());
    }

    #[test]
    fn removed_targets_vanish_and_kept_ones_keep_their_result() {
        let store = Store::default();
        store.set_targets(vec![
            (key("a", 1), identity("a"), ns(1)),
            (key("b", 1), identity("b"), ns(1)),
        ]);
        let now = Instant::now();
        store.record(&key("a", 1), good(now, Origin::Fetched));
        store.set_targets(vec![(key("a", 1), identity("a"), ns(1))]);
        let view = store.view();
        assert_eq!(view.len(), 1);
        assert!(view[0].2.is_some());
        // Same pod, new namespace (pod restarted): the old result must not carry over.
        store.set_targets(vec![(key("a", 1), identity("a"), ns(9))]);
        assert!(store.view()[0].2.is_none());
    }

    #[test]
    fn freshness_and_ordering_of_results() {
        let store = Store::default();
        store.set_targets(vec![(key("a", 1), identity("a"), ns(1))]);
        let t0 = Instant::now();
        let fresh = Duration::from_secs(10);
        assert_eq!(store.stale(t0, fresh).len(), 1);
        store.record(
            &key("a", 1),
            good(t0 + Duration::from_secs(5), Origin::Fetched),
        );
        assert!(store.is_fresh(&key("a", 1), t0 + Duration::from_secs(6), fresh));
        assert!(!store.is_fresh(&key("a", 1), t0 + Duration::from_secs(16), fresh));
        // An older observation arriving late does not replace the newer fetch.
        store.record(&key("a", 1), good(t0, Origin::Observed));
        assert_eq!(store.view()[0].2.as_ref().unwrap().origin, Origin::Fetched);
    }
}
