//! Helpers shared by the unit tests of both formats: a readable rendering of decoded
//! datagrams (for `check(input, expected)` tests) and proptest strategies for valid events.

use proptest::prelude::*;

use crate::{CallRef, Datagram, Event, SyncLine};

/// Renders a decoded datagram as one string per item: `seq <sender> <n>` first if present,
/// then each event (`call-start <id> tag=<t> emergency`, …) or `!<reason label>`. Bytes
/// outside printable ASCII are escaped.
pub fn render(datagram: Datagram<'_>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(seq) = datagram.seq {
        out.push(format!("seq {} {}", esc(seq.sender), seq.n));
    }
    for item in datagram.events {
        out.push(match item {
            Ok(event) => render_event(&event),
            Err(reason) => format!("!{}", reason.as_str()),
        });
    }
    out
}

pub fn render_event(event: &Event<'_>) -> String {
    let call = |call: CallRef<'_>| match call.from_tag {
        Some(tag) => format!("{} tag={}", esc(call.call_id), esc(tag)),
        None => esc(call.call_id),
    };
    let emergency = |e: bool| if e { " emergency" } else { "" };
    match *event {
        Event::CallStart {
            call: c,
            emergency: e,
        } => {
            format!("call-start {}{}", call(c), emergency(e))
        }
        Event::CallStop { call: c } => format!("call-stop {}", call(c)),
        Event::CallRefresh { call: c } => format!("call-refresh {}", call(c)),
        Event::Register {
            aor,
            contact,
            expires_s,
        } => {
            format!("reg {} {} {expires_s}", esc(aor), esc(contact))
        }
        Event::Subscribers { count } => format!("subscribers {count}"),
        Event::Admit {
            call_id,
            emergency: e,
        } => format!("admit {}{}", esc(call_id), emergency(e)),
        Event::Sync(SyncLine::Begin { sender, epoch }) => {
            format!("sync-begin {} {epoch}", esc(sender))
        }
        Event::Sync(SyncLine::Call {
            call: c,
            emergency: e,
        }) => format!("sync-call {}{}", call(c), emergency(e)),
        Event::Sync(SyncLine::Reg {
            aor,
            contact,
            expires_s,
        }) => format!("sync-reg {} {} {expires_s}", esc(aor), esc(contact)),
        Event::Sync(SyncLine::End {
            sender,
            epoch,
            calls,
            contacts,
        }) => format!("sync-end {} {epoch} {calls} {contacts}", esc(sender)),
    }
}

fn esc(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// An [`Event`] that owns its fields, for strategies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedEvent {
    CallStart {
        call_id: Vec<u8>,
        from_tag: Option<Vec<u8>>,
        emergency: bool,
    },
    CallStop {
        call_id: Vec<u8>,
        from_tag: Option<Vec<u8>>,
    },
    CallRefresh {
        call_id: Vec<u8>,
        from_tag: Option<Vec<u8>>,
    },
    Register {
        aor: Vec<u8>,
        contact: Vec<u8>,
        expires_s: u32,
    },
    Subscribers {
        count: u64,
    },
    Admit {
        call_id: Vec<u8>,
        emergency: bool,
    },
}

impl OwnedEvent {
    pub fn event(&self) -> Event<'_> {
        fn call<'a>(call_id: &'a [u8], from_tag: &'a Option<Vec<u8>>) -> CallRef<'a> {
            CallRef {
                call_id,
                from_tag: from_tag.as_deref(),
            }
        }
        match self {
            OwnedEvent::CallStart {
                call_id,
                from_tag,
                emergency,
            } => Event::CallStart {
                call: call(call_id, from_tag),
                emergency: *emergency,
            },
            OwnedEvent::CallStop { call_id, from_tag } => Event::CallStop {
                call: call(call_id, from_tag),
            },
            OwnedEvent::CallRefresh { call_id, from_tag } => Event::CallRefresh {
                call: call(call_id, from_tag),
            },
            OwnedEvent::Register {
                aor,
                contact,
                expires_s,
            } => Event::Register {
                aor,
                contact,
                expires_s: *expires_s,
            },
            OwnedEvent::Subscribers { count } => Event::Subscribers { count: *count },
            OwnedEvent::Admit { call_id, emergency } => Event::Admit {
                call_id,
                emergency: *emergency,
            },
        }
    }
}

/// A field valid in the text protocol: 1..=255 bytes, none of them space, CR or LF. Mostly
/// short, sometimes at the length limit.
pub fn text_field() -> BoxedStrategy<Vec<u8>> {
    let byte = any::<u8>().prop_map(|b| {
        if matches!(b, b' ' | b'\r' | b'\n') {
            b'_'
        } else {
            b
        }
    });
    prop_oneof![
        4 => proptest::collection::vec(byte.clone(), 1..=24),
        1 => proptest::collection::vec(byte, 250..=255),
    ]
    .boxed()
}

/// A key valid in the binary format: 1..=255 arbitrary bytes.
pub fn binary_field() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 1..=24),
        1 => proptest::collection::vec(any::<u8>(), 250..=255),
    ]
    .boxed()
}

/// Any valid event whose fields come from `field`.
pub fn owned_event(field: BoxedStrategy<Vec<u8>>) -> impl Strategy<Value = OwnedEvent> {
    let f = || field.clone();
    prop_oneof![
        (f(), proptest::option::of(f()), any::<bool>()).prop_map(
            |(call_id, from_tag, emergency)| OwnedEvent::CallStart {
                call_id,
                from_tag,
                emergency
            }
        ),
        (f(), proptest::option::of(f()))
            .prop_map(|(call_id, from_tag)| OwnedEvent::CallStop { call_id, from_tag }),
        (f(), proptest::option::of(f()))
            .prop_map(|(call_id, from_tag)| OwnedEvent::CallRefresh { call_id, from_tag }),
        (f(), f(), prop_oneof![Just(0), Just(u32::MAX), any::<u32>()]).prop_map(
            |(aor, contact, expires_s)| OwnedEvent::Register {
                aor,
                contact,
                expires_s
            }
        ),
        prop_oneof![
            Just(0),
            Just(crate::SUBSCRIBERS_MAX),
            0..=crate::SUBSCRIBERS_MAX
        ]
        .prop_map(|count| OwnedEvent::Subscribers { count }),
        (f(), any::<bool>())
            .prop_map(|(call_id, emergency)| OwnedEvent::Admit { call_id, emergency }),
    ]
}
