//! Bearer tokens: the admin token, declared tokens (kept as SHA-256
//! hashes) and issued tokens (`plx1.<claims>.<mac>`, HMAC-SHA256 with the
//! cluster's signing key).

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::{digest, hmac};
use serde::{Deserialize, Serialize};

use crate::{Caller, Principal, Rate, Unauthenticated};

/// How every issued token starts (the format's version).
pub const TOKEN_PREFIX: &str = "plx1.";

/// The shortest signing key taken (bytes).
const MIN_KEY: usize = 32;

/// SHA-256 of a token, in hex: what a config file stores instead of it.
pub fn hash_token(token: &str) -> String {
    let d = digest::digest(&digest::SHA256, token.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A token declared in the node's config (`[[api.tokens]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct DeclaredToken {
    pub name: String,
    pub principal: Principal,
    /// [`hash_token`] of the token.
    pub sha256: String,
    pub rate: Option<Rate>,
}

/// What an issued token says. Signed, not encrypted: it holds no secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// Unique; what revocation names.
    pub id: String,
    /// `admin`, `operator`, `reader` or `plugin:NAME`.
    pub principal: String,
    pub issued_ms: u64,
    pub expires_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
}

/// Why a token could not be issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    #[error("this node has no signing key ([api] signing_key_file): it cannot issue tokens")]
    NoSigningKey,
    #[error("a token's lifetime must be positive")]
    NoLifetime,
}

/// Resolves bearer tokens to callers.
pub struct Authenticator {
    admin: Option<String>,
    declared: Vec<DeclaredToken>,
    signing: Option<hmac::Key>,
    /// Ids of revoked issued tokens (the node keeps it in step with the
    /// replicated set).
    revoked: RwLock<HashSet<String>>,
    /// Tokens the node made for the plugins it hosts (hash → caller), valid
    /// on this node while the plugin runs here.
    local: RwLock<HashMap<String, Caller>>,
}

/// A caller and the rate its credential allows (none: the node default).
pub type Authenticated = (Caller, Option<Rate>);

impl Authenticator {
    /// `signing_key` shorter than 32 bytes is refused by the caller's
    /// config check; here it is simply not used.
    pub fn new(
        admin_token: Option<&str>,
        declared: Vec<DeclaredToken>,
        signing_key: Option<&[u8]>,
    ) -> Authenticator {
        Authenticator {
            admin: admin_token.map(hash_token),
            declared,
            signing: signing_key
                .filter(|k| k.len() >= MIN_KEY)
                .map(|k| hmac::Key::new(hmac::HMAC_SHA256, k)),
            revoked: RwLock::new(HashSet::new()),
            local: RwLock::new(HashMap::new()),
        }
    }

    /// Accept `token` as `caller` on this node (a hosted plugin's own
    /// credential), replacing any earlier token of the same credential.
    pub fn register_local(&self, token: &str, caller: Caller) {
        if let Ok(mut l) = self.local.write() {
            l.retain(|_, c| c.credential != caller.credential);
            l.insert(hash_token(token), caller);
        }
    }

    /// Stop accepting the local token of `credential`.
    pub fn forget_local(&self, credential: &str) {
        if let Ok(mut l) = self.local.write() {
            l.retain(|_, c| c.credential != credential);
        }
    }

    /// The shortest signing key [`Authenticator::new`] takes, in bytes.
    pub const MIN_SIGNING_KEY: usize = MIN_KEY;

    /// No credential of any kind: the API is open (loopback use).
    pub fn is_open(&self) -> bool {
        self.admin.is_none() && self.declared.is_empty() && self.signing.is_none()
    }

    pub fn can_issue(&self) -> bool {
        self.signing.is_some()
    }

    /// Who presents `token` at `now_ms`.
    pub fn authenticate(&self, token: &str, now_ms: u64) -> Result<Authenticated, Unauthenticated> {
        let token = token.trim();
        if token.is_empty() {
            return Err(Unauthenticated::Missing);
        }
        if let Some(rest) = token.strip_prefix(TOKEN_PREFIX) {
            return self.verify_issued(rest, now_ms);
        }
        // Digests, not secrets, are compared: a timing difference tells
        // nothing about the token.
        let h = hash_token(token);
        if self.admin.as_deref() == Some(h.as_str()) {
            let c = Caller {
                principal: Principal::Admin,
                credential: "admin-token".into(),
            };
            return Ok((c, None));
        }
        if let Some(c) = self.local.read().ok().and_then(|l| l.get(&h).cloned()) {
            return Ok((c, None));
        }
        match self.declared.iter().find(|d| d.sha256 == h) {
            Some(d) => Ok((
                Caller {
                    principal: d.principal.clone(),
                    credential: d.name.clone(),
                },
                d.rate,
            )),
            None => Err(Unauthenticated::Wrong),
        }
    }

    fn verify_issued(&self, rest: &str, now_ms: u64) -> Result<Authenticated, Unauthenticated> {
        let key = self.signing.as_ref().ok_or(Unauthenticated::Wrong)?;
        let (claims_b64, mac_b64) = rest.split_once('.').ok_or(Unauthenticated::Wrong)?;
        let mac = B64.decode(mac_b64).map_err(|_| Unauthenticated::Wrong)?;
        let signed = format!("{TOKEN_PREFIX}{claims_b64}");
        hmac::verify(key, signed.as_bytes(), &mac).map_err(|_| Unauthenticated::Wrong)?;
        // Signed by a key holder from here on.
        let raw = B64.decode(claims_b64).map_err(|_| Unauthenticated::Wrong)?;
        let c: Claims = serde_json::from_slice(&raw).map_err(|_| Unauthenticated::Wrong)?;
        let principal = Principal::parse(&c.principal).map_err(|_| Unauthenticated::Wrong)?;
        if now_ms >= c.expires_ms {
            return Err(Unauthenticated::Expired);
        }
        if self.is_revoked(&c.id) {
            return Err(Unauthenticated::Revoked);
        }
        Ok((
            Caller {
                principal,
                credential: c.id,
            },
            c.rate,
        ))
    }

    /// A token for `principal`, valid `ttl_ms` from `now_ms`, named `id`.
    pub fn issue(
        &self,
        principal: &Principal,
        id: &str,
        ttl_ms: u64,
        rate: Option<Rate>,
        now_ms: u64,
    ) -> Result<(String, Claims), IssueError> {
        let key = self.signing.as_ref().ok_or(IssueError::NoSigningKey)?;
        if ttl_ms == 0 {
            return Err(IssueError::NoLifetime);
        }
        let claims = Claims {
            id: id.to_string(),
            principal: principal.to_string(),
            issued_ms: now_ms,
            expires_ms: now_ms.saturating_add(ttl_ms),
            rate,
        };
        let json = serde_json::to_vec(&claims).expect("claims serialise");
        let signed = format!("{TOKEN_PREFIX}{}", B64.encode(json));
        let tag = hmac::sign(key, signed.as_bytes());
        Ok((format!("{signed}.{}", B64.encode(tag.as_ref())), claims))
    }

    pub fn is_revoked(&self, id: &str) -> bool {
        self.revoked.read().map(|r| r.contains(id)).unwrap_or(true)
    }

    /// Replace the revoked ids (from the replicated set).
    pub fn set_revoked(&self, ids: HashSet<String>) {
        if let Ok(mut r) = self.revoked.write() {
            *r = ids;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn auth() -> Authenticator {
        Authenticator::new(
            Some("the-admin-token-0123"),
            vec![DeclaredToken {
                name: "grafana".into(),
                principal: Principal::Reader,
                sha256: hash_token("reader-secret-0123456"),
                rate: Some(Rate::per_second(5.0)),
            }],
            Some(KEY),
        )
    }

    #[test]
    fn admin_and_declared_tokens_resolve_and_others_do_not() {
        let a = auth();
        let (c, _) = a.authenticate("the-admin-token-0123", 0).unwrap();
        assert_eq!(c.principal, Principal::Admin);
        let (c, rate) = a.authenticate("reader-secret-0123456", 0).unwrap();
        assert_eq!(
            (c.principal, c.credential.as_str()),
            (Principal::Reader, "grafana")
        );
        assert_eq!(rate, Some(Rate::per_second(5.0)));
        assert_eq!(a.authenticate("nope", 0), Err(Unauthenticated::Wrong));
        assert_eq!(a.authenticate(" ", 0), Err(Unauthenticated::Missing));
        assert!(!a.is_open());
        assert!(Authenticator::new(None, vec![], None).is_open());
    }

    #[test]
    fn issued_tokens_verify_expire_and_revoke() {
        let a = auth();
        let p = Principal::Plugin("jira".into());
        let (t, claims) = a.issue(&p, "t1", 1_000, None, 10_000).unwrap();
        assert!(t.starts_with(TOKEN_PREFIX));
        assert_eq!(claims.expires_ms, 11_000);
        let (c, _) = a.authenticate(&t, 10_500).unwrap();
        assert_eq!((c.principal, c.credential.as_str()), (p.clone(), "t1"));
        assert_eq!(a.authenticate(&t, 11_000), Err(Unauthenticated::Expired));
        // Another node with the same key verifies it; one without does not.
        let b = Authenticator::new(None, vec![], Some(KEY));
        assert!(b.authenticate(&t, 10_500).is_ok());
        let other = Authenticator::new(None, vec![], Some(b"another-key-another-key-another-key"));
        assert_eq!(other.authenticate(&t, 10_500), Err(Unauthenticated::Wrong));
        a.set_revoked(["t1".to_string()].into());
        assert_eq!(a.authenticate(&t, 10_500), Err(Unauthenticated::Revoked));
    }

    #[test]
    fn a_tampered_token_is_refused() {
        let a = auth();
        let (t, _) = a.issue(&Principal::Reader, "t2", 60_000, None, 0).unwrap();
        // Swap the claims for an admin's, keeping the reader's signature.
        let (_, mac) = t.rsplit_once('.').unwrap();
        let forged_claims = Claims {
            id: "t2".into(),
            principal: "admin".into(),
            issued_ms: 0,
            expires_ms: 60_000,
            rate: None,
        };
        let forged = format!(
            "{TOKEN_PREFIX}{}.{mac}",
            B64.encode(serde_json::to_vec(&forged_claims).unwrap())
        );
        assert_eq!(a.authenticate(&forged, 1), Err(Unauthenticated::Wrong));
        assert_eq!(
            a.authenticate("plx1.garbage", 1),
            Err(Unauthenticated::Wrong)
        );
        assert_eq!(a.authenticate("plx1.a.b.c", 1), Err(Unauthenticated::Wrong));
    }

    #[test]
    fn local_tokens_come_and_go() {
        let a = Authenticator::new(None, vec![], None);
        let c = Caller {
            principal: Principal::Plugin("kv".into()),
            credential: "hosted:kv".into(),
        };
        a.register_local("first-token-0123456789", c.clone());
        assert_eq!(a.authenticate("first-token-0123456789", 0).unwrap().0, c);
        a.register_local("second-token-0123456789", c.clone());
        assert_eq!(
            a.authenticate("first-token-0123456789", 0),
            Err(Unauthenticated::Wrong)
        );
        assert!(a.authenticate("second-token-0123456789", 0).is_ok());
        a.forget_local("hosted:kv");
        assert_eq!(
            a.authenticate("second-token-0123456789", 0),
            Err(Unauthenticated::Wrong)
        );
        assert!(a.is_open(), "local tokens do not close an open API");
    }

    #[test]
    fn no_key_no_issuing() {
        let a = Authenticator::new(Some("the-admin-token-0123"), vec![], None);
        assert_eq!(
            a.issue(&Principal::Reader, "x", 1, None, 0).unwrap_err(),
            IssueError::NoSigningKey
        );
        // A short key is not used either.
        let a = Authenticator::new(None, vec![], Some(b"short"));
        assert!(!a.can_issue());
    }
}
