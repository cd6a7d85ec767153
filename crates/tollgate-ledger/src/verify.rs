//! The chain: the writer's head, and the rule that judges the next entry.

use serde::{Deserialize, Serialize};

use crate::entry::{DecodeError, Entry, Hash, NodeKey, PublicKey, SignedEntry, decode_frames};

/// The last entry of a chain, as a writer or a verifier remembers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub seq: u64,
    pub hash: Hash,
    pub node_key: PublicKey,
    /// `interval_end_ms` of the head entry.
    pub interval_end_ms: u64,
}

impl Head {
    pub fn of(e: &SignedEntry) -> Head {
        Head {
            seq: e.seq,
            hash: e.hash(),
            node_key: e.node_key,
            interval_end_ms: e.entry.interval_end_ms,
        }
    }
}

/// The writer's side of a chain: appends signed entries after the head.
#[derive(Debug, Clone, Default)]
pub struct Chain {
    head: Option<Head>,
}

impl Chain {
    /// A chain continuing after `head` (none: a new chain, whose first entry is seq 0).
    pub fn new(head: Option<Head>) -> Chain {
        Chain { head }
    }

    pub fn head(&self) -> Option<Head> {
        self.head
    }

    /// Signs `entry` as the next entry of the chain and makes it the head.
    pub fn append(&mut self, key: &NodeKey, entry: Entry) -> SignedEntry {
        let (seq, prev) = match &self.head {
            Some(h) => (h.seq + 1, h.hash),
            None => (0, [0; 32]),
        };
        let signed = SignedEntry::sign(key, seq, prev, entry);
        self.head = Some(Head::of(&signed));
        signed
    }
}

/// What is wrong with an entry. Each has its own exit code in `tollgate ledger verify`
/// (`docs/ledger.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// The bytes are not an entry (a damaged length, magic or field).
    Malformed,
    /// The signature is not the entry's key's over its bytes (an edited entry).
    BadSignature,
    /// The entry follows its predecessor by seq but names another previous hash.
    ChainBreak,
    /// Entries are missing: the seq jumps forward and no later entry fills the hole.
    Gap,
    /// The entries are all there but not in chain order (moved or swapped).
    OutOfOrder,
    /// Two different entries claim the same seq.
    Fork,
    /// A known node started a new chain (seq 0 again): its ledger or state dir was lost.
    Reset,
    /// The entry is signed by another key than the node's.
    KeyChange,
}

impl FindingKind {
    pub const ALL: [FindingKind; 8] = [
        FindingKind::Malformed,
        FindingKind::BadSignature,
        FindingKind::ChainBreak,
        FindingKind::Gap,
        FindingKind::OutOfOrder,
        FindingKind::Fork,
        FindingKind::Reset,
        FindingKind::KeyChange,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::Malformed => "malformed",
            FindingKind::BadSignature => "bad_signature",
            FindingKind::ChainBreak => "chain_break",
            FindingKind::Gap => "gap",
            FindingKind::OutOfOrder => "out_of_order",
            FindingKind::Fork => "fork",
            FindingKind::Reset => "reset",
            FindingKind::KeyChange => "key_change",
        }
    }

    /// The exit code of `tollgate ledger verify` for this finding (0 is intact, 1 an IO
    /// error, 2 bad usage).
    pub fn exit_code(self) -> u8 {
        match self {
            FindingKind::Malformed => 10,
            FindingKind::BadSignature => 11,
            FindingKind::ChainBreak => 12,
            FindingKind::Gap => 13,
            FindingKind::OutOfOrder => 14,
            FindingKind::Fork => 15,
            FindingKind::Reset => 16,
            FindingKind::KeyChange => 17,
        }
    }
}

impl std::fmt::Display for FindingKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`classify`] makes of the next entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It extends the chain: make it the head.
    Append,
    /// It is an entry already held (a report sent twice): ignore it.
    Duplicate,
    /// Something is wrong; a verifier records the finding. For `Reset` and `KeyChange` the
    /// entry is still well signed and may become the head of the chain from then on.
    Finding(FindingKind),
}

/// The one rule for the next entry `e` of a chain whose head is `head`, whose owner's key
/// is `bound_key` (none: whatever key the chain has), and where `held(seq)` answers the
/// hash of an entry already held at `seq`.
///
/// In order: a bad signature; an entry identical to one held at its seq (a duplicate: a
/// report sent again, in every position, seq 0 included; never a reset or a fork); a
/// different seq 0 after a head (a reset: a new chain); another key than the bound one or
/// the head's (a key change); then by seq: the next one with the right previous hash
/// (append) or another (chain break), a jump forward (gap), or a different entry at a seq
/// already held (fork), or one older than anything held (out of order).
pub fn classify(
    head: Option<&Head>,
    bound_key: Option<&PublicKey>,
    e: &SignedEntry,
    held: impl Fn(u64) -> Option<Hash>,
) -> Verdict {
    if !e.signature_valid() {
        return Verdict::Finding(FindingKind::BadSignature);
    }
    // Identity is the entry hash (over the whole signed entry, key included): the same
    // bytes at the same seq were already judged and stored.
    let hash = e.hash();
    if head.is_some_and(|h| h.seq == e.seq && h.hash == hash) || held(e.seq) == Some(hash) {
        return Verdict::Duplicate;
    }
    let Some(head) = head else {
        if bound_key.is_some_and(|k| *k != e.node_key) {
            return Verdict::Finding(FindingKind::KeyChange);
        }
        return Verdict::Append;
    };
    if e.seq == 0 {
        return Verdict::Finding(FindingKind::Reset);
    }
    let key = bound_key.unwrap_or(&head.node_key);
    if e.node_key != *key {
        return Verdict::Finding(FindingKind::KeyChange);
    }
    if e.seq == head.seq + 1 {
        if e.prev_hash == head.hash {
            Verdict::Append
        } else {
            Verdict::Finding(FindingKind::ChainBreak)
        }
    } else if e.seq > head.seq {
        Verdict::Finding(FindingKind::Gap)
    } else {
        match held(e.seq) {
            // The same hash returned Duplicate above.
            Some(_) => Verdict::Finding(FindingKind::Fork),
            // Older than anything held: it cannot be placed.
            None => Verdict::Finding(FindingKind::OutOfOrder),
        }
    }
}

/// The first bad entry of a ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    /// Position of the entry in the input, counting from 0.
    pub index: usize,
    /// Its byte offset in the input.
    pub offset: usize,
    /// Its seq, when it decoded.
    pub seq: Option<u64>,
    /// One sentence for a human.
    pub detail: String,
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Entries that decoded.
    pub entries: usize,
    /// The chain's head after the last good entry.
    pub head: Option<Head>,
    /// The first bad entry; `None`: intact.
    pub finding: Option<Finding>,
}

/// Verifies the frames in `bytes` as one chain: every signature, every link, no hole, no
/// reordering, one key (`public_key` when given, else the first entry's). `from_genesis`:
/// the input holds the whole chain, so its first entry must be seq 0 (a ledger directory);
/// without it, a chain may start anywhere (one segment, or an export).
pub fn verify(bytes: &[u8], public_key: Option<&PublicKey>, from_genesis: bool) -> VerifyReport {
    let (entries, bad) = decode_frames(bytes);
    let mut offsets = Vec::with_capacity(entries.len());
    let mut at = 0;
    for e in &entries {
        offsets.push(at);
        at += e.encode().len();
    }
    // Ordered, not hashed: no random hasher keys read in the core (issue 12 item 6).
    let mut held: std::collections::BTreeMap<u64, Hash> = std::collections::BTreeMap::new();
    let mut head: Option<Head> = None;
    let finding = |kind, index: usize, seq: Option<u64>, detail: String| Finding {
        kind,
        index,
        offset: offsets.get(index).copied().unwrap_or(at),
        seq,
        detail,
    };
    for (i, e) in entries.iter().enumerate() {
        if i == 0 && from_genesis && e.seq != 0 && e.signature_valid() {
            return VerifyReport {
                entries: entries.len(),
                head,
                finding: Some(finding(
                    FindingKind::Gap,
                    0,
                    Some(e.seq),
                    format!("the chain starts at seq {} instead of 0", e.seq),
                )),
            };
        }
        let verdict = classify(head.as_ref(), public_key, e, |s| held.get(&s).copied());
        let kind = match verdict {
            Verdict::Append => {
                held.insert(e.seq, e.hash());
                head = Some(Head::of(e));
                continue;
            }
            // The same entry twice in one file is not how a writer appends.
            Verdict::Duplicate => FindingKind::OutOfOrder,
            Verdict::Finding(FindingKind::Gap) => {
                let h = head.map_or(0, |h| h.seq);
                let later = entries[i + 1..].iter().any(|l| l.seq > h && l.seq < e.seq);
                if later {
                    FindingKind::OutOfOrder
                } else {
                    FindingKind::Gap
                }
            }
            Verdict::Finding(kind) => kind,
        };
        let detail = describe(kind, head.as_ref(), e);
        return VerifyReport {
            entries: entries.len(),
            head,
            finding: Some(finding(kind, i, Some(e.seq), detail)),
        };
    }
    let finding = bad.map(|(offset, error): (usize, DecodeError)| Finding {
        kind: FindingKind::Malformed,
        index: entries.len(),
        offset,
        seq: None,
        detail: format!("the bytes at offset {offset} are not an entry: {error}"),
    });
    VerifyReport {
        entries: entries.len(),
        head,
        finding,
    }
}

fn describe(kind: FindingKind, head: Option<&Head>, e: &SignedEntry) -> String {
    let after = head.map_or("the start".to_owned(), |h| format!("seq {}", h.seq));
    match kind {
        FindingKind::BadSignature => {
            format!(
                "seq {}: the signature does not match the entry's bytes (edited)",
                e.seq
            )
        }
        FindingKind::ChainBreak => format!(
            "seq {}: its previous hash is not the hash of {after} (an entry was replaced)",
            e.seq
        ),
        FindingKind::Gap => format!("seq {} follows {after}: entries are missing", e.seq),
        FindingKind::OutOfOrder => format!("seq {} follows {after}: entries out of order", e.seq),
        FindingKind::Fork => format!("seq {}: a different entry with this seq is held", e.seq),
        FindingKind::Reset => format!("a new chain starts after {after}"),
        FindingKind::KeyChange => format!(
            "seq {}: signed by key {}, not the node's",
            e.seq,
            crate::public_key_text(&e.node_key)
        ),
        FindingKind::Malformed => format!("seq {}: malformed", e.seq),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{Figures, NodeKey};

    fn entry(end_ms: u64) -> Entry {
        Entry {
            node_id: "n1".into(),
            incarnation: 1,
            interval_start_ms: end_ms - 1000,
            interval_end_ms: end_ms,
            counts: Figures {
                calls: end_ms % 7,
                ..Figures::default()
            },
            peaks: Figures::default(),
            license_serial: Some(9),
            license_status: "OK".into(),
            denied: vec![],
            state_resets: 0,
        }
    }

    fn chain(key: &NodeKey, n: usize) -> Vec<SignedEntry> {
        let mut c = Chain::new(None);
        (0..n)
            .map(|i| c.append(key, entry(10_000 + i as u64 * 1000)))
            .collect()
    }

    fn bytes(entries: &[SignedEntry]) -> Vec<u8> {
        entries.iter().flat_map(|e| e.encode()).collect()
    }

    /// Verifies `entries` as a ledger directory and returns (finding, index).
    fn check(entries: &[SignedEntry], key: Option<&PublicKey>) -> Option<(FindingKind, usize)> {
        verify(&bytes(entries), key, true)
            .finding
            .map(|f| (f.kind, f.index))
    }

    #[test]
    fn an_intact_chain_verifies() {
        let key = NodeKey::from_seed(&[1; 32]);
        let es = chain(&key, 5);
        let r = verify(&bytes(&es), Some(&key.public()), true);
        assert_eq!(r.finding, None);
        assert_eq!(r.entries, 5);
        assert_eq!(r.head.unwrap().seq, 4);
        assert_eq!(r.head.unwrap().hash, es[4].hash());
    }

    #[test]
    fn each_tampering_is_named_with_the_first_bad_entry() {
        let key = NodeKey::from_seed(&[1; 32]);
        let other = NodeKey::from_seed(&[2; 32]);
        let es = chain(&key, 6);

        let mut removed = es.clone();
        removed.remove(2);
        assert_eq!(check(&removed, None), Some((FindingKind::Gap, 2)));

        let mut swapped = es.clone();
        swapped.swap(2, 3);
        assert_eq!(check(&swapped, None), Some((FindingKind::OutOfOrder, 2)));

        let mut flipped = bytes(&es);
        let at = es[0].encode().len() * 3 + 4 + 100; // entry 3's counts.calls
        flipped[at] ^= 1;
        let f = verify(&flipped, None, true).finding.unwrap();
        assert_eq!(
            (f.kind, f.index, f.seq),
            (FindingKind::BadSignature, 3, Some(3))
        );

        // Entry 3 re-signed with other content but the right seq and key: a chain break
        // at entry 4 (its previous hash names the original entry 3).
        let mut replaced = es.clone();
        replaced[3] = SignedEntry::sign(&key, 3, es[2].hash(), entry(99_999));
        assert_eq!(check(&replaced, None), Some((FindingKind::ChainBreak, 4)));

        let mut forked = es.clone();
        forked.push(SignedEntry::sign(&key, 2, es[1].hash(), entry(77_777)));
        assert_eq!(check(&forked, None), Some((FindingKind::Fork, 6)));

        // A new chain: a different seq 0 (the same seq 0 again is a repeat, below).
        let mut reset = es.clone();
        let mut restarted = Chain::new(None);
        reset.push(restarted.append(&key, entry(500_000)));
        reset.push(restarted.append(&key, entry(501_000)));
        assert_eq!(check(&reset, None), Some((FindingKind::Reset, 6)));

        // seq 0 repeated in one file: the same entry twice is out of order, not a reset.
        let mut repeated = es.clone();
        repeated.push(es[0].clone());
        assert_eq!(check(&repeated, None), Some((FindingKind::OutOfOrder, 6)));

        let mut rekeyed = es.clone();
        rekeyed.push(SignedEntry::sign(&other, 6, es[5].hash(), entry(50_000)));
        assert_eq!(check(&rekeyed, None), Some((FindingKind::KeyChange, 6)));
        assert_eq!(
            check(&es, Some(&other.public())),
            Some((FindingKind::KeyChange, 0))
        );

        let mut truncated = bytes(&es);
        truncated.truncate(truncated.len() - 3);
        let f = verify(&truncated, None, true).finding.unwrap();
        assert_eq!((f.kind, f.index), (FindingKind::Malformed, 5));

        assert_eq!(check(&es[1..], None), Some((FindingKind::Gap, 0)));
        assert_eq!(verify(&bytes(&es[1..]), None, false).finding, None);
    }

    #[test]
    fn exit_codes_are_distinct_and_not_the_generic_ones() {
        let mut codes: Vec<u8> = FindingKind::ALL.iter().map(|k| k.exit_code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), FindingKind::ALL.len());
        assert!(codes.iter().all(|&c| c >= 10));
    }

    #[test]
    fn a_server_side_classifier_sees_duplicates_and_forks() {
        let key = NodeKey::from_seed(&[1; 32]);
        let es = chain(&key, 3);
        let head = Head::of(&es[2]);
        let held = |s: u64| es.get(s as usize).map(SignedEntry::hash);
        assert_eq!(
            classify(Some(&head), Some(&key.public()), &es[1], held),
            Verdict::Duplicate
        );
        let other = SignedEntry::sign(&key, 1, es[0].hash(), entry(1_234_000));
        assert_eq!(
            classify(Some(&head), None, &other, held),
            Verdict::Finding(FindingKind::Fork)
        );
        let next = Chain::new(Some(head)).append(&key, entry(20_000));
        assert_eq!(classify(Some(&head), None, &next, held), Verdict::Append);
        // seq 0 sent again, as the head and after it: the same entry, never a reset.
        let first_head = Head::of(&es[0]);
        assert_eq!(
            classify(Some(&first_head), Some(&key.public()), &es[0], |_| None),
            Verdict::Duplicate
        );
        assert_eq!(
            classify(Some(&head), Some(&key.public()), &es[0], held),
            Verdict::Duplicate
        );
        // A different seq 0 from the same key after a head: a new chain.
        let restarted = Chain::new(None).append(&key, entry(500_000));
        assert_eq!(
            classify(Some(&head), Some(&key.public()), &restarted, held),
            Verdict::Finding(FindingKind::Reset)
        );
        // ... and from another key (state dir lost with the key): a reset before a key change.
        let other_key = NodeKey::from_seed(&[6; 32]);
        let elsewhere = Chain::new(None).append(&other_key, entry(500_000));
        assert_eq!(
            classify(Some(&head), Some(&key.public()), &elsewhere, held),
            Verdict::Finding(FindingKind::Reset)
        );
        // A new node key bound at the first lease: a first entry with another key.
        let stranger = NodeKey::from_seed(&[5; 32]);
        let first = Chain::new(None).append(&stranger, entry(20_000));
        assert_eq!(
            classify(None, Some(&key.public()), &first, held),
            Verdict::Finding(FindingKind::KeyChange)
        );
    }
}
