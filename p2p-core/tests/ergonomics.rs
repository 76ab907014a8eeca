//! What a driver's own types get without casts: `&Arc<MyExporter>` and `&Arc<MyNic>` go to
//! negotiate, establish and map as they are; `allocate` has a default; `ImporterCaps` has one.

use p2p_core::prelude::*;
use p2p_core::testing::{TestExporter, TestPlatform};
use p2p_core::topology::presets;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A user's exporter: it delegates the memory to a test exporter and implements only the
/// required methods (no `allocate`, no CPU access).
#[derive(Debug)]
struct MyExporter(TestExporter);

impl MemoryExporter for MyExporter {
    fn id(&self) -> ExporterId {
        self.0.id()
    }
    fn info(&self) -> ExporterInfo {
        self.0.info()
    }
    fn export(&self, range: AddrRange<Offset>, pin: bool) -> Result<ExportGrant> {
        self.0.export(range, pin)
    }
    fn chunks(&self, grant: &ExportGrant) -> Result<ChunkList> {
        self.0.chunks(grant)
    }
    fn release(&self, grant: &ExportGrant) -> Result<()> {
        self.0.release(grant)
    }
}

/// A user's importer: ODP, peer memory, defaults for the rest.
#[derive(Debug, Default)]
struct MyNic {
    invalidations: AtomicUsize,
}

impl DmaImporter for MyNic {
    fn device(&self) -> PciAddr {
        "0000:05:00.0".parse().expect("a valid address")
    }
    fn caps(&self) -> ImporterCaps {
        ImporterCaps {
            flags: ImporterFlags::ODP | ImporterFlags::P2P,
            ..ImporterCaps::default()
        }
    }
    fn invalidate(&self, _: &Invalidation) -> Result<()> {
        self.invalidations.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

#[test]
fn user_types_need_no_casts() {
    let topo = presets::workstation().unwrap();
    let gpu = "0000:03:00.0".parse().unwrap();
    let exp = Arc::new(MyExporter(
        TestExporter::new(&topo, gpu, 1 << 20, 256, MemoryKind::MOVABLE).unwrap(),
    ));
    let nic = Arc::new(MyNic::default());
    let neg = Negotiator::new(Arc::new(TestPlatform::new(topo, DomainKind::Translated)));
    let rw = Access::READ | Access::WRITE;
    let range = AddrRange::new(Offset(0x100), 0x2000).unwrap();

    let plan = neg.negotiate(&exp, &nic, rw, &Policy::default()).unwrap();
    assert_eq!(plan.strategy, Strategy::Direct);
    let established = neg.establish(&plan, &exp, &nic, range).unwrap();
    let mapped = neg.map(&exp, &nic, range, rw, &Policy::default()).unwrap();
    // Each grant takes its own window slot: same plan, same length, other addresses.
    assert_eq!(established.strategy().unwrap(), mapped.strategy().unwrap());
    assert_eq!(mapped.segments().unwrap()[0].len, 0x2000);
    // The trait-object forms still work, and see the same registry entries.
    let (dyn_exp, dyn_nic): (Arc<dyn MemoryExporter>, Arc<dyn DmaImporter>) =
        (exp.clone(), nic.clone());
    assert_eq!(
        neg.negotiate(&*dyn_exp, &*dyn_nic, rw, &Policy::default())
            .unwrap(),
        plan
    );
    let third = neg
        .map(&dyn_exp, &dyn_nic, range, rw, &Policy::default())
        .unwrap();
    assert_eq!(neg.registry().len(), 3);
    neg.invalidate(exp.id(), range, InvalidationKind::Move)
        .unwrap();
    assert_eq!(nic.invalidations.load(Ordering::Relaxed), 3);
    drop((established, mapped, third));
    assert!(neg.registry().is_empty());
}

#[test]
fn defaults_a_user_need_not_write() {
    let topo = presets::workstation().unwrap();
    let exp = MyExporter(
        TestExporter::new(
            &topo,
            "0000:03:00.0".parse().unwrap(),
            1 << 20,
            16,
            MemoryKind::FIXED,
        )
        .unwrap(),
    );
    assert_eq!(
        exp.allocate(4096, false),
        Err(Error::CannotAllocate { exporter: exp.id() })
    );
    let caps = ImporterCaps::default();
    assert_eq!(
        (caps.flags, caps.dma_mask, caps.max_segment),
        (ImporterFlags::empty(), u64::MAX, 0)
    );
}
