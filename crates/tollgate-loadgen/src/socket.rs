//! The one piece that touches the network: a connected, non-blocking datagram socket with
//! the retry policy of the generator.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::LoadgenError;
use crate::args::Target;

/// First pause after the socket reported full; doubled up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_micros(20);
pub const BACKOFF_MAX: Duration = Duration::from_millis(2);
/// How long one datagram is retried while the socket stays full before it is dropped.
pub const SEND_RETRY_TIME_MAX: Duration = Duration::from_secs(2);
/// Least time between two reconnects of a unix socket whose peer went away.
pub const RECONNECT_INTERVAL: Duration = Duration::from_millis(100);

/// What became of one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    Delivered,
    Dropped,
}

/// Counters of the retry policy.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SendStats {
    pub retries: u64,
    pub refused: u64,
}

#[derive(Debug)]
enum Inner {
    Udp(UdpSocket),
    Unix {
        socket: UnixDatagram,
        path: PathBuf,
        reconnect_at: Option<Instant>,
    },
}

#[derive(Debug)]
pub(crate) struct Socket {
    inner: Inner,
    target: Target,
    pub stats: SendStats,
}

impl Socket {
    pub fn connect(target: &Target) -> Result<Self, LoadgenError> {
        let connect_error = |source| LoadgenError::Connect {
            target: target.to_string(),
            source,
        };
        let inner = match target {
            Target::Udp(addr) => {
                let local: SocketAddr = match addr {
                    SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                    SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
                };
                let socket = UdpSocket::bind(local).map_err(connect_error)?;
                socket.connect(addr).map_err(connect_error)?;
                socket.set_nonblocking(true).map_err(connect_error)?;
                Inner::Udp(socket)
            }
            Target::Unix(path) => {
                let socket = UnixDatagram::unbound().map_err(connect_error)?;
                socket.connect(path).map_err(connect_error)?;
                socket.set_nonblocking(true).map_err(connect_error)?;
                Inner::Unix {
                    socket,
                    path: path.clone(),
                    reconnect_at: None,
                }
            }
        };
        Ok(Socket {
            inner,
            target: target.clone(),
            stats: SendStats::default(),
        })
    }

    fn send_once(&self, datagram: &[u8]) -> io::Result<usize> {
        match &self.inner {
            Inner::Udp(socket) => socket.send(datagram),
            Inner::Unix { socket, .. } => socket.send(datagram),
        }
    }

    /// Sends one datagram:
    /// - socket full (EAGAIN, ENOBUFS): back off and retry, up to [`SEND_RETRY_TIME_MAX`]
    ///   or until `stop`, then drop it;
    /// - connection refused: on UDP the error belongs to an earlier datagram (an ICMP port
    ///   unreachable) and this one was not sent, so retry once, then drop; on a unix socket
    ///   the peer is gone: reconnect (at most every [`RECONNECT_INTERVAL`]) and drop;
    /// - anything else is an error.
    pub fn send(&mut self, datagram: &[u8], stop: &AtomicBool) -> Result<Sent, LoadgenError> {
        let mut backoff = BACKOFF_MIN;
        let mut first_full: Option<Instant> = None;
        let mut refused_once = false;
        loop {
            let error = match self.send_once(datagram) {
                Ok(len) => {
                    assert_eq!(len, datagram.len(), "datagram sockets send whole datagrams");
                    return Ok(Sent::Delivered);
                }
                Err(error) => error,
            };
            match error.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => {}
                _ if error.raw_os_error() == Some(libc::ENOBUFS) => {}
                io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound => {
                    self.stats.refused += 1;
                    match &mut self.inner {
                        Inner::Udp(_) if !refused_once => {
                            refused_once = true;
                            continue;
                        }
                        Inner::Udp(_) => return Ok(Sent::Dropped),
                        Inner::Unix {
                            socket,
                            path,
                            reconnect_at,
                        } => {
                            let now = Instant::now();
                            if reconnect_at.is_none_or(|at| now >= at) {
                                *reconnect_at = Some(now + RECONNECT_INTERVAL);
                                if socket.connect(&*path).is_ok() && !refused_once {
                                    refused_once = true;
                                    continue;
                                }
                            }
                            return Ok(Sent::Dropped);
                        }
                    }
                }
                _ => {
                    return Err(LoadgenError::Send {
                        target: self.target.to_string(),
                        source: error,
                    });
                }
            }
            // The socket is full.
            self.stats.retries += 1;
            let now = Instant::now();
            let since = *first_full.get_or_insert(now);
            if now - since >= SEND_RETRY_TIME_MAX || stop.load(Relaxed) {
                return Ok(Sent::Dropped);
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}
