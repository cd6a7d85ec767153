//! Mutual TLS and QUIC settings of the mesh.
//!
//! - **Server side** (peers that dial this node): rustls' `WebPkiClientVerifier` with the
//!   cluster CA as the only root; a client certificate is required.
//! - **Client side** (peers this node dials): [`NodeServerVerifier`] checks that the server's
//!   certificate chains to the cluster CA and that its DNS SAN is the node id expected. A seed
//!   is dialed before its id is known, under the server name [`SEED_SERVER_NAME`]: then any
//!   node id the CA certified is accepted, and learned from the certificate.
//! - TLS 1.3 only (QUIC), ring provider named explicitly, ALPN [`ALPN`], no session tickets
//!   or resumption (every connection presents certificates), no 0-RTT.
//! - The stateless-reset key is derived from the node's private key, so a node restarted on
//!   the same address resets its peers' connections to its previous process at their next
//!   packet instead of leaving them to the idle timeout.
//!
//! The authenticated node id of a connection is read by [`peer_node_id`] after the handshake.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tollgate_replication::FRAME_BYTES_MAX;

use crate::MeshError;
use crate::certs::{PeerIdError, node_id_of, parse_cert_pem, verify_node_cert};

/// The ALPN protocol of the mesh.
pub const ALPN: &[u8] = b"tollgate-mesh/1";
/// The server name a seed is dialed with while its node id is unknown.
pub const SEED_SERVER_NAME: &str = "seed.tollgate-mesh.invalid";
/// Bytes of a connection id this node issues (QUIC allows 0–20; 8 is common). The mesh
/// neither migrates nor sits behind a QUIC load balancer, so ids only tell this node's
/// connections apart: at most a few thousand (1024 peers, a few ids each) among 65 536, and
/// the endpoint draws again on a collision. Every byte is paid in every packet (a quiet
/// pair exchanges three per heartbeat interval), 6 bytes of ~35 saved against 8-byte ids.
pub const CID_BYTES: usize = 2;
/// The QUIC idle timeout is this many heartbeat intervals (7.5 s by default)…
pub const IDLE_TIMEOUT_HEARTBEATS: u32 = 5;
/// …but never less than this…
pub const IDLE_TIMEOUT_MIN: Duration = Duration::from_secs(1);
/// …nor more than this.
pub const IDLE_TIMEOUT_MAX: Duration = Duration::from_secs(60);
/// Concurrent unidirectional streams a peer may open (each carries one frame).
pub const UNI_STREAMS_MAX: u32 = 16;
/// Flow-control window of one stream: one frame of [`FRAME_BYTES_MAX`] fits.
pub const STREAM_WINDOW_BYTES: u32 = FRAME_BYTES_MAX as u32 + 1024;
/// Flow-control window of a whole connection.
pub const CONNECTION_WINDOW_BYTES: u32 = 2 * STREAM_WINDOW_BYTES;
/// Datagrams buffered on receipt (QUIC drops the oldest beyond) and before sending.
pub const DATAGRAM_BUFFER_BYTES: usize = 64 * 1024;

/// The crypto provider of every TLS configuration here (named, never the process default).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A node's TLS identity: the cluster CA, its certificate chain and key.
#[derive(Debug)]
pub(crate) struct Identity {
    pub(crate) ca: CertificateDer<'static>,
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
}

impl Identity {
    /// Parses the PEM texts. Does not check that the certificate chains to the CA (see
    /// [`Identity::check`]).
    pub(crate) fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, MeshError> {
        let ca = parse_cert_pem("CA certificate", ca_pem)?;
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| MeshError::Pem {
                what: "node certificate",
                problem: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(MeshError::Pem {
                what: "node certificate",
                problem: "no certificate in it".into(),
            });
        }
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| MeshError::Pem {
                what: "node key",
                problem: e.to_string(),
            })?;
        Ok(Identity { ca, chain, key })
    }

    /// Checks that the certificate chains to the CA and names `node_id`.
    pub(crate) fn check(&self, node_id: &str) -> Result<(), MeshError> {
        let found = verify_node_cert(&self.ca, &self.chain[0])?;
        if found != node_id {
            return Err(MeshError::CertNodeId {
                expected: node_id.to_owned(),
                found,
            });
        }
        Ok(())
    }
}

/// QUIC transport settings, derived from the replication timings.
pub fn transport_config(heartbeat_interval_ms: u64) -> quinn::TransportConfig {
    let heartbeat = Duration::from_millis(heartbeat_interval_ms);
    let idle = heartbeat
        .saturating_mul(IDLE_TIMEOUT_HEARTBEATS)
        .clamp(IDLE_TIMEOUT_MIN, IDLE_TIMEOUT_MAX);
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(idle).expect("an idle timeout of at most 60 s fits"),
        ))
        // Heartbeats (one datagram per peer per heartbeat interval) keep connections alive;
        // a QUIC PING goes out only when the replica has stopped emitting.
        .keep_alive_interval(Some(idle / 2))
        .max_concurrent_bidi_streams(0u32.into())
        .max_concurrent_uni_streams(UNI_STREAMS_MAX.into())
        .stream_receive_window(STREAM_WINDOW_BYTES.into())
        .receive_window(CONNECTION_WINDOW_BYTES.into())
        .send_window(u64::from(CONNECTION_WINDOW_BYTES))
        .datagram_receive_buffer_size(Some(DATAGRAM_BUFFER_BYTES))
        .datagram_send_buffer_size(DATAGRAM_BUFFER_BYTES)
        // Frames fit the 1200-byte minimum MTU; probing for more costs bytes for nothing.
        .mtu_discovery_config(None);
    transport
}

/// The server side: client certificates required, chained to the cluster CA.
pub(crate) fn server_config(
    identity: &Identity,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ServerConfig, MeshError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(&identity.ca)?),
        provider.clone(),
    )
    .build()
    .map_err(|e| MeshError::Tls(e.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| MeshError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| MeshError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.send_tls13_tickets = 0;
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| MeshError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport);
    // Peers dial from their listening socket; a peer changing address is a new connection.
    config.migration(false);
    Ok(config)
}

/// The client side: presents this node's certificate, verifies the server's with
/// [`NodeServerVerifier`].
pub fn client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    heartbeat_interval_ms: u64,
) -> Result<quinn::ClientConfig, MeshError> {
    let identity = Identity::from_pem(ca_pem, cert_pem, key_pem)?;
    client_config_of(&identity, Arc::new(transport_config(heartbeat_interval_ms)))
}

pub(crate) fn client_config_of(
    identity: &Identity,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, MeshError> {
    let provider = provider();
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots(&identity.ca)?),
        provider.clone(),
    )
    .build()
    .map_err(|e| MeshError::Tls(e.to_string()))?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| MeshError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NodeServerVerifier { inner }))
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| MeshError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.resumption = rustls::client::Resumption::disabled();
    tls.enable_early_data = false;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| MeshError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport);
    Ok(config)
}

/// Endpoint settings: short connection ids, a stateless-reset key derived from the node key.
pub(crate) fn endpoint_config(identity: &Identity) -> quinn::EndpointConfig {
    let label = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, identity.key.secret_der());
    let derived = ring::hmac::sign(&label, b"tollgate-mesh stateless reset key v1");
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derived.as_ref());
    let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
    config.cid_generator(|| Box::new(ShortCids));
    config
}

fn roots(ca: &CertificateDer<'static>) -> Result<RootCertStore, MeshError> {
    let mut roots = RootCertStore::empty();
    roots
        .add(ca.clone())
        .map_err(|e| MeshError::Tls(format!("the CA certificate cannot be a root: {e}")))?;
    Ok(roots)
}

/// The node id of a connection's peer: the one DNS SAN of its leaf certificate (TLS has
/// verified the chain).
pub fn peer_node_id(connection: &quinn::Connection) -> Result<String, PeerIdError> {
    let identity = connection
        .peer_identity()
        .ok_or(PeerIdError::NoCertificate)?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| PeerIdError::NoCertificate)?;
    node_id_of(chain.first().ok_or(PeerIdError::NoCertificate)?)
}

/// The server name to dial `node_id` with: the id itself when it is a DNS name (the
/// verifier then requires it), else [`SEED_SERVER_NAME`] (and the caller compares the id
/// after the handshake).
pub(crate) fn server_name_for(node_id: Option<&str>) -> &str {
    match node_id {
        Some(id) if matches!(ServerName::try_from(id), Ok(ServerName::DnsName(_))) => id,
        _ => SEED_SERVER_NAME,
    }
}

/// Verifies a server's certificate against the cluster CA and the node id expected.
#[derive(Debug)]
pub struct NodeServerVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl ServerCertVerifier for NodeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = node_id_of(end_entity).map_err(|e| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(e),
            )))
        })?;
        match server_name {
            ServerName::DnsName(name) if name.as_ref() == SEED_SERVER_NAME => {}
            ServerName::DnsName(name) if name.as_ref() == presented => {}
            _ => {
                return Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName,
                ));
            }
        }
        let name = ServerName::try_from(presented).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
        })?;
        self.inner
            .verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Random connection ids of [`CID_BYTES`] bytes (the endpoint retries on a collision).
struct ShortCids;

impl quinn::ConnectionIdGenerator for ShortCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        let bytes: [u8; CID_BYTES] = rand::random();
        quinn::ConnectionId::new(&bytes)
    }

    fn cid_len(&self) -> usize {
        CID_BYTES
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_id_that_is_a_dns_name_is_its_own_server_name() {
        assert_eq!(server_name_for(Some("node-a")), "node-a");
        assert_eq!(server_name_for(None), SEED_SERVER_NAME);
        assert_eq!(server_name_for(Some("10.0.0.1")), SEED_SERVER_NAME);
    }

    #[test]
    fn the_idle_timeout_follows_the_heartbeat_within_bounds() {
        // Only checks the configuration builds for the extremes.
        let _ = transport_config(1);
        let _ = transport_config(1_000);
        let _ = transport_config(u64::MAX / 2);
    }
}
