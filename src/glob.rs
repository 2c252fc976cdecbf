//! Model-name globs: `*` matches any run of characters. Pure and a leaf: config, auth, limits
//! and pricing all match model names with it.

/// A glob where `*` matches any run of characters (including none); everything else is literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    /// The pattern as written (a stable identity for counters kept across reloads).
    pattern: String,
    parts: Vec<String>,
    anchored_start: bool,
    anchored_end: bool,
}

impl Glob {
    pub fn new(pattern: &str) -> Self {
        Self {
            pattern: pattern.to_string(),
            parts: pattern
                .split('*')
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect(),
            anchored_start: !pattern.starts_with('*'),
            anchored_end: !pattern.ends_with('*'),
        }
    }

    /// The pattern as written.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    pub fn matches(&self, s: &str) -> bool {
        if self.parts.is_empty() {
            // "" matches only "", "*" (or "**") matches everything
            return !(self.anchored_start && self.anchored_end) || s.is_empty();
        }
        let mut rest = s;
        let last = self.parts.len() - 1;
        for (i, part) in self.parts.iter().enumerate() {
            if i == 0 && self.anchored_start {
                let Some(r) = rest.strip_prefix(part.as_str()) else {
                    return false;
                };
                rest = r;
                if i == last && self.anchored_end {
                    return rest.is_empty();
                }
                continue;
            }
            if i == last && self.anchored_end {
                return rest.len() >= part.len() && rest.ends_with(part.as_str());
            }
            match rest.find(part.as_str()) {
                Some(pos) => rest = &rest[pos + part.len()..],
                None => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn glob_cases() {
        let g = |p: &str, s: &str| Glob::new(p).matches(s);
        assert!(g("*", ""));
        assert!(g("*", "x"));
        assert!(g("", ""));
        assert!(!g("", "x"));
        assert!(g("ollama/*", "ollama/llama3"));
        assert!(!g("ollama/*", "xollama/llama3"));
        assert!(g("gpt-4o*", "gpt-4o"));
        assert!(g("*-mini", "gpt-4o-mini"));
        assert!(!g("*-mini", "gpt-4o-mini2"));
        assert!(g("a*b*c", "abc"));
        assert!(g("a*b*c", "aXbYc"));
        assert!(!g("a*b*c", "aXbY"));
        assert!(!g("aba*aba", "aba"), "prefix and suffix must not overlap");
        assert!(g("exact", "exact"));
        assert!(!g("exact", "exactly"));
    }

    fn naive(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, _) => s.is_empty(),
            (Some(b'*'), _) => naive(&p[1..], s) || (!s.is_empty() && naive(p, &s[1..])),
            (Some(c), Some(d)) => c == d && naive(&p[1..], &s[1..]),
            (Some(_), None) => false,
        }
    }

    proptest! {
        #[test]
        fn glob_agrees_with_a_naive_matcher(p in "[ab*]{0,6}", s in "[ab]{0,8}") {
            prop_assert_eq!(Glob::new(&p).matches(&s), naive(p.as_bytes(), s.as_bytes()));
        }
    }
}
