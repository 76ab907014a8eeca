//! A registry shard's entries: a [`Slab`], each entry found by its [`Key`] (its slot, and its id
//! to tell it from a later entry in the same slot), and each exporter's entries threaded into a
//! list through their slots.
//!
//! A set-up and a drop each insert and remove one entry, and publish, invalidate and the handle's
//! accessors each look one up: by slot that is an index and a compare.

use super::importers::ImporterSlot;
use super::registry::{Resources, State};
use super::{MappingEvent, Sequence};
use crate::access::Access;
use crate::addr::{AddrRange, Offset};
use crate::pci::PciAddr;
use crate::slab::Slab;
use crate::traits::{ExporterId, MemoryExporter};
use std::sync::Arc;

/// Where an entry is: its slot and its mapping id. A key whose id no longer matches its slot's
/// entry (the mapping was removed and the slot reused) finds nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Key {
    pub slot: u32,
    pub id: u64,
}

/// One registered mapping.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The mapping's id (unique in the registry).
    pub id: u64,
    pub exporter: Arc<dyn MemoryExporter>,
    /// `exporter.id()`, which the registry's index reads on every insert, remove and walk.
    pub exporter_id: ExporterId,
    /// Where the shard holds the importer (see the `importers` module).
    pub importer: ImporterSlot,
    /// The importer's address.
    pub device: PciAddr,
    pub range: AddrRange<Offset>,
    pub access: Access,
    pub pinned: bool,
    pub seq: Arc<Sequence>,
    pub state: State,
    /// Its neighbours (slots) in its exporter's list, newest first: set by the registry's
    /// `Inner::insert`, unlinked by its `remove`.
    pub(super) newer: Option<u32>,
    pub(super) older: Option<u32>,
}

impl Entry {
    /// A new entry `id` of `range` being built (pinning nothing until it is published: an
    /// invalidation meanwhile makes the set-up start over, and its grant, pinned or not, is
    /// taken at the new place).
    pub fn building(
        id: u64,
        (exporter, exporter_id): (Arc<dyn MemoryExporter>, ExporterId),
        (importer, device): (ImporterSlot, PciAddr),
        range: AddrRange<Offset>,
        access: Access,
        seq: Arc<Sequence>,
    ) -> Self {
        Self {
            id,
            exporter,
            exporter_id,
            importer,
            device,
            range,
            access,
            pinned: false,
            seq,
            state: State::Building,
            newer: None,
            older: None,
        }
    }

    /// The observer's view of this entry with `res` as its resources.
    pub fn event(&self, res: &Resources) -> MappingEvent {
        MappingEvent {
            mapping: self.id,
            importer: self.device,
            exporter: self.exporter_id,
            range: self.range,
            segments: res.segments.to_vec(),
            access: self.access,
            strategy: res.strategy.clone(),
        }
    }
}

/// The slab.
#[derive(Debug, Default)]
pub(crate) struct Entries(Slab<Entry>);

impl Entries {
    /// The slot the next [`insert`](Self::insert) fills; `None` if there is none left.
    pub fn next_slot(&self) -> Option<u32> {
        self.0.next_slot()
    }

    /// Puts `entry` in the slot [`next_slot`](Self::next_slot) named and returns its key; `None`
    /// (and the entry dropped) if the slab is full, which the caller checks first.
    pub fn insert(&mut self, entry: Entry) -> Option<Key> {
        let id = entry.id;
        self.0.insert(entry).map(|slot| Key { slot, id })
    }

    /// The entry at `key`, if it is still there.
    pub fn get(&self, key: Key) -> Option<&Entry> {
        self.0.get(key.slot).filter(|e| e.id == key.id)
    }

    /// The entry at `key`, if it is still there, to change.
    pub fn get_mut(&mut self, key: Key) -> Option<&mut Entry> {
        self.0.get_mut(key.slot).filter(|e| e.id == key.id)
    }

    /// Whatever entry is in `slot`.
    pub fn at(&self, slot: u32) -> Option<&Entry> {
        self.0.get(slot)
    }

    /// Whatever entry is in `slot`, to change.
    pub fn at_mut(&mut self, slot: u32) -> Option<&mut Entry> {
        self.0.get_mut(slot)
    }

    /// Takes the entry at `key` out, if it is still there; its slot becomes free.
    pub fn remove(&mut self, key: Key) -> Option<Entry> {
        self.0.remove_if(key.slot, |e| e.id == key.id)
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Every entry with its key, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (Key, &Entry)> {
        self.0.iter().map(|(slot, e)| (Key { slot, id: e.id }, e))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::negotiate::importers::{Importers, Lend};
    use crate::testing::{TestHostMemory, TestImporter};
    use crate::traits::{DmaImporter, ImporterCaps};

    fn entry(id: u64) -> Entry {
        let nic: Arc<dyn DmaImporter> = Arc::new(TestImporter::new(
            "0000:01:00.0".parse().unwrap(),
            ImporterCaps::default(),
        ));
        let share = || nic.clone();
        let lent = Lend {
            importer: &*nic,
            share: &share,
        };
        let slot = Importers::default().hold(&lent);
        let exporter = TestHostMemory::new(1 << 20, 1 << 16);
        let id_of = exporter.id();
        Entry::building(
            id,
            (Arc::new(exporter), id_of),
            (slot, nic.device()),
            AddrRange::new(Offset(0), 4096).unwrap(),
            Access::READ,
            Arc::default(),
        )
    }

    /// A key finds its entry until it is removed, and never the later entry that reuses its
    /// slot; removing twice removes once.
    #[test]
    fn a_key_outlives_its_entry_without_finding_the_next_one() {
        let mut s = Entries::default();
        let a = s.insert(entry(1)).unwrap();
        let b = s.insert(entry(2)).unwrap();
        assert_ne!(a.slot, b.slot);
        assert_eq!(s.get(a).map(|e| e.id), Some(1));
        assert_eq!(s.remove(a).map(|e| e.id), Some(1));
        assert!(s.remove(a).is_none());
        let c = s.insert(entry(3)).unwrap();
        assert_eq!(c.slot, a.slot, "the freed slot is reused");
        assert!(s.get(a).is_none() && s.get_mut(a).is_none() && s.remove(a).is_none());
        assert_eq!(s.get(c).map(|e| e.id), Some(3));
        assert_eq!(s.len(), 2);
        let ids: Vec<u64> = s
            .iter()
            .map(|(k, e)| {
                assert_eq!(k.id, e.id);
                e.id
            })
            .collect();
        assert_eq!(ids, [3, 2]);
    }

    /// Keys out of range find nothing.
    #[test]
    fn keys_out_of_range_find_nothing() {
        let mut s = Entries::default();
        let k = Key { slot: 7, id: 1 };
        assert!(s.get(k).is_none() && s.remove(k).is_none() && s.at_mut(7).is_none());
        assert_eq!(s.next_slot(), Some(0));
        assert_eq!(s.len(), 0);
    }
}
