//! Mutual TLS between nodes (optional, `[node] tls_cert / tls_key / tls_ca`).
//!
//! Every node presents its certificate and accepts only peers whose
//! certificate chains to the cluster's CA, in both directions: the listener
//! requires a client certificate, and a dialling node checks the listener's
//! certificate against the host it dialled (a DNS name or an IP address in
//! the certificate's subjectAltName). The cookie is still checked inside the
//! TLS session.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The three PEM files of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// This node's certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA that signs every node's certificate.
    pub ca: PathBuf,
}

/// Why the TLS setup failed, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {message}", file.display())]
    File { file: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The listener's acceptor and the dialler's connector.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: TlsAcceptor,
    pub connector: TlsConnector,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

fn file_err(file: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        file: file.to_path_buf(),
        message: message.to_string(),
    }
}

fn certs(file: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
        .map_err(|e| file_err(file, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(file, e))?;
    if certs.is_empty() {
        return Err(file_err(file, "no CERTIFICATE in the file"));
    }
    Ok(certs)
}

/// Load the files and build both sides.
pub fn load(files: &TlsFiles) -> Result<Tls, TlsError> {
    let chain = certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| file_err(&files.key, e))?;
    let mut roots = RootCertStore::empty();
    for c in certs(&files.ca)? {
        roots
            .add(c)
            .map_err(|e| file_err(&files.ca, format!("not a usable CA certificate: {e}")))?;
    }
    let roots = Arc::new(roots);
    // One provider, named: a process with several enabled would otherwise panic.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| file_err(&files.key, format!("does not match the certificate: {e}")))?;
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| file_err(&files.key, format!("does not match the certificate: {e}")))?;
    Ok(Tls {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        connector: TlsConnector::from(Arc::new(client)),
    })
}

/// The name a dialled address's certificate must carry: its host part.
pub fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
    let host = match addr.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    };
    ServerName::try_from(host.to_string()).map_err(|e| format!("{host:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_come_from_the_dialled_host() {
        assert!(matches!(
            server_name("127.0.0.1:4000").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]:4000").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("node1.example:4000").unwrap(),
            ServerName::DnsName(_)
        ));
    }

    #[test]
    fn missing_files_are_named() {
        let e = load(&TlsFiles {
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
            ca: "/nonexistent/ca.pem".into(),
        })
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/cert.pem"), "{e}");
    }
}
