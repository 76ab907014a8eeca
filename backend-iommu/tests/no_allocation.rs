//! The mapping path allocates nothing once a thread has warmed it: a `Negotiator::map` + drop of
//! a BAR page through a strict `SoftIommu` (the `end_to_end` benchmark's path) takes no heap
//! block. The plan comes from the thread's memo, the IOVA from its cache, the registry's slot and
//! the importer's hold are reused, the chunk and segment lists are inline, and the resources'
//! box is the one the thread's last teardown emptied.
//!
//! Its own test binary: the heap statistics are the process's, and dhat's allocator counts
//! every block.

mod common;

use backend_iommu::{FlushPolicy, SoftIommu};
use common::SoftPlatform;
use p2p_core::export::BarExporter;
use p2p_core::prelude::*;
use p2p_core::testing::{TestHostMemory, TestImporter};
use p2p_core::topology::presets;
use std::sync::Arc;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

#[test]
fn map_and_drop_allocate_nothing_once_warm() {
    let _heap = dhat::Profiler::builder().testing().build();
    let topo = presets::acs_switch().unwrap();
    let gpu: PciAddr = "0000:03:00.0".parse().unwrap();
    let exporter: Arc<dyn MemoryExporter> = Arc::new(BarExporter::new(&topo, gpu, 0).unwrap());
    let platform = Arc::new(SoftPlatform {
        topology: Arc::new(topo),
        nic: Arc::new(SoftIommu::new(FlushPolicy::Strict).unwrap()),
        host: Arc::new(TestHostMemory::new(1 << 30, 1 << 20)),
    });
    let neg = Negotiator::new(platform);
    let caps = ImporterCaps {
        flags: ImporterFlags::ODP | ImporterFlags::P2P,
        ..ImporterCaps::default()
    };
    let nic: Arc<dyn DmaImporter> =
        Arc::new(TestImporter::new("0000:05:00.0".parse().unwrap(), caps));
    let rw = Access::READ | Access::WRITE;
    let map_drop = |page: u64| {
        let range = AddrRange::new(Offset(page * 4096), 4096).unwrap();
        let m = neg
            .map(&exporter, &nic, range, rw, &Policy::default())
            .unwrap();
        assert_eq!(m.strategy().unwrap(), Strategy::ViaIommu);
        drop(m);
    };
    for i in 0..1_000 {
        map_drop(i % 4);
    }
    let warm = dhat::HeapStats::get();
    for i in 0..10_000 {
        map_drop(i % 4);
    }
    let after = dhat::HeapStats::get();
    dhat::assert_eq!(
        after.total_blocks - warm.total_blocks,
        0,
        "heap blocks taken by 10 000 maps and drops"
    );
}
