//! systemd integration without a dependency: `sd_notify` readiness (`READY=1`), status text
//! and the watchdog (`WATCHDOG=1` at half of `WATCHDOG_USEC`), over the datagram socket
//! named by `NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace). Without
//! `NOTIFY_SOCKET` every call does nothing.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Sends one notification (`READY=1`, `STATUS=…`, `WATCHDOG=1`, `STOPPING=1`).
/// Returns whether a notify socket was configured and the message went out.
pub fn notify(message: &str) -> bool {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let target = target.to_string_lossy().into_owned();
    let Ok(socket) = UnixDatagram::unbound() else {
        return false;
    };
    let sent = if let Some(name) = target.strip_prefix('@') {
        SocketAddr::from_abstract_name(name.as_bytes())
            .and_then(|addr| socket.send_to_addr(message.as_bytes(), &addr))
    } else {
        socket.send_to(message.as_bytes(), &target)
    };
    sent.is_ok()
}

/// The interval at which to send `WATCHDOG=1` (half the configured timeout), if systemd
/// asked for a watchdog for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        && pid != std::process::id()
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_reaches_the_socket_named_by_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        // SAFETY (of the test): no other test in this crate reads NOTIFY_SOCKET.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &path) };
        assert!(notify("READY=1"));
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        let mut buf = [0u8; 32];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        assert!(!notify("READY=1"), "without NOTIFY_SOCKET nothing is sent");
    }
}
