//! `--authz kubernetes`: who may read what, decided by the API server as the kubelet and
//! kube-rbac-proxy do. The bearer token is reviewed (TokenReview), then the reviewed user is
//! checked against each thing the request reads (SubjectAccessReview): RBAC stays the one place
//! that says who reads what.
//!
//! Decisions are remembered briefly, so a Prometheus scraping every 15 s costs the API server
//! one TokenReview and one SubjectAccessReview per token and view every [`ALLOWED_TTL`]:
//! allowed answers for [`ALLOWED_TTL`], refusals for [`DENIED_TTL`] (a role just granted applies
//! soon). Each table holds at most [`MAX_ENTRIES`]; when full and nothing expired, the decision is
//! not remembered (and counted). When the API server cannot be asked and nothing is remembered,
//! the request is refused (503): closed, never open.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use ring::digest;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

crate::telemetry::counter!(
    pub TOKEN_REVIEWS,
    "loupe_authz_token_reviews_total",
    "TokenReviews sent to the API server (--authz kubernetes).",
);
crate::telemetry::counter!(
    pub ACCESS_REVIEWS,
    "loupe_authz_access_reviews_total",
    "SubjectAccessReviews sent to the API server (--authz kubernetes).",
);
crate::telemetry::counter!(
    pub REVIEW_FAILURES,
    "loupe_authz_review_failures_total",
    "Reviews the API server did not answer; the request was refused (503).",
);
crate::telemetry::counter!(
    pub NOT_REMEMBERED,
    "loupe_authz_decisions_not_remembered_total",
    "Decisions not cached because the cache was full of live entries.",
);

pub const ALLOWED_TTL: Duration = Duration::from_secs(60);
pub const DENIED_TTL: Duration = Duration::from_secs(10);
pub const MAX_ENTRIES: usize = 4096;
/// One review's time limit: a scrape must not wait on a stuck API server.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// One thing a request reads, as RBAC names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// `/metrics` (the node view) or `/targets`.
    Path(&'static str),
    /// A namespace view: what `kubectl top pod -n NAMESPACE` needs.
    NamespacePods(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// The token is not one the API server knows (401).
    Unauthenticated,
    /// Known, but not allowed this (403): what was refused.
    Denied(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("{what}: the API server did not answer: {reason}")]
    Unanswered { what: &'static str, reason: String },
}

type TokenKey = [u8; 32];

/// A cache entry: what was decided, until when.
struct Entry<T> {
    value: T,
    until: Instant,
}

struct Table<K, T> {
    entries: HashMap<K, Entry<T>>,
}

impl<K: std::hash::Hash + Eq, T: Clone> Table<K, T> {
    fn get(&self, key: &K, now: Instant) -> Option<T> {
        self.entries
            .get(key)
            .filter(|e| e.until > now)
            .map(|e| e.value.clone())
    }

    fn put(&mut self, key: K, value: T, ttl: Duration, now: Instant) {
        if self.entries.len() >= MAX_ENTRIES && !self.entries.contains_key(&key) {
            self.entries.retain(|_, e| e.until > now);
            if self.entries.len() >= MAX_ENTRIES {
                NOT_REMEMBERED.inc();
                return;
            }
        }
        self.entries.insert(
            key,
            Entry {
                value,
                until: now + ttl,
            },
        );
    }
}

impl<K, T> Default for Table<K, T> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
        }
    }
}

pub struct Reviewer {
    client: kube::Client,
    /// Token (hashed: the cache never holds a token) to its user, or None: unknown token.
    users: Mutex<Table<TokenKey, Option<UserInfo>>>,
    decisions: Mutex<Table<(TokenKey, Access), bool>>,
}

impl Reviewer {
    pub fn new(client: kube::Client) -> Reviewer {
        Reviewer {
            client,
            users: Mutex::default(),
            decisions: Mutex::default(),
        }
    }

    /// Whether `token` may read every one of `asks`.
    pub async fn decide(&self, token: &str, asks: &[Access]) -> Result<Verdict, ReviewError> {
        let key = token_key(token);
        let Some(user) = self.user(token, key).await? else {
            return Ok(Verdict::Unauthenticated);
        };
        for ask in asks {
            if !self.allowed(&user, key, ask).await? {
                return Ok(Verdict::Denied(describe(ask)));
            }
        }
        Ok(Verdict::Allowed)
    }

    async fn user(&self, token: &str, key: TokenKey) -> Result<Option<UserInfo>, ReviewError> {
        let now = Instant::now();
        if let Some(user) = lock(&self.users).get(&key, now) {
            return Ok(user);
        }
        TOKEN_REVIEWS.inc();
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                ..TokenReviewSpec::default()
            },
            ..TokenReview::default()
        };
        let answer = ask("TokenReview", async {
            Api::<TokenReview>::all(self.client.clone())
                .create(&PostParams::default(), &review)
                .await
        })
        .await?;
        let status = answer.status.unwrap_or_default();
        let user = match (status.authenticated, status.user) {
            (Some(true), Some(user)) => Some(user),
            _ => None,
        };
        let ttl = if user.is_some() {
            ALLOWED_TTL
        } else {
            DENIED_TTL
        };
        lock(&self.users).put(key, user.clone(), ttl, Instant::now());
        Ok(user)
    }

    async fn allowed(
        &self,
        user: &UserInfo,
        key: TokenKey,
        access: &Access,
    ) -> Result<bool, ReviewError> {
        let cache_key = (key, access.clone());
        if let Some(allowed) = lock(&self.decisions).get(&cache_key, Instant::now()) {
            return Ok(allowed);
        }
        ACCESS_REVIEWS.inc();
        let mut spec = SubjectAccessReviewSpec {
            user: user.username.clone(),
            uid: user.uid.clone(),
            groups: user.groups.clone(),
            extra: user.extra.clone(),
            ..SubjectAccessReviewSpec::default()
        };
        match access {
            Access::Path(path) => {
                spec.non_resource_attributes = Some(NonResourceAttributes {
                    path: Some(path.to_string()),
                    verb: Some("get".into()),
                })
            }
            Access::NamespacePods(namespace) => {
                spec.resource_attributes = Some(ResourceAttributes {
                    namespace: Some(namespace.clone()),
                    verb: Some("get".into()),
                    group: Some("metrics.k8s.io".into()),
                    resource: Some("pods".into()),
                    ..ResourceAttributes::default()
                })
            }
        }
        let review = SubjectAccessReview {
            spec,
            ..SubjectAccessReview::default()
        };
        let answer = ask("SubjectAccessReview", async {
            Api::<SubjectAccessReview>::all(self.client.clone())
                .create(&PostParams::default(), &review)
                .await
        })
        .await?;
        let allowed = answer.status.is_some_and(|s| s.allowed);
        let ttl = if allowed { ALLOWED_TTL } else { DENIED_TTL };
        lock(&self.decisions).put(cache_key, allowed, ttl, Instant::now());
        Ok(allowed)
    }
}

async fn ask<T>(
    what: &'static str,
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, ReviewError> {
    let failed = |reason: String| {
        REVIEW_FAILURES.inc();
        ReviewError::Unanswered { what, reason }
    };
    match tokio::time::timeout(REVIEW_TIMEOUT, call).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(failed(crate::telemetry::with_causes(&e))),
        Err(_) => Err(failed(format!("no answer within {REVIEW_TIMEOUT:?}"))),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn token_key(token: &str) -> TokenKey {
    let mut key = [0; 32];
    key.copy_from_slice(digest::digest(&digest::SHA256, token.as_bytes()).as_ref());
    key
}

fn describe(access: &Access) -> String {
    match access {
        Access::Path(path) => format!("get {path}"),
        Access::NamespacePods(ns) => {
            format!("get pods.metrics.k8s.io in namespace {ns} (the namespace view)")
        }
    }
}

/// The token of `Authorization: Bearer TOKEN`; `Err` says what is wrong with the header.
pub fn bearer(header: Option<&[u8]>) -> Result<&str, &'static str> {
    /// A service-account token is about 1 KB; far above that is not a token.
    const MAX_TOKEN_BYTES: usize = 16 << 10;
    let header = header.ok_or("no Authorization header")?;
    let (scheme, token) = header
        .iter()
        .position(|&b| b == b' ')
        .map(|at| (&header[..at], &header[at + 1..]))
        .ok_or("Authorization is not 'Bearer TOKEN'")?;
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err("Authorization scheme is not Bearer");
    }
    let token = token.trim_ascii();
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
        return Err("the bearer token is empty or too long");
    }
    if !token.iter().all(|b| b.is_ascii_graphic()) {
        return Err("the bearer token holds characters no token has");
    }
    std::str::from_utf8(token).map_err(|_| "the bearer token is not text")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_taken_and_anything_else_is_named() {
        assert_eq!(bearer(Some(b"Bearer abc.def")), Ok("abc.def"));
        assert_eq!(bearer(Some(b"bearer  abc ")), Ok("abc"));
        assert!(bearer(None).is_err());
        assert!(bearer(Some(b"Basic YTpi")).unwrap_err().contains("Bearer"));
        assert!(bearer(Some(b"Bearer")).is_err());
        assert!(bearer(Some(b"Bearer a\x01b")).is_err());
        assert!(bearer(Some(
            &[b"Bearer ".as_slice(), &vec![b'a'; 20 << 10]].concat()
        ))
        .is_err());
    }

    #[test]
    fn the_table_is_bounded_and_forgets_expired_entries() {
        let mut table: Table<u32, bool> = Table::default();
        let now = Instant::now();
        for k in 0..MAX_ENTRIES as u32 {
            table.put(k, true, Duration::from_secs(60), now);
        }
        let before = NOT_REMEMBERED.get();
        table.put(u32::MAX, true, Duration::from_secs(60), now);
        assert_eq!(table.get(&u32::MAX, now), None);
        assert_eq!(NOT_REMEMBERED.get(), before + 1);
        // Later, everything expired: room again.
        let later = now + Duration::from_secs(61);
        table.put(u32::MAX, false, Duration::from_secs(10), later);
        assert_eq!(table.get(&u32::MAX, later), Some(false));
        assert_eq!(table.entries.len(), 1);
        assert_eq!(table.get(&u32::MAX, later + Duration::from_secs(11)), None);
    }
}
