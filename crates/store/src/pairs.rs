//! The in-memory free set behind the allocators: O(1) uniform choice at any occupancy.
//!
//! Pairs `(a, b)` with `a < b < m` are numbered in colexicographic order,
//! `index = b(b-1)/2 + a`, which gives a dense range `0..m(m-1)/2` and a closed-form inverse,
//! so no table of pairs is kept. The free indices live in a dense array with a position map:
//! choosing is one random draw into the array plus a swap-remove, whatever the occupancy.

use rand::{Rng, RngExt};

/// Index of the pair `(a, b)`, `a < b`. The caller guarantees `a < b`.
pub fn pair_index(a: u32, b: u32) -> u32 {
    debug_assert!(a < b);
    let b = u64::from(b);
    // Callers stay below 65,536 elements, so the index fits in u32.
    (b * b.saturating_sub(1) / 2 + u64::from(a)) as u32
}

/// The pair `(a, b)` with `a < b` of an index: the inverse of [`pair_index`].
pub fn pair_from_index(index: u32) -> (u32, u32) {
    // For index in [b(b-1)/2, b(b+1)/2): 8·index+1 lies in [(2b-1)², (2b+1)²-4], so the integer
    // square root is 2b-1 or 2b and ⌈isqrt/2⌉ is exactly b: no float, no fix-up loop.
    let i = u64::from(index);
    let b = (8 * i + 1).isqrt().div_ceil(2);
    let a = i - b * (b - 1) / 2;
    // b ≤ index + 1 and a ≤ index, both fit.
    (a as u32, b as u32)
}

/// Number of pairs of `m` elements.
pub fn pair_count(m: u32) -> u64 {
    let m = u64::from(m);
    m * m.saturating_sub(1) / 2
}

const ABSENT: u32 = u32::MAX;

/// A set of the integers `0..capacity` supporting O(1) insert, remove and uniform random
/// choice, the free list of both allocators.
#[derive(Debug, Clone)]
pub struct FreeSet {
    dense: Vec<u32>,
    pos: Vec<u32>,
}

impl FreeSet {
    /// A set over `0..capacity` holding every element (`full`) or none.
    pub fn new(capacity: u32, full: bool) -> Self {
        if full {
            FreeSet {
                dense: (0..capacity).collect(),
                pos: (0..capacity).collect(),
            }
        } else {
            FreeSet {
                dense: Vec::with_capacity(capacity as usize),
                pos: vec![ABSENT; capacity as usize],
            }
        }
    }

    /// The size of the universe `0..capacity`.
    pub fn capacity(&self) -> u32 {
        // Built from a u32 capacity.
        self.pos.len() as u32
    }

    /// Number of elements in the set.
    pub fn len(&self) -> usize {
        self.dense.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.dense.is_empty()
    }

    /// Whether `x` is in the set.
    pub fn contains(&self, x: u32) -> bool {
        self.pos.get(x as usize).is_some_and(|p| *p != ABSENT)
    }

    /// Adds `x`; false if it was already present or out of range.
    pub fn insert(&mut self, x: u32) -> bool {
        match self.pos.get_mut(x as usize) {
            Some(p) if *p == ABSENT => {
                // len < capacity ≤ u32::MAX
                *p = self.dense.len() as u32;
                self.dense.push(x);
                true
            }
            _ => false,
        }
    }

    /// Removes `x`; false if it was absent.
    pub fn remove(&mut self, x: u32) -> bool {
        let Some(&p) = self.pos.get(x as usize) else {
            return false;
        };
        if p == ABSENT {
            return false;
        }
        self.remove_at(p as usize);
        true
    }

    fn remove_at(&mut self, k: usize) -> u32 {
        let x = self.dense.swap_remove(k);
        if let Some(&moved) = self.dense.get(k) {
            self.pos[moved as usize] = k as u32;
        }
        self.pos[x as usize] = ABSENT;
        x
    }

    /// Removes and returns an element chosen uniformly at random; None when empty.
    pub fn take_random<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Option<u32> {
        if self.dense.is_empty() {
            return None;
        }
        let k = rng.random_range(0..self.dense.len());
        Some(self.remove_at(k))
    }

    /// The elements, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.dense.iter().copied()
    }

    /// Checks the internal invariants (for tests): dense and pos are inverse maps.
    pub fn check(&self) -> Result<(), String> {
        for (k, &x) in self.dense.iter().enumerate() {
            if self.pos.get(x as usize) != Some(&(k as u32)) {
                return Err(format!("dense[{k}]={x} but pos[{x}]≠{k}"));
            }
        }
        let present = self.pos.iter().filter(|p| **p != ABSENT).count();
        if present != self.dense.len() {
            return Err(format!(
                "{present} positions set for {} elements",
                self.dense.len()
            ));
        }
        Ok(())
    }
}

/// The state of every pair of a category range: allocated, blocked by static levels (with a
/// count, so releasing restores exactly), or free.
#[derive(Debug, Clone)]
pub struct PairIndex {
    free: FreeSet,
    allocated: Vec<bool>,
    blocks: Vec<u32>,
}

impl PairIndex {
    /// All pairs of `m` elements, all free. `m` must keep the pair count within u32.
    pub fn new(m: u32) -> Self {
        let n = u32::try_from(pair_count(m)).unwrap_or(u32::MAX);
        PairIndex {
            free: FreeSet::new(n, true),
            allocated: vec![false; n as usize],
            blocks: vec![0; n as usize],
        }
    }

    /// Number of pairs.
    pub fn capacity(&self) -> u32 {
        self.free.capacity()
    }

    /// Number of free pairs.
    pub fn free_len(&self) -> usize {
        self.free.len()
    }

    /// Number of allocated pairs.
    pub fn allocated_len(&self) -> usize {
        self.allocated.iter().filter(|a| **a).count()
    }

    /// Number of pairs neither allocated nor free (blocked by at least one static level).
    pub fn blocked_len(&self) -> usize {
        self.capacity() as usize - self.free_len() - self.allocated_len()
    }

    /// Whether the pair is free.
    pub fn is_free(&self, i: u32) -> bool {
        self.free.contains(i)
    }

    /// Whether the pair is allocated.
    pub fn is_allocated(&self, i: u32) -> bool {
        self.allocated.get(i as usize).copied().unwrap_or(false)
    }

    /// How many static levels block the pair.
    pub fn blocks(&self, i: u32) -> u32 {
        self.blocks.get(i as usize).copied().unwrap_or(0)
    }

    /// Allocates a free pair chosen uniformly at random; None when none is free.
    pub fn take_random<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Option<u32> {
        let i = self.free.take_random(rng)?;
        self.allocated[i as usize] = true;
        Some(i)
    }

    /// Marks a pair allocated whatever its state (rebuilding from the database, where the
    /// record is the truth); false if it already was allocated or is out of range.
    pub fn mark_allocated(&mut self, i: u32) -> bool {
        match self.allocated.get_mut(i as usize) {
            Some(a) if !*a => {
                *a = true;
                self.free.remove(i);
                true
            }
            _ => false,
        }
    }

    /// Frees an allocated pair; false if it was not allocated.
    pub fn release(&mut self, i: u32) -> bool {
        match self.allocated.get_mut(i as usize) {
            Some(a) if *a => {
                *a = false;
                if self.blocks[i as usize] == 0 {
                    self.free.insert(i);
                }
                true
            }
            _ => false,
        }
    }

    /// Adds one static block to the pair.
    pub fn block(&mut self, i: u32) {
        if let Some(b) = self.blocks.get_mut(i as usize) {
            *b += 1;
            if *b == 1 {
                self.free.remove(i);
            }
        }
    }

    /// Removes one static block from the pair.
    pub fn unblock(&mut self, i: u32) {
        if let Some(b) = self.blocks.get_mut(i as usize) {
            if *b == 0 {
                return;
            }
            *b -= 1;
            if *b == 0 && !self.allocated[i as usize] {
                self.free.insert(i);
            }
        }
    }

    /// Checks the invariants (for tests): free ⇔ not allocated and not blocked.
    pub fn check(&self) -> Result<(), String> {
        self.free.check()?;
        for i in 0..self.capacity() {
            let should = !self.allocated[i as usize] && self.blocks[i as usize] == 0;
            if should != self.free.contains(i) {
                return Err(format!(
                    "pair {i}: free={} allocated={} blocks={}",
                    self.free.contains(i),
                    self.allocated[i as usize],
                    self.blocks[i as usize]
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn mapping_extremes() {
        assert_eq!(pair_index(0, 1), 0);
        assert_eq!(pair_from_index(0), (0, 1));
        assert_eq!(pair_count(1024), 523_776);
        assert_eq!(pair_index(1022, 1023), 523_775);
        assert_eq!(pair_from_index(523_775), (1022, 1023));
        assert_eq!(pair_count(11), 55);
    }

    #[test]
    fn mapping_is_a_bijection_on_c0_c1023() {
        let mut seen = vec![false; 523_776];
        for b in 1..1024u32 {
            for a in 0..b {
                let i = pair_index(a, b);
                assert!(!seen[i as usize]);
                seen[i as usize] = true;
                assert_eq!(pair_from_index(i), (a, b));
            }
        }
        assert!(seen.iter().all(|s| *s));
    }

    proptest! {
        #[test]
        fn pair_roundtrip(a in 0u32..40_000, d in 1u32..40_000) {
            let b = a + d;
            prop_assert_eq!(pair_from_index(pair_index(a, b)), (a, b));
        }

        #[test]
        fn index_roundtrip(i in 0u32..2_000_000_000) {
            let (a, b) = pair_from_index(i);
            prop_assert!(a < b);
            prop_assert_eq!(pair_index(a, b), i);
        }

        /// Any interleaving of allocate/release/block/unblock keeps free ⇔ (¬allocated ∧ ¬blocked),
        /// and the allocator never hands out a pair that is not free.
        #[test]
        fn free_set_invariants(ops in proptest::collection::vec((0u8..4, 0u32..45), 0..300), seed: u64) {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut idx = PairIndex::new(10);
            let mut model_alloc = [false; 45];
            let mut model_blocks = [0u32; 45];
            for (op, i) in ops {
                match op {
                    0 => {
                        let free_before: Vec<u32> = (0..45).filter(|&j| idx.is_free(j)).collect();
                        match idx.take_random(&mut rng) {
                            Some(j) => {
                                prop_assert!(free_before.contains(&j));
                                model_alloc[j as usize] = true;
                            }
                            None => prop_assert!(free_before.is_empty()),
                        }
                    }
                    1 => {
                        let was = model_alloc[i as usize];
                        prop_assert_eq!(idx.release(i), was);
                        model_alloc[i as usize] = false;
                    }
                    2 => { idx.block(i); model_blocks[i as usize] += 1; }
                    _ => {
                        idx.unblock(i);
                        model_blocks[i as usize] = model_blocks[i as usize].saturating_sub(1);
                    }
                }
                prop_assert!(idx.check().is_ok(), "{:?}", idx.check());
                for j in 0..45u32 {
                    prop_assert_eq!(idx.is_allocated(j), model_alloc[j as usize]);
                    prop_assert_eq!(idx.blocks(j), model_blocks[j as usize]);
                }
            }
        }
    }

    #[test]
    fn uniform_enough() {
        // 45 pairs, 90,000 draws from an empty index: each pair ≈ 2000 times. A grossly biased
        // choice (e.g. always the last element) fails this immediately.
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = [0u32; 45];
        let mut idx = PairIndex::new(10);
        for _ in 0..90_000 {
            let Some(i) = idx.take_random(&mut rng) else {
                panic!("empty")
            };
            counts[i as usize] += 1;
            idx.release(i);
        }
        for c in counts {
            assert!((1700..2300).contains(&c), "{counts:?}");
        }
    }
}
