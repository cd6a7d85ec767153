//! The text protocol of MISSION.md. (Being written: see docs/protocol.md.)

use crate::{Datagram, Event, Malformed};

/// Iterator over the event lines of a text datagram.
#[derive(Debug, Clone)]
pub struct Lines<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Lines<'a> {
    type Item = Result<Event<'a>, Malformed>;
    fn next(&mut self) -> Option<Self::Item> {
        let _ = self.rest;
        unimplemented!("text decoder")
    }
}

/// Decodes a text datagram.
pub fn decode(datagram: &[u8]) -> Datagram<'_> {
    Datagram { seq: None, events: crate::Events::Text(Lines { rest: datagram }) }
}
