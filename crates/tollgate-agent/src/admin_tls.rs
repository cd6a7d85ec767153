//! The admin server's listener: plain TCP, or HTTPS with `[admin] tls_cert` / `tls_key`
//! (rustls, TLS 1.2 and 1.3, HTTP/1.1 by ALPN).
//!
//! [`AdminListener`] is an [`axum::serve::Listener`], so the server is
//! `axum::serve(listener, router)` either way: TLS is a layer around the accepted sockets and
//! nothing above it knows. With TLS, one task accepts TCP connections and runs each
//! handshake in a task of its own (at most [`HANDSHAKES_MAX`] at once, each cut after
//! [`HANDSHAKE_TIMEOUT`]), so a slow or silent client never holds up the others; finished
//! handshakes queue for the server ([`ACCEPTED_QUEUE_MAX`]). Failed and timed-out
//! handshakes are counted ([`TlsCounters`], `tollgate_admin_tls_handshakes_total`), never
//! logged one by one.
//!
//! The client address of a connection is [`ClientAddr`] for
//! `into_make_service_with_connect_info::<ClientAddr>()` (axum implements its `Connected`
//! for `SocketAddr` only on its own listeners).
//!
//! The certificate and key are read once at start (PEM: the certificate chain, leaf first,
//! and a PKCS#8, PKCS#1 or SEC1 private key); a new certificate takes a restart.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Longest a TLS handshake may take before the connection is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most TLS handshakes in progress at once; further connections wait in the kernel's
/// backlog.
pub const HANDSHAKES_MAX: usize = 64;
/// Most finished handshakes waiting for the HTTP server to take them.
pub const ACCEPTED_QUEUE_MAX: usize = 64;
/// Largest certificate or key file read, bytes.
pub const PEM_BYTES_MAX: u64 = 1024 * 1024;

/// Why the admin TLS configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: larger than {PEM_BYTES_MAX} bytes", path.display())]
    TooLarge { path: PathBuf },
    #[error("{}: no PEM certificate in it", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: {problem}", path.display())]
    Pem { path: PathBuf, problem: String },
    #[error("{}: no PEM private key in it", path.display())]
    NoKey { path: PathBuf },
    #[error("the certificate and the key do not go together: {0}")]
    Mismatch(rustls::Error),
}

/// Handshake outcomes since start.
#[derive(Debug, Default)]
pub struct TlsCounters {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub timed_out: AtomicU64,
}

/// The rustls server configuration for the admin API from the PEM files `cert` (the chain,
/// leaf first) and `key`.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_pem = read_pem(cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: cert.to_owned(),
            problem: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_owned(),
        });
    }
    let key_pem = read_pem(key)?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: key.to_owned(),
        },
        other => TlsError::Pem {
            path: key.to_owned(),
            problem: other.to_string(),
        },
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Mismatch)?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(TlsError::Mismatch)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(PEM_BYTES_MAX + 1).read_to_end(&mut bytes))
        .map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })?;
    if bytes.len() as u64 > PEM_BYTES_MAX {
        return Err(TlsError::TooLarge {
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

/// The admin server's listener: plain TCP or TLS over TCP.
pub struct AdminListener {
    local: SocketAddr,
    inner: Inner,
}

enum Inner {
    Plain(TcpListener),
    Tls {
        accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
        acceptor_task: tokio::task::JoinHandle<()>,
    },
}

impl AdminListener {
    /// Serves plain HTTP on `listener`.
    pub fn plain(listener: TcpListener) -> io::Result<AdminListener> {
        Ok(AdminListener {
            local: listener.local_addr()?,
            inner: Inner::Plain(listener),
        })
    }

    /// Serves HTTPS on `listener` with `config`; spawns the accept task (call within a
    /// tokio runtime).
    pub fn tls(
        listener: TcpListener,
        config: Arc<ServerConfig>,
        counters: Arc<TlsCounters>,
    ) -> io::Result<AdminListener> {
        let local = listener.local_addr()?;
        let (tx, accepted) = mpsc::channel(ACCEPTED_QUEUE_MAX);
        let acceptor_task = tokio::spawn(accept_loop(
            listener,
            TlsAcceptor::from(config),
            counters,
            tx,
        ));
        Ok(AdminListener {
            local,
            inner: Inner::Tls {
                accepted,
                acceptor_task,
            },
        })
    }

    /// `https` or `http`.
    pub fn scheme(&self) -> &'static str {
        match self.inner {
            Inner::Plain(_) => "http",
            Inner::Tls { .. } => "https",
        }
    }
}

impl Drop for AdminListener {
    fn drop(&mut self) {
        if let Inner::Tls { acceptor_task, .. } = &self.inner {
            acceptor_task.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    counters: Arc<TlsCounters>,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_MAX));
    loop {
        let Ok(permit) = Arc::clone(&handshakes).acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // As axum does for its own listener: out of descriptors and the like pass;
                // wait a little instead of spinning.
                tracing::debug!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if tx.is_closed() {
            return;
        }
        let acceptor = acceptor.clone();
        let counters = Arc::clone(&counters);
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    counters.ok.fetch_add(1, Relaxed);
                    let _ = tx.send((stream, peer)).await;
                }
                Ok(Err(_)) => {
                    counters.failed.fetch_add(1, Relaxed);
                }
                Err(_) => {
                    counters.timed_out.fetch_add(1, Relaxed);
                }
            }
        });
    }
}

impl axum::serve::Listener for AdminListener {
    type Io = AdminStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (AdminStream, SocketAddr) {
        match &mut self.inner {
            Inner::Plain(listener) => {
                let (tcp, peer) = axum::serve::Listener::accept(listener).await;
                (AdminStream::Plain(tcp), peer)
            }
            Inner::Tls { accepted, .. } => match accepted.recv().await {
                Some((tls, peer)) => (AdminStream::Tls(Box::new(tls)), peer),
                // The accept task only ends when the runtime does; never yield a fake
                // connection.
                None => std::future::pending().await,
            },
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// The client address of an admin connection, for `ConnectInfo<ClientAddr>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, AdminListener>>
    for ClientAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, AdminListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

/// One admin connection, plain or TLS.
pub enum AdminStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for AdminStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AdminStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            AdminStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for AdminStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            AdminStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            AdminStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AdminStream::Plain(s) => Pin::new(s).poll_flush(cx),
            AdminStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AdminStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            AdminStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            AdminStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            AdminStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            AdminStream::Plain(s) => s.is_write_vectored(),
            AdminStream::Tls(s) => s.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn files_without_pem_are_refused_with_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let empty = write(dir.path(), "empty.pem", "");
        let junk = write(dir.path(), "junk.pem", "not a certificate\n");
        assert!(matches!(
            server_config(&empty, &junk),
            Err(TlsError::NoCertificate { .. })
        ));
        let missing = dir.path().join("missing.pem");
        let err = server_config(&missing, &junk).unwrap_err();
        assert!(err.to_string().contains("missing.pem"), "{err}");
    }
}
