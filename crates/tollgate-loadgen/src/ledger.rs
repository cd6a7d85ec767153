//! What the agent should count, given the events that were handed to the kernel.
//!
//! The ledger applies the actions of every datagram that was sent (never those of a
//! datagram that could not be sent), with the agent's semantics: a stop of a call that is
//! not up changes nothing, `expires 0` removes one contact, an AoR counts as registered
//! while it has at least one contact. Loss on the way (a full receive buffer) is the one
//! thing it cannot see.

use std::collections::HashMap;

use serde::Serialize;
use tollgate_events::Verb;

use crate::model::Action;

/// Events sent, by verb.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct VerbCounts {
    pub call_start: u64,
    pub call_stop: u64,
    pub call_refresh: u64,
    pub reg: u64,
    pub subscribers: u64,
    pub admit: u64,
}

impl VerbCounts {
    pub fn get(&self, verb: Verb) -> u64 {
        match verb {
            Verb::CallStart => self.call_start,
            Verb::CallStop => self.call_stop,
            Verb::CallRefresh => self.call_refresh,
            Verb::Register => self.reg,
            Verb::Subscribers => self.subscribers,
            Verb::Admit => self.admit,
            Verb::Sync => 0,
        }
    }

    fn bump(&mut self, verb: Verb) {
        let counter = match verb {
            Verb::CallStart => &mut self.call_start,
            Verb::CallStop => &mut self.call_stop,
            Verb::CallRefresh => &mut self.call_refresh,
            Verb::Register => &mut self.reg,
            Verb::Subscribers => &mut self.subscribers,
            Verb::Admit => &mut self.admit,
            Verb::Sync => return,
        };
        *counter += 1;
    }

    pub fn total(&self) -> u64 {
        Verb::ALL.iter().map(|&v| self.get(v)).sum()
    }
}

impl Action {
    pub(crate) fn verb(&self) -> Verb {
        match self {
            Action::CallStart { .. } => Verb::CallStart,
            Action::CallStop { .. } => Verb::CallStop,
            Action::CallRefresh { .. } => Verb::CallRefresh,
            Action::Register { .. } => Verb::Register,
            Action::Subscribers { .. } => Verb::Subscribers,
        }
    }
}

/// See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    pub verbs: VerbCounts,
    /// Calls up: call number → emergency.
    active: HashMap<u64, bool, foldhash::fast::FixedState>,
    emergency_active: u64,
    /// Bit `c` of entry `a`: contact `c` of AoR `a` is registered.
    contacts: Vec<u16>,
    aors_registered: u64,
    contacts_registered: u64,
    subscribers: Option<u64>,
}

impl Ledger {
    pub fn new(registrations: u32) -> Self {
        Ledger {
            contacts: vec![0; registrations as usize],
            ..Ledger::default()
        }
    }

    pub fn apply(&mut self, action: &Action) {
        self.verbs.bump(action.verb());
        match *action {
            Action::CallStart { call, emergency } => {
                let previous = self.active.insert(call, emergency);
                assert!(previous.is_none(), "call {call} started twice");
                self.emergency_active += u64::from(emergency);
            }
            Action::CallStop { call } => {
                if let Some(emergency) = self.active.remove(&call) {
                    self.emergency_active -= u64::from(emergency);
                }
            }
            Action::CallRefresh { .. } => {}
            Action::Register {
                aor,
                contact,
                expires_s,
            } => {
                assert!(contact < 16, "contact {contact} out of range");
                let mask = &mut self.contacts[aor as usize];
                let bit = 1u16 << contact;
                let before = *mask;
                if expires_s > 0 {
                    *mask |= bit;
                } else {
                    *mask &= !bit;
                }
                self.contacts_registered += u64::from(*mask & bit != 0 && before & bit == 0);
                self.contacts_registered -= u64::from(*mask & bit == 0 && before & bit != 0);
                self.aors_registered += u64::from(before == 0 && *mask != 0);
                self.aors_registered -= u64::from(before != 0 && *mask == 0);
            }
            Action::Subscribers { count } => self.subscribers = Some(count),
        }
        debug_assert!(self.emergency_active <= self.active.len() as u64);
        debug_assert!(self.aors_registered <= self.contacts_registered);
    }

    /// A registration sent as a HEP 200 OK that lists the AoR's whole binding set: counts
    /// `action` (a `Register`) and makes `mask` the AoR's contact set.
    pub fn apply_contact_set(&mut self, action: &Action, aor: u32, mask: u16) {
        debug_assert!(matches!(action, Action::Register { aor: a, .. } if *a == aor));
        self.verbs.bump(action.verb());
        let entry = &mut self.contacts[aor as usize];
        let before = *entry;
        *entry = mask;
        self.contacts_registered += u64::from(mask.count_ones());
        self.contacts_registered -= u64::from(before.count_ones());
        self.aors_registered += u64::from(before == 0 && mask != 0);
        self.aors_registered -= u64::from(before != 0 && mask == 0);
        debug_assert!(self.aors_registered <= self.contacts_registered);
    }

    pub fn active_calls(&self) -> u64 {
        self.active.len() as u64
    }

    pub fn emergency_calls(&self) -> u64 {
        self.emergency_active
    }

    pub fn registered_aors(&self) -> u64 {
        self.aors_registered
    }

    pub fn registered_contacts(&self) -> u64 {
        self.contacts_registered
    }

    pub fn subscribers(&self) -> Option<u64> {
        self.subscribers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;

    /// Applies `actions` and checks (active, emergency, aors, contacts).
    fn check(actions: &[Action], expected: (u64, u64, u64, u64)) {
        let mut ledger = Ledger::new(4);
        for action in actions {
            ledger.apply(action);
        }
        let got = (
            ledger.active_calls(),
            ledger.emergency_calls(),
            ledger.registered_aors(),
            ledger.registered_contacts(),
        );
        assert_eq!(got, expected, "{actions:?}");
        assert_eq!(ledger.verbs.total(), actions.len() as u64);
    }

    const fn start(call: u64, emergency: bool) -> Action {
        CallStart { call, emergency }
    }
    const fn reg(aor: u32, contact: u32, expires_s: u32) -> Action {
        Register {
            aor,
            contact,
            expires_s,
        }
    }

    #[test]
    fn expected_counts_follow_the_agent_semantics() {
        check(&[], (0, 0, 0, 0));
        check(&[start(1, false), start(2, true)], (2, 1, 0, 0));
        check(
            &[start(1, false), start(2, true), CallStop { call: 2 }],
            (1, 0, 0, 0),
        );
        // A stop without a start (its start was never sent) changes nothing.
        check(&[start(1, true), CallStop { call: 9 }], (1, 1, 0, 0));
        check(
            &[start(1, true), CallStop { call: 1 }, CallStop { call: 1 }],
            (0, 0, 0, 0),
        );
        check(&[start(1, false), CallRefresh { call: 1 }], (1, 0, 0, 0));
        check(&[reg(0, 0, 60), reg(0, 1, 60), reg(1, 0, 60)], (0, 0, 2, 3));
        // Refreshing a contact changes nothing; expires 0 removes one contact.
        check(
            &[reg(0, 0, 60), reg(0, 0, 60), reg(0, 1, 60), reg(0, 0, 0)],
            (0, 0, 1, 1),
        );
        check(&[reg(0, 0, 60), reg(0, 0, 0), reg(0, 0, 0)], (0, 0, 0, 0));
        check(&[reg(3, 2, 0)], (0, 0, 0, 0));
        check(&[reg(2, 0, 60), reg(2, 0, 0), reg(2, 0, 60)], (0, 0, 1, 1));
    }

    #[test]
    fn verbs_and_subscribers_are_counted() {
        let mut ledger = Ledger::new(1);
        for action in [
            start(0, false),
            Subscribers { count: 5 },
            Subscribers { count: 7 },
        ] {
            ledger.apply(&action);
        }
        assert_eq!(ledger.subscribers(), Some(7));
        assert_eq!(
            ledger.verbs,
            VerbCounts {
                call_start: 1,
                subscribers: 2,
                ..Default::default()
            }
        );
    }
}
