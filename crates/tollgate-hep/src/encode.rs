//! The HEPv3 encoder: [`encode`] appends one packet, [`HepBuilder`] reuses its buffer.

use std::net::IpAddr;

use crate::{CHUNK_BODY_LEN_MAX, CHUNK_HEADER_LEN, HEADER_LEN, HepPacket, MAGIC, PACKET_LEN_MAX};
use crate::{VENDOR_GENERIC, chunk};

/// Why a packet could not be encoded. Decoding never returns this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A string or payload chunk body is longer than a chunk can hold.
    #[error("chunk {kind} body is longer than {CHUNK_BODY_LEN_MAX} bytes ({len})")]
    ChunkTooLong { kind: u16, len: usize },
    /// The whole packet is longer than the u16 total length can say.
    #[error("packet is longer than {PACKET_LEN_MAX} bytes ({len})")]
    PacketTooLong { len: usize },
}

/// Appends `packet` to `out` as one HEPv3 packet: chunks 1, 2, 3 or 5, 4 or 6, 7, 8, 9, 10,
/// 11, 12, 14, 17, 18, 19 (those present, in this order) and the payload (15) last. On
/// error `out` is left as it was.
pub fn encode(packet: &HepPacket<'_>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    let result = write(packet, out, start);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn write(packet: &HepPacket<'_>, out: &mut Vec<u8>, start: usize) -> Result<(), EncodeError> {
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[0, 0]); // total length, patched below
    if let Some(family) = packet.ip_family {
        put(out, chunk::IP_FAMILY, &[family])?;
    }
    if let Some(proto) = packet.ip_proto {
        put(out, chunk::IP_PROTO, &[proto])?;
    }
    match packet.src_addr {
        Some(IpAddr::V4(addr)) => put(out, chunk::IPV4_SRC, &addr.octets())?,
        Some(IpAddr::V6(addr)) => put(out, chunk::IPV6_SRC, &addr.octets())?,
        None => {}
    }
    match packet.dst_addr {
        Some(IpAddr::V4(addr)) => put(out, chunk::IPV4_DST, &addr.octets())?,
        Some(IpAddr::V6(addr)) => put(out, chunk::IPV6_DST, &addr.octets())?,
        None => {}
    }
    if let Some(port) = packet.src_port {
        put(out, chunk::SRC_PORT, &port.to_be_bytes())?;
    }
    if let Some(port) = packet.dst_port {
        put(out, chunk::DST_PORT, &port.to_be_bytes())?;
    }
    if let Some(s) = packet.timestamp_s {
        put(out, chunk::TIMESTAMP_S, &s.to_be_bytes())?;
    }
    if let Some(us) = packet.timestamp_us {
        put(out, chunk::TIMESTAMP_US, &us.to_be_bytes())?;
    }
    if let Some(proto_type) = packet.proto_type {
        put(out, chunk::PROTO_TYPE, &[proto_type])?;
    }
    if let Some(id) = packet.capture_id {
        put(out, chunk::CAPTURE_ID, &id.to_be_bytes())?;
    }
    if let Some(key) = packet.auth_key {
        put(out, chunk::AUTH_KEY, key)?;
    }
    if let Some(id) = packet.correlation_id {
        put(out, chunk::CORRELATION_ID, id)?;
    }
    if let Some(vlan) = packet.vlan {
        put(out, chunk::VLAN, &vlan.to_be_bytes())?;
    }
    if let Some(name) = packet.node_name {
        put(out, chunk::NODE_NAME, name)?;
    }
    put(out, chunk::PAYLOAD, packet.payload)?;
    let len = out.len() - start;
    let total = u16::try_from(len).map_err(|_| EncodeError::PacketTooLong { len })?;
    out[start + MAGIC.len()..start + HEADER_LEN].copy_from_slice(&total.to_be_bytes());
    Ok(())
}

fn put(out: &mut Vec<u8>, kind: u16, body: &[u8]) -> Result<(), EncodeError> {
    let len =
        u16::try_from(CHUNK_HEADER_LEN + body.len()).map_err(|_| EncodeError::ChunkTooLong {
            kind,
            len: body.len(),
        })?;
    out.extend_from_slice(&VENDOR_GENERIC.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    Ok(())
}

/// Builds packets into one reusable buffer: no allocation per packet once the buffer has
/// grown to the largest packet.
#[derive(Debug, Default, Clone)]
pub struct HepBuilder {
    buf: Vec<u8>,
}

impl HepBuilder {
    pub fn new() -> Self {
        HepBuilder::default()
    }

    /// Encodes `packet` (see [`encode`]) and returns its bytes, valid until the next call.
    pub fn build(&mut self, packet: &HepPacket<'_>) -> Result<&[u8], EncodeError> {
        self.buf.clear();
        encode(packet, &mut self.buf)?;
        Ok(&self.buf)
    }
}
