//! The tasks around connections: accepting, dialing, reading frames, writing streams. They
//! talk to the driver through its input channel and never touch the replica.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tollgate_replication::{DATAGRAM_BYTES_MAX, FRAME_BYTES_MAX, Frame, TransmitKind, decode};

use crate::Shared;
use crate::dialer::DialKey;
use crate::tls;

/// Application close codes (QUIC `APPLICATION_CLOSE`), also readable in a peer's logs.
pub(crate) mod close_code {
    /// The node is shutting down (after its LEFT record).
    pub(crate) const SHUTDOWN: u32 = 0;
    /// A newer connection to the same peer replaced this one.
    pub(crate) const REPLACED: u32 = 1;
    /// Both nodes dialed each other; the connection the smaller node id dialed is kept.
    pub(crate) const DUPLICATE: u32 = 2;
    /// The peer sent a frame it must not (the reason follows in the close frame).
    pub(crate) const PROTOCOL: u32 = 3;
    /// The peer is not welcome (its id is this node's own, unusable, or one too many).
    pub(crate) const REFUSED: u32 = 4;
}

/// Inbound handshakes in progress at once; more are refused.
pub const HANDSHAKES_MAX: usize = 64;
/// A stream not read to its end within this is dropped.
pub const STREAM_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A dial's name resolution gives up after this.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the tasks tell the driver.
pub(crate) enum Input {
    /// An authenticated connection: `peer` is the node id of its certificate. `dialed` is
    /// the target this node dialed, `None` when the peer dialed in.
    Connected {
        connection: quinn::Connection,
        peer: String,
        dialed: Option<DialKey>,
    },
    /// A decoded frame from `peer` (on any of its connections: an old one still draining
    /// is the same authenticated peer).
    Frame {
        peer: Arc<str>,
        frame: Frame,
    },
    /// The connection ended.
    Closed {
        peer: Arc<str>,
        connection: usize,
        reason: &'static str,
    },
    DialFailed {
        key: DialKey,
        reason: &'static str,
    },
}

/// Where a dial goes.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    Addr(SocketAddr),
    /// `host:port` from a record, resolved at dial time.
    Host(String),
}

/// Accepts connections until the endpoint closes; each handshake runs in its own task.
pub(crate) async fn accept_loop(
    endpoint: quinn::Endpoint,
    inputs: mpsc::Sender<Input>,
    shared: Arc<Shared>,
) {
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { return };
                if handshakes.len() >= HANDSHAKES_MAX {
                    incoming.refuse();
                    shared.counters.error("handshakes_full");
                    continue;
                }
                handshakes.spawn(handshake(incoming, inputs.clone(), shared.clone()));
            }
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
        }
    }
}

async fn handshake(incoming: quinn::Incoming, inputs: mpsc::Sender<Input>, shared: Arc<Shared>) {
    let remote = incoming.remote_address();
    let connection = match incoming.await {
        Ok(connection) => connection,
        Err(error) => {
            let reason = handshake_reason(&error, false);
            shared.counters.error(reason);
            tracing::debug!(%remote, reason, %error, "inbound handshake failed");
            return;
        }
    };
    match tls::peer_node_id(&connection) {
        Ok(peer) => {
            let _ = inputs
                .send(Input::Connected {
                    connection,
                    peer,
                    dialed: None,
                })
                .await;
        }
        Err(error) => {
            connection.close(close_code::REFUSED.into(), error.reason().as_bytes());
            shared.counters.error(error.reason());
            shared.counters.retire(&connection);
            tracing::debug!(%remote, reason = error.reason(), "inbound peer refused");
        }
    }
}

/// Dials one target and reports the outcome.
pub(crate) async fn dial(
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    key: DialKey,
    target: Target,
    expected: Option<String>,
    inputs: mpsc::Sender<Input>,
) {
    let result = async {
        let addr = match &target {
            Target::Addr(addr) => *addr,
            Target::Host(host) => resolve(host, endpoint.local_addr().is_ok_and(|a| a.is_ipv6()))
                .await
                .ok_or("dial_unresolvable")?,
        };
        let connecting = endpoint
            .connect_with(client, addr, tls::server_name_for(expected.as_deref()))
            .map_err(|_| "dial_invalid")?;
        let connection = connecting
            .await
            .map_err(|error| handshake_reason(&error, true))?;
        let peer = tls::peer_node_id(&connection).map_err(|error| {
            connection.close(close_code::REFUSED.into(), error.reason().as_bytes());
            error.reason()
        })?;
        if expected.as_ref().is_some_and(|expected| *expected != peer) {
            connection.close(close_code::REFUSED.into(), b"unexpected node id");
            return Err("dial_unexpected_node_id");
        }
        Ok(connection_input(connection, peer, key.clone()))
    }
    .await;
    let input = result.unwrap_or_else(|reason| Input::DialFailed { key, reason });
    let _ = inputs.send(input).await;
}

fn connection_input(connection: quinn::Connection, peer: String, key: DialKey) -> Input {
    Input::Connected {
        connection,
        peer,
        dialed: Some(key),
    }
}

async fn resolve(host: &str, ipv6_socket: bool) -> Option<SocketAddr> {
    let addrs = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(host))
        .await
        .ok()?
        .ok()?;
    // A socket bound to IPv4 cannot reach an IPv6 address; an IPv6 one reaches both.
    addrs.into_iter().find(|addr| ipv6_socket || addr.is_ipv4())
}

/// Reads datagrams and unidirectional streams of one connection, decodes each frame and
/// hands it to the driver. A frame that does not decode closes this connection (only this
/// one) and is counted by reason. Reports `Closed` when the connection ends.
pub(crate) async fn read_frames(
    connection: quinn::Connection,
    peer: Arc<str>,
    inputs: mpsc::Sender<Input>,
    shared: Arc<Shared>,
    last_heard_ms: Arc<AtomicU64>,
) {
    let id = connection.stable_id();
    let mut streams = JoinSet::new();
    let reason = loop {
        let received = tokio::select! {
            datagram = connection.read_datagram() => match datagram {
                Ok(bytes) => Some((bytes.to_vec(), TransmitKind::Datagram)),
                Err(error) => break close_reason(&error),
            },
            stream = connection.accept_uni(), if streams.len() < tls::UNI_STREAMS_MAX as usize => {
                match stream {
                    Ok(mut recv) => {
                        streams.spawn(async move {
                            tokio::time::timeout(
                                STREAM_READ_TIMEOUT,
                                recv.read_to_end(FRAME_BYTES_MAX),
                            )
                            .await
                        });
                        None
                    }
                    Err(error) => break close_reason(&error),
                }
            }
            Some(done) = streams.join_next(), if !streams.is_empty() => match done {
                Ok(Ok(Ok(bytes))) => Some((bytes, TransmitKind::Stream)),
                Ok(Ok(Err(quinn::ReadToEndError::TooLong))) => {
                    refuse(&connection, &shared, "stream_too_long");
                    None
                }
                // Reset by the peer, or the connection is going: the next read says which.
                Ok(Ok(Err(quinn::ReadToEndError::Read(_)))) => None,
                Ok(Err(_elapsed)) => {
                    shared.counters.error("stream_read_timeout");
                    None
                }
                Err(_join) => None,
            },
        };
        let Some((bytes, kind)) = received else {
            continue;
        };
        if kind == TransmitKind::Datagram && bytes.len() > DATAGRAM_BYTES_MAX {
            refuse(&connection, &shared, "datagram_too_long");
            continue;
        }
        match decode(&bytes) {
            Ok(frame) => {
                shared.counters.received(&frame, kind, bytes.len());
                last_heard_ms.store(shared.now().ms(), Relaxed);
                let input = Input::Frame {
                    peer: peer.clone(),
                    frame,
                };
                if inputs.send(input).await.is_err() {
                    return;
                }
            }
            Err(error) => refuse(&connection, &shared, error.reason()),
        }
    };
    let _ = inputs
        .send(Input::Closed {
            peer,
            connection: id,
            reason,
        })
        .await;
}

fn refuse(connection: &quinn::Connection, shared: &Shared, reason: &'static str) {
    shared.counters.error(reason);
    connection.close(close_code::PROTOCOL.into(), reason.as_bytes());
}

/// Sends each queued frame on its own new unidirectional stream, in order.
pub(crate) async fn write_streams(
    connection: quinn::Connection,
    mut frames: mpsc::Receiver<Vec<u8>>,
    shared: Arc<Shared>,
) {
    while let Some(bytes) = frames.recv().await {
        if let Err(reason) = send_stream(&connection, &bytes).await {
            if connection.close_reason().is_some() {
                // The connection is gone; the driver hears it from the reader.
                return;
            }
            shared.counters.error(reason);
        }
    }
}

/// One frame on a new unidirectional stream: opened, written, finished.
pub(crate) async fn send_stream(
    connection: &quinn::Connection,
    bytes: &[u8],
) -> Result<quinn::SendStream, &'static str> {
    let mut stream = connection
        .open_uni()
        .await
        .map_err(|_| "stream_open_failed")?;
    stream
        .write_all(bytes)
        .await
        .map_err(|_| "stream_write_failed")?;
    stream.finish().map_err(|_| "stream_write_failed")?;
    Ok(stream)
}

/// Why a connection ended, as a low-cardinality reason.
pub(crate) fn close_reason(error: &quinn::ConnectionError) -> &'static str {
    use quinn::ConnectionError as E;
    match error {
        E::ApplicationClosed(close) => match u32::try_from(close.error_code.into_inner()) {
            Ok(close_code::SHUTDOWN) => "peer_shutdown",
            Ok(close_code::REPLACED) => "replaced_by_peer",
            Ok(close_code::DUPLICATE) => "duplicate",
            Ok(close_code::PROTOCOL) => "refused_by_peer_protocol",
            Ok(close_code::REFUSED) => "refused_by_peer",
            _ => "closed_by_peer",
        },
        E::ConnectionClosed(_) => "closed_by_peer_transport",
        E::TimedOut => "idle_timeout",
        E::Reset => "reset",
        E::LocallyClosed => "local",
        E::TransportError(_) => "transport_error",
        E::VersionMismatch => "version_mismatch",
        E::CidsExhausted => "cids_exhausted",
    }
}

/// Why a handshake failed: TLS refusals (a certificate from another CA, an unexpected node
/// id) are told apart from time-outs and the rest.
pub(crate) fn handshake_reason(error: &quinn::ConnectionError, dialing: bool) -> &'static str {
    use quinn::ConnectionError as E;
    // QUIC carries TLS alerts as transport error codes 0x100..=0x1ff.
    let is_tls = |code: quinn::TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
    let (local_tls, remote_tls, timeout, other) = if dialing {
        (
            "dial_tls_refused",
            "dial_tls_refused_by_peer",
            "dial_timeout",
            "dial_failed",
        )
    } else {
        (
            "handshake_tls_refused",
            "handshake_tls_refused_by_peer",
            "handshake_timeout",
            "handshake_failed",
        )
    };
    match error {
        E::TransportError(error) if is_tls(error.code) => local_tls,
        E::ConnectionClosed(close) if is_tls(close.error_code) => remote_tls,
        E::TimedOut => timeout,
        _ => other,
    }
}
