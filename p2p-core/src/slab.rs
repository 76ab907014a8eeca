//! A slab: values in numbered slots, a freed slot reused by the next insert. The hot paths that
//! add and remove one record per mapping (a registry shard's entries, an exporter's grants) keep
//! their records here: an insert or a remove is a push or a pop of the free list and a move, a
//! lookup an index, where a hash map hashed, probed and moved on every insert and remove.
//!
//! Slots are 32-bit: the callers build keys from them. A slot says nothing about which value is
//! in it now; each caller pairs it with an id the value carries and checks it on lookup.

/// Values by slot.
#[derive(Debug)]
pub(crate) struct Slab<T> {
    slots: Vec<Option<T>>,
    /// Empty slots, the most recently emptied last (reused first: its line is likely cached).
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    /// The most values a slab holds: every slot fits 32 bits.
    pub const CAPACITY: u64 = 1 << 32;

    /// The slot the next [`insert`](Self::insert) fills, or `None` if the slab is full.
    pub fn next_slot(&self) -> Option<u32> {
        match self.free.last() {
            Some(&slot) => Some(slot),
            None => u32::try_from(self.slots.len()).ok(),
        }
    }

    /// Puts `value` in the slot [`next_slot`](Self::next_slot) named; `None` (and `value`
    /// dropped) if the slab is full.
    pub fn insert(&mut self, value: T) -> Option<u32> {
        let slot = self.next_slot()?;
        match self.free.pop() {
            Some(_) => self.slots[slot as usize] = Some(value),
            None => self.slots.push(Some(value)),
        }
        self.len += 1;
        Some(slot)
    }

    /// The value in `slot`, if any.
    pub fn get(&self, slot: u32) -> Option<&T> {
        self.slots.get(slot as usize)?.as_ref()
    }

    /// The value in `slot`, if any, to change.
    pub fn get_mut(&mut self, slot: u32) -> Option<&mut T> {
        self.slots.get_mut(slot as usize)?.as_mut()
    }

    /// Takes the value out of `slot` if `is_it` says it is the one meant; the slot becomes free.
    pub fn remove_if(&mut self, slot: u32, is_it: impl FnOnce(&T) -> bool) -> Option<T> {
        let cell = self.slots.get_mut(slot as usize)?;
        if !is_it(cell.as_ref()?) {
            return None;
        }
        let value = cell.take();
        self.free.push(slot);
        self.len -= 1;
        value
    }

    /// How many values there are.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Every value with its slot, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.slots
            .iter()
            .zip(0u32..)
            .filter_map(|(cell, slot)| cell.as_ref().map(|v| (slot, v)))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    proptest! {
        /// Against a model (slot → value): inserts fill the slot `next_slot` named, never one in
        /// use; removes free exactly the slot asked for; lookups and `len` agree throughout.
        #[test]
        fn matches_a_model(ops in proptest::collection::vec((any::<bool>(), 0u32..12), 1..200)) {
            let mut slab = Slab::default();
            let mut model = BTreeMap::new();
            for (n, (insert, pick)) in ops.into_iter().enumerate() {
                if insert {
                    let want = slab.next_slot().unwrap();
                    let slot = slab.insert(n).unwrap();
                    prop_assert_eq!(slot, want);
                    prop_assert!(model.insert(slot, n).is_none(), "slot {} given twice", slot);
                } else {
                    let removed = slab.remove_if(pick, |_| true);
                    prop_assert_eq!(removed, model.remove(&pick));
                }
                prop_assert_eq!(slab.len(), model.len());
                for slot in 0..12 {
                    prop_assert_eq!(slab.get(slot), model.get(&slot));
                }
                let all: Vec<(u32, usize)> = slab.iter().map(|(s, &v)| (s, v)).collect();
                let want: Vec<(u32, usize)> = model.iter().map(|(&s, &v)| (s, v)).collect();
                prop_assert_eq!(all, want);
            }
        }
    }

    /// `remove_if` leaves a value its predicate refuses.
    #[test]
    fn remove_if_keeps_what_it_refuses() {
        let mut slab = Slab::default();
        let s = slab.insert(7).unwrap();
        assert_eq!(slab.remove_if(s, |&v| v == 8), None);
        assert_eq!(slab.get_mut(s), Some(&mut 7));
        assert_eq!(slab.remove_if(s, |&v| v == 7), Some(7));
        assert_eq!(slab.remove_if(s, |_| true), None);
        assert_eq!(slab.len(), 0);
    }
}
