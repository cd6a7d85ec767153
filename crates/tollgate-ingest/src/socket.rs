//! Opening the event sockets with the options ingest needs: a large receive buffer and a
//! receive timeout so threads notice shutdown. Kernel drops are read from the socket
//! (`SO_MEMINFO`, see [`crate::RecvBatch`]), not asked for per datagram. Several ingest
//! threads on one UDP endpoint each get a socket of their own on the same port
//! ([`EventSocket::bind_group`], `SO_REUSEPORT`): the kernel spreads senders over them by
//! address, so each sender's datagrams stay in order on one thread.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::IngestError;

/// How long a blocked receive waits before the thread checks for shutdown.
pub const RECV_TIMEOUT: Duration = Duration::from_millis(100);

/// Where events arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Udp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Udp(a) => write!(f, "udp:{a}"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Socket options applied to every event socket.
#[derive(Debug, Clone, Copy)]
pub struct SocketOptions {
    /// Requested `SO_RCVBUF`; the kernel caps it at `net.core.rmem_max` unless the process
    /// may use `SO_RCVBUFFORCE` (CAP_NET_ADMIN).
    pub receive_buffer_bytes: usize,
    /// File mode of the unix socket (who may send events).
    pub unix_mode: u32,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            receive_buffer_bytes: 8 << 20,
            unix_mode: 0o660,
        }
    }
}

/// An open event socket.
#[derive(Debug)]
pub struct EventSocket {
    fd: OwnedFd,
    endpoint: Endpoint,
    /// The receive buffer the kernel actually granted (as `getsockopt` reports it).
    pub receive_buffer_bytes: usize,
    unix_path: Option<PathBuf>,
}

impl EventSocket {
    /// Binds `endpoint`. A UDP port of 0 picks a free port: see [`EventSocket::endpoint`].
    /// A stale unix socket file left by a previous run is replaced; one that a live process
    /// still reads is an error.
    pub fn bind(endpoint: &Endpoint, options: &SocketOptions) -> Result<Self, IngestError> {
        let bind_err = |source| IngestError::Bind {
            endpoint: endpoint.to_string(),
            source,
        };
        let (fd, endpoint, unix_path): (OwnedFd, Endpoint, Option<PathBuf>) = match endpoint {
            Endpoint::Udp(addr) => {
                let s = UdpSocket::bind(addr).map_err(bind_err)?;
                let local = s.local_addr().map_err(bind_err)?;
                (s.into(), Endpoint::Udp(local), None)
            }
            Endpoint::Unix(path) => {
                remove_stale_socket(path).map_err(bind_err)?;
                let s = UnixDatagram::bind(path).map_err(bind_err)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(options.unix_mode))
                    .map_err(bind_err)?;
                (s.into(), Endpoint::Unix(path.clone()), Some(path.clone()))
            }
        };
        Self::configure(fd, endpoint, unix_path, options).map_err(bind_err)
    }

    /// `count` sockets on one endpoint. For UDP, each is bound with `SO_REUSEPORT` to the
    /// same address (the port of the first when 0 was asked for), so `count` threads each
    /// read a socket of their own. A unix endpoint cannot be shared that way: it gets one
    /// socket, which the threads share.
    pub fn bind_group(
        endpoint: &Endpoint,
        options: &SocketOptions,
        count: usize,
    ) -> Result<Vec<Self>, IngestError> {
        let Endpoint::Udp(addr) = endpoint else {
            return Ok(vec![Self::bind(endpoint, options)?]);
        };
        if count <= 1 {
            return Ok(vec![Self::bind(endpoint, options)?]);
        }
        let bind_err = |source| IngestError::Bind {
            endpoint: endpoint.to_string(),
            source,
        };
        let mut sockets: Vec<Self> = Vec::with_capacity(count);
        let mut addr = *addr;
        for _ in 0..count {
            let s = bind_udp_reuseport(addr).map_err(bind_err)?;
            let local = s.local_addr().map_err(bind_err)?;
            addr = local;
            sockets.push(
                Self::configure(s.into(), Endpoint::Udp(local), None, options).map_err(bind_err)?,
            );
        }
        Ok(sockets)
    }

    fn configure(
        fd: OwnedFd,
        endpoint: Endpoint,
        unix_path: Option<PathBuf>,
        options: &SocketOptions,
    ) -> io::Result<Self> {
        let raw = fd.as_raw_fd();
        set_receive_buffer(raw, options.receive_buffer_bytes);
        set_receive_timeout(raw, RECV_TIMEOUT)?;
        let receive_buffer_bytes = getsockopt_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUF)
            .map(|v| v as usize)
            .unwrap_or(0);
        Ok(EventSocket {
            fd,
            endpoint,
            receive_buffer_bytes,
            unix_path,
        })
    }

    /// The bound endpoint (with the real port when 0 was asked for).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Drop for EventSocket {
    fn drop(&mut self) {
        if let Some(path) = &self.unix_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A UDP socket bound to `addr` with `SO_REUSEPORT` set before the bind (std cannot).
fn bind_udp_reuseport(addr: SocketAddr) -> io::Result<UdpSocket> {
    use std::os::fd::FromRawFd;
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); the fd is owned right after.
    let raw = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh socket nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    // SAFETY: zeroed sockaddr_storage is valid; the variant written matches `len`.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    // SAFETY: `storage` holds a valid address of `len` bytes.
    let rc = unsafe {
        libc::bind(
            raw,
            (&storage as *const libc::sockaddr_storage).cast(),
            len as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UdpSocket::from(fd))
}

fn remove_stale_socket(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            // Someone still reading it? Then it is not stale.
            let probe = UnixDatagram::unbound()?;
            if probe.connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process is reading this unix socket",
                ));
            }
            std::fs::remove_file(path)
        }
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "path exists and is not a socket",
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn set_receive_buffer(fd: RawFd, bytes: usize) {
    let bytes = bytes.min(i32::MAX as usize) as libc::c_int;
    // SO_RCVBUFFORCE ignores rmem_max but needs CAP_NET_ADMIN; fall back to SO_RCVBUF.
    if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, bytes).is_err() {
        let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, bytes);
    }
}

fn set_receive_timeout(fd: RawFd, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: passes a valid timeval of the right size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a valid c_int of the right size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn getsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value and len are valid for writes of the declared size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_port_zero_reports_the_real_port() {
        let s = EventSocket::bind(
            &Endpoint::Udp("127.0.0.1:0".parse().unwrap()),
            &SocketOptions::default(),
        )
        .unwrap();
        match s.endpoint() {
            Endpoint::Udp(a) => assert_ne!(a.port(), 0),
            other => panic!("unexpected {other:?}"),
        }
        assert!(s.receive_buffer_bytes > 0);
    }

    #[test]
    fn stale_unix_socket_is_replaced_but_a_live_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.sock");
        let ep = Endpoint::Unix(path.clone());
        let live = EventSocket::bind(&ep, &SocketOptions::default()).unwrap();
        let err = EventSocket::bind(&ep, &SocketOptions::default()).unwrap_err();
        assert!(err.to_string().contains("another process"), "{err}");
        // Leave the file behind as a crash would, then bind again.
        std::mem::forget(live);
        // The forgotten fd still answers connect; simulate a dead reader with a plain file
        // socket created by a bound-then-dropped std socket instead.
        let path2 = dir.path().join("stale.sock");
        drop(UnixDatagram::bind(&path2).unwrap());
        assert!(path2.exists());
        EventSocket::bind(&Endpoint::Unix(path2), &SocketOptions::default()).unwrap();
    }

    #[test]
    fn a_udp_group_shares_one_port_and_every_socket_receives() {
        let group = EventSocket::bind_group(
            &Endpoint::Udp("127.0.0.1:0".parse().unwrap()),
            &SocketOptions::default(),
            3,
        )
        .unwrap();
        assert_eq!(group.len(), 3);
        let port = |s: &EventSocket| match s.endpoint() {
            Endpoint::Udp(a) => *a,
            other => panic!("unexpected {other:?}"),
        };
        let addr = port(&group[0]);
        assert_ne!(addr.port(), 0);
        assert!(group.iter().all(|s| port(s) == addr));
        // The kernel picks a socket per sender address: senders from many source ports
        // reach every socket of the group.
        let mut reached = [false; 3];
        let mut batch = crate::RecvBatch::new(8, 64);
        for _ in 0..200 {
            let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
            tx.send_to(b"x", addr).unwrap();
            let mut found = false;
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !found && std::time::Instant::now() < deadline {
                for (i, s) in group.iter().enumerate() {
                    if batch.recv_mode(s.raw_fd(), crate::RecvMode::Spin).is_ok() {
                        reached[i] = true;
                        found = true;
                    }
                }
            }
            assert!(found, "a datagram to the group arrived nowhere");
            if reached.iter().all(|r| *r) {
                break;
            }
        }
        assert_eq!(reached, [true; 3]);
        // A unix endpoint gets one socket, shared.
        let dir = tempfile::tempdir().unwrap();
        let unix = EventSocket::bind_group(
            &Endpoint::Unix(dir.path().join("e.sock")),
            &SocketOptions::default(),
            3,
        )
        .unwrap();
        assert_eq!(unix.len(), 1);
    }
}
