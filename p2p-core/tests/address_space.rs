//! Address spaces against the negotiator: a process's pages, some in host RAM and some in a
//! device, registered as runs and mapped for an importer; all or nothing.

mod common;

use common::*;
use p2p_core::negotiate::{AddressSpace, Backing};
use p2p_core::page::SZ_4K;
use p2p_core::prelude::*;
use p2p_core::topology::presets;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A process address space: page number → backing.
#[derive(Debug, Default)]
struct Space(BTreeMap<u64, Backing>);

impl AddressSpace for Space {
    fn page_size(&self) -> u64 {
        SZ_4K
    }
    fn backing(&self, va: VirtAddr) -> Backing {
        self.0
            .get(&(va.0 / SZ_4K))
            .cloned()
            .unwrap_or(Backing::Unmapped)
    }
}

fn mixed_space(exporter: &Arc<dyn MemoryExporter>) -> Space {
    let mut s = Space::default();
    // Pages 0x100..0x104: host RAM, contiguous; 0x104..0x108: GPU pages; 0x108: host, elsewhere.
    for i in 0..4 {
        s.0.insert(0x100 + i, Backing::Host(Offset(0x20_0000 + i * SZ_4K)));
        s.0.insert(
            0x104 + i,
            Backing::Device {
                exporter: exporter.clone(),
                offset: Offset(i * SZ_4K),
            },
        );
    }
    s.0.insert(0x108, Backing::Host(Offset(0x80_0000)));
    s.0.insert(0x109, Backing::Pfnmap);
    s
}

/// Movable GPU memory that cannot be pinned behind an ACS switch, and the mixed address space
/// over it.
fn mixed_space_rig() -> (Rig, Space) {
    let r = rig(
        presets::acs_switch().unwrap(),
        DomainKind::Translated,
        1024,
        true,
        false,
    );
    let space = mixed_space(&r.exporter);
    (r, space)
}

#[test]
fn registering_mixed_pages_maps_each_run() {
    let (r, space) = mixed_space_rig();
    let (_, imp) = importer(odp(), 64);
    let va = AddrRange::new(VirtAddr(0x100 * SZ_4K), 9 * SZ_4K).unwrap();
    let reg = r
        .neg
        .register(&space, va, &imp, RW, &Policy::default())
        .unwrap();
    assert_eq!(reg.mappings().len(), 3, "host run, device run, host page");
    assert_eq!(total(&reg.segments(0).unwrap()), 9 * SZ_4K);
    let dom = r.platform.test_domain(a(NIC)).unwrap();
    assert_eq!(dom.mapped_pages(), 9);
    drop(reg);
    assert_eq!((dom.mapped_pages(), r.neg.registry().len()), (0, 0));
}

#[test]
fn registering_device_pages_without_odp_says_why() {
    let (r, space) = mixed_space_rig();
    let (_, imp) = importer(ImporterFlags::P2P, 64);
    let va = AddrRange::new(VirtAddr(0x100 * SZ_4K), 9 * SZ_4K).unwrap();
    let err = r
        .neg
        .register(&space, va, &imp, RW, &Policy::default())
        .unwrap_err();
    assert!(
        matches!(&err, Error::CannotPin { va, .. } if *va == 0x104 * SZ_4K),
        "{err}"
    );
    assert!(err.to_string().contains("ODP"), "{err}");
    assert!(r.neg.registry().is_empty());
    let (_, odp_imp) = importer(odp(), 64);
    let va = AddrRange::new(VirtAddr(0x108 * SZ_4K), 2 * SZ_4K).unwrap();
    let err = r
        .neg
        .register(&space, va, &odp_imp, RW, &Policy::default())
        .unwrap_err();
    assert!(matches!(err, Error::Fault { va, .. } if va == 0x109 * SZ_4K));
    assert!(
        r.neg.registry().is_empty(),
        "the host page mapped before the fault was dropped"
    );
}

#[test]
fn failed_registration_of_100_segments_maps_nothing() {
    let r = movable_rig(presets::acs_switch().unwrap());
    let mut space = Space::default();
    // 100 host pages, none physically adjacent: 100 runs, 100 mappings.
    for i in 0..100 {
        space
            .0
            .insert(i, Backing::Host(Offset(0x100_0000 + i * 2 * SZ_4K)));
    }
    let (_, imp) = importer(odp(), 64);
    let dom = r.platform.test_domain(a(NIC)).unwrap();
    dom.fail_nth(74);
    let va = AddrRange::new(VirtAddr(0), 100 * SZ_4K).unwrap();
    assert!(r
        .neg
        .register(&space, va, &imp, RW, &Policy::default())
        .is_err());
    assert_eq!(
        (
            dom.mapped_pages(),
            dom.live_iovas(),
            r.neg.registry().len(),
            r.platform.test_host().grants()
        ),
        (0, 0, 0, 0)
    );
    let reg = r
        .neg
        .register(&space, va, &imp, RW, &Policy::default())
        .unwrap();
    assert_eq!(reg.mappings().len(), 100);
}
