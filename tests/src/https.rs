//! HTTPS requests to loupe with `curl`: a client independent of the agent's TLS code (rustls), as
//! Prometheus is. Refusals during the handshake come back as errors holding curl's message.

use std::path::PathBuf;
use std::process::Command;

use crate::certs::Pair;
use crate::http::{parse_response, Response};
use crate::{io_err, Error, Result};

/// How to reach a TLS port.
#[derive(Debug, Clone, Default)]
pub struct Https {
    /// CA to verify loupe's certificate with; `None`: not verified (`-k`).
    pub ca: Option<PathBuf>,
    /// The name loupe's certificate is for, resolved to the address asked.
    pub server_name: Option<String>,
    /// A client certificate to present.
    pub client: Option<Pair>,
}

/// `GET https://addr/path` with `headers`.
pub fn get(addr: &str, path: &str, tls: &Https, headers: &[(&str, &str)]) -> Result<Response> {
    let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "443"));
    let mut args: Vec<String> = ["-sS", "-i", "--max-time", "20"].map(String::from).to_vec();
    let url_host = match &tls.server_name {
        Some(name) => {
            args.extend(["--resolve".into(), format!("{name}:{port}:{host}")]);
            name.as_str()
        }
        None => host,
    };
    match &tls.ca {
        Some(ca) => args.extend(["--cacert".into(), ca.display().to_string()]),
        None => args.push("-k".into()),
    }
    if let Some(pair) = &tls.client {
        args.extend([
            "--cert".into(),
            pair.cert.display().to_string(),
            "--key".into(),
            pair.key.display().to_string(),
        ]);
    }
    for (k, v) in headers {
        args.extend(["-H".into(), format!("{k}: {v}")]);
    }
    args.push(format!("https://{url_host}:{port}{path}"));
    let what = format!("curl https://{url_host}:{port}{path}");
    let out = Command::new("curl")
        .args(&args)
        .output()
        .map_err(io_err(format!("{what} (is curl installed?)")))?;
    if !out.status.success() {
        return Err(Error::Invalid {
            what,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    parse_response(&out.stdout).map_err(|detail| Error::Invalid { what, detail })
}
