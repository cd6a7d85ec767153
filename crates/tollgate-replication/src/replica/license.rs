//! License offers: the license document travels the mesh. A node that sees a peer advertise
//! a higher serial than its own asks that peer for the document (one request at a time, each
//! peer once per serial and connection) and hands it up ([`Event::LicenseOffered`]) for the
//! agent to verify; it serves its own document to peers that ask, rate-limited.

use super::{ANSWER_INTERVAL_MIN_MS, Destination, Event, Replica, Transmit, TransmitKind};
use crate::MonoTime;
use crate::frame::{Frame, LICENSE_BYTES_MAX};

/// Why [`Replica::set_license`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LicenseError {
    #[error("license of {len} bytes, more than {LICENSE_BYTES_MAX}")]
    TooLong { len: usize },
}

#[derive(Debug, Clone)]
pub(super) struct LicenseAsk {
    pub(super) peer: String,
    pub(super) serial: u64,
    pub(super) at: u64,
}

impl Replica {
    /// The license this node holds, verified by the agent: its serial goes into the record
    /// (peers with a lower one will ask for it) and `armored` is served to peers that ask.
    pub fn set_license(
        &mut self,
        now: MonoTime,
        serial: u64,
        armored: Vec<u8>,
    ) -> Result<(), LicenseError> {
        let now = now.ms();
        let now = self.tick(now);
        if armored.len() > LICENSE_BYTES_MAX {
            return Err(LicenseError::TooLong { len: armored.len() });
        }
        self.license_serial = serial;
        self.license_armored = armored;
        self.license_serial_seen = self.license_serial_seen.max(serial);
        if self
            .license_ask
            .as_ref()
            .is_some_and(|ask| ask.serial <= serial)
        {
            self.license_ask = None;
        }
        if !self.left {
            self.maybe_emit(now);
        }
        Ok(())
    }

    /// Asks one connected peer that advertises a higher license serial for the document. One
    /// request at a time; each peer is asked for a given serial once per connection (a
    /// document the agent refuses is not fetched in a loop).
    pub(super) fn maybe_ask_license(&mut self, now: u64) {
        if self.left
            || self.license_ask.is_some()
            || self.license_serial_seen <= self.license_serial
        {
            return;
        }
        let mut best: Option<(u64, &str)> = None;
        for (peer_id, peer) in &self.peers {
            let Some(entry) = self.entries.get(peer_id) else {
                continue;
            };
            let serial = entry.record.license_serial;
            if serial > self.license_serial
                && serial > peer.license_asked
                && best.is_none_or(|(best_serial, _)| serial > best_serial)
            {
                best = Some((serial, peer_id));
            }
        }
        let Some((serial, peer_id)) = best else {
            return;
        };
        let peer_id = peer_id.to_owned();
        if let Some(peer) = self.peers.get_mut(&peer_id) {
            peer.license_asked = serial;
            peer.license_awaiting = true;
        }
        self.enqueue(Transmit {
            to: Destination::Peer(peer_id.clone()),
            kind: TransmitKind::Stream,
            frame: Frame::LicensePull { serial },
        });
        self.license_ask = Some(LicenseAsk {
            peer: peer_id,
            serial,
            at: now,
        });
    }

    /// A peer asks for the document of at least `serial`: sent when this node holds it, at
    /// most once per [`ANSWER_INTERVAL_MIN_MS`].
    pub(super) fn answer_license_pull(&mut self, now: u64, peer: &str, serial: u64) {
        let holds = self.license_serial > 0
            && self.license_serial >= serial
            && !self.license_armored.is_empty();
        if holds
            && self.allow(peer, now, ANSWER_INTERVAL_MIN_MS, |state| {
                &mut state.last_license_answer_at
            })
        {
            self.enqueue(Transmit {
                to: Destination::Peer(peer.to_owned()),
                kind: TransmitKind::Stream,
                frame: Frame::License {
                    armored: self.license_armored.clone(),
                },
            });
        }
    }

    /// A document from a peer: handed up when this node asked that peer for it, else
    /// dropped (counted).
    pub(super) fn handle_license(&mut self, peer: &str, armored: Vec<u8>) {
        let awaited = self
            .peers
            .get_mut(peer)
            .is_some_and(|state| std::mem::take(&mut state.license_awaiting));
        if awaited {
            if self
                .license_ask
                .as_ref()
                .is_some_and(|ask| ask.peer == peer)
            {
                self.license_ask = None;
            }
            self.push_event(Event::LicenseOffered {
                from: peer.to_owned(),
                armored,
            });
        } else {
            self.stats.licenses_unsolicited += 1;
        }
    }
}
