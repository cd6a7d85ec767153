//! `--format hep`: model actions as the SIP traffic a stateful proxy would mirror to a HEP
//! collector, wrapped in HEPv3 packets (the encoder of `tollgate-hep`).
//!
//! The scene: a caller (UAC, `198.51.100.1`), the proxy that mirrors (`198.51.100.2`) and a
//! callee (UAS, `198.51.100.3`), all on port 5060 (TEST-NET-2 addresses, never routed). A
//! stateful proxy mirrors every message it relays twice, as received and as sent, so every
//! dialog message below becomes two packets with the same payload:
//!
//! | action | SIP messages (each mirrored twice) | packets | decides |
//! | --- | --- | ---: | --- |
//! | `CallStart` | INVITE, 100 Trying, 180 Ringing, 200 OK (with SDP), ACK | 10 | the 200 |
//! | `CallStop` | BYE, 200 OK | 4 | the BYE |
//! | `CallRefresh` | UPDATE, 200 OK | 4 | the UPDATE |
//! | `Register` | REGISTER (one contact changed), 200 OK listing **every** current contact of the AoR | 2 (the registrar answers itself: no second copy) | the 200 |
//! | `Subscribers` | a HEP LOG packet (protocol type 100) with the text line `subscribers N` | 1 | it |
//!
//! An emergency call's Request-URI and To URI are `urn:service:sos`, which the collector
//! flags whatever its `emergency_numbers`. Call-ID and From-tag are the text format's
//! (`ids::Names`), so a HEP run and a text run with the same seed name the same calls.
//!
//! Registrations need state: a 200 OK to REGISTER lists the AoR's whole binding set and the
//! collector replaces its set with it, so this writer keeps each AoR's contact set (a `u16`
//! bit mask, at most [`CONTACTS_PER_AOR_MAX`](crate::CONTACTS_PER_AOR_MAX) contacts) and
//! lists it after applying the action. Every REGISTER of an AoR carries the same Call-ID
//! and a CSeq that grows across the run, as a real UA's do.
//!
//! **The books:** an action counts (in the report's `expected_*`) when its deciding packet
//! was handed to the kernel. For a registration the ledger takes the listed set, so a 200
//! that could not be sent is repaired by the AoR's next one, as it is at the collector.

use std::net::SocketAddr;
use std::ops::Range;

use tollgate_hep::{HepPacket, PROTO_TYPE_LOG, PROTO_TYPE_SIP};

use crate::ids::{Names, mix, push_decimal, push_hex};
use crate::model::Action;

/// The caller, the mirroring proxy, the callee.
const UAC: &str = "198.51.100.1:5060";
const PROXY: &str = "198.51.100.2:5060";
const UAS: &str = "198.51.100.3:5060";
/// Where LOG packets claim to go (the collector's default address).
const COLLECTOR: &str = "127.0.0.1:9060";

/// A small SDP offer/answer, so packets have a realistic size (Kamailio's INVITE capture
/// was 611 bytes).
const SDP: &[u8] = b"v=0\r\no=- 3871 3871 IN IP4 198.51.100.1\r\ns=-\r\nc=IN IP4 198.51.100.1\r\n\
t=0 0\r\nm=audio 40000 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n";

/// The packets of one action, in one buffer.
#[derive(Debug)]
pub(crate) struct HepWriter {
    names: Names,
    capture_id: u32,
    auth_key: Option<Vec<u8>>,
    reg_expires_s: u32,
    /// Contact set of each AoR (bit `c`: contact `c`).
    contacts: Vec<u16>,
    /// CSeq of the next REGISTER or in-dialog UPDATE: grows across the run.
    cseq_next: u32,
    uac: SocketAddr,
    proxy: SocketAddr,
    uas: SocketAddr,
    collector: SocketAddr,
    /// The encoded packets of the last [`HepWriter::build`], back to back.
    buf: Vec<u8>,
    packets: Vec<Range<usize>>,
    /// Index range in `packets` of the packets that decide the action.
    deciding: Range<usize>,
    sip: Vec<u8>,
    call_id: Vec<u8>,
    tag: Vec<u8>,
    aor: Vec<u8>,
    contact: Vec<u8>,
}

/// What the ledger should take from a sent action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Books {
    /// Apply the action itself.
    Action,
    /// A registration: the AoR's contact set is now this mask.
    ContactSet { aor: u32, mask: u16 },
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a literal socket address")
}

impl HepWriter {
    pub fn new(
        names: Names,
        capture_id: u32,
        auth_key: Option<Vec<u8>>,
        registrations: u32,
        reg_expires_s: u32,
    ) -> Self {
        HepWriter {
            names,
            capture_id,
            auth_key,
            reg_expires_s,
            contacts: vec![0; registrations as usize],
            cseq_next: 3,
            uac: addr(UAC),
            proxy: addr(PROXY),
            uas: addr(UAS),
            collector: addr(COLLECTOR),
            buf: Vec::with_capacity(16 * 1024),
            packets: Vec::with_capacity(10),
            deciding: 0..0,
            sip: Vec::with_capacity(2048),
            call_id: Vec::new(),
            tag: Vec::new(),
            aor: Vec::new(),
            contact: Vec::new(),
        }
    }

    /// The packets of the last [`build`](Self::build).
    pub fn packets(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.packets.iter().map(|r| &self.buf[r.clone()])
    }

    /// Whether packet `i` of the last build decides its action.
    pub fn is_deciding(&self, i: usize) -> bool {
        self.deciding.contains(&i)
    }

    /// Encodes `action`'s packets, captured at `timestamp_us` (unix microseconds), and says
    /// what the books take from it once a deciding packet is sent.
    pub fn build(&mut self, action: Action, timestamp_us: u64) -> Books {
        self.buf.clear();
        self.packets.clear();
        match action {
            Action::CallStart { call, emergency } => {
                self.call_names(call);
                for kind in [
                    Msg::Invite,
                    Msg::Trying,
                    Msg::Ringing,
                    Msg::InviteOk,
                    Msg::Ack,
                ] {
                    if kind == Msg::InviteOk {
                        self.deciding = self.packets.len()..self.packets.len() + 2;
                    }
                    self.dialog_message(kind, emergency, call, timestamp_us);
                }
                Books::Action
            }
            Action::CallStop { call } => {
                self.call_names(call);
                self.deciding = 0..2;
                self.dialog_message(Msg::Bye, false, call, timestamp_us);
                self.dialog_message(Msg::ByeOk, false, call, timestamp_us);
                Books::Action
            }
            Action::CallRefresh { call } => {
                self.call_names(call);
                self.deciding = 0..2;
                let cseq = self.next_cseq();
                self.dialog_message(Msg::Update(cseq), false, call, timestamp_us);
                self.dialog_message(Msg::UpdateOk(cseq), false, call, timestamp_us);
                Books::Action
            }
            Action::Register {
                aor,
                contact,
                expires_s,
            } => {
                let mask = &mut self.contacts[aor as usize];
                if expires_s > 0 {
                    *mask |= 1 << contact;
                } else {
                    *mask &= !(1 << contact);
                }
                let mask = *mask;
                self.deciding = 1..2;
                self.register(aor, contact, expires_s, mask, timestamp_us);
                Books::ContactSet { aor, mask }
            }
            Action::Subscribers { count } => {
                self.sip.clear();
                self.sip.extend_from_slice(b"subscribers ");
                push_decimal(&mut self.sip, count);
                self.sip.push(b'\n');
                self.deciding = 0..1;
                self.push_packet(self.proxy, self.collector, timestamp_us, PROTO_TYPE_LOG);
                Books::Action
            }
        }
    }

    fn next_cseq(&mut self) -> u32 {
        let cseq = self.cseq_next;
        self.cseq_next = self.cseq_next.wrapping_add(1).max(3);
        cseq
    }

    fn call_names(&mut self, call: u64) {
        self.names.call_id(call, &mut self.call_id);
        self.names.tag(call, &mut self.tag);
    }

    /// Appends one packet whose payload is `self.sip`.
    fn push_packet(&mut self, src: SocketAddr, dst: SocketAddr, timestamp_us: u64, proto: u8) {
        let mut packet = HepPacket::sip(src, dst, timestamp_us, self.capture_id, &self.sip);
        packet.proto_type = Some(proto);
        packet.auth_key = self.auth_key.as_deref();
        let start = self.buf.len();
        tollgate_hep::encode(&packet, &mut self.buf)
            .expect("a generated packet is far below the HEP size limit");
        self.packets.push(start..self.buf.len());
    }

    /// Writes one dialog message into `self.sip` and appends its two mirrored copies.
    fn dialog_message(&mut self, kind: Msg, emergency: bool, call: u64, timestamp_us: u64) {
        let s = &mut self.sip;
        s.clear();
        let callee: &[u8] = if emergency {
            b"urn:service:sos"
        } else {
            b"sip:callee@loadgen.invalid"
        };
        let (start, cseq, method): (&[u8], u32, &[u8]) = match kind {
            Msg::Invite => (b"INVITE ", 1, b"INVITE"),
            Msg::Ack => (b"ACK ", 1, b"ACK"),
            Msg::Bye => (b"BYE ", 2, b"BYE"),
            Msg::Update(cseq) => (b"UPDATE ", cseq, b"UPDATE"),
            Msg::Trying => (b"SIP/2.0 100 Trying", 1, b"INVITE"),
            Msg::Ringing => (b"SIP/2.0 180 Ringing", 1, b"INVITE"),
            Msg::InviteOk => (b"SIP/2.0 200 OK", 1, b"INVITE"),
            Msg::ByeOk => (b"SIP/2.0 200 OK", 2, b"BYE"),
            Msg::UpdateOk(cseq) => (b"SIP/2.0 200 OK", cseq, b"UPDATE"),
        };
        let request = kind.is_request();
        s.extend_from_slice(start);
        if request {
            match kind {
                Msg::Invite if emergency => s.extend_from_slice(callee),
                Msg::Invite => s.extend_from_slice(b"sip:callee@loadgen.invalid"),
                _ => s.extend_from_slice(b"sip:callee@198.51.100.3:5060"),
            }
            s.extend_from_slice(b" SIP/2.0");
        }
        s.extend_from_slice(b"\r\nVia: SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bK");
        s.extend_from_slice(&self.tag);
        s.push(b'.');
        push_decimal(s, u64::from(cseq));
        s.extend_from_slice(b".");
        s.extend_from_slice(method);
        s.extend_from_slice(
            b"\r\nMax-Forwards: 70\r\nFrom: \"Caller\" <sip:caller@loadgen.invalid>;tag=",
        );
        s.extend_from_slice(&self.tag);
        s.extend_from_slice(b"\r\nTo: <");
        s.extend_from_slice(callee);
        s.push(b'>');
        if kind != Msg::Invite && kind != Msg::Trying {
            s.extend_from_slice(b";tag=");
            push_hex(s, mix(call ^ 0x5a5a), 8);
        }
        s.extend_from_slice(b"\r\nCall-ID: ");
        s.extend_from_slice(&self.call_id);
        s.extend_from_slice(b"\r\nCSeq: ");
        push_decimal(s, u64::from(cseq));
        s.push(b' ');
        s.extend_from_slice(method);
        let with_sdp = matches!(kind, Msg::Invite | Msg::InviteOk);
        if matches!(kind, Msg::Invite | Msg::InviteOk | Msg::Update(_)) {
            s.extend_from_slice(if request {
                b"\r\nContact: <sip:caller@198.51.100.1:5060>"
            } else {
                b"\r\nContact: <sip:callee@198.51.100.3:5060>"
            });
        }
        if with_sdp {
            s.extend_from_slice(b"\r\nContent-Type: application/sdp\r\nContent-Length: ");
            push_decimal(s, SDP.len() as u64);
            s.extend_from_slice(b"\r\n\r\n");
            s.extend_from_slice(SDP);
        } else {
            s.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
        }
        // Requests travel caller → proxy → callee, responses the other way.
        let hops = if request {
            [(self.uac, self.proxy), (self.proxy, self.uas)]
        } else {
            [(self.uas, self.proxy), (self.proxy, self.uac)]
        };
        for (src, dst) in hops {
            self.push_packet(src, dst, timestamp_us, PROTO_TYPE_SIP);
        }
    }

    /// A REGISTER for the changed contact and the registrar's 200 listing the whole set.
    fn register(&mut self, aor: u32, contact: u32, expires_s: u32, mask: u16, timestamp_us: u64) {
        self.names.aor(aor, &mut self.aor);
        let cseq = self.next_cseq();
        for response in [false, true] {
            let s = &mut self.sip;
            s.clear();
            s.extend_from_slice(if response {
                b"SIP/2.0 200 OK\r\n".as_slice()
            } else {
                b"REGISTER sip:loadgen.invalid SIP/2.0\r\n"
            });
            s.extend_from_slice(b"Via: SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKr");
            push_decimal(s, u64::from(cseq));
            s.extend_from_slice(b"\r\nFrom: <");
            s.extend_from_slice(&self.aor);
            s.extend_from_slice(b">;tag=r");
            push_decimal(s, u64::from(aor));
            s.extend_from_slice(b"\r\nTo: <");
            s.extend_from_slice(&self.aor);
            s.push(b'>');
            if response {
                s.extend_from_slice(b";tag=reg");
            }
            // The AoR's Call-ID: a call-id of the run, marked.
            s.extend_from_slice(b"\r\nCall-ID: reg-");
            self.names.call_id(u64::from(aor), &mut self.call_id);
            s.extend_from_slice(&self.call_id);
            s.extend_from_slice(b"\r\nCSeq: ");
            push_decimal(s, u64::from(cseq));
            s.extend_from_slice(b" REGISTER\r\n");
            let listed = if response { mask } else { 1u16 << contact };
            for c in (0..16).filter(|c| listed & (1 << c) != 0) {
                self.names.contact(aor, c, &mut self.contact);
                let s = &mut self.sip;
                s.extend_from_slice(b"Contact: <");
                s.extend_from_slice(&self.contact);
                s.extend_from_slice(b">;expires=");
                let expires = if !response && c == contact {
                    expires_s
                } else {
                    self.reg_expires_s
                };
                push_decimal(s, u64::from(expires));
                s.extend_from_slice(b"\r\n");
            }
            self.sip.extend_from_slice(b"Content-Length: 0\r\n\r\n");
            let (src, dst) = if response {
                (self.proxy, self.uac)
            } else {
                (self.uac, self.proxy)
            };
            self.push_packet(src, dst, timestamp_us, PROTO_TYPE_SIP);
        }
    }
}

/// The dialog messages of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Msg {
    Invite,
    Trying,
    Ringing,
    InviteOk,
    Ack,
    Bye,
    ByeOk,
    Update(u32),
    UpdateOk(u32),
}

impl Msg {
    fn is_request(self) -> bool {
        matches!(self, Msg::Invite | Msg::Ack | Msg::Bye | Msg::Update(_))
    }
}

#[cfg(test)]
mod tests;
