//! The domain contract in its plainest form, as state the reference domains share: what the
//! domain is ([`Geometry`]), a page map of 4 KiB pages and a top-down IOVA space. `TestDomain` (p2p-core's unit tests) and the mock's
//! `MockDomain` (which adds an IOTLB and a flush queue) both keep their translations here, so
//! the rules the conformance suite checks are written once for both.

use crate::access::Access;
use crate::addr::{align_down, align_up, AddrRange, Iova, PhysAddr};
use crate::error::{Error, Result};
use crate::page::PageSizes;
use crate::page::SZ_4K;
use crate::range_alloc::alloc_top_down;
use crate::traits::{check_map_args, DomainKind, ReservedKind, ReservedRegion, Translation};
use std::collections::BTreeMap;

/// Translations of 4 KiB pages, by IOVA page.
#[derive(Debug, Default, Clone)]
pub struct PageMap {
    pages: BTreeMap<u64, Translation>,
}

impl PageMap {
    /// Maps `len` bytes (4 KiB multiples, arguments already checked) from `iova` to `phys`; all
    /// or nothing: [`Error::AlreadyMapped`] with the first mapped page if any page is mapped.
    pub fn map(&mut self, iova: Iova, phys: PhysAddr, len: u64, access: Access) -> Result<()> {
        self.check_free(iova, len)?;
        for i in 0..len / SZ_4K {
            let page = Translation {
                phys: PhysAddr(phys.0 + i * SZ_4K),
                access,
            };
            self.pages.insert(iova.0 + i * SZ_4K, page);
        }
        Ok(())
    }

    /// [`Error::AlreadyMapped`] with the first mapped page of `[iova, iova+len)`, if any.
    pub fn check_free(&self, iova: Iova, len: u64) -> Result<()> {
        match self.pages.range(iova.0..iova.0.saturating_add(len)).next() {
            Some((&at, _)) => Err(Error::AlreadyMapped(at)),
            None => Ok(()),
        }
    }

    /// Unmaps pages from `iova` up to `len` bytes, stopping at the first page not mapped;
    /// returns the bytes unmapped.
    pub fn unmap(&mut self, iova: Iova, len: u64) -> u64 {
        let mut done = 0;
        while done < len && self.pages.remove(&(iova.0 + done)).is_some() {
            done += SZ_4K;
        }
        done
    }

    /// The translation of the page holding `iova` (its first byte's).
    pub fn page(&self, iova: Iova) -> Option<Translation> {
        self.pages.get(&align_down(iova.0, SZ_4K)).copied()
    }

    /// The translation of `iova`, in-page offset included.
    pub fn translate(&self, iova: Iova) -> Option<Translation> {
        self.page(iova).map(|t| Translation {
            phys: PhysAddr(t.phys.0 + (iova.0 & (SZ_4K - 1))),
            access: t.access,
        })
    }

    /// Pages mapped.
    pub fn len(&self) -> usize {
        self.pages.len()
    }

    /// Whether nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }
}

/// Live IOVA allocations: size-aligned, page-rounded, top down under the limit, inside the
/// aperture and outside the reserved regions (as Linux's IOVA allocator hands them out).
#[derive(Debug, Default, Clone)]
pub struct IovaSpace {
    /// start → size.
    live: BTreeMap<u64, u64>,
}

impl IovaSpace {
    /// A fresh range of at least `len` bytes at or below `limit`; [`Error::IovaExhausted`] if
    /// none is free.
    pub fn alloc(
        &mut self,
        aperture: &AddrRange<Iova>,
        reserved: &[ReservedRegion],
        len: u64,
        limit: u64,
    ) -> Result<Iova> {
        let exhausted = Error::IovaExhausted { len, limit };
        let size = align_up(len, SZ_4K).ok_or(exhausted.clone())?;
        let align = size.checked_next_power_of_two().ok_or(exhausted.clone())?;
        let hi = limit.min(aperture.last().map_or(0, |a| a.0));
        // Reserved regions are allocations nobody frees.
        let mut taken = self.live.clone();
        for r in reserved {
            taken.insert(r.range.start().0, r.range.len());
        }
        // IOVA 0 is never handed out: a zero DMA address reads as "none" to many drivers.
        let lo = aperture.start().0.max(SZ_4K);
        let start = alloc_top_down(&taken, lo, hi, size, align).ok_or(exhausted)?;
        self.live.insert(start, size);
        Ok(Iova(start))
    }

    /// The size of the live allocation at `iova` that `len` names (`len` rounds up to it);
    /// [`Error::NotMapped`] if there is none.
    pub fn size_of(&self, iova: Iova, len: u64) -> Result<u64> {
        match self.live.get(&iova.0) {
            Some(&size) if align_up(len, SZ_4K) == Some(size) => Ok(size),
            _ => Err(Error::NotMapped(iova.0)),
        }
    }

    /// Frees the allocation at `iova` (checked with [`size_of`](Self::size_of) first).
    pub fn free(&mut self, iova: Iova) {
        self.live.remove(&iova.0);
    }

    /// Allocations live.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether none is live.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

/// What a reference domain is, apart from its state: its kind, a 48-bit aperture (as a
/// 4-level VT-d table covers) and its reserved regions, x86's MSI doorbell window always among
/// them. Its methods answer [`IommuDomain`](crate::IommuDomain)'s description methods
/// ([`forward_domain_description!`](crate::forward_domain_description)) and its argument rules.
#[derive(Debug, Clone)]
pub struct Geometry {
    kind: DomainKind,
    aperture: AddrRange<Iova>,
    reserved: Vec<ReservedRegion>,
}

impl Geometry {
    /// A domain of `kind` reserving the MSI window and `extra`.
    pub fn new(kind: DomainKind, extra: impl IntoIterator<Item = ReservedRegion>) -> Self {
        let msi = ReservedRegion {
            range: AddrRange::new(Iova(0xfee0_0000), 0x10_0000)
                .unwrap_or_else(|_| unreachable!("a constant range")),
            kind: ReservedKind::Msi,
        };
        Self {
            kind,
            aperture: AddrRange::new(Iova(0), 1 << 48)
                .unwrap_or_else(|_| unreachable!("a constant range")),
            reserved: std::iter::once(msi).chain(extra).collect(),
        }
    }

    /// Reserves one more region.
    pub fn reserve(&mut self, region: ReservedRegion) {
        self.reserved.push(region);
    }

    /// The kind.
    pub fn kind(&self) -> DomainKind {
        self.kind
    }

    /// The aperture.
    pub fn aperture(&self) -> AddrRange<Iova> {
        self.aperture
    }

    /// 4 KiB pages only.
    pub fn page_sizes(&self) -> PageSizes {
        PageSizes::SIZE_4K
    }

    /// The reserved regions.
    pub fn reserved_regions(&self) -> Vec<ReservedRegion> {
        self.reserved.clone()
    }

    /// [`Error::WrongDomainKind`] for `op` unless the domain translates.
    pub fn require_translated(&self, op: &'static str) -> Result<()> {
        if self.kind == DomainKind::Translated {
            return Ok(());
        }
        Err(Error::WrongDomainKind {
            op,
            kind: self.kind.name(),
        })
    }

    /// A map's arguments as the contract wants them: a translated domain, 4 KiB alignment,
    /// inside the aperture, outside every reserved region.
    pub fn check_map(&self, iova: Iova, phys: PhysAddr, len: u64) -> Result<()> {
        self.require_translated("map")?;
        check_map_args(&self.aperture, &self.reserved, iova, phys, len, SZ_4K)
    }

    /// What `iova` translates to: itself in an identity domain, nothing in a blocked one, and
    /// what `pages` answers in a translated one.
    pub fn translate(
        &self,
        iova: Iova,
        pages: impl FnOnce() -> Option<Translation>,
    ) -> Option<Translation> {
        match self.kind {
            DomainKind::Identity => Some(Translation {
                phys: PhysAddr(iova.0),
                access: Access::all(),
            }),
            DomainKind::Blocked => None,
            DomainKind::Translated => pages(),
        }
    }

    /// A fresh IOVA range from `space` in this aperture, avoiding the reserved regions.
    pub fn alloc_iova(&self, space: &mut IovaSpace, len: u64, limit: u64) -> Result<Iova> {
        space.alloc(&self.aperture, &self.reserved, len, limit)
    }
}
