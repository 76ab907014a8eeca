//! [`Sanitized`]: the event log and the sanitizer's domain checks around any domain.

use crate::events::{Event, EventLog};
use crate::sanitizer::{FindingKind, Sanitizer};
use p2p_core::access::Access;
use p2p_core::addr::{Iova, PhysAddr};
use p2p_core::page::SZ_4K;
use p2p_core::traits::{IommuDomain, MapAttrs, MapPiece, Translation};
use p2p_core::{PciAddr, Result};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Where a device translation came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The IOTLB (or the walk) answered and the page table agrees.
    Fresh(Translation),
    /// The IOTLB answered but the page table no longer maps it there (lazy window).
    Stale(Translation),
    /// Nothing translates it: a DMA remapping fault.
    Fault,
}

#[derive(Debug, Default)]
struct Records {
    /// iova → (length, event index) of each successful map call, for the unmap checks.
    maps: BTreeMap<u64, (u64, usize)>,
    /// Live IOVA allocations as the callers see them: start → length.
    iovas: BTreeMap<u64, u64>,
    /// Device translations asked.
    translations: u64,
}

/// Logs every call of the wrapped domain and checks unmaps against the maps they undo.
#[derive(Debug)]
pub struct Sanitized<D> {
    inner: D,
    name: String,
    device: PciAddr,
    log: Arc<EventLog>,
    sanitizer: Arc<Sanitizer>,
    records: Mutex<Records>,
}

impl<D: IommuDomain> Sanitized<D> {
    /// Wraps `device`'s domain `inner`, logging to `log` and reporting to `sanitizer`.
    pub fn new(inner: D, device: PciAddr, log: Arc<EventLog>, sanitizer: Arc<Sanitizer>) -> Self {
        Self {
            inner,
            name: format!("iommu:{device}"),
            device,
            log,
            sanitizer,
            records: Mutex::default(),
        }
    }

    /// The wrapped domain.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// Pages mapped now, by the record of map and unmap calls.
    pub fn mapped_pages(&self) -> usize {
        let r = self.records.lock();
        (r.maps.values().map(|&(len, _)| len).sum::<u64>() / SZ_4K) as usize
    }

    /// IOVA allocations not freed yet, by the record of calls.
    pub fn live_iovas(&self) -> usize {
        self.records.lock().iovas.len()
    }

    /// Device translations asked so far (zero if the IOMMU never saw a request).
    pub fn translations(&self) -> u64 {
        self.records.lock().translations
    }

    /// Translates one device request and says whether the page table agrees with the answer.
    pub fn lookup(&self, iova: u64) -> Lookup {
        self.records.lock().translations += 1;
        match (
            self.inner.dma_translate(Iova(iova)),
            self.inner.translate(Iova(iova)),
        ) {
            (Some(t), Some(w)) if t == w => Lookup::Fresh(t),
            (Some(t), _) => Lookup::Stale(t),
            (None, _) => Lookup::Fault,
        }
    }

    /// dma-debug's `check_unmap`: an unmap must undo exactly one earlier map.
    fn check_unmap(&self, iova: Iova, len: u64) {
        let mapped = self.records.lock().maps.get(&iova.0).copied();
        let finding = match mapped {
            None => Some((FindingKind::DoubleUnmap, None)),
            Some((l, event)) if l != len => Some((FindingKind::WrongUnmapSize, Some(event))),
            Some(_) => None,
        };
        if let Some((kind, created_by)) = finding {
            let mut f = self.sanitizer.finding(kind, self.device, iova.0, len, None);
            f.created_by = created_by;
            self.sanitizer.report(f);
        }
    }
}

impl<D: IommuDomain> IommuDomain for Sanitized<D> {
    p2p_core::forward_domain_description!(inner);

    // Map and unmap hold the records across the inner call, so the record changes in the same
    // order as the domain: otherwise an unmap's clean-up could erase the record of a map another
    // thread made inside the range between the unmap and its clean-up.
    fn map_attrs(&self, i: Iova, p: PhysAddr, len: u64, a: Access, at: MapAttrs) -> Result<()> {
        self.map_piece(i, &MapPiece::at(p, len, at), a)
    }

    fn map_piece(&self, i: Iova, piece: &MapPiece, a: Access) -> Result<()> {
        let mut records = self.records.lock();
        self.inner.map_piece(i, piece, a)?;
        let event = self.log.push(Event::Map {
            domain: self.name.clone(),
            iova: i.0,
            phys: piece.phys.0,
            len: piece.len,
        });
        records.maps.insert(i.0, (piece.len, event));
        Ok(())
    }

    fn unmap(&self, iova: Iova, len: u64) -> Result<u64> {
        self.check_unmap(iova, len);
        let mut records = self.records.lock();
        let done = self.inner.unmap(iova, len)?;
        // Forget the maps wholly inside what was unmapped.
        let end = iova.0.saturating_add(done);
        records
            .maps
            .retain(|&a, &mut (l, _)| !(a >= iova.0 && a.saturating_add(l) <= end));
        drop(records);
        self.log.push(Event::Unmap {
            domain: self.name.clone(),
            iova: iova.0,
            len,
            unmapped: done,
        });
        Ok(done)
    }

    fn translate(&self, iova: Iova) -> Option<Translation> {
        self.inner.translate(iova)
    }

    fn dma_translate(&self, iova: Iova) -> Option<Translation> {
        self.records.lock().translations += 1;
        self.inner.dma_translate(iova)
    }

    fn flush(&self) -> Result<()> {
        self.inner.flush()?;
        self.log.push(Event::Flush {
            domain: self.name.clone(),
            what: "flush",
        });
        Ok(())
    }

    fn flush_all(&self) -> Result<()> {
        self.inner.flush_all()?;
        self.log.push(Event::Flush {
            domain: self.name.clone(),
            what: "drained",
        });
        Ok(())
    }

    fn alloc_iova(&self, len: u64, limit: u64) -> Result<Iova> {
        let iova = self.inner.alloc_iova(len, limit)?;
        self.records.lock().iovas.insert(iova.0, len);
        self.log.push(Event::IovaAlloc {
            domain: self.name.clone(),
            iova: iova.0,
            len,
        });
        Ok(iova)
    }

    fn free_iova(&self, iova: Iova, len: u64) -> Result<()> {
        self.inner.free_iova(iova, len)?;
        self.records.lock().iovas.remove(&iova.0);
        self.log.push(Event::IovaFree {
            domain: self.name.clone(),
            iova: iova.0,
            len,
            deferred: false,
        });
        Ok(())
    }
}
