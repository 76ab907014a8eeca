//! Forced revoke on the in-crate test doubles: pinned mappings die, an importer that cannot
//! stop is counted and torn down anyway, and the asking path still refuses.

use p2p_core::prelude::*;
use p2p_core::testing::*;
use p2p_core::topology::presets;
use std::sync::Arc;

const RW: Access = Access::READ.union(Access::WRITE);

fn setup() -> (Negotiator, Arc<TestExporter>, Arc<TestImporter>) {
    let topo = presets::workstation().unwrap();
    let gpu = Arc::new(
        TestExporter::new(
            &topo,
            "0000:03:00.0".parse().unwrap(),
            1 << 20,
            256,
            MemoryKind::MOVABLE,
        )
        .unwrap(),
    );
    let caps = ImporterCaps {
        flags: ImporterFlags::P2P,
        dma_mask: dma_mask(64),
        max_segment: 0,
    };
    let nic = Arc::new(TestImporter::new("0000:05:00.0".parse().unwrap(), caps));
    let neg = Negotiator::new(Arc::new(TestPlatform::new(topo, DomainKind::Translated)));
    (neg, gpu, nic)
}

#[test]
fn an_importer_that_cannot_stop_is_torn_down_anyway() {
    let (neg, gpu, nic) = setup();
    let (exp, imp): (Arc<dyn MemoryExporter>, Arc<dyn DmaImporter>) = (gpu.clone(), nic.clone());
    let whole = AddrRange::new(Offset(0), 1 << 20).unwrap();
    let map = neg
        .map(
            &exp,
            &imp,
            AddrRange::new(Offset(0), 0x2000).unwrap(),
            RW,
            &Policy::default(),
        )
        .unwrap();
    nic.set_failing(true);
    // Asking: refused because the mapping pins the memory, nothing touched.
    let asked = neg.invalidate(gpu.id(), whole, InvalidationKind::Revoke);
    assert!(matches!(asked, Err(Error::Pinned { .. })), "{asked:?}");
    assert!(map.is_live());
    // Forcing: the importer's failure does not stop it.
    let report = neg.revoke_forced(gpu.id(), whole).unwrap();
    assert_eq!((report.mappings, report.unacknowledged), (1, 1));
    assert!(!map.is_live());
    assert_eq!(gpu.grants(), 0);
    assert!(
        nic.invalidations().is_empty(),
        "the notice was refused, not recorded"
    );
    // A dead mapping pins nothing: a later asking invalidation goes through.
    assert!(neg
        .invalidate(gpu.id(), whole, InvalidationKind::Move)
        .is_ok());
}
