//! A P-256 signing key (the CA key, and the shared leaf key) held by `p256`, which zeroizes it on drop.
//!
//! rcgen's own `KeyPair` keeps a PKCS#8 copy of the private key that is never wiped, so the CA key
//! is kept here instead, and lent to rcgen through its [`rcgen::SigningKey`] trait.

use p256::ecdsa::{signature::Signer, DerSignature, SigningKey};
use rcgen::{PublicKeyData, SignatureAlgorithm, PKCS_ECDSA_P256_SHA256};

pub(crate) struct EcdsaKey {
    secret: SigningKey,
    /// The uncompressed SEC1 public point, which is what rcgen embeds in SubjectPublicKeyInfo.
    public_point: Vec<u8>,
}

impl EcdsaKey {
    pub(crate) fn generate() -> Self {
        let secret = SigningKey::random(&mut rand::rngs::OsRng);
        let public_point = secret.verifying_key().to_encoded_point(false).as_bytes().to_vec();
        Self { secret, public_point }
    }
}

impl std::fmt::Debug for EcdsaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcdsaKey").field("public_point", &hex_prefix(&self.public_point)).finish_non_exhaustive()
    }
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect::<String>() + "…"
}

impl PublicKeyData for EcdsaKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public_point
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

impl rcgen::SigningKey for EcdsaKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let signature: DerSignature = self.secret.sign(msg);
        Ok(signature.as_bytes().to_vec())
    }
}

impl EcdsaKey {
    /// PKCS#8 DER of the private key, in a buffer that is wiped when dropped. Used once per CA to
    /// hand the leaf key to rustls.
    pub(crate) fn pkcs8_der(&self) -> zeroize::Zeroizing<Vec<u8>> {
        use p256::pkcs8::EncodePrivateKey;
        let doc = self.secret.to_pkcs8_der().expect("a valid P-256 key always encodes as PKCS#8");
        zeroize::Zeroizing::new(doc.as_bytes().to_vec())
    }
}
