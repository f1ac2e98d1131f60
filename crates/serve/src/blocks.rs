//! KV block bookkeeping: a pool of fixed-size blocks with reference counts, and a prefix cache
//! that lets sequences with identical prompt prefixes share the blocks holding them.
//!
//! Block 0 is the scratch block of [`silica_models::paged`] and is never handed out. A block is
//! *in use* while some sequence references it. A freed block that holds a full, registered
//! prefix block keeps its contents and stays findable until it is handed out again; free blocks
//! are reused least recently freed first, so recently used prefixes survive longest.

use std::collections::{HashMap, VecDeque};

/// Identity of a full block's contents: the content id of the block before it (0 for the first
/// block) and its tokens. Keys are exact (no hash collisions can alias two prefixes).
type Key = (u64, Vec<u32>);

#[derive(Clone, Debug, Default)]
struct Meta {
    refs: u32,
    /// The prefix-cache entry this block holds, if registered.
    key: Option<Key>,
    /// Content id of that entry (unique per registration).
    cid: u64,
}

#[derive(Debug)]
pub struct BlockManager {
    pub block_size: usize,
    meta: Vec<Meta>,
    /// Candidates for allocation, oldest first; entries whose block is referenced again are
    /// skipped lazily (a block may appear more than once).
    free: VecDeque<u32>,
    num_free: usize,
    cache: HashMap<Key, u32>,
    next_cid: u64,
}

/// A sequence's view of the prefix cache: the content id of its last registered block.
#[derive(Clone, Debug, Default)]
pub struct PrefixCursor {
    pub registered_blocks: usize,
    pub last_cid: u64,
}

impl BlockManager {
    /// A pool of `num_blocks` blocks, of which block 0 is scratch.
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        assert!(num_blocks >= 2 && block_size >= 1, "checked by the engine");
        BlockManager {
            block_size,
            meta: vec![Meta::default(); num_blocks],
            free: (1..num_blocks as u32).collect(),
            num_free: num_blocks - 1,
            cache: HashMap::new(),
            next_cid: 1,
        }
    }

    /// Blocks sequences can own (the pool less the scratch block).
    pub fn capacity(&self) -> usize {
        self.meta.len() - 1
    }

    pub fn num_free(&self) -> usize {
        self.num_free
    }

    pub fn in_use(&self) -> usize {
        self.capacity() - self.num_free
    }

    /// Takes a free block (evicting the prefix-cache entry it held), or None when all are used.
    pub fn allocate(&mut self) -> Option<u32> {
        while let Some(b) = self.free.pop_front() {
            let m = &mut self.meta[b as usize];
            if m.refs > 0 {
                continue; // Revived by a prefix hit after it was freed.
            }
            if let Some(k) = m.key.take() {
                self.cache.remove(&k);
            }
            m.refs = 1;
            self.num_free -= 1;
            return Some(b);
        }
        None
    }

    /// Forgets every cached prefix: after a failed step the pools' contents are unspecified
    /// (`Executable::execute`), so no block may be found by its tokens again. Free blocks stay
    /// free; references are untouched.
    pub fn forget_contents(&mut self) {
        self.cache.clear();
        for m in &mut self.meta {
            m.key = None;
        }
    }

    /// Drops one reference to each block.
    pub fn release(&mut self, blocks: &[u32]) {
        for &b in blocks {
            let m = &mut self.meta[b as usize];
            debug_assert!(m.refs > 0, "double free of block {b}");
            if m.refs == 0 {
                continue;
            }
            m.refs -= 1;
            if m.refs == 0 {
                self.num_free += 1;
                self.free.push_back(b);
            }
        }
        // Keep the lazy free list from growing without bound.
        if self.free.len() > 4 * self.meta.len() {
            let meta = &self.meta;
            let mut seen = vec![false; meta.len()];
            self.free.retain(|&b| {
                let keep = meta[b as usize].refs == 0 && !seen[b as usize];
                seen[b as usize] = true;
                keep
            });
        }
    }

    /// The cached blocks holding the longest prefix of `tokens` made of full blocks, at most
    /// `max_blocks` of them, each referenced once more for the caller. Returns the blocks and the
    /// cursor to continue registering from.
    pub fn lookup(&mut self, tokens: &[u32], max_blocks: usize) -> (Vec<u32>, PrefixCursor) {
        let bs = self.block_size;
        let mut blocks = Vec::new();
        let mut cur = PrefixCursor::default();
        for chunk in tokens.chunks_exact(bs).take(max_blocks) {
            let Some(&b) = self.cache.get(&(cur.last_cid, chunk.to_vec())) else {
                break;
            };
            let m = &mut self.meta[b as usize];
            if m.refs == 0 {
                self.num_free -= 1;
            }
            m.refs += 1;
            cur.last_cid = m.cid;
            cur.registered_blocks += 1;
            blocks.push(b);
        }
        (blocks, cur)
    }

    /// Registers the full blocks of a sequence whose first `computed` tokens are in its blocks.
    pub fn register(
        &mut self,
        cur: &mut PrefixCursor,
        tokens: &[u32],
        blocks: &[u32],
        computed: usize,
    ) {
        let bs = self.block_size;
        let full = (computed / bs).min(blocks.len());
        while cur.registered_blocks < full {
            let i = cur.registered_blocks;
            let key = (cur.last_cid, tokens[i * bs..(i + 1) * bs].to_vec());
            let b = blocks[i];
            match self.cache.get(&key) {
                // Another sequence computed the same block first: continue the chain from its
                // entry so later blocks of both remain findable.
                Some(&other) => cur.last_cid = self.meta[other as usize].cid,
                None => {
                    let m = &mut self.meta[b as usize];
                    if m.key.is_some() {
                        // Already holds an entry (a shared block): keep it.
                        cur.last_cid = m.cid;
                    } else {
                        let cid = self.next_cid;
                        self.next_cid += 1;
                        m.key = Some(key.clone());
                        m.cid = cid;
                        self.cache.insert(key, b);
                        cur.last_cid = cid;
                    }
                }
            }
            cur.registered_blocks += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_release_counts_and_never_hands_out_scratch() {
        let mut m = BlockManager::new(5, 2);
        assert_eq!(m.capacity(), 4);
        let got: Vec<u32> = (0..4).map(|_| m.allocate().unwrap()).collect();
        assert!(!got.contains(&0));
        assert_eq!(m.allocate(), None);
        assert_eq!(m.in_use(), 4);
        m.release(&got);
        assert_eq!(m.in_use(), 0);
        assert_eq!(m.num_free(), 4);
    }

    #[test]
    fn identical_prefixes_share_blocks_until_evicted() {
        let mut m = BlockManager::new(8, 2);
        let toks = [1, 2, 3, 4, 5];
        let blocks: Vec<u32> = (0..3).map(|_| m.allocate().unwrap()).collect();
        let mut cur = PrefixCursor::default();
        m.register(&mut cur, &toks, &blocks, 5);
        assert_eq!(cur.registered_blocks, 2); // the partial third block is not shared
                                              // A second sequence with the same first 4 tokens shares 2 blocks.
        let (hit, c2) = m.lookup(&[1, 2, 3, 4, 9], 2);
        assert_eq!(hit, blocks[..2].to_vec());
        assert_eq!(c2.registered_blocks, 2);
        assert_eq!(m.in_use(), 3);
        // A different second block shares only the first.
        let (hit2, _) = m.lookup(&[1, 2, 7, 7], 2);
        assert_eq!(hit2, vec![blocks[0]]);
        m.release(&hit2);
        m.release(&hit);
        m.release(&blocks);
        assert_eq!(m.in_use(), 0);
        // Freed but cached: still found, and revived without allocation.
        let (hit3, _) = m.lookup(&toks, 2);
        assert_eq!(hit3, blocks[..2].to_vec());
        assert_eq!(m.in_use(), 2);
        m.release(&hit3);
        // Allocating every block evicts the entries.
        let all: Vec<u32> = (0..7).map(|_| m.allocate().unwrap()).collect();
        assert_eq!(m.allocate(), None);
        m.release(&all);
        let (hit4, _) = m.lookup(&toks, 2);
        assert!(hit4.is_empty());
    }

    #[test]
    fn a_block_position_depends_on_the_whole_prefix() {
        let mut m = BlockManager::new(8, 2);
        let a: Vec<u32> = (0..2).map(|_| m.allocate().unwrap()).collect();
        let mut cur = PrefixCursor::default();
        m.register(&mut cur, &[1, 2, 3, 4], &a, 4);
        // Same second block after a different first block: no hit for the second.
        let (hit, _) = m.lookup(&[9, 9, 3, 4], 2);
        assert!(hit.is_empty());
    }
}
