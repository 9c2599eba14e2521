//! Store: the table of targets, each with its identity, its namespace and its latest result
//! (what [`crate::ingest`] made of the latest reply), looked up by key or, for observed replies,
//! by (namespace cookie, port). Nothing else: results are made by ingest, fetches are serialised
//! by the refresher in `collect`, formats are the server's.
//!
//! Serving rule: a target's samples are served while its latest result is good; once a response
//! fails (error status, unparsable body, timeout) the target reports `loupe_target_up 0` and its
//! samples are withheld, as Prometheus itself drops a failed target's series.

use crate::discover::{Identity, Limits, TargetKey};
use crate::ingest::{Outcome, TargetError};
use crate::resolve::netns::Netns;
use crate::resolve::NetnsCookie;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Where a target's namespace is, or why it could not be found.
pub type Resolved = Result<(Arc<Netns>, NetnsCookie), TargetError>;

#[derive(Debug)]
pub struct Target {
    pub identity: Identity,
    /// The pod's own scrape limits (over the agent's defaults).
    pub limits: Limits,
    pub resolved: Resolved,
    pub latest: Option<Outcome>,
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
    pub fn set_targets(&self, targets: Vec<(TargetKey, Identity, Limits, Resolved)>) {
        let mut inner = self.lock();
        let mut old = std::mem::take(&mut inner.targets);
        inner.by_port.clear();
        for (key, identity, limits, resolved) in targets {
            let cookie = resolved.as_ref().ok().map(|(_, c)| *c);
            let target = match old.remove(&key) {
                Some(mut t) if t.cookie() == cookie && cookie.is_some() => {
                    t.identity = identity;
                    t.limits = limits;
                    t.resolved = resolved;
                    t
                }
                // New target, or the pod's namespace changed (restarted pod): start afresh.
                _ => Target {
                    identity,
                    limits,
                    resolved,
                    latest: None,
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

    /// The identity labels and the pod's limits of a target: what ingest checks a body with.
    pub fn identity(&self, key: &TargetKey) -> Option<(Identity, Limits)> {
        self.lock()
            .targets
            .get(key)
            .map(|t| (t.identity.clone(), t.limits))
    }

    /// What the target's latest good body holds of the memory budget (freed when a new body
    /// replaces it).
    pub fn held_by(&self, key: &TargetKey) -> usize {
        let inner = self.lock();
        let latest = inner.targets.get(key).and_then(|t| t.latest.as_ref());
        latest
            .and_then(|o| o.result.as_ref().ok())
            .map_or(0, |s| s.held_bytes())
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

    /// Records a result. An observed reply never replaces a newer result. Logs changes of state
    /// only, not every failed scrape of a broken app.
    pub fn record(&self, key: &TargetKey, outcome: Outcome) {
        let mut inner = self.lock();
        if let Some(target) = inner.targets.get_mut(key) {
            if target.latest.as_ref().is_some_and(|l| l.at > outcome.at) {
                return;
            }
            let previous = target
                .latest
                .as_ref()
                .map(|l| l.result.as_ref().err().map(ToString::to_string));
            match (&outcome.result, previous) {
                (Err(reason), prev) if prev != Some(Some(reason.to_string())) => {
                    events::target_failed(key, &target.identity, outcome.origin, reason)
                }
                (Ok(_), Some(Some(_))) => events::target_recovered(key, &target.identity),
                _ => {}
            }
            target.latest = Some(outcome);
        }
    }

    /// Keys of targets without a result younger than `freshness`.
    pub fn stale(&self, now: Instant, freshness: Duration) -> Vec<TargetKey> {
        let inner = self.lock();
        inner
            .targets
            .iter()
            .filter(|(_, t)| !t.is_fresh(now, freshness))
            .map(|(k, _)| k.clone())
            .collect()
    }

    pub fn contains(&self, key: &TargetKey) -> bool {
        self.lock().targets.contains_key(key)
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

/// The store's log lines: a target's state changes.
mod events {
    use crate::discover::{Identity, TargetKey};
    use crate::ingest::{Origin, TargetError};

    pub(super) fn target_failed(
        key: &TargetKey,
        identity: &Identity,
        origin: Origin,
        reason: &TargetError,
    ) {
        let what = match origin.source() {
            Some(source) => format!("{source} response failed"),
            None => "not resolved".into(),
        };
        log::warn!(
            "pod {} endpoint {} ({}:{}{}): {what}: {reason}",
            key.pod,
            identity.endpoint,
            identity.container,
            key.port,
            key.path,
        );
    }

    pub(super) fn target_recovered(key: &TargetKey, identity: &Identity) {
        log::info!("pod {} endpoint {}: recovered", key.pod, identity.endpoint);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::PodKey;
    use crate::ingest::{self, Origin, Wanted};

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
        Identity::of_test_pod(pod)
    }

    fn ns(cookie: NetnsCookie) -> Resolved {
        Ok((Arc::new(Netns::current().unwrap()), cookie))
    }

    fn good(at: Instant, origin: Origin) -> Outcome {
        Outcome {
            at,
            origin,
            duration: Duration::ZERO,
            result: ingest::observed(
                200,
                bytes::Bytes::from_static(b"a 1\n"),
                None,
                Some(&identity("a")),
                &ingest::Limits::default(),
                ingest::Intake {
                    budget: &crate::memory::Budget::default(),
                    freeing: 0,
                },
                &Wanted::default(),
            ),
        }
    }

    #[test]
    fn observed_replies_match_by_namespace_port_and_path() {
        let store = Store::default();
        store.set_targets(vec![
            (key("a", 8080), identity("a"), Limits::default(), ns(1)),
            (key("b", 8080), identity("b"), Limits::default(), ns(2)),
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
            (key("a", 1), identity("a"), Limits::default(), ns(1)),
            (key("b", 1), identity("b"), Limits::default(), ns(1)),
        ]);
        let now = Instant::now();
        store.record(&key("a", 1), good(now, Origin::Fetched));
        store.set_targets(vec![(key("a", 1), identity("a"), Limits::default(), ns(1))]);
        let view = store.view();
        assert_eq!(view.len(), 1);
        assert!(view[0].2.is_some());
        // Same pod, new namespace (pod restarted): the old result must not carry over.
        store.set_targets(vec![(key("a", 1), identity("a"), Limits::default(), ns(9))]);
        assert!(store.view()[0].2.is_none());
    }

    #[test]
    fn freshness_and_ordering_of_results() {
        let store = Store::default();
        store.set_targets(vec![(key("a", 1), identity("a"), Limits::default(), ns(1))]);
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
