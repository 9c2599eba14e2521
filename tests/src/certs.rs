//! Certificates for the strict-mTLS sidecar, made with the `openssl` CLI: the mesh CA, the
//! sidecar's server certificate, a client certificate the sidecar accepts, and a foreign CA with a
//! client certificate it must refuse.

use std::path::PathBuf;

use crate::{run, Result, TempDir};

/// The DNS name in the sidecar's certificate; clients use `curl --resolve NAME:PORT:POD_IP`.
pub const SERVER_NAME: &str = "sidecar.loupe.test";

/// A certificate file and its key.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// All files live in a temporary directory removed on drop.
#[derive(Debug)]
pub struct Certs {
    pub ca: Pair,
    pub server: Pair,
    pub client: Pair,
    pub foreign_ca: Pair,
    pub foreign_client: Pair,
    dir: TempDir,
}

impl Certs {
    pub fn new() -> Result<Certs> {
        let dir = TempDir::new("loupe-certs")?;
        let ca = self_signed(&dir, "ca", "loupe test mesh CA")?;
        let foreign_ca = self_signed(&dir, "foreign-ca", "some other CA")?;
        let server = signed(
            &dir,
            "server",
            &ca,
            "sidecar",
            &format!("subjectAltName=DNS:{SERVER_NAME}\nextendedKeyUsage=serverAuth\n"),
        )?;
        let client_ext = "subjectAltName=URI:spiffe://loupe.test/ns/monitoring/sa/prometheus\nextendedKeyUsage=clientAuth\n";
        let client = signed(&dir, "client", &ca, "prometheus", client_ext)?;
        let foreign_client = signed(&dir, "foreign-client", &foreign_ca, "intruder", client_ext)?;
        Ok(Certs {
            ca,
            server,
            client,
            foreign_ca,
            foreign_client,
            dir,
        })
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

fn path_str(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

pub fn self_signed(dir: &TempDir, name: &str, cn: &str) -> Result<Pair> {
    let pair = Pair {
        cert: dir.path().join(format!("{name}.crt")),
        key: dir.path().join(format!("{name}.key")),
    };
    run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &path_str(&pair.key),
            "-out",
            &path_str(&pair.cert),
        ],
    )?;
    Ok(pair)
}

pub fn signed(dir: &TempDir, name: &str, ca: &Pair, cn: &str, ext: &str) -> Result<Pair> {
    let pair = Pair {
        cert: dir.path().join(format!("{name}.crt")),
        key: dir.path().join(format!("{name}.key")),
    };
    let csr = dir.path().join(format!("{name}.csr"));
    let ext_file = dir.path().join(format!("{name}.ext"));
    std::fs::write(&ext_file, ext)
        .map_err(crate::io_err(format!("writing {}", ext_file.display())))?;
    run(
        "openssl",
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &path_str(&pair.key),
            "-out",
            &path_str(&csr),
        ],
    )?;
    run(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &path_str(&csr),
            "-CA",
            &path_str(&ca.cert),
            "-CAkey",
            &path_str(&ca.key),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &path_str(&ext_file),
            "-out",
            &path_str(&pair.cert),
        ],
    )?;
    Ok(pair)
}
