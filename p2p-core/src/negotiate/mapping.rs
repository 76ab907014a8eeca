//! The RAII mapping handle.

use super::registry::{Key, Shard, State};
use super::{Segment, Sequence, Strategy, TeardownCause};
use crate::addr::{AddrRange, Iova, Offset};
use crate::error::{Error, Result};
use crate::traits::{ExportGrant, ExporterId, MemoryExporter};
use std::sync::Arc;

/// Where a [`Strategy::Bounce`] mapping's DMA lands: a grant of the platform's host memory
/// whose first [`Mapping::range`]`.len()` bytes stand for the mapped range (the allocation may
/// be rounded up). The mapping owns it; [`Mapping::sync_for_device`] and
/// [`Mapping::sync_for_cpu`] copy between it and the exporter's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BounceBuffer {
    /// The host-memory grant the importer's segments point into.
    pub grant: ExportGrant,
    /// The offset in host memory of the byte that stands for `range().start()`.
    pub start: Offset,
    /// Bytes in use (the mapped range's length).
    pub len: u64,
}

/// How many bytes one step of a bounce copy moves, so that the staging buffer stays small.
const SYNC_STEP: usize = 64 << 10;

/// An established mapping: the grant, the IOMMU mapping and the scatter list. Dropping it unmaps,
/// flushes, frees the IOVA range and releases the grant.
///
/// When the memory moves, the mapping is invalidated in place: [`segments`](Self::segments)
/// fails with [`Error::Invalidated`] until an ODP importer re-faults it with
/// [`Negotiator::refault`](super::Negotiator::refault). Readers follow the interval-notifier
/// pattern with [`read_begin`](Self::read_begin) / [`read_retry`](Self::read_retry).
pub struct Mapping {
    /// Its id and slot in its shard.
    pub(crate) key: Key,
    /// Whose memory: the registry keeps the mapping in this exporter's shard.
    pub(crate) exporter: ExporterId,
    /// The exporter's shard of the registry (not the registry: see [`Shard`]).
    pub(crate) shard: Arc<Shard>,
    pub(crate) seq: Arc<Sequence>,
    pub(crate) range: AddrRange<Offset>,
}

/// The id, range and sequence only: the registry behind it holds every device and, on a
/// simulated machine, all of its memory, which a `{:?}` of a mapping must not print.
impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping")
            .field("id", &self.key.id)
            .field("range", &self.range)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl Mapping {
    /// The mapping's id in the registry.
    pub fn id(&self) -> u64 {
        self.key.id
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
        self.with_live(|r| r.segments.to_vec())
    }

    /// How it was established.
    pub fn strategy(&self) -> Result<Strategy> {
        self.with_live(|r| r.strategy.clone())
    }

    /// The IOVA range it occupies, if it went through the IOMMU.
    pub fn iova(&self) -> Result<Option<AddrRange<Iova>>> {
        self.with_live(|r| r.iova)
    }

    /// The bounce buffer, for a [`Strategy::Bounce`] mapping; `None` for every other strategy
    /// (the importer reaches the exporter's memory itself).
    pub fn bounce(&self) -> Result<Option<BounceBuffer>> {
        self.with_live(|r| {
            r.bounce.as_ref().map(|(_, g)| BounceBuffer {
                grant: g.clone(),
                start: g.range.start(),
                len: self.range.len(),
            })
        })
    }

    /// Makes the exporter's bytes visible to the device: copies the mapped range into the
    /// bounce buffer (Linux's `dma_sync_single_for_device`). Call it after the CPU (or the
    /// exporter) wrote the memory and before the importer reads it. A no-op for strategies
    /// without a bounce buffer.
    ///
    /// The copy runs under the registry lock, so an invalidation cannot release the buffer or
    /// move the memory halfway through; it fails with [`Error::Invalidated`] on a mapping that
    /// is no longer live and with [`Error::NoCpuAccess`] if the exporter's memory cannot be
    /// read by the CPU.
    pub fn sync_for_device(&self) -> Result<()> {
        self.sync(|exp, grant, host, bounce, at, buf| {
            exp.read_grant(grant, Offset(grant.range.start().0 + at), buf)?;
            host.write_grant(bounce, Offset(bounce.range.start().0 + at), buf)
        })
    }

    /// Makes what the device wrote visible to the CPU: copies the bounce buffer back into the
    /// exporter's memory (Linux's `dma_sync_single_for_cpu`). Call it after the importer's
    /// writes completed and before the memory is read. A no-op without a bounce buffer; fails
    /// as [`sync_for_device`](Self::sync_for_device) does.
    pub fn sync_for_cpu(&self) -> Result<()> {
        self.sync(|exp, grant, host, bounce, at, buf| {
            host.read_grant(bounce, Offset(bounce.range.start().0 + at), buf)?;
            exp.write_grant(grant, Offset(grant.range.start().0 + at), buf)
        })
    }

    /// Runs `step(exporter, grant, host, bounce grant, offset into the range, buffer)` over the
    /// mapped range in [`SYNC_STEP`] pieces, holding the registry lock.
    fn sync(
        &self,
        mut step: impl FnMut(
            &dyn MemoryExporter,
            &ExportGrant,
            &dyn MemoryExporter,
            &ExportGrant,
            u64,
            &mut [u8],
        ) -> Result<()>,
    ) -> Result<()> {
        let inner = self.shard.lock();
        let entry = inner.entries.get(self.key);
        let (exp, res) = match entry.map(|e| (&e.exporter, &e.state)) {
            Some((exp, State::Live(res))) => (exp, res),
            _ => return Err(Error::Invalidated(self.key.id)),
        };
        let Some((host, bounce)) = &res.bounce else {
            return Ok(());
        };
        let len = self.range.len();
        let mut buf = vec![0u8; SYNC_STEP.min(usize::try_from(len).unwrap_or(SYNC_STEP))];
        let mut at = 0u64;
        while at < len {
            let n = buf
                .len()
                .min(usize::try_from(len - at).unwrap_or(buf.len()));
            step(&**exp, &res.grant, &**host, bounce, at, &mut buf[..n])?;
            at += n as u64;
        }
        Ok(())
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
        let inner = self.shard.lock();
        match inner.entries.get(self.key).map(|e| &e.state) {
            Some(State::Live(r)) => Ok(f(r)),
            _ => Err(Error::Invalidated(self.key.id)),
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        let mut inner = self.shard.lock();
        // The observer hears of the teardown under the lock, in registry order.
        self.shard
            .notify_torn_down(&inner, self.key, TeardownCause::Dropped);
        let entry = inner.remove(self.key);
        drop(inner);
        let Some(e) = entry else { return };
        tracing::debug!(mapping = self.key.id, exporter = %e.exporter_id, importer = %e.device, live = matches!(e.state, State::Live(_)), "dropped");
        if let State::Live(res) = e.state {
            if let Err(err) = res.teardown(&*e.exporter) {
                tracing::warn!(mapping = self.key.id, %err, "teardown of a dropped mapping failed");
            }
        }
        // Last, and outside the lock: an importer no one else holds any more goes here.
        drop(e.released);
    }
}
