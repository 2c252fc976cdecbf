//! New key secrets and ids: random from the operating system, shown once, kept as digests.

use crate::config::secret::digest;

/// A new key: its secret (shown once), the digest that is stored, and the hint listings show.
pub struct NewSecret {
    pub secret: String,
    pub digest: String,
    pub hint: String,
}

/// 256 random bits as `sk-<64 hex>`.
pub fn generate() -> Result<NewSecret, String> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| format!("no randomness from the OS: {e}"))?;
    Ok(from_secret(format!("sk-{}", hex::encode(raw))))
}

/// The stored form of a secret the caller chose (a key moved from the file into the store).
pub fn from_secret(secret: String) -> NewSecret {
    NewSecret {
        digest: hex::encode(digest(secret.as_bytes())),
        hint: hint(&secret),
        secret,
    }
}

/// `sk-…a1b2`: enough to tell keys apart in a listing, nothing to guess the rest with.
pub fn hint(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() < 12 {
        return "…".into();
    }
    let head: String = chars.iter().take(3).collect();
    let tail: String = chars.iter().skip(chars.len() - 4).collect();
    format!("{head}…{tail}")
}

/// `key_<ms, 12 hex><random, 8 hex>`: ids sort by creation time.
pub fn new_id(now_ms: u64) -> Result<String, String> {
    let mut raw = [0u8; 4];
    getrandom::fill(&mut raw).map_err(|e| format!("no randomness from the OS: {e}"))?;
    Ok(format!("key_{now_ms:012x}{}", hex::encode(raw)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_only_their_digest_is_kept() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.secret.len(), 67);
        assert!(!a.digest.contains(&a.secret[3..]));
        assert_eq!(a.digest, hex::encode(digest(a.secret.as_bytes())));
        assert_eq!(a.hint.chars().count(), 8);
        assert!(a.hint.starts_with("sk-…") && a.secret.ends_with(&a.hint[6..]));
        assert_eq!(hint("short"), "…");
    }

    #[test]
    fn ids_sort_by_time() {
        let a = new_id(1_000).unwrap();
        let b = new_id(2_000).unwrap();
        assert!(a < b, "{a} {b}");
        assert_eq!(a.len(), 24);
    }
}
