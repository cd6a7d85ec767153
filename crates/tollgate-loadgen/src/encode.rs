//! Turns model actions into datagrams, with the encoders of `tollgate-events` (this crate
//! has no wire format of its own).

use tollgate_events::{CallRef, EncodeError, Event, binary, text};

use crate::args::Format;
use crate::ids::Names;
use crate::model::Action;

/// Result of [`Builder::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Added; the datagram may take more.
    Added,
    /// Added, and the datagram now holds `--batch` events: send it.
    AddedFull,
    /// Not added: the datagram has no room left for it. Send it, then push again.
    NoRoom,
}

/// One datagram being built, plus the actions it holds (applied to the ledger once the
/// datagram is sent). Reused across datagrams.
#[derive(Debug)]
pub(crate) struct Builder {
    names: Names,
    encoder: Encoder,
    /// Sender id and next sequence number, when datagrams carry a sequence header.
    seq: Option<(Vec<u8>, u64)>,
    batch: usize,
    actions: Vec<Action>,
    call_id: Vec<u8>,
    tag: Vec<u8>,
}

#[derive(Debug)]
enum Encoder {
    Text(text::Encoder),
    Binary(binary::Encoder),
}

/// First sequence number of a run.
pub(crate) const SEQ_FIRST: u64 = 1;

impl Builder {
    pub fn new(
        format: Format,
        names: Names,
        sender: &str,
        seq: bool,
        batch: usize,
        datagram_bytes_max: usize,
    ) -> Self {
        assert!(batch > 0);
        let encoder = match format {
            // HEP actions go through `hep::HepWriter`; this builder then stays empty.
            Format::Text | Format::Hep => Encoder::Text(text::Encoder::new(datagram_bytes_max)),
            Format::Binary => Encoder::Binary(binary::Encoder::new(datagram_bytes_max)),
        };
        Builder {
            names,
            encoder,
            seq: seq.then(|| (sender.as_bytes().to_vec(), SEQ_FIRST)),
            batch,
            actions: Vec::with_capacity(batch),
            call_id: Vec::new(),
            tag: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    pub fn actions(&self) -> &[Action] {
        &self.actions
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.encoder {
            Encoder::Text(e) => e.as_bytes(),
            Encoder::Binary(e) => e.as_bytes(),
        }
    }

    /// Forgets the datagram (sent or dropped); the next push starts a new one.
    pub fn clear(&mut self) {
        self.actions.clear();
    }

    pub fn push(&mut self, action: Action) -> Pushed {
        debug_assert!(self.actions.len() < self.batch);
        if self.actions.is_empty() {
            self.start_datagram();
        }
        let event = to_event(&self.names, &action, &mut self.call_id, &mut self.tag);
        let result = match &mut self.encoder {
            Encoder::Text(e) => e.push(&event),
            Encoder::Binary(e) => e.push(&event),
        };
        match result {
            Ok(()) => {}
            Err(EncodeError::BatchFull) => {
                assert!(!self.actions.is_empty(), "one event fits an empty datagram");
                return Pushed::NoRoom;
            }
            Err(error) => panic!("generated an unencodable event {event:?}: {error}"),
        }
        self.actions.push(action);
        if self.actions.len() >= self.batch {
            Pushed::AddedFull
        } else {
            Pushed::Added
        }
    }

    fn start_datagram(&mut self) {
        let seq = self.seq.as_mut().map(|(sender, n)| {
            let this = *n;
            *n += 1;
            (&sender[..], this)
        });
        match &mut self.encoder {
            Encoder::Text(e) => e
                .reset(seq)
                .expect("the sender id was validated and the seq line fits the minimum datagram"),
            Encoder::Binary(e) => e.reset(seq.map(|(sender, n)| (binary_sender(sender), n))),
        }
    }
}

/// The 8 sender bytes of a binary sequence header for a sender id: the id itself,
/// zero-padded, when it has at most 8 bytes, else its 64-bit FNV-1a hash, big-endian.
pub fn binary_sender(sender_id: &[u8]) -> [u8; 8] {
    if sender_id.len() <= 8 {
        let mut out = [0; 8];
        out[..sender_id.len()].copy_from_slice(sender_id);
        return out;
    }
    let hash = sender_id.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    hash.to_be_bytes()
}

/// The wire event of an action; names are written into the caller's buffers.
fn to_event<'b>(
    names: &Names,
    action: &Action,
    call_id: &'b mut Vec<u8>,
    tag: &'b mut Vec<u8>,
) -> Event<'b> {
    let mut call = |n: u64| {
        names.call_id(n, call_id);
        names.tag(n, tag);
    };
    match *action {
        Action::CallStart { call: n, emergency } => {
            call(n);
            Event::CallStart {
                call: CallRef {
                    call_id,
                    from_tag: Some(tag),
                },
                emergency,
            }
        }
        Action::CallStop { call: n } => {
            call(n);
            Event::CallStop {
                call: CallRef {
                    call_id,
                    from_tag: Some(tag),
                },
            }
        }
        Action::CallRefresh { call: n } => {
            call(n);
            Event::CallRefresh {
                call: CallRef {
                    call_id,
                    from_tag: Some(tag),
                },
            }
        }
        Action::Register {
            aor,
            contact,
            expires_s,
        } => {
            names.aor(aor, call_id);
            names.contact(aor, contact, tag);
            Event::Register {
                aor: call_id,
                contact: tag,
                expires_s,
            }
        }
        Action::Subscribers { count } => Event::Subscribers { count },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_of(builder: &Builder) -> String {
        String::from_utf8(builder.bytes().to_vec()).unwrap()
    }

    #[test]
    fn text_datagrams_carry_seq_and_lines() {
        let names = Names::new("lg", 1);
        let mut b = Builder::new(Format::Text, names, "lg", true, 3, 1400);
        assert_eq!(
            b.push(Action::CallStart {
                call: 0,
                emergency: true
            }),
            Pushed::Added
        );
        assert_eq!(
            b.push(Action::Register {
                aor: 2,
                contact: 1,
                expires_s: 60
            }),
            Pushed::Added
        );
        assert_eq!(b.push(Action::Subscribers { count: 10 }), Pushed::AddedFull);
        let tag = {
            let mut t = Vec::new();
            Names::new("lg", 1).tag(0, &mut t);
            String::from_utf8(t).unwrap()
        };
        assert_eq!(
            text_of(&b),
            format!(
                "seq lg 1\ncall-start lg0-0000000000000001@lg tag={tag} emergency\n\
                 reg sip:u2-0000000000000001@lg.invalid sip:u2@h1.invalid:5060 60\n\
                 subscribers 10\n"
            )
        );
        b.clear();
        b.push(Action::CallStop { call: 0 });
        assert!(text_of(&b).starts_with("seq lg 2\ncall-stop lg0-"));
    }

    #[test]
    fn binary_datagrams_decode_to_the_same_events() {
        let actions = [
            Action::CallStart {
                call: 7,
                emergency: true,
            },
            Action::CallRefresh { call: 7 },
            Action::CallStop { call: 7 },
            Action::Register {
                aor: 1,
                contact: 0,
                expires_s: 0,
            },
            Action::Subscribers { count: 3 },
        ];
        let mut text_b = Builder::new(Format::Text, Names::new("s", 9), "s", true, 8, 1400);
        let mut bin_b = Builder::new(Format::Binary, Names::new("s", 9), "s", true, 8, 1400);
        for action in actions {
            assert_eq!(text_b.push(action), Pushed::Added);
            assert_eq!(bin_b.push(action), Pushed::Added);
        }
        let text_d = tollgate_events::decode(text_b.bytes());
        let bin_d = tollgate_events::decode(bin_b.bytes());
        assert_eq!(text_d.seq.unwrap().sender, b"s");
        assert_eq!(bin_d.seq.unwrap().sender, b"s\0\0\0\0\0\0\0");
        assert_eq!(bin_d.seq.unwrap().n, SEQ_FIRST);
        let text_events: Vec<_> = text_d.events.collect();
        let bin_events: Vec<_> = bin_d.events.collect();
        assert_eq!(text_events.len(), actions.len());
        assert_eq!(text_events, bin_events);
    }

    #[test]
    fn binary_sender_pads_short_ids_and_hashes_long_ones() {
        assert_eq!(&binary_sender(b"lg-1"), b"lg-1\0\0\0\0");
        assert_eq!(&binary_sender(b"12345678"), b"12345678");
        assert_ne!(binary_sender(b"loadgen-123"), binary_sender(b"loadgen-124"));
    }

    #[test]
    fn a_full_datagram_refuses_the_next_event() {
        for format in [Format::Text, Format::Binary] {
            let mut b = Builder::new(format, Names::new("lg", 1), "lg", false, 1000, 512);
            let mut added = 0;
            while b.push(Action::CallStop { call: added }) != Pushed::NoRoom {
                added += 1;
            }
            assert_eq!(b.actions().len() as u64, added);
            assert!(b.bytes().len() <= 512 && added > 5, "{format:?}");
            let datagram = tollgate_events::decode(b.bytes());
            assert!(datagram.seq.is_none());
            let events: Vec<_> = datagram.events.collect();
            assert_eq!(events.len() as u64, added);
            assert!(events.iter().all(Result::is_ok));
        }
    }
}
