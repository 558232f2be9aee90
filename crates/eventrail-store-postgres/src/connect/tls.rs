//! rustls client configurations for each `sslmode`, as libpq applies them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{SslClientCert, SslMode, SslRootCert};
use crate::ConnectError;

/// The ring provider, named explicitly: a dependency graph that also enables aws-lc-rs would
/// otherwise need a process-wide default.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verify {
    /// Encryption only (libpq's `prefer` and `require` without a CA file).
    Nothing,
    /// The chain up to a trusted root, not the host name (`verify-ca`, `require` with a CA file).
    Chain,
    /// The chain and the host name (`verify-full`).
    Full,
}

/// What `mode` checks, given whether a CA file was named.
pub(crate) fn verification(mode: SslMode, root_cert_given: bool) -> Verify {
    match mode {
        SslMode::Disable | SslMode::Prefer => Verify::Nothing,
        // libpq: "if a root CA file exists, the behavior of sslmode=require will be the same as
        // that of verify-ca".
        SslMode::Require if root_cert_given => Verify::Chain,
        SslMode::Require => Verify::Nothing,
        SslMode::VerifyCa => Verify::Chain,
        SslMode::VerifyFull => Verify::Full,
    }
}

/// libpq's default CA file, used for `verify-*` when `sslrootcert` is not given and it exists.
fn default_root_file() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let path = Path::new(&home).join(".postgresql/root.crt");
    path.is_file().then_some(path)
}

fn roots(root: Option<&SslRootCert>) -> Result<RootCertStore, ConnectError> {
    let root = match root {
        Some(root) => root.clone(),
        None => default_root_file().map_or(SslRootCert::System, SslRootCert::File),
    };
    let mut store = RootCertStore::empty();
    match root {
        SslRootCert::File(path) => {
            let fail = |source: Box<dyn std::error::Error + Send + Sync>| ConnectError::RootCert {
                path: path.clone(),
                source,
            };
            let certs = CertificateDer::pem_file_iter(&path)
                .map_err(|e| fail(e.into()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| fail(e.into()))?;
            if certs.is_empty() {
                return Err(fail("the file holds no PEM certificate".into()));
            }
            for cert in certs {
                store.add(cert).map_err(|e| fail(e.into()))?;
            }
        }
        SslRootCert::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(ConnectError::NoSystemRoots {
                    errors: found.errors.iter().map(ToString::to_string).collect(),
                });
            }
        }
    }
    Ok(store)
}

/// The client certificate chain and key, read from their PEM files.
fn client_identity(
    client: &SslClientCert,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), ConnectError> {
    let fail = |path: &Path| {
        let path = path.to_path_buf();
        move |source: Box<dyn std::error::Error + Send + Sync>| ConnectError::ClientCert {
            path,
            source,
        }
    };
    let certs = CertificateDer::pem_file_iter(&client.cert)
        .map_err(|e| fail(&client.cert)(e.into()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(&client.cert)(e.into()))?;
    if certs.is_empty() {
        return Err(fail(&client.cert)(
            "the file holds no PEM certificate".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&client.key).map_err(|e| fail(&client.key)(e.into()))?;
    Ok((certs, key))
}

/// The TLS connector for `mode` (unused by tokio-postgres under `disable`).
pub(crate) fn connector(
    mode: SslMode,
    root: Option<&SslRootCert>,
    client: Option<&SslClientCert>,
) -> Result<MakeRustlsConnect, ConnectError> {
    let provider = provider();
    let identity = match client {
        Some(client) if mode != SslMode::Disable => Some((client, client_identity(client)?)),
        _ => None,
    };
    let finish = |builder: rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>| {
        match identity {
            None => Ok(builder.with_no_client_auth()),
            Some((client, (certs, key))) => {
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| ConnectError::ClientCert {
                        path: client.key.clone(),
                        source: e.into(),
                    })
            }
        }
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(ConnectError::TlsConfig)?;
    let mut config = match verification(mode, root.is_some()) {
        Verify::Nothing => finish(
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider))),
        )?,
        Verify::Chain => {
            let inner = WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots(root)?),
                provider.clone(),
            )
            .build()
            .map_err(|e| ConnectError::TlsConfig(Error::General(e.to_string())))?;
            finish(
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly { inner, provider })),
            )?
        }
        Verify::Full => finish(builder.with_root_certificates(roots(root)?))?,
    };
    // PostgreSQL 17 checks the ALPN name when a client sends one; older servers ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(MakeRustlsConnect::new(config))
}

/// `prefer` and `require`: the connection is encrypted, the certificate is not checked (the
/// handshake's signatures still are), as libpq does without a CA file.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the host name is not compared.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            // The webpki verifier checks the name last, after the chain and revocation: a name
            // error means everything else passed.
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_verify_as_libpq_does() {
        use SslMode::*;
        assert_eq!(verification(Disable, true), Verify::Nothing);
        assert_eq!(verification(Prefer, true), Verify::Nothing);
        assert_eq!(verification(Require, false), Verify::Nothing);
        assert_eq!(verification(Require, true), Verify::Chain);
        assert_eq!(verification(VerifyCa, false), Verify::Chain);
        assert_eq!(verification(VerifyFull, false), Verify::Full);
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_a_typed_error() {
        let missing = SslRootCert::File("/nonexistent/ca.pem".into());
        assert!(matches!(
            connector(SslMode::VerifyFull, Some(&missing), None),
            Err(ConnectError::RootCert { .. })
        ));
        let dir = std::env::temp_dir().join(format!("eventrail-empty-ca-{}", std::process::id()));
        std::fs::write(&dir, "not a certificate\n").unwrap();
        let empty = SslRootCert::File(dir.clone());
        let result = connector(SslMode::VerifyCa, Some(&empty), None);
        let client = SslClientCert {
            cert: dir.clone(),
            key: "/nonexistent/client.key".into(),
        };
        let client_result = connector(SslMode::Require, None, Some(&client));
        std::fs::remove_file(&dir).unwrap();
        assert!(matches!(result, Err(ConnectError::RootCert { .. })));
        assert!(matches!(
            client_result,
            Err(ConnectError::ClientCert { .. })
        ));
        // Nothing is read when nothing is verified.
        assert!(connector(SslMode::Prefer, None, None).is_ok());
    }
}
