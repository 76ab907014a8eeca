//! Forced revoke: a device reset or a dma-buf revoke does not ask. Importers are told, their
//! mappings (pinned ones included) are torn down and dead, and later DMA faults with the
//! sanitizer naming the revoke.

mod common;

use backend_mock::{FindingKind, Machine};
use common::*;
use p2pdma::core::topology::presets;
use p2pdma::prelude::*;

fn non_odp() -> ImporterCaps {
    caps(ImporterFlags::P2P, 64)
}

/// A pinned mapping through the IOMMU: the asking revoke is refused, the forced one tears it
/// down, and DMA through it afterwards faults in the IOMMU and is reported as after revoke.
#[test]
fn forced_revoke_kills_a_pinned_mapping() {
    // ACS redirect sends the pair through the host bridge: the mapping is in the IOMMU.
    let m = Machine::new(presets::acs_switch().unwrap(), &collect(141)).unwrap();
    let p = pair(&m, 4, non_odp());
    let map = p.map(&m, 0, 0x4000, RW).unwrap();
    assert_eq!(map.strategy().unwrap(), Strategy::ViaIommu);
    let seg = map.segments().unwrap()[0];
    p.nic.dma_write(seg.addr, b"before").unwrap();

    let asked = m.revoke(&p.gpu);
    assert!(matches!(asked, Err(Error::Pinned { .. })), "{asked:?}");
    assert!(map.is_live(), "a refused revoke leaves the mapping alone");

    let report = m.revoke_forced(&p.gpu).unwrap();
    assert_eq!(report.mappings, 1);
    assert_eq!(report.unacknowledged, 0);
    assert_eq!(p.nic.invalidations(), 1, "the importer was told");
    assert!(!map.is_live());
    assert_eq!(map.segments(), Err(Error::Invalidated(map.id())));
    assert!(matches!(
        m.negotiator().refault(&map, &Policy::default()),
        Err(Error::CannotRefault { .. })
    ));
    assert!(
        !m.negotiator().registry().all()[0].pinned,
        "nothing pins it any more"
    );
    assert_eq!(p.gpu.grants(), 0, "the grant went back");

    assert!(
        p.nic.dma_write(seg.addr, b"after").is_err(),
        "the IOMMU faults"
    );
    // The exporter refuses new grants after the revoke.
    assert!(matches!(p.map(&m, 0, 0x1000, RW), Err(Error::Revoked(_))));
    drop(map);
    let findings = m.finish();
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0].kind, FindingKind::AfterRevoke);
}

/// A bus-address mapping has no IOMMU entry to remove: DMA after a forced revoke still reaches
/// the BAR, and the sanitizer is what catches it.
#[test]
fn forced_revoke_of_a_direct_mapping_is_caught_by_the_sanitizer() {
    let m = Machine::new(presets::workstation().unwrap(), &collect(142)).unwrap();
    let p = pair(&m, 2, non_odp());
    let map = p.map(&m, 0, 0x2000, RW).unwrap();
    assert_eq!(map.strategy().unwrap(), Strategy::Direct);
    let seg = map.segments().unwrap()[0];
    m.revoke_forced(&p.gpu).unwrap();
    let _ = p.nic.dma_read(seg.addr, 16);
    drop(map);
    let kinds: Vec<_> = m.finish().iter().map(|f| f.kind).collect();
    assert_eq!(kinds, [FindingKind::AfterRevoke]);
}

/// The asking `Move` is unchanged: pinned memory does not move, and nothing is torn down.
#[test]
fn move_still_refuses_pinned_memory() {
    let m = Machine::new(presets::workstation().unwrap(), &collect(143)).unwrap();
    let p = pair(&m, 2, non_odp());
    let map = p.map(&m, 0, 0x2000, RW).unwrap();
    assert!(matches!(m.migrate(&p.gpu), Err(Error::Pinned { .. })));
    assert!(map.is_live());
    assert_eq!(p.nic.invalidations(), 0);
    drop(map);
    assert!(m.finish().is_empty());
}
