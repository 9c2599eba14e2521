//! The web configuration (`--web-config-file`) in the format of Prometheus' exporter-toolkit,
//! the file node_exporter users already write: TLS and client certificates, basic-auth users,
//! response headers. Unknown fields are refused by name.
//!
//! The file and every file it names are read again every [`RELOAD_EVERY`]; when their bytes
//! changed, a valid new version applies to new connections (certificate rotation, including the
//! `..data` symlink swap of a Secret volume), and a broken one is logged and counted once while
//! the previous one stays. Turning TLS on or off needs a restart: the listener's clients would
//! otherwise break at once.

use super::basic_auth::Users;
use super::tls::{self, ClientAuth, TlsSettings};
use hyper::header::{HeaderName, HeaderValue};
use ring::digest;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

crate::telemetry::counter!(
    pub RELOADS,
    "loupe_web_config_reloads_total",
    "Changed web configurations (or certificates) that were applied.",
);
crate::telemetry::counter!(
    pub RELOAD_FAILURES,
    "loupe_web_config_reload_failures_total",
    "Changed web configurations (or certificates) that were broken; the previous one stayed.",
);

/// How often the files are read again: a rotation applies within this time (the issue asks 10 s).
pub const RELOAD_EVERY: Duration = Duration::from_secs(3);

/// The headers exporter-toolkit lets a user set, and the values some of them must have.
const HEADERS: &[(&str, &[&str])] = &[
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("web config {file}: {source}")]
    Yaml {
        file: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("web config {file}: {field}: {reason}")]
    Field {
        file: PathBuf,
        field: String,
        reason: String,
    },
}

/// What serves the requests: TLS (or none), the users of basic auth, the extra headers.
#[derive(Default)]
pub struct WebConfig {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub users: Users,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    http_server_config: Option<HttpFile>,
    basic_auth_users: Option<BTreeMap<String, String>>,
    rate_limit: Option<serde_yaml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_ca_file: Option<PathBuf>,
    client_auth_type: Option<String>,
    cipher_suites: Option<Vec<String>>,
    curve_preferences: Option<Vec<String>>,
    min_version: Option<String>,
    max_version: Option<String>,
    prefer_server_cipher_suites: Option<bool>,
    client_allowed_sans: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    /// loupe speaks HTTP/1.1 only (what Prometheus scrapes with); accepted for compatibility.
    #[allow(dead_code)]
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

/// Where the configuration comes from: the file, the in-memory certificate, or both.
pub struct Sources {
    pub file: Option<PathBuf>,
    /// `--tls-self-signed`: the certificate and key made at start (PEM).
    pub self_signed: Option<(Vec<u8>, Vec<u8>)>,
    /// `--authz kubernetes`: the Authorization header carries a bearer token, so basic auth
    /// cannot be used as well.
    pub bearer_tokens: bool,
}

/// Reads and checks every file; the digest covers every byte read (and what could not be read),
/// so that a change to any of them is seen.
pub fn load(sources: &Sources) -> (digest::Digest, Result<WebConfig, WebConfigError>) {
    let mut reader = Reader {
        digest: digest::Context::new(&digest::SHA256),
    };
    let config = build(sources, &mut reader);
    (reader.digest.finish(), config)
}

struct Reader {
    digest: digest::Context,
}

impl Reader {
    fn read(&mut self, file: &Path, field: &str, path: &Path) -> Result<Vec<u8>, WebConfigError> {
        self.digest.update(path.as_os_str().as_encoded_bytes());
        match std::fs::read(path) {
            Ok(bytes) => {
                self.digest.update(&(bytes.len() as u64).to_le_bytes());
                self.digest.update(&bytes);
                Ok(bytes)
            }
            Err(e) => {
                self.digest.update(e.to_string().as_bytes());
                Err(field_error(
                    file,
                    field,
                    format!("cannot read {}: {e}", path.display()),
                ))
            }
        }
    }
}

fn field_error(file: &Path, field: &str, reason: impl Into<String>) -> WebConfigError {
    WebConfigError::Field {
        file: file.to_path_buf(),
        field: field.into(),
        reason: reason.into(),
    }
}

fn build(sources: &Sources, reader: &mut Reader) -> Result<WebConfig, WebConfigError> {
    let Some(file) = &sources.file else {
        let tls = match &sources.self_signed {
            Some((cert, key)) => Some(self_signed_config(cert, key)?),
            None => None,
        };
        return Ok(WebConfig {
            tls,
            ..WebConfig::default()
        });
    };
    let text = reader.read(file, "--web-config-file", file)?;
    let parsed: File = if text.iter().all(u8::is_ascii_whitespace) {
        File::default()
    } else {
        serde_yaml::from_slice(&text).map_err(|source| WebConfigError::Yaml {
            file: file.clone(),
            source,
        })?
    };
    if parsed.rate_limit.is_some() {
        return Err(field_error(file, "rate_limit", "not supported by loupe"));
    }
    let dir = file.parent().unwrap_or(Path::new("."));
    let tls = match (&parsed.tls_server_config, &sources.self_signed) {
        (Some(_), Some(_)) => {
            return Err(field_error(
                file,
                "tls_server_config",
                "set here and --tls-self-signed given: choose one",
            ))
        }
        (Some(t), None) => Some(tls_config(file, dir, t, reader)?),
        (None, Some((cert, key))) => Some(self_signed_config(cert, key)?),
        (None, None) => None,
    };
    let users = parsed.basic_auth_users.unwrap_or_default();
    if sources.bearer_tokens && !users.is_empty() {
        return Err(field_error(
            file,
            "basic_auth_users",
            "cannot be used with --authz kubernetes: both need the Authorization header",
        ));
    }
    let users = Users::new(users)
        .map_err(|(user, reason)| field_error(file, &format!("basic_auth_users.{user}"), reason))?;
    let headers = headers(file, parsed.http_server_config.and_then(|h| h.headers))?;
    Ok(WebConfig {
        tls,
        users,
        headers,
    })
}

fn self_signed_config(
    cert: &[u8],
    key: &[u8],
) -> Result<Arc<rustls::ServerConfig>, WebConfigError> {
    tls::server_config(&TlsSettings::new(cert.to_vec(), key.to_vec()))
        .map_err(|e| field_error(Path::new("--tls-self-signed"), e.field, e.reason))
}

/// One of a file and an inline value (exporter-toolkit's `cert_file` / `cert`).
fn pem_of(
    file: &Path,
    dir: &Path,
    reader: &mut Reader,
    (path_field, path): (&str, &Option<PathBuf>),
    (inline_field, inline): (&str, &Option<String>),
) -> Result<Option<Vec<u8>>, WebConfigError> {
    match (path, inline) {
        (Some(_), Some(_)) => Err(field_error(
            file,
            path_field,
            format!("set together with {inline_field}: choose one"),
        )),
        (Some(p), None) if p.as_os_str().is_empty() => {
            Err(field_error(file, path_field, "empty path"))
        }
        (Some(p), None) => reader.read(file, path_field, &dir.join(p)).map(Some),
        (None, Some(text)) => Ok(Some(text.as_bytes().to_vec())),
        (None, None) => Ok(None),
    }
}

fn tls_config(
    file: &Path,
    dir: &Path,
    t: &TlsFile,
    reader: &mut Reader,
) -> Result<Arc<rustls::ServerConfig>, WebConfigError> {
    if t.client_allowed_sans.is_some() {
        return Err(field_error(
            file,
            "tls_server_config.client_allowed_sans",
            "not supported by loupe (use client_ca_file with a CA of your scrapers only)",
        ));
    }
    let missing = |field: &str| {
        field_error(
            file,
            &format!("tls_server_config.{field}"),
            format!("missing (one of {field}_file or {field} is needed)"),
        )
    };
    let cert = pem_of(
        file,
        dir,
        reader,
        ("tls_server_config.cert_file", &t.cert_file),
        ("tls_server_config.cert", &t.cert),
    )?
    .ok_or_else(|| missing("cert"))?;
    let key = pem_of(
        file,
        dir,
        reader,
        ("tls_server_config.key_file", &t.key_file),
        ("tls_server_config.key", &t.key),
    )?
    .ok_or_else(|| missing("key"))?;
    let client_ca = pem_of(
        file,
        dir,
        reader,
        ("tls_server_config.client_ca_file", &t.client_ca_file),
        ("tls_server_config.client_ca", &t.client_ca),
    )?;
    let client_auth = ClientAuth::parse(t.client_auth_type.as_deref().unwrap_or(""))
        .map_err(|e| field_error(file, "tls_server_config.client_auth_type", e))?;
    tls::server_config(&TlsSettings {
        cert_pem: cert,
        key_pem: key,
        client_auth,
        client_ca_pem: client_ca,
        cipher_suites: t.cipher_suites.clone().unwrap_or_default(),
        curves: t.curve_preferences.clone().unwrap_or_default(),
        min_version: t.min_version.clone(),
        max_version: t.max_version.clone(),
        prefer_server_cipher_suites: t.prefer_server_cipher_suites.unwrap_or(true),
    })
    .map_err(|e| field_error(file, &format!("tls_server_config.{}", e.field), e.reason))
}

fn headers(
    file: &Path,
    given: Option<BTreeMap<String, String>>,
) -> Result<Vec<(HeaderName, HeaderValue)>, WebConfigError> {
    let mut out = Vec::new();
    for (name, value) in given.unwrap_or_default() {
        let field = format!("http_server_config.headers.{name}");
        let Some((_, allowed)) = HEADERS.iter().find(|(h, _)| h.eq_ignore_ascii_case(&name)) else {
            let names: Vec<&str> = HEADERS.iter().map(|(h, _)| *h).collect();
            return Err(field_error(
                file,
                &field,
                format!(
                    "not a header that can be set (these can: {})",
                    names.join(", ")
                ),
            ));
        };
        if !allowed.is_empty() && !allowed.iter().any(|a| a.eq_ignore_ascii_case(&value)) {
            return Err(field_error(
                file,
                &field,
                format!("must be one of {}", allowed.join(", ")),
            ));
        }
        let header_name = HeaderName::try_from(name.as_str())
            .map_err(|e| field_error(file, &field, e.to_string()))?;
        let header_value = HeaderValue::try_from(value.as_str())
            .map_err(|e| field_error(file, &field, e.to_string()))?;
        out.push((header_name, header_value));
    }
    Ok(out)
}

/// The configuration in force, replaced whole when the files change.
pub struct Current {
    config: RwLock<Arc<WebConfig>>,
}

impl Current {
    /// The first load: any error is fatal, and names the file and field.
    pub fn load(sources: Sources) -> Result<(Arc<Current>, Reloader), WebConfigError> {
        let (digest, config) = load(&sources);
        let current = Arc::new(Current {
            config: RwLock::new(Arc::new(config?)),
        });
        let reloader = Reloader {
            sources,
            current: current.clone(),
            last: digest.as_ref().to_vec(),
        };
        Ok((current, reloader))
    }

    /// No file, no TLS: plain HTTP for everyone.
    pub fn plain() -> Arc<Current> {
        Arc::new(Current {
            config: RwLock::new(Arc::new(WebConfig::default())),
        })
    }

    pub fn get(&self) -> Arc<WebConfig> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Reads the files again and applies a valid change ([`RELOAD_EVERY`]).
pub struct Reloader {
    sources: Sources,
    current: Arc<Current>,
    last: Vec<u8>,
}

impl Reloader {
    pub async fn run(mut self) {
        if self.sources.file.is_none() {
            return; // nothing on disk to change
        }
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            self.check();
        }
    }

    /// Applies the files' current contents if they changed; what happened, for tests.
    pub fn check(&mut self) -> Reload {
        let (digest, config) = load(&self.sources);
        if digest.as_ref() == self.last.as_slice() {
            return Reload::Unchanged;
        }
        self.last = digest.as_ref().to_vec();
        let file = self.sources.file.as_deref().unwrap_or(Path::new(""));
        let config = config.and_then(|new| {
            let was_tls = self.current.get().tls.is_some();
            if new.tls.is_some() != was_tls {
                return Err(field_error(
                    file,
                    "tls_server_config",
                    "turning TLS on or off needs a restart",
                ));
            }
            Ok(new)
        });
        match config {
            Ok(new) => {
                *self
                    .current
                    .config
                    .write()
                    .unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
                RELOADS.inc();
                log::info!(
                    "web config {}: changed, applied to new connections",
                    file.display()
                );
                Reload::Applied
            }
            Err(e) => {
                RELOAD_FAILURES.inc();
                log::error!("{e}; the previous configuration stays in force");
                Reload::Kept(e.to_string())
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    Applied,
    /// Broken: the reason; the previous configuration stays.
    Kept(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir(name: &str) -> Dir {
        let path = std::env::temp_dir().join(format!("loupe-web-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Dir(path)
    }

    fn write_pair(dir: &Path, name: &str) {
        let (cert, key) = tls::self_signed(vec![name.into()]).unwrap();
        std::fs::write(dir.join("server.crt"), cert).unwrap();
        std::fs::write(dir.join("server.key"), key).unwrap();
    }

    fn sources(file: &Path) -> Sources {
        Sources {
            file: Some(file.to_path_buf()),
            self_signed: None,
            bearer_tokens: false,
        }
    }

    fn error_of(dir: &Path, yaml: &str) -> String {
        let file = dir.join("web.yml");
        std::fs::write(&file, yaml).unwrap();
        match load(&sources(&file)).1 {
            Ok(_) => panic!("accepted: {yaml}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn relative_paths_are_relative_to_the_file_and_tls_is_on() {
        let d = dir("relative");
        write_pair(&d.0, "localhost");
        let file = d.0.join("web.yml");
        std::fs::write(
            &file,
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS12\nhttp_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: deny\n",
        )
        .unwrap();
        let config = load(&sources(&file)).1.unwrap();
        assert!(config.tls.is_some());
        assert_eq!(config.headers.len(), 1);
    }

    #[test]
    fn broken_files_are_refused_naming_the_field() {
        let d = dir("broken");
        write_pair(&d.0, "localhost");
        let cases = [
            ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  colour: blue\n", "unknown field `colour`"),
            ("tls_server_config:\n  key_file: server.key\n", "tls_server_config.cert"),
            ("tls_server_config:\n  cert_file: nothere.crt\n  key_file: server.key\n", "tls_server_config.cert_file: cannot read"),
            ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.crt\n", "tls_server_config.key_file"),
            ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: Maybe\n", "tls_server_config.client_auth_type"),
            ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS9\n", "tls_server_config.min_version"),
            ("basic_auth_users:\n  alice: plaintext\n", "basic_auth_users.alice"),
            ("http_server_config:\n  headers:\n    Server: loupe\n", "http_server_config.headers.Server"),
            ("http_server_config:\n  headers:\n    X-Content-Type-Options: sniff\n", "must be one of nosniff"),
            ("rate_limit:\n  burst: 1\n", "rate_limit"),
            ("metrics_path: /x\n", "unknown field `metrics_path`"),
        ];
        for (yaml, needle) in cases {
            let err = error_of(&d.0, yaml);
            assert!(err.contains(needle), "{yaml}: {err}");
            assert!(err.contains("web.yml"), "names the file: {err}");
        }
    }

    #[test]
    fn a_key_in_each_pem_form_openssl_writes_is_read() {
        let d = dir("pem-forms");
        for (algorithm, args) in [
            (
                "pkcs8-ec",
                &[
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                ][..],
            ),
            (
                "sec1-ec",
                &["ecparam", "-name", "prime256v1", "-genkey", "-noout"][..],
            ),
            ("pkcs1-rsa", &["genrsa", "-traditional"][..]),
        ] {
            let key = d.0.join(format!("{algorithm}.key"));
            let crt = d.0.join(format!("{algorithm}.crt"));
            let ok = std::process::Command::new("openssl")
                .args(args)
                .arg("-out")
                .arg(&key)
                .args(if algorithm == "pkcs1-rsa" {
                    &["2048"][..]
                } else {
                    &[]
                })
                .status()
                .unwrap()
                .success()
                && std::process::Command::new("openssl")
                    .args([
                        "req",
                        "-x509",
                        "-new",
                        "-days",
                        "1",
                        "-subj",
                        "/CN=loupe",
                        "-key",
                    ])
                    .arg(&key)
                    .arg("-out")
                    .arg(&crt)
                    .status()
                    .unwrap()
                    .success();
            assert!(ok, "openssl made the {algorithm} pair");
            let head = std::fs::read_to_string(&key).unwrap();
            let expected = match algorithm {
                "pkcs8-ec" => "BEGIN PRIVATE KEY",
                "sec1-ec" => "BEGIN EC PRIVATE KEY",
                _ => "BEGIN RSA PRIVATE KEY",
            };
            assert!(head.contains(expected), "{algorithm}: {head}");
            let file = d.0.join("web.yml");
            std::fs::write(
                &file,
                format!("tls_server_config:\n  cert_file: {algorithm}.crt\n  key_file: {algorithm}.key\n"),
            )
            .unwrap();
            load(&sources(&file))
                .1
                .unwrap_or_else(|e| panic!("{algorithm}: {e}"));
        }
    }

    #[test]
    fn a_change_applies_and_a_broken_one_keeps_the_previous() {
        let d = dir("reload");
        write_pair(&d.0, "one.test");
        let file = d.0.join("web.yml");
        std::fs::write(
            &file,
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n",
        )
        .unwrap();
        let (current, mut reloader) = Current::load(sources(&file)).unwrap();
        let first = current.get();
        assert_eq!(reloader.check(), Reload::Unchanged);
        // A rotated certificate: new bytes in the same file.
        write_pair(&d.0, "two.test");
        assert_eq!(reloader.check(), Reload::Applied);
        let second = current.get();
        assert!(!Arc::ptr_eq(&first, &second));
        // A broken key: refused, counted, the second stays; reported once.
        let failures = RELOAD_FAILURES.get();
        std::fs::write(d.0.join("server.key"), "garbage").unwrap();
        assert!(matches!(reloader.check(), Reload::Kept(e) if e.contains("key_file")));
        assert_eq!(RELOAD_FAILURES.get(), failures + 1);
        assert_eq!(reloader.check(), Reload::Unchanged);
        assert!(Arc::ptr_eq(&second, &current.get()));
        // TLS off by reload: refused.
        std::fs::write(&file, "basic_auth_users: {}\n").unwrap();
        assert!(matches!(reloader.check(), Reload::Kept(e) if e.contains("restart")));
    }

    #[test]
    fn self_signed_and_a_tls_section_conflict() {
        let d = dir("conflict");
        write_pair(&d.0, "localhost");
        let file = d.0.join("web.yml");
        std::fs::write(
            &file,
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n",
        )
        .unwrap();
        let sources = Sources {
            file: Some(file),
            self_signed: Some(tls::self_signed(vec!["localhost".into()]).unwrap()),
            bearer_tokens: false,
        };
        let err = load(&sources).1.err().unwrap().to_string();
        assert!(err.contains("--tls-self-signed"), "{err}");
    }
}
