//! What `balance: cache_aware` remembers: per pool, which prompt prefixes it recently sent to
//! which backend, as chained hashes of fixed-size blocks of the canonical prompt, in bounded
//! memory (one LRU of `(block, backend)` entries per pool). Pure: no clocks, no I/O.
//!
//! A block's hash covers every byte before it, so a backend holding block `i` was sent that
//! exact prefix. Blocks are recorded last block first, so within one request the leading
//! blocks are the most recent and evicted last: what a backend holds is (nearly) always a
//! leading run of blocks, and the match length is found by binary search.

use std::collections::HashMap;

/// A request's blocks past this many are not indexed (a prompt of 64k blocks is 8 MB at the
/// default block size; its leading part decides the match).
pub const MAX_REQUEST_BLOCKS: usize = 65_536;

const NIL: usize = usize::MAX;

#[derive(Debug, Clone, Copy)]
struct Slot {
    key: (u64, u64),
    prev: usize,
    next: usize,
}

/// An LRU set of `(block hash, backend id)` with at most `cap` entries.
#[derive(Debug)]
pub struct PrefixIndex {
    cap: usize,
    map: HashMap<(u64, u64), usize>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Most recently used.
    head: usize,
    /// Least recently used: evicted first.
    tail: usize,
}

/// The chained block hashes of a prompt given in `parts` (its head, then the prompt itself,
/// read as one text without copying): one per full block of `block_chars` bytes.
pub fn blocks(parts: &[&[u8]], block_chars: usize) -> Vec<u64> {
    let size = block_chars.max(1);
    let mut out = Vec::new();
    // FNV-1a over each block, seeded with the previous block's hash, then mixed
    let (mut h, mut filled) = (0xcbf2_9ce4_8422_2325u64, 0);
    for &b in parts.iter().flat_map(|p| p.iter()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        filled += 1;
        if filled == size {
            h = crate::balance::mix(h);
            out.push(h);
            filled = 0;
            if out.len() == MAX_REQUEST_BLOCKS {
                break;
            }
        }
    }
    out
}

impl PrefixIndex {
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            map: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
        }
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Entries held (blocks summed over backends).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// How many leading blocks of `blocks` `backend` holds.
    pub fn matched(&self, backend: u64, blocks: &[u64]) -> usize {
        let (mut lo, mut hi) = (0, blocks.len());
        // invariant: the first `lo` blocks are held; block `hi` (if any) is not
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if self.map.contains_key(&(blocks[mid - 1], backend)) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo
    }

    /// Records `blocks` as just sent to `backend`, evicting the least recently used entries
    /// past the capacity.
    pub fn record(&mut self, backend: u64, blocks: &[u64]) {
        for &b in blocks.iter().rev() {
            self.touch((b, backend));
        }
    }

    /// Forgets everything `backend` held (it was ejected, went down or restarted).
    pub fn forget(&mut self, backend: u64) {
        let gone: Vec<usize> = self
            .map
            .iter()
            .filter(|((_, be), _)| *be == backend)
            .map(|(_, &i)| i)
            .collect();
        for i in gone {
            self.remove(i);
        }
    }

    fn touch(&mut self, key: (u64, u64)) {
        if let Some(&i) = self.map.get(&key) {
            self.unlink(i);
            self.push_front(i);
            return;
        }
        if self.map.len() >= self.cap && self.tail != NIL {
            self.remove(self.tail);
        }
        let slot = Slot {
            key,
            prev: NIL,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        };
        self.map.insert(key, i);
        self.push_front(i);
    }

    fn remove(&mut self, i: usize) {
        self.unlink(i);
        self.map.remove(&self.slots[i].key);
        self.free.push(i);
    }

    fn unlink(&mut self, i: usize) {
        let Slot { prev, next, .. } = self.slots[i];
        match prev {
            NIL => self.head = next,
            p => self.slots[p].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.slots[n].prev = prev,
        }
    }

    fn push_front(&mut self, i: usize) {
        self.slots[i].prev = NIL;
        self.slots[i].next = self.head;
        match self.head {
            NIL => self.tail = i,
            h => self.slots[h].prev = i,
        }
        self.head = i;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_chain_so_a_shared_prefix_shares_its_blocks() {
        let a = blocks(&[b"0123456789abcdefXXXX"], 8);
        let b = blocks(&[b"0123456789abcdefYYYYYYYY"], 8);
        assert_eq!(a.len(), 2, "only full blocks");
        assert_eq!(b.len(), 3);
        assert_eq!(a[..], b[..2]);
        let c = blocks(&[b"X123456789abcdef"], 8);
        let split = blocks(&[b"0123456789", b"abcdefYYYYYYYY"], 8);
        assert_eq!(split, b, "a head and a prompt hash as one text");
        assert_ne!(c[1], a[1], "a block's hash covers what came before it");
    }

    #[test]
    fn match_is_the_leading_run_a_backend_holds() {
        let mut ix = PrefixIndex::new(1000);
        let turn1 = blocks(&[&[b'a'; 64]], 8);
        let mut longer = vec![b'a'; 64];
        longer.extend_from_slice(&[b'b'; 32]);
        let turn2 = blocks(&[&longer], 8);
        ix.record(1, &turn1);
        assert_eq!(ix.matched(1, &turn1), 8);
        assert_eq!(ix.matched(1, &turn2), 8, "the earlier turn's blocks");
        assert_eq!(ix.matched(2, &turn2), 0, "another backend holds nothing");
        ix.record(1, &turn2);
        assert_eq!(ix.matched(1, &turn2), 12);
        ix.forget(1);
        assert_eq!(ix.matched(1, &turn2), 0);
        assert!(ix.is_empty());
    }

    #[test]
    fn eviction_takes_the_tail_of_old_prompts_first() {
        let mut ix = PrefixIndex::new(10);
        let old = blocks(&[&[b'o'; 80]], 8);
        ix.record(7, &old);
        ix.record(7, &blocks(&[&[b'n'; 32]], 8)); // 4 new blocks push 4 old ones out
        assert_eq!(ix.len(), 10);
        assert_eq!(
            ix.matched(7, &old),
            6,
            "the old prompt keeps its leading blocks"
        );
    }

    #[test]
    fn a_million_distinct_prompts_stay_within_max_blocks() {
        let mut ix = PrefixIndex::new(5000);
        for i in 0u64..1_000_000 {
            let prompt = format!("{i:08} distinct prompt number {i} with some more text");
            let b = blocks(&[prompt.as_bytes()], 16);
            ix.record(i % 4, &b);
            assert!(ix.len() <= 5000);
        }
        assert_eq!(ix.len(), 5000);
        assert!(ix.slots.len() <= 5000, "slots are reused, not grown");
        let last = blocks(
            &[b"00999999 distinct prompt number 999999 with some more text"],
            16,
        );
        assert_eq!(
            ix.matched(999_999 % 4, &last),
            last.len(),
            "the newest is held"
        );
    }
}
