//! The importers a registry's entries use, held once per registry and counted per shard,
//! instead of one reference per entry.
//!
//! A reference per entry wrote the importer's reference count twice per mapping (a clone at the
//! map, a drop at the teardown). One NIC serving several GPUs, one thread each, is the common
//! case, and its count is one cache line that every thread's every mapping then took from the
//! others: two threads mapping through one importer ran at 1.6 times one thread's rate where
//! two with importers of their own ran at 1.9 times. Here a shard counts its entries of an
//! importer in a plain integer under its lock.
//!
//! The library holds each importer by one reference ([`Held`]), which the shards that use it
//! share, in every negotiator of the process: [`HOLDS`] finds it when a shard first needs it.
//! A shard keeps its share while any of its entries uses the importer, and after that while
//! someone besides the library still references the importer (its caller, who will likely map
//! through it again: mapping and dropping one page at a time then writes no shared count at
//! all). Once only the library's reference is left, no new one can appear (a set-up takes its
//! reference from its caller), so the shards let go: each removal of an entry looks at that
//! entry's importer and at one other, in turn, so a shard lets go within as many removals as it
//! has importers; [`Importers::let_go_of_unused`] looks at them all. The importer goes with the
//! last share, or with the negotiators that hold one. What a shard lets go leaves it in a
//! [`LetGo`], dropped after the shard's lock is released.

use super::FxHasher;
use crate::traits::DmaImporter;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};

/// The registry's one reference to an importer, shared by the shards that use it.
#[derive(Debug)]
pub(crate) struct Held(Arc<dyn DmaImporter>);

impl Held {
    /// The importer's identity: the address of its data, which is that of every `Arc` of it.
    fn identity(&self) -> usize {
        Arc::as_ptr(&self.0).cast::<()>() as usize
    }

    /// Whether only the library references the importer (its callers let go, and no call
    /// outside a shard's lock holds it): then nothing can reference it again.
    fn only_held_here(&self) -> bool {
        Arc::strong_count(&self.0) == 1
    }
}

/// The library's [`Held`] importers by identity, for a shard that needs one it has no share of
/// yet (the first mapping of an importer in a shard: rare). One for the process, so that two
/// negotiators mapping through one importer hold it once between them: "only the library
/// references it" then means its callers let go. Not part of the invalidation protocol (a
/// lookup table of weak references), so a plain `std` mutex.
type Holds = Mutex<HashMap<usize, Weak<Held>, BuildHasherDefault<FxHasher>>>;

static HOLDS: LazyLock<Holds> = LazyLock::new(Holds::default);

/// Dead entries [`HOLDS`] may keep before they are swept out.
const DEAD_HOLDS_KEPT: usize = 32;

/// The library's hold of `lent`'s importer, made (taking a reference from its caller) if it has
/// none.
fn held_for(lent: &Lend<'_>) -> Arc<Held> {
    let mut map = HOLDS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(held) = map.get(&lent.identity()).and_then(Weak::upgrade) {
        return held;
    }
    if map.len() > DEAD_HOLDS_KEPT {
        map.retain(|_, w| w.strong_count() > 0);
    }
    let held = Arc::new(Held((lent.share)()));
    map.insert(lent.identity(), Arc::downgrade(&held));
    held
}

/// An importer as a set-up names it: borrowed, with a way to take a reference on it should the
/// library hold none yet.
pub(crate) struct Lend<'a> {
    pub importer: &'a dyn DmaImporter,
    pub share: &'a dyn Fn() -> Arc<dyn DmaImporter>,
}

impl Lend<'_> {
    fn identity(&self) -> usize {
        (self.importer as *const dyn DmaImporter).cast::<()>() as usize
    }
}

/// Where a shard holds an importer: its index in [`Importers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ImporterSlot(u32);

/// On 128-byte lines of its own (see the `own_lines` module): its count is written on every map
/// and drop by the thread mapping this shard's exporter, and the slots' buffer is a small heap
/// block next to whatever else its allocating thread got.
#[derive(Debug)]
#[repr(align(128))]
struct Share {
    held: Arc<Held>,
    /// The shard's entries using it.
    entries: usize,
}

/// A shard's shares of the registry's importers, by slot. Few: the importers its exporters are
/// mapped to.
#[derive(Debug, Default)]
pub(crate) struct Importers {
    slots: Vec<Option<Share>>,
    /// The slot the next removal looks at besides its own.
    next_look: usize,
}

/// Shares a removal let go (its entry's importer's, and the one other it looked at), dropped
/// after the shard's lock is released: the last share of an importer drops it.
pub(crate) type LetGo = [Option<Arc<Held>>; 2];

impl Importers {
    /// Holds `lent`'s importer for one more entry and returns its slot; [`HOLDS`] is asked only
    /// if this shard has no share of it yet.
    pub fn hold(&mut self, lent: &Lend<'_>) -> ImporterSlot {
        let me = lent.identity();
        let mut free = None;
        for (i, slot) in self.slots.iter_mut().enumerate() {
            match slot {
                Some(s) if s.held.identity() == me => {
                    s.entries += 1;
                    return ImporterSlot(index(i));
                }
                None if free.is_none() => free = Some(i),
                _ => {}
            }
        }
        let share = Some(Share {
            held: held_for(lent),
            entries: 1,
        });
        match free {
            Some(i) => {
                self.slots[i] = share;
                ImporterSlot(index(i))
            }
            None => {
                self.slots.push(share);
                ImporterSlot(index(self.slots.len() - 1))
            }
        }
    }

    /// The importer in `slot` (held by the caller's entry).
    pub fn get(&self, slot: ImporterSlot) -> Option<&Arc<dyn DmaImporter>> {
        let share = self.slots.get(slot.0 as usize)?.as_ref()?;
        Some(&share.held.0)
    }

    /// Drops one entry's hold on `slot`, then lets go of the share in `slot` and of the one in
    /// the next slot in turn, each if no entry uses it and only the library still references
    /// its importer. Returns what it let go, for the caller to drop outside the lock.
    #[inline]
    pub fn release(&mut self, slot: ImporterSlot) -> LetGo {
        let at = slot.0 as usize;
        self.unhold(slot);
        let other = self.next_look;
        self.next_look = (other + 1) % self.slots.len().max(1);
        [self.let_go_if_unused(at), self.let_go_if_unused(other)]
    }

    /// Drops one entry's hold on `slot` and nothing more (for a caller that holds the importer,
    /// so its share stays).
    pub fn unhold(&mut self, slot: ImporterSlot) {
        let share = self.slots.get_mut(slot.0 as usize).and_then(Option::as_mut);
        debug_assert!(
            share.as_ref().is_some_and(|s| s.entries > 0),
            "a hold let go of twice"
        );
        if let Some(s) = share {
            s.entries = s.entries.saturating_sub(1);
        }
    }

    /// Lets go of every share no entry uses whose importer only the library still references;
    /// returns them, for the caller to drop outside the lock.
    pub fn let_go_of_unused(&mut self) -> Vec<Arc<Held>> {
        (0..self.slots.len())
            .filter_map(|at| self.let_go_if_unused(at))
            .collect()
    }

    fn let_go_if_unused(&mut self, at: usize) -> Option<Arc<Held>> {
        let slot = self.slots.get_mut(at)?;
        if slot
            .as_ref()
            .is_some_and(|s| s.entries == 0 && s.held.only_held_here())
        {
            return slot.take().map(|s| s.held);
        }
        None
    }

    /// Importers this shard has a share of, used or not.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.slots.iter().flatten().count()
    }
}

/// A slot index: a shard holds far fewer than 2^32 importers (each is a device).
fn index(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::testing::TestImporter;
    use crate::traits::ImporterCaps;

    fn nic(bus: u8) -> Arc<dyn DmaImporter> {
        let addr = crate::pci::PciAddr::new(0, bus, 0, 0).unwrap();
        Arc::new(TestImporter::new(addr, ImporterCaps::default()))
    }

    fn none(l: LetGo) -> bool {
        l.iter().all(Option::is_none)
    }

    /// Holds `i` in shard `t`, as a set-up does.
    fn hold(t: &mut Importers, i: &Arc<dyn DmaImporter>) -> ImporterSlot {
        let share = || i.clone();
        let lent = Lend {
            importer: &**i,
            share: &share,
        };
        t.hold(&lent)
    }

    #[test]
    fn one_reference_however_many_entries_and_shards() {
        let (mut s1, mut s2) = (Importers::default(), Importers::default());
        let a = nic(1);
        let x = hold(&mut s1, &a);
        assert_eq!(hold(&mut s1, &a), x, "one slot per importer");
        hold(&mut s2, &a);
        assert_eq!(Arc::strong_count(&a), 2, "the caller's and the library's");
        assert!(Arc::ptr_eq(s1.get(x).unwrap(), &a));
    }

    #[test]
    fn kept_while_its_caller_holds_it_and_let_go_by_every_shard_after() {
        let (mut s1, mut s2) = (Importers::default(), Importers::default());
        let a = nic(1);
        let (x1, x2) = (hold(&mut s1, &a), hold(&mut s2, &a));
        assert!(none(s1.release(x1)), "unused, but its caller holds it");
        assert!(none(s2.release(x2)));
        assert_eq!((s1.len(), s2.len()), (1, 1));
        let weak = Arc::downgrade(&a);
        drop(a);
        // Each shard lets go at its next removal (of another importer's entry here); the
        // importer goes with the last share.
        let b = nic(2);
        let y1 = hold(&mut s1, &b);
        let gone = s1.release(y1);
        assert_eq!(gone.iter().flatten().count(), 1);
        drop(gone);
        assert!(weak.upgrade().is_some(), "shard 2 still has its share");
        assert_eq!(s2.let_go_of_unused().len(), 1, "looked at every slot");
        assert!(weak.upgrade().is_none());
        assert_eq!(
            (s1.len(), s2.len()),
            (1, 0),
            "b is kept: its caller holds it"
        );
    }

    #[test]
    fn an_importer_only_its_last_entry_held_goes_with_it_and_its_slot_is_reused() {
        let mut t = Importers::default();
        let s = hold(&mut t, &nic(1));
        let gone = t.release(s);
        assert_eq!(gone.iter().flatten().count(), 1, "nobody else holds it");
        drop(gone);
        assert_eq!(t.len(), 0);
        let b = nic(2);
        let again = hold(&mut t, &b);
        assert_eq!(again, s, "the free slot is reused");
        assert_eq!(t.get(again).unwrap().device(), b.device());
        t.unhold(again);
        let again = hold(&mut t, &b);
        assert!(none(t.release(again)), "unhold kept the share");
    }

    /// Importers held and then all dropped leave dead weak references in the table, which the
    /// next new hold sweeps out once there are more than [`DEAD_HOLDS_KEPT`].
    #[test]
    fn dead_holds_are_swept_out() {
        let many: Vec<Arc<dyn DmaImporter>> = (0..DEAD_HOLDS_KEPT as u8 + 8).map(nic).collect();
        let mut t = Importers::default();
        let slots: Vec<ImporterSlot> = many.iter().map(|i| hold(&mut t, i)).collect();
        let keys: Vec<usize> = slots
            .iter()
            .map(|&s| t.get(s).map_or(0, |i| Arc::as_ptr(i).cast::<()>() as usize))
            .collect();
        drop(many);
        for s in slots {
            drop(t.release(s));
        }
        assert_eq!(t.len(), 0, "each went with its last entry");
        let fresh = nic(99);
        hold(&mut t, &fresh);
        let map = HOLDS.lock().unwrap_or_else(PoisonError::into_inner);
        let dead = keys
            .iter()
            .filter(|k| map.get(k).is_some_and(|w| w.strong_count() == 0))
            .count();
        assert_eq!(dead, 0, "dead holds left in the table");
    }
}
