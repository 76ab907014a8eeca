//! The RAII mapping handle.

use super::registry::{Registry, State};
use super::{Segment, Sequence, Strategy, TeardownCause};
use crate::addr::{AddrRange, Iova, Offset};
use crate::error::{Error, Result};
use std::sync::Arc;

/// An established mapping: the grant, the IOMMU mapping and the scatter list. Dropping it unmaps,
/// flushes, frees the IOVA range and releases the grant.
///
/// When the memory moves, the mapping is invalidated in place: [`segments`](Self::segments)
/// fails with [`Error::Invalidated`] until an ODP importer re-faults it with
/// [`Negotiator::refault`](super::Negotiator::refault). Readers follow the interval-notifier
/// pattern with [`read_begin`](Self::read_begin) / [`read_retry`](Self::read_retry).
#[derive(Debug)]
pub struct Mapping {
    pub(crate) id: u64,
    pub(crate) registry: Arc<Registry>,
    pub(crate) seq: Arc<Sequence>,
    pub(crate) range: AddrRange<Offset>,
}

impl Mapping {
    /// The mapping's id in the registry.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The exporter range it covers.
    pub fn range(&self) -> AddrRange<Offset> {
        self.range
    }

    /// The scatter list to program into the device. It describes exactly the bytes of
    /// [`range`](Self::range): the first segment's address is that of the byte at
    /// `range().start()` (in-page offset included, as Linux's `dma_map_*` returns), and the
    /// lengths add up to `range().len()`. For a [`Strategy::Bounce`] mapping the addresses are
    /// those of the bounce buffer.
    pub fn segments(&self) -> Result<Vec<Segment>> {
        self.with_live(|r| r.segments.clone())
    }

    /// How it was established.
    pub fn strategy(&self) -> Result<Strategy> {
        self.with_live(|r| r.strategy.clone())
    }

    /// The IOVA range it occupies, if it went through the IOMMU.
    pub fn iova(&self) -> Result<Option<AddrRange<Iova>>> {
        self.with_live(|r| r.iova)
    }

    /// Whether it is established (not invalidated).
    pub fn is_live(&self) -> bool {
        self.with_live(|_| ()).is_ok()
    }

    /// Waits for any running invalidation and returns the sequence to check later.
    pub fn read_begin(&self) -> u64 {
        self.seq.read_begin()
    }

    /// Whether the mapping was invalidated since `seq`.
    pub fn read_retry(&self, seq: u64) -> bool {
        self.seq.read_retry(seq)
    }

    fn with_live<T>(&self, f: impl FnOnce(&super::registry::Resources) -> T) -> Result<T> {
        let inner = self.registry.inner.lock();
        match inner.entries.get(&self.id).map(|e| &e.state) {
            Some(State::Live(r)) => Ok(f(r)),
            _ => Err(Error::Invalidated(self.id)),
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        let mut inner = self.registry.inner.lock();
        // The observer hears of the teardown under the lock, in registry order.
        self.registry
            .notify_torn_down(&inner, self.id, TeardownCause::Dropped);
        let entry = inner.remove(self.id);
        drop(inner);
        let Some(e) = entry else { return };
        if let State::Live(res) = e.state {
            if let Err(err) = res.teardown(&*e.exporter) {
                tracing::warn!(mapping = self.id, %err, "teardown of a dropped mapping failed");
            }
        }
    }
}
