//! TLS for a fake member: client certificates checked against the cluster's etcd CA, as a
//! kubeadm etcd does (`--client-cert-auth`), and a serving certificate nobody verifies.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::Error;

/// A serving certificate chain and its key, DER encoded.
pub type Serving = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// The server configuration: a client certificate is required and must chain to one of the
/// certificates in `etcd_ca_certs_pem` (the `<cluster>-etcd` Secret's `tls.crt`); ALPN `h2`,
/// which grpc-go insists on.
pub fn server_tls(
    etcd_ca_certs_pem: &[u8],
    serving: Serving,
) -> Result<rustls::ServerConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(etcd_ca_certs_pem) {
        roots.add(cert.map_err(Error::Pem)?)?;
    }
    if roots.is_empty() {
        return Err(Error::NoCaCertificate);
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(Error::ClientVerifier)?;
    let (chain, key) = serving;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A self-signed serving certificate for `names`: KCP skips server verification, so no CA
/// private key is needed to serve.
pub fn self_signed_serving(names: &[String]) -> Result<Serving, Error> {
    let certified = rcgen::generate_simple_self_signed(names.to_vec())?;
    let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
    Ok((
        vec![certified.cert.der().clone()],
        PrivateKeyDer::Pkcs8(key),
    ))
}
