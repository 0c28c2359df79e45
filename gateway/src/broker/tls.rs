//! TLS server settings of a `tls`/`wss` listener: PEM files -> a rustls `ServerConfig`.
//!
//! Owns loading the certificate chain, private key, client CA and its CRLs, the protocol versions,
//! client-certificate verification (`verify_peer`, `fail_if_no_peer_cert`) and session
//! resumption (a bounded server-side session cache for TLS 1.2 session ids and stateless,
//! rotating tickets for both versions). It runs once per listener at start-up, so a bad file is
//! one error naming the listener, the file and why; it never touches a connection.
//! The crypto provider is always *ring* (no aws-lc, no OpenSSL), as the design requires.

use crate::config::ListenerTls;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls::{self, pki_types, server::WebPkiClientVerifier, RootCertStore};

/// TLS 1.2 resumption sessions kept in memory per listener (about 100 bytes each).
const SESSION_CACHE: usize = 1024;

/// Why a listener's TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A PEM file could not be read.
    #[error("cannot read {file}: {source}")]
    Read {
        /// The file.
        file: String,
        /// The OS or PEM error.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file holds no item of the expected kind.
    #[error("{file} holds no {what}")]
    Empty {
        /// The file.
        file: String,
        /// "certificate" or "private key".
        what: &'static str,
    },
    /// rustls refused the combination (key does not match the certificate, bad CA, ...).
    #[error("{0}")]
    Rustls(String),
}

/// Builds the rustls server configuration of one listener.
pub fn server_config(tls: &ListenerTls) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    let certs = read_certs(&tls.cert)?;
    let key = read_key(&tls.key)?;
    let mut versions = Vec::new();
    if tls.tls12 {
        versions.push(&rustls::version::TLS12);
    }
    if tls.tls13 {
        versions.push(&rustls::version::TLS13);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
    let builder = match (&tls.ca, tls.verify_peer) {
        (Some(ca), true) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| TlsSetupError::Rustls(format!("{}: {e}", ca.display())))?;
            }
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if let Some(crl) = &tls.crl {
                verifier = verifier.with_crls(read_crls(crl)?);
            }
            if !tls.fail_if_no_peer_cert {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier
                .build()
                .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        TlsSetupError::Rustls(format!(
            "{} and {}: {e}",
            tls.cert.display(),
            tls.key.display()
        ))
    })?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
    config.ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
    // OpenSSL (and so mosquitto) sends two; a client reconnects with one.
    config.send_tls13_tickets = 2;
    Ok(Arc::new(config))
}

fn open(path: &Path) -> Result<BufReader<File>, TlsSetupError> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|source| TlsSetupError::Read {
            file: path.display().to_string(),
            source,
        })
}

pub(crate) fn read_certs(
    path: &Path,
) -> Result<Vec<pki_types::CertificateDer<'static>>, TlsSetupError> {
    let certs = rustls_pemfile::certs(&mut open(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsSetupError::Read {
            file: path.display().to_string(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError::Empty {
            file: path.display().to_string(),
            what: "PEM certificate",
        });
    }
    Ok(certs)
}

/// The certificate revocation lists in a PEM file (at least one).
fn read_crls(
    path: &Path,
) -> Result<Vec<pki_types::CertificateRevocationListDer<'static>>, TlsSetupError> {
    let crls = rustls_pemfile::crls(&mut open(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsSetupError::Read {
            file: path.display().to_string(),
            source,
        })?;
    if crls.is_empty() {
        return Err(TlsSetupError::Empty {
            file: path.display().to_string(),
            what: "PEM certificate revocation list",
        });
    }
    Ok(crls)
}

pub(crate) fn read_key(path: &Path) -> Result<pki_types::PrivateKeyDer<'static>, TlsSetupError> {
    match rustls_pemfile::private_key(&mut open(path)?) {
        Ok(Some(key)) => Ok(key),
        Ok(None) => Err(TlsSetupError::Empty {
            file: path.display().to_string(),
            what: "PEM private key",
        }),
        Err(source) => Err(TlsSetupError::Read {
            file: path.display().to_string(),
            source,
        }),
    }
}
