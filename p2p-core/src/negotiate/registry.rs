//! The mapping registry: every live mapping, indexed by exporter, and the resources each
//! holds (grant, IOVA range, bounce buffer).

use super::domain_cache::DomainCache;
use super::entries::Entries;
pub(crate) use super::entries::{Entry, Key};
use super::importers::{Importers, LetGo};
pub(crate) use super::resources::{MappedPieces, Resources};
use super::FxHasher;
use super::{MappingEvent, MappingObserver, Sequence, TeardownCause};
use crate::addr::{AddrRange, Offset};
use crate::error::Result;
use crate::own_lines::OwnLines;
use crate::pci::PciAddr;
use crate::slab::Slab;
use crate::sync::{AtomicU64, Mutex, Ordering};
use crate::traits::{DmaImporter, ExporterId, InvalidationKind, MemoryExporter};
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Arc;

/// What removing an entry hands back, to be torn down and dropped after the shard's lock is
/// released (the last reference to a device may be in it).
#[derive(Debug)]
pub(crate) struct Removed {
    pub exporter: Arc<dyn MemoryExporter>,
    pub exporter_id: ExporterId,
    pub device: PciAddr,
    pub state: State,
    /// The importers the removal let go (see the `importers` module).
    pub released: LetGo,
}

#[derive(Debug)]
pub(crate) enum State {
    Live(Box<Resources>),
    /// Torn down by an invalidation; an ODP importer may re-fault after a move.
    Invalidated(InvalidationKind),
    /// An establish or a re-fault is building resources outside the lock; it publishes them
    /// only if the entry's sequence did not move meanwhile.
    Building,
}

/// An invalidation that has begun and not ended: the sequences it holds odd.
#[derive(Debug)]
struct Active {
    token: u64,
    exporter: ExporterId,
    range: AddrRange<Offset>,
    held: Vec<Arc<Sequence>>,
}

/// The registry is split into shards by exporter, each under its own lock: threads working on
/// different exporters never meet on a lock. Every step of the invalidation protocol for one
/// exporter happens in that exporter's shard, so the protocol holds per shard as it did for the
/// whole registry.
const SHARDS: usize = 16;

/// One shard: its lock, on cache lines of its own (two threads working on exporters in adjacent
/// shards would otherwise bounce one line between their cores on every lock and unlock; 128
/// bytes: adjacent-line prefetching pairs lines), and the registry's observer. A [`Mapping`]
/// handle holds its shard, not the registry, so that handles of different exporters made and
/// dropped on different threads never write one reference count.
///
/// [`Mapping`]: super::Mapping
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Shard {
    lock: Mutex<Inner>,
    observer: Option<Arc<dyn MappingObserver>>,
}

impl Shard {
    /// The shard's lock.
    pub(crate) fn lock(&self) -> crate::sync::MutexGuard<'_, Inner> {
        self.lock.lock()
    }

    /// Tells the observer that live entry `key` is going away; called under this shard's lock
    /// (`inner` is its guard) before the entry leaves the live state.
    pub(crate) fn notify_torn_down(&self, inner: &Inner, key: Key, cause: TeardownCause) {
        tell(&self.observer, inner, key, |o, ev| o.torn_down(ev, cause));
    }
}

/// Tells `observer` of live entry `key` with `what`. The observer is checked first: without
/// one, no event is looked up (every set-up and drop comes here).
fn tell(
    observer: &Option<Arc<dyn MappingObserver>>,
    inner: &Inner,
    key: Key,
    what: impl FnOnce(&dyn MappingObserver, &MappingEvent),
) {
    let Some(o) = observer else { return };
    let Some(e) = inner.entries.get(key) else {
        return;
    };
    if let State::Live(res) = &e.state {
        what(&**o, &e.event(res));
    }
}

#[derive(Debug, Default)]
pub(crate) struct Inner {
    /// The entries, by slot (see the `entries` module).
    pub entries: Entries,
    /// Each exporter's newest entry (its slot): the head of a list threaded through its
    /// entries' `newer` / `older` links, the index an invalidation searches. Linking and
    /// unlinking cost an Fx lookup and never allocate, where the B-tree of (exporter, start, id)
    /// it replaced walked and rebalanced nodes, and allocated and freed one whenever a shard
    /// went from no mapping to one and back. A search walks the exporter's entries, as the
    /// B-tree's did all of those starting below the range's end.
    ///
    /// An exporter whose last mapping went keeps its key with `None`, so that mapping and
    /// dropping one page at a time changes a value instead of inserting and removing a key;
    /// the `None`s are swept out when they outnumber the rest (see [`Inner::emptied`]).
    heads: HashMap<ExporterId, OwnLines<Option<u32>>, BuildHasherDefault<FxHasher>>,
    /// How many of `heads` are `None`.
    empty_heads: usize,
    /// Invalidations running now (few: one per exporter being moved or revoked).
    active: Vec<Active>,
    next_token: u64,
    /// Sequences of removed entries that nothing else held, for new entries to take instead of
    /// allocating one each (at most [`SPARE_SEQUENCES`]).
    spare: Vec<OwnLines<Arc<Sequence>>>,
    /// The importers' domains, wrapped once for this shard's mappings.
    pub domains: DomainCache,
    /// The importers this shard's entries use, each held once (see the `importers` module).
    pub importers: Importers,
}

/// Exporters without mappings a shard keeps in its index before sweeping them out.
const EMPTY_HEADS_KEPT: usize = 32;

/// Sequences a shard keeps for reuse: enough for the mappings a burst of threads sets up and
/// drops at once; beyond it, a removed entry's sequence is freed.
const SPARE_SEQUENCES: usize = 64;

impl Inner {
    /// Registers an entry. If a running invalidation covers its range, the entry's sequence is
    /// held odd until that invalidation ends (Linux defers such an insertion the same way), so
    /// its builder waits in `read_begin` instead of reading memory that is moving. Fails only
    /// if the shard holds 2^32 − 1 entries; the entry's hold on its importer is then let go.
    pub fn insert(&mut self, mut entry: Entry) -> Result<Key> {
        let exporter = entry.exporter_id;
        let Some(slot) = self.entries.next_slot() else {
            // The caller holds the importer, so the shard keeps its share: nothing is dropped
            // under the lock.
            self.importers.unhold(entry.importer);
            return Err(crate::Error::TooManyMappings {
                exporter,
                limit: Slab::<Entry>::CAPACITY,
            });
        };
        for a in self.active.iter_mut() {
            if a.exporter == exporter && a.range.overlaps(&entry.range) {
                entry.seq.begin_invalidate();
                a.held.push(entry.seq.clone());
            }
        }
        // One lookup of the exporter's head, which becomes the new entry's slot.
        let older = match self.heads.get_mut(&exporter) {
            Some(head) => {
                let older = head.replace(slot);
                if older.is_none() {
                    self.empty_heads -= 1;
                }
                older
            }
            None => {
                self.heads.insert(exporter, OwnLines(Some(slot)));
                None
            }
        };
        entry.newer = None;
        entry.older = older;
        let key = match self.entries.insert(entry) {
            Some(key) if key.slot == slot => key,
            _ => unreachable!("next_slot named the slot insert fills"),
        };
        if let Some(e) = older.and_then(|o| self.entries.at_mut(o)) {
            e.newer = Some(key.slot);
        }
        Ok(key)
    }

    /// Begins an invalidation of `range`: every overlapping entry's sequence goes odd (and
    /// stays so until [`end_invalidation`](Self::end_invalidation)), as does that of any entry
    /// registered meanwhile. Returns the token that ends it and the overlapping entries' keys.
    pub fn begin_invalidation(
        &mut self,
        exporter: ExporterId,
        range: AddrRange<Offset>,
    ) -> (u64, Vec<Key>) {
        let keys = self.overlapping(exporter, &range);
        let held = keys
            .iter()
            .filter_map(|&k| self.entries.get(k))
            .map(|e| {
                let seq = e.seq.clone();
                seq.begin_invalidate();
                seq
            })
            .collect();
        self.next_token += 1;
        let token = self.next_token;
        self.active.push(Active {
            token,
            exporter,
            range,
            held,
        });
        (token, keys)
    }

    /// Ends the invalidation `token`: the sequences it held go even again (unless another
    /// invalidation still covers them).
    pub fn end_invalidation(&mut self, token: u64) {
        if let Some(i) = self.active.iter().position(|a| a.token == token) {
            for seq in self.active.swap_remove(i).held {
                seq.end_invalidate();
            }
        }
    }

    /// A sequence for a new entry: a spare one (even, and covered by no invalidation) or a new
    /// one. Reusing one is sound because a sequence promises only that its value changes when an
    /// invalidation begins or ends; its starting value means nothing.
    pub fn fresh_sequence(&mut self) -> Arc<Sequence> {
        self.spare.pop().map_or_else(Arc::default, |s| s.0)
    }

    /// The importer of the entry at `key`, shared (for a call outside the lock).
    pub fn importer_of(&self, key: Key) -> Option<Arc<dyn DmaImporter>> {
        let e = self.entries.get(key)?;
        self.importers.get(e.importer).cloned()
    }

    /// Removes entry `key`. The caller holds one reference to its sequence besides the entry's
    /// (the mapping handle, or the set-up that failed); when no other exists, no running
    /// invalidation holds it (each holds one), so it is even and goes to the spares. New
    /// references are taken only under this lock, from entries, so none can appear after the
    /// check; a stale count can only be too high, which frees a sequence that could have been
    /// reused.
    ///
    /// The sequence is moved to the spares, not cloned: the entry's reference becomes the
    /// spare's. Lets go of the entry's hold on its importer: what that lets go comes out in the
    /// [`Removed`] (see the `importers` module), to be dropped after the lock is released.
    pub fn remove(&mut self, key: Key) -> Option<Removed> {
        let e = self.entries.remove(key)?;
        let released = self.importers.release(e.importer);
        let (newer, older) = (e.newer, e.older);
        if let Some(o) = older.and_then(|o| self.entries.at_mut(o)) {
            o.newer = newer;
        }
        match (newer, older) {
            (Some(n), _) => {
                if let Some(n) = self.entries.at_mut(n) {
                    n.older = older;
                }
            }
            (None, Some(o)) => {
                self.heads.insert(e.exporter_id, OwnLines(Some(o)));
            }
            (None, None) => self.emptied(e.exporter_id),
        }
        let Entry {
            exporter,
            exporter_id,
            device,
            state,
            seq,
            ..
        } = e;
        if Arc::strong_count(&seq) == 2 && self.spare.len() < SPARE_SEQUENCES {
            self.spare.push(OwnLines(seq));
        }
        Some(Removed {
            exporter,
            exporter_id,
            device,
            state,
            released,
        })
    }

    /// `exporter`'s list is empty: its head becomes `None`, and once the `None`s are more than
    /// [`EMPTY_HEADS_KEPT`] and half of all heads, they are swept out (exporters come and go in
    /// a long-running process; each sweep is paid for by as many drops as it removes).
    fn emptied(&mut self, exporter: ExporterId) {
        if let Some(head) = self.heads.get_mut(&exporter) {
            if head.take().is_some() {
                self.empty_heads += 1;
            }
        }
        if self.empty_heads > EMPTY_HEADS_KEPT && self.empty_heads * 2 > self.heads.len() {
            self.heads.retain(|_, head| head.is_some());
            self.empty_heads = 0;
        }
    }

    /// Keys of the mappings of `exporter` that overlap `range`, in order of range start (then
    /// id), so that invalidations tear down in the same order whatever the set-up order was.
    pub fn overlapping(&self, exporter: ExporterId, range: &AddrRange<Offset>) -> Vec<Key> {
        let mut found = Vec::new();
        let mut at = self.heads.get(&exporter).and_then(|head| head.0);
        // Every slot in the list holds an entry of this exporter: insert links it, remove
        // unlinks it. The walk still stops at another's entry and after as many steps as there
        // are entries, so that a broken link could not make it return another exporter's
        // mappings or run forever.
        let mut steps = self.entries.len();
        while let Some((slot, e)) = at.and_then(|s| self.entries.at(s).map(|e| (s, e))) {
            if steps == 0 || e.exporter_id != exporter {
                debug_assert!(
                    false,
                    "{exporter}'s list reaches slot {slot}: a broken link"
                );
                break;
            }
            steps -= 1;
            if e.range.overlaps(range) {
                found.push((e.range.start(), Key { slot, id: e.id }));
            }
            at = e.older;
        }
        found.sort_unstable_by_key(|&(start, key)| (start, key.id));
        found.into_iter().map(|(_, key)| key).collect()
    }

    /// How many invalidations are running.
    pub fn invalidations_running(&self) -> usize {
        self.active.len()
    }
}

/// A read-only view of one registered mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingInfo {
    /// The mapping's id.
    pub id: u64,
    /// Its exporter.
    pub exporter: ExporterId,
    /// The exporter range it covers.
    pub range: AddrRange<Offset>,
    /// Its importer.
    pub importer: PciAddr,
    /// Whether its grant pins the memory.
    pub pinned: bool,
    /// Whether it is established (not invalidated).
    pub live: bool,
}

/// Every mapping the negotiator made and that is not dropped yet.
#[derive(Debug)]
pub struct Registry {
    shards: Box<[Arc<Shard>]>,
    /// Mapping ids are handed to threads in blocks of [`ID_BLOCK`]: one shared increment per
    /// block rather than per mapping. Within a thread they are in order of registration, so the
    /// same program gives the same ids (a machine's event log is reproducible). On lines of its
    /// own: every thread reads `shards` on every map and drop, and a block taken here would
    /// otherwise take that line from every other thread's cache.
    next_id: OwnLines<AtomicU64>,
    /// Tells this registry's blocks apart from another registry's in a thread's cache.
    serial: u64,
    pub(crate) observer: Option<Arc<dyn MappingObserver>>,
}

/// Ids a thread takes from a registry at once: a block costs a cache line fetched from the core
/// that took the last one (about 100 ns here, 1.6 ns a mapping at 64 a block, in a profile of
/// two threads mapping), and a thread that ends leaves the rest of its block unused, which 64-bit
/// ids can afford.
const ID_BLOCK: u64 = 1024;

/// Registries made so far: each gets its own serial, never reused (an address can be).
static NEXT_REGISTRY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

thread_local! {
    /// This thread's block of ids: (registry serial, next id, end of the block).
    static IDS: std::cell::Cell<(u64, u64, u64)> = const { std::cell::Cell::new((0, 0, 0)) };
}

impl Registry {
    pub(crate) fn with_observer(observer: Option<Arc<dyn MappingObserver>>) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Arc::new(Shard {
                        lock: Mutex::default(),
                        observer: observer.clone(),
                    })
                })
                .collect(),
            next_id: OwnLines::default(),
            serial: NEXT_REGISTRY.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            observer,
        }
    }

    /// The shard holding `exporter`'s mappings.
    pub(crate) fn shard(&self, exporter: ExporterId) -> &Arc<Shard> {
        &self.shards[exporter.0 as usize % SHARDS]
    }

    /// The lock of the shard holding `exporter`'s mappings.
    pub(crate) fn shard_for(&self, exporter: ExporterId) -> &Mutex<Inner> {
        &self.shard(exporter).lock
    }

    /// A new mapping id, unique in this registry: the next of this thread's block, or the
    /// first of a new block.
    pub(crate) fn next_id(&self) -> u64 {
        IDS.with(|ids| {
            let (serial, next, end) = ids.get();
            if serial == self.serial && next < end {
                ids.set((serial, next + 1, end));
                return next;
            }
            let first = self.next_id.fetch_add(ID_BLOCK, Ordering::Relaxed) + 1;
            ids.set((self.serial, first + 1, first + ID_BLOCK));
            first
        })
    }

    /// Tells the observer that entry `key` went live. Called with the registry lock held
    /// (`inner` is its guard), so the observer sees events in registry order.
    pub(crate) fn notify_established(&self, inner: &Inner, key: Key) {
        tell(&self.observer, inner, key, |o, ev| o.established(ev));
    }

    /// Tells the observer that live entry `key` is going away; called under the registry lock
    /// before the entry leaves the live state.
    pub(crate) fn notify_torn_down(&self, inner: &Inner, key: Key, cause: TeardownCause) {
        tell(&self.observer, inner, key, |o, ev| o.torn_down(ev, cause));
    }

    /// How many invalidations have begun and not ended (held [`Invalidating`](super::Invalidating)
    /// guards).
    pub fn invalidations_running(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().invalidations_running())
            .sum()
    }

    /// Number of mappings, live or invalidated.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().entries.len()).sum()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lets go now of every importer no mapping here uses and nobody else references any more.
    ///
    /// The registry keeps an importer after its last mapping while its caller still holds it
    /// (so that a thread mapping and dropping through it does not write its reference count),
    /// and lets it go in the course of later drops once only the library holds it. Call this
    /// after dropping a device whose `Drop` must run now (a hot-unplugged NIC), or when no
    /// more mappings will be dropped. Returns how many holds it let go (an importer is held once
    /// by each registry shard that mapped it); an importer another negotiator still holds lives
    /// on until that one lets go too.
    pub fn let_go_of_unused_importers(&self) -> usize {
        let mut gone = Vec::new();
        for shard in self.shards.iter() {
            gone.extend(shard.lock().importers.let_go_of_unused());
        }
        // Dropped here, outside every shard's lock: the last share drops the importer.
        gone.len()
    }

    /// The mappings of `exporter` that overlap `range`, by id.
    pub fn overlapping(&self, exporter: ExporterId, range: AddrRange<Offset>) -> Vec<MappingInfo> {
        let inner = self.shard_for(exporter).lock();
        inner
            .overlapping(exporter, &range)
            .into_iter()
            .filter_map(|key| inner.entries.get(key))
            .map(info)
            .collect()
    }

    /// All mappings, by id.
    pub fn all(&self) -> Vec<MappingInfo> {
        let mut all: Vec<MappingInfo> = self
            .shards
            .iter()
            .flat_map(|s| {
                let inner = s.lock();
                inner
                    .entries
                    .iter()
                    .map(|(_, e)| info(e))
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort_by_key(|m| m.id);
        all
    }
}

fn info(e: &Entry) -> MappingInfo {
    MappingInfo {
        id: e.id,
        exporter: e.exporter_id,
        range: e.range,
        importer: e.device,
        pinned: e.pinned,
        live: matches!(e.state, State::Live(_)),
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
