//! `TokenReview` and `SubjectAccessReview`: what an agent that delegates its own clients' authn
//! and authz to the API server (`--authz kubernetes`) sends, answered from a policy the test
//! sets, and recorded so tests can assert the exact attributes sent.
//!
//! Simplifications: tokens are not bound to audiences (`status.audiences` echoes
//! `spec.audiences`, or the default one); grants are plain rules, not Roles and bindings; the
//! caller's right to create reviews is not checked beyond the server's bearer token.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;

use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use k8s_openapi::api::authentication::v1::TokenReview;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview};
use serde_json::{json, Value};

use super::{json_response, status, status_object, Body, KubeApi, Shared, REQUEST_LOG};

/// The API server's audience when a review names none (a kubeadm cluster's default issuer).
const DEFAULT_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";
/// Larger review bodies get 413, as the real server caps request bodies.
const MAX_BODY: usize = 1 << 20;

/// Who a token authenticates as: `status.user` of a `TokenReview`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subject {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl Subject {
    /// `groups` plus `system:authenticated` (the real server adds it to every authenticated
    /// user), and a uid derived from the username so one user keeps one uid across tokens.
    pub fn new(username: &str, groups: &[&str]) -> Subject {
        let mut groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        if !groups.iter().any(|g| g == "system:authenticated") {
            groups.push("system:authenticated".into());
        }
        // FNV-1a: stable across runs, unlike the std hasher.
        let hash = username.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        Subject {
            username: username.into(),
            uid: format!(
                "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                hash >> 32,
                (hash >> 16) & 0xffff,
                hash & 0xfff,
                (hash >> 52) & 0xfff,
                hash & 0xffff_ffff_ffff
            ),
            groups,
            extra: BTreeMap::new(),
        }
    }

    fn user_info(&self) -> Value {
        json!({"username": self.username, "uid": self.uid, "groups": self.groups,
               "extra": self.extra})
    }
}

/// Whom a grant is for: a user (a `&str` converts to one) or every member of a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grantee {
    User(String),
    Group(String),
}

impl Grantee {
    pub fn group(name: &str) -> Grantee {
        Grantee::Group(name.into())
    }

    fn matches(&self, user: &str, groups: &[String]) -> bool {
        match self {
            Grantee::User(u) => u == user,
            Grantee::Group(g) => groups.iter().any(|member_of| member_of == g),
        }
    }
}

impl From<&str> for Grantee {
    fn from(user: &str) -> Grantee {
        Grantee::User(user.into())
    }
}

impl From<String> for Grantee {
    fn from(user: String) -> Grantee {
        Grantee::User(user)
    }
}

impl fmt::Display for Grantee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grantee::User(u) => write!(f, "User {u:?}"),
            Grantee::Group(g) => write!(f, "Group {g:?}"),
        }
    }
}

/// One allowed action; `*` as verb, group or resource, or a trailing `*` in a path, matches as
/// in RBAC.
#[derive(Clone, Debug)]
enum Rule {
    NonResource {
        path: String,
        verb: String,
    },
    Resource {
        /// `None`: every namespace (a ClusterRoleBinding).
        namespace: Option<String>,
        group: String,
        resource: String,
        verb: String,
    },
}

fn word_matches(rule: &str, asked: &str) -> bool {
    rule == "*" || rule == asked
}

impl Rule {
    fn allows_path(&self, path: &str, verb: &str) -> bool {
        let Rule::NonResource { path: p, verb: v } = self else {
            return false;
        };
        let path_ok = match p.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => p == path,
        };
        path_ok && word_matches(v, verb)
    }

    fn allows_resource(&self, asked: &ResourceAttributes) -> bool {
        let Rule::Resource {
            namespace,
            group,
            resource,
            verb,
        } = self
        else {
            return false;
        };
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        let asked_resource = match text(&asked.subresource).as_str() {
            "" => text(&asked.resource),
            sub => format!("{}/{sub}", text(&asked.resource)),
        };
        namespace
            .as_ref()
            .is_none_or(|ns| *ns == text(&asked.namespace))
            && word_matches(group, &text(&asked.group))
            && word_matches(resource, &asked_resource)
            && word_matches(verb, &text(&asked.verb))
    }
}

/// The policy and the log of reviews received.
#[derive(Default)]
pub(super) struct Reviews {
    tokens: HashMap<String, Subject>,
    grants: Vec<(Grantee, Rule)>,
    token_reviews: VecDeque<Value>,
    access_reviews: VecDeque<Value>,
}

fn push_bounded(log: &mut VecDeque<Value>, review: Value) {
    if log.len() >= REQUEST_LOG {
        log.pop_front();
    }
    log.push_back(review);
}

impl KubeApi {
    fn reviews(&self) -> std::sync::MutexGuard<'_, Reviews> {
        lock_reviews(&self.shared)
    }

    /// Makes `token` authenticate as `username` in `groups` (see [`Subject::new`]); returns
    /// the subject TokenReviews will report.
    pub fn add_token(&self, token: &str, username: &str, groups: &[&str]) -> Subject {
        let subject = Subject::new(username, groups);
        self.add_token_subject(token, subject.clone());
        subject
    }

    /// Makes `token` authenticate as exactly `subject` (its uid, groups and extra as given).
    pub fn add_token_subject(&self, token: &str, subject: Subject) {
        self.reviews().tokens.insert(token.into(), subject);
    }

    /// Revokes a token: TokenReviews of it answer unauthenticated from now on.
    pub fn remove_token(&self, token: &str) {
        self.reviews().tokens.remove(token);
    }

    /// Allows `verb` on the non-resource URL `path` (a trailing `*` matches any rest).
    pub fn allow_non_resource(&self, who: impl Into<Grantee>, path: &str, verb: &str) {
        let rule = Rule::NonResource {
            path: path.into(),
            verb: verb.into(),
        };
        self.reviews().grants.push((who.into(), rule));
    }

    /// Allows `verb` on `resource` (`pods`, or `pods/log` for a subresource) of API `group`
    /// (`""` for core) in `namespace`, or in every namespace with `None`.
    pub fn allow_resource(
        &self,
        who: impl Into<Grantee>,
        namespace: Option<&str>,
        group: &str,
        resource: &str,
        verb: &str,
    ) {
        let rule = Rule::Resource {
            namespace: namespace.map(Into::into),
            group: group.into(),
            resource: resource.into(),
            verb: verb.into(),
        };
        self.reviews().grants.push((who.into(), rule));
    }

    /// Allows `get` of `pods` in `metrics.k8s.io` in `namespace`: what reading that namespace's
    /// pod metrics needs.
    pub fn allow_namespace_pods_metrics(&self, who: impl Into<Grantee>, namespace: &str) {
        self.allow_resource(who, Some(namespace), "metrics.k8s.io", "pods", "get");
    }

    /// Removes every grant (tokens stay): everything is denied again.
    pub fn clear_grants(&self) {
        self.reviews().grants.clear();
    }

    /// Every TokenReview body received, oldest first, up to a bound.
    pub fn token_reviews(&self) -> Vec<Value> {
        self.reviews().token_reviews.iter().cloned().collect()
    }

    /// Every SubjectAccessReview body received, oldest first, up to a bound.
    pub fn access_reviews(&self) -> Vec<Value> {
        self.reviews().access_reviews.iter().cloned().collect()
    }
}

fn lock_reviews(shared: &Shared) -> std::sync::MutexGuard<'_, Reviews> {
    shared
        .reviews
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Review {
    Token,
    Access,
}

/// Which review a request path creates, if any.
pub(super) fn route(path: &str) -> Option<Review> {
    match path.trim_end_matches('/') {
        "/apis/authentication.k8s.io/v1/tokenreviews" => Some(Review::Token),
        "/apis/authorization.k8s.io/v1/subjectaccessreviews" => Some(Review::Access),
        _ => None,
    }
}

/// Answers a review creation as the real server does: 201 with the object and its `status`.
pub(super) async fn handle(
    review: Review,
    req: Request<Incoming>,
    shared: &Shared,
) -> Response<Body> {
    if req.method() != Method::POST {
        return status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        );
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            return status(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                "the request body is too large",
            )
        }
        Err(e) => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("reading the request body: {e}"),
            )
        }
    };
    let object: Value = match serde_json::from_slice(&body) {
        Ok(object) => object,
        Err(e) => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("couldn't get version/kind; json parse error: {e}"),
            )
        }
    };
    let mut reviews = lock_reviews(shared);
    match review {
        Review::Token => {
            push_bounded(&mut reviews.token_reviews, object.clone());
            token_review(&reviews, object)
        }
        Review::Access => {
            push_bounded(&mut reviews.access_reviews, object.clone());
            access_review(&reviews, object)
        }
    }
}

/// The request echoed back with `status`, as the real server returns a created review.
fn created(mut object: Value, api_version: &str, kind: &str, status: Value) -> Response<Body> {
    object["apiVersion"] = json!(api_version);
    object["kind"] = json!(kind);
    if !object.get("metadata").is_some_and(Value::is_object) {
        object["metadata"] = json!({});
    }
    object["status"] = status;
    json_response(StatusCode::CREATED, &object)
}

fn undecodable(kind: &str, e: &serde_json::Error) -> Response<Body> {
    status(
        StatusCode::BAD_REQUEST,
        "BadRequest",
        &format!("the object provided is unrecognized (must be of type {kind}): {e}"),
    )
}

fn token_review(reviews: &Reviews, object: Value) -> Response<Body> {
    let review: TokenReview = match serde_json::from_value(object.clone()) {
        Ok(review) => review,
        Err(e) => return undecodable("TokenReview", &e),
    };
    let token = review.spec.token.unwrap_or_default();
    if token.is_empty() {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "token is required for TokenReview in authentication",
        );
    }
    let audiences = review
        .spec
        .audiences
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| vec![DEFAULT_AUDIENCE.into()]);
    let result = match reviews.tokens.get(&token) {
        Some(subject) => json!({"authenticated": true, "user": subject.user_info(),
                                "audiences": audiences}),
        None => json!({"authenticated": false, "user": {}, "error": "invalid bearer token"}),
    };
    created(object, "authentication.k8s.io/v1", "TokenReview", result)
}

/// A 422 `Invalid` Status, as the real server answers a review failing validation.
fn invalid(field: &str, value: &str, detail: &str) -> Response<Body> {
    let message = format!(
        "SubjectAccessReview.authorization.k8s.io \"\" is invalid: {field}: Invalid value: \
         {value:?}: {detail}"
    );
    let mut object = status_object(422, "Invalid", &message);
    object["details"] = json!({"group": "authorization.k8s.io", "kind": "SubjectAccessReview",
        "causes": [{"reason": "FieldValueInvalid", "message": format!("Invalid value: {value:?}: {detail}"),
                    "field": field}]});
    json_response(StatusCode::UNPROCESSABLE_ENTITY, &object)
}

fn access_review(reviews: &Reviews, object: Value) -> Response<Body> {
    let review: SubjectAccessReview = match serde_json::from_value(object.clone()) {
        Ok(review) => review,
        Err(e) => return undecodable("SubjectAccessReview", &e),
    };
    let spec = review.spec;
    let user = spec.user.unwrap_or_default();
    let groups = spec.groups.unwrap_or_default();
    let rule_allows: Box<dyn Fn(&Rule) -> bool> =
        match (spec.resource_attributes, spec.non_resource_attributes) {
            (Some(_), Some(_)) => {
                return invalid(
                    "spec.nonResourceAttributes",
                    "",
                    "cannot be specified in combination with resourceAttributes",
                )
            }
            (None, None) => {
                return invalid(
                    "spec.resourceAttributes",
                    "",
                    "exactly one of nonResourceAttributes or resourceAttributes must be specified",
                )
            }
            (Some(asked), None) => Box::new(move |rule| rule.allows_resource(&asked)),
            (None, Some(asked)) => {
                let path = asked.path.unwrap_or_default();
                let verb = asked.verb.unwrap_or_default();
                Box::new(move |rule| rule.allows_path(&path, &verb))
            }
        };
    if user.is_empty() && groups.is_empty() {
        return invalid(
            "spec.user",
            "",
            "at least one of user or group must be specified",
        );
    }
    let grant = reviews
        .grants
        .iter()
        .find(|(who, rule)| who.matches(&user, &groups) && rule_allows(rule));
    let result = match grant {
        Some((who, _)) => {
            json!({"allowed": true, "reason": format!("allowed by a test grant to {who}")})
        }
        None => json!({"allowed": false}),
    };
    created(
        object,
        "authorization.k8s.io/v1",
        "SubjectAccessReview",
        result,
    )
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::authentication::v1::TokenReviewSpec;
    use k8s_openapi::api::authorization::v1::{NonResourceAttributes, SubjectAccessReviewSpec};
    use kube::api::{Api, PostParams};
    use kube::config::{KubeConfigOptions, Kubeconfig};
    use kube::{Client, Config};

    use super::*;
    use crate::TempDir;

    async fn client_from(kubeconfig: &std::path::Path) -> Client {
        let file = Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
        let config = Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
            .await
            .expect("config");
        Client::try_from(config).expect("client")
    }

    async fn client(api: &KubeApi, dir: &TempDir) -> Client {
        client_from(&api.write_kubeconfig(dir.path()).expect("kubeconfig")).await
    }

    async fn review_token(client: &Client, token: &str) -> TokenReview {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.into()),
                audiences: None,
            },
            ..Default::default()
        };
        Api::<TokenReview>::all(client.clone())
            .create(&PostParams::default(), &review)
            .await
            .expect("TokenReview")
    }

    fn sar(
        subject: &Subject,
        resource: Option<ResourceAttributes>,
        path: Option<(&str, &str)>,
    ) -> SubjectAccessReview {
        SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(subject.username.clone()),
                uid: Some(subject.uid.clone()),
                groups: Some(subject.groups.clone()),
                extra: Some(subject.extra.clone()),
                resource_attributes: resource,
                non_resource_attributes: path.map(|(path, verb)| NonResourceAttributes {
                    path: Some(path.into()),
                    verb: Some(verb.into()),
                }),
            },
            ..Default::default()
        }
    }

    fn pods_metrics(namespace: &str, verb: &str) -> ResourceAttributes {
        ResourceAttributes {
            namespace: Some(namespace.into()),
            verb: Some(verb.into()),
            group: Some("metrics.k8s.io".into()),
            resource: Some("pods".into()),
            ..Default::default()
        }
    }

    async fn allowed(client: &Client, review: &SubjectAccessReview) -> bool {
        let created = Api::<SubjectAccessReview>::all(client.clone())
            .create(&PostParams::default(), review)
            .await
            .expect("SubjectAccessReview");
        assert_eq!(created.spec, review.spec, "the spec is echoed");
        created.status.expect("status").allowed
    }

    #[tokio::test]
    async fn kubeapi_token_review_authenticates_known_tokens_only() {
        let api = KubeApi::start().await.expect("start");
        let dir = TempDir::new("loupe-kubeapi-reviews").expect("temp dir");
        let client = client(&api, &dir).await;
        let prometheus = api.add_token(
            "scraper-token",
            "system:serviceaccount:monitoring:prometheus",
            &[
                "system:serviceaccounts",
                "system:serviceaccounts:monitoring",
            ],
        );
        let mut extra = BTreeMap::new();
        extra.insert(
            "authentication.kubernetes.io/pod-name".to_string(),
            vec!["prometheus-0".to_string()],
        );
        let custom = Subject {
            username: "alice".into(),
            uid: "uid-alice".into(),
            groups: vec!["ops".into()],
            extra,
        };
        api.add_token_subject("alice-token", custom.clone());

        let review = review_token(&client, "scraper-token").await;
        let status = review.status.expect("status");
        assert_eq!(status.authenticated, Some(true));
        let user = status.user.expect("user");
        assert_eq!(user.username.as_deref(), Some(prometheus.username.as_str()));
        assert_eq!(user.uid.as_deref(), Some(prometheus.uid.as_str()));
        assert_eq!(
            user.groups.expect("groups"),
            [
                "system:serviceaccounts",
                "system:serviceaccounts:monitoring",
                "system:authenticated"
            ]
        );
        assert_eq!(status.audiences.expect("audiences"), [DEFAULT_AUDIENCE]);
        assert_eq!(review.spec.token.as_deref(), Some("scraper-token"));

        let user = review_token(&client, "alice-token")
            .await
            .status
            .and_then(|s| s.user)
            .expect("user");
        assert_eq!(user.uid.as_deref(), Some("uid-alice"));
        assert_eq!(user.groups.as_deref(), Some(&["ops".to_string()][..]));
        assert_eq!(user.extra, Some(custom.extra));

        let status = review_token(&client, "guess").await.status.expect("status");
        assert_eq!(status.authenticated, Some(false));
        assert!(status.error.is_some_and(|e| !e.is_empty()));

        api.remove_token("scraper-token");
        let status = review_token(&client, "scraper-token").await.status;
        assert_eq!(status.and_then(|s| s.authenticated), Some(false));

        let tokens: Vec<Value> = api
            .token_reviews()
            .iter()
            .map(|r| r["spec"]["token"].clone())
            .collect();
        assert_eq!(
            tokens,
            [
                json!("scraper-token"),
                json!("alice-token"),
                json!("guess"),
                json!("scraper-token")
            ]
        );
        let first = &api.token_reviews()[0];
        assert_eq!(first["apiVersion"], "authentication.k8s.io/v1");
        assert_eq!(first["kind"], "TokenReview");
        assert!(api.access_reviews().is_empty());
        // The same user keeps one uid.
        assert_eq!(Subject::new(&prometheus.username, &[]).uid, prometheus.uid);
    }

    #[tokio::test]
    async fn kubeapi_access_review_allows_only_what_is_granted() {
        let api = KubeApi::start().await.expect("start");
        let dir = TempDir::new("loupe-kubeapi-reviews").expect("temp dir");
        let client = client(&api, &dir).await;
        let prometheus = Subject::new("prometheus", &["monitoring"]);
        let other = Subject::new("mallory", &[]);
        let member = Subject::new("bob", &["ops"]);
        api.allow_non_resource("prometheus", "/metrics", "get");
        api.allow_non_resource(Grantee::group("ops"), "/targets*", "*");
        api.allow_namespace_pods_metrics("prometheus", "shop");

        let path = |p, v| sar(&prometheus, None, Some((p, v)));
        assert!(allowed(&client, &path("/metrics", "get")).await);
        assert!(!allowed(&client, &path("/metrics", "post")).await);
        assert!(!allowed(&client, &path("/targets", "get")).await);
        assert!(!allowed(&client, &sar(&other, None, Some(("/metrics", "get")))).await);
        assert!(allowed(&client, &sar(&member, None, Some(("/targets", "get")))).await);
        assert!(allowed(&client, &sar(&member, None, Some(("/targets/x", "post")))).await);
        assert!(!allowed(&client, &sar(&member, None, Some(("/metrics", "get")))).await);

        let resource = |s: &Subject, r| sar(s, Some(r), None);
        assert!(allowed(&client, &resource(&prometheus, pods_metrics("shop", "get"))).await);
        assert!(!allowed(&client, &resource(&prometheus, pods_metrics("bank", "get"))).await);
        assert!(
            !allowed(
                &client,
                &resource(&prometheus, pods_metrics("shop", "list"))
            )
            .await
        );
        assert!(!allowed(&client, &resource(&other, pods_metrics("shop", "get"))).await);
        let core_pods = ResourceAttributes {
            group: Some(String::new()),
            ..pods_metrics("shop", "get")
        };
        assert!(!allowed(&client, &resource(&prometheus, core_pods.clone())).await);
        api.allow_resource(Grantee::group("monitoring"), None, "", "pods", "get");
        assert!(allowed(&client, &resource(&prometheus, core_pods)).await);
        api.clear_grants();
        assert!(!allowed(&client, &path("/metrics", "get")).await);

        let recorded = api.access_reviews();
        assert_eq!(recorded.len(), 14);
        assert_eq!(
            recorded[0],
            json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                   "metadata": {}, "spec": {"user": "prometheus", "uid": prometheus.uid,
                   "groups": ["monitoring", "system:authenticated"], "extra": {},
                   "nonResourceAttributes": {"path": "/metrics", "verb": "get"}}})
        );
        assert_eq!(
            recorded[7]["spec"]["resourceAttributes"],
            json!({"namespace": "shop", "verb": "get", "group": "metrics.k8s.io",
                   "resource": "pods"})
        );
        let reason = Api::<SubjectAccessReview>::all(client)
            .create(&PostParams::default(), &path("/metrics", "get"))
            .await
            .expect("review")
            .status
            .and_then(|s| s.reason);
        assert_eq!(reason, None, "a denial has no reason");
    }

    /// A raw request's answer: the Status the client parsed from a 4xx.
    async fn refused(client: &Client, method: &str, path: &str, body: &str) -> (u16, String) {
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(body.as_bytes().to_vec())
            .expect("request");
        match client.request::<Value>(request).await {
            Err(kube::Error::Api(status)) => (status.code, status.reason),
            other => panic!("{method} {path} {body}: expected a Status, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn kubeapi_malformed_reviews_get_status_objects() {
        let api = KubeApi::start().await.expect("start");
        let dir = TempDir::new("loupe-kubeapi-reviews").expect("temp dir");
        let client = client(&api, &dir).await;
        let tokens = "/apis/authentication.k8s.io/v1/tokenreviews";
        let access = "/apis/authorization.k8s.io/v1/subjectaccessreviews";
        let bad = |code: u16, reason: &str| (code, reason.to_string());
        assert_eq!(
            refused(&client, "GET", tokens, "").await,
            bad(405, "MethodNotAllowed")
        );
        assert_eq!(
            refused(&client, "PUT", access, "{}").await,
            bad(405, "MethodNotAllowed")
        );
        assert_eq!(
            refused(&client, "POST", tokens, "{not json").await,
            bad(400, "BadRequest")
        );
        assert_eq!(
            refused(
                &client,
                "POST",
                tokens,
                r#"{"kind":"Pod","spec":{"token":"t"}}"#
            )
            .await,
            bad(400, "BadRequest")
        );
        assert_eq!(
            refused(&client, "POST", tokens, r#"{"spec":{}}"#).await,
            bad(400, "BadRequest"),
            "an empty token"
        );
        assert_eq!(
            refused(&client, "POST", access, r#"{"spec":{"groups":"x"}}"#).await,
            bad(400, "BadRequest")
        );
        assert_eq!(
            refused(&client, "POST", access, r#"{"spec":{"user":"u"}}"#).await,
            bad(422, "Invalid"),
            "no attributes"
        );
        let both = r#"{"spec":{"user":"u","resourceAttributes":{},"nonResourceAttributes":{}}}"#;
        assert_eq!(
            refused(&client, "POST", access, both).await,
            bad(422, "Invalid")
        );
        let nobody = r#"{"spec":{"nonResourceAttributes":{"path":"/metrics","verb":"get"}}}"#;
        assert_eq!(
            refused(&client, "POST", access, nobody).await,
            bad(422, "Invalid")
        );
        let big = format!(r#"{{"spec":{{"token":"{}"}}}}"#, "x".repeat(MAX_BODY));
        assert_eq!(
            refused(&client, "POST", tokens, &big).await,
            bad(413, "RequestEntityTooLarge")
        );
        assert_eq!(
            refused(
                &client,
                "POST",
                "/apis/authorization.k8s.io/v1/selfsubjectreviews",
                "{}"
            )
            .await
            .0,
            405,
            "other POSTs are refused as before"
        );
        // Parsed bodies are recorded even when refused; unparsable ones cannot be.
        assert_eq!(api.token_reviews().len(), 2);
        assert_eq!(api.access_reviews().len(), 4);
        // Pods are still served beside the reviews.
        let pods = Api::<k8s_openapi::api::core::v1::Pod>::all(client);
        assert!(pods
            .list(&Default::default())
            .await
            .expect("list")
            .items
            .is_empty());
    }

    #[tokio::test]
    async fn kubeapi_reviews_need_the_bearer_token_with_tls() {
        use crate::certs::{self_signed, signed};
        let dir = TempDir::new("loupe-kubeapi-reviews-tls").expect("temp dir");
        let ca = self_signed(&dir, "ca", "kubernetes").expect("CA");
        let ext = "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n";
        let server = signed(&dir, "apiserver", &ca, "kube-apiserver", ext).expect("certificate");
        let api = KubeApi::start_tls(crate::kubeapi::TlsOptions {
            ip: [127, 0, 0, 1].into(),
            cert: server.cert,
            key: server.key,
            token: "agent-token".into(),
        })
        .await
        .expect("start");
        api.add_token("scraper-token", "prometheus", &[]);
        let kubeconfig = |name: &str, token: &str| {
            let path = dir.path().join(name);
            let text = format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    \
                 certificate-authority: {}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    \
                 user: u\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: {token}\n",
                api.url(),
                ca.cert.display()
            );
            std::fs::write(&path, text).expect("kubeconfig");
            path
        };
        let agent = client_from(&kubeconfig("agent", "agent-token")).await;
        let intruder = client_from(&kubeconfig("intruder", "scraper-token")).await;

        let status = review_token(&agent, "scraper-token").await.status;
        assert_eq!(status.and_then(|s| s.authenticated), Some(true));
        let refused = Api::<TokenReview>::all(intruder)
            .create(&PostParams::default(), &TokenReview::default())
            .await;
        assert!(
            matches!(&refused, Err(kube::Error::Api(s)) if s.code == 401),
            "{refused:?}"
        );
        assert_eq!(api.unauthorized(), 1);
        assert_eq!(
            api.token_reviews().len(),
            1,
            "a refused request is not recorded"
        );
    }
}
