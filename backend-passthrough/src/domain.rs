//! The identity domain: a device's DMA address is the bus address, untranslated (Linux's
//! `IOMMU_DOMAIN_IDENTITY`, `iommu=pt`, or no IOMMU at all).

use p2p_core::access::Access;
use p2p_core::addr::{AddrRange, Iova, PhysAddr};
use p2p_core::page::PageSizes;
use p2p_core::traits::{
    DomainKind, IommuDomain, MapAttrs, ReservedKind, ReservedRegion, Translation,
};
use p2p_core::{Error, Result};

/// The x86 MSI doorbell window: a write there is an interrupt, never memory, in every domain.
const MSI_START: u64 = 0xfee0_0000;
const MSI_LEN: u64 = 0x10_0000;

/// Passthrough: every IOVA is the same bus address. Nothing can be mapped or allocated; the
/// negotiator programs bus addresses directly ([`Strategy::Identity`] or `Direct`).
///
/// [`Strategy::Identity`]: p2p_core::negotiate::Strategy::Identity
#[derive(Debug, Default)]
pub struct IdentityDomain;

impl IdentityDomain {
    /// The identity domain.
    pub fn new() -> Self {
        Self
    }

    fn wrong(op: &'static str) -> Error {
        Error::WrongDomainKind {
            op,
            kind: DomainKind::Identity.name(),
        }
    }
}

impl IommuDomain for IdentityDomain {
    fn kind(&self) -> DomainKind {
        DomainKind::Identity
    }

    fn aperture(&self) -> AddrRange<Iova> {
        // The whole 64-bit space but its last byte (a range's length is a u64).
        AddrRange::new(Iova(0), u64::MAX).unwrap_or_else(|_| unreachable!("0..MAX is valid"))
    }

    fn page_sizes(&self) -> PageSizes {
        PageSizes::SIZE_4K
    }

    fn reserved_regions(&self) -> Vec<ReservedRegion> {
        vec![ReservedRegion {
            range: AddrRange::new(Iova(MSI_START), MSI_LEN)
                .unwrap_or_else(|_| unreachable!("the MSI window fits")),
            kind: ReservedKind::Msi,
        }]
    }

    fn map_attrs(&self, _: Iova, _: PhysAddr, _: u64, _: Access, _: MapAttrs) -> Result<()> {
        Err(Self::wrong("map"))
    }

    fn unmap(&self, _: Iova, _: u64) -> Result<u64> {
        Err(Self::wrong("unmap"))
    }

    fn translate(&self, iova: Iova) -> Option<Translation> {
        let msi = iova.0 >= MSI_START && iova.0 - MSI_START < MSI_LEN;
        (!msi).then_some(Translation {
            phys: PhysAddr(iova.0),
            access: Access::READ | Access::WRITE,
        })
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn alloc_iova(&self, _: u64, _: u64) -> Result<Iova> {
        Err(Self::wrong("IOVA allocation"))
    }

    fn free_iova(&self, _: Iova, _: u64) -> Result<()> {
        Err(Self::wrong("IOVA free"))
    }
}
