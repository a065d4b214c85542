//! Which workload cluster's API server is calling: the kubelet client certificate a
//! kube-apiserver presents (`--kubelet-client-certificate`, which kubeadm signs with the
//! cluster's CA) is checked against the CA of each workload cluster's kubeconfig (CAPI
//! writes `<cluster>-ca`'s certificate there). No CA private key is needed for this.
//!
//! A CA may be shared by several clusters (hand-made kubeconfigs, clusters sharing one API
//! server): then the certificate narrows the callers down and the Pod settles which one
//! (see `super::resolve`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::ResourceExt;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use x509_parser::prelude::{FromDer, ParsedExtension, X509Certificate};

use crate::plan::{ClusterKey, KubeconfigSource};
use crate::stores::Stores;
use crate::tolerant::Tolerant;
use crate::workload::parse_kubeconfig;

/// The CA of one workload cluster, ready to check client certificates.
pub struct ClusterCa {
    pub cluster: ClusterKey,
    /// The API server the kubeconfig names: callers with the same server are one caller.
    pub server: String,
    /// Key identifiers and subjects of its CA certificates, to skip a signature check
    /// against CAs that cannot have issued a certificate.
    key_ids: Vec<Vec<u8>>,
    subjects: Vec<Vec<u8>>,
    verifier: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("cluster", &self.cluster)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// Why a kubeconfig gives no CA to check callers against.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{0}")]
    Kubeconfig(#[from] crate::error::Error),
    #[error("the kubeconfig's current cluster has no certificate-authority-data")]
    NoCa,
    #[error("certificate-authority-data holds no PEM certificate")]
    NoCertificate,
    #[error("certificate-authority-data: {0}")]
    Unusable(String),
}

impl ClusterCa {
    /// The CA of the kubeconfig's current context.
    pub fn from_kubeconfig(
        cluster: ClusterKey,
        source: &KubeconfigSource,
    ) -> Result<Self, CaError> {
        let kubeconfig = parse_kubeconfig(source)?;
        let context = kubeconfig
            .current_context
            .as_deref()
            .and_then(|c| kubeconfig.contexts.iter().find(|n| n.name == c))
            .and_then(|c| c.context.as_ref())
            .map(|c| c.cluster.clone());
        let named = kubeconfig
            .clusters
            .iter()
            .find(|c| context.as_deref().is_none_or(|name| c.name == name))
            .and_then(|c| c.cluster.as_ref())
            .ok_or(CaError::NoCa)?;
        let data = named
            .certificate_authority_data
            .as_deref()
            .ok_or(CaError::NoCa)?;
        let pem = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, data.trim())
            .map_err(|_| CaError::Unusable("not base64".into()))?;
        Self::from_pem(cluster, named.server.clone().unwrap_or_default(), &pem)
    }

    /// The CA from its PEM certificate(s).
    pub fn from_pem(cluster: ClusterKey, server: String, pem: &[u8]) -> Result<Self, CaError> {
        use rustls::pki_types::pem::PemObject;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|e| CaError::Unusable(e.to_string()))?;
        if certs.is_empty() {
            return Err(CaError::NoCertificate);
        }
        let mut roots = rustls::RootCertStore::empty();
        let mut key_ids = Vec::new();
        let mut subjects = Vec::new();
        for cert in &certs {
            roots
                .add(cert.clone())
                .map_err(|e| CaError::Unusable(e.to_string()))?;
            let (_, parsed) =
                X509Certificate::from_der(cert).map_err(|e| CaError::Unusable(e.to_string()))?;
            subjects.push(parsed.subject().as_raw().to_vec());
            for ext in parsed.extensions() {
                if let ParsedExtension::SubjectKeyIdentifier(id) = ext.parsed_extension() {
                    key_ids.push(id.0.to_vec());
                }
            }
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .map_err(|e| CaError::Unusable(e.to_string()))?;
        Ok(Self {
            cluster,
            server,
            key_ids,
            subjects,
            verifier,
        })
    }

    /// Whether this CA issued the chain's first certificate (signature, validity period and
    /// client-auth usage checked by webpki).
    pub fn issued(&self, chain: &[CertificateDer<'_>]) -> bool {
        let Some((end_entity, intermediates)) = chain.split_first() else {
            return false;
        };
        if !self.may_have_issued(end_entity) {
            return false;
        }
        self.verifier
            .verify_client_cert(end_entity, intermediates, UnixTime::now())
            .is_ok()
    }

    /// A cheap filter before the signature check: the certificate's authority key
    /// identifier (or, without one, its issuer name) must be this CA's.
    fn may_have_issued(&self, cert: &CertificateDer<'_>) -> bool {
        let Ok((_, parsed)) = X509Certificate::from_der(cert) else {
            return false;
        };
        let authority_key =
            parsed
                .extensions()
                .iter()
                .find_map(|ext| match ext.parsed_extension() {
                    ParsedExtension::AuthorityKeyIdentifier(aki) => {
                        aki.key_identifier.as_ref().map(|k| k.0.to_vec())
                    }
                    _ => None,
                });
        match authority_key {
            Some(id) if !self.key_ids.is_empty() => self.key_ids.contains(&id),
            _ => self
                .subjects
                .iter()
                .any(|s| s.as_slice() == parsed.issuer().as_raw()),
        }
    }
}

/// The CAs of every workload cluster whose kubeconfig Secret the stores hold, parsed once
/// per Secret version.
#[derive(Default)]
pub struct CaIndex {
    entries: Mutex<HashMap<ClusterKey, Cached>>,
}

struct Cached {
    version: String,
    ca: Option<Arc<ClusterCa>>,
}

impl CaIndex {
    /// The clusters whose CA issued `chain`, after catching up with the stores.
    pub fn callers(&self, stores: &[Stores], chain: &[CertificateDer<'_>]) -> Vec<Arc<ClusterCa>> {
        self.refresh(stores);
        let cas: Vec<Arc<ClusterCa>> = crate::lock(&self.entries)
            .values()
            .filter_map(|c| c.ca.clone())
            .collect();
        cas.into_iter().filter(|ca| ca.issued(chain)).collect()
    }

    /// Parses the kubeconfig Secrets that are new or changed; forgets those that are gone.
    fn refresh(&self, stores: &[Stores]) {
        let mut seen = HashMap::new();
        for secret in stores.iter().flat_map(|s| s.secrets.state()) {
            let Tolerant::Read(secret) = secret.as_ref() else {
                continue;
            };
            let name = secret.name_any();
            let (Some(namespace), Some(cluster)) =
                (secret.namespace(), name.strip_suffix("-kubeconfig"))
            else {
                continue;
            };
            let key = ClusterKey {
                namespace: namespace.clone(),
                name: cluster.to_string(),
            };
            seen.insert(
                key,
                (
                    secret.resource_version().unwrap_or_default(),
                    secret.clone(),
                ),
            );
        }
        let mut entries = crate::lock(&self.entries);
        entries.retain(|key, _| seen.contains_key(key));
        for (key, (version, secret)) in seen {
            if entries.get(&key).is_some_and(|c| c.version == version) {
                continue;
            }
            let source = secret
                .data
                .as_ref()
                .and_then(|d| d.get("value"))
                .map(|value| KubeconfigSource {
                    secret: format!("{}/{}", key.namespace, secret.name_any()),
                    value: value.clone(),
                });
            let ca = source.and_then(|s| match ClusterCa::from_kubeconfig(key.clone(), &s) {
                Ok(ca) => Some(Arc::new(ca)),
                Err(e) => {
                    tracing::debug!(cluster = %key, error = %e, "no CA to recognise its API server by");
                    None
                }
            });
            entries.insert(key, Cached { version, ca });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};

    struct Ca {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    fn ca(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn client(ca: &Ca) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kube-apiserver-kubelet-client");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_der(ca.cert.der(), &ca.key).unwrap();
        params.signed_by(&key, &issuer).unwrap().der().clone()
    }

    fn cluster_ca(name: &str, ca: &Ca) -> ClusterCa {
        ClusterCa::from_pem(
            ClusterKey {
                namespace: "ns".into(),
                name: name.into(),
            },
            "https://server".into(),
            ca.cert.pem().as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn a_client_certificate_names_the_cluster_whose_ca_signed_it() {
        // Same subject for both CAs, as every CAPI cluster CA is named "kubernetes".
        let (a, b) = (ca("kubernetes"), ca("kubernetes"));
        let (ca_a, ca_b) = (cluster_ca("a", &a), cluster_ca("b", &b));
        let from_a = client(&a);
        assert!(ca_a.issued(std::slice::from_ref(&from_a)));
        assert!(!ca_b.issued(std::slice::from_ref(&from_a)));
        assert!(ca_b.issued(&[client(&b)]));
        assert!(!ca_a.issued(&[]));
        assert!(!ca_a.issued(&[CertificateDer::from(vec![1, 2, 3])]));
    }

    #[test]
    fn a_kubeconfig_without_a_ca_is_said_so() {
        let source = KubeconfigSource {
            secret: "ns/a-kubeconfig".into(),
            value: k8s_openapi::ByteString(
                b"apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://x\nusers: []\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\ncurrent-context: c\n".to_vec(),
            ),
        };
        let key = ClusterKey {
            namespace: "ns".into(),
            name: "a".into(),
        };
        assert!(matches!(
            ClusterCa::from_kubeconfig(key, &source),
            Err(CaError::NoCa)
        ));
    }
}
