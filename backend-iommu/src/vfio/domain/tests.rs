//! The domain's book-keeping against a model of VFIO type1 (no kernel needed): windows turn
//! physical into virtual addresses, maps never overlap, unmap removes whole mappings only, and
//! translate answers for exactly what is mapped.

use super::*;
use p2p_core::traits::ReservedKind;
use p2p_core::Error;
use parking_lot::Mutex;
use proptest::prelude::*;
use std::collections::BTreeMap;

/// Type1's rules as the kernel applies them (vfio_iommu_type1.c): MAP_DMA fails with EEXIST on
/// any overlap; UNMAP_DMA removes the mappings inside the range and fails with EINVAL when the
/// range bisects one (type1v2).
#[derive(Debug, Default)]
struct FakeType1 {
    /// iova → (size, vaddr).
    maps: Mutex<BTreeMap<u64, (u64, u64)>>,
}

fn errno(call: &'static str, iova: u64, size: u64, e: i32) -> Error {
    let target = format!("iova {iova:#x}+{size:#x}");
    Error::os(call, target, std::io::Error::from_raw_os_error(e))
}

impl Type1 for FakeType1 {
    fn info(&self) -> Result<IommuInfo> {
        // VT-d with a 39-bit width: everything but the MSI window.
        Ok(IommuInfo {
            page_sizes: 0x4020_1000,
            iova_ranges: vec![(0, 0xfedf_ffff), (0xfef0_0000, (1 << 39) - 1)],
        })
    }
    fn map_dma(&self, vaddr: u64, iova: u64, size: u64, _: Access) -> Result<()> {
        let mut m = self.maps.lock();
        if m.iter()
            .any(|(&a, &(s, _))| a < iova + size && iova < a + s)
        {
            return Err(errno("VFIO_IOMMU_MAP_DMA", iova, size, libc::EEXIST));
        }
        m.insert(iova, (size, vaddr));
        Ok(())
    }
    fn unmap_dma(&self, iova: u64, size: u64) -> Result<u64> {
        let mut m = self.maps.lock();
        let end = iova + size;
        if m.iter()
            .any(|(&a, &(s, _))| a < end && iova < a + s && (a < iova || a + s > end))
        {
            return Err(errno("VFIO_IOMMU_UNMAP_DMA", iova, size, libc::EINVAL));
        }
        let inside: Vec<u64> = m.range(iova..end).map(|(&a, _)| a).collect();
        Ok(inside
            .iter()
            .map(|a| m.remove(a).map_or(0, |(s, _)| s))
            .sum())
    }
}

const WINDOWS: [(u64, u64, u64); 2] = [
    // (phys, va, len)
    (0x1000_0000, 0x7f00_0000_0000, 0x40_0000),
    (0x8_0000_0000, 0x7f10_0000_0000, 0x10_0000),
];

fn domain() -> (VfioDomain, Arc<FakeType1>) {
    let fake = Arc::new(FakeType1::default());
    let d = VfioDomain::over(fake.clone()).unwrap();
    for (phys, va, len) in WINDOWS {
        d.add_window(VirtAddr(va), PhysAddr(phys), len).unwrap();
    }
    (d, fake)
}

#[test]
fn ranges_become_aperture_and_reserved_regions() {
    let (d, _) = domain();
    assert_eq!(d.aperture(), AddrRange::new(Iova(0), 1 << 39).unwrap());
    let r = d.reserved_regions();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].kind, ReservedKind::Msi);
    assert_eq!(
        r[0].range,
        AddrRange::new(Iova(0xfee0_0000), 0x10_0000).unwrap()
    );
    assert!(d.page_sizes().contains(PageSizes::SIZE_2M));
    // Allocation honours the limit and stays out of the MSI window.
    let i = d.alloc_iova(0x10_0000, (1 << 28) - 1).unwrap();
    assert!(i.0 + 0x10_0000 <= 1 << 28);
}

#[test]
fn maps_go_to_the_virtual_address_behind_the_physical_one() {
    let (d, fake) = domain();
    d.map(Iova(0x20_0000), PhysAddr(0x1000_3000), 0x2000, Access::READ)
        .unwrap();
    assert_eq!(
        fake.maps.lock().get(&0x20_0000),
        Some(&(0x2000, 0x7f00_0000_3000))
    );
    assert_eq!(
        d.translate(Iova(0x20_1004)).unwrap().phys,
        PhysAddr(0x1000_4004)
    );
    // Overlap, a physical range outside every window, one that straddles a window's end, the
    // MSI window, misalignment: typed errors, nothing mapped.
    assert!(matches!(
        d.map(Iova(0x20_1000), PhysAddr(0x1000_0000), 0x1000, Access::READ),
        Err(Error::AlreadyMapped(_))
    ));
    assert_eq!(
        d.map(Iova(0x40_0000), PhysAddr(0x5000_0000), 0x1000, Access::READ),
        Err(Error::NotRegistered {
            phys: 0x5000_0000,
            len: 0x1000
        })
    );
    let straddles = PhysAddr(0x1040_0000 - 0x1000);
    assert!(matches!(
        d.map(Iova(0x40_0000), straddles, 0x2000, Access::READ),
        Err(Error::NotRegistered { .. })
    ));
    assert!(matches!(
        d.map(
            Iova(0xfee0_0000),
            PhysAddr(0x1000_0000),
            0x1000,
            Access::READ
        ),
        Err(Error::Reserved { .. })
    ));
    assert!(matches!(
        d.map(Iova(0x40_0800), PhysAddr(0x1000_0000), 0x1000, Access::READ),
        Err(Error::Misaligned { .. })
    ));
    assert_eq!(fake.maps.lock().len(), 1);
    // Windows may not overlap.
    assert!(matches!(
        d.add_window(VirtAddr(0x1000), PhysAddr(0x1000_1000), 0x1000),
        Err(Error::WindowOverlap {
            start: 0x1000_1000,
            other_start: 0x1000_0000,
            ..
        })
    ));
}

#[test]
fn kernel_refusals_are_os_errors_with_their_errno() {
    let d = VfioDomain::over(Arc::new(Ranges(vec![(0, (1 << 39) - 1)]))).unwrap();
    d.add_window(VirtAddr(0x7f00_0000_0000), PhysAddr(0x1000_0000), 0x1000)
        .unwrap();
    let e = d
        .map(Iova(0x1000), PhysAddr(0x1000_0000), 0x1000, Access::READ)
        .unwrap_err();
    assert!(
        matches!(
            &e,
            Error::Os { call: "VFIO_IOMMU_MAP_DMA", errno: Some(libc::ENOSYS), source: Some(_), target, .. }
                if target == "iova 0x1000+0x1000"
        ),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("VFIO_IOMMU_MAP_DMA on iova 0x1000+0x1000 failed"),
        "{e}"
    );
}

#[derive(Debug, Clone)]
enum Op {
    Map {
        page: u64,
        pages: u64,
        window: usize,
        off: u64,
    },
    Unmap {
        page: u64,
        pages: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u64..64, 1u64..8, 0usize..3, 0u64..256).prop_map(|(page, pages, window, off)| Op::Map {
            page,
            pages,
            window,
            off
        }),
        (0u64..64, 1u64..16).prop_map(|(page, pages)| Op::Unmap { page, pages }),
    ]
}

proptest! {
    /// Model: the live mappings (iova, len, phys). After every step the domain and the fake
    /// kernel agree with it, and translate answers exactly for mapped pages.
    #[test]
    fn the_domain_follows_type1(ops in proptest::collection::vec(op(), 1..60)) {
        let (d, fake) = domain();
        let mut model: Vec<(u64, u64, u64)> = Vec::new();
        let base = 0x100_0000u64;
        for op in ops {
            match op {
                Op::Map { page, pages, window, off } => {
                    let (iova, len) = (base + page * 0x1000, pages * 0x1000);
                    // Window 2 does not exist: a physical address in no window.
                    let phys = match WINDOWS.get(window) {
                        Some(&(p, _, wl)) => p + (off * 0x1000) % wl,
                        None => 0x3000_0000,
                    };
                    let in_window = WINDOWS.iter().any(|&(p, _, wl)| phys >= p && phys + len <= p + wl);
                    let overlaps = model.iter().any(|&(a, l, _)| a < iova + len && iova < a + l);
                    let r = d.map(Iova(iova), PhysAddr(phys), len, Access::READ | Access::WRITE);
                    prop_assert_eq!(r.is_ok(), in_window && !overlaps, "{:?}", r);
                    if r.is_ok() {
                        model.push((iova, len, phys));
                    }
                }
                Op::Unmap { page, pages } => {
                    let (iova, len) = (base + page * 0x1000, pages * 0x1000);
                    let end = iova + len;
                    // The trait's unmap: the run of back-to-back maps from iova, up to the
                    // first hole; a map cut by the start or by the run's end refuses it all.
                    let mut bisects = model.iter().any(|&(a, l, _)| a < iova && iova < a + l);
                    let mut at = iova;
                    while let Some(&(_, l, _)) = model.iter().find(|&&(a, _, _)| a == at && a < end) {
                        bisects |= at + l > end;
                        at += l;
                    }
                    let r = d.unmap(Iova(iova), len);
                    if bisects {
                        prop_assert!(r.is_err());
                    } else {
                        prop_assert_eq!(r.ok(), Some(at - iova));
                        model.retain(|&(a, _, _)| !(a >= iova && a < at));
                    }
                }
            }
            prop_assert_eq!(fake.maps.lock().len(), model.len());
            for page in 0..80u64 {
                let iova = base + page * 0x1000;
                let want = model.iter().find(|&&(a, l, _)| iova >= a && iova < a + l).map(|&(a, _, p)| p + (iova - a));
                prop_assert_eq!(d.translate(Iova(iova)).map(|t| t.phys.0), want);
                // The kernel got the virtual address behind that physical one.
                if let Some(phys) = want {
                    let (w_phys, w_va, _) = WINDOWS.iter().copied().find(|&(p, _, l)| phys >= p && phys < p + l).unwrap();
                    let maps = fake.maps.lock();
                    let (&a, &(_, va)) = maps.range(..=iova).next_back().unwrap();
                    prop_assert_eq!(va + (iova - a), w_va + (phys - w_phys));
                }
            }
        }
    }
}

/// A kernel whose GET_INFO reply carries the given IOVA ranges (and that maps nothing).
#[derive(Debug)]
struct Ranges(Vec<(u64, u64)>);

impl Type1 for Ranges {
    fn info(&self) -> Result<IommuInfo> {
        Ok(IommuInfo {
            page_sizes: 0x1000,
            iova_ranges: self.0.clone(),
        })
    }
    fn map_dma(&self, _: u64, iova: u64, size: u64, _: Access) -> Result<()> {
        Err(errno("VFIO_IOMMU_MAP_DMA", iova, size, libc::ENOSYS))
    }
    fn unmap_dma(&self, iova: u64, size: u64) -> Result<u64> {
        Err(errno("VFIO_IOMMU_UNMAP_DMA", iova, size, libc::ENOSYS))
    }
}

#[test]
fn malformed_iova_ranges_are_typed_errors_not_panics() {
    for ranges in [
        vec![],
        vec![(0x2000, 0x1000)],
        vec![(0, 0xffff), (0x8000, 0x1_ffff)],
        vec![(0x10_0000, 0x1f_ffff), (0, 0xffff)],
        vec![(0, u64::MAX), (0, u64::MAX)],
    ] {
        let got = VfioDomain::over(Arc::new(Ranges(ranges.clone())));
        assert!(
            matches!(got, Err(Error::KernelReply { .. })),
            "{ranges:x?}: {got:?}"
        );
    }
    let whole = VfioDomain::over(Arc::new(Ranges(vec![(0, u64::MAX)]))).unwrap();
    assert_eq!(whole.aperture().start(), Iova(0));
}

/// The conformance stress check over the type1 model: every page of the window is backed by a
/// registered window of this process's memory.
#[test]
fn the_domain_passes_the_concurrent_stress_check_over_the_type1_model() {
    use p2p_core::conformance::{stress_domain, StressConfig};
    for seed in 0..3 {
        let fake = Arc::new(FakeType1::default());
        let d = Arc::new(VfioDomain::over(fake.clone()).unwrap());
        // The stress check maps 2 MiB-aligned pages from (1 << 21) up to thread 4's last op.
        d.add_window(VirtAddr(0x7f00_0000_0000), PhysAddr(0), 1 << 40)
            .unwrap();
        stress_domain(d, &StressConfig::quick(seed)).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            fake.maps.lock().is_empty(),
            "seed {seed}: type1 still maps something"
        );
    }
}

/// The conformance suite over the type1 model, with the 16 MiB it maps registered as a window.
fn conformance_domain() -> Arc<dyn IommuDomain> {
    let d = match VfioDomain::over(Arc::new(FakeType1::default())) {
        Ok(d) => d,
        Err(e) => panic!("VfioDomain::over: {e}"),
    };
    let cfg = p2p_core::conformance::DomainConfig::strict();
    let span = p2p_core::conformance::PHYS_SPAN;
    if let Err(e) = d.add_window(VirtAddr(0x7f20_0000_0000), cfg.phys, span) {
        panic!("add_window: {e}");
    }
    Arc::new(d)
}

/// Every translated-domain check of the suite passes over the type1 model, each on a fresh
/// domain (unmap stops at the first hole although type1's UNMAP_DMA does not).
#[test]
fn conformance_vfio_domain_over_the_type1_model() {
    use p2p_core::conformance::check_domain_with;
    let cfg = p2p_core::conformance::DomainConfig::strict();
    check_domain_with(conformance_domain, &cfg).unwrap_or_else(|v| panic!("{v}"));
}

/// An unmap across a hole reaches the kernel only for the run before the hole: what lies after
/// it stays mapped in the kernel too, not just in the domain's record.
#[test]
fn unmap_passes_the_kernel_only_the_run_before_a_hole() {
    let (d, fake) = domain();
    let (phys, _, _) = WINDOWS[0];
    d.map(Iova(0x10_0000), PhysAddr(phys), 0x2000, Access::READ)
        .unwrap();
    d.map(
        Iova(0x10_3000),
        PhysAddr(phys + 0x3000),
        0x1000,
        Access::READ,
    )
    .unwrap();
    assert_eq!(d.unmap(Iova(0x10_0000), 0x4000).unwrap(), 0x2000);
    assert_eq!(
        fake.maps.lock().keys().copied().collect::<Vec<_>>(),
        [0x10_3000]
    );
    assert_eq!(d.unmap(Iova(0x10_2000), 0x2000).unwrap(), 0);
    assert_eq!(d.unmap(Iova(0x10_3000), 0x1000).unwrap(), 0x1000);
    assert!(fake.maps.lock().is_empty());
}
