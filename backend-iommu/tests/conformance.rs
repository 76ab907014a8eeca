//! The conformance suite against the software IOMMU in both page-table formats, strict and lazy,
//! and against deliberately broken domains (one whose unmap stops after the first run of leaves
//! of one size, as `SoftIommu`'s once did; one whose one-call teardown skips the IOTLB sync),
//! which it must catch.

use backend_iommu::{ArmLpaeS2, FlushPolicy, Format, SoftIommu, VtdSecondLevel};
use p2p_core::access::Access;
use p2p_core::addr::{AddrRange, Iova, PhysAddr};
use p2p_core::conformance::{check_domain, check_domain_with, DomainConfig};
use p2p_core::page::PageSizes;
use p2p_core::traits::{
    DomainKind, IommuDomain, IotlbGather, MapAttrs, ReservedKind, ReservedRegion, Translation,
};
use p2p_core::Result;
use std::sync::Arc;

fn soft<F: Format>(policy: FlushPolicy) -> impl Fn() -> Arc<dyn IommuDomain> {
    move || match SoftIommu::<F>::new(policy) {
        Ok(d) => Arc::new(d) as Arc<dyn IommuDomain>,
        Err(e) => panic!("SoftIommu::new: {e}"),
    }
}

#[test]
fn conformance_soft_iommu_vtd_strict() {
    check_domain(soft::<VtdSecondLevel>(FlushPolicy::Strict)).unwrap_or_else(|v| panic!("{v}"));
}

#[test]
fn conformance_soft_iommu_arm_strict() {
    check_domain(soft::<ArmLpaeS2>(FlushPolicy::Strict)).unwrap_or_else(|v| panic!("{v}"));
}

#[test]
fn conformance_soft_iommu_vtd_lazy() {
    for batch in [1, 4, 256] {
        let cfg = DomainConfig::lazy(batch);
        check_domain_with(soft::<VtdSecondLevel>(FlushPolicy::Lazy { batch }), &cfg)
            .unwrap_or_else(|v| panic!("batch {batch}: {v}"));
    }
}

#[test]
fn conformance_soft_iommu_arm_lazy() {
    for batch in [1, 4, 256] {
        let cfg = DomainConfig::lazy(batch);
        check_domain_with(soft::<ArmLpaeS2>(FlushPolicy::Lazy { batch }), &cfg)
            .unwrap_or_else(|v| panic!("batch {batch}: {v}"));
    }
}

#[test]
fn conformance_catches_a_lazy_domain_checked_as_strict() {
    let v = check_domain(soft::<VtdSecondLevel>(FlushPolicy::Lazy { batch: 4 }))
        .expect_err("a lazy domain keeps stale IOTLB entries after unmap");
    assert!(v.rule.contains("strict"), "{v}");
}

/// The methods a broken test double passes on to the `SoftIommu` it wraps (`self.0`): all but
/// the unmap path it breaks.
macro_rules! pass_on_to_soft {
    () => {
        fn kind(&self) -> DomainKind {
            self.0.kind()
        }
        fn aperture(&self) -> AddrRange<Iova> {
            self.0.aperture()
        }
        fn page_sizes(&self) -> PageSizes {
            self.0.page_sizes()
        }
        fn reserved_regions(&self) -> Vec<ReservedRegion> {
            self.0.reserved_regions()
        }
        fn map_attrs(&self, i: Iova, p: PhysAddr, len: u64, a: Access, m: MapAttrs) -> Result<()> {
            self.0.map_attrs(i, p, len, a, m)
        }
        fn translate(&self, iova: Iova) -> Option<Translation> {
            self.0.translate(iova)
        }
        fn dma_translate(&self, iova: Iova) -> Option<Translation> {
            self.0.dma_translate(iova)
        }
        fn flush(&self) -> Result<()> {
            self.0.flush()
        }
        fn alloc_iova(&self, len: u64, limit: u64) -> Result<Iova> {
            self.0.alloc_iova(len, limit)
        }
        fn free_iova(&self, iova: Iova, len: u64) -> Result<()> {
            self.0.free_iova(iova, len)
        }
    };
}

/// `SoftIommu` with the old unmap bug: it stops after the first run of leaves of one size, so
/// a 2 MiB page followed by 4 KiB pages unmaps only the 2 MiB page.
#[derive(Debug)]
struct EarlyStop(SoftIommu<VtdSecondLevel>);

impl IommuDomain for EarlyStop {
    pass_on_to_soft!();
    fn unmap(&self, iova: Iova, len: u64) -> Result<u64> {
        let Some(first) = self.0.leaf(iova.0) else {
            return Ok(0);
        };
        let mut done = 0;
        while done < len {
            match self.0.leaf(iova.0 + done) {
                Some(l) if l.size == first.size => {
                    done += self.0.unmap(Iova(iova.0 + done), l.size)?
                }
                _ => break,
            }
        }
        Ok(done)
    }
}

#[test]
fn conformance_catches_an_unmap_that_stops_early() {
    let broken = || match SoftIommu::<VtdSecondLevel>::new(FlushPolicy::Strict) {
        Ok(d) => Arc::new(EarlyStop(d)) as Arc<dyn IommuDomain>,
        Err(e) => panic!("SoftIommu::new: {e}"),
    };
    let v = check_domain(broken).expect_err("the early-stopping unmap must be caught");
    println!("check_domain on the broken domain: {v}");
    assert!(v.rule.contains("walks across leaves of any size"), "{v}");
    assert!(
        v.got.contains("returned 0x200000, expected 0x202000"),
        "{v}"
    );
}

#[test]
fn conformance_soft_iommu_with_a_reserved_pci_window() {
    let fresh = || {
        let mut d =
            SoftIommu::<ArmLpaeS2>::new(FlushPolicy::Strict).unwrap_or_else(|e| panic!("{e}"));
        let w = AddrRange::new(Iova(0xc000_0000), 0x2000_0000).unwrap_or_else(|e| panic!("{e}"));
        d.reserve(w, ReservedKind::PciWindow);
        Arc::new(d) as Arc<dyn IommuDomain>
    };
    check_domain(fresh).unwrap_or_else(|v| panic!("{v}"));
}

/// Every page-table frame allocation of a 16-page map across a 1 GiB boundary failed in turn
/// (through `SoftIommu::set_fault_hook`): the map is all or nothing each time and the domain
/// stays usable, in both formats.
fn under_faults<F: Format>() {
    use p2p_core::conformance::FaultyDomain;
    use std::sync::atomic::{AtomicU64, Ordering};
    let factory = || -> FaultyDomain {
        let d = SoftIommu::<F>::new(FlushPolicy::Strict).unwrap();
        // 0: disarmed; n: the n-th allocation from now fails.
        let countdown = Arc::new(AtomicU64::new(0));
        let c = countdown.clone();
        d.set_fault_hook(Some(Arc::new(move |_iova| {
            c.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| match n {
                0 => None,
                n => Some(n - 1),
            }) == Ok(1)
        })));
        let arm = move |n: Option<u64>| countdown.store(n.unwrap_or(0), Ordering::Release);
        (Arc::new(d), Box::new(arm))
    };
    p2p_core::conformance::check_map_under_faults(factory, &DomainConfig::strict())
        .unwrap_or_else(|v| panic!("{}: {v}", F::NAME));
}

#[test]
fn conformance_soft_iommu_under_faults_at_every_step() {
    under_faults::<VtdSecondLevel>();
    under_faults::<ArmLpaeS2>();
}

/// SoftIommu maps by physical address: a piece that carries a file maps as any other.
#[test]
fn conformance_soft_iommu_map_by_file_ignores_the_file() {
    use p2p_core::conformance::check_map_by_file;
    use p2p_core::traits::FileSlice;
    let file = FileSlice {
        file: Arc::new(std::fs::File::open("/dev/null").unwrap()),
        offset: 0,
    };
    let d = soft::<VtdSecondLevel>(FlushPolicy::Strict)();
    check_map_by_file(&*d, &DomainConfig::strict(), file).unwrap_or_else(|v| panic!("{v}"));
}

/// `SoftIommu` whose `unmap_and_free` clears the entries and frees the range but never syncs the
/// IOTLB: a device keeps reaching the pages.
#[derive(Debug)]
struct NoSync(SoftIommu<VtdSecondLevel>);

impl IommuDomain for NoSync {
    pass_on_to_soft!();
    fn unmap(&self, iova: Iova, len: u64) -> Result<u64> {
        self.0.unmap(iova, len)
    }
    fn unmap_gather(&self, iova: Iova, len: u64, gather: &mut IotlbGather) -> Result<u64> {
        self.0.unmap_gather(iova, len, gather)
    }
    fn iotlb_sync(&self, gather: &IotlbGather) -> Result<()> {
        self.0.iotlb_sync(gather)
    }
    fn unmap_and_free(&self, range: AddrRange<Iova>, pieces: &[(Iova, u64)]) -> Result<u64> {
        let mut gather = IotlbGather::default();
        let mut n = 0;
        for &(at, len) in pieces {
            n += self.0.unmap_gather(at, len, &mut gather)?;
        }
        self.0.free_iova(range.start(), range.len())?;
        Ok(n)
    }
}

#[test]
fn conformance_catches_a_teardown_that_skips_the_sync() {
    let broken = || match SoftIommu::<VtdSecondLevel>::new(FlushPolicy::Strict) {
        Ok(d) => Arc::new(NoSync(d)) as Arc<dyn IommuDomain>,
        Err(e) => panic!("SoftIommu::new: {e}"),
    };
    let v = check_domain(broken).expect_err("the teardown without a sync must be caught");
    println!("check_domain on the broken domain: {v}");
    assert!(v.rule.contains("unmap_and_free"), "{v}");
    assert!(v.got.contains("dma_translate"), "{v}");
}
