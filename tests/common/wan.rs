//! A wide-area network on one machine, for whole-system tests: every node in its own
//! network namespace, all joined to a switch in a hub namespace that this test process runs
//! itself (a thread with an `AF_PACKET` socket on each port). The switch delays every frame
//! by a fixed one-way latency, drops a share of them at random, and can cut a node off (a
//! partition) and join it again.
//!
//! Why not `tc netem`: the kernels these tests run on may be built without it (this one is:
//! `CONFIG_NET_SCH_NETEM` is not set), while namespaces, veth pairs and packet sockets are
//! always there. Frames cross the switch with their `virtio_net_hdr` (`PACKET_VNET_HDR`), so
//! checksum offload and UDP segmentation offload (quinn uses GSO) pass through untouched.
//!
//! Needs root and `ip` (iproute2). [`Wan::create`] says why it cannot run otherwise.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

/// Runs `f` on a thread that has joined network namespace `ns` (`/run/netns/<ns>`): sockets
/// it creates live in that namespace.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                enter_netns(ns).unwrap_or_else(|e| panic!("{e}"));
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

fn enter_netns(ns: &str) -> Result<(), String> {
    let file = std::fs::File::open(format!("/run/netns/{ns}"))
        .map_err(|e| format!("open /run/netns/{ns}: {e}"))?;
    // SAFETY: setns(2) on a valid descriptor; it changes only this thread's namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(format!("setns {ns}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// What the switch did, cumulative.
#[derive(Debug, Default)]
pub struct SwitchStats {
    pub forwarded: AtomicU64,
    pub lost: AtomicU64,
    pub cut: AtomicU64,
}

/// The emulated network. Dropping it stops the switch and deletes the namespaces (kill the
/// processes inside first).
pub struct Wan {
    hub: String,
    nodes: Vec<String>,
    cut: Arc<Mutex<HashSet<usize>>>,
    stop: Arc<AtomicBool>,
    pub stats: Arc<SwitchStats>,
    switch: Option<JoinHandle<()>>,
}

impl Wan {
    /// `nodes` namespaces at 10.77.0.1, .2, …, every frame delayed by `one_way` and lost
    /// with probability `loss`. Err: why this machine cannot run it.
    pub fn create(nodes: usize, one_way: Duration, loss: f64) -> Result<Wan, String> {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("network namespaces need root".into());
        }
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let tag = format!(
            "tgwan{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut wan = Wan {
            hub: format!("{tag}hub"),
            nodes: Vec::new(),
            cut: Arc::default(),
            stop: Arc::default(),
            stats: Arc::default(),
            switch: None,
        };
        ip(&["netns", "add", &wan.hub])?;
        ip(&["-n", &wan.hub, "link", "set", "lo", "up"])?;
        let mut ports = Vec::new();
        for i in 0..nodes {
            let ns = format!("{tag}n{i}");
            ip(&["netns", "add", &ns])?;
            wan.nodes.push(ns.clone());
            let port = format!("port{i}");
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n", &wan.hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            ip(&["-n", &wan.hub, "link", "set", &port, "up"])?;
            let addr = format!("{}/24", Wan::addr_of(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ports.push(port);
        }
        let sockets = in_netns(&wan.hub, || {
            ports
                .iter()
                .map(|p| PortSocket::open(p))
                .collect::<Result<Vec<_>, String>>()
        })?;
        let (cut, stop, stats) = (wan.cut.clone(), wan.stop.clone(), wan.stats.clone());
        wan.switch = Some(std::thread::spawn(move || {
            run_switch(sockets, one_way, loss, &cut, &stop, &stats)
        }));
        Ok(wan)
    }

    pub fn addr_of(node: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, 0, node as u8 + 1)
    }

    pub fn netns(&self, node: usize) -> &str {
        &self.nodes[node]
    }

    /// Cuts `node` off: every frame from or to it is dropped until [`Wan::heal`].
    pub fn partition(&self, node: usize) {
        self.cut.lock().unwrap().insert(node);
    }

    pub fn heal(&self, node: usize) {
        self.cut.lock().unwrap().remove(&node);
    }
}

impl Drop for Wan {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.switch.take() {
            let _ = t.join();
        }
        for ns in self.nodes.iter().chain([&self.hub]) {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// `sizeof(struct virtio_net_hdr)`: what `PACKET_VNET_HDR` puts before every frame.
const VNET_HDR_LEN: usize = 10;
const PACKET_VNET_HDR: libc::c_int = 15;

struct PortSocket {
    fd: OwnedFd,
}

impl PortSocket {
    /// A raw packet socket bound to interface `name` (of the calling thread's namespace).
    fn open(name: &str) -> Result<PortSocket, String> {
        let err = |what: &str| format!("{what} on {name}: {}", std::io::Error::last_os_error());
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: socket(2) with constant arguments; the descriptor is owned at once.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as i32) };
        if raw < 0 {
            return Err(err("socket(AF_PACKET)"));
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let one: libc::c_int = 1;
        // SAFETY: setsockopt(2) with a valid int option value.
        let rc = unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_PACKET,
                PACKET_VNET_HDR,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(err("PACKET_VNET_HDR"));
        }
        let cname = std::ffi::CString::new(name).map_err(|e| e.to_string())?;
        // SAFETY: a valid NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if index == 0 {
            return Err(err("if_nametoindex"));
        }
        // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = index as i32;
        // SAFETY: bind(2) with a sockaddr_ll of the size given.
        let rc = unsafe {
            libc::bind(
                raw,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(err("bind"));
        }
        Ok(PortSocket { fd })
    }

    /// One frame received on the port (not one this switch sent out of it), vnet header
    /// first; `None` when nothing is waiting.
    fn recv(&self, buf: &mut [u8]) -> Option<usize> {
        loop {
            // SAFETY: zeroed sockaddr_ll is valid for recvfrom to fill.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: buf and from are valid for the lengths given.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if n < 0 {
                return None;
            }
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            return Some(n as usize);
        }
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: frame is valid for its length. A failed send is a lost frame.
        unsafe {
            libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0);
        }
    }
}

fn run_switch(
    ports: Vec<PortSocket>,
    one_way: Duration,
    loss: f64,
    cut: &Mutex<HashSet<usize>>,
    stop: &AtomicBool,
    stats: &SwitchStats,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x77a1);
    let mut macs: HashMap<[u8; 6], usize> = HashMap::new();
    // A fixed delay keeps arrival order: a FIFO is the whole timer wheel.
    let mut queue: VecDeque<(Instant, usize, Vec<u8>)> = VecDeque::new();
    let mut buf = vec![0u8; VNET_HDR_LEN + 65_536 + 14];
    let mut fds: Vec<libc::pollfd> = ports
        .iter()
        .map(|p| libc::pollfd {
            fd: p.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while queue.front().is_some_and(|(due, _, _)| *due <= now) {
            let Some((_, port, frame)) = queue.pop_front() else {
                break;
            };
            ports[port].send(&frame);
            stats.forwarded.fetch_add(1, Ordering::Relaxed);
        }
        let wait = queue
            .front()
            .map_or(Duration::from_millis(10), |(due, _, _)| {
                due.saturating_duration_since(now)
            })
            .min(Duration::from_millis(10));
        // SAFETY: fds is a valid array of pollfd for its length.
        unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                wait.as_millis() as i32,
            );
        }
        let cut_now = cut.lock().unwrap().clone();
        for (from, port) in ports.iter().enumerate() {
            while let Some(n) = port.recv(&mut buf) {
                if n < VNET_HDR_LEN + 14 {
                    continue;
                }
                let frame = &buf[VNET_HDR_LEN..n];
                let (dst, src) = (&frame[0..6], &frame[6..12]);
                if let Ok(src) = <[u8; 6]>::try_from(src) {
                    macs.insert(src, from);
                }
                if cut_now.contains(&from) {
                    stats.cut.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if rng.gen_bool(loss) {
                    stats.lost.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let known = <[u8; 6]>::try_from(dst)
                    .ok()
                    .and_then(|d| macs.get(&d).copied());
                let due = Instant::now() + one_way;
                let targets: Vec<usize> = match known {
                    Some(to) if dst[0] & 1 == 0 => vec![to],
                    _ => (0..ports.len()).filter(|&p| p != from).collect(),
                };
                for to in targets {
                    if cut_now.contains(&to) {
                        stats.cut.fetch_add(1, Ordering::Relaxed);
                    } else {
                        queue.push_back((due, to, buf[..n].to_vec()));
                    }
                }
            }
        }
        for fd in &mut fds {
            fd.revents = 0;
        }
    }
}
