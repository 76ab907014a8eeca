//! The writer side of the invalidation protocol: an exporter's owner tells every importer of a
//! range to stop, tears their mappings down, moves or revokes the memory, and ends the
//! invalidation (Linux's `invalidate_range_start` / `invalidate_range_end` around a migration).

use super::registry::{Key, State};
use super::{Negotiator, TeardownCause};
use crate::addr::{AddrRange, Offset};
use crate::error::{Error, Result};
use crate::traits::{ExporterId, Invalidation, InvalidationKind};

/// What an invalidation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InvalidationReport {
    /// Mappings torn down.
    pub mappings: usize,
    /// IOVA bytes unmapped.
    pub bytes_unmapped: u64,
    /// Importers that answered a forced revoke's notice with an error: their mappings were torn
    /// down anyway (a forced revoke does not wait), so their DMA now faults.
    pub unacknowledged: usize,
}

/// A running invalidation: from [`Negotiator::begin_invalidation`] until this is dropped (or
/// [`end`](Self::end)ed), no mapping of the range is live, and any set-up or re-fault of an
/// overlapping range waits (in `read_begin`) or retries. Move or revoke the memory while holding
/// it; that is the only time the memory may change place.
///
/// Do not set up a mapping of the same range on the thread that holds it: the set-up would wait
/// for this guard forever.
#[must_use = "the memory may move only while the invalidation is held; dropping it ends it"]
#[derive(Debug)]
pub struct Invalidating<'n> {
    negotiator: &'n Negotiator,
    exporter: ExporterId,
    token: u64,
    report: InvalidationReport,
}

impl Invalidating<'_> {
    /// What the invalidation tore down.
    pub fn report(&self) -> InvalidationReport {
        self.report
    }

    /// Ends the invalidation (the memory is in its new place); returns what it tore down.
    pub fn end(self) -> InvalidationReport {
        self.report
    }
}

impl Drop for Invalidating<'_> {
    fn drop(&mut self) {
        self.negotiator
            .registry
            .shard_for(self.exporter)
            .lock()
            .end_invalidation(self.token);
    }
}

impl Negotiator {
    /// Runs the invalidation protocol for a move or revoke of `range` that the caller has
    /// already carried out or does not need to wait on:
    /// [`begin_invalidation`](Self::begin_invalidation) and at once [`Invalidating::end`].
    ///
    /// To move memory, prefer `begin_invalidation`, move while holding the guard, then end it:
    /// a mapping set up between this returning and the move would see the old place.
    pub fn invalidate(
        &self,
        exporter: ExporterId,
        range: AddrRange<Offset>,
        kind: InvalidationKind,
    ) -> Result<InvalidationReport> {
        self.begin_invalidation(exporter, range, kind)
            .map(Invalidating::end)
    }

    /// Begins invalidating `range` of an exporter before it moves or is revoked: every
    /// overlapping mapping's sequence goes odd, every live one's importer is told and must stop,
    /// then its IOMMU mapping is unmapped and flushed and its grant released. When this returns
    /// `Ok`, the memory may move, for as long as the returned guard is held.
    ///
    /// A range that a pinned mapping holds is refused with [`Error::Pinned`] before anything is
    /// touched. If an importer fails to stop, the mappings already invalidated stay so, the
    /// others stay live, the invalidation ends, and the error names the importer: the memory
    /// must not move.
    ///
    /// This is the path for an exporter that *asks*: a migration, an eviction, a
    /// `Move`. When the memory goes away whether or not anyone agrees (a device reset, a
    /// dma-buf revoke, decode disabled), use [`begin_forced_revoke`](Self::begin_forced_revoke).
    pub fn begin_invalidation(
        &self,
        exporter: ExporterId,
        range: AddrRange<Offset>,
        kind: InvalidationKind,
    ) -> Result<Invalidating<'_>> {
        self.begin(exporter, range, kind, false)
    }

    /// Begins a revoke that does not ask: the memory is going away (a device reset, a dma-buf
    /// revoke). Every overlapping mapping, **pinned ones included**, is invalidated as
    /// [`begin_invalidation`](Self::begin_invalidation) does with
    /// [`InvalidationKind::Revoke`]: its importer is told, its IOMMU mapping unmapped and
    /// flushed, its grant released, and it is left dead ([`Mapping::segments`](super::Mapping::segments)
    /// fails, it cannot be re-faulted). DMA through it afterwards
    /// faults in the IOMMU, and a DMA sanitizer sees a revoke as its cause.
    ///
    /// An importer that cannot stop is not waited for: its mapping is torn down anyway, it is
    /// counted in [`InvalidationReport::unacknowledged`] and a warning is logged. So this never
    /// fails on account of importers; it returns `Result` for symmetry with the asking path.
    pub fn begin_forced_revoke(
        &self,
        exporter: ExporterId,
        range: AddrRange<Offset>,
    ) -> Result<Invalidating<'_>> {
        self.begin(exporter, range, InvalidationKind::Revoke, true)
    }

    /// [`begin_forced_revoke`](Self::begin_forced_revoke) and at once [`Invalidating::end`],
    /// for memory that is already gone.
    pub fn revoke_forced(
        &self,
        exporter: ExporterId,
        range: AddrRange<Offset>,
    ) -> Result<InvalidationReport> {
        self.begin_forced_revoke(exporter, range)
            .map(Invalidating::end)
    }

    /// Both writers: `force` skips the pinned check and does not stop at importers that fail.
    fn begin(
        &self,
        exporter: ExporterId,
        range: AddrRange<Offset>,
        kind: InvalidationKind,
        force: bool,
    ) -> Result<Invalidating<'_>> {
        let _span = tracing::debug_span!("invalidate", %exporter, %range, ?kind, force).entered();
        // 1. Under the lock: refuse pinned ranges (unless forced), then make every overlapping
        // sequence odd.
        let (token, keys) = {
            let mut inner = self.registry.shard_for(exporter).lock();
            let keys = inner.overlapping(exporter, &range);
            let pinned = keys
                .iter()
                .filter_map(|&k| inner.entries.get(k))
                .find(|e| e.pinned);
            if let (Some(e), false) = (pinned, force) {
                let importer = e.device;
                tracing::info!(%exporter, %range, %importer, "invalidation refused: pinned");
                return Err(Error::Pinned {
                    exporter,
                    range: range.to_string(),
                    importer,
                });
            }
            inner.begin_invalidation(exporter, range)
        };
        let mut guard = Invalidating {
            negotiator: self,
            exporter,
            token,
            report: InvalidationReport::default(),
        };
        // 2. Outside the lock: tell each live mapping's importer, then tear the mapping down.
        for key in keys {
            self.invalidate_one(key, exporter, range, kind, force, &mut guard.report)?;
        }
        tracing::info!(
            %exporter,
            %range,
            ?kind,
            force,
            mappings = guard.report.mappings,
            bytes = guard.report.bytes_unmapped,
            unacknowledged = guard.report.unacknowledged,
            "invalidated"
        );
        Ok(guard)
    }

    /// Tells a live mapping's importer to stop, then takes its resources (the observer hears of
    /// the teardown under the registry lock) and gives them back. A mapping that is not live
    /// (being built, already invalidated, dropped) has nothing to stop: its odd sequence makes
    /// its builder retry. With `force`, an importer that fails to stop is counted and its
    /// mapping torn down anyway.
    fn invalidate_one(
        &self,
        key: Key,
        exporter: ExporterId,
        range: AddrRange<Offset>,
        kind: InvalidationKind,
        force: bool,
        report: &mut InvalidationReport,
    ) -> Result<()> {
        let (importer, device, seq) = {
            let inner = self.registry.shard_for(exporter).lock();
            let live = inner
                .entries
                .get(key)
                .filter(|e| matches!(e.state, State::Live(_)));
            let Some(e) = live else { return Ok(()) };
            // A live entry holds its importer (see the `importers` module); were it missing, the
            // mapping is still torn down below, as a forced revoke's unacknowledged one is.
            let importer = inner.importer_of(key);
            debug_assert!(importer.is_some(), "a live entry without its importer");
            (importer, e.device, e.seq.current())
        };
        let id = key.id;
        let notice = Invalidation {
            mapping: id,
            exporter,
            range,
            kind,
            seq,
        };
        let told = match &importer {
            Some(importer) => importer.invalidate(&notice),
            None => Err(Error::Invalidated(id)),
        };
        if let Err(err) = told {
            if !force && importer.is_some() {
                return Err(Error::InvalidateFailed {
                    device,
                    range: range.to_string(),
                    reason: err.to_string(),
                });
            }
            // A reset does not wait for a device that cannot stop: its DMA will fault.
            tracing::warn!(mapping = id, importer = %device, %err, "importer did not acknowledge a forced revoke");
            report.unacknowledged += 1;
        }
        let taken = {
            let mut inner = self.registry.shard_for(exporter).lock();
            let live = inner
                .entries
                .get(key)
                .is_some_and(|e| matches!(e.state, State::Live(_)));
            if !live {
                return Ok(());
            }
            self.registry
                .notify_torn_down(&inner, key, TeardownCause::Invalidated(kind));
            let e = inner.entries.get_mut(key).ok_or(Error::Invalidated(id))?;
            // Its grant is released below: it pins nothing any more.
            e.pinned = false;
            match std::mem::replace(&mut e.state, State::Invalidated(kind)) {
                State::Live(res) => Some((res, e.exporter.clone())),
                _ => None,
            }
        };
        if let Some((res, exp)) = taken {
            match res.teardown(&*exp) {
                Ok(n) => report.bytes_unmapped += n,
                Err(err) => {
                    tracing::warn!(mapping = id, %err, "teardown during invalidation failed")
                }
            }
            report.mappings += 1;
        }
        Ok(())
    }
}
