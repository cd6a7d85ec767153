//! Batched datagram receive with `recvmmsg(2)`: the one place that touches the kernel's
//! receive path. Both the agent's ingest loop and the bench tool's bare drain loop use
//! [`RecvBatch`], so a comparison between them measures only what happens after the
//! datagrams are in user space.
//!
//! **Ask the kernel only for what is used.** A batch asks for the source address of each
//! datagram only when replies are possible ([`RecvBatch::new`]; [`RecvBatch::without_source`]
//! asks for none), and never for a control message: the kernel's drop count of the socket is
//! read with one `getsockopt(SO_MEMINFO)` every [`DROPS_READ_EVERY`] receives and whenever
//! the queue runs empty, instead of an `SO_RXQ_OVFL` control message written into every
//! datagram's header (measured in `docs/performance.md`).

use std::io;
use std::os::fd::RawFd;

/// Largest batch handed to one `recvmmsg` call. Larger batches gave nothing more on the
/// machines we measured (`docs/performance.md`, ingest).
pub const RECV_BATCH_MAX: usize = 1024;

/// Receives between two reads of the socket's kernel drop count (`SO_MEMINFO`); it is also
/// read whenever a receive finds the queue empty (throttled to one in [`DROPS_READ_EVERY`]).
pub const DROPS_READ_EVERY: u32 = 256;

/// `SO_MEMINFO` (include/uapi/asm-generic/socket.h; not in the `libc` crate for glibc).
const SO_MEMINFO: libc::c_int = 55;
/// `SK_MEMINFO_DROPS`: the socket's `sk_drops`, the counter `SO_RXQ_OVFL` reports too.
const SK_MEMINFO_DROPS: usize = 8;

/// How a receive waits for the first datagram of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecvMode {
    /// Sleep in the kernel until a datagram arrives (or the receive timeout passes).
    #[default]
    Block,
    /// Never sleep: poll the queue in a loop. Spends a core to save the sender the wake-up
    /// of a sleeping receiver (an inter-processor interrupt per datagram when the receiver
    /// keeps up), which is what limits a loopback sender in a VM.
    Spin,
}

/// One received datagram, borrowed from a [`RecvBatch`].
#[derive(Debug)]
pub struct Received<'a> {
    pub data: &'a [u8],
    /// The datagram did not fit the slot and was cut (`MSG_TRUNC`).
    pub truncated: bool,
    /// Index of this datagram's slot, for [`RecvBatch::reply_to`].
    pub slot: usize,
}

/// Pre-allocated buffers for `recvmmsg`: `batch` slots of `slot_bytes` each, with their
/// source addresses when asked for. Nothing is allocated per call.
pub struct RecvBatch {
    buffers: Vec<u8>,
    slot_bytes: usize,
    // The two vectors below are pointed to by `msgs` (the kernel writes through those
    // pointers); they are never resized after construction, so the pointers stay valid when
    // the `RecvBatch` itself moves. `iovecs` is only held, never read here.
    _iovecs: Vec<libc::iovec>,
    /// Empty when the batch asks for no source addresses.
    names: Vec<libc::sockaddr_storage>,
    msgs: Vec<libc::mmsghdr>,
    filled: usize,
    /// Latest cumulative kernel drop count of the socket (`SO_MEMINFO`), once read.
    kernel_drops: Option<u32>,
    /// Receives since the drop count was last read.
    since_drops_read: u32,
}

// SAFETY: the raw pointers inside `msgs`/`iovecs` point only into buffers this struct owns;
// it is used by one thread at a time (it is `Send`, not `Sync`).
unsafe impl Send for RecvBatch {}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("batch", &self.msgs.len())
            .field("slot_bytes", &self.slot_bytes)
            .field("filled", &self.filled)
            .field("source_addresses", &self.asks_source())
            .finish()
    }
}

impl RecvBatch {
    /// Buffers for `batch` datagrams (clamped to `1..=RECV_BATCH_MAX`) of up to `slot_bytes`,
    /// with each datagram's source address (for [`RecvBatch::reply_to`]).
    pub fn new(batch: usize, slot_bytes: usize) -> Self {
        Self::build(batch, slot_bytes, true)
    }

    /// [`RecvBatch::new`] without source addresses: the kernel copies none out, and
    /// [`RecvBatch::reply_to`] answers `Ok(false)`. For sockets nobody expects a reply from.
    pub fn without_source(batch: usize, slot_bytes: usize) -> Self {
        Self::build(batch, slot_bytes, false)
    }

    fn build(batch: usize, slot_bytes: usize, source: bool) -> Self {
        let batch = batch.clamp(1, RECV_BATCH_MAX);
        let slot_bytes = slot_bytes.max(1);
        let mut buffers = vec![0u8; batch * slot_bytes];
        // SAFETY: all-zero is a valid bit pattern for these plain C structs.
        let mut names: Vec<libc::sockaddr_storage> =
            vec![unsafe { std::mem::zeroed() }; if source { batch } else { 0 }];
        let mut iovecs: Vec<libc::iovec> = (0..batch)
            .map(|i| libc::iovec {
                // SAFETY: `i * slot_bytes` is within `buffers` (batch * slot_bytes long).
                iov_base: unsafe { buffers.as_mut_ptr().add(i * slot_bytes) }.cast(),
                iov_len: slot_bytes,
            })
            .collect();
        let msgs = (0..batch)
            .map(|i| {
                // SAFETY: zeroed msghdr is valid; fields are set right after.
                let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
                if let Some(name) = names.get_mut(i) {
                    hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
                    hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
                }
                hdr.msg_iov = &mut iovecs[i];
                hdr.msg_iovlen = 1;
                libc::mmsghdr {
                    msg_hdr: hdr,
                    msg_len: 0,
                }
            })
            .collect();
        RecvBatch {
            buffers,
            slot_bytes,
            _iovecs: iovecs,
            names,
            msgs,
            filled: 0,
            kernel_drops: None,
            since_drops_read: 0,
        }
    }

    /// Whether this batch asks the kernel for source addresses.
    pub fn asks_source(&self) -> bool {
        !self.names.is_empty()
    }

    /// What each receive asks the kernel for, as printed by the bench tool so that a
    /// comparison between two loops states its terms.
    pub fn describe(&self, mode: RecvMode) -> String {
        format!(
            "recvmmsg(batch {}, flags {}), source address {}, control messages none, \
             kernel drops via SO_MEMINFO every {} receives",
            self.capacity(),
            match mode {
                RecvMode::Block => "MSG_WAITFORONE",
                RecvMode::Spin => "MSG_WAITFORONE|MSG_DONTWAIT",
            },
            if self.asks_source() { "yes" } else { "no" },
            DROPS_READ_EVERY,
        )
    }

    pub fn capacity(&self) -> usize {
        self.msgs.len()
    }

    /// Receives up to [`capacity`](Self::capacity) datagrams: blocks until at least one is
    /// there (or the socket's receive timeout passes), then takes whatever else is queued
    /// without blocking (`MSG_WAITFORONE`). Returns the number received.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.recv_mode(fd, RecvMode::Block)
    }

    /// [`recv`](Self::recv), or with [`RecvMode::Spin`] a receive that never sleeps: it
    /// returns `WouldBlock` at once when the queue is empty.
    pub fn recv_mode(&mut self, fd: RawFd, mode: RecvMode) -> io::Result<usize> {
        let flags = match mode {
            RecvMode::Block => libc::MSG_WAITFORONE,
            RecvMode::Spin => libc::MSG_WAITFORONE | libc::MSG_DONTWAIT,
        };
        let namelen = if self.asks_source() {
            std::mem::size_of::<libc::sockaddr_storage>() as u32
        } else {
            0
        };
        for m in &mut self.msgs {
            m.msg_hdr.msg_namelen = namelen;
            m.msg_hdr.msg_flags = 0;
            m.msg_len = 0;
        }
        self.filled = 0;
        // SAFETY: `msgs` holds `len` initialised headers pointing into owned buffers.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                self.msgs.len() as libc::c_uint,
                flags,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            // The queue ran empty: a cheap moment to look at the drop count (throttled, as a
            // spinning receiver sees this in a loop).
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) {
                self.since_drops_read = self.since_drops_read.saturating_add(1);
                if self.since_drops_read >= DROPS_READ_EVERY || mode == RecvMode::Block {
                    self.read_kernel_drops(fd);
                }
            }
            return Err(e);
        }
        self.filled = n as usize;
        self.since_drops_read += 1;
        if self.since_drops_read >= DROPS_READ_EVERY {
            self.read_kernel_drops(fd);
        }
        Ok(self.filled)
    }

    /// Reads the socket's cumulative kernel drop count now (one `getsockopt`).
    pub fn read_kernel_drops(&mut self, fd: RawFd) {
        self.since_drops_read = 0;
        if let Some(drops) = socket_drops(fd) {
            self.kernel_drops = Some(drops);
        }
    }

    /// The datagrams of the last [`recv`](Self::recv).
    pub fn iter(&self) -> impl Iterator<Item = Received<'_>> + '_ {
        (0..self.filled).map(move |i| {
            let m = &self.msgs[i];
            let len = (m.msg_len as usize).min(self.slot_bytes);
            let start = i * self.slot_bytes;
            Received {
                data: &self.buffers[start..start + len],
                truncated: m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
                slot: i,
            }
        })
    }

    /// Latest cumulative count of datagrams the kernel dropped on this socket because its
    /// receive queue was full (`SO_MEMINFO`), as of the last read (at most
    /// [`DROPS_READ_EVERY`] receives ago, or when the queue last ran empty).
    pub fn kernel_drops(&self) -> Option<u32> {
        self.kernel_drops
    }

    /// Sends `reply` to the source address of the datagram in `slot` of the last batch.
    /// Returns `Ok(false)` when the sender has no address to reply to (an unbound unix
    /// datagram socket).
    pub fn reply_to(&self, fd: RawFd, slot: usize, reply: &[u8]) -> io::Result<bool> {
        let Some(name) = self.names.get(slot) else {
            return Ok(false);
        };
        let namelen = self.msgs[slot].msg_hdr.msg_namelen;
        let family = name.ss_family as libc::c_int;
        // An unbound unix sender shows up with only the family (or nothing) as its name.
        let min_len = std::mem::size_of::<libc::sa_family_t>() as u32;
        if namelen <= min_len
            || (family != libc::AF_INET && family != libc::AF_INET6 && family != libc::AF_UNIX)
        {
            return Ok(false);
        }
        // SAFETY: the name buffer holds `namelen` bytes the kernel wrote for this slot.
        let rc = unsafe {
            libc::sendto(
                fd,
                reply.as_ptr().cast(),
                reply.len(),
                libc::MSG_DONTWAIT,
                (name as *const libc::sockaddr_storage).cast(),
                namelen,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(true)
    }
}

/// The socket's kernel drop count (`sk_drops`) from `SO_MEMINFO`, if the kernel reports it.
fn socket_drops(fd: RawFd) -> Option<u32> {
    let mut info = [0u32; 16];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: `info` and `len` are valid for writes of the declared size; the kernel writes
    // at most `len` bytes and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    let filled = len as usize / std::mem::size_of::<u32>();
    (rc == 0 && filled > SK_MEMINFO_DROPS).then(|| info[SK_MEMINFO_DROPS])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn receives_a_batch_and_replies_to_the_sender() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..5 {
            tx.send_to(format!("datagram {i}").as_bytes(), rx.local_addr().unwrap())
                .unwrap();
        }
        let mut batch = RecvBatch::new(64, 2048);
        assert_eq!(batch.capacity(), 64);
        let mut got = Vec::new();
        while got.len() < 5 {
            batch.recv(rx.as_raw_fd()).unwrap();
            got.extend(
                batch
                    .iter()
                    .map(|r| String::from_utf8(r.data.to_vec()).unwrap()),
            );
        }
        assert_eq!(
            got,
            (0..5).map(|i| format!("datagram {i}")).collect::<Vec<_>>()
        );
        assert!(batch.reply_to(rx.as_raw_fd(), 0, b"ok\n").unwrap());
        let mut buf = [0u8; 16];
        let (n, from) = tx.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ok\n");
        assert_eq!(from, rx.local_addr().unwrap());
    }

    #[test]
    fn oversize_datagram_is_flagged_truncated() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(&[b'x'; 100], rx.local_addr().unwrap()).unwrap();
        let mut batch = RecvBatch::new(4, 32);
        batch.recv(rx.as_raw_fd()).unwrap();
        let r = batch.iter().next().unwrap();
        assert!(r.truncated);
        assert_eq!(r.data.len(), 32);
    }

    #[test]
    fn a_batch_without_source_cannot_reply() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(b"call-stop x", rx.local_addr().unwrap())
            .unwrap();
        let mut batch = RecvBatch::without_source(8, 64);
        assert!(!batch.asks_source());
        assert_eq!(batch.recv(rx.as_raw_fd()).unwrap(), 1);
        assert_eq!(batch.iter().next().unwrap().data, b"call-stop x");
        assert!(!batch.reply_to(rx.as_raw_fd(), 0, b"ok\n").unwrap());
        assert!(batch.describe(RecvMode::Spin).contains("source address no"));
    }

    #[test]
    fn kernel_drops_are_read_from_the_socket_without_control_messages() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        // The smallest receive buffer the kernel grants: a few datagrams fit, the rest drop.
        let small: libc::c_int = 1;
        // SAFETY: a valid int option of the right size.
        unsafe {
            libc::setsockopt(
                rx.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&small as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        for _ in 0..200 {
            tx.send_to(&[b'x'; 512], rx.local_addr().unwrap()).unwrap();
        }
        let mut batch = RecvBatch::new(64, 1024);
        assert_eq!(batch.kernel_drops(), None);
        let mut received = 0;
        while let Ok(n) = batch.recv_mode(rx.as_raw_fd(), RecvMode::Spin) {
            received += n;
        }
        batch.read_kernel_drops(rx.as_raw_fd());
        let drops = batch.kernel_drops().expect("SO_MEMINFO reports drops");
        assert!(received < 200, "{received} of 200 fit a minimal buffer");
        assert_eq!(received as u32 + drops, 200);
    }
}
