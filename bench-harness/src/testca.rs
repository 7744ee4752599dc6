//! A throwaway test certificate authority for the bench/test origin.
//!
//! The origin must look like a real HTTPS site to whatever sits in front of it (cork, curl,
//! mitmproxy), so it gets its own CA and a leaf for the names and IPs the test chose. The CA is
//! P-256 and lives only in memory; callers hand `ca_pem()` to their clients as the trust root.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::error::HarnessError;

/// A self-signed test CA that can issue server certificates.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A server leaf issued by a [`TestCa`], ready for rustls.
pub struct ServerCert {
    /// Leaf first, then the CA (so clients that want the full chain get it).
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    /// Generates a fresh P-256 CA named "cork bench test CA".
    pub fn generate() -> Result<Self, HarnessError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "cork bench test CA");
        dn.push(DnType::OrganizationName, "cork bench-harness");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, key)?;
        Ok(Self { issuer })
    }

    /// The CA certificate, PEM encoded.
    pub fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA certificate, DER encoded.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// Issues a server certificate valid for `names` (DNS) and `ips`.
    pub fn issue_server(&self, names: &[String], ips: &[IpAddr]) -> Result<ServerCert, HarnessError> {
        if names.is_empty() && ips.is_empty() {
            return Err(HarnessError::Config(
                "a server certificate needs at least one name or IP".into(),
            ));
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let mut dn = DistinguishedName::new();
        let cn = names
            .first()
            .cloned()
            .unwrap_or_else(|| ips[0].to_string());
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok(ServerCert {
            chain: vec![cert.der().clone(), self.ca_der()],
            key: key_der,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}
