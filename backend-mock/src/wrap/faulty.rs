//! [`Faulty`]: the machine's fault injector at a domain's injection points.

use crate::events::{Event, EventLog};
use crate::faults::{FaultInjector, FaultPoint};
use p2p_core::access::Access;
use p2p_core::addr::{Iova, PhysAddr};
use p2p_core::traits::{DomainKind, IommuDomain, MapAttrs, MapPiece, Translation};
use p2p_core::{Error, Result};
use parking_lot::Mutex;
use std::sync::Arc;

/// Fails the wrapped domain's calls when the injector says so:
/// [`FaultPoint::PageTableAlloc`] refuses a map (nothing of it mapped, as the contract requires
/// of a map that fails), [`FaultPoint::FlushTimeout`] fails a flush. After a failed flush the
/// IOTLB may still hold what was unmapped, so IOVA frees are held back until a flush succeeds
/// (Linux keeps such IOVAs out of the allocator the same way).
#[derive(Debug)]
pub struct Faulty<D> {
    inner: D,
    faults: Arc<FaultInjector>,
    log: Arc<EventLog>,
    /// Frees held back since a flush failed; `None` while no flush is owed.
    owed: Mutex<Option<Vec<(Iova, u64)>>>,
}

impl<D: IommuDomain> Faulty<D> {
    /// Wraps `inner`; faults come from `faults` and are logged to `log`.
    pub fn new(inner: D, faults: Arc<FaultInjector>, log: Arc<EventLog>) -> Self {
        Self {
            inner,
            faults,
            log,
            owed: Mutex::new(None),
        }
    }

    /// The wrapped domain.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// A flush succeeded: the held-back frees go to the domain. The first error is returned.
    fn settle(&self) -> Result<()> {
        let held = self.owed.lock().take().unwrap_or_default();
        let mut first = None;
        for (iova, len) in held {
            if let Err(e) = self.inner.free_iova(iova, len) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn flush_with(&self, flush: impl FnOnce() -> Result<()>) -> Result<()> {
        if self.faults.should_fail(
            FaultPoint::FlushTimeout,
            || "IOTLB invalidation".to_string(),
            &self.log,
        ) {
            self.owed.lock().get_or_insert_with(Vec::new);
            return Err(Error::FlushTimeout {
                detail: "injected IOTLB invalidation timeout".into(),
            });
        }
        flush()?;
        self.settle()
    }
}

impl<D: IommuDomain> IommuDomain for Faulty<D> {
    p2p_core::forward_domain_description!(inner);

    fn map_attrs(&self, i: Iova, p: PhysAddr, len: u64, a: Access, at: MapAttrs) -> Result<()> {
        self.map_piece(i, &MapPiece::at(p, len, at), a)
    }

    fn map_piece(&self, i: Iova, piece: &MapPiece, a: Access) -> Result<()> {
        if self.inner.kind() == DomainKind::Translated
            && self.faults.should_fail(
                FaultPoint::PageTableAlloc,
                || format!("iova {i} for {:#x} bytes", piece.len),
                &self.log,
            )
        {
            return Err(Error::NoTableMemory { iova: i.0 });
        }
        self.inner.map_piece(i, piece, a)
    }

    fn unmap(&self, iova: Iova, len: u64) -> Result<u64> {
        self.inner.unmap(iova, len)
    }
    fn translate(&self, iova: Iova) -> Option<Translation> {
        self.inner.translate(iova)
    }
    fn dma_translate(&self, iova: Iova) -> Option<Translation> {
        self.inner.dma_translate(iova)
    }
    fn flush(&self) -> Result<()> {
        self.flush_with(|| self.inner.flush())
    }
    fn flush_all(&self) -> Result<()> {
        self.flush_with(|| self.inner.flush_all())
    }
    fn alloc_iova(&self, len: u64, limit: u64) -> Result<Iova> {
        self.inner.alloc_iova(len, limit)
    }

    fn free_iova(&self, iova: Iova, len: u64) -> Result<()> {
        if let Some(held) = self.owed.lock().as_mut() {
            held.push((iova, len));
            self.log.push(Event::IovaFree {
                domain: "held until a flush succeeds".into(),
                iova: iova.0,
                len,
                deferred: true,
            });
            return Ok(());
        }
        self.inner.free_iova(iova, len)
    }
}
