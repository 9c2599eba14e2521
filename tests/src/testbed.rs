//! The mesh situation assembled: pods, each with the test app on 127.0.0.1 and a strict-mTLS Envoy
//! on its veth address, described as loupe's pods file wants them. Shared by the tests and the demo.

use crate::certs::Certs;
use crate::envoy::Envoy;
use crate::loupe::{EndpointSpec, NetnsRef, PodSpec};
use crate::pod::Pod;
use crate::{Proc, Result};

/// The app's port on the pod's loopback.
pub const APP_PORT: u16 = 8080;
/// The sidecar's mTLS port on the pod's veth address (Istio's inbound port).
pub const SIDECAR_PORT: u16 = 15006;

/// One meshed pod. Fields drop in order: the sidecar, the app, then the namespace.
#[derive(Debug)]
pub struct MeshPod {
    pub envoy: Envoy,
    pub app: Proc,
    pub spec: PodSpec,
    pub pod: Pod,
}

impl MeshPod {
    /// A pod `namespace/name` running `metrics-app app_args` on APP_PORT behind Envoy.
    pub fn new(certs: &Certs, namespace: &str, name: &str, app_args: &[&str]) -> Result<MeshPod> {
        let pod = Pod::new()?;
        let app = pod.spawn_app(APP_PORT, app_args)?;
        let envoy = Envoy::start(&pod, certs, SIDECAR_PORT, APP_PORT)?;
        let spec = PodSpec {
            namespace: namespace.to_string(),
            name: name.to_string(),
            netns: NetnsRef::Path(pod.netns_path()),
            endpoints: vec![EndpointSpec::port(APP_PORT)
                .container("app")
                .name("http-metrics")],
        };
        Ok(MeshPod {
            envoy,
            app,
            spec,
            pod,
        })
    }

    /// The app's `/metrics` requests so far, read from inside the pod (`/requests` is not counted).
    pub fn app_requests(&self) -> Result<u64> {
        self.pod.app_requests(APP_PORT)
    }
}

/// Several meshed pods sharing one mesh CA.
#[derive(Debug)]
pub struct Mesh {
    pub pods: Vec<MeshPod>,
    pub certs: Certs,
}

impl Mesh {
    /// `n` pods `shop/cart-<i>`, each app started with `app_args`.
    pub fn new(n: usize, app_args: &[&str]) -> Result<Mesh> {
        let certs = Certs::new()?;
        let mut pods = Vec::with_capacity(n);
        for i in 0..n {
            pods.push(MeshPod::new(
                &certs,
                "shop",
                &format!("cart-{i}"),
                app_args,
            )?);
        }
        Ok(Mesh { pods, certs })
    }

    pub fn specs(&self) -> Vec<PodSpec> {
        self.pods.iter().map(|p| p.spec.clone()).collect()
    }
}

/// The labels loupe adds to every sample (besides the pod labels `--pod-labels` copies).
pub const IDENTITY: [&str; 6] = loupe_agent::decode::IDENTITY_NAMES;

/// What the app started with `--series n [--extra-label k=v]` serves, as series -> value.
pub fn app_series(
    n: usize,
    extra: Option<(&str, &str)>,
) -> Result<std::collections::BTreeMap<String, f64>> {
    let extra = extra.map(|(k, v)| (k.to_string(), v.to_string()));
    let body = crate::app_body::text(n, extra.as_ref());
    let text = String::from_utf8(body).map_err(|e| crate::Error::Invalid {
        what: "app body".into(),
        detail: e.to_string(),
    })?;
    Ok(crate::expo::parse_strict(&text)?.series())
}
