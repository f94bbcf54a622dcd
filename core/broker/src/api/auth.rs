//! API tokens: a secret shown once, kept only as its SHA-256, with a role.
//!
//! Roles nest: a `sender` may do what a `viewer` may, an `admin` what a
//! `sender` may. Viewers read (campaigns, counts, channels, metrics);
//! senders submit and cancel campaigns; admins manage tokens and replay
//! dead letters.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::error::{Error, Result};
use crate::store::{Batch, Cf, Engine, keys};

/// What a token may do.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Sender,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Sender => "sender",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "sender" => Ok(Role::Sender),
            "admin" => Ok(Role::Admin),
            _ => Err(Error::field_invalid(
                "role",
                format!("{s:?} is not a role (admin, sender, viewer)"),
            )),
        }
    }
}

/// A token as the broker keeps it: never its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    /// The first 12 hex digits of the secret's hash: what names the token
    /// in lists and revocations.
    pub id: String,
    pub role: Role,
    /// Who or what it is for (`ihris-sync`, `lab-results`).
    pub name: String,
    pub created_ms: u64,
}

/// The prefix of every secret: tells a leaked one apart in logs and
/// secret scanners.
pub const SECRET_PREFIX: &str = "mhero_";

fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn id_of(hash: &[u8; 32]) -> String {
    crate::store::hex(&hash[..6])
}

/// The broker's tokens, read from the store when it opens and written
/// through on every change.
pub struct Tokens {
    engine: Arc<dyn Engine>,
    by_hash: RwLock<HashMap<[u8; 32], TokenInfo>>,
}

impl Tokens {
    pub fn open(engine: Arc<dyn Engine>) -> Result<Self> {
        let mut by_hash = HashMap::new();
        let (lo, hi) = keys::tokens_range();
        let mut bad = None;
        engine.scan(Cf::Meta, &lo, &hi, &mut |k, v| {
            match (keys::token_from(k), serde_json::from_slice::<TokenInfo>(v)) {
                (Some(h), Ok(info)) => {
                    by_hash.insert(h, info);
                }
                _ => bad = Some(k.to_vec()),
            }
            Ok(true)
        })?;
        if let Some(key) = bad {
            // A token that cannot be read grants nothing; say so once.
            tracing::warn!(key = ?key, "An API token record cannot be read; it is ignored.");
        }
        Ok(Self {
            engine,
            by_hash: RwLock::new(by_hash),
        })
    }

    /// Makes a token; the secret is returned here and nowhere else.
    pub fn create(&self, role: Role, name: &str, now_ms: u64) -> Result<(String, TokenInfo)> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(Error::field_invalid("name", "1 to 100 characters"));
        }
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        let secret = format!("{SECRET_PREFIX}{}", crate::store::hex(&raw));
        let info = self.insert(hash(&secret), role, name, now_ms)?;
        Ok((secret, info))
    }

    /// Accepts a secret given by the operator (config or environment) as
    /// an admin token; kept, like any other, as its hash.
    pub fn adopt(&self, secret: &str, role: Role, name: &str, now_ms: u64) -> Result<TokenInfo> {
        if secret.len() < 24 {
            return Err(Error::Config(
                "api.admin_token must be at least 24 characters".into(),
            ));
        }
        let h = hash(secret);
        if let Some(info) = self.by_hash.read().get(&h) {
            return Ok(info.clone());
        }
        self.insert(h, role, name, now_ms)
    }

    fn insert(&self, h: [u8; 32], role: Role, name: &str, now_ms: u64) -> Result<TokenInfo> {
        let info = TokenInfo {
            id: id_of(&h),
            role,
            name: name.to_string(),
            created_ms: now_ms,
        };
        let mut batch = Batch::new();
        batch.put(
            Cf::Meta,
            keys::token(&h),
            serde_json::to_vec(&info).map_err(|e| Error::Internal(e.to_string()))?,
        );
        self.engine.write(batch)?;
        self.by_hash.write().insert(h, info.clone());
        Ok(info)
    }

    /// Revokes the token with this id; whether there was one.
    pub fn revoke(&self, id: &str) -> Result<bool> {
        let found = self
            .by_hash
            .read()
            .iter()
            .find(|(_, info)| info.id == id)
            .map(|(h, _)| *h);
        let Some(h) = found else {
            return Ok(false);
        };
        let mut batch = Batch::new();
        batch.delete(Cf::Meta, keys::token(&h));
        self.engine.write(batch)?;
        self.by_hash.write().remove(&h);
        Ok(true)
    }

    /// Every token, oldest first.
    pub fn list(&self) -> Vec<TokenInfo> {
        let mut all: Vec<TokenInfo> = self.by_hash.read().values().cloned().collect();
        all.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        all
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.read().is_empty()
    }

    /// The token a secret belongs to, if any.
    pub fn check(&self, secret: &str) -> Option<TokenInfo> {
        self.by_hash.read().get(&hash(secret)).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> (Arc<dyn Engine>, Tokens) {
        let engine: Arc<dyn Engine> = Arc::new(crate::store::MemoryEngine::new());
        let tokens = Tokens::open(Arc::clone(&engine)).unwrap();
        (engine, tokens)
    }

    #[test]
    fn a_token_is_kept_as_its_hash_and_found_by_its_secret() {
        let (engine, tokens) = tokens();
        assert!(tokens.is_empty());
        let (secret, info) = tokens.create(Role::Sender, "lab-results", 7).unwrap();
        assert!(secret.starts_with(SECRET_PREFIX) && secret.len() == SECRET_PREFIX.len() + 64);
        assert_eq!(tokens.check(&secret), Some(info.clone()));
        assert_eq!(tokens.check("mhero_guess"), None);
        // Nothing in the store holds the secret.
        let (lo, hi) = keys::tokens_range();
        let mut seen = 0;
        engine
            .scan(Cf::Meta, &lo, &hi, &mut |k, v| {
                seen += 1;
                let (k, v) = (String::from_utf8_lossy(k), String::from_utf8_lossy(v));
                assert!(!k.contains(&secret[6..]) && !v.contains(&secret[6..]));
                Ok(true)
            })
            .unwrap();
        assert_eq!(seen, 1);
        // Reopened, the token still works; revoked, it does not.
        let reopened = Tokens::open(Arc::clone(&engine)).unwrap();
        assert_eq!(reopened.check(&secret).map(|t| t.role), Some(Role::Sender));
        assert!(reopened.revoke(&info.id).unwrap());
        assert!(!reopened.revoke(&info.id).unwrap());
        assert_eq!(reopened.check(&secret), None);
        assert!(Tokens::open(engine).unwrap().is_empty());
    }

    #[test]
    fn roles_nest_and_parse() {
        assert!(Role::Admin > Role::Sender && Role::Sender > Role::Viewer);
        assert_eq!("sender".parse::<Role>().unwrap(), Role::Sender);
        let e = "root".parse::<Role>().unwrap_err().to_string();
        assert!(e.contains("admin, sender, viewer"), "{e}");
    }

    #[test]
    fn an_operator_given_admin_token_is_adopted_once_and_must_be_long() {
        let (_, tokens) = tokens();
        let secret = "a-long-enough-operator-secret";
        let a = tokens.adopt(secret, Role::Admin, "configured", 1).unwrap();
        let b = tokens.adopt(secret, Role::Admin, "configured", 2).unwrap();
        assert_eq!(a, b);
        assert_eq!(tokens.list().len(), 1);
        assert!(tokens.adopt("short", Role::Admin, "x", 1).is_err());
        assert!(tokens.create(Role::Viewer, "  ", 1).is_err());
    }
}
