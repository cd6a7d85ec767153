//! Server-side verification of the nodes' usage ledgers (issue 16, `docs/ledger.md`).
//!
//! Every node has an Ed25519 identity key; its agent sends the public key with each lease
//! request and its signed, hash-chained ledger entries with each usage report. The server
//!
//! - **binds the key** to the node (license + node id, with the token that first presented
//!   it) at the node's first lease, and flags `key_change` when a later lease or entry
//!   comes with another key (the new key is then the bound one, so one change is one flag);
//! - **verifies every entry** on receipt with the same rule as `tollgate ledger verify`
//!   ([`tollgate_ledger::classify`]), chain by chain per node, and stores the entries that
//!   extend a chain;
//! - **flags** what it finds — `chain_break`, `fork`, `gap`, `reset` (a known node starting
//!   a new chain), `key_change`, and `bad_signature`, `out_of_order`, `malformed` — per
//!   node in `ledger_flags`, with one audit log entry (`ledger.<kind>`) and one warning
//!   log line per flag. `admin reports list` shows each report's flags.
//!
//! A flag never refuses a report or a lease: the report is evidence and is kept whole; the
//! vendor decides what a flag means for the contract.
//!
//! **Invariant.** A report that is sent twice (the agent resends what it could not deliver)
//! raises nothing the second time: an entry already held is a duplicate, not a fork.

use std::collections::BTreeMap;
use std::net::IpAddr;

use base64::Engine as _;
use serde::Serialize;
use tollgate_events::WallTime;
use tollgate_ledger::{
    FindingKind, Hash, Head, PublicKey, SignedEntry, Verdict, classify, public_key_text,
};
use tollgate_license::timestamp::format_rfc3339;
use tollgate_license_client::UsageReport;

use crate::sql::params;
use crate::store::{Audit, Db, StoreError, TokenRecord};

/// Migration 4: node keys, ledger entries, ledger flags (appended to
/// [`crate::store::MIGRATIONS`]).
pub const MIGRATION_SQL: &str = "
CREATE TABLE ledger_nodes (
    id INTEGER PRIMARY KEY,
    license_id INTEGER NOT NULL REFERENCES licenses(id),
    node_id TEXT NOT NULL,
    public_key TEXT,
    key_token_id INTEGER REFERENCES tokens(id),
    key_bound_at_ms INTEGER,
    chain INTEGER NOT NULL,
    head_seq INTEGER,
    head_hash TEXT,
    head_key TEXT,
    head_interval_end_ms INTEGER,
    entry_count INTEGER NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    UNIQUE (license_id, node_id)
);
CREATE TABLE ledger_entries (
    id INTEGER PRIMARY KEY,
    ledger_node_id INTEGER NOT NULL REFERENCES ledger_nodes(id),
    chain INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL,
    report_id INTEGER REFERENCES usage_reports(id),
    frame TEXT NOT NULL,
    UNIQUE (ledger_node_id, chain, seq)
);
CREATE TABLE ledger_flags (
    id INTEGER PRIMARY KEY,
    ledger_node_id INTEGER NOT NULL REFERENCES ledger_nodes(id),
    at_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    seq INTEGER,
    report_id INTEGER REFERENCES usage_reports(id),
    detail TEXT NOT NULL
);
CREATE INDEX ledger_flags_by_node ON ledger_flags (ledger_node_id, id);
CREATE INDEX ledger_flags_by_report ON ledger_flags (report_id);
";

/// One finding the server recorded for a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Flag {
    pub id: i64,
    pub license_key: String,
    pub node_id: String,
    #[serde(skip)]
    pub at_ms: u64,
    pub at: String,
    /// `chain_break`, `fork`, `gap`, `reset`, `key_change`, `bad_signature`,
    /// `out_of_order`, `malformed`.
    pub kind: String,
    pub seq: Option<u64>,
    pub report_id: Option<i64>,
    pub detail: String,
}

/// A node the server knows a key or a chain of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LedgerNode {
    pub license_key: String,
    pub node_id: String,
    /// The bound key (standard base64), if one was presented.
    pub public_key: Option<String>,
    /// Chains seen: 0 for the first, +1 at each reset.
    pub chain: u64,
    pub head_seq: Option<u64>,
    pub entries: u64,
    pub flags: u64,
    pub last_seen: String,
}

/// What the server knows of one node's chain (a row of `ledger_nodes`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeChain {
    row: i64,
    bound_key: Option<PublicKey>,
    chain: i64,
    head: Option<Head>,
}

/// What to do with an entry, and what to flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgment {
    pub findings: Vec<(FindingKind, String)>,
    pub action: Action,
    /// The key to bind from now on, when it changed.
    pub rebind: Option<PublicKey>,
}

/// Where an entry goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Stored as the new head of the current chain.
    Extend,
    /// Stored as the first entry of a new chain (after a reset).
    NewChain,
    /// Not stored (a duplicate, or an entry that cannot be placed).
    Drop,
}

/// The server's rule for the next entry of a node: [`classify`] against the node's bound
/// key, with what the server does about each verdict. Pure: the caller stores.
///
/// A well-signed entry with another key than the bound one is a `key_change` and rebinds
/// the key, then is judged as the node's own. A chain break or a gap is flagged and the
/// entry becomes the head (the node's story goes on from it); a reset starts a new chain;
/// a fork, an entry older than anything held and a bad signature are flagged and dropped.
pub fn judge(
    head: Option<&Head>,
    bound_key: Option<&PublicKey>,
    e: &SignedEntry,
    held: impl Fn(u64) -> Option<Hash> + Copy,
) -> Judgment {
    let mut findings = Vec::new();
    // The key is judged here (a change is flagged and rebinds it), so the chain is judged
    // under the entry's own key; a duplicate (a report sent again, seq 0 included) or a bad
    // signature is decided by `classify` before any key is looked at.
    let verdict = classify(head, Some(&e.node_key), e, held);
    match verdict {
        Verdict::Duplicate => {
            return Judgment {
                findings,
                action: Action::Drop,
                rebind: None,
            };
        }
        Verdict::Finding(FindingKind::BadSignature) => {
            findings.push((
                FindingKind::BadSignature,
                format!(
                    "seq {}: the signature does not match the entry's bytes",
                    e.seq
                ),
            ));
            return Judgment {
                findings,
                action: Action::Drop,
                rebind: None,
            };
        }
        _ => {}
    }
    let mut rebind = None;
    if bound_key.is_some_and(|k| *k != e.node_key) {
        findings.push((
            FindingKind::KeyChange,
            format!(
                "seq {}: signed by key {}, not the bound key {}",
                e.seq,
                public_key_text(&e.node_key),
                bound_key.map(public_key_text).unwrap_or_default()
            ),
        ));
        rebind = Some(e.node_key);
    }
    let after = head.map_or("nothing".to_owned(), |h| format!("seq {}", h.seq));
    let action = match verdict {
        Verdict::Append => Action::Extend,
        Verdict::Duplicate => Action::Drop,
        Verdict::Finding(kind) => {
            let (action, detail) = match kind {
                FindingKind::Reset => (
                    Action::NewChain,
                    format!("a new chain (seq 0) after {after}: the node lost its ledger"),
                ),
                FindingKind::ChainBreak => (
                    Action::Extend,
                    format!(
                        "seq {}: its previous hash is not the hash of {after} (an entry was replaced)",
                        e.seq
                    ),
                ),
                FindingKind::Gap => (
                    Action::Extend,
                    format!("seq {} follows {after}: entries are missing", e.seq),
                ),
                FindingKind::Fork => (
                    Action::Drop,
                    format!("seq {}: a different entry with this seq is held", e.seq),
                ),
                FindingKind::OutOfOrder => (
                    Action::Drop,
                    format!("seq {} is older than every entry held", e.seq),
                ),
                // After the rebind above the key is the entry's own; a head signed by the
                // old key continues under the new one.
                FindingKind::KeyChange => (Action::Extend, String::new()),
                FindingKind::BadSignature | FindingKind::Malformed => {
                    unreachable!("checked above or not a verdict of classify")
                }
            };
            if kind != FindingKind::KeyChange {
                findings.push((kind, detail));
            }
            action
        }
    };
    Judgment {
        findings,
        action,
        rebind,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn to_sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn from_sql(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Who sent what a flag is about, for the audit log.
struct Origin<'a> {
    license_key: &'a str,
    token_id: i64,
    client: IpAddr,
    report_id: Option<i64>,
    now_ms: u64,
}

impl Db<'_> {
    fn ledger_node(&self, license_id: i64, node_id: &str) -> Result<Option<NodeChain>, StoreError> {
        let Some(r) = self.h.query_opt(
            "SELECT id, public_key, chain, head_seq, head_hash, head_key, head_interval_end_ms
             FROM ledger_nodes WHERE license_id = ?1 AND node_id = ?2",
            &params![license_id, node_id],
        )?
        else {
            return Ok(None);
        };
        let corrupt = |what: &str| StoreError::Corrupt(format!("ledger node {node_id}: {what}"));
        let bound_key = match r.opt_text(1)? {
            Some(t) => Some(tollgate_ledger::parse_public_key(&t).ok_or_else(|| corrupt("key"))?),
            None => None,
        };
        let head = match (r.opt_int(3)?, r.opt_text(4)?, r.opt_text(5)?) {
            (Some(seq), Some(hash), Some(key)) => Some(Head {
                seq: from_sql(seq),
                hash: unhex32(&hash).ok_or_else(|| corrupt("head hash"))?,
                node_key: tollgate_ledger::parse_public_key(&key)
                    .ok_or_else(|| corrupt("head key"))?,
                interval_end_ms: from_sql(r.opt_int(6)?.unwrap_or(0)),
            }),
            _ => None,
        };
        Ok(Some(NodeChain {
            row: r.int(0)?,
            bound_key,
            chain: r.int(2)?,
            head,
        }))
    }

    fn ledger_node_or_new(
        &self,
        license_id: i64,
        node_id: &str,
        now_ms: u64,
    ) -> Result<NodeChain, StoreError> {
        if let Some(n) = self.ledger_node(license_id, node_id)? {
            return Ok(n);
        }
        let row = self.h.query_opt(
            "INSERT INTO ledger_nodes (license_id, node_id, chain, entry_count, first_seen_ms,
                                       last_seen_ms)
             VALUES (?1, ?2, 0, 0, ?3, ?3) RETURNING id",
            &params![license_id, node_id, to_sql(now_ms)],
        )?;
        let row = row
            .ok_or_else(|| StoreError::Corrupt("insert returned no id".into()))?
            .int(0)?;
        Ok(NodeChain {
            row,
            bound_key: None,
            chain: 0,
            head: None,
        })
    }

    fn bind_key(
        &self,
        node: &NodeChain,
        key: &PublicKey,
        token_id: i64,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.h.execute(
            "UPDATE ledger_nodes SET public_key = ?2, key_token_id = ?3, key_bound_at_ms = ?4
             WHERE id = ?1",
            &params![node.row, public_key_text(key), token_id, to_sql(now_ms)],
        )?;
        Ok(())
    }

    fn ledger_held(&self, node: &NodeChain, seq: u64) -> Result<Option<Hash>, StoreError> {
        let row = self.h.query_opt(
            "SELECT hash FROM ledger_entries WHERE ledger_node_id = ?1 AND chain = ?2 AND seq = ?3",
            &params![node.row, node.chain, to_sql(seq)],
        )?;
        Ok(match row {
            Some(r) => unhex32(&r.text(0)?),
            None => None,
        })
    }

    fn flag(
        &self,
        node: &NodeChain,
        node_id: &str,
        origin: &Origin<'_>,
        kind: FindingKind,
        seq: Option<u64>,
        detail: &str,
    ) -> Result<(), StoreError> {
        self.h.execute(
            "INSERT INTO ledger_flags (ledger_node_id, at_ms, kind, seq, report_id, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            &params![
                node.row,
                to_sql(origin.now_ms),
                kind.as_str(),
                seq.map(to_sql),
                origin.report_id,
                detail
            ],
        )?;
        self.audit(&Audit {
            at_ms: origin.now_ms,
            actor: &format!("token:{}", origin.token_id),
            action: &format!("ledger.{}", kind.as_str()),
            license_key: Some(origin.license_key),
            client_address: Some(&origin.client.to_string()),
            detail: serde_json::json!({
                "node_id": node_id,
                "flag": kind.as_str(),
                "seq": seq,
                "report_id": origin.report_id,
                "detail": detail,
            }),
        })?;
        tracing::warn!(
            license_key = origin.license_key,
            node_id,
            flag = kind.as_str(),
            seq,
            report_id = origin.report_id,
            client = %origin.client,
            "usage ledger flag {}: {detail}",
            kind.as_str()
        );
        Ok(())
    }

    /// At a lease: binds `key` (standard base64) to the node at its first lease; a later
    /// lease with another key is flagged `key_change` and binds the new key. Returns the
    /// flags raised (0 or 1).
    pub fn ledger_bind_at_lease(
        &self,
        token: &TokenRecord,
        license_key: &str,
        client: IpAddr,
        node_id: &str,
        key: &PublicKey,
        now_ms: u64,
    ) -> Result<usize, StoreError> {
        let node = self.ledger_node_or_new(token.license_id, node_id, now_ms)?;
        self.h.execute(
            "UPDATE ledger_nodes SET last_seen_ms = ?2 WHERE id = ?1",
            &params![node.row, to_sql(now_ms)],
        )?;
        match node.bound_key {
            Some(bound) if bound == *key => Ok(0),
            Some(bound) => {
                let origin = Origin {
                    license_key,
                    token_id: token.id,
                    client,
                    report_id: None,
                    now_ms,
                };
                self.flag(
                    &node,
                    node_id,
                    &origin,
                    FindingKind::KeyChange,
                    None,
                    &format!(
                        "lease requested with key {}, not the bound key {}",
                        public_key_text(key),
                        public_key_text(&bound)
                    ),
                )?;
                self.bind_key(&node, key, token.id, now_ms)?;
                Ok(1)
            }
            None => {
                self.bind_key(&node, key, token.id, now_ms)?;
                tracing::info!(
                    license_key,
                    node_id,
                    token_id = token.id,
                    node_public_key = %public_key_text(key),
                    "node key bound at the node's first lease"
                );
                Ok(0)
            }
        }
    }

    /// At a usage report: verifies the report's ledger entries against the node's chain,
    /// stores those that extend it, flags the rest. Returns the flags raised.
    pub fn ledger_verify_report(
        &self,
        token: &TokenRecord,
        license_key: &str,
        client: IpAddr,
        report_id: i64,
        report: &UsageReport,
        now_ms: u64,
    ) -> Result<usize, StoreError> {
        if report.ledger.is_empty() {
            return Ok(0);
        }
        let node_id = report.node_id.as_str();
        let mut node = self.ledger_node_or_new(token.license_id, node_id, now_ms)?;
        let origin = Origin {
            license_key,
            token_id: token.id,
            client,
            report_id: Some(report_id),
            now_ms,
        };
        let mut raised = 0;
        let mut stored = 0i64;
        for text in &report.ledger {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    SignedEntry::decode(&bytes)
                        .map_err(|e| e.to_string())
                        .and_then(|(e, used)| {
                            if used == bytes.len() {
                                Ok(e)
                            } else {
                                Err("bytes follow the entry".into())
                            }
                        })
                });
            let e = match decoded {
                Ok(e) if e.entry.node_id == node_id => e,
                Ok(e) => {
                    let detail = format!(
                        "seq {}: the entry names node {:?}, the report node {node_id:?}",
                        e.seq, e.entry.node_id
                    );
                    self.flag(
                        &node,
                        node_id,
                        &origin,
                        FindingKind::Malformed,
                        Some(e.seq),
                        &detail,
                    )?;
                    raised += 1;
                    continue;
                }
                Err(problem) => {
                    let detail = format!("an entry that does not decode: {problem}");
                    self.flag(
                        &node,
                        node_id,
                        &origin,
                        FindingKind::Malformed,
                        None,
                        &detail,
                    )?;
                    raised += 1;
                    continue;
                }
            };
            // `held` reads the store; the closure cannot return its error, so a failed read
            // is remembered and returned after the verdict.
            let failed = std::cell::RefCell::new(None);
            let judgment = judge(
                node.head.as_ref(),
                node.bound_key.as_ref(),
                &e,
                |seq| match self.ledger_held(&node, seq) {
                    Ok(h) => h,
                    Err(err) => {
                        *failed.borrow_mut() = Some(err);
                        None
                    }
                },
            );
            if let Some(err) = failed.into_inner() {
                return Err(err);
            }
            for (kind, detail) in &judgment.findings {
                self.flag(&node, node_id, &origin, *kind, Some(e.seq), detail)?;
                raised += 1;
            }
            if let Some(key) = judgment.rebind {
                self.bind_key(&node, &key, token.id, now_ms)?;
                node.bound_key = Some(key);
            }
            if node.bound_key.is_none() {
                // A node that reports before it ever leased: its first entry's key.
                self.bind_key(&node, &e.node_key, token.id, now_ms)?;
                node.bound_key = Some(e.node_key);
            }
            match judgment.action {
                Action::Drop => continue,
                Action::NewChain => node.chain += 1,
                Action::Extend => {}
            }
            let hash = e.hash();
            self.h.execute(
                "INSERT INTO ledger_entries (ledger_node_id, chain, seq, hash, report_id, frame)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                &params![
                    node.row,
                    node.chain,
                    to_sql(e.seq),
                    hex(&hash),
                    report_id,
                    text.as_str()
                ],
            )?;
            node.head = Some(Head::of(&e));
            stored += 1;
        }
        let head = node.head.as_ref();
        self.h.execute(
            "UPDATE ledger_nodes SET chain = ?2, head_seq = ?3, head_hash = ?4, head_key = ?5,
                    head_interval_end_ms = ?6, entry_count = entry_count + ?7, last_seen_ms = ?8
             WHERE id = ?1",
            &params![
                node.row,
                node.chain,
                head.map(|h| to_sql(h.seq)),
                head.map(|h| hex(&h.hash)),
                head.map(|h| public_key_text(&h.node_key)),
                head.map(|h| to_sql(h.interval_end_ms)),
                stored,
                to_sql(now_ms)
            ],
        )?;
        Ok(raised)
    }

    /// The flags raised on these reports, by report id.
    pub fn ledger_flags_of_reports(
        &self,
        report_ids: &[i64],
    ) -> Result<BTreeMap<i64, Vec<Flag>>, StoreError> {
        let mut out: BTreeMap<i64, Vec<Flag>> = BTreeMap::new();
        let (Some(lo), Some(hi)) = (report_ids.iter().min(), report_ids.iter().max()) else {
            return Ok(out);
        };
        for flag in self.ledger_flags_where(
            "f.report_id BETWEEN ?1 AND ?2",
            &params![*lo, *hi],
            crate::store::LIST_LIMIT_MAX,
        )? {
            if let Some(id) = flag.report_id
                && report_ids.contains(&id)
            {
                out.entry(id).or_default().push(flag);
            }
        }
        Ok(out)
    }

    /// The latest `limit` flags (of one license, or all), newest first.
    pub fn ledger_flags(
        &self,
        license_key: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Flag>, StoreError> {
        self.ledger_flags_where(
            "CAST(?1 AS TEXT) IS NULL OR l.license_key = ?1",
            &params![license_key],
            limit,
        )
    }

    fn ledger_flags_where(
        &self,
        condition: &str,
        args: &[crate::sql::Value],
        limit: u32,
    ) -> Result<Vec<Flag>, StoreError> {
        let sql = format!(
            "SELECT f.id, l.license_key, n.node_id, f.at_ms, f.kind, f.seq, f.report_id, f.detail
             FROM ledger_flags f JOIN ledger_nodes n ON n.id = f.ledger_node_id
                  JOIN licenses l ON l.id = n.license_id
             WHERE {condition} ORDER BY f.id DESC LIMIT {}",
            limit.min(crate::store::LIST_LIMIT_MAX)
        );
        self.h
            .query(&sql, args)?
            .iter()
            .map(|r| {
                let at_ms = from_sql(r.int(3)?);
                Ok(Flag {
                    id: r.int(0)?,
                    license_key: r.text(1)?,
                    node_id: r.text(2)?,
                    at_ms,
                    at: format_rfc3339(WallTime::from_unix_ms(at_ms)),
                    kind: r.text(4)?,
                    seq: r.opt_int(5)?.map(from_sql),
                    report_id: r.opt_int(6)?,
                    detail: r.text(7)?,
                })
            })
            .collect()
    }

    /// Every node the server knows a key or a chain of (of one license, or all).
    pub fn ledger_nodes(&self, license_key: Option<&str>) -> Result<Vec<LedgerNode>, StoreError> {
        self.h
            .query(
                "SELECT l.license_key, n.node_id, n.public_key, n.chain, n.head_seq, n.entry_count,
                        (SELECT count(*) FROM ledger_flags f WHERE f.ledger_node_id = n.id),
                        n.last_seen_ms
                 FROM ledger_nodes n JOIN licenses l ON l.id = n.license_id
                 WHERE CAST(?1 AS TEXT) IS NULL OR l.license_key = ?1
                 ORDER BY l.license_key, n.node_id LIMIT ?2",
                &params![license_key, crate::store::LIST_LIMIT_MAX],
            )?
            .iter()
            .map(|r| {
                Ok(LedgerNode {
                    license_key: r.text(0)?,
                    node_id: r.text(1)?,
                    public_key: r.opt_text(2)?,
                    chain: from_sql(r.int(3)?),
                    head_seq: r.opt_int(4)?.map(from_sql),
                    entries: from_sql(r.int(5)?),
                    flags: from_sql(r.int(6)?),
                    last_seen: format_rfc3339(WallTime::from_unix_ms(from_sql(r.int(7)?))),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_ledger::{Chain, Entry, NodeKey};

    fn entry(end_ms: u64) -> Entry {
        Entry {
            node_id: "n1".into(),
            interval_start_ms: end_ms - 1000,
            interval_end_ms: end_ms,
            license_status: "OK".into(),
            ..Entry::default()
        }
    }

    fn chain(key: &NodeKey, n: usize) -> Vec<SignedEntry> {
        chain_from(key, n, 10_000)
    }

    fn chain_from(key: &NodeKey, n: usize, start_ms: u64) -> Vec<SignedEntry> {
        let mut c = Chain::new(None);
        (0..n)
            .map(|i| c.append(key, entry(start_ms + i as u64 * 1000)))
            .collect()
    }

    /// Runs `entries` through [`judge`] as the server does; returns every flag's kind.
    fn check(bound: Option<PublicKey>, entries: &[SignedEntry]) -> Vec<FindingKind> {
        let mut held: BTreeMap<(i64, u64), Hash> = BTreeMap::new();
        let mut head: Option<Head> = None;
        let mut bound = bound;
        let mut chain = 0;
        let mut flags = Vec::new();
        for e in entries {
            let j = judge(head.as_ref(), bound.as_ref(), e, |s| {
                held.get(&(chain, s)).copied()
            });
            flags.extend(j.findings.iter().map(|f| f.0));
            if let Some(k) = j.rebind {
                bound = Some(k);
            }
            bound.get_or_insert(e.node_key);
            match j.action {
                Action::Drop => continue,
                Action::NewChain => chain += 1,
                Action::Extend => {}
            }
            held.insert((chain, e.seq), e.hash());
            head = Some(Head::of(e));
        }
        flags
    }

    #[test]
    fn an_honest_chain_sent_twice_raises_nothing() {
        let key = NodeKey::from_seed(&[1; 32]);
        let es = chain(&key, 5);
        let mut twice = es.clone();
        twice.extend(es.iter().cloned());
        assert_eq!(check(Some(key.public()), &twice), vec![]);
    }

    #[test]
    fn each_tampering_raises_its_flag() {
        let key = NodeKey::from_seed(&[1; 32]);
        let other = NodeKey::from_seed(&[2; 32]);
        let es = chain(&key, 6);
        let bound = Some(key.public());

        let mut gap = es.clone();
        gap.remove(2);
        assert_eq!(check(bound, &gap), vec![FindingKind::Gap]);

        let mut replaced = es.clone();
        replaced[3] = SignedEntry::sign(&key, 3, es[2].hash(), entry(99_999));
        assert_eq!(check(bound, &replaced), vec![FindingKind::ChainBreak]);

        let mut forked = es.clone();
        forked.push(SignedEntry::sign(&key, 2, es[1].hash(), entry(77_777)));
        assert_eq!(check(bound, &forked), vec![FindingKind::Fork]);

        let mut reset = es.clone();
        reset.extend(chain_from(&key, 3, 500_000));
        assert_eq!(check(bound, &reset), vec![FindingKind::Reset]);

        // The new chain's entries sent again (seq 0 included, alone or all of them): one
        // reset, no more.
        let fresh = chain_from(&key, 3, 500_000);
        let mut resent = es.clone();
        resent.extend(fresh.iter().cloned());
        resent.push(fresh[0].clone());
        resent.extend(fresh.iter().cloned());
        assert_eq!(check(bound, &resent), vec![FindingKind::Reset]);

        // The state dir lost: a new key and a new chain, each flagged once, then quiet.
        let mut lost = es.clone();
        lost.extend(chain(&other, 3));
        assert_eq!(
            check(bound, &lost),
            vec![FindingKind::KeyChange, FindingKind::Reset]
        );

        // node.key lost, ledger kept: the chain continues under a new key.
        let mut rekeyed = es.clone();
        rekeyed.push(SignedEntry::sign(&other, 6, es[5].hash(), entry(50_000)));
        assert_eq!(check(bound, &rekeyed), vec![FindingKind::KeyChange]);

        // A first entry signed by another key than the one bound at the lease.
        assert_eq!(
            check(Some(other.public()), &es),
            vec![FindingKind::KeyChange]
        );

        let mut edited = es.clone();
        edited[4].signature[0] ^= 1;
        assert_eq!(
            check(bound, &edited),
            vec![FindingKind::BadSignature, FindingKind::Gap]
        );
    }

    #[test]
    fn hashes_round_trip_through_their_text() {
        let h = [0xab; 32];
        assert_eq!(unhex32(&hex(&h)), Some(h));
        assert_eq!(unhex32("zz"), None);
    }
}
