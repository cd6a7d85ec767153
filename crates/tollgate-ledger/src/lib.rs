//! The usage ledger: a signed, hash-chained record of what a node counted, one entry per
//! report interval. Sans-IO: bytes in, bytes and findings out; no files, no clock (every
//! time is passed in), no network.
//!
//! - [`Entry`] is what a node records; [`SignedEntry`] is an entry with its place in the
//!   chain (`seq`, `prev_hash`), the node's public key and its Ed25519 signature, encoded
//!   byte by byte as `docs/ledger.md` specifies ([`SignedEntry::encode`] /
//!   [`decode_frames`]).
//! - [`Chain`] is the writer's side: it knows the head and signs the next entry.
//! - [`classify`] is the one rule every verifier applies to the next entry of a chain (the
//!   `tollgate ledger verify` command and the license server alike); [`verify`] walks a
//!   whole byte stream and names the first bad entry with its [`FindingKind`].
//!
//! What it deliberately lacks: where the ledger lives (the agent's state dir), how entries
//! travel (usage reports), and who stores them (the license server).

mod entry;
mod verify;

pub use entry::{
    DENIED_CODES_MAX, DecodeError, ENTRY_BODY_LEN_MAX, Entry, FRAME_LEN_MAX, Figures, Hash, MAGIC,
    NODE_ID_LEN_MAX, NodeKey, PublicKey, SIGNATURE_DOMAIN, STATUS_LEN_MAX, SignedEntry,
    decode_frames, parse_public_key, public_key_text,
};
pub use verify::{Chain, Finding, FindingKind, Head, Verdict, VerifyReport, classify, verify};
