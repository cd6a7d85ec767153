//! The admin server's resource limits (`[admin]` in the configuration):
//!
//! - [`LimitedListener`] wraps the listener the admin server accepts from (an
//!   [`axum::serve::Listener`]) and holds at most `max_connections` connections open. At the
//!   cap a new connection closes the connection idle the longest (no request in progress),
//!   so a flood of idle connections can neither exhaust file descriptors nor lock operators
//!   out; when every connection is busy with a request, the new one is closed instead.
//! - [`LimitedStream`] enforces the two timeouts on each connection: a request's header
//!   (up to the blank line) must arrive within `header_timeout` of the connection's start or
//!   of the first byte of a later request (slow-header clients), and a connection with no
//!   byte moving either way for `idle_timeout` is closed. Neither applies while a request
//!   is being handled (from the end of its header to the first byte of its response).
//! - [`LoginThrottle`] counts failed logins per client address: after
//!   `login_failures_max` within `login_failures_window`, that address's requests carrying
//!   credentials are answered `429 Too Many Requests` with `Retry-After` (before any password
//!   is hashed) until the window has passed.
//!
//! Everything is counted in [`AdminCounters`] (`tollgate_admin_*` metrics), nothing is
//! logged per connection.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::config::AdminLimits;

/// Most client addresses the login throttle remembers; when full, addresses whose window
/// has passed are forgotten, then the oldest.
pub const THROTTLED_ADDRESSES_MAX: usize = 4096;

/// Admin connection and login counters since start.
#[derive(Debug, Default)]
pub struct AdminCounters {
    /// Connections open now.
    pub open: AtomicU64,
    pub accepted: AtomicU64,
    /// Closed to make room at the cap (the one idle the longest).
    pub evicted: AtomicU64,
    /// Closed at once: at the cap with every connection busy.
    pub refused: AtomicU64,
    pub header_timeouts: AtomicU64,
    pub idle_timeouts: AtomicU64,
    /// Requests answered 429 because their address failed to log in too often.
    pub logins_throttled: AtomicU64,
    /// Requests whose credentials were wrong (unknown user or wrong password).
    pub logins_failed: AtomicU64,
}

/// What one connection shares with the listener.
#[derive(Debug)]
struct Shared {
    id: u64,
    /// Milliseconds since the registry's epoch of the last byte moved.
    last_activity_ms: AtomicU64,
    /// A request has been read and its response not yet written.
    busy: AtomicBool,
    evict: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Shared {
    fn evict(&self) {
        self.evict.store(true, Relaxed);
        if let Some(waker) = self.waker.lock().take() {
            waker.wake();
        }
    }
}

#[derive(Debug)]
struct Registry {
    epoch: Instant,
    conns: Mutex<HashMap<u64, Arc<Shared>>>,
    counters: Arc<AdminCounters>,
}

impl Registry {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// An [`axum::serve::Listener`] holding at most `max_connections` connections (see the
/// module doc).
#[derive(Debug)]
pub struct LimitedListener<L> {
    inner: L,
    limits: AdminLimits,
    registry: Arc<Registry>,
    next_id: u64,
}

impl<L> LimitedListener<L> {
    pub fn new(inner: L, limits: AdminLimits, counters: Arc<AdminCounters>) -> Self {
        LimitedListener {
            inner,
            limits,
            registry: Arc::new(Registry {
                epoch: Instant::now(),
                conns: Mutex::new(HashMap::new()),
                counters,
            }),
            next_id: 0,
        }
    }

    pub fn inner(&self) -> &L {
        &self.inner
    }

    /// Makes room for one more connection: `true` if there is room (possibly after
    /// evicting the connection idle the longest).
    fn make_room(&self) -> bool {
        let conns = self.registry.conns.lock();
        if conns.len() < self.limits.max_connections {
            return true;
        }
        let idlest = conns
            .values()
            .filter(|c| !c.busy.load(Relaxed) && !c.evict.load(Relaxed))
            .min_by_key(|c| (c.last_activity_ms.load(Relaxed), c.id));
        match idlest {
            Some(conn) => {
                conn.evict();
                self.registry.counters.evicted.fetch_add(1, Relaxed);
                true
            }
            None => false,
        }
    }
}

impl<L> axum::serve::Listener for LimitedListener<L>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    type Io = LimitedStream<L::Io>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (io, addr) = self.inner.accept().await;
            if !self.make_room() {
                self.registry.counters.refused.fetch_add(1, Relaxed);
                drop(io);
                continue;
            }
            self.next_id += 1;
            let shared = Arc::new(Shared {
                id: self.next_id,
                last_activity_ms: AtomicU64::new(self.registry.now_ms()),
                busy: AtomicBool::new(false),
                evict: AtomicBool::new(false),
                waker: Mutex::new(None),
            });
            self.registry
                .conns
                .lock()
                .insert(shared.id, Arc::clone(&shared));
            let counters = &self.registry.counters;
            counters.accepted.fetch_add(1, Relaxed);
            counters.open.fetch_add(1, Relaxed);
            let stream = LimitedStream {
                inner: io,
                shared,
                registry: Arc::clone(&self.registry),
                limits: self.limits,
                phase: Phase::Head,
                head_matched: 0,
                head_deadline: tokio::time::Instant::now() + self.limits.header_timeout,
                timer: Box::pin(tokio::time::sleep(self.limits.header_timeout)),
            };
            return (stream, addr);
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// The client address of an admin connection, for `ConnectInfo<ClientAddr>` (axum
/// implements its `Connected` for `SocketAddr` only on its own listeners).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

impl<L> axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, LimitedListener<L>>>
    for ClientAddr
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, LimitedListener<L>>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

/// Where a connection is in its request/response cycle (HTTP/1.1, seen from the bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a request header: bounded by `header_timeout`.
    Head,
    /// The header is in; the request is being handled. Until a response byte is written.
    Busy,
    /// A response was written; waiting for the next request (bounded by `idle_timeout`).
    Idle,
}

/// One admin connection with its timeouts (see the module doc).
#[derive(Debug)]
pub struct LimitedStream<S> {
    inner: S,
    shared: Arc<Shared>,
    registry: Arc<Registry>,
    limits: AdminLimits,
    phase: Phase,
    /// How many bytes of `\r\n\r\n` the header read so far ends with.
    head_matched: u8,
    head_deadline: tokio::time::Instant,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl<S> Drop for LimitedStream<S> {
    fn drop(&mut self) {
        self.registry.conns.lock().remove(&self.shared.id);
        self.registry.counters.open.fetch_sub(1, Relaxed);
    }
}

impl<S> LimitedStream<S> {
    /// The deadline in force: the header deadline while reading one, else the idle one.
    fn deadline(&self) -> tokio::time::Instant {
        let idle = tokio::time::Instant::now() + self.limits.idle_timeout;
        match self.phase {
            Phase::Head => self.head_deadline.min(idle),
            Phase::Busy | Phase::Idle => idle,
        }
    }

    fn touch(&mut self) {
        self.shared
            .last_activity_ms
            .store(self.registry.now_ms(), Relaxed);
        let deadline = self.deadline();
        self.timer.as_mut().reset(deadline);
    }

    /// Notes bytes read: a new request starts a header deadline; the end of a header
    /// (`\r\n\r\n`) makes the connection busy.
    fn on_read(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.phase == Phase::Idle {
            self.phase = Phase::Head;
            self.head_matched = 0;
            self.head_deadline = tokio::time::Instant::now() + self.limits.header_timeout;
        }
        if self.phase == Phase::Head {
            const END: &[u8; 4] = b"\r\n\r\n";
            for &b in bytes {
                self.head_matched = if b == END[usize::from(self.head_matched)] {
                    self.head_matched + 1
                } else if b == b'\r' {
                    1
                } else {
                    0
                };
                if self.head_matched == 4 {
                    self.phase = Phase::Busy;
                    self.shared.busy.store(true, Relaxed);
                    break;
                }
            }
        }
        self.touch();
    }

    fn on_write(&mut self) {
        if self.phase == Phase::Busy {
            self.phase = Phase::Idle;
            self.shared.busy.store(false, Relaxed);
        }
        self.touch();
    }

    /// An error if the connection was evicted or its deadline passed (registering the
    /// task's waker for both).
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        *self.shared.waker.lock() = Some(cx.waker().clone());
        if self.shared.evict.load(Relaxed) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "evicted: admin connection cap",
            ));
        }
        // While a request is being handled (a license reload may wait on the license
        // server for a while), the agent is the one working: no timeout applies.
        if self.phase != Phase::Busy && self.timer.as_mut().poll(cx).is_ready() {
            let counters = &self.registry.counters;
            let (counter, what) = match self.phase {
                Phase::Head if tokio::time::Instant::now() >= self.head_deadline => {
                    (&counters.header_timeouts, "header timeout")
                }
                _ => (&counters.idle_timeouts, "idle timeout"),
            };
            counter.fetch_add(1, Relaxed);
            return Err(io::Error::new(io::ErrorKind::TimedOut, what));
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LimitedStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.on_read(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.check(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LimitedStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.shared.evict.load(Relaxed) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "evicted: admin connection cap",
            )));
        }
        let result = Pin::new(&mut this.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = result
            && n > 0
        {
            this.on_write();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = result
            && n > 0
        {
            this.on_write();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Failed logins per client address (see the module doc).
#[derive(Debug)]
pub struct LoginThrottle {
    max: u32,
    window: Duration,
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    window_start: Instant,
}

impl LoginThrottle {
    pub fn new(max: u32, window: Duration) -> Self {
        LoginThrottle {
            max,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(retry_after)` while `client` is throttled at `now`.
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let failures = self.failures.lock();
        match failures.get(&client) {
            Some(f) if f.count >= self.max => {
                let until = f.window_start + self.window;
                if now < until {
                    Err(until - now)
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    /// Records a failed login from `client` at `now`.
    pub fn failed(&self, client: IpAddr, now: Instant) {
        let mut failures = self.failures.lock();
        if failures.len() >= THROTTLED_ADDRESSES_MAX && !failures.contains_key(&client) {
            let window = self.window;
            failures.retain(|_, f| now.duration_since(f.window_start) < window);
            if failures.len() >= THROTTLED_ADDRESSES_MAX
                && let Some(oldest) = failures
                    .iter()
                    .min_by_key(|(_, f)| f.window_start)
                    .map(|(ip, _)| *ip)
            {
                failures.remove(&oldest);
            }
        }
        let entry = failures.entry(client).or_insert(Failures {
            count: 0,
            window_start: now,
        });
        if now.duration_since(entry.window_start) >= self.window {
            *entry = Failures {
                count: 0,
                window_start: now,
            };
        }
        entry.count = entry.count.saturating_add(1);
    }

    /// A successful login clears the address's failures.
    pub fn succeeded(&self, client: IpAddr) {
        self.failures.lock().remove(&client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_throttled_after_max_failures_until_its_window_passes() {
        let t = LoginThrottle::new(3, Duration::from_secs(60));
        let (a, b) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(t.check(a, t0), Ok(()), "failure {i}");
            t.failed(a, t0 + Duration::from_secs(i));
        }
        assert_eq!(
            t.check(a, t0 + Duration::from_secs(10)),
            Err(Duration::from_secs(50))
        );
        assert_eq!(t.check(b, t0), Ok(()), "other addresses are not affected");
        assert_eq!(t.check(a, t0 + Duration::from_secs(60)), Ok(()));
        // A new window starts with the next failure.
        t.failed(a, t0 + Duration::from_secs(61));
        assert_eq!(t.check(a, t0 + Duration::from_secs(61)), Ok(()));
        t.succeeded(a);
        assert!(t.failures.lock().is_empty());
    }

    #[test]
    fn the_throttle_remembers_a_bounded_number_of_addresses() {
        let t = LoginThrottle::new(1, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..THROTTLED_ADDRESSES_MAX as u32 + 10 {
            t.failed(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(t.failures.lock().len() <= THROTTLED_ADDRESSES_MAX);
    }
}
