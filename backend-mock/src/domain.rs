//! The mock's reference IOMMU domain: a `BTreeMap` page table of 4 KiB pages, an IOTLB that
//! caches what DMA translated, strict or lazy invalidation, and a top-down IOVA allocator. Simple
//! on purpose: it is the oracle the software IOMMU is checked against (`tests/differential.rs`).
//! It logs nothing and checks nothing itself: the machine wraps every domain, this one or any
//! other, in [`Sanitized`](crate::wrap::Sanitized) and [`Faulty`](crate::wrap::Faulty).

use p2p_core::access::Access;
use p2p_core::addr::{align_up, AddrRange, Iova, PhysAddr};
use p2p_core::page::{PageSizes, SZ_4K};
use p2p_core::testing::alloc_top_down;
use p2p_core::traits::{
    check_map_args, DomainKind, IommuDomain, MapAttrs, ReservedKind, ReservedRegion, Translation,
};
use p2p_core::{Error, Result};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};

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
    pages: BTreeMap<u64, Translation>,
    /// What DMA translated since the last invalidation: iova page → translation.
    iotlb: HashMap<u64, Translation>,
    /// Live IOVA allocations: start → length.
    iovas: BTreeMap<u64, u64>,
    /// Frees waiting for the flush queue to drain.
    deferred: Vec<(u64, u64)>,
    queued_flushes: usize,
    hits: u64,
    misses: u64,
}

/// The reference domain.
#[derive(Debug)]
pub struct MockDomain {
    kind: DomainKind,
    flush_mode: FlushMode,
    aperture: AddrRange<Iova>,
    reserved: Vec<ReservedRegion>,
    state: Mutex<State>,
}

impl MockDomain {
    /// A domain of `kind` with a 48-bit aperture. The MSI window is always reserved; `extra` adds
    /// more (host-bridge windows, so no IOVA ever equals a peer's bus address).
    pub fn new(kind: DomainKind, flush_mode: FlushMode, extra: Vec<ReservedRegion>) -> Self {
        let msi = ReservedRegion {
            range: AddrRange::new(Iova(0xfee0_0000), 0x10_0000).unwrap_or_else(|_| unreachable!()),
            kind: ReservedKind::Msi,
        };
        let mut reserved = vec![msi];
        reserved.extend(extra);
        Self {
            kind,
            flush_mode,
            aperture: AddrRange::new(Iova(0), 1 << 48).unwrap_or_else(|_| unreachable!()),
            reserved,
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
            s.iovas.remove(&iova);
        }
    }

    fn require_translated(&self, op: &'static str) -> Result<()> {
        if self.kind == DomainKind::Translated {
            Ok(())
        } else {
            Err(Error::WrongDomainKind {
                op,
                kind: self.kind.name(),
            })
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
    fn kind(&self) -> DomainKind {
        self.kind
    }

    fn aperture(&self) -> AddrRange<Iova> {
        self.aperture
    }

    fn page_sizes(&self) -> PageSizes {
        PageSizes::SIZE_4K
    }

    fn reserved_regions(&self) -> Vec<ReservedRegion> {
        self.reserved.clone()
    }

    fn map_attrs(
        &self,
        iova: Iova,
        phys: PhysAddr,
        len: u64,
        access: Access,
        _attrs: MapAttrs,
    ) -> Result<()> {
        self.require_translated("map")?;
        check_map_args(&self.aperture, &self.reserved, iova, phys, len, SZ_4K)?;
        let mut s = self.state.lock();
        if let Some((&at, _)) = s.pages.range(iova.0..iova.0 + len).next() {
            return Err(Error::AlreadyMapped(at));
        }
        for i in 0..len / SZ_4K {
            let page = Translation {
                phys: PhysAddr(phys.0 + i * SZ_4K),
                access,
            };
            s.pages.insert(iova.0 + i * SZ_4K, page);
        }
        Ok(())
    }

    fn unmap(&self, iova: Iova, len: u64) -> Result<u64> {
        self.require_translated("unmap")?;
        AddrRange::new(iova, len)?;
        let mut s = self.state.lock();
        let mut done = 0;
        while done < len && s.pages.remove(&(iova.0 + done)).is_some() {
            done += SZ_4K;
        }
        if self.flush_mode == FlushMode::Strict {
            // Strict: the unmap invalidates what it removed before it returns.
            for page in (0..done).step_by(SZ_4K as usize) {
                s.iotlb.remove(&(iova.0 + page));
            }
        }
        Ok(done)
    }

    fn translate(&self, iova: Iova) -> Option<Translation> {
        match self.kind {
            DomainKind::Identity => Some(Translation {
                phys: PhysAddr(iova.0),
                access: Access::all(),
            }),
            DomainKind::Blocked => None,
            DomainKind::Translated => {
                let page = iova.0 & !(SZ_4K - 1);
                let t = self.state.lock().pages.get(&page).copied()?;
                Some(at(t, iova.0))
            }
        }
    }

    fn dma_translate(&self, iova: Iova) -> Option<Translation> {
        if self.kind != DomainKind::Translated {
            return self.translate(iova);
        }
        let page = iova.0 & !(SZ_4K - 1);
        let mut s = self.state.lock();
        if let Some(&t) = s.iotlb.get(&page) {
            s.hits += 1;
            return Some(at(t, iova.0));
        }
        s.misses += 1;
        let t = s.pages.get(&page).copied()?;
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
        let exhausted = Error::IovaExhausted { len, limit };
        let size = align_up(len, SZ_4K).ok_or(exhausted.clone())?;
        let align = size.checked_next_power_of_two().ok_or(exhausted.clone())?;
        let hi = limit.min(self.aperture.last().map_or(0, |a| a.0));
        let mut s = self.state.lock();
        let mut taken = s.iovas.clone();
        for r in &self.reserved {
            taken.insert(r.range.start().0, r.range.len());
        }
        let start = alloc_top_down(&taken, SZ_4K, hi, size, align).ok_or(exhausted)?;
        s.iovas.insert(start, size);
        Ok(Iova(start))
    }

    fn free_iova(&self, iova: Iova, len: u64) -> Result<()> {
        let mut s = self.state.lock();
        match s.iovas.get(&iova.0) {
            Some(&size) if align_up(len, SZ_4K) == Some(size) => {
                if matches!(self.flush_mode, FlushMode::Lazy { .. }) {
                    // Not reusable before the IOTLB forgets it: an unmap leaves what DMA cached
                    // until the queue drains, flushed since or not (as Linux's flush queue
                    // holds every lazy free).
                    s.deferred.push((iova.0, size));
                } else {
                    s.iovas.remove(&iova.0);
                }
                Ok(())
            }
            _ => Err(Error::NotMapped(iova.0)),
        }
    }
}
