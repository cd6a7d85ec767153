//! The cluster's certificate authority and node certificates.
//!
//! One CA per cluster signs one certificate per node. A node certificate names the node id
//! as its only DNS SAN (and its common name) and carries both the serverAuth and the
//! clientAuth extended key usage: a node is the QUIC server of the peers that dial it and
//! the client of the peers it dials. Keys are ECDSA P-256. The CA is constrained to sign end
//! certificates only (path length 0).
//!
//! Files: the CA is `ca.pem` + `ca.key`, a node is `NAME.pem` + `NAME.key`; keys are written
//! mode 0600, certificates 0644, never over an existing file.

use std::fs;
use std::io::{self, Read as _};
use std::net::IpAddr;
#[cfg(feature = "ca")]
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

#[cfg(feature = "ca")]
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData as _,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, DnsName, UnixTime};
use tollgate_replication::{RecordError, validate_node_id};

/// File name of the CA certificate in its directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key in its directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// Validity of a new CA, days.
pub const CA_DAYS_DEFAULT: u32 = 3650;
/// Validity of a new node certificate, days.
pub const NODE_DAYS_DEFAULT: u32 = 1095;
/// Longest validity accepted, days (about 30 years).
pub const DAYS_MAX: u32 = 11_000;
/// The CA's common name unless another is given.
pub const CA_NAME_DEFAULT: &str = "tollgate cluster CA";
/// Longest CA common name, bytes.
pub const CA_NAME_LEN_MAX: usize = 64;
/// Largest PEM file read, bytes.
pub const PEM_BYTES_MAX: u64 = 64 * 1024;

/// Why a certificate could not be made, read, checked or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("invalid node id {node_id:?}: {reason}")]
    NodeId {
        node_id: String,
        reason: NodeIdError,
    },
    #[error("the CA name must be 1..={CA_NAME_LEN_MAX} printable characters")]
    CaName,
    #[error("validity must be 1..={DAYS_MAX} days")]
    Days,
    #[cfg(feature = "ca")]
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{what}: {problem}")]
    Pem { what: String, problem: String },
    #[error("the CA key does not belong to the CA certificate")]
    CaKeyMismatch,
    #[error("the certificate does not verify against the cluster CA: {0}")]
    NotFromCa(webpki::Error),
    #[error("the certificate names no usable node id: {0}")]
    PeerId(#[from] PeerIdError),
    #[error("{}: already exists, refusing to overwrite it", path.display())]
    Exists { path: PathBuf },
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
}

/// Why a node id cannot name a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NodeIdError {
    #[error("{0}")]
    Record(RecordError),
    #[error("it reads as an IP address; a node id is a DNS name")]
    IpAddress,
    #[error("not a valid DNS name (labels of letters, digits, '-' and '_', separated by '.')")]
    NotDnsName,
}

/// Why the node id of a peer's certificate could not be read. Low-cardinality reasons for
/// counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PeerIdError {
    #[error("no certificate")]
    NoCertificate,
    #[error("unparsable certificate")]
    Unparsable,
    #[error("no DNS name in the certificate")]
    NoDnsName,
    #[error("more than one DNS name in the certificate")]
    SeveralDnsNames,
    #[error("the DNS name is not a valid node id: {0}")]
    InvalidNodeId(RecordError),
}

impl PeerIdError {
    pub const fn reason(&self) -> &'static str {
        match self {
            PeerIdError::NoCertificate => "peer_no_certificate",
            PeerIdError::Unparsable => "peer_certificate_unparsable",
            PeerIdError::NoDnsName => "peer_no_dns_name",
            PeerIdError::SeveralDnsNames => "peer_several_dns_names",
            PeerIdError::InvalidNodeId(_) => "peer_invalid_node_id",
        }
    }
}

/// A node id that can name a certificate: a valid replication node id
/// ([`validate_node_id`]) that is also a DNS name and does not read as an IP address.
pub fn check_node_id(node_id: &str) -> Result<(), NodeIdError> {
    validate_node_id(node_id).map_err(NodeIdError::Record)?;
    if node_id.parse::<IpAddr>().is_ok() {
        return Err(NodeIdError::IpAddress);
    }
    let bytes = node_id.as_bytes();
    let bad_edge = |b: u8| matches!(b, b'.' | b'-');
    if DnsName::try_from(node_id).is_err()
        || bad_edge(bytes[0])
        || bad_edge(bytes[bytes.len() - 1])
        || node_id.contains("..")
    {
        return Err(NodeIdError::NotDnsName);
    }
    Ok(())
}

/// The node id a certificate names: its one DNS SAN, which must be a valid node id. Says
/// nothing of who signed it: call it on a certificate TLS has verified.
pub fn node_id_of(cert: &CertificateDer<'_>) -> Result<String, PeerIdError> {
    let cert = webpki::EndEntityCert::try_from(cert).map_err(|_| PeerIdError::Unparsable)?;
    let mut names = cert.valid_dns_names();
    let name = names.next().ok_or(PeerIdError::NoDnsName)?;
    if names.next().is_some() {
        return Err(PeerIdError::SeveralDnsNames);
    }
    validate_node_id(name).map_err(PeerIdError::InvalidNodeId)?;
    Ok(name.to_owned())
}

/// Checks that `cert` chains to `ca`, is valid now, may act as both TLS server and client,
/// and names one node id; returns that id.
pub fn verify_node_cert(
    ca: &CertificateDer<'_>,
    cert: &CertificateDer<'_>,
) -> Result<String, CertError> {
    let anchor = webpki::anchor_from_trusted_cert(ca).map_err(CertError::NotFromCa)?;
    let anchors = [anchor];
    let end = webpki::EndEntityCert::try_from(cert).map_err(CertError::NotFromCa)?;
    let algorithms = rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .all;
    let now = UnixTime::now();
    for usage in [
        webpki::KeyUsage::server_auth(),
        webpki::KeyUsage::client_auth(),
    ] {
        end.verify_for_usage(algorithms, &anchors, &[], now, usage, None, None)
            .map_err(CertError::NotFromCa)?;
    }
    Ok(node_id_of(cert)?)
}

/// Parses the one certificate of a PEM text.
pub fn parse_cert_pem(what: &str, pem: &str) -> Result<CertificateDer<'static>, CertError> {
    let problem = |problem: String| CertError::Pem {
        what: what.to_owned(),
        problem,
    };
    let mut certs = CertificateDer::pem_slice_iter(pem.as_bytes());
    let cert = certs
        .next()
        .ok_or_else(|| problem("no certificate in it".into()))?
        .map_err(|e| problem(e.to_string()))?;
    if certs.next().is_some() {
        return Err(problem("more than one certificate in it".into()));
    }
    Ok(cert)
}

#[cfg(feature = "ca")]
/// The cluster's certificate authority: its certificate and private key, as PEM.
#[derive(Clone)]
pub struct ClusterCa {
    cert_pem: String,
    key_pem: String,
    cert_der: CertificateDer<'static>,
}

#[cfg(feature = "ca")]
impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "ca")]
/// A node's certificate (signed by the cluster CA) and private key, as PEM.
#[derive(Clone)]
pub struct NodeCert {
    pub node_id: String,
    pub cert_pem: String,
    pub key_pem: String,
}

#[cfg(feature = "ca")]
impl std::fmt::Debug for NodeCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCert")
            .field("node_id", &self.node_id)
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "ca")]
impl ClusterCa {
    /// A new CA named `name` (its common name), valid for [`CA_DAYS_DEFAULT`] days.
    pub fn generate(name: &str) -> Result<ClusterCa, CertError> {
        ClusterCa::generate_valid_for(name, CA_DAYS_DEFAULT)
    }

    /// A new CA named `name`, valid for `days` from an hour ago.
    pub fn generate_valid_for(name: &str, days: u32) -> Result<ClusterCa, CertError> {
        if name.is_empty() || name.len() > CA_NAME_LEN_MAX || name.chars().any(|c| c.is_control()) {
            return Err(CertError::CaName);
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "tollgate");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, days)?;
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        ClusterCa::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// A CA from its PEM texts; checks that the key belongs to the certificate.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<ClusterCa, CertError> {
        let cert_der = parse_cert_pem("CA certificate", cert_pem)?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| CertError::Pem {
            what: "CA key".into(),
            problem: e.to_string(),
        })?;
        let cert = webpki::EndEntityCert::try_from(&cert_der).map_err(|e| CertError::Pem {
            what: "CA certificate".into(),
            problem: e.to_string(),
        })?;
        if cert.subject_public_key_info().as_ref() != key.subject_public_key_info().as_slice() {
            return Err(CertError::CaKeyMismatch);
        }
        Ok(ClusterCa {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            cert_der,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// A certificate for `node_id`, valid for [`NODE_DAYS_DEFAULT`] days.
    pub fn issue(&self, node_id: &str) -> Result<NodeCert, CertError> {
        self.issue_valid_for(node_id, NODE_DAYS_DEFAULT)
    }

    /// A certificate for `node_id` (its DNS SAN and common name; serverAuth and clientAuth),
    /// valid for `days` from an hour ago, with a new key. The result is verified against
    /// this CA before it is returned.
    pub fn issue_valid_for(&self, node_id: &str, days: u32) -> Result<NodeCert, CertError> {
        check_node_id(node_id).map_err(|reason| CertError::NodeId {
            node_id: node_id.to_owned(),
            reason,
        })?;
        let ca_key = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, ca_key)?;
        let mut params = CertificateParams::new(vec![node_id.to_owned()])?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, node_id);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, days)?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        let named = verify_node_cert(&self.cert_der, cert.der())?;
        debug_assert_eq!(named, node_id);
        Ok(NodeCert {
            node_id: node_id.to_owned(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Reads `ca.pem` and `ca.key` from `dir`.
    pub fn load(dir: &Path) -> Result<ClusterCa, CertError> {
        let cert_pem = read_pem_file(&dir.join(CA_CERT_FILE))?;
        let key_pem = read_pem_file(&dir.join(CA_KEY_FILE))?;
        ClusterCa::from_pem(&cert_pem, &key_pem)
    }

    /// Writes `ca.pem` (0644) and `ca.key` (0600) into `dir` (created 0700 if missing);
    /// refuses when either file exists. Returns the two paths.
    pub fn save(&self, dir: &Path) -> Result<[PathBuf; 2], CertError> {
        save_pair(
            dir,
            CA_CERT_FILE,
            &self.cert_pem,
            CA_KEY_FILE,
            &self.key_pem,
        )
    }
}

#[cfg(feature = "ca")]
impl NodeCert {
    /// Writes `NODE.pem` (0644) and `NODE.key` (0600) into `dir` (created 0700 if missing);
    /// refuses when either file exists. Returns the two paths.
    pub fn save(&self, dir: &Path) -> Result<[PathBuf; 2], CertError> {
        save_pair(
            dir,
            &format!("{}.pem", self.node_id),
            &self.cert_pem,
            &format!("{}.key", self.node_id),
            &self.key_pem,
        )
    }
}

#[cfg(feature = "ca")]
fn set_validity(params: &mut CertificateParams, days: u32) -> Result<(), CertError> {
    if days == 0 || days > DAYS_MAX {
        return Err(CertError::Days);
    }
    let now = time::OffsetDateTime::now_utc();
    // An hour of slack for peers whose clocks run a little behind.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
    Ok(())
}

/// Reads a PEM file of at most [`PEM_BYTES_MAX`] bytes.
pub fn read_pem_file(path: &Path) -> Result<String, CertError> {
    let io_error = |error| CertError::Io {
        path: path.to_owned(),
        error,
    };
    let mut text = String::new();
    fs::File::open(path)
        .map_err(io_error)?
        .take(PEM_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .map_err(io_error)?;
    if text.len() as u64 > PEM_BYTES_MAX {
        return Err(CertError::Pem {
            what: path.display().to_string(),
            problem: format!("larger than {PEM_BYTES_MAX} bytes"),
        });
    }
    Ok(text)
}

#[cfg(feature = "ca")]
fn save_pair(
    dir: &Path,
    cert_name: &str,
    cert_pem: &str,
    key_name: &str,
    key_pem: &str,
) -> Result<[PathBuf; 2], CertError> {
    let cert_path = dir.join(cert_name);
    let key_path = dir.join(key_name);
    for path in [&cert_path, &key_path] {
        if fs::symlink_metadata(path).is_ok() {
            return Err(CertError::Exists { path: path.clone() });
        }
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|error| CertError::Io {
            path: dir.to_owned(),
            error,
        })?;
    // The key first: if the certificate cannot be written, the key is removed again.
    write_new(&key_path, key_pem, 0o600)?;
    if let Err(error) = write_new(&cert_path, cert_pem, 0o644) {
        let _ = fs::remove_file(&key_path);
        return Err(error);
    }
    Ok([cert_path, key_path])
}

#[cfg(feature = "ca")]
/// Creates `path` (never over an existing file) with `mode` and writes `contents`, synced.
fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), CertError> {
    let io_error = |error: io::Error| {
        if error.kind() == io::ErrorKind::AlreadyExists {
            CertError::Exists {
                path: path.to_owned(),
            }
        } else {
            CertError::Io {
                path: path.to_owned(),
                error,
            }
        }
    };
    // Durable (`tollgate_durable`): temp file, fsync, link (never over an existing file),
    // fsync of the directory; the mode is exact whatever the umask.
    tollgate_durable::write_new(path, contents.as_bytes(), mode).map_err(|e| io_error(e.into()))
}

// Every test makes a CA; the `ca` feature is on by default.
#[cfg(all(test, feature = "ca"))]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn an_issued_certificate_names_the_node_and_verifies_against_its_ca() {
        let ca = ClusterCa::generate("test CA").unwrap();
        let node = ca.issue("node-a.example").unwrap();
        let der = parse_cert_pem("node", &node.cert_pem).unwrap();
        assert_eq!(node_id_of(&der).unwrap(), "node-a.example");
        assert_eq!(
            verify_node_cert(ca.cert_der(), &der).unwrap(),
            "node-a.example"
        );
    }

    #[test]
    fn a_certificate_from_another_ca_does_not_verify() {
        let ours = ClusterCa::generate("ours").unwrap();
        let theirs = ClusterCa::generate("theirs").unwrap();
        let node = theirs.issue("n1").unwrap();
        let der = parse_cert_pem("node", &node.cert_pem).unwrap();
        assert!(matches!(
            verify_node_cert(ours.cert_der(), &der),
            Err(CertError::NotFromCa(_))
        ));
    }

    #[test]
    fn a_ca_read_back_from_pem_issues_certificates_that_chain_to_it() {
        let ca = ClusterCa::generate("round trip").unwrap();
        let again = ClusterCa::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        let node = again.issue("n_1").unwrap();
        let der = parse_cert_pem("node", &node.cert_pem).unwrap();
        assert_eq!(verify_node_cert(ca.cert_der(), &der).unwrap(), "n_1");
    }

    #[test]
    fn a_ca_key_of_another_ca_is_refused() {
        let a = ClusterCa::generate("a").unwrap();
        let b = ClusterCa::generate("b").unwrap();
        assert!(matches!(
            ClusterCa::from_pem(a.cert_pem(), b.key_pem()),
            Err(CertError::CaKeyMismatch)
        ));
    }

    #[test]
    fn node_ids_that_cannot_name_a_certificate_are_refused() {
        let longest = format!("{}.{}", "x".repeat(31), "y".repeat(32));
        for good in ["a", "node-01", "n_1", "node.dc1.example", &longest] {
            assert_eq!(check_node_id(good), Ok(()), "{good}");
        }
        assert_eq!(check_node_id("10.0.0.1"), Err(NodeIdError::IpAddress));
        // A DNS label is at most 63 bytes.
        for bad in ["-a", "a-", ".a", "a.", "a..b", &"x".repeat(64)] {
            assert_eq!(check_node_id(bad), Err(NodeIdError::NotDnsName), "{bad}");
        }
        assert!(matches!(
            check_node_id("a b"),
            Err(NodeIdError::Record(RecordError::NodeIdByte))
        ));
        let ca = ClusterCa::generate("ids").unwrap();
        assert!(matches!(
            ca.issue("10.0.0.1"),
            Err(CertError::NodeId { .. })
        ));
    }

    #[test]
    fn files_are_written_once_with_a_private_key_mode() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ca");
        let ca = ClusterCa::generate("files").unwrap();
        let [cert, key] = ca.save(&out).unwrap();
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(&cert).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert!(matches!(ca.save(&out), Err(CertError::Exists { .. })));
        let loaded = ClusterCa::load(&out).unwrap();
        assert_eq!(loaded.cert_pem(), ca.cert_pem());

        let node = loaded.issue("edge-1").unwrap();
        let [cert, key] = node.save(dir.path()).unwrap();
        assert!(cert.ends_with("edge-1.pem") && key.ends_with("edge-1.key"));
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(matches!(
            node.save(dir.path()),
            Err(CertError::Exists { .. })
        ));
    }
}
