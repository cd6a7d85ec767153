//! Fuzzes the HEPv3 decoder (`tollgate_hep::decode`).
//!
//! Invariants, beyond "never panics":
//! - a packet that decodes frames exactly: the chunk lengths (header included) add up to
//!   the total length, which is the datagram's length;
//! - every generic fixed-size chunk of a decoded packet has its size;
//! - the payload and the string fields lie within the datagram (zero-copy);
//! - the encoder rebuilds a packet from the decoded fields that decodes equal;
//! - a packet whose chunks cannot be framed never decodes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_hep::{CHUNK_HEADER_LEN, HEADER_LEN, HepBuilder, HepError, VENDOR_GENERIC, chunk};

fn within(whole: &[u8], part: &[u8]) -> bool {
    let start = whole.as_ptr() as usize;
    let p = part.as_ptr() as usize;
    part.is_empty() || (p >= start && p + part.len() <= start + whole.len())
}

fuzz_target!(|data: &[u8]| {
    let decoded = tollgate_hep::decode(data);
    let framed = tollgate_hep::chunks(data).map(|chunks| chunks.collect::<Vec<_>>());

    // Framing errors always reject the packet.
    match &framed {
        Err(error) => assert_eq!(decoded, Err(*error)),
        Ok(items) if items.iter().any(Result::is_err) => {
            assert_eq!(items.iter().filter(|item| item.is_err()).count(), 1);
            assert!(
                items.last().is_some_and(Result::is_err),
                "an error ends the chunks"
            );
            assert_eq!(decoded, Err(HepError::BadChunkLength));
        }
        Ok(_) => {}
    }

    let Ok(packet) = decoded else {
        return;
    };
    let chunks: Vec<_> = framed
        .expect("a decoded packet has a good header")
        .into_iter()
        .map(|item| item.expect("a decoded packet frames"))
        .collect();
    let total: usize = chunks.iter().map(|c| CHUNK_HEADER_LEN + c.body.len()).sum();
    assert_eq!(HEADER_LEN + total, data.len());
    assert_eq!(
        usize::from(u16::from_be_bytes([data[4], data[5]])),
        data.len()
    );
    for c in &chunks {
        assert!(within(data, c.body));
        if c.vendor == VENDOR_GENERIC
            && let Some(size) = chunk::fixed_size(c.kind)
        {
            assert_eq!(c.body.len(), size);
        }
    }
    assert!(within(data, packet.payload));
    for field in [packet.auth_key, packet.correlation_id, packet.node_name]
        .into_iter()
        .flatten()
    {
        assert!(within(data, field));
    }

    // Re-encode what was decoded.
    let mut builder = HepBuilder::new();
    let again = builder
        .build(&packet)
        .expect("a decoded packet re-encodes (it fit before)");
    assert!(again.len() <= data.len());
    assert_eq!(tollgate_hep::decode(again), Ok(packet));

    // LOG payloads go to the text decoder.
    if let Some(datagram) = packet.log_events() {
        assert!(datagram.events.count() <= packet.payload.len());
    }
});
