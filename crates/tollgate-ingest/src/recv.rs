//! Batched datagram receive with `recvmmsg(2)`: the one place that touches the kernel's
//! receive path. Both the agent's ingest loop and the bench tool's bare drain loop use
//! [`RecvBatch`], so a comparison between them measures only what happens after the
//! datagrams are in user space.

use std::io;
use std::os::fd::RawFd;

/// Largest batch handed to one `recvmmsg` call. Larger batches gave nothing more on the
/// machines we measured (see `shared/notes/ingest-limits.md`).
pub const RECV_BATCH_MAX: usize = 1024;

/// Control-message space per datagram: one `SO_RXQ_OVFL` u32 with room to spare, aligned.
const CONTROL_WORDS: usize = 8;

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
/// source addresses and control messages. Nothing is allocated per call.
pub struct RecvBatch {
    buffers: Vec<u8>,
    slot_bytes: usize,
    // The three vectors below are pointed to by `msgs` (the kernel writes through those
    // pointers); they are never resized after construction, so the pointers stay valid when
    // the `RecvBatch` itself moves. `iovecs` and `controls` are only held, never read here.
    _iovecs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_storage>,
    _controls: Vec<[u64; CONTROL_WORDS]>,
    msgs: Vec<libc::mmsghdr>,
    filled: usize,
    /// Latest cumulative kernel drop count reported by `SO_RXQ_OVFL`, if any.
    kernel_drops: Option<u32>,
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
            .finish()
    }
}

impl RecvBatch {
    /// Buffers for `batch` datagrams (clamped to `1..=RECV_BATCH_MAX`) of up to `slot_bytes`.
    pub fn new(batch: usize, slot_bytes: usize) -> Self {
        let batch = batch.clamp(1, RECV_BATCH_MAX);
        let slot_bytes = slot_bytes.max(1);
        let mut buffers = vec![0u8; batch * slot_bytes];
        // SAFETY: all-zero is a valid bit pattern for these plain C structs.
        let mut names: Vec<libc::sockaddr_storage> = vec![unsafe { std::mem::zeroed() }; batch];
        let mut controls = vec![[0u64; CONTROL_WORDS]; batch];
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
                hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
                hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
                hdr.msg_iov = &mut iovecs[i];
                hdr.msg_iovlen = 1;
                hdr.msg_control = controls[i].as_mut_ptr().cast();
                hdr.msg_controllen = std::mem::size_of::<[u64; CONTROL_WORDS]>();
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
            _controls: controls,
            msgs,
            filled: 0,
            kernel_drops: None,
        }
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
        for m in &mut self.msgs {
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
            m.msg_hdr.msg_controllen = std::mem::size_of::<[u64; CONTROL_WORDS]>();
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
            return Err(io::Error::last_os_error());
        }
        self.filled = n as usize;
        for i in 0..self.filled {
            if let Some(drops) = rxq_ovfl(&self.msgs[i].msg_hdr) {
                self.kernel_drops = Some(drops);
            }
        }
        Ok(self.filled)
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
    /// receive queue was full (`SO_RXQ_OVFL`), once the kernel has reported one.
    pub fn kernel_drops(&self) -> Option<u32> {
        self.kernel_drops
    }

    /// Sends `reply` to the source address of the datagram in `slot` of the last batch.
    /// Returns `Ok(false)` when the sender has no address to reply to (an unbound unix
    /// datagram socket).
    pub fn reply_to(&self, fd: RawFd, slot: usize, reply: &[u8]) -> io::Result<bool> {
        let hdr = &self.msgs[slot].msg_hdr;
        let namelen = hdr.msg_namelen;
        let family = self.names[slot].ss_family as libc::c_int;
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
                (&self.names[slot] as *const libc::sockaddr_storage).cast(),
                namelen,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(true)
    }
}

/// Reads the `SO_RXQ_OVFL` control message, if present.
fn rxq_ovfl(hdr: &libc::msghdr) -> Option<u32> {
    // SAFETY: CMSG_* walk the control buffer the kernel filled, bounded by msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SO_RXQ_OVFL {
                let data = libc::CMSG_DATA(cmsg).cast::<u32>();
                return Some(data.read_unaligned());
            }
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
        }
    }
    None
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
}
