//! Keyed 128-bit fingerprints of Call-IDs, AoRs, contacts and sender ids.
//!
//! The tables never store the strings a proxy sends: a call is keyed by a keyed hash of its
//! Call-ID and From-tag, a registration by a keyed hash of its AoR, a contact within an AoR
//! by 64 bits of a keyed hash of the contact. The key ([`FingerprintKey`]) is secret and
//! persisted by the agent in its state directory, so fingerprints (and snapshots) survive a
//! restart.
//!
//! **Why keyed, why 128 bits.** Callers choose Call-IDs. With a public hash a sender could
//! craft Call-IDs that collide (one call's stop would end another call) or that pile into
//! one hash-table probe sequence. With a secret key the fingerprint is, for a caller, a
//! random 128-bit value: accidental collisions need ~2^64 live entries, and the map hasher
//! can use the fingerprint's low 64 bits as is ([`IdentityHasher`]).
//!
//! **Domain separation.** Each role has its own key, derived one-way from the
//! [`FingerprintKey`]: an untagged Call-ID, the Call-ID of a tagged call, a From-tag, an
//! AoR, a contact and a sender id are hashed with six independent keys. A tagged call's
//! fingerprint is `H_call_tagged(call_id) ⊕ H_tag(from_tag)`. So `("ab", tag "c")`,
//! `("a", tag "bc")`, `("a", no tag)` and `("a", empty tag)` are hashes of different inputs
//! under different keys, and a Call-ID never collides with an AoR of the same bytes. Nothing
//! is copied or concatenated: a first version hashed `a ‖ b ‖ len(a) ‖ len(b) ‖ domain` from
//! a stack buffer, and assembling it cost more than the hash (≈ 10 ns: store-forwarding
//! stalls where the hash's 16-byte loads straddle the copied pieces). The XOR of two keyed
//! hashes is not itself a PRF (four related fingerprints XOR to zero), which only matters
//! to someone who can read fingerprints; nobody outside the process can (snapshots are as
//! secret as the key).
//!
//! **The hot-path choice: xxh3-128 with a 192-byte secret derived from the key.** Measured
//! with `cargo bench --bench fingerprint` (criterion medians, 2-vCPU VM shared with other
//! builds, so read them as ratios), each through [`Fingerprinter::call`] exactly as
//! [`crate::Tables::apply`] calls it:
//!
//! | Call-ID | blake3 keyed | SipHash-1-3-128 | xxh3-128 + secret | xxh3, + 10-byte From-tag |
//! | ---: | ---: | ---: | ---: | ---: |
//! | 20 B | 105.7 ns | 11.6 ns | 6.3 ns | 11.8 ns |
//! | 40 B | 105.4 ns | 15.3 ns | 7.1 ns | 12.4 ns |
//! | 80 B | 160.0 ns | 21.9 ns | 7.9 ns | 15.2 ns |
//!
//! A call start+stop pair hashes twice and must stay ≤ 60 ns in total. With xxh3 it
//! measures 40 ns (40-byte Call-ID) and 59 ns with a From-tag (`benches/tables.rs`); the
//! rest is the shard lock (two atomic read-modify-writes per event) and the map. SipHash
//! would add ~16 ns per pair untagged and ~30 ns tagged (over the target), blake3 ~200 ns.
//! xxh3 is not a proven PRF, but with a full 192-byte secret per role (derived with blake3's
//! `derive_key`; never the seeded variant, whose seed-independent collisions are known)
//! there is no known way to find collisions without the secret, and fingerprints never leave
//! the process except in snapshots, which are as secret as the key. The worst a collision
//! could do is a counting error of one call, never memory unsafety. [`Algorithm`] keeps the
//! other two for the benchmark and as a fallback; changing the hot-path algorithm changes
//! every fingerprint, so it bumps the snapshot format version.
//!
//! **Storage.** A [`Fingerprint`] is `[u64; 2]` (alignment 8, not u128's 16), which keeps a
//! call entry at 24 bytes.

use std::hash::{BuildHasherDefault, Hash, Hasher};

#[cfg(feature = "bench")]
use siphasher::sip128::SipHasher13;
use tollgate_events::CallRef;

/// The secret key of the call and registration fingerprints.
///
/// Generated once ([`FingerprintKey::generate`], from entropy the agent passes in) and
/// persisted by the agent; a snapshot can
/// only be restored with the key it was taken with ([`FingerprintKey::id`] is checked).
#[derive(Clone)]
pub struct FingerprintKey(pub [u8; 32]);

impl FingerprintKey {
    /// A fresh key from `rng` (the agent passes the operating system's generator; this
    /// crate never reads entropy itself).
    pub fn generate(rng: &mut (impl rand::RngCore + rand::CryptoRng)) -> Self {
        let mut key = [0u8; 32];
        rng.fill_bytes(&mut key);
        FingerprintKey(key)
    }

    /// A public 64-bit identifier of this key (a one-way derivation): tells whether two
    /// keys are equal without revealing either. Stored in snapshots.
    pub fn id(&self) -> u64 {
        let id = blake3::derive_key("tollgate 2024 fingerprint key id", &self.0);
        u64::from_le_bytes([id[0], id[1], id[2], id[3], id[4], id[5], id[6], id[7]])
    }
}

impl std::fmt::Debug for FingerprintKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FingerprintKey(id={:016x})", self.id())
    }
}

/// A keyed 128-bit fingerprint. Hashes (for [`IdentityHasher`]) as its first word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Fingerprint(pub [u64; 2]);

impl Fingerprint {
    pub const fn to_bytes(self) -> [u8; 16] {
        let lo = self.0[0].to_le_bytes();
        let hi = self.0[1].to_le_bytes();
        [
            lo[0], lo[1], lo[2], lo[3], lo[4], lo[5], lo[6], lo[7], hi[0], hi[1], hi[2], hi[3],
            hi[4], hi[5], hi[6], hi[7],
        ]
    }

    pub const fn from_bytes(b: [u8; 16]) -> Self {
        Fingerprint([
            u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
        ])
    }

    fn from_u128(h: u128) -> Self {
        Fingerprint([h as u64, (h >> 64) as u64])
    }
}

impl Hash for Fingerprint {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0[0]);
    }
}

/// A map hasher that passes a [`Fingerprint`]'s first word through: the fingerprint is
/// already the output of a keyed hash, hashing it again would only cost time.
///
/// **Invariant:** only keys whose `Hash` is a single `write_u64` of uniformly distributed
/// bits (fingerprints) go into maps with this hasher.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        debug_assert!(false, "IdentityHasher only hashes fingerprints");
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(29) ^ u64::from_le_bytes(word);
        }
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// `BuildHasher` for maps keyed by [`Fingerprint`].
pub type BuildIdentityHasher = BuildHasherDefault<IdentityHasher>;

/// What is being fingerprinted: each role hashes with its own derived key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Domain {
    Call = 0,
    Aor = 1,
    Contact = 2,
    Sender = 3,
}

/// The keyed hash functions compared in `benches/fingerprint.rs`. The alternatives to the
/// hot path's exist only with this crate's `bench` feature (the benches turn it on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// blake3 in keyed mode, first 128 bits of the output.
    #[cfg(feature = "bench")]
    Blake3,
    /// SipHash-1-3 with 128-bit output.
    #[cfg(feature = "bench")]
    SipHash13,
    /// xxh3-128 with a 192-byte secret. The hot path.
    Xxh3,
}

/// The algorithm [`crate::Tables`] uses (see the module doc for the measurements).
pub const HOT_PATH_ALGORITHM: Algorithm = Algorithm::Xxh3;

/// xxh3's default secret length (at least 136 is required).
const XXH3_SECRET_LEN: usize = 192;

/// The keyed roles: the four domains plus the two halves of a tagged call.
#[derive(Debug, Clone, Copy)]
#[repr(usize)]
enum Role {
    CallUntagged = 0,
    CallTagged = 1,
    FromTag = 2,
    Aor = 3,
    Contact = 4,
    Sender = 5,
}

const ROLE_COUNT: usize = 6;

const ROLE_CONTEXTS: [&str; ROLE_COUNT] = [
    "tollgate 2024 fingerprint call-id untagged",
    "tollgate 2024 fingerprint call-id tagged",
    "tollgate 2024 fingerprint from-tag",
    "tollgate 2024 fingerprint aor",
    "tollgate 2024 fingerprint contact",
    "tollgate 2024 fingerprint sender",
];

/// One role's key in the form its algorithm wants.
#[derive(Clone)]
enum RoleKey {
    #[cfg(feature = "bench")]
    Blake3([u8; 32]),
    #[cfg(feature = "bench")]
    SipHash13(SipHasher13),
    Xxh3([u8; XXH3_SECRET_LEN]),
}

/// Computes fingerprints with one key and one [`Algorithm`].
#[derive(Clone)]
pub struct Fingerprinter {
    algorithm: Algorithm,
    role_keys: [RoleKey; ROLE_COUNT],
}

impl std::fmt::Debug for Fingerprinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fingerprinter")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl Fingerprinter {
    /// The hot-path fingerprinter ([`HOT_PATH_ALGORITHM`]).
    pub fn new(key: &FingerprintKey) -> Self {
        Self::with_algorithm(key, HOT_PATH_ALGORITHM)
    }

    pub fn with_algorithm(key: &FingerprintKey, algorithm: Algorithm) -> Self {
        let role_keys = ROLE_CONTEXTS.map(|context| {
            // One-way derivation per role; each algorithm takes the bytes it needs.
            let mut material = [0u8; XXH3_SECRET_LEN];
            blake3::Hasher::new_derive_key(context)
                .update(&key.0)
                .finalize_xof()
                .fill(&mut material);
            match algorithm {
                #[cfg(feature = "bench")]
                Algorithm::Blake3 => {
                    let mut k = [0u8; 32];
                    k.copy_from_slice(&material[..32]);
                    RoleKey::Blake3(k)
                }
                #[cfg(feature = "bench")]
                Algorithm::SipHash13 => {
                    let mut k = [0u8; 16];
                    k.copy_from_slice(&material[32..48]);
                    RoleKey::SipHash13(SipHasher13::new_with_key(&k))
                }
                Algorithm::Xxh3 => RoleKey::Xxh3(material),
            }
        });
        Fingerprinter {
            algorithm,
            role_keys,
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Fingerprint of a call: Call-ID plus the optional From-tag.
    #[inline]
    pub fn call(&self, call: CallRef<'_>) -> Fingerprint {
        match call.from_tag {
            None => self.hash(Role::CallUntagged, call.call_id),
            Some(tag) => {
                let a = self.hash(Role::CallTagged, call.call_id);
                let b = self.hash(Role::FromTag, tag);
                Fingerprint([a.0[0] ^ b.0[0], a.0[1] ^ b.0[1]])
            }
        }
    }

    /// Fingerprint of an address of record.
    #[inline]
    pub fn aor(&self, aor: &[u8]) -> Fingerprint {
        self.hash(Role::Aor, aor)
    }

    /// 64-bit keyed hash of a contact, to tell the contacts of one AoR apart.
    #[inline]
    pub fn contact(&self, contact: &[u8]) -> u64 {
        self.hash(Role::Contact, contact).0[0]
    }

    /// Fingerprint of a sequence sender id.
    #[inline]
    pub fn sender(&self, sender: &[u8]) -> Fingerprint {
        self.hash(Role::Sender, sender)
    }

    /// Fingerprint of a single field in `domain` (a call without From-tag for
    /// [`Domain::Call`]).
    #[inline]
    pub fn fingerprint(&self, domain: Domain, field: &[u8]) -> Fingerprint {
        let role = match domain {
            Domain::Call => Role::CallUntagged,
            Domain::Aor => Role::Aor,
            Domain::Contact => Role::Contact,
            Domain::Sender => Role::Sender,
        };
        self.hash(role, field)
    }

    #[inline]
    fn hash(&self, role: Role, message: &[u8]) -> Fingerprint {
        match &self.role_keys[role as usize] {
            RoleKey::Xxh3(secret) => {
                Fingerprint::from_u128(xxhash_rust::xxh3::xxh3_128_with_secret(message, secret))
            }
            #[cfg(feature = "bench")]
            RoleKey::SipHash13(hasher) => {
                let h = hasher.hash(message);
                Fingerprint([h.h1, h.h2])
            }
            #[cfg(feature = "bench")]
            RoleKey::Blake3(key) => {
                let h = blake3::keyed_hash(key, message);
                let mut first = [0u8; 16];
                first.copy_from_slice(&h.as_bytes()[..16]);
                Fingerprint::from_bytes(first)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> FingerprintKey {
        FingerprintKey([7; 32])
    }

    #[cfg(feature = "bench")]
    const ALL: [Algorithm; 3] = [Algorithm::Blake3, Algorithm::SipHash13, Algorithm::Xxh3];
    #[cfg(not(feature = "bench"))]
    const ALL: [Algorithm; 1] = [Algorithm::Xxh3];

    fn call(call_id: &'static [u8], from_tag: Option<&'static [u8]>) -> CallRef<'static> {
        CallRef { call_id, from_tag }
    }

    #[test]
    fn moving_bytes_between_call_id_and_tag_changes_the_fingerprint() {
        for algorithm in ALL {
            let f = Fingerprinter::with_algorithm(&key(), algorithm);
            assert_ne!(
                f.call(call(b"ab", Some(b"c"))),
                f.call(call(b"a", Some(b"bc")))
            );
            assert_ne!(f.call(call(b"abc", None)), f.call(call(b"ab", Some(b"c"))));
        }
    }

    #[test]
    fn no_tag_differs_from_empty_tag() {
        for algorithm in ALL {
            let f = Fingerprinter::with_algorithm(&key(), algorithm);
            assert_ne!(f.call(call(b"a", None)), f.call(call(b"a", Some(b""))));
        }
    }

    #[test]
    fn same_bytes_in_different_roles_differ() {
        let f = Fingerprinter::new(&key());
        assert_ne!(f.call(call(b"x@y", None)), f.aor(b"x@y"));
        assert_ne!(f.aor(b"x@y"), f.sender(b"x@y"));
        assert_ne!(f.aor(b"x@y").0[0], f.contact(b"x@y"));
    }

    #[test]
    fn fingerprint_depends_on_the_key_and_is_stable_for_one_key() {
        for algorithm in ALL {
            let a = Fingerprinter::with_algorithm(&key(), algorithm);
            let b = Fingerprinter::with_algorithm(&FingerprintKey([8; 32]), algorithm);
            let c = Fingerprinter::with_algorithm(&key(), algorithm);
            let id = call(
                b"a84b4c76e66710@pc33.atlanta.example.com",
                Some(b"1928301774"),
            );
            assert_ne!(a.call(id), b.call(id));
            assert_eq!(a.call(id), c.call(id));
        }
    }

    #[test]
    fn each_domain_has_its_own_key() {
        let f = Fingerprinter::new(&key());
        assert_eq!(f.fingerprint(Domain::Call, b"x"), f.call(call(b"x", None)));
        assert_eq!(f.fingerprint(Domain::Aor, b"x"), f.aor(b"x"));
        assert_eq!(f.fingerprint(Domain::Sender, b"x"), f.sender(b"x"));
        assert_eq!(f.fingerprint(Domain::Contact, b"x").0[0], f.contact(b"x"));
        assert_ne!(f.fingerprint(Domain::Contact, b"x"), f.aor(b"x"));
    }

    #[test]
    fn fingerprint_bytes_round_trip() {
        let fp = Fingerprint([0x0102_0304_0506_0708, 0x1112_1314_1516_1718]);
        assert_eq!(Fingerprint::from_bytes(fp.to_bytes()), fp);
    }

    #[test]
    fn random_keys_differ_and_debug_hides_the_key() {
        let mut rng = rand::rngs::OsRng;
        let a = FingerprintKey::generate(&mut rng);
        let b = FingerprintKey::generate(&mut rng);
        assert_ne!(a.0, b.0);
        assert_ne!(a.id(), b.id());
        let shown = format!("{a:?}");
        assert!(shown.starts_with("FingerprintKey(id="));
        assert!(!shown.contains(&format!("{:?}", a.0)));
    }
}
