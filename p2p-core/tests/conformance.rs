//! The conformance suite against p2p-core's own implementations: the test doubles of
//! `p2p_core::testing` and the BAR exporter. `cargo test --workspace conformance` runs these
//! with every backend's.

use p2p_core::conformance::{
    check_domain, check_domain_with, check_exporter, check_importer, check_platform, DomainConfig,
};
use p2p_core::export::BarExporter;
use p2p_core::prelude::*;
use p2p_core::testing::{TestDomain, TestExporter, TestHostMemory, TestImporter, TestPlatform};
use p2p_core::topology::presets;
use std::sync::Arc;

const GPU: &str = "0000:03:00.0";

fn gpu() -> PciAddr {
    GPU.parse().unwrap_or_else(|e| panic!("{e}"))
}

fn topo() -> Topology {
    presets::workstation().unwrap_or_else(|e| panic!("{e}"))
}

fn domain_of(kind: DomainKind) -> impl Fn() -> Arc<dyn IommuDomain> {
    move || Arc::new(TestDomain::new(kind)) as Arc<dyn IommuDomain>
}

#[test]
fn conformance_test_domain_translated() {
    check_domain(domain_of(DomainKind::Translated)).unwrap_or_else(|v| panic!("{v}"));
}

#[test]
fn conformance_test_domain_identity_and_blocked() {
    for kind in [DomainKind::Identity, DomainKind::Blocked] {
        check_domain(domain_of(kind)).unwrap_or_else(|v| panic!("{kind}: {v}"));
    }
}

#[test]
fn conformance_test_domain_with_a_reserved_pci_window() {
    let fresh = || {
        let mut d = TestDomain::new(DomainKind::Translated);
        let window =
            AddrRange::new(Iova(0xe000_0000), 0x1000_0000).unwrap_or_else(|e| panic!("{e}"));
        d.reserve(window, ReservedKind::PciWindow);
        Arc::new(d) as Arc<dyn IommuDomain>
    };
    check_domain_with(fresh, &DomainConfig::strict()).unwrap_or_else(|v| panic!("{v}"));
}

#[test]
fn conformance_test_exporter_with_a_window_and_revoke() {
    let e = TestExporter::new(&topo(), gpu(), 1 << 20, 64, MemoryKind::MOVABLE)
        .unwrap_or_else(|e| panic!("{e}"));
    check_exporter(&e, Some(&|| e.revoke())).unwrap_or_else(|v| panic!("{v}"));
}

#[test]
fn conformance_test_exporter_unpinnable_and_in_host_ram() {
    let e = TestExporter::new(&topo(), gpu(), 1 << 20, 64, MemoryKind::DEVICE_PRIVATE)
        .unwrap_or_else(|e| panic!("{e}"));
    check_exporter(&e, None).unwrap_or_else(|v| panic!("unpinnable: {v}"));
    e.migrate_to_host();
    check_exporter(&e, Some(&|| e.revoke())).unwrap_or_else(|v| panic!("in host RAM: {v}"));
}

#[test]
fn conformance_test_host_memory() {
    let e = TestHostMemory::new(1 << 30, 1 << 20);
    check_exporter(&e, None).unwrap_or_else(|v| panic!("{v}"));
}

#[test]
fn conformance_bar_exporter() {
    let topo = topo();
    for (dev, ep) in topo.endpoints() {
        for bar in &ep.bars {
            let e = BarExporter::new(&topo, dev, bar.index).unwrap_or_else(|e| panic!("{e}"));
            check_exporter(&e, None).unwrap_or_else(|v| panic!("{dev} BAR{}: {v}", bar.index));
        }
    }
}

#[test]
fn conformance_test_platform_and_importer() {
    for kind in [DomainKind::Translated, DomainKind::Identity] {
        check_platform(&TestPlatform::new(topo(), kind)).unwrap_or_else(|v| panic!("{v}"));
    }
    let caps = ImporterCaps {
        flags: ImporterFlags::ODP | ImporterFlags::P2P,
        dma_mask: dma_mask(32),
        max_segment: 1 << 16,
    };
    check_importer(&TestImporter::new(gpu(), caps)).unwrap_or_else(|v| panic!("{v}"));
}

#[test]
fn conformance_refuses_an_importer_whose_mask_is_not_a_mask() {
    let caps = ImporterCaps {
        flags: ImporterFlags::P2P,
        dma_mask: 0x1234_5678,
        max_segment: 0,
    };
    let v = check_importer(&TestImporter::new(gpu(), caps)).expect_err("0x12345678 is no mask");
    assert!(v.to_string().contains("dma_mask"), "{v}");
}

/// A platform whose `domain_kind` says identity while its domains translate.
#[derive(Debug)]
struct LyingKind(TestPlatform);

impl Platform for LyingKind {
    fn topology(&self) -> Arc<Topology> {
        self.0.topology()
    }
    fn domain(&self, device: PciAddr) -> Result<Arc<dyn IommuDomain>> {
        self.0.domain(device)
    }
    fn domain_kind(&self, _: PciAddr) -> Result<DomainKind> {
        Ok(DomainKind::Identity)
    }
    fn host_memory(&self) -> Arc<dyn MemoryExporter> {
        self.0.host_memory()
    }
}

#[test]
fn conformance_refuses_a_platform_whose_domain_kind_is_not_its_domains() {
    let p = LyingKind(TestPlatform::new(topo(), DomainKind::Translated));
    let v = check_platform(&p).expect_err("domain_kind lies");
    assert!(v.to_string().contains("domain_kind"), "{v}");
}

/// The exporter methods a test double below passes on to the host memory it wraps (`self.0`):
/// each double writes only the methods it gets wrong.
macro_rules! pass_on_to_host {
    () => {
        fn id(&self) -> ExporterId {
            self.0.id()
        }
        fn info(&self) -> ExporterInfo {
            self.0.info()
        }
        fn export(&self, range: AddrRange<Offset>, pin: bool) -> Result<ExportGrant> {
            self.0.export(range, pin)
        }
        fn allocate(&self, len: u64, pin: bool) -> Result<ExportGrant> {
            self.0.allocate(len, pin)
        }
        fn release(&self, grant: &ExportGrant) -> Result<()> {
            self.0.release(grant)
        }
    };
}

/// Host RAM whose chunks each name a file of their own: the second chunk's file differs.
#[derive(Debug)]
struct TwoFiles(TestHostMemory);

impl MemoryExporter for TwoFiles {
    pass_on_to_host!();
    fn chunks(&self, grant: &ExportGrant) -> Result<ChunkList> {
        // Split into pages, each naming a freshly opened file: not one file for the grant.
        let mut out = ChunkList::new();
        for c in self.0.chunks(grant)? {
            for p in 0..c.len / 4096 {
                let file = Arc::new(std::fs::File::open("/dev/null").unwrap());
                out.push(Chunk {
                    offset: Offset(c.offset.0 + p * 4096),
                    len: 4096,
                    phys: PhysAddr(c.phys.0 + p * 4096),
                    bus: BusAddr(c.bus.0 + p * 4096),
                    mmio: c.mmio,
                    file: Some(p2p_core::traits::FileSlice {
                        file,
                        offset: c.offset.0 + p * 4096,
                    }),
                });
            }
        }
        Ok(out)
    }
}

#[test]
fn conformance_refuses_chunks_that_disagree_about_their_file() {
    let e = TwoFiles(TestHostMemory::new(1 << 30, 1 << 20));
    let v = check_exporter(&e, None).expect_err("each chunk names another file");
    assert!(v.to_string().contains("another file"), "{v}");
}

/// Host RAM whose one-call export reports chunks a page further on than `chunks` does.
#[derive(Debug)]
struct ShiftedWithChunks(TestHostMemory);

impl MemoryExporter for ShiftedWithChunks {
    pass_on_to_host!();
    fn chunks(&self, grant: &ExportGrant) -> Result<ChunkList> {
        self.0.chunks(grant)
    }
    fn export_with_chunks(
        &self,
        range: AddrRange<Offset>,
        pin: bool,
    ) -> Result<(ExportGrant, ChunkList)> {
        let (g, chunks) = self.0.export_with_chunks(range, pin)?;
        let shifted = chunks
            .iter()
            .map(|c| Chunk {
                phys: PhysAddr(c.phys.0 + 4096),
                bus: BusAddr(c.bus.0 + 4096),
                ..c.clone()
            })
            .collect();
        Ok((g, shifted))
    }
}

#[test]
fn conformance_refuses_a_one_call_export_whose_chunks_are_not_those_of_chunks() {
    let e = ShiftedWithChunks(TestHostMemory::new(1 << 30, 1 << 20));
    let v = check_exporter(&e, None).expect_err("the one-call chunks are shifted");
    assert!(v.to_string().contains("export_with_chunks"), "{v}");
}

/// Host RAM whose id changes on every call.
#[derive(Debug)]
struct DriftingId(TestHostMemory, std::sync::atomic::AtomicU64);

impl MemoryExporter for DriftingId {
    fn id(&self) -> ExporterId {
        ExporterId(self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
    fn info(&self) -> ExporterInfo {
        self.0.info()
    }
    fn export(&self, range: AddrRange<Offset>, pin: bool) -> Result<ExportGrant> {
        self.0.export(range, pin)
    }
    fn release(&self, grant: &ExportGrant) -> Result<()> {
        self.0.release(grant)
    }
    fn chunks(&self, grant: &ExportGrant) -> Result<ChunkList> {
        self.0.chunks(grant)
    }
}

#[test]
fn conformance_refuses_an_exporter_whose_id_changes() {
    let e = DriftingId(TestHostMemory::new(1 << 30, 1 << 20), 1.into());
    let v = check_exporter(&e, None).expect_err("the id moves on every call");
    assert!(v.to_string().contains("MemoryExporter::id"), "{v}");
}
