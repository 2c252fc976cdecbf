//! Secret values from the config: literal, `env:VAR`, `${VAR}` inside a string, or `sha256:<hex>`.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::errors::ConfigError;

/// A resolved secret. `Debug` and `Display` never print the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub(crate) fn new(value: String) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(*****)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("*****")
    }
}

/// Where environment variables come from; tests pass a map instead of mutating the process env.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Resolves `env:VAR` (the whole value) or `${VAR}` (anywhere in the value); anything else is
/// literal. `${VAR:-default}` is refused: a secret never falls back to a value in the file.
pub fn resolve(path: &str, raw: &str, env: EnvLookup<'_>) -> Result<Secret, ConfigError> {
    let value = if let Some(var) = raw.strip_prefix("env:") {
        lookup(path, var, env)?
    } else {
        expand(path, raw, env)?
    };
    if value.is_empty() {
        return Err(ConfigError::new(path, "secret resolves to an empty string"));
    }
    Ok(Secret(value))
}

/// Resolves a client key to the SHA-256 digest the gateway stores; `sha256:<hex>` is taken as is,
/// so operators never need the plaintext in the file.
pub fn resolve_key_digest(
    path: &str,
    raw: &str,
    env: EnvLookup<'_>,
) -> Result<[u8; 32], ConfigError> {
    if let Some(hexdigest) = raw.strip_prefix("sha256:") {
        let mut out = [0u8; 32];
        hex::decode_to_slice(hexdigest.trim(), &mut out)
            .map_err(|_| ConfigError::new(path, "sha256: must be followed by 64 hex characters"))?;
        return Ok(out);
    }
    let secret = resolve(path, raw, env)?;
    Ok(digest(secret.expose().as_bytes()))
}

pub fn digest(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn lookup(path: &str, var: &str, env: EnvLookup<'_>) -> Result<String, ConfigError> {
    if var.is_empty() {
        return Err(ConfigError::new(path, "empty environment variable name"));
    }
    env(var).ok_or_else(|| ConfigError::new(path, format!("environment variable {var} is not set")))
}

fn expand(path: &str, raw: &str, env: EnvLookup<'_>) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| ConfigError::new(path, "unterminated ${ in value"))?;
        let inner = &after[..end];
        if let Some((var, _)) = inner.split_once(":-") {
            // a misspelt or unset variable would silently make the default the secret
            return Err(ConfigError::new(
                path,
                format!(
                    "${{{var}:-...}}: a secret cannot have a default; set {var} or write the value"
                ),
            ));
        }
        let value = lookup(path, inner, env)?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "K").then(|| "sk-from-env".to_string())
    }

    #[test]
    fn literal_env_and_braces_resolve() {
        assert_eq!(resolve("p", "sk-lit", &env).unwrap().expose(), "sk-lit");
        assert_eq!(resolve("p", "env:K", &env).unwrap().expose(), "sk-from-env");
        assert_eq!(
            resolve("p", "Bearer ${K}!", &env).unwrap().expose(),
            "Bearer sk-from-env!"
        );
    }

    #[test]
    fn missing_variable_names_path_and_variable() {
        let e = resolve("pools.openai.api_key", "env:NOPE", &env).unwrap_err();
        assert_eq!(
            e.to_string(),
            "pools.openai.api_key: environment variable NOPE is not set"
        );
    }

    #[test]
    fn a_default_in_a_secret_is_refused_naming_the_variable() {
        let e = resolve("keys[0].key", "${KEY_TYPO:-sk-dev}", &env).unwrap_err();
        assert_eq!(
            e.to_string(),
            "keys[0].key: ${KEY_TYPO:-...}: a secret cannot have a default; set KEY_TYPO or write the value"
        );
        assert!(
            !e.to_string().contains("sk-dev"),
            "the default is not echoed"
        );
        assert!(
            resolve("p", "${K:-x}", &env).is_err(),
            "even when the variable is set"
        );
    }

    #[test]
    fn sha256_keys_are_taken_verbatim() {
        let d = digest(b"sk-x");
        let raw = format!("sha256:{}", hex::encode(d));
        assert_eq!(resolve_key_digest("k", &raw, &env).unwrap(), d);
        assert_eq!(resolve_key_digest("k", "sk-x", &env).unwrap(), d);
        assert!(resolve_key_digest("k", "sha256:zz", &env).is_err());
    }

    #[test]
    fn debug_never_shows_the_value() {
        let s = resolve("p", "sk-secret", &env).unwrap();
        assert!(!format!("{s:?} {s}").contains("sk-secret"));
    }
}
