//! Redis over TLS (`rediss://`, `rediss+cluster://`): the trust and client certificate read
//! once at start, for the bridge's own connections (rustls) and for redis-rs's (the registry,
//! the cluster map). Certificates are always verified, against the system's roots or
//! `--redis-ca`, and the host name of the URL (or of a cluster node) must match: a connection
//! that fails either is an error, never a fallback to plain text.

use std::path::PathBuf;
use std::sync::Arc;

use redis::{ClientTlsConfig, TlsCertificates};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// `--redis-ca`, `--redis-cert`, `--redis-key`: files in PEM.
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }
}

/// What every TLS connection to Redis is made with.
pub struct Tls {
    connector: TlsConnector,
    /// The same trust and identity, as redis-rs takes them.
    certificates: TlsCertificates,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

fn read(path: &PathBuf) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

impl Tls {
    /// Reads the files: a CA replaces the system's roots; a certificate needs its key.
    ///
    /// # Errors
    /// A file that cannot be read or holds no usable PEM, a certificate without its key (or
    /// the reverse), or no root to trust.
    pub fn load(files: &TlsFiles) -> Result<Arc<Tls>, String> {
        let ca = files.ca.as_ref().map(read).transpose()?;
        let mut roots = RootCertStore::empty();
        match &ca {
            Some(pem) => {
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| format!("--redis-ca: {e}"))?;
                    roots.add(cert).map_err(|e| format!("--redis-ca: {e}"))?;
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        if roots.is_empty() {
            return Err("no certificate to trust: give --redis-ca".into());
        }
        let builder = ClientConfig::builder().with_root_certificates(roots);
        let (config, client_tls) = match (&files.cert, &files.key) {
            (None, None) => (builder.with_no_client_auth(), None),
            (Some(cert), Some(key)) => {
                let (cert_pem, key_pem) = (read(cert)?, read(key)?);
                let chain = CertificateDer::pem_slice_iter(&cert_pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("--redis-cert: {e}"))?;
                let private = PrivateKeyDer::from_pem_slice(&key_pem)
                    .map_err(|e| format!("--redis-key: {e}"))?;
                let config = builder
                    .with_client_auth_cert(chain, private)
                    .map_err(|e| format!("--redis-cert/--redis-key: {e}"))?;
                let identity = ClientTlsConfig {
                    client_cert: cert_pem,
                    client_key: key_pem,
                };
                (config, Some(identity))
            }
            _ => return Err("--redis-cert and --redis-key go together".into()),
        };
        Ok(Arc::new(Tls {
            connector: TlsConnector::from(Arc::new(config)),
            certificates: TlsCertificates {
                client_tls,
                root_cert: ca,
            },
        }))
    }

    /// The TLS handshake over `tcp` with `host`, its certificate verified.
    ///
    /// # Errors
    /// The handshake fails: an untrusted certificate, another host name, a refused identity.
    pub async fn connect(
        &self,
        host: &str,
        tcp: TcpStream,
    ) -> Result<TlsStream<TcpStream>, String> {
        let name = ServerName::try_from(host.to_string()).map_err(|e| format!("{host}: {e}"))?;
        self.connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host}: {e}"))
    }

    /// A redis-rs client for `info` (a `rediss` address) with this trust and identity.
    ///
    /// # Errors
    /// redis-rs refuses the certificates (they were read and checked already).
    pub fn client(&self, info: redis::ConnectionInfo) -> Result<redis::Client, String> {
        redis::Client::build_with_tls(info, self.certificates.clone()).map_err(|e| e.to_string())
    }
}
