//! The mock's reference IOMMU domain: a `BTreeMap` page table of 4 KiB pages, an IOTLB that
//! caches what DMA translated, strict or lazy invalidation, and a top-down IOVA allocator. Simple
//! on purpose: it is the oracle the software IOMMU is checked against (`tests/differential.rs`).
//! It logs nothing and checks nothing itself: the machine wraps every domain, this one or any
//! other, in [`Sanitized`](crate::wrap::Sanitized) and [`Faulty`](crate::wrap::Faulty).

use p2p_core::access::Access;
use p2p_core::addr::{AddrRange, Iova, PhysAddr};
use p2p_core::page::SZ_4K;
use p2p_core::reference::{Geometry, IovaSpace, PageMap};
use p2p_core::traits::{DomainKind, IommuDomain, MapAttrs, ReservedRegion, Translation};
use p2p_core::Result;
use parking_lot::Mutex;
use std::collections::HashMap;

/// How unmaps reach the IOTLB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushMode {
    /// Every flush invalidates the IOTLB at once (Linux `iommu.strict=1`).
    Strict,
    /// Flushes are queued; the IOTLB is invalidated and deferred IOVA frees happen when `batch`
    /// flushes are queued or the queue is drained (Linux's flush queue: 256 entries / 10 ms).
    Lazy {
        /// Queue length that forces a drain.
        batch: usize,
    },
}

#[derive(Debug, Default)]
struct State {
    /// iova page → translation.
    pages: PageMap,
    /// What DMA translated since the last invalidation: iova page → translation.
    iotlb: HashMap<u64, Translation>,
    /// Live IOVA allocations.
    iovas: IovaSpace,
    /// Frees waiting for the flush queue to drain.
    deferred: Vec<(u64, u64)>,
    queued_flushes: usize,
    hits: u64,
    misses: u64,
}

/// The reference domain.
#[derive(Debug)]
pub struct MockDomain {
    geometry: Geometry,
    flush_mode: FlushMode,
    state: Mutex<State>,
}

impl MockDomain {
    /// A domain of `kind` with a 48-bit aperture. The MSI window is always reserved; `extra` adds
    /// more (host-bridge windows, so no IOVA ever equals a peer's bus address).
    pub fn new(kind: DomainKind, flush_mode: FlushMode, extra: Vec<ReservedRegion>) -> Self {
        Self {
            geometry: Geometry::new(kind, extra),
            flush_mode,
            state: Mutex::default(),
        }
    }

    /// Pages mapped now.
    pub fn mapped_pages(&self) -> usize {
        self.state.lock().pages.len()
    }

    /// IOVA allocations live now (deferred frees count as live).
    pub fn live_iovas(&self) -> usize {
        self.state.lock().iovas.len()
    }

    /// IOTLB (hits, misses).
    pub fn iotlb_stats(&self) -> (u64, u64) {
        let s = self.state.lock();
        (s.hits, s.misses)
    }

    /// Flushes queued and not yet drained (lazy mode): the window in which stale IOTLB entries
    /// can still be used.
    pub fn queued_flushes(&self) -> usize {
        self.state.lock().queued_flushes
    }

    /// Drains the flush queue: invalidates the IOTLB and performs the deferred IOVA frees.
    pub fn drain_flush_queue(&self) {
        Self::drain(&mut self.state.lock());
    }

    fn drain(s: &mut State) {
        s.iotlb.clear();
        s.queued_flushes = 0;
        for (iova, _) in std::mem::take(&mut s.deferred) {
            s.iovas.free(Iova(iova));
        }
    }
}

/// `t` moved to the byte of `iova` within its page.
fn at(t: Translation, iova: u64) -> Translation {
    Translation {
        phys: PhysAddr(t.phys.0 + (iova & (SZ_4K - 1))),
        access: t.access,
    }
}

impl IommuDomain for MockDomain {
    p2p_core::forward_domain_description!(geometry);

    fn map_attrs(&self, i: Iova, p: PhysAddr, len: u64, a: Access, _at: MapAttrs) -> Result<()> {
        self.geometry.check_map(i, p, len)?;
        self.state.lock().pages.map(i, p, len, a)
    }

    fn unmap(&self, iova: Iova, len: u64) -> Result<u64> {
        self.geometry.require_translated("unmap")?;
        AddrRange::new(iova, len)?;
        let mut s = self.state.lock();
        let done = s.pages.unmap(iova, len);
        if self.flush_mode == FlushMode::Strict {
            // Strict: the unmap invalidates what it removed before it returns.
            for page in (0..done).step_by(SZ_4K as usize) {
                s.iotlb.remove(&(iova.0 + page));
            }
        }
        Ok(done)
    }

    fn translate(&self, iova: Iova) -> Option<Translation> {
        self.geometry
            .translate(iova, || self.state.lock().pages.translate(iova))
    }

    fn dma_translate(&self, iova: Iova) -> Option<Translation> {
        if self.geometry.kind() != DomainKind::Translated {
            return self.translate(iova);
        }
        let page = iova.0 & !(SZ_4K - 1);
        let mut s = self.state.lock();
        if let Some(&t) = s.iotlb.get(&page) {
            s.hits += 1;
            return Some(at(t, iova.0));
        }
        s.misses += 1;
        let t = s.pages.page(iova)?;
        s.iotlb.insert(page, t);
        Some(at(t, iova.0))
    }

    fn flush(&self) -> Result<()> {
        let mut s = self.state.lock();
        match self.flush_mode {
            FlushMode::Strict => Self::drain(&mut s),
            FlushMode::Lazy { batch } => {
                s.queued_flushes += 1;
                if s.queued_flushes >= batch {
                    Self::drain(&mut s);
                }
            }
        }
        Ok(())
    }

    fn flush_all(&self) -> Result<()> {
        Self::drain(&mut self.state.lock());
        Ok(())
    }

    fn alloc_iova(&self, len: u64, limit: u64) -> Result<Iova> {
        let mut s = self.state.lock();
        self.geometry.alloc_iova(&mut s.iovas, len, limit)
    }

    fn free_iova(&self, iova: Iova, len: u64) -> Result<()> {
        let mut s = self.state.lock();
        let size = s.iovas.size_of(iova, len)?;
        if matches!(self.flush_mode, FlushMode::Lazy { .. }) {
            // Not reusable before the IOTLB forgets it: an unmap leaves what DMA cached until
            // the queue drains, flushed since or not (as Linux's flush queue holds every lazy
            // free).
            s.deferred.push((iova.0, size));
        } else {
            s.iovas.free(iova);
        }
        Ok(())
    }
}
