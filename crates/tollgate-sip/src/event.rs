//! Owned events: what the tracker (and `tollgate-opensips`) emit, so that the IO layer can
//! hold them past the datagram and build the borrowed [`Event`] that `Tables::apply` takes.

use tollgate_events::{CallRef, Event};

/// Owned identity of one call: Call-ID plus the optional From-tag (the caller's tag).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OwnedCall {
    pub call_id: Vec<u8>,
    pub from_tag: Option<Vec<u8>>,
}

impl OwnedCall {
    pub fn new(call_id: &[u8], from_tag: Option<&[u8]>) -> Self {
        OwnedCall {
            call_id: call_id.to_vec(),
            from_tag: from_tag.map(<[u8]>::to_vec),
        }
    }

    pub fn as_ref(&self) -> CallRef<'_> {
        CallRef {
            call_id: &self.call_id,
            from_tag: self.from_tag.as_deref(),
        }
    }
}

/// An owned mirror of the [`Event`] variants that SIP observation produces.
///
/// Strings are not limited to the text protocol's 255 bytes: `Tables::apply` fingerprints
/// them whatever their length.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OwnedEvent {
    CallStart {
        call: OwnedCall,
        emergency: bool,
    },
    CallStop {
        call: OwnedCall,
    },
    CallRefresh {
        call: OwnedCall,
    },
    /// `expires_s == 0` removes the contact.
    Register {
        aor: Vec<u8>,
        contact: Vec<u8>,
        expires_s: u32,
    },
}

impl OwnedEvent {
    /// The borrowed event, for `Tables::apply`.
    pub fn as_event(&self) -> Event<'_> {
        match self {
            OwnedEvent::CallStart { call, emergency } => Event::CallStart {
                call: call.as_ref(),
                emergency: *emergency,
            },
            OwnedEvent::CallStop { call } => Event::CallStop {
                call: call.as_ref(),
            },
            OwnedEvent::CallRefresh { call } => Event::CallRefresh {
                call: call.as_ref(),
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
        }
    }
}

impl std::fmt::Display for OwnedEvent {
    /// The text-protocol spelling (bytes outside printable ASCII escaped), for tests and logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let esc = |b: &[u8]| b.escape_ascii().to_string();
        let call = |c: &OwnedCall| match &c.from_tag {
            Some(tag) => format!("{} tag={}", esc(&c.call_id), esc(tag)),
            None => esc(&c.call_id),
        };
        match self {
            OwnedEvent::CallStart { call: c, emergency } => {
                let e = if *emergency { " emergency" } else { "" };
                write!(f, "call-start {}{e}", call(c))
            }
            OwnedEvent::CallStop { call: c } => write!(f, "call-stop {}", call(c)),
            OwnedEvent::CallRefresh { call: c } => write!(f, "call-refresh {}", call(c)),
            OwnedEvent::Register {
                aor,
                contact,
                expires_s,
            } => write!(f, "reg {} {} {expires_s}", esc(aor), esc(contact)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_event_borrows_every_field() {
        let start = OwnedEvent::CallStart {
            call: OwnedCall::new(b"abc@h", Some(b"t1")),
            emergency: true,
        };
        assert_eq!(
            start.as_event(),
            Event::CallStart {
                call: CallRef {
                    call_id: b"abc@h",
                    from_tag: Some(b"t1")
                },
                emergency: true
            }
        );
        assert_eq!(start.to_string(), "call-start abc@h tag=t1 emergency");
        let reg = OwnedEvent::Register {
            aor: b"sip:a@b".to_vec(),
            contact: b"sip:a@1.2.3.4".to_vec(),
            expires_s: 0,
        };
        assert_eq!(
            reg.as_event(),
            Event::Register {
                aor: b"sip:a@b",
                contact: b"sip:a@1.2.3.4",
                expires_s: 0
            }
        );
        assert_eq!(reg.to_string(), "reg sip:a@b sip:a@1.2.3.4 0");
        let stop = OwnedEvent::CallStop {
            call: OwnedCall::new(b"x", None),
        };
        assert_eq!(stop.to_string(), "call-stop x");
    }
}
