//! Kubernetes discovery against the in-process API server: kube-rs's real client over real HTTP,
//! and loupe's `discover::kubernetes::run` publishing this node's pods.

use std::path::PathBuf;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod as KubePod;
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::{Api, Client, Config};
use loupe_agent::discover::kubernetes::{self, BackoffPolicy, KubeConfig};
use loupe_agent::discover::{NetnsRef, Pod};
use loupe_tests::kubeapi::{running_pod, KubeApi};
use serde_json::{json, Value};
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(15);

fn id(n: u32) -> String {
    format!("{n:064x}")
}

fn containerd(n: u32) -> String {
    format!("containerd://{}", id(n))
}

/// A running pod with one container `app` (containerd ID `n`) and no annotations.
fn app_pod(namespace: &str, name: &str, node: &str, n: u32) -> Value {
    running_pod(namespace, name, node, &[("app", &containerd(n))], json!({}))
}

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("loupe-kube-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn client(api: &KubeApi) -> Client {
    let config = Config::new(api.url().parse().expect("url"));
    Client::try_from(config).expect("client")
}

fn names(pods: &[Pod]) -> Vec<String> {
    pods.iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect()
}

/// Waits until the published pods satisfy `done`; panics with the last value after `WAIT`.
async fn wait_for(rx: &mut watch::Receiver<Vec<Pod>>, what: &str, done: impl Fn(&[Pod]) -> bool) {
    let result = tokio::time::timeout(WAIT, rx.wait_for(|pods| done(pods)))
        .await
        .map(|r| r.map(|_| ()));
    match result {
        Ok(Ok(())) => {}
        Ok(Err(_)) => panic!("discovery ended while waiting for {what}"),
        Err(_) => panic!(
            "timed out waiting for {what}; last published: {:?}",
            names(&rx.borrow())
        ),
    }
}

struct Discovery {
    rx: watch::Receiver<Vec<Pod>>,
    task: tokio::task::JoinHandle<Result<(), kubernetes::KubeError>>,
    _dir: TempDir,
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn start_discovery(api: &KubeApi, node: &str, sidecar_stats: bool) -> Discovery {
    let dir = TempDir::new("disc");
    let kubeconfig = api.write_kubeconfig(&dir.0).expect("kubeconfig");
    let (tx, rx) = watch::channel(Vec::new());
    let config = KubeConfig {
        node_name: node.to_string(),
        kubeconfig: Some(kubeconfig),
        sidecar_stats,
        target_labels: Default::default(),
    };
    let backoff = BackoffPolicy {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
    };
    let task = tokio::spawn(kubernetes::run_with(config, backoff, tx));
    Discovery {
        rx,
        task,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_client_lists_with_field_selector() {
    let api = KubeApi::start().await.expect("start");
    api.create_pod(app_pod("shop", "a", "n1", 1))
        .expect("create");
    api.create_pod(app_pod("shop", "b", "n2", 2))
        .expect("create");
    api.create_pod(app_pod("web", "c", "n1", 3))
        .expect("create");
    let pods: Api<KubePod> = Api::all(client(&api).await);
    let list = pods
        .list(&ListParams::default().fields("spec.nodeName=n1"))
        .await
        .expect("list");
    let got: Vec<_> = list
        .items
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    assert_eq!(got, vec!["a", "c"]);
    assert_eq!(
        list.metadata.resource_version,
        Some(api.resource_version().to_string())
    );
    // Namespaced list and paging.
    let shop: Api<KubePod> = Api::namespaced(client(&api).await, "shop");
    let all_shop = shop.list(&ListParams::default()).await.expect("list shop");
    assert_eq!(all_shop.items.len(), 2);
    let page = pods
        .list(&ListParams::default().limit(2))
        .await
        .expect("page");
    assert_eq!(page.items.len(), 2);
    let token = page.metadata.continue_.clone().expect("continue token");
    let rest = pods
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .expect("page 2");
    assert_eq!(rest.items.len(), 1);
    assert_eq!(rest.metadata.continue_, None);
    // An unsupported field is refused, as by the real API server.
    let err = pods
        .list(&ListParams::default().fields("spec.hostname=x"))
        .await
        .expect_err("unsupported field");
    assert!(
        err.to_string().contains("field label not supported"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_client_watches_events_and_bookmarks() {
    let api = KubeApi::start().await.expect("start");
    api.set_bookmark_interval(Duration::from_millis(100));
    api.create_pod(app_pod("shop", "a", "n1", 1))
        .expect("create");
    let pods: Api<KubePod> = Api::all(client(&api).await);
    let rv = api.resource_version().to_string();
    let params = WatchParams::default()
        .fields("spec.nodeName=n1")
        .timeout(30);
    let mut stream = pods.watch(&params, &rv).await.expect("watch").boxed();

    api.create_pod(app_pod("shop", "other-node", "n2", 9))
        .expect("create");
    api.create_pod(app_pod("shop", "b", "n1", 2))
        .expect("create");
    api.modify_pod("shop", "b", |p| p["metadata"]["labels"]["v"] = json!("2"))
        .expect("modify");
    api.delete_pod("shop", "b").expect("delete");

    let mut seen = Vec::new();
    let mut bookmarks = 0;
    while seen.len() < 3 || bookmarks == 0 {
        let ev = tokio::time::timeout(WAIT, stream.try_next())
            .await
            .expect("event in time")
            .expect("no error")
            .expect("stream open");
        match ev {
            WatchEvent::Added(p) => {
                seen.push(format!("ADDED {}", p.metadata.name.unwrap_or_default()))
            }
            WatchEvent::Modified(p) => {
                seen.push(format!("MODIFIED {}", p.metadata.name.unwrap_or_default()))
            }
            WatchEvent::Deleted(p) => {
                seen.push(format!("DELETED {}", p.metadata.name.unwrap_or_default()))
            }
            WatchEvent::Bookmark(b) => {
                assert!(!b.metadata.resource_version.is_empty());
                bookmarks += 1;
            }
            WatchEvent::Error(e) => panic!("unexpected error event {e:?}"),
        }
    }
    assert_eq!(seen, vec!["ADDED b", "MODIFIED b", "DELETED b"]);

    // A pod that moves into the selector is ADDED for this watch, out of it DELETED.
    api.modify_pod("shop", "other-node", |p| {
        p["spec"]["nodeName"] = json!("n1")
    })
    .expect("move");
    let mut moved = None;
    while moved.is_none() {
        match tokio::time::timeout(WAIT, stream.try_next())
            .await
            .expect("in time")
        {
            Ok(Some(WatchEvent::Added(p))) => moved = p.metadata.name,
            Ok(Some(WatchEvent::Bookmark(_))) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(moved.as_deref(), Some("other-node"));
    let requests = api.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.contains("watch=true") && r.contains("allowWatchBookmarks=true")),
        "{requests:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_a_compacted_version_gets_410() {
    let api = KubeApi::start().await.expect("start");
    api.set_history_limit(2);
    let old_rv = api.resource_version().to_string();
    for n in 0..5 {
        api.create_pod(running_pod(
            "shop",
            &format!("p{n}"),
            "n1",
            &[("app", &containerd(n))],
            json!({}),
        ))
        .expect("create");
    }
    let pods: Api<KubePod> = Api::all(client(&api).await);
    let mut stream = pods
        .watch(&WatchParams::default().timeout(10), &old_rv)
        .await
        .expect("watch")
        .boxed();
    let first = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("in time");
    let status = match first {
        Some(Ok(WatchEvent::Error(status))) => status,
        Some(Err(kube::Error::Api(status))) => status,
        other => panic!("expected a 410 error event, got {other:?}"),
    };
    assert_eq!(status.code, 410);
    assert_eq!(status.reason, "Expired");
    // A version within the history still resumes.
    let recent = (api.resource_version() - 1).to_string();
    let mut stream = pods
        .watch(&WatchParams::default().timeout(10), &recent)
        .await
        .expect("watch")
        .boxed();
    match tokio::time::timeout(WAIT, stream.try_next())
        .await
        .expect("in time")
    {
        Ok(Some(WatchEvent::Added(p))) => assert_eq!(p.metadata.name.as_deref(), Some("p4")),
        other => panic!("expected ADDED p4, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_publishes_this_nodes_running_pods() {
    let api = KubeApi::start().await.expect("start");
    let annotations = json!({"prometheus.io/scrape": "true", "prometheus.io/port": "8080"});
    api.create_pod(running_pod(
        "shop",
        "cart",
        "n1",
        &[("app", &containerd(1))],
        annotations.clone(),
    ))
    .expect("create");
    api.create_pod(running_pod(
        "shop",
        "elsewhere",
        "n2",
        &[("app", &containerd(2))],
        annotations.clone(),
    ))
    .expect("create");
    let mut pending = app_pod("shop", "starting", "n1", 3);
    pending["status"] = json!({"phase": "Pending"});
    api.create_pod(pending).expect("create");
    let mut d = start_discovery(&api, "n1", false);

    wait_for(&mut d.rx, "shop/cart", |pods| names(pods) == ["shop/cart"]).await;
    {
        let pods = d.rx.borrow();
        assert_eq!(pods[0].netns, NetnsRef::Containers(vec![id(1)]));
        assert_eq!(pods[0].endpoints.len(), 1);
        assert_eq!(pods[0].endpoints[0].port, 8080);
        assert!(!pods[0].uid.is_empty());
    }

    // The pending pod starts: it appears.
    api.update_pod(app_pod("shop", "starting", "n1", 3))
        .expect("update");
    wait_for(&mut d.rx, "starting pod", |pods| {
        names(pods) == ["shop/cart", "shop/starting"]
    })
    .await;

    // A container restart gives a new container ID: published.
    api.update_pod(running_pod(
        "shop",
        "cart",
        "n1",
        &[("app", &containerd(11))],
        annotations,
    ))
    .expect("restart");
    wait_for(&mut d.rx, "new container id", |pods| {
        pods.iter()
            .any(|p| p.name == "cart" && p.netns == NetnsRef::Containers(vec![id(11)]))
    })
    .await;

    // Deletion is observed.
    api.delete_pod("shop", "cart").expect("delete");
    wait_for(&mut d.rx, "deletion", |pods| {
        names(pods) == ["shop/starting"]
    })
    .await;
    assert!(!d.task.is_finished());

    // The watch used the node's field selector.
    let requests = api.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.contains("fieldSelector=spec.nodeName%3Dn1")),
        "{requests:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_keeps_serving_while_the_api_is_away_and_catches_up() {
    let mut api = KubeApi::start().await.expect("start");
    api.create_pod(app_pod("shop", "a", "n1", 1))
        .expect("create");
    api.create_pod(app_pod("shop", "b", "n1", 2))
        .expect("create");
    let mut d = start_discovery(&api, "n1", false);
    wait_for(&mut d.rx, "a and b", |pods| pods.len() == 2).await;
    let errors_before = kubernetes::WATCH_ERRORS.get();

    api.stop().await;
    // While away: changes happen that the agent cannot see yet.
    api.delete_pod("shop", "a").expect("delete");
    api.create_pod(app_pod("shop", "c", "n1", 3))
        .expect("create");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        names(&d.rx.borrow()),
        ["shop/a", "shop/b"],
        "last known pods kept"
    );
    assert!(
        !d.rx.has_changed().expect("sender alive"),
        "nothing published while away"
    );
    assert!(
        kubernetes::WATCH_ERRORS.get() > errors_before,
        "failed calls counted"
    );
    assert!(!d.task.is_finished());

    api.restart().await.expect("restart");
    wait_for(&mut d.rx, "catch up", |pods| {
        names(pods) == ["shop/b", "shop/c"]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_relists_after_410() {
    let mut api = KubeApi::start().await.expect("start");
    api.create_pod(app_pod("shop", "a", "n1", 1))
        .expect("create");
    let mut d = start_discovery(&api, "n1", false);
    wait_for(&mut d.rx, "a", |pods| names(pods) == ["shop/a"]).await;

    api.stop().await;
    api.delete_pod("shop", "a").expect("delete");
    api.create_pod(app_pod("shop", "z", "n1", 26))
        .expect("create");
    // The events of the outage are gone: resuming the watch must get 410 and relist.
    api.compact();
    let lists_before = api
        .requests()
        .iter()
        .filter(|r| !r.contains("watch=true"))
        .count();
    api.restart().await.expect("restart");
    wait_for(&mut d.rx, "relisted", |pods| names(pods) == ["shop/z"]).await;
    let requests = api.requests();
    let lists_after = requests
        .iter()
        .filter(|r| !r.contains("watch=true"))
        .count();
    assert!(
        lists_after > lists_before,
        "a relist happened: {requests:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_reports_sidecar_stats_only_with_the_flag() {
    let api = KubeApi::start().await.expect("start");
    api.create_pod(running_pod(
        "mesh",
        "app",
        "n1",
        &[("app", &containerd(1)), ("istio-proxy", &containerd(2))],
        json!({}),
    ))
    .expect("create");
    let mut with = start_discovery(&api, "n1", true);
    let mut without = start_discovery(&api, "n1", false);
    wait_for(&mut with.rx, "pod with sidecar stats", |pods| {
        pods.len() == 1 && pods[0].endpoints.iter().any(|e| e.port == 15090)
    })
    .await;
    wait_for(&mut without.rx, "pod", |pods| pods.len() == 1).await;
    assert!(without.rx.borrow()[0].endpoints.is_empty());
    assert_eq!(
        with.rx.borrow()[0].netns,
        NetnsRef::Containers(vec![id(1), id(2)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_ends_when_every_receiver_is_gone() {
    let api = KubeApi::start().await.expect("start");
    let mut d = start_discovery(&api, "n1", false);
    wait_for(&mut d.rx, "first snapshot", |_| true).await;
    let (_, rx) = watch::channel(Vec::<Pod>::new());
    let old = std::mem::replace(&mut d.rx, rx);
    drop(old);
    let task = &mut d.task;
    let result = tokio::time::timeout(WAIT, task)
        .await
        .expect("ends in time");
    assert!(matches!(result, Ok(Ok(()))), "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_follows_pod_churn() {
    let api = KubeApi::start().await.expect("start");
    let mut d = start_discovery(&api, "n1", false);
    wait_for(&mut d.rx, "first snapshot", |_| true).await;
    // 50 pods created, each deleted two creations later, with snapshots checked as they come:
    // a deleted pod never reappears once its deletion was published.
    let mut deleted = std::collections::HashSet::new();
    for n in 0..50u32 {
        let name = format!("churn-{n}");
        api.create_pod(running_pod(
            "shop",
            &name,
            "n1",
            &[("app", &containerd(100 + n))],
            json!({}),
        ))
        .expect("create");
        if n >= 2 {
            let old = format!("churn-{}", n - 2);
            api.delete_pod("shop", &old).expect("delete");
            deleted.insert(format!("shop/{old}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_for(&mut d.rx, "the last two pods", |pods| {
        names(pods) == ["shop/churn-48", "shop/churn-49"]
    })
    .await;
    // Nothing stale is published afterwards either.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let now = names(&d.rx.borrow());
    assert!(now.iter().all(|n| !deleted.contains(n)), "{now:?}");
    assert_eq!(now, ["shop/churn-48", "shop/churn-49"]);
}
