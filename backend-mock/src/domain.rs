//! The mock's reference IOMMU domain: a `BTreeMap` page table of 4 KiB pages, an IOTLB that
//! caches what DMA translated, strict or lazy invalidation, and a top-down IOVA allocator. Simple
//! on purpose: it is the oracle the software IOMMU is checked against.

use crate::events::{Event, EventLog};
use crate::faults::{FaultInjector, FaultPoint};
use crate::sanitizer::{FindingKind, Sanitizer};
use p2p_core::access::Access;
use p2p_core::addr::{align_up, AddrRange, Iova, PhysAddr};
use p2p_core::page::{PageSizes, SZ_4K};
use p2p_core::testing::alloc_top_down;
use p2p_core::traits::{
    check_map_args, DomainKind, IommuDomain, MapAttrs, ReservedKind, ReservedRegion, Translation,
};
use p2p_core::{Error, PciAddr, Result};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

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
    /// iova → (length, event index) of each map call, for the unmap-size check.
    maps: BTreeMap<u64, (u64, usize)>,
    /// What DMA translated since the last invalidation: iova page → translation.
    iotlb: HashMap<u64, Translation>,
    /// Live IOVA allocations: start → length.
    iovas: BTreeMap<u64, u64>,
    /// Frees waiting for the flush queue to drain.
    deferred: Vec<(u64, u64)>,
    queued_flushes: usize,
    /// A flush failed: frees wait for the next one that succeeds.
    flush_owed: bool,
    hits: u64,
    misses: u64,
}

/// The reference domain of one device.
#[derive(Debug)]
pub struct MockDomain {
    name: String,
    device: PciAddr,
    kind: DomainKind,
    flush_mode: FlushMode,
    aperture: AddrRange<Iova>,
    reserved: Vec<ReservedRegion>,
    state: Mutex<State>,
    log: Arc<EventLog>,
    faults: Arc<FaultInjector>,
    sanitizer: Arc<Sanitizer>,
}

/// Where a DMA translation came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The IOTLB held it and the page table agrees.
    Hit(Translation),
    /// Walked the page table (and filled the IOTLB).
    Walk(Translation),
    /// The IOTLB held it but the page table no longer does (lazy window).
    Stale(Translation),
    /// Nothing translates it: a DMA remapping fault.
    Fault,
}

impl MockDomain {
    /// A domain for `device`. The MSI window is always reserved; `extra` adds more (host-bridge
    /// windows, so no IOVA ever equals a peer's bus address).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        device: PciAddr,
        kind: DomainKind,
        flush_mode: FlushMode,
        extra: Vec<ReservedRegion>,
        log: Arc<EventLog>,
        faults: Arc<FaultInjector>,
        sanitizer: Arc<Sanitizer>,
    ) -> Self {
        let msi = ReservedRegion {
            range: AddrRange::new(Iova(0xfee0_0000), 0x10_0000).unwrap_or_else(|_| unreachable!()),
            kind: ReservedKind::Msi,
        };
        let mut reserved = vec![msi];
        reserved.extend(extra);
        Self {
            name: format!("iommu:{device}"),
            device,
            kind,
            flush_mode,
            aperture: AddrRange::new(Iova(0), 1 << 48).unwrap_or_else(|_| unreachable!()),
            reserved,
            state: Mutex::default(),
            log,
            faults,
            sanitizer,
        }
    }

    /// Pages mapped now.
    pub fn mapped_pages(&self) -> usize {
        self.state.lock().pages.len()
    }

    /// IOVA allocations live now (deferred frees count as live).
    pub fn live_iovas(&self) -> usize {
        let s = self.state.lock();
        s.iovas.len()
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
        let mut s = self.state.lock();
        self.drain(&mut s);
    }

    fn drain(&self, s: &mut State) {
        s.iotlb.clear();
        s.queued_flushes = 0;
        s.flush_owed = false;
        for (iova, len) in std::mem::take(&mut s.deferred) {
            s.iovas.remove(&iova);
            self.log.push(Event::IovaFree {
                domain: self.name.clone(),
                iova,
                len,
                deferred: false,
            });
        }
        self.log.push(Event::Flush {
            domain: self.name.clone(),
            what: "drained",
        });
    }

    /// Translates one DMA access as the hardware would: IOTLB first, then the page table.
    pub fn translate_dma(&self, iova: u64) -> Lookup {
        let page = iova & !(SZ_4K - 1);
        let mut s = self.state.lock();
        let table = s.pages.get(&page).copied();
        let cached = s.iotlb.get(&page).copied();
        let at = |t: Translation| Translation {
            phys: PhysAddr(t.phys.0 + (iova - page)),
            access: t.access,
        };
        match (cached, table) {
            (Some(c), Some(t)) if c == t => {
                s.hits += 1;
                Lookup::Hit(at(t))
            }
            (Some(c), None) => {
                s.hits += 1;
                Lookup::Stale(at(c))
            }
            (_, Some(t)) => {
                s.misses += 1;
                s.iotlb.insert(page, t);
                Lookup::Walk(at(t))
            }
            (None, None) => {
                s.misses += 1;
                Lookup::Fault
            }
        }
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
        let _span = tracing::debug_span!("domain_map", domain = %self.name, %iova, len).entered();
        if self.kind != DomainKind::Translated {
            return Err(Error::WrongDomainKind {
                op: "map",
                kind: self.kind.name(),
            });
        }
        check_map_args(&self.aperture, &self.reserved, iova, phys, len, SZ_4K)?;
        let mut s = self.state.lock();
        if let Some((&at, _)) = s.pages.range(iova.0..iova.0 + len).next() {
            return Err(Error::AlreadyMapped(at));
        }
        for i in 0..len / SZ_4K {
            let at = iova.0 + i * SZ_4K;
            let name = &self.name;
            if self.faults.should_fail(
                FaultPoint::PageTableAlloc,
                || format!("{name} iova {at:#x}"),
                &self.log,
            ) {
                // All or nothing: take back what this call stored.
                for j in 0..i {
                    s.pages.remove(&(iova.0 + j * SZ_4K));
                }
                return Err(Error::Backend {
                    backend: "mock-iommu",
                    message: format!("no page-table frame for iova {at:#x}"),
                });
            }
            s.pages.insert(
                at,
                Translation {
                    phys: PhysAddr(phys.0 + i * SZ_4K),
                    access,
                },
            );
        }
        let event = self.log.push(Event::Map {
            domain: self.name.clone(),
            iova: iova.0,
            phys: phys.0,
            len,
        });
        s.maps.insert(iova.0, (len, event));
        Ok(())
    }

    fn unmap(&self, iova: Iova, len: u64) -> Result<u64> {
        let _span = tracing::debug_span!("domain_unmap", domain = %self.name, %iova, len).entered();
        if self.kind != DomainKind::Translated {
            return Err(Error::WrongDomainKind {
                op: "unmap",
                kind: self.kind.name(),
            });
        }
        let mut s = self.state.lock();
        // The sanitizer's checks, as dma-debug's check_unmap: nothing mapped there, or a size
        // other than the map's.
        match s.maps.get(&iova.0).copied() {
            None => {
                drop(s);
                self.sanitizer.report(self.sanitizer.finding(
                    FindingKind::DoubleUnmap,
                    self.device,
                    iova.0,
                    len,
                    None,
                ));
                s = self.state.lock();
            }
            Some((mapped, event)) if mapped != len => {
                drop(s);
                let mut f = self.sanitizer.finding(
                    FindingKind::WrongUnmapSize,
                    self.device,
                    iova.0,
                    len,
                    None,
                );
                f.created_by = Some(event);
                self.sanitizer.report(f);
                s = self.state.lock();
            }
            Some(_) => {}
        }
        let mut done = 0;
        while done < len && s.pages.remove(&(iova.0 + done)).is_some() {
            done += SZ_4K;
        }
        // Forget map records wholly inside what was unmapped.
        let gone: Vec<u64> = s
            .maps
            .range(iova.0..iova.0 + done)
            .filter(|(&a, &(l, _))| a + l <= iova.0 + done)
            .map(|(&a, _)| a)
            .collect();
        for a in gone {
            s.maps.remove(&a);
        }
        self.log.push(Event::Unmap {
            domain: self.name.clone(),
            iova: iova.0,
            len,
            unmapped: done,
        });
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
                self.state.lock().pages.get(&page).map(|t| Translation {
                    phys: PhysAddr(t.phys.0 + iova.0 - page),
                    access: t.access,
                })
            }
        }
    }

    fn flush(&self) -> Result<()> {
        let name = &self.name;
        if self.faults.should_fail(
            FaultPoint::FlushTimeout,
            || format!("{name} IOTLB invalidation"),
            &self.log,
        ) {
            self.state.lock().flush_owed = true;
            return Err(Error::Backend {
                backend: "mock-iommu",
                message: format!("{name}: IOTLB invalidation timed out"),
            });
        }
        let mut s = self.state.lock();
        match self.flush_mode {
            FlushMode::Strict if s.flush_owed || !s.deferred.is_empty() => self.drain(&mut s),
            FlushMode::Strict => {
                s.iotlb.clear();
                self.log.push(Event::Flush {
                    domain: self.name.clone(),
                    what: "strict",
                });
            }
            FlushMode::Lazy { batch } => {
                s.queued_flushes += 1;
                self.log.push(Event::Flush {
                    domain: self.name.clone(),
                    what: "queued",
                });
                if s.queued_flushes >= batch {
                    self.drain(&mut s);
                }
            }
        }
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
        self.log.push(Event::IovaAlloc {
            domain: self.name.clone(),
            iova: start,
            len: size,
        });
        Ok(Iova(start))
    }

    fn free_iova(&self, iova: Iova, len: u64) -> Result<()> {
        let mut s = self.state.lock();
        match s.iovas.get(&iova.0) {
            Some(&size) if align_up(len, SZ_4K) == Some(size) => {
                if s.flush_owed
                    || (matches!(self.flush_mode, FlushMode::Lazy { .. }) && s.queued_flushes > 0)
                {
                    // Not reusable before the IOTLB forgets it.
                    s.deferred.push((iova.0, size));
                    self.log.push(Event::IovaFree {
                        domain: self.name.clone(),
                        iova: iova.0,
                        len: size,
                        deferred: true,
                    });
                } else {
                    s.iovas.remove(&iova.0);
                    self.log.push(Event::IovaFree {
                        domain: self.name.clone(),
                        iova: iova.0,
                        len: size,
                        deferred: false,
                    });
                }
                Ok(())
            }
            _ => Err(Error::NotMapped(iova.0)),
        }
    }
}
