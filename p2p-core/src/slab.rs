//! A slab: values in numbered slots, a freed slot reused by the next insert. The hot paths that
//! add and remove one record per mapping (a registry shard's entries, an exporter's grants) keep
//! their records here: an insert or a remove is a push or a pop of the free list and a move, a
//! lookup an index, where a hash map hashed, probed and moved on every insert and remove.
//!
//! Every cell is on 128-byte lines of its own and the free list is threaded through the empty
//! cells, so a slab writes no heap memory but its cells. A slab's buffer is allocated by the
//! thread that first inserts, often next to what that thread's allocator hands out after (the
//! same thread's, or another's once the thread exits and its arena is reused), and two threads
//! writing neighbours on one line pay a transfer between cores for each write: in the mapping
//! benchmark, two threads on two exporters ran at 1.6× one thread's rate or less in three full
//! runs of four, and at 1.9–2.0× in three of three with every heap block padded.
//!
//! Slots are 32-bit: the callers build keys from them. A slot says nothing about which value is
//! in it now; each slot therefore counts its occupants (its *generation*, from 1), and a caller
//! pairs the slot with the generation, or with an id the value carries, and checks it on
//! lookup. A slot whose generation would wrap is retired instead of reused, so a (slot,
//! generation) pair names one value for the life of the slab.

/// A slot: its value, if any, and the generation of that value (or of the next one); while
/// empty, the next empty slot of the free list.
#[derive(Debug)]
#[repr(align(128))]
struct Cell<T> {
    value: Option<T>,
    generation: u32,
    next_free: u32,
}

/// No slot: the end of the free list.
const NONE: u32 = u32::MAX;

/// Values by slot.
#[derive(Debug)]
pub(crate) struct Slab<T> {
    cells: Vec<Cell<T>>,
    /// The most recently emptied slot (reused first: its line is likely cached), the head of
    /// the free list threaded through the empty cells; [`NONE`] if no cell is empty.
    free: u32,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self {
            cells: Vec::new(),
            free: NONE,
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    /// The most values a slab holds: every slot fits 32 bits, and the largest value names no
    /// slot (the free list's end).
    pub const CAPACITY: u64 = NONE as u64;

    /// The slot the next [`insert`](Self::insert) fills, or `None` if the slab is full.
    #[inline]
    pub fn next_slot(&self) -> Option<u32> {
        match self.free {
            NONE => u32::try_from(self.cells.len())
                .ok()
                .filter(|&slot| slot != NONE),
            slot => Some(slot),
        }
    }

    /// The generation the value in `slot` has, or the next value put there will have (1 for a
    /// slot not made yet).
    #[inline]
    pub fn generation(&self, slot: u32) -> u32 {
        self.cells.get(slot as usize).map_or(1, |c| c.generation)
    }

    /// Puts `value` in the slot [`next_slot`](Self::next_slot) named; `None` (and `value`
    /// dropped) if the slab is full.
    #[inline]
    pub fn insert(&mut self, value: T) -> Option<u32> {
        let slot = self.next_slot()?;
        if self.free == NONE {
            self.cells.push(Cell {
                value: Some(value),
                generation: 1,
                next_free: NONE,
            });
        } else {
            let cell = &mut self.cells[slot as usize];
            self.free = cell.next_free;
            cell.value = Some(value);
        }
        self.len += 1;
        Some(slot)
    }

    /// The value in `slot`, if any.
    #[inline]
    pub fn get(&self, slot: u32) -> Option<&T> {
        self.cells.get(slot as usize)?.value.as_ref()
    }

    /// The value in `slot`, if any, to change.
    #[inline]
    pub fn get_mut(&mut self, slot: u32) -> Option<&mut T> {
        self.cells.get_mut(slot as usize)?.value.as_mut()
    }

    /// Takes the value out of `slot` if `is_it` says it is the one meant; the slot becomes free
    /// for the next generation, or is retired if its generation would wrap.
    #[inline]
    pub fn remove_if(&mut self, slot: u32, is_it: impl FnOnce(&T) -> bool) -> Option<T> {
        let cell = self.cells.get_mut(slot as usize)?;
        if !is_it(cell.value.as_ref()?) {
            return None;
        }
        let value = cell.value.take();
        cell.generation = cell.generation.wrapping_add(1);
        if cell.generation != 0 {
            cell.next_free = self.free;
            self.free = slot;
        }
        self.len -= 1;
        value
    }

    /// How many values there are.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Every value with its slot, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        // Slots fit 32 bits (at most CAPACITY cells), so the cast keeps them whole.
        self.cells
            .iter()
            .enumerate()
            .filter_map(|(slot, c)| c.value.as_ref().map(|v| (slot as u32, v)))
    }

    /// Sets `slot`'s generation, for tests of what happens when it wraps.
    #[cfg(test)]
    pub(crate) fn set_generation(&mut self, slot: u32, generation: u32) {
        self.cells[slot as usize].generation = generation;
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

    /// Each occupant of a slot has the next generation; a slot whose generation would wrap is
    /// retired, never handed out again.
    #[test]
    fn generations_count_occupants_and_a_wrapping_slot_is_retired() {
        let mut slab = Slab::default();
        assert_eq!(slab.generation(0), 1);
        let s = slab.insert('a').unwrap();
        assert_eq!(slab.generation(s), 1);
        slab.remove_if(s, |_| true).unwrap();
        assert_eq!(slab.generation(s), 2);
        assert_eq!(slab.insert('b'), Some(s));
        slab.set_generation(s, u32::MAX);
        slab.remove_if(s, |_| true).unwrap();
        assert_eq!(slab.next_slot(), Some(1), "the wrapped slot is not reused");
        assert_eq!(slab.insert('c'), Some(1));
        assert_eq!(slab.len(), 1);
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
