//! The PKI of one local API server: a CA, the serving certificate, client certificates
//! (the API server authenticates them as user = CN, groups = O) and the service-account
//! signing key.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

use super::EnvtestError;

/// A PEM certificate and its PEM private key.
#[derive(Clone, Debug)]
pub struct CertAndKey {
    pub cert_pem: String,
    pub key_pem: String,
}

pub struct ClusterCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    key_pem: String,
}

impl ClusterCa {
    pub fn new(common_name: &str) -> Result<Self, EnvtestError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(common_name, None);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let key_pem = key.serialize_pem();
        let issuer = CertifiedIssuer::self_signed(params, key)?;
        Ok(Self { issuer, key_pem })
    }

    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA's private key: Cluster API keeps it in the `<cluster>-ca` Secret to sign the
    /// kubeconfig it generates.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A serving certificate for loopback (IP and DNS SANs).
    pub fn serving_cert(&self) -> Result<CertAndKey, EnvtestError> {
        let mut params = CertificateParams::new(vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
            "kubernetes.default.svc".to_string(),
        ])?;
        params.distinguished_name = name("kube-apiserver", None);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate that the API server maps to `user`, in `group` if given.
    /// (One group at most: rcgen keeps one value per attribute type.)
    pub fn client_cert(&self, user: &str, group: Option<&str>) -> Result<CertAndKey, EnvtestError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(user, group);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, mut params: CertificateParams) -> Result<CertAndKey, EnvtestError> {
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertAndKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A fresh ECDSA key for signing service-account tokens: (private PKCS#8 PEM, public PEM).
/// kube-apiserver reads the public half from its own file to verify them.
pub fn service_account_key() -> Result<(String, String), EnvtestError> {
    let key = KeyPair::generate()?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}

fn name(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(org) = organization {
        dn.push(DnType::OrganizationName, org);
    }
    dn
}
