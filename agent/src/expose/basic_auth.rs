//! Basic auth with bcrypt hashes (`basic_auth_users` of the web configuration), as
//! exporter-toolkit checks it. bcrypt costs tens of milliseconds per check by design, so a
//! password that matched is remembered (by a SHA-256 of user, password and hash, bounded); checks
//! run on tokio's blocking threads; an unknown user costs a check against a dummy hash, so the
//! time of a refusal does not tell which users exist.

use ring::digest;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

/// Remembered good passwords; when full, it is emptied (users then pay one bcrypt again).
const MAX_REMEMBERED: usize = 1024;
/// A bcrypt hash at cost 10, compared against when the user is unknown.
static DUMMY_HASH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    bcrypt::hash_with_salt("loupe", 10, [7; 16])
        .map(|h| h.format_for_version(bcrypt::Version::TwoY))
        .unwrap_or_default()
});

#[derive(Default, Clone)]
pub struct Users {
    hashes: Arc<BTreeMap<String, String>>,
    good: Arc<Mutex<HashSet<[u8; 32]>>>,
}

impl Users {
    /// Checks that every hash is bcrypt; the error names the user.
    pub fn new(hashes: BTreeMap<String, String>) -> Result<Users, (String, String)> {
        for (user, hash) in &hashes {
            if user.contains(':') {
                return Err((user.clone(), "a user name cannot hold ':'".into()));
            }
            if hash.parse::<bcrypt::HashParts>().is_err() {
                return Err((
                    user.clone(),
                    "not a bcrypt hash ($2a$, $2b$ or $2y$; htpasswd -nBC 10 USER makes one)"
                        .into(),
                ));
            }
        }
        Ok(Users {
            hashes: Arc::new(hashes),
            good: Arc::default(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Whether `authorization` (the header's value) names a user with the right password.
    pub async fn check(&self, authorization: Option<&[u8]>) -> bool {
        let Some((user, password)) = authorization.and_then(credentials) else {
            return false;
        };
        let hash = self.hashes.get(&user).cloned();
        let key = remembered_key(&user, &password, hash.as_deref().unwrap_or(&DUMMY_HASH));
        if hash.is_some()
            && self
                .good
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&key)
        {
            return true;
        }
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| DUMMY_HASH.clone());
        let matched = tokio::task::spawn_blocking(move || {
            bcrypt::verify(password.as_bytes(), &hash).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        if matched && known {
            let mut good = self.good.lock().unwrap_or_else(|e| e.into_inner());
            if good.len() >= MAX_REMEMBERED {
                good.clear();
            }
            good.insert(key);
        }
        matched && known
    }
}

fn remembered_key(user: &str, password: &str, hash: &str) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in [user, password, hash] {
        ctx.update(&(part.len() as u64).to_le_bytes());
        ctx.update(part.as_bytes());
    }
    let mut key = [0; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}

/// `Basic base64(user:password)`.
fn credentials(header: &[u8]) -> Option<(String, String)> {
    use base64::Engine as _;
    let encoded = header
        .strip_prefix(b"Basic ")
        .or_else(|| header.strip_prefix(b"basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim_ascii())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn header(user: &str, password: &str) -> Vec<u8> {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {encoded}").into_bytes()
    }

    #[tokio::test]
    async fn the_right_password_passes_and_nothing_else_does() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let users = Users::new(BTreeMap::from([("alice".to_string(), hash)])).unwrap();
        assert!(users.check(Some(&header("alice", "s3cret"))).await);
        // Remembered: passes again without bcrypt.
        assert!(users.check(Some(&header("alice", "s3cret"))).await);
        assert!(!users.check(Some(&header("alice", "wrong"))).await);
        assert!(!users.check(Some(&header("bob", "s3cret"))).await);
        assert!(!users.check(Some(b"Bearer abc")).await);
        assert!(!users.check(Some(b"Basic !!!notbase64")).await);
        assert!(!users.check(None).await);
    }

    #[test]
    fn the_dummy_hash_is_bcrypt() {
        assert!(DUMMY_HASH.parse::<bcrypt::HashParts>().is_ok());
        assert!(Users::new(BTreeMap::from([("a".to_string(), "x".to_string())])).is_err());
    }
}
