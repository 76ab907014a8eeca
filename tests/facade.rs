//! The facade re-exports what a user needs: a plan through `p2pdma::prelude` alone.

use p2pdma::core::testing::{TestExporter, TestImporter, TestPlatform};
use p2pdma::core::topology::presets;
use p2pdma::prelude::*;
use std::sync::Arc;

#[test]
fn a_dgx_gpu_and_its_switch_neighbour_nic_use_bus_addresses() {
    let topo = presets::dgx().unwrap();
    let gpu: PciAddr = "0000:03:00.0".parse().unwrap();
    let nic: PciAddr = "0000:04:00.0".parse().unwrap();
    let far_nic: PciAddr = "0000:84:00.0".parse().unwrap();
    assert_eq!(topo.path(gpu, nic).unwrap().class, PathClass::Pix);
    let exporter: Arc<dyn MemoryExporter> =
        Arc::new(TestExporter::new(&topo, gpu, 1 << 20, 256, MemoryKind::FIXED).unwrap());
    let caps = ImporterCaps {
        flags: ImporterFlags::P2P,
        dma_mask: dma_mask(64),
        max_segment: 0,
    };
    let near: Arc<dyn DmaImporter> = Arc::new(TestImporter::new(nic, caps));
    let far: Arc<dyn DmaImporter> = Arc::new(TestImporter::new(far_nic, caps));
    let neg = Negotiator::new(Arc::new(TestPlatform::new(topo, DomainKind::Translated)));
    let gdr_pxb = Policy {
        max_path: PathClass::Pxb,
        ..Policy::default()
    };
    let m = neg
        .map(
            &exporter,
            &near,
            AddrRange::new(Offset(0), 1 << 20).unwrap(),
            Access::READ,
            &gdr_pxb,
        )
        .unwrap();
    assert_eq!(m.strategy().unwrap(), Strategy::Direct);
    assert_eq!(
        m.segments().unwrap().len(),
        1,
        "one contiguous BAR window, no segment limit"
    );
    let plan = neg
        .negotiate(&*exporter, &*far, Access::READ, &gdr_pxb)
        .unwrap();
    assert_eq!(
        plan.strategy,
        Strategy::Refused(Reason::PathTooLong {
            class: PathClass::Sys,
            max: PathClass::Pxb
        })
    );
}
