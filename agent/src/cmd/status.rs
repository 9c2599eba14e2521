//! `loupe status`: asks a running agent for its targets (`/targets`) and prints one line per
//! target, with the reason of those that are down, which is otherwise only in the agent's log.
//! In a cluster: `kubectl exec -n loupe ds/loupe -- loupe status` (the agent's node only).

use crate::cli::StatusArgs;
use crate::expose::tls::HandshakeSignatures;
use crate::expose::{TargetStatus, Targets};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// `/targets` of a node with many pods stays far below this.
const MAX_ANSWER_BYTES: usize = 64 << 20;
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("{url}: not an address (expected http://HOST:PORT, https://HOST:PORT or HOST:PORT)")]
    Url { url: String },
    #[error("{url}: https to a non-loopback address needs --ca-file to verify the agent")]
    NoCa { url: String },
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("cannot connect to {authority}: {source}")]
    Connect {
        authority: String,
        source: std::io::Error,
    },
    #[error("{authority}: {reason}")]
    Http { authority: String, reason: String },
    #[error("{authority}/targets answered HTTP status {status}{hint}")]
    Status {
        authority: String,
        status: u16,
        hint: &'static str,
    },
    #[error("{authority}/targets: not loupe's answer: {source}")]
    Json {
        authority: String,
        source: serde_json::Error,
    },
    #[error("{authority}: no answer within {TIMEOUT:?}")]
    Timeout { authority: String },
}

/// Prints the table, or the error; exit status 1 when the agent could not be asked.
pub async fn run(args: &StatusArgs) -> ExitCode {
    match targets(args).await {
        Ok(answer) => {
            println!(
                "capture: {}",
                if answer.capture_active {
                    "observing with eBPF, fetching what was not observed"
                } else {
                    "fetch-only (the eBPF probe is not loaded; the agent's log says why)"
                }
            );
            print!("{}", table(&answer.targets));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loupe status: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The agent's `/targets`.
pub async fn targets(args: &StatusArgs) -> Result<Targets, StatusError> {
    let url = args.url.as_str();
    let (https, rest) = match url.split_once("://") {
        Some(("http", rest)) => (false, rest),
        Some(("https", rest)) => (true, rest),
        Some(_) => return Err(StatusError::Url { url: url.into() }),
        None => (false, url),
    };
    let authority = rest.trim_end_matches('/').to_string();
    if authority.is_empty() || authority.contains('/') {
        return Err(StatusError::Url { url: url.into() });
    }
    let tls = match https {
        false => None,
        true => Some(client_tls(url, &authority, args.ca_file.as_deref())?),
    };
    let token = match &args.token_file {
        Some(path) => Some(read(path)?.trim().to_string()),
        None => None,
    };
    let timeout = StatusError::Timeout {
        authority: authority.clone(),
    };
    tokio::time::timeout(TIMEOUT, ask(&authority, tls, token.as_deref()))
        .await
        .unwrap_or(Err(timeout))
}

fn read(path: &Path) -> Result<String, StatusError> {
    std::fs::read_to_string(path).map_err(|e| StatusError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// What to trust: `ca_file`, or, to a loopback address only, any certificate (the agent is in
/// the same pod, and its default certificate is self-signed).
fn client_tls(
    url: &str,
    authority: &str,
    ca_file: Option<&Path>,
) -> Result<(Arc<rustls::ClientConfig>, ServerName<'static>), StatusError> {
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name =
        ServerName::try_from(host.to_string()).map_err(|_| StatusError::Url { url: url.into() })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| StatusError::Url {
            url: format!("{url}: {e}"),
        })?;
    let config = match ca_file {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let pem = read(path)?;
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let added = cert
                    .map_err(|e| e.to_string())
                    .and_then(|c| roots.add(c).map_err(|e| e.to_string()));
                added.map_err(|reason| StatusError::File {
                    path: path.to_path_buf(),
                    reason,
                })?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None if host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
            || host == "localhost" =>
        {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(OwnPod(HandshakeSignatures(provider))))
                .with_no_client_auth()
        }
        None => return Err(StatusError::NoCa { url: url.into() }),
    };
    Ok((Arc::new(config), name))
}

/// Accepts the agent's certificate unverified, its handshake signature still checked: only used
/// for a loopback address, i.e. the agent of this very pod.
#[derive(Debug)]
struct OwnPod(HandshakeSignatures);

impl ServerCertVerifier for OwnPod {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}

async fn ask(
    authority: &str,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    token: Option<&str>,
) -> Result<Targets, StatusError> {
    let http = |e: &dyn std::error::Error| StatusError::Http {
        authority: authority.into(),
        reason: crate::telemetry::with_causes(e),
    };
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|source| StatusError::Connect {
            authority: authority.into(),
            source,
        })?;
    let mut request = hyper::Request::get("/targets").header(header::HOST, authority);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request.body(Empty::<Bytes>::new()).map_err(|e| http(&e))?;
    let response = match tls {
        None => send(TokioIo::new(stream), request).await,
        Some((config, name)) => {
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await
                .map_err(|e| http(&e))?;
            send(TokioIo::new(stream), request).await
        }
    };
    let (status, body) = response.map_err(|e| http(&*e))?;
    if status != 200 {
        return Err(StatusError::Status {
            authority: authority.into(),
            status,
            hint: match status {
                401 => " (the agent wants credentials: --token-file)",
                403 => " (the token is not allowed get on /targets)",
                400 => " (is the agent serving https?)",
                _ => " (is it a loupe agent?)",
            },
        });
    }
    let answer: Targets = serde_json::from_slice(&body).map_err(|source| StatusError::Json {
        authority: authority.into(),
        source,
    })?;
    Ok(answer)
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One request on a fresh connection: the status and at most [`MAX_ANSWER_BYTES`] of the body.
async fn send<I>(io: I, request: hyper::Request<Empty<Bytes>>) -> Result<(u16, Bytes), BoxError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    let conn = tokio::spawn(conn);
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await?
        .to_bytes();
    conn.abort();
    Ok((status, body))
}

/// One aligned line per target, down ones first (the reason last, whole).
pub fn table(targets: &[TargetStatus]) -> String {
    let mut rows: Vec<&TargetStatus> = targets.iter().collect();
    rows.sort_by_key(|t| (t.health == "up", t.namespace.as_str(), t.pod.as_str()));
    let header = [
        "NAMESPACE",
        "POD",
        "CONTAINER",
        "ENDPOINT",
        "JOB",
        "INSTANCE",
        "HEALTH",
        "SOURCE",
        "AGE",
        "SAMPLES",
        "ERROR / NOTE",
    ];
    let cells: Vec<[String; 11]> = rows
        .iter()
        .map(|t| {
            [
                t.namespace.clone(),
                t.pod.clone(),
                t.container.clone(),
                format!("{} (:{}{})", t.endpoint, t.port, t.path),
                t.job.clone(),
                // No instance of its own: its series carry the node target's.
                if t.instance.is_empty() {
                    "-".into()
                } else {
                    t.instance.clone()
                },
                t.health.clone(),
                t.source.clone().unwrap_or_else(|| "-".into()),
                t.age_seconds
                    .map_or_else(|| "-".into(), |a| format!("{a:.1}s")),
                t.samples.map_or_else(|| "-".into(), |n| n.to_string()),
                match (&t.error, t.native_only_histograms) {
                    (Some(e), _) => e.clone(),
                    (None, Some(n)) if n > 0 => {
                        format!(
                            "{n} native histograms without classic buckets: protobuf scrapers only"
                        )
                    }
                    _ => String::new(),
                },
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |row: &[&str]| {
        let last = row.len() - 1;
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(cell);
                let pad = widths[i] + 2 - cell.chars().count();
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        let trimmed = out.trim_end().len();
        out.truncate(trimmed);
        out.push('\n');
    };
    line(&header);
    for row in &cells {
        line(&row.each_ref().map(String::as_str));
    }
    if targets.is_empty() {
        out.push_str("(no targets: no pods with endpoints on this node yet)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(pod: &str, health: &str, error: Option<&str>) -> TargetStatus {
        TargetStatus {
            namespace: "shop".into(),
            pod: pod.into(),
            container: "app".into(),
            endpoint: "http-metrics".into(),
            job: "shop".into(),
            instance: "10.0.0.1:8080".into(),
            port: 8080,
            path: "/metrics".into(),
            health: health.into(),
            source: Some("fetched".into()),
            age_seconds: Some(1.25),
            samples: error.is_none().then_some(50),
            body_bytes: error.is_none().then_some(4000),
            native_only_histograms: error.is_none().then_some(0),
            error: error.map(Into::into),
        }
    }

    #[test]
    fn down_targets_come_first_with_their_reason() {
        let t = table(&[
            target("cart-0", "up", None),
            target("cart-1", "down", Some("HTTP status 500")),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("NAMESPACE  POD"), "{t}");
        assert!(lines[1].contains("cart-1"), "{t}");
        assert!(lines[1].ends_with("HTTP status 500"), "{t}");
        assert!(
            lines[2].contains("cart-0") && lines[2].contains(" up "),
            "{t}"
        );
        assert!(lines[2].contains("http-metrics (:8080/metrics)"), "{t}");
        assert!(lines[2].contains("  shop  10.0.0.1:8080  "), "{t}");
        // Columns line up: every row has HEALTH at the same offset.
        let at = lines[0].find("HEALTH").unwrap();
        assert_eq!(&lines[1][at..at + 4], "down");
        assert_eq!(&lines[2][at..at + 2], "up");
    }

    #[test]
    fn no_targets_says_so() {
        assert!(table(&[]).contains("no targets"));
    }

    #[tokio::test]
    async fn addresses_that_are_not_an_agent_are_named() {
        let args = |url: &str| StatusArgs {
            url: url.into(),
            token_file: None,
            ca_file: None,
        };
        let e = targets(&args("https://node:9897")).await.unwrap_err();
        assert!(matches!(e, StatusError::NoCa { .. }), "{e}");
        let e = targets(&args("ftp://node:9897")).await.unwrap_err();
        assert!(matches!(e, StatusError::Url { .. }), "{e}");
        let e = targets(&args("http://node:9897/metrics"))
            .await
            .unwrap_err();
        assert!(matches!(e, StatusError::Url { .. }), "{e}");
        // A port nothing listens on: the error names it.
        let idle = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = idle.local_addr().unwrap();
        drop(idle);
        let e = targets(&args(&format!("http://{addr}"))).await.unwrap_err();
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
    }
}
