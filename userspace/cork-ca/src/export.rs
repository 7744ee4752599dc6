//! Exporting the public CA certificate for clients: alone, and as a bundle with the system roots,
//! because `SSL_CERT_FILE` and friends *replace* a client's trust store rather than add to it.

use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;

use crate::{BottleCa, CaError};

/// The files written by [`write_trust_files`].
#[derive(Debug, Clone)]
pub struct TrustFiles {
    /// The CA certificate alone.
    pub ca_cert: PathBuf,
    /// The system roots followed by the CA certificate.
    pub bundle: PathBuf,
}

pub fn pem_certificate(der: &CertificateDer<'_>) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.as_ref().to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// The system's trusted roots as PEM, as rustls-native-certs finds them. Certificates that fail to
/// load are skipped with a warning; an empty result is allowed (a minimal container).
pub fn system_roots_pem() -> String {
    let found = rustls_native_certs::load_native_certs();
    for err in &found.errors {
        tracing::warn!(error = %err, "skipping an unreadable system root");
    }
    found.certs.iter().map(pem_certificate).collect()
}

/// Writes `ca.pem` and `ca-bundle.pem` into `dir`, world-readable (they are public).
pub fn write_trust_files(ca: &BottleCa, dir: &Path) -> Result<TrustFiles, CaError> {
    let write = |path: PathBuf, contents: String| -> Result<PathBuf, CaError> {
        std::fs::create_dir_all(dir).map_err(|source| CaError::Write { path: dir.to_path_buf(), source })?;
        std::fs::write(&path, contents).map_err(|source| CaError::Write { path: path.clone(), source })?;
        Ok(path)
    };
    let ca_pem = ca.cert_pem();
    let ca_cert = write(dir.join("ca.pem"), ca_pem.clone())?;
    let bundle = write(dir.join("ca-bundle.pem"), system_roots_pem() + &ca_pem)?;
    Ok(TrustFiles { ca_cert, bundle })
}
