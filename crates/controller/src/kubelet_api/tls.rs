//! The kubelet API's TLS: a serving certificate this process makes for itself (the API
//! server does not verify a kubelet's certificate unless `--kubelet-certificate-authority`
//! is set, and no CA private key is ever read here), and a client-certificate check that is
//! deferred until the handshake is done, when the caller's cluster is worked out from it
//! (`super::callers`): which CA to trust depends on which cluster calls.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("making a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("the etcd members' certificate: {0}")]
    Etcd(#[from] fake_etcd::Error),
}

/// A self-signed certificate and its key, as DER.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// A self-signed certificate named `common_name`, valid for `names` (DNS names or IPs),
/// from `not_before` to `not_after`.
pub fn self_signed(
    common_name: &str,
    names: &[String],
    not_before: jiff::Timestamp,
    not_after: jiff::Timestamp,
) -> Result<Identity, TlsError> {
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    params.not_before = to_offset(not_before);
    params.not_after = to_offset(not_after);
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(Identity {
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    })
}

fn to_offset(t: jiff::Timestamp) -> time::OffsetDateTime {
    // rcgen takes `time`'s type; seconds since the epoch carry over exactly.
    time::OffsetDateTime::from_unix_timestamp(t.as_second())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The kubelet API's server configuration: HTTP/1.1 only (the upgrade to SPDY needs it),
/// a client certificate asked for and checked after the handshake.
pub fn kubelet_server_config(identity: Identity) -> Result<rustls::ServerConfig, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(DeferredClientCheck(provider())))
        .with_single_cert(identity.chain, identity.key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A TLS server that presents `identity` and asks nothing of the client (the fake
/// kube-apiserver's certificate, read for its expiry).
pub fn plain_server_config(identity: Identity) -> Result<rustls::ServerConfig, TlsError> {
    Ok(rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)?)
}

/// Takes any client certificate whose handshake signature is valid (the client holds its
/// key); whether a cluster's CA issued it is decided once the handshake is done. A client
/// without a certificate is let through too, to get a clear HTTP error rather than a
/// failed handshake.
#[derive(Debug)]
struct DeferredClientCheck(Arc<CryptoProvider>);

impl ClientCertVerifier for DeferredClientCheck {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: Go's TLS client then offers its certificate whatever its issuer.
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

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
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
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
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
