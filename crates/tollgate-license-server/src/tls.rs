//! TLS: the rustls server configuration (ring provider, TLS 1.2 and 1.3, HTTP/1.1), from PEM
//! files or from a self-signed development certificate generated with rcgen.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The names a development certificate is valid for.
pub const DEV_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
/// File names of the development certificate and key in their directory.
pub const DEV_CERT_FILE: &str = "cert.pem";
pub const DEV_KEY_FILE: &str = "key.pem";
/// Longest PEM file read.
pub const PEM_LEN_MAX: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {problem}", path.display())]
    Pem { path: PathBuf, problem: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A certificate ready to serve: the rustls configuration and the leaf's fingerprint.
#[derive(Debug, Clone)]
pub struct ServerCertificate {
    pub config: Arc<ServerConfig>,
    /// SHA-256 of the leaf certificate (DER), `AB:CD:…`, as `openssl x509 -fingerprint
    /// -sha256` prints it.
    pub fingerprint_sha256: String,
    /// The certificate file (clients of a development server trust this file).
    pub cert_path: PathBuf,
}

/// The crypto provider every TLS configuration here uses (named explicitly, never the
/// process default).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads a certificate chain and its private key from PEM files.
pub fn load(cert_path: &Path, key_path: &Path) -> Result<ServerCertificate, TlsError> {
    let cert_pem = read_pem(cert_path)?;
    let key_pem = read_pem(key_path)?;
    let pem_error = |path: &Path, problem: String| TlsError::Pem {
        path: path.to_owned(),
        problem,
    };
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(cert_path, e.to_string()))?;
    let Some(leaf) = chain.first() else {
        return Err(pem_error(cert_path, "no certificate in it".into()));
    };
    let fingerprint_sha256 = sha256_fingerprint(leaf);
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| pem_error(key_path, format!("no private key in it ({e})")))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(ServerCertificate {
        config: Arc::new(config),
        fingerprint_sha256,
        cert_path: cert_path.to_owned(),
    })
}

/// The development certificate in `dir`: generated (self-signed, for [`DEV_NAMES`]) on
/// first use, reused after so clients keep trusting it.
pub fn dev_certificate(dir: &Path) -> Result<ServerCertificate, TlsError> {
    let cert_path = dir.join(DEV_CERT_FILE);
    let key_path = dir.join(DEV_KEY_FILE);
    if !cert_path.exists() || !key_path.exists() {
        let names: Vec<String> = DEV_NAMES.iter().map(|n| (*n).to_owned()).collect();
        let generated = rcgen::generate_simple_self_signed(names)?;
        let write_error = |path: &Path| {
            let path = path.to_owned();
            move |source| TlsError::Write { path, source }
        };
        fs::create_dir_all(dir).map_err(write_error(dir))?;
        write_file(&key_path, &generated.signing_key.serialize_pem(), 0o600)
            .map_err(write_error(&key_path))?;
        write_file(&cert_path, &generated.cert.pem(), 0o644).map_err(write_error(&cert_path))?;
    }
    load(&cert_path, &key_path)
}

/// Durable replace (`tollgate_durable`): a failed write leaves the old file.
fn write_file(path: &Path, contents: &str, mode: u32) -> std::io::Result<()> {
    tollgate_durable::write(path, contents.as_bytes(), mode)?;
    Ok(())
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read as _;
    let read_error = |source| TlsError::Read {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    fs::File::open(path)
        .map_err(read_error)?
        .take(PEM_LEN_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > PEM_LEN_MAX {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            problem: format!("larger than {PEM_LEN_MAX} bytes"),
        });
    }
    Ok(bytes)
}

/// SHA-256 of `der` as upper-case hex pairs joined by `:` (through the ring provider's
/// hash, so no other hash implementation is pulled in).
pub fn sha256_fingerprint(der: &[u8]) -> String {
    let hash = match rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256 {
        rustls::SupportedCipherSuite::Tls13(suite) => suite.common.hash_provider.hash(der),
        #[allow(unreachable_patterns)]
        _ => unreachable!("a TLS 1.3 suite"),
    };
    hash.as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_sha256() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(
            sha256_fingerprint(b"abc").replace(':', ""),
            "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"
        );
    }

    #[test]
    fn dev_certificate_is_generated_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = dev_certificate(&dir.path().join("tls")).unwrap();
        let second = dev_certificate(&dir.path().join("tls")).unwrap();
        assert_eq!(first.fingerprint_sha256, second.fingerprint_sha256);
        assert_eq!(first.fingerprint_sha256.len(), 32 * 3 - 1);
        use std::os::unix::fs::MetadataExt as _;
        let mode = fs::metadata(dir.path().join("tls/key.pem")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn pem_problems_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        let key = dir.path().join("k.pem");
        fs::write(&cert, "nothing\n").unwrap();
        fs::write(&key, "nothing\n").unwrap();
        let error = load(&cert, &key).unwrap_err().to_string();
        assert!(
            error.contains("c.pem") && error.contains("no certificate"),
            "{error}"
        );
        let dev = dev_certificate(&dir.path().join("tls")).unwrap();
        let error = load(&dev.cert_path, &key).unwrap_err().to_string();
        assert!(
            error.contains("k.pem") && error.contains("no private key"),
            "{error}"
        );
        let error = load(&dir.path().join("missing.pem"), &key)
            .unwrap_err()
            .to_string();
        assert!(error.contains("missing.pem"), "{error}");
    }
}
