//! The binary batch format. (Being written: see docs/protocol.md.)

use crate::{Datagram, Event, Malformed};

/// First bytes of every binary datagram. The first byte (0xFF) never starts valid UTF-8,
/// so it can never be the start of a text datagram.
pub const MAGIC: [u8; 3] = [0xFF, b'T', b'G'];

/// Iterator over the records of a binary datagram.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Event<'a>, Malformed>;
    fn next(&mut self) -> Option<Self::Item> {
        let _ = self.rest;
        unimplemented!("binary decoder")
    }
}

/// Decodes a binary datagram.
pub fn decode(datagram: &[u8]) -> Datagram<'_> {
    Datagram { seq: None, events: crate::Events::Binary(Records { rest: datagram }) }
}
