//! The mock's prefix-cache model, standing in for vLLM's automatic prefix caching: an LRU of
//! the prompt's 64-character blocks (each identified by everything before it), a capacity in
//! blocks, and a prefill time proportional to the characters not found in it. Its own text
//! form of the prompt (roles and contents, not the JSON), so it judges the gateway's routing
//! independently of how the gateway hashes.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

/// Characters per cached block.
pub const BLOCK: usize = 64;

/// Cached blocks by last use.
#[derive(Debug, Default)]
pub struct PrefixCache {
    cap: usize,
    stamp: u64,
    by_hash: HashMap<u64, u64>,
    by_stamp: BTreeMap<u64, u64>,
    /// Prompt characters looked up, and those found cached.
    pub queried: u64,
    pub hits: u64,
}

/// What a prompt looks like to the model: each turn's role and text, in order.
pub fn prompt_text(v: &Value) -> String {
    let mut s = String::new();
    let mut push = |role: &str, c: &Value| {
        s.push_str(role);
        s.push(':');
        match c {
            Value::String(t) => s.push_str(t),
            Value::Array(parts) => {
                for p in parts {
                    s.push_str(p["text"].as_str().unwrap_or(""));
                }
            }
            _ => {}
        }
        s.push('\n');
    };
    if !v["system"].is_null() {
        push("system", &v["system"]);
    }
    match (&v["messages"], &v["prompt"]) {
        (Value::Array(turns), _) => {
            for t in turns {
                push(t["role"].as_str().unwrap_or(""), &t["content"]);
            }
        }
        (_, p) => push("prompt", p),
    }
    s
}

impl PrefixCache {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            ..Self::default()
        }
    }

    /// Looks `text` up block by block (a block counts only if every block before it did) and
    /// caches all of it; returns the characters that were not cached.
    pub fn admit(&mut self, text: &str) -> usize {
        let bytes = text.as_bytes();
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        let mut cached = 0;
        let mut hashes = Vec::with_capacity(bytes.len() / BLOCK);
        for block in bytes.chunks_exact(BLOCK) {
            for b in block {
                h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
            }
            hashes.push(h);
        }
        let mut run = true;
        for &hash in &hashes {
            run &= self.by_hash.contains_key(&hash);
            if run {
                cached += BLOCK;
            }
            self.touch(hash);
        }
        self.queried += bytes.len() as u64;
        self.hits += cached as u64;
        bytes.len() - cached
    }

    fn touch(&mut self, hash: u64) {
        if self.cap == 0 {
            return;
        }
        self.stamp += 1;
        if let Some(old) = self.by_hash.insert(hash, self.stamp) {
            self.by_stamp.remove(&old);
        }
        self.by_stamp.insert(self.stamp, hash);
        while self.by_hash.len() > self.cap {
            let Some((_, oldest)) = self.by_stamp.pop_first() else {
                break;
            };
            self.by_hash.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_prefix_is_cached_and_capacity_evicts() {
        let mut c = PrefixCache::new(4);
        let a = "a".repeat(200);
        assert_eq!(c.admit(&a), 200, "cold");
        assert_eq!(
            c.admit(&format!("{a}more")),
            200 + 4 - 3 * BLOCK,
            "three blocks held"
        );
        assert_eq!(c.hits, 3 * BLOCK as u64);
        c.admit(&"b".repeat(256)); // four new blocks push the old ones out
        assert_eq!(c.admit(&a), 200);
        let v: Value = serde_json::json!({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}]});
        assert_eq!(prompt_text(&v), "system:S\nuser:hi\n");
    }
}
