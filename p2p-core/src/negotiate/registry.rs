//! The mapping registry: every live mapping, indexed by exporter range, and the resources each
//! holds (grant, IOVA range, bounce buffer).

use super::{MappingEvent, MappingObserver, Segment, Sequence, Strategy, TeardownCause};
use crate::access::Access;
use crate::addr::{AddrRange, Iova, Offset};
use crate::error::Result;
use crate::pci::PciAddr;
use crate::traits::{
    DmaImporter, ExportGrant, ExporterId, InvalidationKind, IommuDomain, MemoryExporter,
};
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// What an established mapping holds; [`Resources::teardown`] gives all of it back.
#[derive(Debug)]
pub(crate) struct Resources {
    pub strategy: Strategy,
    pub grant: ExportGrant,
    pub bounce: Option<(Arc<dyn MemoryExporter>, ExportGrant)>,
    pub domain: Arc<dyn IommuDomain>,
    pub iova: Option<AddrRange<Iova>>,
    pub segments: Vec<Segment>,
}

impl Resources {
    /// Unmaps, flushes, frees the IOVA range and releases the grants. Every step runs even if
    /// an earlier one failed; the first error is returned. Returns the bytes unmapped.
    pub fn teardown(self, exporter: &dyn MemoryExporter) -> Result<u64> {
        let mut first: Option<crate::Error> = None;
        let mut keep = |r: Result<()>| {
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        };
        let mut unmapped = 0;
        if let Some(iova) = self.iova {
            keep(unmap_flush_free(&*self.domain, iova).map(|n| unmapped = n));
        }
        if let Some((host, g)) = &self.bounce {
            keep(host.release(g));
        }
        keep(exporter.release(&self.grant));
        first.map_or(Ok(unmapped), Err)
    }
}

/// Unmaps an IOVA range, flushes the IOTLB, then frees the range: the order Linux's strict
/// `__iommu_dma_unmap` keeps. The free happens even if the flush failed: the domain's contract
/// is never to hand a range out again before a flush covering it has succeeded. The first error
/// is returned.
pub(crate) fn unmap_flush_free(domain: &dyn IommuDomain, iova: AddrRange<Iova>) -> Result<u64> {
    let unmapped = if iova.is_empty() {
        Ok(0)
    } else {
        domain.unmap(iova.start(), iova.len())
    };
    let flushed = domain.flush();
    let freed = domain.free_iova(iova.start(), iova.len());
    let unmapped = unmapped?;
    flushed?;
    freed?;
    Ok(unmapped)
}

#[derive(Debug)]
pub(crate) enum State {
    Live(Box<Resources>),
    /// Torn down by an invalidation; an ODP importer may re-fault after a move.
    Invalidated(InvalidationKind),
    /// A re-fault is building new resources outside the lock.
    Refaulting,
}

#[derive(Debug)]
pub(crate) struct Entry {
    pub exporter: Arc<dyn MemoryExporter>,
    pub importer: Arc<dyn DmaImporter>,
    pub range: AddrRange<Offset>,
    pub access: Access,
    pub pinned: bool,
    pub seq: Arc<Sequence>,
    pub state: State,
}

#[derive(Debug, Default)]
pub(crate) struct Inner {
    next: u64,
    pub entries: BTreeMap<u64, Entry>,
    /// (exporter, range start, mapping id): the exporter-range index.
    index: BTreeSet<(ExporterId, Offset, u64)>,
}

impl Inner {
    pub fn insert(&mut self, entry: Entry) -> u64 {
        self.next += 1;
        let id = self.next;
        self.index
            .insert((entry.exporter.id(), entry.range.start(), id));
        self.entries.insert(id, entry);
        id
    }

    pub fn remove(&mut self, id: u64) -> Option<Entry> {
        let e = self.entries.remove(&id)?;
        self.index.remove(&(e.exporter.id(), e.range.start(), id));
        Some(e)
    }

    /// Ids of the mappings of `exporter` that overlap `range`.
    pub fn overlapping(&self, exporter: ExporterId, range: &AddrRange<Offset>) -> Vec<u64> {
        self.index
            .range((exporter, Offset(0), 0)..(exporter, range.end(), 0))
            .map(|&(_, _, id)| id)
            .filter(|id| self.entries[id].range.overlaps(range))
            .collect()
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
#[derive(Debug, Default)]
pub struct Registry {
    pub(crate) inner: Mutex<Inner>,
    pub(crate) observer: Option<Arc<dyn MappingObserver>>,
}

impl Entry {
    /// The observer's view of this entry with `res` as its resources.
    pub fn event(&self, id: u64, res: &Resources) -> MappingEvent {
        MappingEvent {
            mapping: id,
            importer: self.importer.device(),
            exporter: self.exporter.id(),
            range: self.range,
            segments: res.segments.clone(),
            access: self.access,
            strategy: res.strategy.clone(),
        }
    }
}

impl Registry {
    pub(crate) fn with_observer(observer: Option<Arc<dyn MappingObserver>>) -> Self {
        Self {
            inner: Mutex::default(),
            observer,
        }
    }

    /// The observer's view of a live entry, if anyone observes.
    pub(crate) fn live_event(&self, inner: &Inner, id: u64) -> Option<MappingEvent> {
        self.observer.as_ref()?;
        let e = inner.entries.get(&id)?;
        match &e.state {
            State::Live(res) => Some(e.event(id, res)),
            _ => None,
        }
    }

    pub(crate) fn notify_established(&self, event: Option<MappingEvent>) {
        if let (Some(o), Some(ev)) = (&self.observer, event) {
            o.established(&ev);
        }
    }

    pub(crate) fn notify_torn_down(&self, event: Option<MappingEvent>, cause: TeardownCause) {
        if let (Some(o), Some(ev)) = (&self.observer, event) {
            o.torn_down(&ev, cause);
        }
    }

    /// Number of mappings, live or invalidated.
    pub fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The mappings of `exporter` that overlap `range`, by id.
    pub fn overlapping(&self, exporter: ExporterId, range: AddrRange<Offset>) -> Vec<MappingInfo> {
        let inner = self.inner.lock();
        inner
            .overlapping(exporter, &range)
            .into_iter()
            .map(|id| info(id, &inner.entries[&id]))
            .collect()
    }

    /// All mappings, by id.
    pub fn all(&self) -> Vec<MappingInfo> {
        let inner = self.inner.lock();
        inner.entries.iter().map(|(&id, e)| info(id, e)).collect()
    }
}

fn info(id: u64, e: &Entry) -> MappingInfo {
    MappingInfo {
        id,
        exporter: e.exporter.id(),
        range: e.range,
        importer: e.importer.device(),
        pinned: e.pinned,
        live: matches!(e.state, State::Live(_)),
    }
}
