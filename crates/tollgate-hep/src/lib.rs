//! Sans-IO decoder (and the matching encoder) for HEPv3, the Homer capture protocol that
//! Kamailio (`siptrace`), OpenSIPS (`proto_hep`), FreeSWITCH, Asterisk (`res_hep`) and
//! drachtio emit to mirror the SIP messages they handle.
//!
//! ```text
//! packet:  "HEP3" | total length u16 (the whole packet, header included) | chunks
//! chunk:   vendor u16 | type u16 | length u16 (the whole chunk, its 6-byte header included) | body
//! ```
//!
//! All integers are big-endian. [`decode`] checks the framing exactly:
//! - the first four bytes are `HEP3` ([`HepError::BadMagic`]; a HEPv1/v2 packet, which is
//!   what Kamailio sends unless `hep_version` is 3, is [`HepError::UnsupportedVersion`]);
//! - the total length equals the datagram's length ([`HepError::LengthMismatch`]);
//! - every chunk length is at least 6 and stays inside the packet
//!   ([`HepError::BadChunkLength`]);
//! - the fixed-size bodies of the generic (vendor 0) chunks have their size, as
//!   heplify-server checks them: 1 byte for types 1, 2, 11; 2 bytes for 7, 8, 18; 4 bytes
//!   for 3, 4, 9, 10, 12; 16 bytes for 5, 6 ([`HepError::BadFixedSize`]);
//! - there is a payload chunk (type 15, [`HepError::MissingPayload`]); a packet whose only
//!   payload is gzip-compressed (type 16) is [`HepError::UnsupportedPayload`]: this crate
//!   has no decompressor.
//!
//! The first of these rules that a packet breaks, in this order, is its error: the header,
//! then the framing of every chunk, then the fixed sizes, then the payload.
//!
//! Chunks of other vendors (1 FreeSWITCH, 2 Kamailio, 3 OpenSIPS, 4 Asterisk, 5 Homer, …)
//! are skipped by their length, and so are generic chunks of types this crate does not
//! use. When a generic chunk appears twice, the last one wins (as in heplify-server).
//! Nothing checks that the address chunks agree with the IP family chunk.
//!
//! The decoded [`HepPacket`] borrows its strings and the payload from the datagram: decoding
//! never allocates and never panics. Every rejection has a low-cardinality label
//! ([`HepError::as_str`]) for the `reason` of a drop counter.
//!
//! [`encode`] and [`HepBuilder`] write packets the way Kamailio's `siptrace` does (chunks
//! 1, 2, 3 or 5, 4 or 6, 7, 8, 9, 10, 11, 12, then 14, 17, 18, 19 when present, payload 15
//! last); they are for tests, benchmarks and `tollgate loadgen --hep`. A decoded packet
//! re-encodes to a packet that decodes equal (the fuzz target `hep_decoder` checks it).
//!
//! HEP "LOG" packets (protocol type 100, Kamailio's `hlog()`) carry a text line chosen by
//! the proxy's script: [`HepPacket::log_events`] decodes their payload as the text event
//! protocol of `tollgate-events`, so a script can send `call-start <call-id> tag=<tag>`
//! lines through the HEP socket.
//!
//! ```
//! use std::net::SocketAddr;
//! use tollgate_hep::{HepBuilder, HepPacket, decode};
//!
//! let src: SocketAddr = "192.0.2.10:5060".parse().unwrap();
//! let dst: SocketAddr = "192.0.2.20:5060".parse().unwrap();
//! let sent = HepPacket::sip(src, dst, 1_700_000_000_123_456, 1, b"OPTIONS sip:x SIP/2.0\r\n\r\n");
//! let mut builder = HepBuilder::new();
//! let bytes = builder.build(&sent)?;
//! let received = decode(bytes)?;
//! assert_eq!(received, sent);
//! assert_eq!(received.capture_id, Some(1));
//! assert_eq!(received.timestamp_ms(), Some(1_700_000_000_123));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! What this crate deliberately lacks: sockets, clocks, any state, gzip decompression, HEPv1
//! and HEPv2, and the meaning of the payload (SIP parsing lives in `tollgate-sip`). Checking
//! the auth key against the configured one is the caller's decision;
//! [`HepPacket::auth_key_matches`] does the comparison.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

mod encode;

pub use encode::{EncodeError, HepBuilder, encode};

/// First four bytes of every HEPv3 packet.
pub const MAGIC: [u8; 4] = *b"HEP3";

/// Bytes before the first chunk: the magic and the total length.
pub const HEADER_LEN: usize = 6;

/// Bytes of a chunk header: vendor, type, length.
pub const CHUNK_HEADER_LEN: usize = 6;

/// Longest packet (the total length is a u16).
pub const PACKET_LEN_MAX: usize = u16::MAX as usize;

/// Longest chunk body (a chunk length is a u16 that includes the chunk header).
pub const CHUNK_BODY_LEN_MAX: usize = u16::MAX as usize - CHUNK_HEADER_LEN;

/// The vendor id of the generic chunks this crate reads; other vendors' chunks are skipped.
pub const VENDOR_GENERIC: u16 = 0;

/// Generic (vendor 0) chunk types.
pub mod chunk {
    /// IP family, 1 byte: [`FAMILY_IPV4`](crate::FAMILY_IPV4) or
    /// [`FAMILY_IPV6`](crate::FAMILY_IPV6).
    pub const IP_FAMILY: u16 = 1;
    /// IP protocol, 1 byte: 17 UDP, 6 TCP (Kamailio writes 22 for TLS and WebSocket).
    pub const IP_PROTO: u16 = 2;
    /// IPv4 source address, 4 bytes.
    pub const IPV4_SRC: u16 = 3;
    /// IPv4 destination address, 4 bytes.
    pub const IPV4_DST: u16 = 4;
    /// IPv6 source address, 16 bytes.
    pub const IPV6_SRC: u16 = 5;
    /// IPv6 destination address, 16 bytes.
    pub const IPV6_DST: u16 = 6;
    /// Source port, 2 bytes.
    pub const SRC_PORT: u16 = 7;
    /// Destination port, 2 bytes.
    pub const DST_PORT: u16 = 8;
    /// Capture time, unix seconds, 4 bytes.
    pub const TIMESTAMP_S: u16 = 9;
    /// Capture time, microseconds within the second, 4 bytes.
    pub const TIMESTAMP_US: u16 = 10;
    /// Protocol type of the payload, 1 byte: [`PROTO_TYPE_SIP`](crate::PROTO_TYPE_SIP),
    /// [`PROTO_TYPE_LOG`](crate::PROTO_TYPE_LOG), …
    pub const PROTO_TYPE: u16 = 11;
    /// Capture agent id, 4 bytes: tells the capturing nodes apart.
    pub const CAPTURE_ID: u16 = 12;
    /// Keep-alive timer (unused here).
    pub const KEEP_ALIVE: u16 = 13;
    /// Authentication key, a string.
    pub const AUTH_KEY: u16 = 14;
    /// The captured payload, uncompressed.
    pub const PAYLOAD: u16 = 15;
    /// The captured payload, gzip-compressed (not supported).
    pub const PAYLOAD_GZIP: u16 = 16;
    /// Correlation id, a string.
    pub const CORRELATION_ID: u16 = 17;
    /// VLAN id, 2 bytes.
    pub const VLAN: u16 = 18;
    /// Capture node name, a string.
    pub const NODE_NAME: u16 = 19;

    /// The body size a generic chunk type must have, if it is a fixed-size type.
    pub const fn fixed_size(kind: u16) -> Option<usize> {
        match kind {
            IP_FAMILY | IP_PROTO | PROTO_TYPE => Some(1),
            SRC_PORT | DST_PORT | VLAN => Some(2),
            IPV4_SRC | IPV4_DST | TIMESTAMP_S | TIMESTAMP_US | CAPTURE_ID => Some(4),
            IPV6_SRC | IPV6_DST => Some(16),
            _ => None,
        }
    }
}

/// IP family chunk value for IPv4 (`AF_INET`).
pub const FAMILY_IPV4: u8 = 2;
/// IP family chunk value for IPv6 (`AF_INET6` on Linux).
pub const FAMILY_IPV6: u8 = 10;
/// IP protocol chunk value for UDP.
pub const IP_PROTO_UDP: u8 = 17;
/// IP protocol chunk value for TCP.
pub const IP_PROTO_TCP: u8 = 6;
/// Protocol type of a SIP message payload.
pub const PROTO_TYPE_SIP: u8 = 1;
/// Protocol type of a log line payload (Kamailio `hlog()`).
pub const PROTO_TYPE_LOG: u8 = 100;

/// Why a datagram is not a HEPv3 packet this crate can use. Low cardinality: the label
/// ([`HepError::as_str`]) is a metric `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[repr(u8)]
pub enum HepError {
    #[error("not a hepv3 packet (no HEP3 magic)")]
    BadMagic = 0,
    #[error("hepv1 or hepv2 packet (set the sender to hep version 3)")]
    UnsupportedVersion = 1,
    #[error("total length differs from the datagram length")]
    LengthMismatch = 2,
    #[error("chunk length below 6 or past the end of the packet")]
    BadChunkLength = 3,
    #[error("fixed-size chunk with a body of the wrong size")]
    BadFixedSize = 4,
    #[error("no payload chunk")]
    MissingPayload = 5,
    #[error("gzip-compressed payload (not supported)")]
    UnsupportedPayload = 6,
}

impl HepError {
    pub const COUNT: usize = 7;
    pub const ALL: [HepError; HepError::COUNT] = [
        HepError::BadMagic,
        HepError::UnsupportedVersion,
        HepError::LengthMismatch,
        HepError::BadChunkLength,
        HepError::BadFixedSize,
        HepError::MissingPayload,
        HepError::UnsupportedPayload,
    ];

    /// Metric label (`reason="…"`).
    pub fn as_str(self) -> &'static str {
        match self {
            HepError::BadMagic => "bad_magic",
            HepError::UnsupportedVersion => "unsupported_version",
            HepError::LengthMismatch => "length_mismatch",
            HepError::BadChunkLength => "bad_chunk_length",
            HepError::BadFixedSize => "bad_fixed_size",
            HepError::MissingPayload => "missing_payload",
            HepError::UnsupportedPayload => "unsupported_payload",
        }
    }
}

/// One chunk, as framed: its vendor, type and body (the bytes after its 6-byte header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk<'a> {
    pub vendor: u16,
    pub kind: u16,
    pub body: &'a [u8],
}

/// Iterator over the chunks of a packet whose header was checked ([`chunks`]). Yields
/// [`HepError::BadChunkLength`] once for a chunk that cannot be framed, then ends. It does
/// not check fixed sizes ([`decode`] does, for the generic chunks).
#[derive(Debug, Clone)]
pub struct Chunks<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Chunks<'a> {
    type Item = Result<Chunk<'a>, HepError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let rest = self.rest;
        let framed = (|| {
            let header = rest.get(..CHUNK_HEADER_LEN)?;
            let len = usize::from(u16::from_be_bytes([header[4], header[5]]));
            if len < CHUNK_HEADER_LEN {
                return None;
            }
            let body = rest.get(CHUNK_HEADER_LEN..len)?;
            Some((
                Chunk {
                    vendor: u16::from_be_bytes([header[0], header[1]]),
                    kind: u16::from_be_bytes([header[2], header[3]]),
                    body,
                },
                &rest[len..],
            ))
        })();
        match framed {
            Some((chunk, rest)) => {
                self.rest = rest;
                Some(Ok(chunk))
            }
            None => {
                self.rest = &[];
                Some(Err(HepError::BadChunkLength))
            }
        }
    }
}

/// Checks a packet's header (magic, total length) and returns an iterator over its chunks.
pub fn chunks(packet: &[u8]) -> Result<Chunks<'_>, HepError> {
    if packet.get(..MAGIC.len()) != Some(&MAGIC[..]) {
        // HEPv1 and HEPv2 start with their version byte, a header length and an IP family.
        let old_version = matches!(packet, [1 | 2, _, FAMILY_IPV4 | FAMILY_IPV6, ..]);
        return Err(if old_version {
            HepError::UnsupportedVersion
        } else {
            HepError::BadMagic
        });
    }
    let Some(&[high, low]) = packet.get(MAGIC.len()..HEADER_LEN) else {
        return Err(HepError::LengthMismatch);
    };
    if usize::from(u16::from_be_bytes([high, low])) != packet.len() {
        return Err(HepError::LengthMismatch);
    }
    Ok(Chunks {
        rest: &packet[HEADER_LEN..],
    })
}

/// A decoded HEPv3 packet: the generic chunks this crate knows, borrowed from the datagram.
/// A field is `None` when its chunk was absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HepPacket<'a> {
    /// Chunk 1: [`FAMILY_IPV4`] or [`FAMILY_IPV6`] (not checked against the addresses).
    pub ip_family: Option<u8>,
    /// Chunk 2: [`IP_PROTO_UDP`], [`IP_PROTO_TCP`], …
    pub ip_proto: Option<u8>,
    /// Chunk 3 (IPv4) or 5 (IPv6).
    pub src_addr: Option<IpAddr>,
    /// Chunk 4 (IPv4) or 6 (IPv6).
    pub dst_addr: Option<IpAddr>,
    /// Chunk 7.
    pub src_port: Option<u16>,
    /// Chunk 8.
    pub dst_port: Option<u16>,
    /// Chunk 9: unix seconds.
    pub timestamp_s: Option<u32>,
    /// Chunk 10: microseconds within the second.
    pub timestamp_us: Option<u32>,
    /// Chunk 11: [`PROTO_TYPE_SIP`], [`PROTO_TYPE_LOG`], …
    pub proto_type: Option<u8>,
    /// Chunk 12: the capture agent (node) id.
    pub capture_id: Option<u32>,
    /// Chunk 14: the authentication key, as sent.
    pub auth_key: Option<&'a [u8]>,
    /// Chunk 17.
    pub correlation_id: Option<&'a [u8]>,
    /// Chunk 18.
    pub vlan: Option<u16>,
    /// Chunk 19.
    pub node_name: Option<&'a [u8]>,
    /// Chunk 15: the captured message (for SIP, the whole message as sent on the wire).
    pub payload: &'a [u8],
}

impl<'a> HepPacket<'a> {
    /// A SIP capture as Kamailio's `siptrace` builds it (chunks 1, 2, 3/5, 4/6, 7, 8, 9, 10,
    /// 11, 12, 15): UDP, protocol type SIP, capture time `timestamp_us` (unix microseconds).
    /// The IP family is taken from `src`.
    pub fn sip(
        src: SocketAddr,
        dst: SocketAddr,
        timestamp_us: u64,
        capture_id: u32,
        payload: &'a [u8],
    ) -> Self {
        let family = match src {
            SocketAddr::V4(_) => FAMILY_IPV4,
            SocketAddr::V6(_) => FAMILY_IPV6,
        };
        HepPacket {
            ip_family: Some(family),
            ip_proto: Some(IP_PROTO_UDP),
            src_addr: Some(src.ip()),
            dst_addr: Some(dst.ip()),
            src_port: Some(src.port()),
            dst_port: Some(dst.port()),
            timestamp_s: Some(u32::try_from(timestamp_us / 1_000_000).unwrap_or(u32::MAX)),
            timestamp_us: Some((timestamp_us % 1_000_000) as u32),
            proto_type: Some(PROTO_TYPE_SIP),
            capture_id: Some(capture_id),
            auth_key: None,
            correlation_id: None,
            vlan: None,
            node_name: None,
            payload,
        }
    }

    /// Whether the payload is a SIP message (protocol type 1).
    pub fn is_sip(&self) -> bool {
        self.proto_type == Some(PROTO_TYPE_SIP)
    }

    /// Whether the payload is a log line (protocol type 100).
    pub fn is_log(&self) -> bool {
        self.proto_type == Some(PROTO_TYPE_LOG)
    }

    /// The capture time in unix milliseconds, when the seconds chunk is present (missing
    /// microseconds count as 0).
    pub fn timestamp_ms(&self) -> Option<u64> {
        let s = u64::from(self.timestamp_s?);
        let us = u64::from(self.timestamp_us.unwrap_or(0));
        Some(s * 1000 + us / 1000)
    }

    /// The source as a socket address, when both its address and port chunks are present.
    pub fn src(&self) -> Option<SocketAddr> {
        Some(SocketAddr::new(self.src_addr?, self.src_port?))
    }

    /// The destination as a socket address, when both its address and port chunks are
    /// present.
    pub fn dst(&self) -> Option<SocketAddr> {
        Some(SocketAddr::new(self.dst_addr?, self.dst_port?))
    }

    /// Whether the packet's auth key equals `expected`. Trailing NUL bytes of the sent key
    /// are ignored (some agents send C strings with their terminator); the comparison does
    /// not stop at the first differing byte. A packet without a key matches nothing.
    pub fn auth_key_matches(&self, expected: &[u8]) -> bool {
        let Some(mut key) = self.auth_key else {
            return false;
        };
        while let [rest @ .., 0] = key {
            key = rest;
        }
        if key.len() != expected.len() {
            return false;
        }
        key.iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    /// For a LOG packet (protocol type 100), its payload decoded as the text event protocol
    /// (`tollgate_events::text::decode`: one event per line, malformed lines reported and
    /// skipped). `None` for any other packet.
    pub fn log_events(&self) -> Option<tollgate_events::Datagram<'a>> {
        self.is_log()
            .then(|| tollgate_events::text::decode(self.payload))
    }
}

/// Decodes one HEPv3 datagram (see the crate doc for the rules). Never panics, never
/// allocates.
pub fn decode(packet: &[u8]) -> Result<HepPacket<'_>, HepError> {
    let mut out = HepPacket::default();
    let mut payload = None;
    let mut gzip_payload = false;
    let mut bad_fixed_size = false;
    for chunk in chunks(packet)? {
        let chunk = chunk?;
        if chunk.vendor != VENDOR_GENERIC {
            continue;
        }
        let body = chunk.body;
        if let Some(size) = chunk::fixed_size(chunk.kind)
            && body.len() != size
        {
            // Framing errors further on take precedence: keep reading.
            bad_fixed_size = true;
            continue;
        }
        match chunk.kind {
            chunk::IP_FAMILY => out.ip_family = Some(body[0]),
            chunk::IP_PROTO => out.ip_proto = Some(body[0]),
            chunk::IPV4_SRC => out.src_addr = Some(IpAddr::V4(ipv4(body))),
            chunk::IPV4_DST => out.dst_addr = Some(IpAddr::V4(ipv4(body))),
            chunk::IPV6_SRC => out.src_addr = Some(IpAddr::V6(ipv6(body))),
            chunk::IPV6_DST => out.dst_addr = Some(IpAddr::V6(ipv6(body))),
            chunk::SRC_PORT => out.src_port = Some(be_u16(body)),
            chunk::DST_PORT => out.dst_port = Some(be_u16(body)),
            chunk::TIMESTAMP_S => out.timestamp_s = Some(be_u32(body)),
            chunk::TIMESTAMP_US => out.timestamp_us = Some(be_u32(body)),
            chunk::PROTO_TYPE => out.proto_type = Some(body[0]),
            chunk::CAPTURE_ID => out.capture_id = Some(be_u32(body)),
            chunk::AUTH_KEY => out.auth_key = Some(body),
            chunk::PAYLOAD => payload = Some(body),
            chunk::PAYLOAD_GZIP => gzip_payload = true,
            chunk::CORRELATION_ID => out.correlation_id = Some(body),
            chunk::VLAN => out.vlan = Some(be_u16(body)),
            chunk::NODE_NAME => out.node_name = Some(body),
            _ => {}
        }
    }
    if bad_fixed_size {
        return Err(HepError::BadFixedSize);
    }
    match payload {
        Some(payload) => {
            out.payload = payload;
            Ok(out)
        }
        None if gzip_payload => Err(HepError::UnsupportedPayload),
        None => Err(HepError::MissingPayload),
    }
}

// The helpers below are only called with bodies whose size `chunk::fixed_size` checked.

fn be_u16(body: &[u8]) -> u16 {
    u16::from_be_bytes([body[0], body[1]])
}

fn be_u32(body: &[u8]) -> u32 {
    u32::from_be_bytes([body[0], body[1], body[2], body[3]])
}

fn ipv4(body: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(body[0], body[1], body[2], body[3])
}

fn ipv6(body: &[u8]) -> Ipv6Addr {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(body);
    Ipv6Addr::from(octets)
}

#[cfg(test)]
mod tests;
