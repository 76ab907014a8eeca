//! The rig the negotiator's integration tests share: a GPU (test exporter) whose memory the NIC
//! (test importer) maps through the platform's domains, and small helpers. Each test file uses
//! part of it.
#![allow(dead_code)]

use p2p_core::prelude::*;
use p2p_core::testing::*;
use std::sync::Arc;

pub const GPU: &str = "0000:03:00.0";
pub const NIC: &str = "0000:05:00.0";
pub const RW: Access = Access::READ.union(Access::WRITE);

pub fn a(s: &str) -> PciAddr {
    s.parse().unwrap()
}

pub struct Rig {
    pub platform: Arc<TestPlatform>,
    pub neg: Negotiator,
    pub gpu: Arc<TestExporter>,
    pub exporter: Arc<dyn MemoryExporter>,
}

pub fn rig(
    topo: Topology,
    kind: DomainKind,
    window_pages: u64,
    movable: bool,
    pinnable: bool,
) -> Rig {
    let gpu = Arc::new(
        TestExporter::new(
            &topo,
            a(GPU),
            64 << 20,
            window_pages,
            MemoryKind { movable, pinnable },
        )
        .unwrap(),
    );
    let platform = Arc::new(TestPlatform::new(topo, kind));
    Rig {
        neg: Negotiator::new(platform.clone()),
        platform,
        exporter: gpu.clone(),
        gpu,
    }
}

/// Movable, pinnable GPU memory behind a 1024-page window; translated domains.
pub fn movable_rig(topo: Topology) -> Rig {
    rig(topo, DomainKind::Translated, 1024, true, true)
}

impl Rig {
    /// What a torn-down mapping must not leave behind: (pages mapped in the NIC's domain, live
    /// IOVA ranges, GPU grants, registry entries).
    pub fn leftovers(&self) -> (usize, usize, usize, usize) {
        let dom = self.platform.test_domain(a(NIC)).unwrap();
        (
            dom.mapped_pages(),
            dom.live_iovas(),
            self.gpu.grants(),
            self.neg.registry().len(),
        )
    }

    /// Maps `range` of the GPU for `imp` with read/write access and the default policy.
    pub fn map(&self, imp: &Arc<dyn DmaImporter>, range: AddrRange<Offset>) -> Result<Mapping> {
        self.neg
            .map(&self.exporter, imp, range, RW, &Policy::default())
    }
}

pub fn importer(flags: ImporterFlags, bits: u32) -> (Arc<TestImporter>, Arc<dyn DmaImporter>) {
    let caps = ImporterCaps {
        flags,
        dma_mask: dma_mask(bits),
        max_segment: 64 << 10,
    };
    let imp = Arc::new(TestImporter::new(a(NIC), caps));
    (imp.clone(), imp)
}

pub fn odp() -> ImporterFlags {
    ImporterFlags::ODP | ImporterFlags::P2P
}

pub fn range(off: u64, len: u64) -> AddrRange<Offset> {
    AddrRange::new(Offset(off), len).unwrap()
}

pub fn total(segs: &[Segment]) -> u64 {
    segs.iter().map(|s| s.len).sum()
}

/// A workstation with movable GPU memory (1 MiB, a 256-page window) at 0000:03:00.0, and an
/// ODP importer's caps: mappings pin nothing, so invalidations proceed.
pub fn movable_gpu_and_odp_caps() -> (Topology, Arc<TestExporter>, ImporterCaps) {
    let topo = p2p_core::topology::presets::workstation().unwrap();
    let gpu = TestExporter::new(&topo, a(GPU), 1 << 20, 256, MemoryKind::MOVABLE);
    let caps = ImporterCaps {
        flags: ImporterFlags::ODP | ImporterFlags::P2P,
        ..ImporterCaps::default()
    };
    (topo, Arc::new(gpu.unwrap()), caps)
}
