//! Who reported an entry: a small id per sender, stored in every call and contact.
//!
//! A reconciliation source corrects only what it owns ([`crate::reconcile`]): the calls and
//! contacts its own sender reported. The sender of an event is the `seq` sender id of its
//! datagram, the HEP capture agent (as `hep-<capture id>`), or the source that added the
//! entry itself; an event without any of these is [`Owner::NONE`].
//!
//! Names are interned into at most [`OWNERS_MAX`] ids in the order they are first seen
//! (the agent interns its configured reconcile sources first, so theirs are stable across
//! restarts); past the bound a new name gets [`Owner::NONE`]. An id costs no memory in the
//! tables: it lives in spare bits of the call entry and of the contact hash.

use parking_lot::RwLock;

use tollgate_events::FIELD_LEN_MAX;

/// Most distinct owner names (ids 1 ..= 255; 0 is [`Owner::NONE`]).
pub const OWNERS_MAX: usize = 255;

/// The id of the sender that reported an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Owner(pub u8);

impl Owner {
    /// Reported by no known sender.
    pub const NONE: Owner = Owner(0);
}

/// The interned owner names. Lookups take a read lock and scan at most 255 short names:
/// done once per datagram, never per event.
#[derive(Debug, Default)]
pub struct Owners {
    names: RwLock<Vec<Box<[u8]>>>,
}

impl Owners {
    pub fn new() -> Self {
        Self::default()
    }

    /// The id of `name`, if interned.
    pub fn get(&self, name: &[u8]) -> Option<Owner> {
        let names = self.names.read();
        names
            .iter()
            .position(|n| **n == *name)
            .map(|i| Owner(i as u8 + 1))
    }

    /// The id of `name`, interning it if new; [`Owner::NONE`] for an empty or over-long
    /// name, or once [`OWNERS_MAX`] names are interned.
    pub fn intern(&self, name: &[u8]) -> Owner {
        if name.is_empty() || name.len() > FIELD_LEN_MAX {
            return Owner::NONE;
        }
        if let Some(owner) = self.get(name) {
            return owner;
        }
        let mut names = self.names.write();
        if let Some(i) = names.iter().position(|n| **n == *name) {
            return Owner(i as u8 + 1);
        }
        if names.len() >= OWNERS_MAX {
            return Owner::NONE;
        }
        names.push(name.into());
        Owner(names.len() as u8)
    }

    /// The name of an interned id.
    pub fn name(&self, owner: Owner) -> Option<String> {
        let index = usize::from(owner.0).checked_sub(1)?;
        let names = self.names.read();
        names
            .get(index)
            .map(|n| String::from_utf8_lossy(n).into_owned())
    }

    /// Every interned name, in id order (id `n` is the `n - 1`th).
    pub fn names(&self) -> Vec<String> {
        self.names
            .read()
            .iter()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect()
    }

    /// How many names are interned.
    pub fn len(&self) -> usize {
        self.names.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_is_stable_and_bounded() {
        let owners = Owners::new();
        assert_eq!(owners.get(b"kam1"), None);
        let kam1 = owners.intern(b"kam1");
        assert_eq!(kam1, Owner(1));
        assert_eq!(owners.intern(b"fs1"), Owner(2));
        assert_eq!(owners.intern(b"kam1"), kam1);
        assert_eq!(owners.name(kam1).as_deref(), Some("kam1"));
        assert_eq!(owners.name(Owner::NONE), None);
        assert_eq!(owners.intern(b""), Owner::NONE);
        assert_eq!(owners.intern(&[b'x'; 256]), Owner::NONE);
        for i in 0..400u32 {
            owners.intern(format!("s{i}").as_bytes());
        }
        assert_eq!(owners.len(), OWNERS_MAX);
        assert_eq!(owners.intern(b"one-too-many"), Owner::NONE);
        assert_eq!(owners.intern(b"fs1"), Owner(2));
    }
}
