//! TLS for the node target (rustls, ring): the server configuration a web configuration file or
//! `--tls-self-signed` asks for, in the terms of Prometheus' exporter-toolkit (Go's `crypto/tls`
//! names for client-auth types, versions, cipher suites and curves).
//!
//! What rustls cannot do is refused by name rather than approximated, except the minimum
//! version: TLS 1.0 and 1.1 are not offered by rustls, so `min_version: TLS10` serves 1.2 and up
//! (a warning says so).

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
    SupportedCipherSuite, SupportedProtocolVersion,
};
use std::sync::Arc;

/// exporter-toolkit's `client_auth_type`, with Go's meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// No certificate asked for.
    NoClientCert,
    /// Asked for; any certificate or none is accepted, unverified.
    RequestClientCert,
    /// Required; any certificate is accepted, unverified (the client still proves it holds its key).
    RequireAnyClientCert,
    /// Optional; one given must chain to `client_ca_file`.
    VerifyClientCertIfGiven,
    /// Required, and must chain to `client_ca_file`.
    RequireAndVerifyClientCert,
}

impl ClientAuth {
    pub fn parse(name: &str) -> Result<ClientAuth, String> {
        Ok(match name {
            "" | "NoClientCert" => ClientAuth::NoClientCert,
            "RequestClientCert" => ClientAuth::RequestClientCert,
            // exporter-toolkit keeps the old name too.
            "RequireAnyClientCert" | "RequireClientCert" => ClientAuth::RequireAnyClientCert,
            "VerifyClientCertIfGiven" => ClientAuth::VerifyClientCertIfGiven,
            "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerifyClientCert,
            other => {
                return Err(format!(
                    "'{other}' is not one of NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert"
                ))
            }
        })
    }

    fn verifies(self) -> bool {
        matches!(
            self,
            ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert
        )
    }
}

/// Everything the server configuration is made of, already read from its files.
pub struct TlsSettings {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub client_auth: ClientAuth,
    /// PEM certificates of the CAs client certificates must chain to.
    pub client_ca_pem: Option<Vec<u8>>,
    /// Go names; empty: rustls' defaults. TLS 1.3 suites are always on (as in Go).
    pub cipher_suites: Vec<String>,
    /// Go names (`CurveP256`, `CurveP384`, `X25519`); empty: rustls' defaults.
    pub curves: Vec<String>,
    pub min_version: Option<String>,
    pub max_version: Option<String>,
    pub prefer_server_cipher_suites: bool,
}

impl TlsSettings {
    /// A certificate and key with exporter-toolkit's defaults for everything else.
    pub fn new(cert_pem: Vec<u8>, key_pem: Vec<u8>) -> TlsSettings {
        TlsSettings {
            cert_pem,
            key_pem,
            client_auth: ClientAuth::NoClientCert,
            client_ca_pem: None,
            cipher_suites: vec![],
            curves: vec![],
            min_version: None,
            max_version: None,
            prefer_server_cipher_suites: true,
        }
    }
}

/// A setting that cannot be served: the field and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub field: &'static str,
    pub reason: String,
}

fn refused(field: &'static str, reason: impl Into<String>) -> Refused {
    Refused {
        field,
        reason: reason.into(),
    }
}

/// The rustls configuration of `settings`, speaking HTTP/1.1 only (ALPN).
pub fn server_config(settings: &TlsSettings) -> Result<Arc<ServerConfig>, Refused> {
    let chain = certificates(&settings.cert_pem).map_err(|e| refused("cert_file", e))?;
    let key = PrivateKeyDer::from_pem_slice(&settings.key_pem).map_err(|e| {
        refused(
            "key_file",
            format!("no private key in PEM form PKCS#1, PKCS#8 or SEC1 (unencrypted): {e}"),
        )
    })?;
    let provider = Arc::new(provider(settings)?);
    let versions = versions(
        settings.min_version.as_deref(),
        settings.max_version.as_deref(),
    )?;
    let verifier = client_verifier(settings, &provider)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| refused("cipher_suites", e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| refused("key_file", format!("does not fit cert_file: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ignore_client_order = settings.prefer_server_cipher_suites;
    Ok(Arc::new(config))
}

fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    Ok(certs)
}

fn provider(settings: &TlsSettings) -> Result<CryptoProvider, Refused> {
    let mut provider = rustls::crypto::ring::default_provider();
    if !settings.cipher_suites.is_empty() {
        let mut suites: Vec<SupportedCipherSuite> = provider
            .cipher_suites
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS13)
            .copied()
            .collect();
        for name in &settings.cipher_suites {
            // Go's names are IANA's; it also keeps two without the hash.
            let wanted = match name.as_str() {
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305"
                | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305" => {
                    format!("{name}_SHA256")
                }
                // TLS 1.3's (Go lists them too, and ignores them here).
                "TLS_AES_128_GCM_SHA256"
                | "TLS_AES_256_GCM_SHA384"
                | "TLS_CHACHA20_POLY1305_SHA256" => continue,
                _ => name.clone(),
            };
            let found = provider
                .cipher_suites
                .iter()
                .find(|s| format!("{:?}", s.suite()) == wanted);
            match found {
                Some(s) if s.version() == &rustls::version::TLS13 => {} // always on
                Some(s) => suites.push(*s),
                None => {
                    return Err(refused(
                        "cipher_suites",
                        format!(
                            "{name} is not a suite rustls offers (it offers {})",
                            names(&provider)
                        ),
                    ))
                }
            }
        }
        provider.cipher_suites = suites;
    }
    if !settings.curves.is_empty() {
        let mut groups: Vec<&'static dyn SupportedKxGroup> = Vec::new();
        for name in &settings.curves {
            let wanted =
                match name.as_str() {
                    "CurveP256" => "secp256r1",
                    "CurveP384" => "secp384r1",
                    "X25519" => "X25519",
                    "CurveP521" => return Err(refused(
                        "curve_preferences",
                        "CurveP521 is not offered by rustls (CurveP256, CurveP384 and X25519 are)",
                    )),
                    other => {
                        return Err(refused(
                            "curve_preferences",
                            format!("unknown curve: {other}"),
                        ))
                    }
                };
            if let Some(group) = provider
                .kx_groups
                .iter()
                .find(|g| format!("{:?}", g.name()) == wanted)
            {
                groups.push(*group);
            }
        }
        provider.kx_groups = groups;
    }
    Ok(provider)
}

fn names(provider: &CryptoProvider) -> String {
    let names: Vec<String> = provider
        .cipher_suites
        .iter()
        .filter(|s| s.version() != &rustls::version::TLS13)
        .map(|s| format!("{:?}", s.suite()))
        .collect();
    names.join(", ")
}

fn version_rank(field: &'static str, name: &str) -> Result<u8, Refused> {
    match name {
        "TLS10" => Ok(10),
        "TLS11" => Ok(11),
        "TLS12" => Ok(12),
        "TLS13" => Ok(13),
        other => Err(refused(
            field,
            format!("'{other}' is not one of TLS10, TLS11, TLS12, TLS13"),
        )),
    }
}

/// exporter-toolkit's defaults: TLS 1.2 to 1.3.
fn versions(
    min: Option<&str>,
    max: Option<&str>,
) -> Result<Vec<&'static SupportedProtocolVersion>, Refused> {
    let min = min.map_or(Ok(12), |m| version_rank("min_version", m))?;
    let max = max.map_or(Ok(13), |m| version_rank("max_version", m))?;
    if min < 12 {
        log::warn!("web config: min_version below TLS12: rustls serves TLS 1.2 and 1.3 only");
    }
    let mut versions = Vec::new();
    if min <= 12 && max >= 12 {
        versions.push(&rustls::version::TLS12);
    }
    if max >= 13 {
        versions.push(&rustls::version::TLS13);
    }
    if versions.is_empty() {
        return Err(refused(
            "max_version",
            "rustls serves TLS 1.2 and 1.3 only; nothing is left between min_version and max_version",
        ));
    }
    Ok(versions)
}

fn client_verifier(
    settings: &TlsSettings,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, Refused> {
    let auth = settings.client_auth;
    match (&settings.client_ca_pem, auth) {
        (Some(_), ClientAuth::NoClientCert) => Err(refused(
            "client_ca_file",
            "client CAs are set but client_auth_type asks for no client certificate",
        )),
        (None, _) if auth.verifies() => Err(refused(
            "client_ca_file",
            "client_auth_type verifies client certificates: it needs client_ca_file (or client_ca)",
        )),
        _ if auth == ClientAuth::NoClientCert => Ok(WebPkiClientVerifier::no_client_auth()),
        (Some(pem), _) if auth.verifies() => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(pem).map_err(|e| refused("client_ca_file", e))? {
                roots
                    .add(cert)
                    .map_err(|e| refused("client_ca_file", e.to_string()))?;
            }
            let builder =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let builder = if auth == ClientAuth::VerifyClientCertIfGiven {
                builder.allow_unauthenticated()
            } else {
                builder
            };
            builder
                .build()
                .map_err(|e| refused("client_ca_file", e.to_string()))
        }
        _ => Ok(Arc::new(AnyClientCert {
            mandatory: auth == ClientAuth::RequireAnyClientCert,
            signatures: HandshakeSignatures(provider.clone()),
        })),
    }
}

/// Go's RequestClientCert and RequireAnyClientCert: whatever certificate is accepted, but the
/// handshake signature is still checked, so the client holds the key of the one it sent.
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    signatures: HandshakeSignatures,
}

/// The handshake-signature checks a verifier makes with its provider's algorithms, also when it
/// accepts the certificate itself unverified.
#[derive(Debug)]
pub(crate) struct HandshakeSignatures(pub Arc<CryptoProvider>);

impl HandshakeSignatures {
    pub fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    pub fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    pub fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

/// A certificate and key made in memory (`--tls-self-signed`), as kube-rbac-proxy does without
/// one: the traffic is encrypted, but a client cannot verify who answers. Valid for `names`.
pub fn self_signed(names: Vec<String>) -> Result<(Vec<u8>, Vec<u8>), String> {
    let made = rcgen::generate_simple_self_signed(names).map_err(|e| e.to_string())?;
    Ok((
        made.cert.pem().into_bytes(),
        made.signing_key.serialize_pem().into_bytes(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> TlsSettings {
        let (cert_pem, key_pem) = self_signed(vec!["localhost".into()]).unwrap();
        TlsSettings::new(cert_pem, key_pem)
    }

    #[test]
    fn a_self_signed_certificate_makes_a_server_config() {
        let config = server_config(&settings()).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn go_cipher_names_map_to_rustls_suites_and_unknown_ones_are_named() {
        let mut s = settings();
        s.cipher_suites = vec![
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".into(),
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305".into(),
            "TLS_AES_128_GCM_SHA256".into(),
        ];
        let config = server_config(&s).unwrap();
        let tls12: Vec<String> = config
            .crypto_provider()
            .cipher_suites
            .iter()
            .filter(|c| c.version() == &rustls::version::TLS12)
            .map(|c| format!("{:?}", c.suite()))
            .collect();
        assert_eq!(
            tls12,
            [
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
            ]
        );
        s.cipher_suites = vec!["TLS_RSA_WITH_AES_128_CBC_SHA".into()];
        let err = server_config(&s).unwrap_err();
        assert_eq!(err.field, "cipher_suites");
        assert!(
            err.reason.contains("TLS_RSA_WITH_AES_128_CBC_SHA"),
            "{err:?}"
        );
    }

    #[test]
    fn versions_follow_go_names_within_what_rustls_serves() {
        assert_eq!(versions(None, None).unwrap().len(), 2);
        assert_eq!(versions(Some("TLS13"), None).unwrap().len(), 1);
        assert_eq!(versions(Some("TLS10"), Some("TLS12")).unwrap().len(), 1);
        assert_eq!(
            versions(None, Some("TLS11")).unwrap_err().field,
            "max_version"
        );
        assert_eq!(
            versions(Some("SSL3"), None).unwrap_err().field,
            "min_version"
        );
    }

    #[test]
    fn client_auth_needs_a_ca_exactly_when_it_verifies() {
        let mut s = settings();
        s.client_auth = ClientAuth::RequireAndVerifyClientCert;
        assert_eq!(server_config(&s).unwrap_err().field, "client_ca_file");
        s.client_auth = ClientAuth::NoClientCert;
        s.client_ca_pem = Some(s.cert_pem.clone());
        assert_eq!(server_config(&s).unwrap_err().field, "client_ca_file");
        s.client_auth = ClientAuth::RequireAndVerifyClientCert;
        server_config(&s).unwrap();
        s.client_auth = ClientAuth::RequireAnyClientCert;
        server_config(&s).unwrap();
        assert!(ClientAuth::parse("Sometimes").is_err());
    }

    #[test]
    fn a_key_that_is_not_pem_is_named() {
        let mut s = settings();
        s.key_pem = b"not a key".to_vec();
        assert_eq!(server_config(&s).unwrap_err().field, "key_file");
        let mut s = settings();
        s.cert_pem = b"".to_vec();
        assert_eq!(server_config(&s).unwrap_err().field, "cert_file");
    }
}
