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

/// `sk-…a1b2`: enough to tell keys apart in a listing, nothing to guess the rest with. The
/// `sk-` prefix is shown only as the common prefix it is; a chosen secret shorter than 32
/// characters shows 2 characters, under 16 none.
pub fn hint(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    let head = if secret.starts_with("sk-") { "sk-" } else { "" };
    let shown = match chars.len() {
        n if n >= 32 => 4,
        n if n >= 16 => 2,
        _ => 0,
    };
    let tail: String = chars.iter().skip(chars.len() - shown).collect();
    format!("{head}…{tail}")
}

/// `key_<ms, 12 hex><random, 8 hex>`: ids sort by creation time.
pub fn new_id(now_ms: u64) -> Result<String, String> {
    time_id("key_", now_ms)
}

/// `prefix`, the time in ms (hex, so ids sort by time) and 4 random bytes: unique across
/// processes without coordination.
pub fn time_id(prefix: &str, now_ms: u64) -> Result<String, String> {
    let mut raw = [0u8; 4];
    getrandom::fill(&mut raw).map_err(|e| format!("no randomness from the OS: {e}"))?;
    Ok(format!("{prefix}{now_ms:012x}{}", hex::encode(raw)))
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
        assert_eq!(
            hint("sk-moved-into-store"),
            "sk-…re",
            "a short chosen secret shows less"
        );
        assert_eq!(hint("0123456789abcdef0123456789abcdef"), "…cdef");
    }

    #[test]
    fn ids_sort_by_time() {
        let a = new_id(1_000).unwrap();
        let b = new_id(2_000).unwrap();
        assert!(a < b, "{a} {b}");
        assert_eq!(a.len(), 24);
    }
}
