use super::*;
use crate::format::{arm, vtd, ArmLpaeS2, VtdSecondLevel};
use p2p_core::page::{SZ_1G, SZ_2M, SZ_4K};
use proptest::prelude::*;
use std::collections::BTreeMap;

const RW: Access = Access::READ.union(Access::WRITE);

#[test]
fn vtd_entries_match_the_published_layout() {
    assert_eq!(VtdSecondLevel::leaf(0x1234_5000, 0, RW, false), 0x1234_5003);
    assert_eq!(
        VtdSecondLevel::leaf(0x4000_0000, 1, Access::READ, false),
        0x4000_0081
    );
    assert_eq!(
        VtdSecondLevel::leaf(0x8000_0000, 2, Access::WRITE, false),
        0x8000_0082
    );
    assert_eq!(VtdSecondLevel::table(0x7f00_0000_1000), 0x7f00_0000_1003);
    assert_eq!(
        (vtd::READ, vtd::WRITE, vtd::LARGE_PAGE, vtd::SNOOP),
        (1, 2, 0x80, 0x800)
    );
    assert_eq!(
        VtdSecondLevel::decode(0x4000_0081, 1),
        Pte::Leaf {
            phys: 0x4000_0000,
            access: Access::READ
        }
    );
    assert_eq!(
        VtdSecondLevel::decode(0x7f00_0000_1003, 1),
        Pte::Table(0x7f00_0000_1000)
    );
    assert_eq!(
        VtdSecondLevel::decode(0x1234_5000, 0),
        Pte::Invalid,
        "no R or W: not present"
    );
    // Bits above the 52-bit address field are not address bits.
    assert_eq!(
        VtdSecondLevel::decode(0x4010_0000_0000_1003, 0),
        Pte::Leaf {
            phys: 0x10_0000_0000_1000 & ((1 << 52) - 1),
            access: RW
        }
    );
}

#[test]
fn arm_s2_entries_match_the_published_layout() {
    let xn = 1u64 << 54;
    // Page, normal write-back inner-shareable, S2AP read+write, AF.
    assert_eq!(
        ArmLpaeS2::leaf(0x1234_5000, 0, RW, false),
        0x1234_5000 | 0x7ff | xn
    );
    // Block at our level 1 (Arm level 2), device memory, read only.
    assert_eq!(
        ArmLpaeS2::leaf(0x4000_0000, 1, Access::READ, true),
        0x4000_0000 | 0x445 | xn
    );
    assert_eq!(ArmLpaeS2::table(0x7f00_0000_2000), 0x7f00_0000_2003);
    assert_eq!(
        (arm::HAP_READ, arm::HAP_WRITE, arm::AF, arm::SH_IS),
        (0x40, 0x80, 0x400, 0x300)
    );
    assert_eq!(
        ArmLpaeS2::decode(0x4000_0000 | 0x445 | xn, 1),
        Pte::Leaf {
            phys: 0x4000_0000,
            access: Access::READ
        }
    );
    assert_eq!(
        ArmLpaeS2::decode(0x7f00_0000_2003, 2),
        Pte::Table(0x7f00_0000_2000)
    );
    assert_eq!(
        ArmLpaeS2::decode(0x4000_0001, 3),
        Pte::Invalid,
        "no blocks at the root"
    );
    assert_eq!(
        ArmLpaeS2::decode(0x4000_0001, 0),
        Pte::Invalid,
        "0b01 at the last level is reserved"
    );
}

fn selftests<F: Format>() {
    let t = PageTable::<F>::new(0x7f00_0000_0000).unwrap();
    // (1) an empty table translates nothing.
    for iova in [42, SZ_1G + 42, 2 * SZ_1G + 42] {
        assert_eq!(t.translate(iova), None);
    }
    // (2) and (3), for each page size, IOVAs stepping by 1 GiB.
    for (i, size) in [SZ_4K, SZ_2M, SZ_1G].into_iter().enumerate() {
        let iova = (i as u64 + 1) * SZ_1G;
        t.map(iova, iova, size, RW, false).unwrap();
        assert!(
            matches!(
                t.map(iova, iova + size, size, RW, false),
                Err(Error::AlreadyMapped(_))
            ),
            "{} {size:#x}",
            F::NAME
        );
        let leaf = t.translate(iova + 42).unwrap();
        assert_eq!((leaf.phys + 42, leaf.size), (iova + 42, size));
        assert_eq!(
            t.unmap(iova, size).unwrap(),
            size,
            "unmap returns exactly the page size"
        );
        assert_eq!(t.translate(iova + 42), None);
        t.map(iova, iova, size, RW, false).unwrap();
        assert_eq!(t.unmap(iova, size).unwrap(), size);
    }
    // (4) the largest page that ends at the top of the input address space.
    let top = (1u64 << F::IAS) - SZ_1G;
    t.map(top, 0, SZ_1G, Access::READ, false).unwrap();
    assert_eq!(t.translate(top + SZ_1G - 1).unwrap().phys, 0);
    assert_eq!(t.unmap(top, SZ_1G).unwrap(), SZ_1G);
    t.reclaim();
    t.release_freelist();
    assert_eq!(t.live_frames(), 1, "every table but the root freed");
}

#[test]
fn io_pgtable_selftests_vtd() {
    selftests::<VtdSecondLevel>();
}

#[test]
fn io_pgtable_selftests_arm() {
    selftests::<ArmLpaeS2>();
}

#[test]
fn leaves_are_as_large_as_alignment_allows() {
    let t = PageTable::<VtdSecondLevel>::new(0x7f00_0000_0000).unwrap();
    // 2 MiB + 4 KiB starting 4 KiB below a 2 MiB boundary: 4K, then 2M... not: the tail is 4K.
    let iova = 4 * SZ_1G - SZ_4K;
    t.map(iova, iova, SZ_2M + 2 * SZ_4K, RW, false).unwrap();
    assert_eq!(t.translate(iova).unwrap().size, SZ_4K);
    assert_eq!(t.translate(iova + SZ_4K).unwrap().size, SZ_2M);
    assert_eq!(t.translate(iova + SZ_4K + SZ_2M).unwrap().size, SZ_4K);
    // Misaligned physical address: only 4 KiB leaves.
    t.map(8 * SZ_1G, 0x1000, SZ_2M, RW, false).unwrap();
    assert_eq!(t.translate(8 * SZ_1G).unwrap().size, SZ_4K);
}

#[test]
fn a_partial_unmap_of_a_large_page_is_refused_whole() {
    let t = PageTable::<ArmLpaeS2>::new(0x7f00_0000_0000).unwrap();
    t.map(SZ_1G, 0, SZ_2M, RW, false).unwrap();
    let err = t.unmap(SZ_1G, SZ_4K).unwrap_err();
    assert!(
        err.to_string()
            .contains("would split the 0x200000-byte page"),
        "{err}"
    );
    let err = t.unmap(SZ_1G - SZ_4K, 2 * SZ_4K).unwrap_err();
    assert!(
        matches!(err, Error::WouldSplit { page_start, page_size, .. } if page_start == SZ_1G && page_size == SZ_2M),
        "{err}"
    );
    assert_eq!(
        t.translate(SZ_1G).unwrap().size,
        SZ_2M,
        "nothing was unmapped"
    );
    assert_eq!(t.unmap(SZ_1G, SZ_2M).unwrap(), SZ_2M);
    // Unmap stops at a hole.
    t.map(SZ_1G, 0, 2 * SZ_4K, RW, false).unwrap();
    t.map(SZ_1G + 3 * SZ_4K, 0, SZ_4K, RW, false).unwrap();
    assert_eq!(t.unmap(SZ_1G, 4 * SZ_4K).unwrap(), 2 * SZ_4K);
}

#[test]
fn the_walk_reads_what_hardware_reads() {
    let t = PageTable::<VtdSecondLevel>::new(0x7f00_0000_0000).unwrap();
    let iova = 0x12_3456_7000;
    t.map(iova, 0xabc_d000, SZ_4K, Access::READ, false).unwrap();
    // Walk by hand from the root's physical address, reading 8-byte entries.
    let mut table = t.root_phys();
    for level in (1..=3).rev() {
        let pte = t.frames().read_phys(table + 8 * index(iova, level) as u64);
        assert_eq!(pte & 3, 3, "non-leaf entries carry R|W");
        table = pte & !0xfff & ((1 << 52) - 1);
    }
    assert_eq!(
        t.frames().read_phys(table + 8 * index(iova, 0) as u64),
        0xabc_d001
    );
}

#[test]
fn a_failed_frame_allocation_leaves_nothing_mapped() {
    let t = PageTable::<VtdSecondLevel>::new(0x7f00_0000_0000).unwrap();
    // Crossing a 1 GiB boundary needs a second level-1 and level-0 table.
    let iova = SZ_1G - 4 * SZ_4K;
    t.frames().set_limit(Some(4));
    assert!(t.map(iova, 0, 8 * SZ_4K, RW, false).is_err());
    for p in 0..8 {
        assert_eq!(t.translate(iova + p * SZ_4K), None);
    }
    t.frames().set_limit(None);
    t.reclaim();
    t.release_freelist();
    assert_eq!(t.live_frames(), 1);
    t.map(iova, 0, 8 * SZ_4K, RW, false).unwrap();
}

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
    },
}

fn op() -> impl Strategy<Value = Op> {
    // Pages in a 2 GiB window so that 2 MiB leaves and table boundaries occur.
    let page = 0u64..(2 * SZ_1G / SZ_4K);
    prop_oneof![
        (
            page.clone(),
            prop_oneof![1u64..8, Just(512u64), Just(1024u64)],
            0u64..1 << 20,
            any::<bool>(),
            0..3u8
        )
            .prop_map(|(page, pages, phys_page, write, align)| {
                // Some maps 2 MiB aligned on both sides, so 2 MiB leaves occur.
                let (page, phys_page) = match align {
                    0 => (page & !511, phys_page & !511),
                    _ => (page & !7, phys_page),
                };
                Op::Map {
                    page,
                    pages,
                    phys_page,
                    write,
                }
            }),
        (page.clone(), 1u64..1100).prop_map(|(page, pages)| Op::Unmap { page, pages }),
        page.prop_map(|page| Op::Translate { page }),
    ]
}

/// The reference: a map from page to (phys page, writable), plus the leaf each page belongs to.
fn check_model<F: Format>(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let t = PageTable::<F>::new(0x7f00_0000_0000).unwrap();
    let mut model: BTreeMap<u64, (u64, bool)> = BTreeMap::new();
    for op in ops {
        match op {
            Op::Map {
                page,
                pages,
                phys_page,
                write,
            } => {
                let access = if write { RW } else { Access::READ };
                let (iova, phys) = (page * SZ_4K, phys_page * SZ_4K);
                let free = (page..page + pages).all(|p| !model.contains_key(&p));
                let r = t.map(iova, phys, pages * SZ_4K, access, false);
                prop_assert_eq!(
                    r.is_ok(),
                    free,
                    "map over live pages must fail, elsewhere succeed: {:?}",
                    r
                );
                if r.is_ok() {
                    for p in 0..pages {
                        model.insert(page + p, (phys_page + p, write));
                    }
                }
            }
            Op::Unmap { page, pages } => match t.unmap(page * SZ_4K, pages * SZ_4K) {
                Ok(n) => {
                    prop_assert_eq!(n % SZ_4K, 0);
                    let k = n / SZ_4K;
                    for p in page..page + k {
                        prop_assert!(
                            model.remove(&p).is_some(),
                            "unmapped a page the model lacks"
                        );
                    }
                    if k < pages {
                        prop_assert!(
                            !model.contains_key(&(page + k)),
                            "stopped before a hole that is not there"
                        );
                    }
                }
                Err(e) => prop_assert!(matches!(e, Error::WouldSplit { .. }), "{}", e),
            },
            Op::Translate { page } => {
                let got = t
                    .translate(page * SZ_4K + 42)
                    .map(|l| (l.phys + (page * SZ_4K - l.iova) + 42, l.access));
                let want = model
                    .get(&page)
                    .map(|&(pp, w)| (pp * SZ_4K + 42, if w { RW } else { Access::READ }));
                prop_assert_eq!(got, want);
            }
        }
        // Every model page translates as the model says.
        for (&p, &(pp, _)) in model.iter().take(64) {
            let l = t.translate(p * SZ_4K).unwrap();
            prop_assert_eq!(l.phys + (p * SZ_4K - l.iova), pp * SZ_4K);
        }
    }
    // Unmap everything, leaf by leaf: no frame leaked.
    while let Some((&p, _)) = model.iter().next() {
        let l = t.translate(p * SZ_4K).unwrap();
        prop_assert_eq!(t.unmap(l.iova, l.size).unwrap(), l.size);
        for q in l.iova / SZ_4K..(l.iova + l.size) / SZ_4K {
            model.remove(&q);
        }
    }
    t.reclaim();
    t.release_freelist();
    prop_assert_eq!(t.live_frames(), 1);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn vtd_agrees_with_a_btreemap(ops in proptest::collection::vec(op(), 1..60)) {
        check_model::<VtdSecondLevel>(ops)?;
    }

    #[test]
    fn arm_agrees_with_a_btreemap(ops in proptest::collection::vec(op(), 1..60)) {
        check_model::<ArmLpaeS2>(ops)?;
    }
}
