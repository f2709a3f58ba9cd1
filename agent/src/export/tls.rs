//! TLS for OTLP export: the PEM files of [`TlsFiles`] read and checked once,
//! at start, and turned into the client configuration of each protocol
//! (tonic's for gRPC, a rustls `ClientConfig` for reqwest).
//!
//! Roots: the CA file (`OTEL_EXPORTER_OTLP_CERTIFICATE`) when given, else the
//! system's store through rustls-native-certs. The system store rather than
//! webpki-roots' compiled-in Mozilla list, because a collector inside a
//! company is usually signed by a CA the administrators added to the
//! machine's store (`update-ca-certificates`), which a compiled-in list
//! never knows; and the system store follows the distribution's updates.
//! Crypto: ring, passed explicitly, so nothing depends on a process-wide
//! default provider.

use std::{path::Path, path::PathBuf, sync::Arc};

use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
};

use super::config::TlsFiles;

/// A TLS setting that cannot work: one line naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} {}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {what} {} holds no PEM certificate", path.display())]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("the {what} {} is not valid PEM", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the client key {} holds no PEM private key", path.display())]
    NoKey { path: PathBuf },
    #[error(
        "a client certificate needs its key and a key its certificate: set both OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY (or --otlp-client-certificate and --otlp-client-key)"
    )]
    Unpaired,
    #[error("the client certificate {} and key {} cannot be used together", cert.display(), key.display())]
    Identity {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("the CA file {} holds no usable certificate", path.display())]
    NoUsableCa { path: PathBuf },
    #[error(
        "no system root certificates found (install ca-certificates, or give the collector's CA with OTEL_EXPORTER_OTLP_CERTIFICATE)"
    )]
    NoSystemRoots,
    #[error("cannot set up TLS")]
    Rustls(#[source] rustls::Error),
}

/// What the files hold, checked.
#[derive(Clone, Debug)]
pub struct ClientTls {
    /// The CA file's PEM text, or `None` for the system's roots.
    ca_pem: Option<Vec<u8>>,
    roots: Arc<RootCertStore>,
    /// The client certificate chain's and key's PEM text.
    identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    identity: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn certificates(
    what: &'static str,
    path: &Path,
) -> Result<(Vec<u8>, Vec<CertificateDer<'static>>), TlsError> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            what,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_owned(),
        });
    }
    Ok((pem, certs))
}

#[allow(
    deprecated,
    reason = "ring has no post-quantum key exchange; aws-lc-rs has, but needs cmake and a C build, and tonic's tls-ring connector uses ring too"
)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl ClientTls {
    /// Reads and checks the files; the system's roots when no CA file is given.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        if files.client_certificate.is_some() != files.client_key.is_some() {
            return Err(TlsError::Unpaired);
        }
        let mut roots = RootCertStore::empty();
        let ca_pem = match &files.certificate {
            Some(path) => {
                let (pem, certs) = certificates("CA file", path)?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(TlsError::NoUsableCa { path: path.clone() });
                }
                Some(pem)
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for error in &found.errors {
                    log::debug!("loading the system's root certificates: {error}");
                }
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    return Err(TlsError::NoSystemRoots);
                }
                None
            }
        };
        let (identity_pem, identity) = match (&files.client_certificate, &files.client_key) {
            (None, None) => (None, None),
            (Some(cert), Some(key)) => {
                let (cert_pem, chain) = certificates("client certificate", cert)?;
                let key_pem = read("client key", key)?;
                let private =
                    PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| match source {
                        rustls::pki_types::pem::Error::NoItemsFound => {
                            TlsError::NoKey { path: key.clone() }
                        }
                        source => TlsError::Pem {
                            what: "client key",
                            path: key.clone(),
                            source,
                        },
                    })?;
                // Proves the key is usable and matches the certificate.
                ClientConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .map_err(TlsError::Rustls)?
                    .with_root_certificates(RootCertStore::empty())
                    .with_client_auth_cert(chain.clone(), private.clone_key())
                    .map_err(|source| TlsError::Identity {
                        cert: cert.clone(),
                        key: key.clone(),
                        source,
                    })?;
                (Some((cert_pem, key_pem)), Some((chain, Arc::new(private))))
            }
            _ => return Err(TlsError::Unpaired),
        };
        Ok(Self {
            ca_pem,
            roots: Arc::new(roots),
            identity_pem,
            identity,
        })
    }

    /// tonic's client configuration (it adds the `h2` ALPN itself).
    pub fn grpc(&self) -> tonic::transport::ClientTlsConfig {
        let mut config = tonic::transport::ClientTlsConfig::new();
        config = match &self.ca_pem {
            Some(pem) => config.ca_certificate(tonic::transport::Certificate::from_pem(pem)),
            None => config.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity_pem {
            config = config.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        config
    }

    /// A rustls configuration for HTTP/1.1 (reqwest).
    pub fn http(&self) -> Result<ClientConfig, TlsError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Rustls)?
            .with_root_certificates(self.roots.clone());
        let mut config = match &self.identity {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(TlsError::Rustls)?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// The rustls configuration of a cleartext (`http://`) HTTP exporter:
/// reqwest builds one for every client, and this one trusts nothing, so a
/// redirect to `https://` cannot succeed unverified.
pub fn cleartext_http() -> Result<ClientConfig, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rustls)?
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    #[test]
    fn bad_files_name_themselves() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let err = ClientTls::load(&TlsFiles {
            certificate: Some(missing.clone()),
            ..Default::default()
        })
        .expect_err("missing");
        assert_eq!(
            err.to_string(),
            format!("cannot read the CA file {}", missing.display())
        );

        let text = write(dir.path(), "text.pem", "not a certificate\n");
        let err = ClientTls::load(&TlsFiles {
            certificate: Some(text.clone()),
            ..Default::default()
        })
        .expect_err("no PEM");
        assert_eq!(
            err.to_string(),
            format!("the CA file {} holds no PEM certificate", text.display())
        );

        let broken = write(
            dir.path(),
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        );
        let err = ClientTls::load(&TlsFiles {
            certificate: Some(broken.clone()),
            ..Default::default()
        })
        .expect_err("bad PEM");
        assert!(
            err.to_string().contains(&broken.display().to_string()),
            "{err}"
        );

        let err = ClientTls::load(&TlsFiles {
            client_certificate: Some(text),
            ..Default::default()
        })
        .expect_err("unpaired");
        assert!(matches!(err, TlsError::Unpaired), "{err}");
    }
}
