//! The reference domain and the software IOMMU driven with the same operations must give the
//! same answers: map (success or the same refusal), unmap (the same byte count), translate and
//! dma_translate (the same physical page and access; through the IOTLB only for strict domains,
//! where nothing stale may be cached), flush. Maps stay under 2 MiB, so the
//! software IOMMU uses 4 KiB leaves as the reference does, and every answer is comparable.

use backend_iommu::{ArmLpaeS2, FlushPolicy, Format, SoftIommu, VtdSecondLevel};
use backend_mock::{FlushMode, MockDomain};
use p2p_core::prelude::*;
use proptest::prelude::{
    any, prop_assert_eq, prop_oneof, proptest, Just, ProptestConfig, TestCaseError,
};
use proptest::strategy::Strategy as _;

const WINDOW: u64 = 0x4000_0000;
const PAGES: u64 = 64;

#[derive(Debug, Clone)]
enum Op {
    Map {
        page: u64,
        pages: u64,
        phys_page: u64,
        write: bool,
    },
    Unmap {
        page: u64,
        pages: u64,
    },
    Translate {
        page: u64,
        off: u64,
    },
    Flush,
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    prop_oneof![
        4 => (0..PAGES, 1..17u64, 0..4096u64, any::<bool>()).prop_map(
            |(page, pages, phys_page, write)| Op::Map { page, pages, phys_page, write }
        ),
        3 => (0..PAGES, 1..33u64).prop_map(|(page, pages)| Op::Unmap { page, pages }),
        4 => (0..PAGES, 0..4096u64).prop_map(|(page, off)| Op::Translate { page, off }),
        1 => Just(Op::Flush),
    ]
}

/// An error's kind, for comparing refusals.
fn kind<T>(r: &Result<T>) -> Option<std::mem::Discriminant<Error>> {
    r.as_ref().err().map(std::mem::discriminant)
}

fn agree<F: Format>(ops: &[Op], lazy: bool) -> Result<(), TestCaseError> {
    let (mode, policy) = if lazy {
        (FlushMode::Lazy { batch: 4 }, FlushPolicy::Lazy { batch: 4 })
    } else {
        (FlushMode::Strict, FlushPolicy::Strict)
    };
    let reference = MockDomain::new(DomainKind::Translated, mode, Vec::new());
    let soft = SoftIommu::<F>::new(policy).unwrap();
    let both: [&dyn IommuDomain; 2] = [&reference, &soft];
    let at = |page: u64| Iova(WINDOW + page * 4096);
    for (i, op) in ops.iter().enumerate() {
        match *op {
            Op::Map {
                page,
                pages,
                phys_page,
                write,
            } => {
                let access = if write {
                    Access::READ | Access::WRITE
                } else {
                    Access::READ
                };
                let r =
                    both.map(|d| d.map(at(page), PhysAddr(phys_page << 12), pages * 4096, access));
                prop_assert_eq!(kind(&r[0]), kind(&r[1]), "op {} {:?}: {:?}", i, op, r);
            }
            Op::Unmap { page, pages } => {
                let r = both.map(|d| d.unmap(at(page), pages * 4096).ok());
                prop_assert_eq!(r[0], r[1], "op {} {:?}", i, op);
            }
            Op::Translate { page, off } => {
                let iova = Iova(at(page).0 + off);
                let walk = both.map(|d| d.translate(iova));
                prop_assert_eq!(walk[0], walk[1], "op {} {:?} (walk)", i, op);
                // Through the IOTLB: in a strict domain nothing stale is ever usable, so both must
                // answer what the walk answers. In a lazy one a stale entry may or may not still
                // be cached (the reference never evicts, the software IOTLB has 256 slots), so
                // only the walk is compared.
                if !lazy {
                    let dma = both.map(|d| d.dma_translate(iova));
                    prop_assert_eq!(dma[0], dma[1], "op {} {:?} (through the IOTLB)", i, op);
                    prop_assert_eq!(
                        dma[0],
                        walk[0],
                        "op {} {:?}: stale in a strict domain",
                        i,
                        op
                    );
                }
            }
            Op::Flush => {
                for d in both {
                    d.flush().unwrap();
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn reference_and_soft_iommu_agree_vtd_strict(ops in proptest::collection::vec(op(), 1..80)) {
        agree::<VtdSecondLevel>(&ops, false)?;
    }

    #[test]
    fn reference_and_soft_iommu_agree_arm_lazy(ops in proptest::collection::vec(op(), 1..80)) {
        agree::<ArmLpaeS2>(&ops, true)?;
    }
}
