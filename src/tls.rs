//! PEM files for TLS: the CA certificates tally trusts (`clickhouse.ca_file`) and the
//! certificate and key `tally serve` presents (`serve.tls_cert`, `serve.tls_key`). Read
//! with rustls' own PEM parser; errors name the file, never its contents.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The certificates of a PEM file: at least one.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!(
                "`{}` is not a PEM file of certificates: {e}",
                path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!("`{}` holds no certificate", path.display()));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    // The error of a key file says what failed, never what the file holds.
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("`{}` holds no readable private key: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_are_not_pem_are_named_in_the_error() {
        let dir = std::env::temp_dir().join(format!("tally-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ca.pem");
        std::fs::write(&file, "not a certificate\n").unwrap();
        let err = load_certs(&file).unwrap_err();
        assert!(
            err.contains("ca.pem") && err.contains("no certificate"),
            "{err}"
        );
        let err = load_key(&file).unwrap_err();
        assert!(
            err.contains("ca.pem") && err.contains("private key"),
            "{err}"
        );
        assert!(!err.contains("not a certificate"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
