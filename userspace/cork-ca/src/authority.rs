//! Generating the CA and signing leaf certificates with it.

use std::net::IpAddr;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use time::{Duration, OffsetDateTime};

use crate::key::EcdsaKey;
use crate::CaError;

/// How long the CA is valid. It is ephemeral and dies with the process long before this.
const CA_LIFETIME: Duration = Duration::days(30);
/// Leaves stay well under the 398-day ceiling that browsers and Node enforce.
const LEAF_LIFETIME: Duration = Duration::days(7);
/// Tolerates clocks in the bottle that lag the host a little.
const BACKDATE: Duration = Duration::hours(1);

/// The name a leaf certificate is issued for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LeafName {
    Dns(String),
    Ip(IpAddr),
}

impl LeafName {
    /// Parses a host as it appears in a CONNECT target, SNI or `Host` header (no port).
    /// IPv6 literals may be bracketed. DNS names are lower-cased.
    pub fn parse(host: &str) -> Result<Self, CaError> {
        let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(LeafName::Ip(ip));
        }
        let valid = !bare.is_empty()
            && bare.len() <= 253
            && bare.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            return Err(CaError::InvalidName(host.to_string()));
        }
        Ok(LeafName::Dns(bare.to_ascii_lowercase()))
    }
}

impl std::fmt::Display for LeafName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeafName::Dns(name) => f.write_str(name),
            LeafName::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// An ephemeral CA: the key never leaves memory, the certificate is public.
pub struct BottleCa {
    label: String,
    key: EcdsaKey,
    params: CertificateParams,
    cert_der: CertificateDer<'static>,
    leaf_key: EcdsaKey,
    leaf_signer: Arc<dyn rustls::sign::SigningKey>,
}

impl std::fmt::Debug for BottleCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BottleCa").field("label", &self.label).field("key", &self.key).finish_non_exhaustive()
    }
}

impl BottleCa {
    /// Generates a fresh CA named after `label` (an instance or bottle name).
    pub fn generate(label: &str) -> Result<Self, CaError> {
        let key = EcdsaKey::generate();
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_LIFETIME;
        params.serial_number = Some(random_serial());
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("cork bottle CA ({label})"));
        dn.push(DnType::OrganizationName, "cork egress guard");
        params.distinguished_name = dn;
        // Path length 0: this CA signs leaves and nothing else.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key)?;
        let cert_der = cert.der().clone();

        let leaf_key = EcdsaKey::generate();
        let pkcs8 = leaf_key.pkcs8_der();
        let leaf_signer = rustls::crypto::ring::sign::any_ecdsa_type(&PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.as_slice())))
            .map_err(CaError::LeafKey)?;
        Ok(Self { label: label.to_string(), key, params, cert_der, leaf_key, leaf_signer })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// The CA certificate, DER-encoded.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA certificate as PEM: the only part of the CA that is ever exported.
    pub fn cert_pem(&self) -> String {
        crate::export::pem_certificate(&self.cert_der)
    }

    /// Signs a new leaf for `name`, presented with the CA certificate as its chain.
    pub fn issue(&self, name: &LeafName) -> Result<Arc<CertifiedKey>, CaError> {
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.not_before = now - BACKDATE;
        params.not_after = (now + LEAF_LIFETIME).min(self.params.not_after);
        params.serial_number = Some(random_serial());
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name.to_string());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![match name {
            LeafName::Dns(dns) => SanType::DnsName(dns.clone().try_into()?),
            LeafName::Ip(ip) => SanType::IpAddress(*ip),
        }];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let leaf = params.signed_by(&self.leaf_key, &issuer)?;
        let chain = vec![leaf.der().clone(), self.cert_der.clone()];
        Ok(Arc::new(CertifiedKey::new(chain, self.leaf_signer.clone())))
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // keep it positive
    SerialNumber::from_slice(&bytes)
}
