//! Admin credentials: users from `[[admin.users]]` with argon2 password hashes and a role,
//! checked on HTTP basic auth. A verified (user, password) pair is remembered for a few
//! minutes (by its blake3 digest, never the password) so a page refreshing every few
//! seconds does not pay an argon2 hash each time.
//!
//! An unknown user name costs the same argon2 work as a wrong password: it is checked
//! against a dummy hash made with the configured users' parameters, so response times do
//! not tell which names exist. Every verification is counted
//! ([`Users::verifications_total`]). Throttling failed logins per client address is the
//! HTTP layer's (`admin_limits.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use base64::Engine as _;
use parking_lot::Mutex;

/// How long a verified credential is trusted without re-hashing.
pub const CREDENTIAL_CACHE_TTL: Duration = Duration::from_secs(300);
/// Most remembered credentials (the cache is cleared when full).
pub const CREDENTIAL_CACHE_MAX: usize = 256;

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read everything.
    Viewer,
    /// Read everything, reload and upload licenses.
    Admin,
}

/// One configured user.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    password_hash: String,
    pub role: Role,
}

impl User {
    /// Validates a configured user: a name, a parseable argon2 PHC string, a known role.
    pub fn new(name: &str, password_hash: &str, role: &str) -> Result<User, String> {
        if name.is_empty() || name.contains(':') {
            return Err(format!("user name {name:?}: must be non-empty without ':'"));
        }
        PasswordHash::new(password_hash)
            .map_err(|e| format!("user {name}: password_hash is not an argon2 PHC string ({e}); create one with `tollgate hash-password`"))?;
        let role = match role {
            "admin" => Role::Admin,
            "viewer" => Role::Viewer,
            other => {
                return Err(format!(
                    "user {name}: role {other:?} is not \"admin\" or \"viewer\""
                ));
            }
        };
        Ok(User {
            name: name.to_owned(),
            password_hash: password_hash.to_owned(),
            role,
        })
    }
}

/// Hashes a password for `[[admin.users]] password_hash` (argon2id, random salt).
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = argon2::password_hash::SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// A PHC hash of a random password with the same algorithm, version and parameters as
/// `like` (so verifying against it costs the same).
fn dummy_hash_like(like: &str) -> Option<String> {
    let parsed = PasswordHash::new(like).ok()?;
    let algorithm = argon2::Algorithm::try_from(parsed.algorithm).ok()?;
    let version = parsed
        .version
        .and_then(|v| argon2::Version::try_from(v).ok())
        .unwrap_or_default();
    let params = argon2::Params::try_from(&parsed).ok()?;
    let salt = argon2::password_hash::SaltString::generate(&mut rand::rngs::OsRng);
    let mut password = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut password);
    Argon2::new(algorithm, version, params)
        .hash_password(&password, &salt)
        .ok()
        .map(|h| h.to_string())
}

/// Why a request is not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No or wrong credentials (HTTP 401).
    Unauthenticated,
    /// Authenticated, but the role is not enough (HTTP 403).
    Forbidden,
    /// An admin action while no users are configured (HTTP 401).
    NoUsersConfigured,
}

/// The configured users and the credential cache.
#[derive(Debug, Default)]
pub struct Users {
    users: Vec<User>,
    cache: Mutex<HashMap<[u8; 32], (Role, Instant)>>,
    /// A hash of a random password with the first user's argon2 parameters: what an
    /// unknown user name is checked against, so it costs what a wrong password costs.
    dummy_hash: Option<String>,
    verifications: AtomicU64,
}

impl Users {
    pub fn new(users: Vec<User>) -> Self {
        let dummy_hash = users
            .first()
            .and_then(|u| dummy_hash_like(&u.password_hash));
        Users {
            users,
            cache: Mutex::new(HashMap::new()),
            dummy_hash,
            verifications: AtomicU64::new(0),
        }
    }

    /// Argon2 verifications run since start (known and unknown users alike).
    pub fn verifications_total(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    /// Whether `authorization` is already verified (cached): checking it costs no hash.
    pub fn is_cached(&self, authorization: Option<&str>) -> bool {
        let Some(decoded) = authorization
            .and_then(|a| a.strip_prefix("Basic "))
            .and_then(|e| {
                base64::engine::general_purpose::STANDARD
                    .decode(e.trim())
                    .ok()
            })
        else {
            return false;
        };
        let digest = *blake3::hash(&decoded).as_bytes();
        self.cache
            .lock()
            .get(&digest)
            .is_some_and(|(_, at)| at.elapsed() < CREDENTIAL_CACHE_TTL)
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Checks an `Authorization` header value for `needed`. With no users configured, reads
    /// are open (the admin API listens on loopback by default) and admin actions refused.
    pub fn authorize(
        &self,
        authorization: Option<&str>,
        needed: Role,
    ) -> Result<Option<Role>, Denied> {
        if self.users.is_empty() {
            return match needed {
                Role::Viewer => Ok(None),
                Role::Admin => Err(Denied::NoUsersConfigured),
            };
        }
        let role = self
            .authenticate(authorization)
            .ok_or(Denied::Unauthenticated)?;
        if role >= needed {
            Ok(Some(role))
        } else {
            Err(Denied::Forbidden)
        }
    }

    /// Who the credentials belong to: `Ok(None)` when no users are configured (reads are
    /// open then), the user's name and role otherwise.
    pub fn identify(&self, authorization: Option<&str>) -> Result<Option<(String, Role)>, Denied> {
        if self.users.is_empty() {
            return Ok(None);
        }
        let role = self
            .authenticate(authorization)
            .ok_or(Denied::Unauthenticated)?;
        let name = authorization
            .and_then(|a| a.strip_prefix("Basic "))
            .and_then(|e| {
                base64::engine::general_purpose::STANDARD
                    .decode(e.trim())
                    .ok()
            })
            .and_then(|d| String::from_utf8(d).ok())
            .and_then(|t| t.split_once(':').map(|(n, _)| n.to_owned()))
            .unwrap_or_default();
        Ok(Some((name, role)))
    }

    fn authenticate(&self, authorization: Option<&str>) -> Option<Role> {
        let encoded = authorization?.strip_prefix("Basic ")?.trim();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()?;
        let text = std::str::from_utf8(&decoded).ok()?;
        let (name, password) = text.split_once(':')?;
        let digest = *blake3::hash(&decoded).as_bytes();
        if let Some((role, at)) = self.cache.lock().get(&digest)
            && at.elapsed() < CREDENTIAL_CACHE_TTL
        {
            return Some(*role);
        }
        let user = self.users.iter().find(|u| u.name == name);
        // The same argon2 work whether or not the name exists.
        let phc = match user {
            Some(u) => u.password_hash.as_str(),
            None => self.dummy_hash.as_deref()?,
        };
        let hash = PasswordHash::new(phc).ok()?;
        self.verifications.fetch_add(1, Ordering::Relaxed);
        let verified = Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok();
        let user = user.filter(|_| verified)?;
        let mut cache = self.cache.lock();
        if cache.len() >= CREDENTIAL_CACHE_MAX {
            cache.clear();
        }
        cache.insert(digest, (user.role, Instant::now()));
        Some(user.role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    }

    fn users() -> Users {
        Users::new(vec![
            User::new("ops", &hash_password("secret").unwrap(), "admin").unwrap(),
            User::new("noc", &hash_password("look").unwrap(), "viewer").unwrap(),
        ])
    }

    #[test]
    fn roles_and_credentials_decide_401_and_403() {
        let u = users();
        assert_eq!(
            u.authorize(Some(&basic("ops", "secret")), Role::Admin),
            Ok(Some(Role::Admin))
        );
        assert_eq!(
            u.authorize(Some(&basic("noc", "look")), Role::Viewer),
            Ok(Some(Role::Viewer))
        );
        assert_eq!(
            u.authorize(Some(&basic("noc", "look")), Role::Admin),
            Err(Denied::Forbidden)
        );
        assert_eq!(
            u.authorize(Some(&basic("ops", "wrong")), Role::Viewer),
            Err(Denied::Unauthenticated)
        );
        assert_eq!(
            u.authorize(Some(&basic("nobody", "x")), Role::Viewer),
            Err(Denied::Unauthenticated)
        );
        assert_eq!(
            u.authorize(None, Role::Viewer),
            Err(Denied::Unauthenticated)
        );
        assert_eq!(
            u.authorize(Some("Bearer abc"), Role::Viewer),
            Err(Denied::Unauthenticated)
        );
        // Cached: the second check of the same credential answers the same.
        assert_eq!(
            u.authorize(Some(&basic("ops", "secret")), Role::Admin),
            Ok(Some(Role::Admin))
        );
    }

    #[test]
    fn an_unknown_user_costs_the_same_argon2_work_as_a_wrong_password() {
        let u = users();
        let dummy = u.dummy_hash.as_deref().expect("a dummy hash");
        let (dummy, real) = (
            PasswordHash::new(dummy).unwrap(),
            PasswordHash::new(&u.users[0].password_hash).unwrap(),
        );
        assert_eq!(dummy.algorithm, real.algorithm);
        assert_eq!(dummy.version, real.version);
        assert_eq!(
            argon2::Params::try_from(&dummy).unwrap(),
            argon2::Params::try_from(&real).unwrap()
        );
        assert_eq!(u.verifications_total(), 0);
        assert_eq!(
            u.authorize(Some(&basic("ops", "wrong")), Role::Viewer),
            Err(Denied::Unauthenticated)
        );
        assert_eq!(u.verifications_total(), 1, "a wrong password runs argon2");
        assert_eq!(
            u.authorize(Some(&basic("nobody", "wrong")), Role::Viewer),
            Err(Denied::Unauthenticated)
        );
        assert_eq!(
            u.verifications_total(),
            2,
            "an unknown user runs argon2 too"
        );
        // Even the dummy's own password (unknowable) cannot log in as an unknown user.
        assert!(!u.is_cached(Some(&basic("nobody", "wrong"))));
    }

    #[test]
    fn without_users_reads_are_open_and_admin_actions_refused() {
        let u = Users::default();
        assert_eq!(u.authorize(None, Role::Viewer), Ok(None));
        assert_eq!(
            u.authorize(None, Role::Admin),
            Err(Denied::NoUsersConfigured)
        );
    }

    #[test]
    fn bad_user_config_is_rejected_with_a_reason() {
        assert!(
            User::new("a", "plaintext", "admin")
                .unwrap_err()
                .contains("argon2")
        );
        let h = hash_password("x").unwrap();
        assert!(User::new("a", &h, "root").unwrap_err().contains("role"));
    }
}
