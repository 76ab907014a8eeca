//! Wrappers that add one behaviour to any implementation of a trait, the way smoltcp's
//! `phy::Tracer<D>` wraps any `Device`: [`Traced`] logs every call of an [`IommuDomain`] as a
//! `tracing` event. backend-mock adds the sanitizing and fault-injecting wrappers, which need its
//! event log; all of them stack (`Traced<Faulty<Sanitized<SoftIommu<_>>>>`), and `Arc<D>` is an
//! `IommuDomain` too, so a shared domain can be wrapped without giving it up.
//!
//! ```
//! use p2p_core::prelude::*;
//! use p2p_core::testing::TestDomain;
//! use p2p_core::wrap::Traced;
//! let d = Traced::new(TestDomain::new(DomainKind::Translated), "nic0");
//! d.map(Iova(0x1000), PhysAddr(0x8000), 0x1000, Access::READ).unwrap(); // emits a DEBUG event
//! assert_eq!(d.inner().mapped_pages(), 1);
//! ```

use crate::access::Access;
use crate::addr::{AddrRange, Iova, PhysAddr};
use crate::error::Result;
use crate::page::PageSizes;
use crate::traits::{
    DomainKind, IommuDomain, IotlbGather, MapAttrs, MapPiece, ReservedRegion, Translation,
};
use std::sync::Arc;

/// Implements [`IommuDomain`]'s four description methods (`kind`, `aperture`, `page_sizes`,
/// `reserved_regions`) inside an `impl IommuDomain` block by asking the field `$field`: what a
/// wrapper forwards to the domain it wraps, unchanged, and what a reference domain answers from
/// its [`Geometry`](crate::reference::Geometry).
#[macro_export]
macro_rules! forward_domain_description {
    ($field:ident) => {
        fn kind(&self) -> $crate::traits::DomainKind {
            self.$field.kind()
        }
        fn aperture(&self) -> $crate::addr::AddrRange<$crate::addr::Iova> {
            self.$field.aperture()
        }
        fn page_sizes(&self) -> $crate::page::PageSizes {
            self.$field.page_sizes()
        }
        fn reserved_regions(&self) -> ::std::vec::Vec<$crate::traits::ReservedRegion> {
            self.$field.reserved_regions()
        }
    };
}

/// A shared domain is a domain: wrappers and platforms can hold `Arc<dyn IommuDomain>`.
impl<T: IommuDomain + ?Sized> IommuDomain for Arc<T> {
    fn kind(&self) -> DomainKind {
        (**self).kind()
    }
    fn aperture(&self) -> AddrRange<Iova> {
        (**self).aperture()
    }
    fn page_sizes(&self) -> PageSizes {
        (**self).page_sizes()
    }
    fn reserved_regions(&self) -> Vec<ReservedRegion> {
        (**self).reserved_regions()
    }
    fn map_attrs(&self, i: Iova, p: PhysAddr, len: u64, a: Access, at: MapAttrs) -> Result<()> {
        (**self).map_attrs(i, p, len, a, at)
    }
    fn unmap(&self, iova: Iova, len: u64) -> Result<u64> {
        (**self).unmap(iova, len)
    }
    fn translate(&self, iova: Iova) -> Option<Translation> {
        (**self).translate(iova)
    }
    fn dma_translate(&self, iova: Iova) -> Option<Translation> {
        (**self).dma_translate(iova)
    }
    fn flush(&self) -> Result<()> {
        (**self).flush()
    }
    fn flush_all(&self) -> Result<()> {
        (**self).flush_all()
    }
    fn alloc_iova(&self, len: u64, limit: u64) -> Result<Iova> {
        (**self).alloc_iova(len, limit)
    }
    fn free_iova(&self, iova: Iova, len: u64) -> Result<()> {
        (**self).free_iova(iova, len)
    }
    fn map_piece(&self, iova: Iova, piece: &MapPiece, access: Access) -> Result<()> {
        (**self).map_piece(iova, piece, access)
    }
    fn map_pieces(&self, iova: Iova, pieces: &[MapPiece], access: Access) -> Result<()> {
        (**self).map_pieces(iova, pieces, access)
    }
    fn unmap_gather(&self, iova: Iova, len: u64, gather: &mut IotlbGather) -> Result<u64> {
        (**self).unmap_gather(iova, len, gather)
    }
    fn iotlb_sync(&self, gather: &IotlbGather) -> Result<()> {
        (**self).iotlb_sync(gather)
    }
    fn unmap_and_free(&self, range: AddrRange<Iova>, pieces: &[(Iova, u64)]) -> Result<u64> {
        (**self).unmap_and_free(range, pieces)
    }
}

/// Logs every call of the wrapped domain, with its arguments and outcome, as a `tracing` event
/// (DEBUG for calls that change state, TRACE for translations), under the target
/// `p2pdma::domain` and the name given. Nothing is formatted unless a subscriber listens.
#[derive(Debug)]
pub struct Traced<D> {
    inner: D,
    name: &'static str,
}

impl<D: IommuDomain> Traced<D> {
    /// Wraps `inner`; `name` tells its events apart from other domains'.
    pub fn new(inner: D, name: &'static str) -> Self {
        Self { inner, name }
    }

    /// The wrapped domain.
    pub fn inner(&self) -> &D {
        &self.inner
    }
}

impl<D: IommuDomain> IommuDomain for Traced<D> {
    crate::forward_domain_description!(inner);
    fn map_attrs(&self, i: Iova, p: PhysAddr, len: u64, a: Access, at: MapAttrs) -> Result<()> {
        self.map_piece(i, &MapPiece::at(p, len, at), a)
    }
    fn map_piece(&self, i: Iova, piece: &MapPiece, a: Access) -> Result<()> {
        let r = self.inner.map_piece(i, piece, a);
        let (p, len, at, by_file) = (piece.phys, piece.len, piece.attrs, piece.file.is_some());
        tracing::debug!(target: "p2pdma::domain", domain = self.name, iova = %i, phys = %p, len, ?a, ?at, by_file, ok = r.is_ok(), "map");
        r
    }
    fn unmap(&self, iova: Iova, len: u64) -> Result<u64> {
        let r = self.inner.unmap(iova, len);
        tracing::debug!(target: "p2pdma::domain", domain = self.name, %iova, len, unmapped = ?r.as_ref().ok(), "unmap");
        r
    }
    fn translate(&self, iova: Iova) -> Option<Translation> {
        let t = self.inner.translate(iova);
        tracing::trace!(target: "p2pdma::domain", domain = self.name, %iova, found = t.is_some(), "translate");
        t
    }
    fn dma_translate(&self, iova: Iova) -> Option<Translation> {
        let t = self.inner.dma_translate(iova);
        tracing::trace!(target: "p2pdma::domain", domain = self.name, %iova, found = t.is_some(), "dma_translate");
        t
    }
    fn flush(&self) -> Result<()> {
        let r = self.inner.flush();
        tracing::debug!(target: "p2pdma::domain", domain = self.name, ok = r.is_ok(), "flush");
        r
    }
    fn flush_all(&self) -> Result<()> {
        let r = self.inner.flush_all();
        tracing::debug!(target: "p2pdma::domain", domain = self.name, ok = r.is_ok(), "flush_all");
        r
    }
    fn alloc_iova(&self, len: u64, limit: u64) -> Result<Iova> {
        let r = self.inner.alloc_iova(len, limit);
        tracing::debug!(target: "p2pdma::domain", domain = self.name, len, limit, iova = ?r.as_ref().ok(), "alloc_iova");
        r
    }
    fn free_iova(&self, iova: Iova, len: u64) -> Result<()> {
        let r = self.inner.free_iova(iova, len);
        tracing::debug!(target: "p2pdma::domain", domain = self.name, %iova, len, ok = r.is_ok(), "free_iova");
        r
    }
}
