//! One cluster's TLS: the front serves with a certificate its CA signed (so the
//! kubeconfig Cluster API generates, which trusts only that CA, works unchanged), and it
//! accepts only client certificates that CA issued. A certificate of another cluster is
//! refused during the handshake, before any request is read.

use std::sync::Arc;

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::error::{Error, Result};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server configuration of one cluster's listener: a serving certificate for `hosts`
/// (DNS names or IP addresses) signed by the cluster's CA, and a client-certificate check
/// with that CA as the only root.
pub fn server_config(
    cluster: &str,
    ca_cert_pem: &str,
    ca_key_pem: &str,
    hosts: &[String],
) -> Result<rustls::ServerConfig> {
    let ca_error = |message: String| Error::Ca {
        cluster: cluster.to_string(),
        message,
    };
    let ca_der = CertificateDer::from_pem_slice(ca_cert_pem.as_bytes())
        .map_err(|e| ca_error(format!("the certificate is not PEM: {e}")))?;
    let ca_key = KeyPair::from_pem(ca_key_pem)
        .map_err(|e| ca_error(format!("the private key is unusable: {e}")))?;
    let issuer = Issuer::from_ca_cert_der(&ca_der, ca_key)
        .map_err(|e| ca_error(format!("the certificate is unusable: {e}")))?;

    let mut params = CertificateParams::new(hosts.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let key = KeyPair::generate()?;
    let serving = params.signed_by(&key, &issuer)?;

    let mut roots = RootCertStore::empty();
    roots
        .add(ca_der.clone())
        .map_err(|e| ca_error(format!("not usable as a trust root: {e}")))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| ca_error(format!("no client-certificate check: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![serving.der().clone(), ca_der],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, IsCa};

    fn ca() -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_clusters_ca_makes_a_server_configuration() {
        let (cert, key) = ca();
        let config = server_config("test1", &cert, &key, &["127.0.0.1".into()]).unwrap();
        assert_eq!(config.alpn_protocols[0], b"h2");
    }

    #[test]
    fn a_ca_that_is_not_pem_is_refused() {
        let (cert, _) = ca();
        let err = server_config("test1", &cert, "not a key", &[]).unwrap_err();
        assert_eq!(err.reason(), "ca");
        assert!(err.to_string().contains("test1"), "{err}");
        let err = server_config("test1", "nothing", "nothing", &[]).unwrap_err();
        assert_eq!(err.reason(), "ca");
    }
}
